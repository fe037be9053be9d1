"""Admin API and page: override a stream's cover (upload or pin), hand it back to
automatic selection, block and unblock frames, and look at streams and their frames.

Every request needs a bearer token from COVERSERVICE_ADMIN_TOKENS, compared in constant
time; every change is written to the audit log under the token's name, in the same
transaction as the change.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from . import imaging, queries
from .cache import CoverCache
from .callbacks import STREAM_ID_PATTERN
from .covers import RenderedCover, render_and_store
from .db import transaction
from .errors import AdminError, FetchError, ImageRejected
from .models import CoverSource, Frame, Stream
from .settings import Settings
from .storage import Storage

MAX_LIST = 500
# The page is one self-contained file: it loads nothing from elsewhere and may not be framed.
_PAGE_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'"
)
_STREAM_ID = re.compile(STREAM_ID_PATTERN)


@dataclass(frozen=True)
class AdminDeps:
    settings: Settings
    sessions: sessionmaker[Session]
    storage: Storage
    cache: CoverCache
    fetch: Callable[[str], bytes]
    clock: Callable[[], datetime]
    describe_cover: Callable[[queries.CoverView], dict[str, Any]]


class _PinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    frame_id: Annotated[StrictInt, Field(ge=1, lt=2**63)]  # a bigint: larger ones overflow the driver
    expires_in: Annotated[StrictInt, Field(gt=0, le=365 * 86_400)] | None = None


def routes(deps: AdminDeps) -> list[Route]:
    settings, sessions, cache, clock = deps.settings, deps.sessions, deps.cache, deps.clock
    tokens = settings.admin_token_names

    def actor(request: Request) -> str:
        if not tokens:
            raise AdminError(403, "admin_disabled", "admin is disabled: set COVERSERVICE_ADMIN_TOKENS")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise AdminError(401, "unauthorized", "an Authorization: Bearer token is required")
        name = None
        for token, token_name in tokens.items():  # no early exit: timing says nothing
            if hmac.compare_digest(token.encode(), given.strip().encode()):
                name = token_name
        if name is None:
            raise AdminError(401, "unauthorized", "invalid token")
        return name

    def stream_id_of(request: Request) -> str:
        stream_id: str = request.path_params["stream_id"]
        if not _STREAM_ID.match(stream_id):
            raise AdminError(404, "unknown_stream", "no such stream")
        return stream_id

    async def changed(stream_id: str) -> None:
        # This process at once; the others through the database's notification.
        cache.invalidate(stream_id)

    def current(session: Session, stream_id: str) -> dict[str, Any] | None:
        view = queries.cover_view(session, stream_id, now=clock())
        return deps.describe_cover(view) if view else None

    # --- reads ---------------------------------------------------------------------------

    async def page(request: Request) -> Response:
        html = resources.files("coverservice").joinpath("static/admin.html").read_text("utf-8")
        return HTMLResponse(html, headers={"Cache-Control": "no-store", "Content-Security-Policy": _PAGE_CSP})

    async def list_streams(request: Request) -> Response:
        actor(request)
        limit = _int_param(request, "limit", 100, MAX_LIST)
        after = request.query_params.get("after")
        if after is not None and not _STREAM_ID.fullmatch(after):
            # Postgres refuses some strings outright (a NUL byte): no stream id looks so.
            raise AdminError(400, "invalid_parameter", "after must be a stream id")

        def read() -> list[dict[str, Any]]:
            with transaction(sessions) as session:
                return [_stream_json(s, current(session, s.id), clock()) for s in queries.list_streams(session, limit=limit, after=after)]

        return JSONResponse({"streams": await run_in_threadpool(read)})

    async def show_stream(request: Request) -> Response:
        actor(request)
        stream_id = stream_id_of(request)

        def read() -> dict[str, Any]:
            with transaction(sessions) as session:
                stream = session.get(Stream, stream_id)
                if stream is None:
                    raise AdminError(404, "unknown_stream", "no such stream")
                return _stream_json(stream, current(session, stream_id), clock())

        return JSONResponse({"stream": await run_in_threadpool(read)})

    async def list_frames(request: Request) -> Response:
        actor(request)
        stream_id = stream_id_of(request)
        limit = _int_param(request, "limit", 50, MAX_LIST)

        def read() -> list[dict[str, Any]]:
            with transaction(sessions) as session:
                if session.get(Stream, stream_id) is None:
                    raise AdminError(404, "unknown_stream", "no such stream")
                view = queries.cover_view(session, stream_id, now=clock())
                cover_frame = view.frame_id if view else None
                return [_frame_json(f, cover_frame) for f in queries.list_frames(session, stream_id, limit=limit)]

        return JSONResponse({"stream_id": stream_id, "frames": await run_in_threadpool(read)})

    async def thumbnail(request: Request) -> Response:
        actor(request)
        frame = await run_in_threadpool(_frame_or_404, sessions, _frame_id(request))

        def render() -> bytes:
            data = deps.fetch(frame.pic_full_url)
            [small] = imaging.render_renditions(
                data, max_pixels=settings.max_image_pixels, sizes={"small": imaging.SIZES["small"]}, formats=["jpeg"]
            )
            return small.data

        try:
            data = await run_in_threadpool(render)
        except FetchError as exc:
            raise AdminError(502, "fetch_failed", f"screenshot unavailable: {exc}") from None
        except ImageRejected as exc:
            raise AdminError(422, "image_rejected", str(exc)) from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})

    # --- overrides -------------------------------------------------------------------------

    def install_override(
        session: Session,
        stream_id: str,
        rendered: RenderedCover,
        frame: Frame | None,
        expires_at: datetime | None,
        name: str,
        action: str,
        detail: dict[str, Any],
    ) -> dict[str, Any] | None:
        cover_id = queries.create_cover(
            session, stream_id, frame_id=frame.id if frame else None, source=CoverSource.OVERRIDE,
            score=frame.score if frame else None, captured_at=frame.captured_at if frame else None,
            renditions=rendered.renditions, placeholder=rendered.placeholder, now=clock(),
        )
        queries.set_override(session, stream_id, cover_id=cover_id, expires_at=expires_at)
        queries.audit(session, actor=name, action=action, now=clock(), stream_id=stream_id,
                      frame_id=frame.id if frame else None, detail={"cover_id": cover_id, **detail})
        return current(session, stream_id)

    async def respond_with_cover(stream_id: str, apply: Callable[[], dict[str, Any] | None]) -> Response:
        try:
            cover = await run_in_threadpool(apply)
        except ImageRejected as exc:
            raise AdminError(422, "image_rejected", str(exc)) from None
        await changed(stream_id)
        return JSONResponse({"cover": cover})

    async def upload(request: Request) -> Response:
        name = actor(request)
        stream_id = stream_id_of(request)
        data = await _read_limited(request, settings.fetch_max_bytes)

        def apply() -> dict[str, Any] | None:
            rendered = render_and_store(deps.storage, data, max_pixels=settings.max_image_pixels)
            with transaction(sessions) as session:
                queries.ensure_stream(session, stream_id, now=clock())
                return install_override(
                    session, stream_id, rendered, None, None, name, "upload", {"bytes": len(data)}
                )

        return await respond_with_cover(stream_id, apply)

    async def pin(request: Request) -> Response:
        name = actor(request)
        stream_id = stream_id_of(request)
        try:
            body = _PinRequest.model_validate_json(await _read_limited(request, 4096))
        except ValidationError as exc:
            raise AdminError(400, "invalid_body", _first_problem(exc)) from None
        expires_at = clock() + timedelta(seconds=body.expires_in) if body.expires_in else None

        def apply() -> dict[str, Any] | None:
            frame = _frame_or_404(sessions, body.frame_id)
            if frame.stream_id != stream_id:
                raise AdminError(404, "unknown_frame", f"frame {body.frame_id} is not a frame of {stream_id}")
            if frame.blocked:
                raise AdminError(409, "frame_blocked", f"frame {body.frame_id} is blocked")
            try:
                data = deps.fetch(frame.pic_full_url)
            except FetchError as exc:
                raise AdminError(502, "fetch_failed", f"screenshot unavailable: {exc}") from None
            rendered = render_and_store(deps.storage, data, max_pixels=settings.max_image_pixels)
            with transaction(sessions) as session:
                # Blocked between the check and now? The block wins.
                if session.scalar(select(Frame.blocked).where(Frame.id == frame.id)):
                    raise AdminError(409, "frame_blocked", f"frame {body.frame_id} is blocked")
                return install_override(
                    session, stream_id, rendered, frame, expires_at, name, "pin",
                    {"expires_at": expires_at.isoformat() if expires_at else None},
                )

        return await respond_with_cover(stream_id, apply)

    async def release(request: Request) -> Response:
        name = actor(request)
        stream_id = stream_id_of(request)

        def apply() -> dict[str, Any] | None:
            with transaction(sessions) as session:
                if session.get(Stream, stream_id) is None:
                    raise AdminError(404, "unknown_stream", "no such stream")
                removed = queries.clear_override(session, stream_id)
                queries.audit(session, actor=name, action="release", now=clock(), stream_id=stream_id,
                              detail={"had_override": removed})
                return current(session, stream_id)

        cover = await run_in_threadpool(apply)
        await changed(stream_id)
        return JSONResponse({"cover": cover})

    # --- blocking ---------------------------------------------------------------------------

    async def block(request: Request) -> Response:
        return await _set_blocked(request, blocked=True)

    async def unblock(request: Request) -> Response:
        return await _set_blocked(request, blocked=False)

    async def _set_blocked(request: Request, *, blocked: bool) -> Response:
        name = actor(request)
        frame_id = _frame_id(request)

        def apply() -> tuple[str, dict[str, Any]]:
            with transaction(sessions) as session:
                if blocked:
                    stream_id = queries.block_frame(session, frame_id, reason=f"blocked by {name}", now=clock())
                else:
                    stream_id = queries.unblock_frame(session, frame_id, now=clock())
                if stream_id is None:
                    raise AdminError(404, "unknown_frame", "no such frame")
                queries.audit(session, actor=name, action="block" if blocked else "unblock", now=clock(),
                              stream_id=stream_id, frame_id=frame_id)
                frame = session.get_one(Frame, frame_id)
                view = queries.cover_view(session, stream_id, now=clock())
                return stream_id, _frame_json(frame, view.frame_id if view else None)

        stream_id, frame = await run_in_threadpool(apply)
        await changed(stream_id)
        return JSONResponse({"frame": frame})

    return [
        Route("/admin", page, methods=["GET"]),
        Route("/admin/streams", list_streams, methods=["GET"]),
        Route("/admin/streams/{stream_id}", show_stream, methods=["GET"]),
        Route("/admin/streams/{stream_id}/frames", list_frames, methods=["GET"]),
        Route("/admin/frames/{frame_id}/thumbnail", thumbnail, methods=["GET"]),
        Route("/admin/frames/{frame_id}/block", block, methods=["POST"]),
        Route("/admin/frames/{frame_id}/unblock", unblock, methods=["POST"]),
        Route("/admin/covers/{stream_id}", upload, methods=["PUT"]),
        Route("/admin/covers/{stream_id}/pin", pin, methods=["POST"]),
        Route("/admin/covers/{stream_id}/override", release, methods=["DELETE"]),
    ]


def _frame_id(request: Request) -> int:
    raw = request.path_params["frame_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise AdminError(404, "unknown_frame", "no such frame")
    return int(raw)


def _frame_or_404(sessions: sessionmaker[Session], frame_id: int) -> Frame:
    with sessions() as session:
        frame = queries.get_frame(session, frame_id)
    if frame is None:
        raise AdminError(404, "unknown_frame", "no such frame")
    return frame


def _int_param(request: Request, name: str, default: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise AdminError(400, "invalid_parameter", f"{name} must be an integer from 1 to {maximum}")
    return int(raw)


async def _read_limited(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise AdminError(413, "payload_too_large", f"body larger than {limit} bytes")
    return bytes(body)


def _first_problem(exc: ValidationError) -> str:
    err = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    return f"{where}: {err['msg']}"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _stream_json(stream: Stream, cover: dict[str, Any] | None, now: datetime) -> dict[str, Any]:
    override = None
    if stream.override_cover_id is not None and (stream.override_expires_at is None or stream.override_expires_at > now):
        frame_id = cover["frame_id"] if cover else None
        override = {"kind": "pin" if frame_id else "upload", "frame_id": frame_id, "expires_at": _iso(stream.override_expires_at)}
    return {
        "stream_id": stream.id,
        "live": stream.live,
        "last_frame_at": _iso(stream.last_frame_at),
        "cover": cover,
        "override": override,
    }


def _frame_json(frame: Frame, cover_frame_id: int | None) -> dict[str, Any]:
    return {
        "id": frame.id,
        "captured_at": _iso(frame.captured_at),
        "received_at": _iso(frame.received_at),
        "status": frame.status,
        "reason": frame.reason,
        "selection": frame.selection,
        "score": frame.score,
        "metrics": frame.metrics,
        "blocked": frame.blocked,
        "blocked_reason": frame.blocked_reason,
        "is_cover": frame.id == cover_frame_id,
        "image_url": frame.pic_full_url,
        "thumbnail_url": f"/admin/frames/{frame.id}/thumbnail",
    }
