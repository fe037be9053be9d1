"""The HTTP edge: CSS callbacks in, covers and their metadata out.

Errors from the layers below are mapped to HTTP statuses here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import admin, callbacks, openapi, queries
from .admin import AdminDeps
from .cache import CoverCache, InvalidationListener
from .callbacks import IgnoredEvent, ModerationEvent, ScreenshotEvent, StreamStateEvent
from .db import make_engine, make_session_factory, ping, transaction, utcnow
from .errors import FetchError, PayloadTooLarge, RequestError
from .fetch import Fetcher, check_url
from .imaging import FORMATS, SIZES
from .models import FrameStatus
from .ingest import GroupCommitter, IngestOverloaded
from .queries import CoverView, NewFrame, StreamState
from .settings import Settings
from .storage import Storage, storage_from_url
from .worker import Worker

log = logging.getLogger(__name__)

DEFAULT_SIZE = "medium"
_STREAM_ID = re.compile(callbacks.STREAM_ID_PATTERN)


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    storage: Storage | None = None,
    fetch: Callable[[str], bytes] | None = None,
    run_worker: bool = False,
    clock: Callable[[], datetime] = utcnow,
) -> Starlette:
    """Build the application. Everything it talks to can be handed in; what is not is
    built from ``settings``. With ``run_worker`` a worker thread runs inside the process
    (the embedded default)."""
    engine = engine or make_engine(settings.database_url)
    storage = storage or storage_from_url(settings.storage_url)
    fetcher = None
    if fetch is None:
        fetcher = Fetcher.from_settings(settings)
        fetch = fetcher.fetch
    sessions = make_session_factory(engine)
    cache = CoverCache(ttl=settings.cover_cache_ttl, max_bytes=settings.cover_cache_bytes, wall=clock)
    placeholder = settings.placeholder_path.read_bytes() if settings.placeholder_path else None

    # --- callbacks -------------------------------------------------------------------

    async def css_callback(request: Request) -> Response:
        body = await _read_body(request, settings.callback_max_body_bytes)
        event = callbacks.parse_callback(
            body,
            keys=settings.callback_keys,
            now=clock().timestamp(),
            max_validity=settings.callback_max_validity,
        )
        if isinstance(event, IgnoredEvent):
            return JSONResponse({"code": 0})
        try:
            if isinstance(event, ScreenshotEvent):
                await ingest.record(_new_frame(event))
            else:
                await run_in_threadpool(_record, event)
        except IngestOverloaded as exc:
            log.warning("callback for %s shed: %s", event.stream_id, exc)
            return JSONResponse({"code": -1, "error": "overloaded"}, status_code=503)
        except SQLAlchemyError as exc:
            # Not recorded, so not acknowledged: CSS retries.
            log.error("callback for %s not recorded: %s", event.stream_id, type(exc).__name__)
            return JSONResponse({"code": -1, "error": "unavailable"}, status_code=503)
        if not isinstance(event, ScreenshotEvent):
            cache.invalidate(event.stream_id)
        return JSONResponse({"code": 0})

    def _new_frame(event: ScreenshotEvent) -> NewFrame:
        # A URL we would never download is recorded as failed right away, with the
        # reason, rather than refused: the operator sees it and no worker touches it.
        status, reason = FrameStatus.PENDING, ""
        try:
            check_url(event.pic_full_url, settings.fetch_allowed_hosts)
        except FetchError as exc:
            status, reason = FrameStatus.FAILED, f"download refused: {exc}"
        captured_at = datetime.fromtimestamp(event.create_time, UTC)
        return NewFrame(event, captured_at, status, reason)

    def _write_frames(frames: list[NewFrame]) -> None:
        with transaction(sessions) as session:
            queries.record_frames(session, frames, now=clock())

    ingest = GroupCommitter(_write_frames)

    def _record(event: ModerationEvent | StreamStateEvent) -> None:
        with transaction(sessions) as session:
            if isinstance(event, StreamStateEvent):
                queries.set_stream_live(session, event.stream_id, live=event.live, now=clock())
            elif event.suggestion in settings.moderation_block_suggestions:
                blocked = queries.record_moderation(session, event, now=clock())
                queries.audit(session, actor="moderation", action="block", now=clock(), stream_id=event.stream_id,
                              detail={"img": event.img_path, "suggestion": event.suggestion, "frames": blocked})

    async def request_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestError)
        content: dict[str, Any] = {"code": exc.status, "error": exc.code, "message": str(exc)}
        problems = getattr(exc, "problems", None)
        if problems:
            content["problems"] = problems
        return JSONResponse(content, status_code=exc.status)

    # --- covers --------------------------------------------------------------------------

    def _load_state(stream_id: str) -> StreamState | None:
        with transaction(sessions) as session:
            return queries.stream_state(session, stream_id, now=clock())

    async def load_state(stream_id: str) -> StreamState | None:
        return await run_in_threadpool(_load_state, stream_id)

    async def cover_of(stream_id: str) -> tuple[StreamState | None, CoverView | None]:
        state = await cache.view(stream_id, load_state) if _STREAM_ID.match(stream_id) else None
        return state, state.cover if state else None

    async def load_blob(key: str) -> bytes:
        return await run_in_threadpool(storage.get, key)

    async def cover(request: Request) -> Response:
        stream_id = request.path_params["stream_id"]
        size = request.query_params.get("size", DEFAULT_SIZE)
        if size not in SIZES:
            return _problem(400, "invalid_size", f"size must be one of {', '.join(SIZES)}")
        requested = request.query_params.get("format")
        if requested is not None and requested not in FORMATS:
            return _problem(400, "invalid_format", f"format must be one of {', '.join(FORMATS)}")
        _, view = await cover_of(stream_id)
        negotiated = requested is None
        fmt = requested or ("webp" if accepts_webp(request.headers.get("accept", "")) else "jpeg")
        rendition = view.renditions.get((size, fmt)) if view else None
        if view is None or rendition is None:
            return _missing(negotiated)
        headers = {
            "ETag": f'"{rendition.etag}"',
            "Cache-Control": f"public, max-age={settings.cover_max_age}",
            "X-Cover-Version": str(view.cover_id),
        }
        if negotiated:
            headers["Vary"] = "Accept"
        if etag_matches(request.headers.get("if-none-match"), rendition.etag):
            return Response(status_code=304, headers=headers)
        try:
            data = await cache.blob(rendition.key, load_blob)
        except FileNotFoundError:
            # Covers are committed only after their objects are stored; a missing object
            # means someone deleted it behind our back.
            log.error("cover %d of %s: object %s missing", view.cover_id, stream_id, rendition.key)
            return _problem(503, "cover_unavailable", "the cover could not be read from storage")
        return Response(data, media_type=rendition.content_type, headers=headers)

    def _missing(negotiated: bool) -> Response:
        headers = {"Cache-Control": f"public, max-age={settings.missing_max_age}"}
        if placeholder is None:
            return _problem(404, "no_cover", "this stream has no cover yet", headers)
        if negotiated:
            headers["Vary"] = "Accept"
        return Response(placeholder, status_code=404, media_type=_sniff(placeholder), headers=headers)

    async def cover_metadata(request: Request) -> Response:
        stream_id = request.path_params["stream_id"]
        state, view = await cover_of(stream_id)
        headers = {"Cache-Control": f"public, max-age={settings.cover_max_age if view else settings.missing_max_age}"}
        live = state.live if state else None
        if view is None:
            return JSONResponse({"stream_id": stream_id, "live": live, "cover": None}, status_code=404, headers=headers)
        return JSONResponse(
            {"stream_id": stream_id, "live": live, "cover": describe_cover(view, settings.public_base_url)},
            headers=headers,
        )

    # --- health ------------------------------------------------------------------------

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks: dict[str, str] = {}
        for name, check in (("database", lambda: ping(engine)), ("storage", storage.check)):
            try:
                await run_in_threadpool(check)
                checks[name] = "ok"
            except Exception as exc:
                checks[name] = f"unavailable: {type(exc).__name__}"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if ready else "unavailable", **checks}, status_code=200 if ready else 503)

    # --- lifecycle -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not settings.callback_keys:
            log.warning(
                "COVERSERVICE_CALLBACK_KEYS is empty: callback signatures are NOT checked; "
                "anyone who can reach /callbacks/css can submit screenshots"
            )
        stop = threading.Event()
        thread = None
        listener = None
        if engine.dialect.name == "postgresql":
            listener = InvalidationListener(settings.database_url, cache, asyncio.get_running_loop())
            listener.start()
        if run_worker:
            worker = Worker(settings, session_factory=sessions, storage=storage, fetch=fetch, clock=clock)
            thread = threading.Thread(target=worker.run, args=(stop,), name="coverservice-worker", daemon=True)
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread is not None:
                thread.join(timeout=30)
            if listener is not None:
                listener.stop()
            if fetcher is not None:
                fetcher.close()

    admin_deps = AdminDeps(
        settings=settings,
        sessions=sessions,
        storage=storage,
        cache=cache,
        fetch=fetch,
        clock=clock,
        describe_cover=lambda view: describe_cover(view, settings.public_base_url),
    )
    app = Starlette(
        routes=[
            Route("/callbacks/css", css_callback, methods=["POST"]),
            Route("/cover/{stream_id}", cover, methods=["GET", "HEAD"]),
            Route("/api/covers/{stream_id}", cover_metadata, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
            *admin.routes(admin_deps),
        ],
        exception_handlers={RequestError: request_error},
        lifespan=lifespan,
    )
    app.state.cache = cache
    app.state.engine = engine
    app.state.storage = storage
    return app


def describe_cover(view: CoverView, base_url: str = "") -> dict[str, Any]:
    return {
        "version": view.cover_id,
        "source": view.source,
        "frame_id": view.frame_id,
        "captured_at": view.captured_at.isoformat() if view.captured_at else None,
        "created_at": view.created_at.isoformat(),
        "score": view.score,
        "metrics": view.metrics,
        "urls": {
            size: {
                fmt: f"{base_url}/cover/{view.stream_id}?size={size}&format={fmt}"
                for fmt in FORMATS
                if (size, fmt) in view.renditions
            }
            for size in SIZES
        },
    }


def accepts_webp(accept: str) -> bool:
    """True when the Accept header admits image/webp with a non-zero quality."""
    for part in accept.split(","):
        media, _, params = part.strip().partition(";")
        if media.strip().lower() != "image/webp":
            continue
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        return quality > 0
    return False


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110 13.1.2): W/ prefixes are ignored."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*":
            return True
        if candidate.removeprefix("W/").strip('"') == etag:
            return True
    return False


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise PayloadTooLarge(f"body larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes")
    return bytes(body)


def _problem(status: int, error: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": error, "message": message}, status_code=status, headers=headers)


def _sniff(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"
