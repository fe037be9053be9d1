"""The HTTP edge: CSS callbacks in, covers and their metadata out.

Errors from the layers below are mapped to HTTP statuses here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, request_response
from starlette.types import ASGIApp, Receive, Scope, Send

from . import admin, callbacks, openapi, queries
from .admin import AdminDeps
from .cache import CoverCache, HotResponses, InvalidationListener, SingleFlight
from .callbacks import IgnoredEvent, ModerationEvent, ScreenshotEvent, StreamStateEvent
from .covers import ALL_FORMATS, LAZY_FORMATS, MAX_BATCH, lazy_source, render_lazy, rendition_key
from .db import make_engine, make_session_factory, ping, transaction, utcnow
from .errors import CallbackError, FetchError, PayloadTooLarge, RequestError, StorageError
from .fetch import Fetcher, RefusalLog, check_url
from .imaging import FORMATS, SIZES
from .ingest import AsyncFrameRecorder, GroupCommitter, IngestOverloaded
from .logs import RequestIdMiddleware
from .metrics import Metrics, Outcome, refusal_outcome
from .models import FrameStatus
from .queries import CoverView, NewFrame, StoredRendition, StreamState
from .settings import Settings
from .storage import Storage, check_at_start, storage_from_url
from .worker import Worker

# /readyz answers within this even when the database or storage hangs.
READY_TIMEOUT = 2.0

log = logging.getLogger(__name__)

DEFAULT_SIZE = "medium"
_STREAM_ID = re.compile(callbacks.STREAM_ID_PATTERN)
_MAX_ORIGINS = 4096
# scheme://authority, the authority ending where check_url's does.
_ORIGIN = re.compile(r"[^:/?#]+://[^/?#]*")


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    storage: Storage | None = None,
    fetch: Callable[[str], bytes] | None = None,
    run_worker: bool = False,
    clock: Callable[[], datetime] = utcnow,
    metrics: Metrics | None = None,
) -> Starlette:
    """Build the application. Everything it talks to can be handed in; what is not is
    built from ``settings``. With ``run_worker`` a worker thread runs inside the process
    (the embedded default) and reports through this app's ``/metrics``."""
    engine = engine or make_engine(settings.database_url)
    storage = storage or storage_from_url(settings.storage_url)
    fetcher = None
    if fetch is None:
        fetcher = Fetcher.from_settings(settings)
        fetch = fetcher.fetch
    sessions = make_session_factory(engine)
    metrics = metrics if metrics is not None else Metrics()
    metrics.track_queue(sessions, ttl=settings.metrics_queue_ttl)
    cache = CoverCache(ttl=settings.cover_cache_ttl, max_bytes=settings.cover_cache_bytes, wall=clock)
    hot = HotResponses(cache, max_bytes=settings.cover_cache_bytes // 4)
    placeholder = settings.placeholder_path.read_bytes() if settings.placeholder_path else None
    # The placeholder is served at an immutable URL like the renditions', named by its bytes.
    placeholder_name = _content_name(placeholder) if placeholder else None
    base_url = settings.public_base_url

    # --- callbacks -------------------------------------------------------------------

    # The hottest route, so a raw ASGI handler: no Request object, no exception-handler
    # and routing layers; the body is read straight from ``receive`` and the
    # acknowledgement is sent ready-made. Refusals are the same responses as elsewhere.
    async def css_callback(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await _read_body(scope, receive, settings.callback_max_body_bytes)
            event = callbacks.parse_callback(
                body,
                keys=settings.callback_keys,
                now=clock().timestamp(),
                max_validity=settings.callback_max_validity,
            )
        except CallbackError as exc:
            metrics.callback(exc.event_type, refusal_outcome(exc))
            log.info("callback refused: %s", exc)
            await _request_error(exc)(scope, receive, send)
            return
        except ClientDisconnect:
            return  # nobody is left to answer
        response = await _handle_callback(event)
        if response is None:
            await send({"type": "http.response.start", "status": 200, "headers": list(_ACK.raw_headers)})
            await send({"type": "http.response.body", "body": _ACK.body})
        else:
            await response(scope, receive, send)

    async def _handle_callback(event: callbacks.CallbackEvent) -> Response | None:
        """What to answer a valid callback: None for the acknowledgement."""
        if isinstance(event, IgnoredEvent):
            metrics.callback(event.event_type, Outcome.IGNORED)
            return None
        if isinstance(event, ScreenshotEvent | ModerationEvent):
            # Redacted by parse_callback: no txSecret, no sign.
            log.debug("callback %d for %s: %s", _event_type(event), event.stream_id, event.payload)
        try:
            if isinstance(event, ScreenshotEvent):
                await ingest.record(_new_frame(event))
            else:
                await run_in_threadpool(_record, event)
        except IngestOverloaded as exc:
            log.warning("callback for %s shed: %s", event.stream_id, exc)
            metrics.callback(_event_type(event), Outcome.OVERLOADED)
            return JSONResponse({"code": -1, "error": "overloaded"}, status_code=503)
        except SQLAlchemyError as exc:
            # Not recorded, so not acknowledged: CSS retries.
            log.error("callback for %s not recorded: %s", event.stream_id, type(exc).__name__)
            metrics.callback(_event_type(event), Outcome.UNAVAILABLE)
            return JSONResponse({"code": -1, "error": "unavailable"}, status_code=503)
        if not isinstance(event, ScreenshotEvent):
            # Screenshots are counted where they are committed (_write_frames).
            blocks = isinstance(event, StreamStateEvent) or event.suggestion in settings.moderation_block_suggestions
            metrics.callback(_event_type(event), Outcome.ACCEPTED if blocks else Outcome.IGNORED)
            cache.invalidate(event.stream_id)
        return None

    # The verdict on each pic_full_url's origin (scheme://host:port): None or the refusal.
    # check_url parses strictly and costs more than the rest of a callback; CSS sends from
    # a few COS hosts, so each origin is checked once. Whatever lies past the origin is
    # checked with the whole URL by the worker, before it downloads.
    origin_verdicts: dict[str, FetchError | None] = {}
    refusals = RefusalLog(settings.fetch_allowed_hosts)

    def _refusal(url: str) -> FetchError | None:
        origin = _origin(url)
        if origin and origin in origin_verdicts:
            return origin_verdicts[origin]
        verdict = None
        try:
            check_url(f"{origin}/" if origin else url, settings.fetch_allowed_hosts)
        except FetchError as exc:
            verdict = exc
        if origin:
            if len(origin_verdicts) >= _MAX_ORIGINS:
                origin_verdicts.clear()
            origin_verdicts[origin] = verdict
        return verdict

    def _new_frame(event: ScreenshotEvent) -> NewFrame:
        # A URL we would never download is recorded as failed right away, with the
        # reason, rather than refused: the operator sees it and no worker touches it.
        refusal = _refusal(event.pic_full_url)
        if refusal is not None:
            refusals.warn(refusal)
        reason = f"download refused: {refusal}" if refusal is not None else ""
        status = FrameStatus.FAILED if reason else FrameStatus.PENDING
        captured_at = datetime.fromtimestamp(event.create_time, UTC)
        return NewFrame(event, captured_at, status, reason)

    recorder = AsyncFrameRecorder(engine) if engine.dialect.name == "postgresql" else None

    def _record_frames(frames: list[NewFrame]) -> list[bool]:
        with transaction(sessions) as session:
            return queries.record_frames(session, frames, now=clock())

    async def _write_frames(frames: list[NewFrame]) -> None:
        if recorder is not None:
            stored = await recorder.record(frames, now=clock())
        else:
            stored = await run_in_threadpool(_record_frames, frames)
        duplicates = stored.count(False)
        refused = sum(1 for f, new in zip(frames, stored) if new and f.status is FrameStatus.FAILED)
        for outcome, count in (
            (Outcome.ACCEPTED, len(frames) - duplicates - refused),
            (Outcome.DUPLICATE, duplicates),
            (Outcome.HOST_NOT_ALLOWED, refused),
        ):
            if count:
                metrics.callback(callbacks.SCREENSHOT, outcome, count)

    ingest = GroupCommitter(_write_frames)

    def _record(event: ModerationEvent | StreamStateEvent) -> None:
        with transaction(sessions) as session:
            if isinstance(event, StreamStateEvent):
                now = clock()
                # The event's own time, unless it claims to be in the future (a skewed clock).
                at = now if event.event_time is None else min(now, datetime.fromtimestamp(event.event_time, UTC))
                queries.set_stream_live(session, event.stream_id, live=event.live, at=at, now=now)
            elif event.suggestion in settings.moderation_block_suggestions:
                blocked = queries.record_moderation(session, event, now=clock())
                queries.audit(session, actor="moderation", action="block", now=clock(), stream_id=event.stream_id,
                              detail={"img": event.img_path, "suggestion": event.suggestion, "frames": blocked})

    async def request_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestError)
        return _request_error(exc)

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

    def _load_owner(key: str) -> tuple[str | None, bool]:
        with transaction(sessions) as session:
            return queries.rendition_owner(session, key)

    async def load_owner(key: str) -> tuple[str | None, bool]:
        return await run_in_threadpool(_load_owner, key)

    async def cover(request: Request) -> Response:
        stream_id = request.path_params["stream_id"]
        size = request.query_params.get("size", DEFAULT_SIZE)
        if size not in SIZES:
            return _problem(400, "invalid_size", f"size must be one of {', '.join(SIZES)}")
        requested = request.query_params.get("format")
        if requested is not None and requested not in ALL_FORMATS:
            return _problem(400, "invalid_format", f"format must be one of {', '.join(ALL_FORMATS)}")
        state, view = await cover_of(stream_id)
        negotiated = requested is None
        accept = request.headers.get("accept", "")
        fmt = requested or ("webp" if accepts_webp(accept) else "jpeg")
        rendition = view.renditions.get((size, fmt)) if view else None
        if view is not None and (requested in LAZY_FORMATS or (negotiated and accepts(accept, "image/avif"))):
            try:
                rendition = await lazy_rendition(view, size, requested or "avif") or rendition
            except (FileNotFoundError, StorageError, SQLAlchemyError) as exc:
                log.error("cover %d of %s: no %s %s: %s", view.cover_id, stream_id, size, requested or "avif",
                          type(exc).__name__)
                if requested is not None:
                    return _problem(503, "cover_unavailable", "the cover could not be rendered in this format")
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
        response = Response(data, media_type=rendition.content_type, headers=headers)
        key = _hot_key(request.scope)
        if key is not None and state is not None:
            # A copy, taken before any middleware sees (and may extend) the list it is sent.
            hot.put(key, stream_id, state, response.status_code, list(response.raw_headers), data)
        return response

    def _missing(negotiated: bool) -> Response:
        headers = {"Cache-Control": f"public, max-age={settings.missing_max_age}"}
        if placeholder is None:
            return _problem(404, "no_cover", "this stream has no cover yet", headers)
        if negotiated:
            headers["Vary"] = "Accept"
        return Response(placeholder, status_code=404, media_type=_sniff(placeholder), headers=headers)

    lazy_flight: SingleFlight[StoredRendition | None] = SingleFlight()

    async def lazy_rendition(view: CoverView, size: str, fmt: str) -> StoredRendition | None:
        """The cover's ``fmt`` rendition of ``size``, rendered, stored and recorded on
        first use; concurrent first requests in this process share one render. None when
        the cover has no rendition to make it from."""
        known = view.renditions.get((size, fmt))
        if known is not None:
            return known
        source = lazy_source(view.renditions, size)
        if source is None:
            return None

        def make() -> StoredRendition:
            made = render_lazy(storage, source, size, fmt, max_pixels=settings.max_image_pixels)
            with transaction(sessions) as session:
                return queries.add_rendition(session, view.stream_id, view.cover_id, made)

        async def run() -> StoredRendition | None:
            made = await run_in_threadpool(make)
            cache.invalidate(view.stream_id)  # the next view lists it
            return made

        return await lazy_flight.run(f"{view.cover_id}/{size}/{fmt}", run)

    async def immutable(request: Request) -> Response:
        """A rendition (or the placeholder) by the digest of its bytes: whatever is served
        at such a URL never changes, so caches may keep it for a year."""
        digest, fmt = request.path_params["digest"], request.path_params["fmt"]
        if not _DIGEST.fullmatch(digest) or fmt not in ALL_FORMATS and f"{digest}.{fmt}" != placeholder_name:
            return _problem(404, "not_found", "no such image", {"Cache-Control": f"public, max-age={settings.missing_max_age}"})
        etag = digest[:32]  # as Rendition.etag: the same bytes have the same ETag everywhere
        headers = {"ETag": f'"{etag}"', "Cache-Control": f"public, max-age={settings.immutable_max_age}, immutable"}
        is_placeholder = placeholder is not None and f"{digest}.{fmt}" == placeholder_name
        key = rendition_key(digest, fmt)
        # Before the 304 too: a cache revalidating a blocked frame's image must lose it.
        if not is_placeholder and not await cache.admitted(key, load_owner):
            return _problem(404, "not_found", "no such image", {"Cache-Control": f"public, max-age={settings.missing_max_age}"})
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        if is_placeholder:
            assert placeholder is not None
            return Response(placeholder, media_type=_sniff(placeholder), headers=headers)
        try:
            data = await cache.blob(key, load_blob)
        except FileNotFoundError:
            return _problem(404, "not_found", "no such image", {"Cache-Control": f"public, max-age={settings.missing_max_age}"})
        except StorageError as exc:
            log.error("rendition %s.%s unreadable: %s", digest, fmt, exc)
            return _problem(503, "cover_unavailable", "the image could not be read from storage")
        return Response(data, media_type=ALL_FORMATS[fmt], headers=headers)

    def entry(stream_id: str, state: StreamState | None) -> dict[str, Any]:
        """One stream in the metadata API, the same shape alone or in a batch."""
        view = state.cover if state else None
        return {
            "stream_id": stream_id,
            "live": state.live if state else None,
            "cover": describe_cover(view, base_url) if view else None,
            # What to show instead of a missing cover: the configured placeholder image.
            "placeholder_url": f"{base_url}/r/{placeholder_name}" if view is None and placeholder_name else None,
        }

    def max_age(has_cover: bool) -> dict[str, str]:
        return {"Cache-Control": f"public, max-age={settings.cover_max_age if has_cover else settings.missing_max_age}"}

    async def cover_metadata(request: Request) -> Response:
        stream_id = request.path_params["stream_id"]
        state, view = await cover_of(stream_id)
        return JSONResponse(entry(stream_id, state), status_code=200 if view else 404, headers=max_age(view is not None))

    def _load_states(stream_ids: list[str]) -> dict[str, StreamState]:
        with transaction(sessions) as session:
            return queries.stream_states(session, stream_ids, now=clock())

    async def covers_batch(request: Request) -> Response:
        raw = request.query_params.get("ids", "")
        ids = list(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
        if not ids:
            return _problem(400, "invalid_ids", "ids must list one or more stream ids, comma-separated")
        if len(ids) > MAX_BATCH:
            return _problem(400, "too_many_ids", f"at most {MAX_BATCH} ids per request (got {len(ids)})")
        bad = next((i for i in ids if not _STREAM_ID.fullmatch(i)), None)
        if bad is not None:
            return _problem(400, "invalid_ids", f"{bad[:64]!r} is not a stream id")
        states = await run_in_threadpool(_load_states, ids)
        entries = [entry(i, states.get(i)) for i in ids]
        all_covered = all(e["cover"] is not None for e in entries)
        return JSONResponse({"covers": entries}, headers=max_age(all_covered))

    # --- health ------------------------------------------------------------------------

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks: dict[str, str] = {}
        for name, check in (("database", lambda: ping(engine)), ("storage", storage.check)):
            try:
                # A stalled dependency must not stall the probe: a load balancer's check
                # gives up after a few seconds and would learn nothing.
                await asyncio.wait_for(run_in_threadpool(check), READY_TIMEOUT)
                checks[name] = "ok"
            except TimeoutError:
                checks[name] = f"unavailable: no answer within {READY_TIMEOUT:g} s"
            except StorageError as exc:
                # Our own message: it names what to change (credentials, bucket, endpoint).
                checks[name] = f"unavailable: {exc}"
            except Exception as exc:  # noqa: BLE001  (any failure means "not ready", by name)
                checks[name] = f"unavailable: {type(exc).__name__}"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if ready else "unavailable", **checks}, status_code=200 if ready else 503)

    async def metrics_endpoint(request: Request) -> Response:
        # Collecting reads the queue from the database: off the event loop.
        body = await run_in_threadpool(generate_latest, metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    # --- lifecycle -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not settings.callback_keys:
            log.warning(
                "COVERSERVICE_CALLBACK_KEYS is empty: callback signatures are NOT checked; "
                "anyone who can reach /callbacks/css can submit screenshots"
            )
        threading.Thread(target=check_at_start, args=(storage,), name="coverservice-storage-check",
                         daemon=True).start()
        stop = threading.Event()
        thread = None
        listener = None
        if engine.dialect.name == "postgresql":
            listener = InvalidationListener(settings.database_url, cache, asyncio.get_running_loop())
            listener.start()
        if run_worker:
            loop = asyncio.get_running_loop()
            worker = Worker(
                settings, session_factory=sessions, storage=storage, fetch=fetch, clock=clock, metrics=metrics,
                # Its covers reach this process's cache at once, not after the TTL (SQLite
                # has no NOTIFY). The cache lives on the event loop.
                on_cover_change=lambda stream_id: loop.call_soon_threadsafe(cache.invalidate, stream_id),
            )
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
            if recorder is not None:
                await recorder.close()
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
            # Reached only by what the shortcut below passes on (a root path is set).
            Route("/callbacks/css", _RawEndpoint(css_callback), methods=["POST"]),
            Route("/cover/{stream_id}", _HotCoverRoute(hot, request_response(cover)), methods=["GET", "HEAD"]),
            Route("/api/covers/{stream_id}", cover_metadata, methods=["GET"]),
            Route("/api/covers", covers_batch, methods=["GET"]),
            Route("/r/{digest}.{fmt}", immutable, methods=["GET", "HEAD"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            *admin.routes(admin_deps),
        ],
        exception_handlers={RequestError: request_error},
        middleware=[
            Middleware(RequestIdMiddleware),
            *_cors(settings),
            Middleware(_Shortcut, method="POST", path="/callbacks/css", handler=css_callback),
        ],
        lifespan=lifespan,
    )
    app.state.cache = cache
    app.state.engine = engine
    app.state.storage = storage
    app.state.metrics = metrics
    return app


def _event_type(event: ScreenshotEvent | ModerationEvent | StreamStateEvent) -> int:
    if isinstance(event, ScreenshotEvent):
        return callbacks.SCREENSHOT
    if isinstance(event, ModerationEvent):
        return callbacks.MODERATION
    return callbacks.PUSH_STARTED if event.live else callbacks.PUSH_INTERRUPTED


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
        # Immutable URLs (one per stored rendition; AVIF once it has been asked for):
        # safe to cache for a year, and a new cover version is a new URL.
        "images": {
            size: {
                fmt: {
                    "url": f"{base_url}/r/{_digest_of(r.key)}.{fmt}",
                    "width": r.width,
                    "height": r.height,
                    "bytes": r.byte_size,
                }
                for fmt in ALL_FORMATS
                if (r := view.renditions.get((size, fmt))) is not None
            }
            for size in SIZES
        },
        "placeholder": (
            {"color": view.placeholder.color, "blurhash": view.placeholder.blurhash}
            if view.placeholder
            else None
        ),
    }


def accepts_webp(accept: str) -> bool:
    """True when the Accept header admits image/webp with a non-zero quality."""
    return accepts(accept, "image/webp")


def accepts(accept: str, media_type: str) -> bool:
    """True when the Accept header names ``media_type`` with a non-zero quality.
    Wildcards do not count: ``*/*`` does not promise that a client decodes WebP or AVIF."""
    for part in accept.split(","):
        media, _, params = part.strip().partition(";")
        if media.strip().lower() != media_type:
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


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request's body; refused by its Content-Length before anything is read, or as
    soon as what arrived passes ``limit``."""
    for name, value in scope["headers"]:
        if name == b"content-length":  # the first one, as Request.headers reads it
            if not value.isdigit() or int(value) > limit:
                raise PayloadTooLarge(f"body larger than {limit} bytes")
            break
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes")
        if not message.get("more_body", False):
            return body


def _request_error(exc: RequestError) -> Response:
    content: dict[str, Any] = {"code": exc.status, "error": exc.code, "message": str(exc)}
    problems = getattr(exc, "problems", None)
    if problems:
        content["problems"] = problems
    return JSONResponse(content, status_code=exc.status)


# A callback's acknowledgement, built once: its headers are copied per response, as
# middleware may add to the list it is sent.
_ACK = JSONResponse({"code": 0})


def _problem(status: int, error: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": error, "message": message}, status_code=status, headers=headers)


_DIGEST = re.compile(r"[0-9a-f]{64}")


def _digest_of(key: str) -> str:
    """The digest a content-addressed key (covers.rendition_key) is named by."""
    return key.rsplit("/", 1)[-1].partition(".")[0]


def _content_name(data: bytes) -> str:
    """``<sha256>.<extension>`` of an image served at an immutable URL."""
    return f"{hashlib.sha256(data).hexdigest()}.{_sniff(data).removeprefix('image/')}"


def _cors(settings: Settings) -> list[Middleware]:
    if not settings.cors_origins:
        return []
    # Read-only and anonymous: covers and their metadata. No credentials and no extra
    # request headers, so a foreign page cannot send an admin's bearer token.
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "HEAD"],
            expose_headers=["ETag", "X-Cover-Version"],
            max_age=600,
        )
    ]


class _Shortcut:
    """Sends one method and path straight to its handler, ahead of the router and the
    exception-handling layer; everything else (and any request under a root path, which
    the router resolves) goes on through the app."""

    def __init__(self, app: ASGIApp, *, method: str, path: str, handler: ASGIApp) -> None:
        self.app = app
        self._method = method
        self._path = path
        self._handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == self._path
            and scope["method"] == self._method
            and not scope.get("root_path")
        ):
            await self._handler(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class _RawEndpoint:
    """An ASGI callable as a route's endpoint as it is: Starlette would take a plain
    function for a request handler and wrap it."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


class _HotCoverRoute:
    """GET /cover/{id}: a request that a hot response answers is sent that response at
    once; any other goes to the full handler, which leaves such responses behind."""

    def __init__(self, hot: HotResponses, handler: Callable[[Scope, Receive, Send], Any]) -> None:
        self._hot = hot
        self._handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = _hot_key(scope)
        hit = self._hot.get(key) if key is not None else None
        if hit is None:
            await self._handler(scope, receive, send)
            return
        status, headers, body = hit
        # A copy: middleware may add headers to the list it is sent.
        await send({"type": "http.response.start", "status": status, "headers": list(headers)})
        await send({"type": "http.response.body", "body": body})


def _hot_key(scope: Scope) -> tuple[str, bytes, bytes] | None:
    """What a cover response depends on besides the stream's state: path, query and
    Accept. Conditional requests (304s) and HEAD go the full way."""
    if scope["method"] != "GET":
        return None
    accept = None
    for name, value in scope["headers"]:
        if name == b"accept" and accept is None:  # the first, as the full handler reads it
            accept = value
        elif name == b"if-none-match":
            return None
    return scope["path"], scope["query_string"], accept or b""


def _origin(url: str) -> str | None:
    match = _ORIGIN.match(url)
    return match[0] if match else None


def _sniff(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"
