"""Every statement the service runs against the database, in one place.

Functions take a Session inside a transaction the caller owns, so each caller decides
what commits together (e.g. a frame's result and the cover it produced).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import (
    Connection,
    Dialect,
    and_,
    bindparam,
    delete,
    func,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import TextClause

from .callbacks import ModerationEvent, ScreenshotEvent
from .db import UTCDateTime
from .models import (
    AuditEntry,
    Cover,
    CoverSource,
    Frame,
    FrameStatus,
    ModerationFlag,
    Rendition,
    Stream,
)
from .selection import Candidate, CurrentCover, StreamView


@dataclass(frozen=True)
class ClaimedFrame:
    id: int
    stream_id: str
    pic_full_url: str
    captured_at: datetime
    attempts: int
    owner: str


@dataclass(frozen=True)
class StoredRendition:
    size: str
    format: str
    key: str
    etag: str
    content_type: str
    width: int
    height: int
    byte_size: int


@dataclass(frozen=True)
class Placeholder:
    """What a page paints while the cover loads."""

    color: str  # "#rrggbb", the cover's dominant colour
    blurhash: str


@dataclass(frozen=True)
class CoverView:
    stream_id: str
    cover_id: int
    source: str
    frame_id: int | None
    score: float | None
    captured_at: datetime | None
    created_at: datetime
    metrics: dict[str, Any] | None
    renditions: dict[tuple[str, str], StoredRendition]  # (size, format) -> rendition
    valid_until: datetime | None = None  # an override's expiry: caches must not outlive it
    placeholder: Placeholder | None = None


@dataclass(frozen=True)
class StreamState:
    """What the public endpoints serve for a stream: its push state and the cover shown."""

    stream_id: str
    live: bool
    cover: CoverView | None


@dataclass(frozen=True)
class SelectionInputs:
    view: StreamView
    since: datetime  # the window start the candidates were read from
    current_cover_id: int | None  # for install_cover's compare-and-set
    reselect_at: datetime | None  # the stream's due time as read


MODERATION_REASON = "moderation"
COVER_CHANNEL = "coverservice_covers"


def _insert(session: Session, model: type[Any]) -> Any:
    # ON CONFLICT is spelled the same in both dialects, but lives in each one's insert().
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)


# --- ingest ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NewFrame:
    event: ScreenshotEvent
    captured_at: datetime
    status: FrameStatus = FrameStatus.PENDING
    reason: str = ""


def record_frames(session: Session | Connection, frames: Sequence[NewFrame], *, now: datetime) -> list[bool]:
    """Store screenshot callbacks, a whole batch in one statement per table. A CSS retry
    (same stream and pic_url as a recorded frame) is skipped; a frame a 317 already
    flagged is born blocked. Returns, for each frame, whether it was stored (False: a
    retry of one already recorded). Runs inside the caller's transaction.

    The statements go to the driver's cursor as they are, compiled once: SQLAlchemy's
    execution and result machinery would cost as much CPU per batch as the driver itself.
    The API's ingest path runs the same statements on an asyncio connection
    (record_frames_async)."""
    if not frames:
        return []
    conn = session.connection() if isinstance(session, Session) else session
    plan = _record_frames_plan(conn.dialect)
    rows = _run_on_driver(conn, plan.statements, plan.params(frames, now))
    return _which_stored(frames, rows)


async def record_frames_async(conn: psycopg.AsyncConnection[Any], frames: Sequence[NewFrame], *, now: datetime) -> list[bool]:
    """record_frames on an autocommit psycopg asyncio connection: one statement, one
    round trip, committed (and flushed) when it returns. Driver errors come out as
    SQLAlchemy's (DBAPIError), as from record_frames."""
    if not frames:
        return []
    plan = _record_frames_plan(_POSTGRES_DIALECT)
    (statement,) = plan.statements
    params = plan.params(frames, now)
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(statement.sql, params)
            rows = await cursor.fetchall()
    except psycopg.Error as exc:
        raise DBAPIError.instance(
            statement.sql, params, exc, psycopg.Error, connection_invalidated=conn.broken or conn.closed,
            dialect=_POSTGRES_DIALECT,
        ) from exc
    return _which_stored(frames, rows)


def _which_stored(frames: Sequence[NewFrame], rows: Sequence[Any]) -> list[bool]:
    stored = {(sid, path) for sid, path in rows}
    new = []
    for pair in ((f.event.stream_id, f.event.pic_url) for f in frames):
        new.append(pair in stored)
        stored.discard(pair)  # the same screenshot twice in one batch is stored once
    return new


@dataclass(frozen=True)
class _DriverStatement:
    sql: str  # in the driver's parameter style
    positions: tuple[str, ...] | None  # parameter names in order, for positional styles

    def bind(self, params: dict[str, Any]) -> dict[str, Any] | tuple[Any, ...]:
        return params if self.positions is None else tuple(params[name] for name in self.positions)


@dataclass(frozen=True)
class _RecordFramesPlan:
    statements: tuple[_DriverStatement, ...]
    stamp: Callable[[datetime], Any]  # captured_at inside the JSON document
    now: Callable[[datetime], Any]  # the :now parameter, as its column type binds it

    def params(self, frames: Sequence[NewFrame], now: datetime) -> dict[str, Any]:
        """The batch as one JSON document that the database unpacks into rows: one
        parameter whatever the batch size, no per-row work in SQLAlchemy, and on Postgres
        one round trip for streams and frames together (a data-modifying CTE)."""
        batch = json.dumps(
            [
                {
                    "stream_id": f.event.stream_id,
                    "channel_id": f.event.channel_id,
                    "pic_url": f.event.pic_url,
                    "pic_full_url": f.event.pic_full_url,
                    "captured_at": self.stamp(f.captured_at),
                    "file_size": f.event.file_size,
                    "width": f.event.width,
                    "height": f.event.height,
                    "app": f.event.app,
                    # As JSON text inside the document: unpacking the document unescapes
                    # its strings, and \u0000 or a lone surrogate in a payload would then
                    # fail the batch; the payload's own text goes into the json column as
                    # received.
                    "payload": json.dumps(f.event.payload),
                    "status": f.status.value,
                    "reason": f.reason,
                }
                for f in frames
            ]
        )
        return {"batch": batch, "now": self.now(now)}


_PLANS: dict[tuple[str, str], _RecordFramesPlan] = {}
_POSTGRES_DIALECT: Dialect = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]


def _record_frames_plan(dialect: Dialect) -> _RecordFramesPlan:
    key = (dialect.name, dialect.paramstyle)
    plan = _PLANS.get(key)
    if plan is None:
        postgres = dialect.name == "postgresql"
        compiled = [s.compile(dialect=dialect) for s in (_RECORD_FRAMES_POSTGRES if postgres else _RECORD_FRAMES_SQLITE)]
        plan = _PLANS[key] = _RecordFramesPlan(
            statements=tuple(
                _DriverStatement(c.string, tuple(c.positiontup or ()) if c.positional else None) for c in compiled
            ),
            # Postgres parses ISO 8601; on SQLite, the text SQLAlchemy writes for these
            # columns, so values compare.
            stamp=datetime.isoformat if postgres else _bind_utc(dialect),
            now=_bind_utc(dialect),
        )
    return plan


def _run_on_driver(conn: Connection, statements: Sequence[_DriverStatement], params: dict[str, Any]) -> list[Any]:
    """Run ``statements`` on ``conn``'s driver connection, inside whatever transaction
    ``conn`` has open; the rows of the last. Driver errors come out as SQLAlchemy's
    (DBAPIError), and a connection lost on the way is invalidated, as when SQLAlchemy runs
    a statement itself."""
    dbapi_error = conn.dialect.loaded_dbapi.Error
    driver = conn.connection.dbapi_connection
    assert driver is not None  # a checked-out connection has one
    cursor = driver.cursor()
    statement = statements[0]
    try:
        for statement in statements:
            cursor.execute(statement.sql, statement.bind(params))
        return list(cursor.fetchall())
    except dbapi_error as exc:
        lost = conn.dialect.is_disconnect(exc, driver, cursor)
        if lost:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            statement.sql, params, exc, dbapi_error, connection_invalidated=lost, dialect=conn.dialect
        ) from exc
    finally:
        cursor.close()


def _bind_utc(dialect: Dialect) -> Callable[[datetime], Any]:
    # The column type's processor for this dialect: UTC (made naive and written as text
    # on SQLite).
    process = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    assert process is not None
    return process


# Streams are upserted in id order: concurrent batches lock stream rows in one order, so
# they never deadlock. A frame's processed_at is set only when it is born finished (a
# download refused at ingest).
_FRAME_COLUMNS = (
    "stream_id, channel_id, pic_url, pic_full_url, captured_at, file_size, width, height, app, payload, "
    "received_at, status, reason, attempts, available_at, processed_at, blocked, blocked_reason"
)
_NOW = bindparam("now", type_=UTCDateTime())
# Screenshots are proof of life: CSS takes them only while a stream is pushed. A stream
# with no push event yet is live from its first screenshot (live_changed_at stays NULL, so
# selection's lifecycle rules see no event). After a push stop, a screenshot captured
# later (by capture time, not arrival: CSS retries callbacks) means the push is back: the
# stream is live again from that capture time, so a retried stop that happened before it
# is ignored by set_stream_live and one that happened after it still applies. A batch
# rarely holds two screenshots of a stream (CSS takes one every 5-10 s); the later counts.
_LIVE_FROM_SCREENSHOTS = """live_changed_at = CASE
        WHEN NOT streams.live AND excluded.last_frame_at > streams.live_changed_at
        THEN excluded.last_frame_at ELSE streams.live_changed_at END,
    live = streams.live OR streams.live_changed_at IS NULL
        OR excluded.last_frame_at > streams.live_changed_at"""
_RECORD_FRAMES_POSTGRES: tuple[TextClause, ...] = (
    text(
        f"""
WITH batch AS (
    SELECT * FROM json_to_recordset(CAST(:batch AS json)) AS b(
        stream_id text, channel_id text, pic_url text, pic_full_url text, captured_at timestamptz,
        file_size bigint, width integer, height integer, app text, payload text, status text, reason text)
), seen AS (
    INSERT INTO streams (id, created_at, last_frame_at, live)
    SELECT stream_id, :now, max(captured_at), true FROM batch GROUP BY stream_id ORDER BY stream_id
    ON CONFLICT (id) DO UPDATE SET last_frame_at = GREATEST(streams.last_frame_at, excluded.last_frame_at),
        {_LIVE_FROM_SCREENSHOTS}
)
INSERT INTO frames ({_FRAME_COLUMNS})
SELECT b.stream_id, b.channel_id, b.pic_url, b.pic_full_url, b.captured_at, b.file_size, b.width, b.height,
    b.app, CAST(b.payload AS json), :now, b.status, b.reason, 0, :now, CASE WHEN b.status = 'pending' THEN NULL ELSE :now END,
    f.stream_id IS NOT NULL, CASE WHEN f.stream_id IS NOT NULL THEN '{MODERATION_REASON}' END
FROM batch b LEFT JOIN moderation_flags f ON f.stream_id = b.stream_id AND f.img_path = b.pic_url
ON CONFLICT (stream_id, pic_url) DO NOTHING
RETURNING stream_id, pic_url"""
    ).bindparams(_NOW),
)
# SQLite has no data-modifying CTEs: two statements over json_each. "WHERE true" keeps
# ON CONFLICT from being read as a join's ON (SQLite's documented parsing ambiguity).
_SQLITE_FIELD = "json_extract(b.value, '$.{}')"
_RECORD_FRAMES_SQLITE: tuple[TextClause, ...] = (
    text(
        f"""
INSERT INTO streams (id, created_at, last_frame_at, live)
SELECT {_SQLITE_FIELD.format("stream_id")}, :now, max({_SQLITE_FIELD.format("captured_at")}), 1
FROM json_each(:batch) AS b WHERE true GROUP BY 1 ORDER BY 1
ON CONFLICT (id) DO UPDATE SET last_frame_at = CASE
    WHEN streams.last_frame_at IS NULL OR streams.last_frame_at < excluded.last_frame_at
    THEN excluded.last_frame_at ELSE streams.last_frame_at END,
    {_LIVE_FROM_SCREENSHOTS}"""
    ).bindparams(_NOW),
    text(
        f"""
INSERT INTO frames ({_FRAME_COLUMNS})
SELECT {", ".join(_SQLITE_FIELD.format(c) for c in ("stream_id", "channel_id", "pic_url", "pic_full_url",
        "captured_at", "file_size", "width", "height", "app"))},
    {_SQLITE_FIELD.format("payload")}, :now, {_SQLITE_FIELD.format("status")},
    {_SQLITE_FIELD.format("reason")}, 0, :now,
    CASE WHEN {_SQLITE_FIELD.format("status")} = 'pending' THEN NULL ELSE :now END,
    f.stream_id IS NOT NULL, CASE WHEN f.stream_id IS NOT NULL THEN '{MODERATION_REASON}' END
FROM json_each(:batch) AS b LEFT JOIN moderation_flags f
    ON f.stream_id = {_SQLITE_FIELD.format("stream_id")} AND f.img_path = {_SQLITE_FIELD.format("pic_url")}
WHERE true
ON CONFLICT (stream_id, pic_url) DO NOTHING
RETURNING stream_id, pic_url"""
    ).bindparams(_NOW),
)


# --- worker: claiming and finishing -------------------------------------------------------


def park_dead_frames(session: Session, *, now: datetime, max_attempts: int) -> int:
    """Frames whose lease ran out after the last allowed attempt: the worker died on them
    every time. Parked as failed so they stop taking workers down with them."""
    result = session.execute(
        update(Frame)
        .where(
            Frame.status == FrameStatus.PROCESSING,
            Frame.lease_expires_at < now,
            Frame.attempts >= max_attempts,
        )
        .values(
            status=FrameStatus.FAILED.value,
            reason=f"gave up after {max_attempts} attempts: the worker stopped while processing it",
            lease_owner=None,
            lease_expires_at=None,
            processed_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount  # type: ignore[attr-defined, no-any-return]


def claim_frames(
    session: Session, *, owner: str, now: datetime, lease: timedelta, limit: int
) -> list[ClaimedFrame]:
    """Lease up to ``limit`` due frames: pending ones whose backoff has passed, and
    processing ones whose worker let the lease run out. SKIP LOCKED lets concurrent
    workers take disjoint batches without waiting on each other (SQLite, with one
    writer at a time, has no need of it and ignores it).

    A claim is not an attempt: ``start_frame`` counts one when the worker begins the
    frame. A worker killed by one frame of its batch (a poison screenshot) thus costs
    the others nothing, and they come first in the next batch (fewest attempts first),
    so they are done before the poison can kill that worker too."""
    # Each kind of due frame on its own, in the order of ix_frames_status_available_at,
    # so a claim reads ``limit`` index entries however long the backlog: one query with
    # both conditions OR-ed had to gather and sort every due frame (1.9 ms per claim at
    # 9,000 pending, growing with the backlog, just when workers fall behind). Ties of
    # available_at (one ingest batch) go in index order. Rows a branch locked but the
    # final LIMIT leaves out stay locked until this transaction ends: other workers skip
    # them for that long.
    branches = [
        select(Frame.id, Frame.available_at)
        .where(condition)
        .order_by(Frame.available_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .subquery()
        for condition in (
            and_(Frame.status == FrameStatus.PENDING, Frame.available_at <= now),
            and_(Frame.status == FrameStatus.PROCESSING, Frame.lease_expires_at < now),
        )
    ]
    due = union_all(*(select(b.c.id, b.c.available_at) for b in branches)).subquery()
    rows = session.execute(
        update(Frame)
        .where(Frame.id.in_(select(due.c.id).order_by(due.c.available_at, due.c.id).limit(limit).scalar_subquery()))
        .values(
            status=FrameStatus.PROCESSING.value,
            lease_owner=owner,
            lease_expires_at=now + lease,
        )
        .returning(Frame.id, Frame.stream_id, Frame.pic_full_url, Frame.captured_at, Frame.attempts)
        .execution_options(synchronize_session=False)
    ).all()
    # attempts: the number this attempt will have once started
    claimed = [ClaimedFrame(r[0], r[1], r[2], r[3], r[4] + 1, owner) for r in rows]
    return sorted(claimed, key=lambda f: (f.attempts, f.id))


def _owned(frame: ClaimedFrame) -> Any:
    # Fencing: a worker whose lease expired (and whose frame another worker took over)
    # must not overwrite the newer result.
    return and_(
        Frame.id == frame.id,
        Frame.status == FrameStatus.PROCESSING,
        Frame.lease_owner == frame.owner,
    )


def start_frame(session: Session, frame: ClaimedFrame, *, until: datetime) -> bool:
    """Count the attempt and renew the lease as the worker begins the frame; False when
    the lease was lost meanwhile."""
    result = session.execute(
        update(Frame)
        .where(_owned(frame))
        .values(lease_expires_at=until, attempts=frame.attempts)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def finish_frame(
    session: Session,
    frame: ClaimedFrame,
    *,
    status: FrameStatus,
    reason: str,
    now: datetime,
    score: float | None = None,
    metrics: dict[str, Any] | None = None,
    selection: str | None = None,
) -> bool:
    """Record a frame's outcome; False when the lease was lost meanwhile."""
    result = session.execute(
        update(Frame)
        .where(_owned(frame))
        .values(
            status=status.value,
            reason=reason,
            score=score,
            metrics=metrics,
            selection=selection,
            processed_at=now,
            processed_by=frame.owner.partition("/")[0],
            lease_owner=None,
            lease_expires_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def retry_frame_later(
    session: Session, frame: ClaimedFrame, *, reason: str, available_at: datetime
) -> bool:
    result = session.execute(
        update(Frame)
        .where(_owned(frame))
        .values(
            status=FrameStatus.PENDING.value,
            reason=reason,
            available_at=available_at,
            lease_owner=None,
            lease_expires_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


# --- selection and covers ---------------------------------------------------------------


def selection_inputs(session: Session, stream_id: str, *, since: datetime) -> SelectionInputs:
    """What selection needs to decide for a stream: its frames scored since ``since``
    (the policy's window start), its automatic cover and its push state."""
    rows = session.execute(
        select(Frame.id, Frame.score, Frame.captured_at, Frame.blocked).where(
            Frame.stream_id == stream_id,
            Frame.status == FrameStatus.SCORED,
            Frame.captured_at >= since,
        )
    ).all()
    candidates = [Candidate(r[0], r[1] or 0.0, r[2], r[3]) for r in rows]
    row = session.execute(
        select(
            Stream.cover_id, Stream.created_at, Stream.live, Stream.live_changed_at, Stream.reselect_at,
            Cover.frame_id, Cover.score, Cover.captured_at, Cover.created_at, Frame.blocked,
        )
        .outerjoin(Cover, Cover.id == Stream.cover_id)
        .outerjoin(Frame, Frame.id == Cover.frame_id)
        .where(Stream.id == stream_id)
    ).one_or_none()
    if row is None:
        return SelectionInputs(StreamView(candidates, None, first_seen_at=since), since, None, None)
    cover_id, created_at, live, live_changed_at, reselect_at, frame_id, score, captured_at, installed_at, blocked = row
    current = None
    if frame_id is not None and score is not None and captured_at is not None:
        current = CurrentCover(frame_id, score, captured_at, bool(blocked), installed_at=installed_at)
    view = StreamView(candidates, current, first_seen_at=created_at, live=live, live_changed_at=live_changed_at)
    return SelectionInputs(view, since, cover_id, reselect_at)


def note_selection(session: Session, frame_id: int, note: str) -> None:
    """Record what selection made of an earlier frame (a held-back frame installed later)."""
    session.execute(
        update(Frame).where(Frame.id == frame_id).values(selection=note).execution_options(synchronize_session=False)
    )


def frame_source(session: Session, frame_id: int) -> tuple[str, float | None, datetime]:
    row = session.execute(
        select(Frame.pic_full_url, Frame.score, Frame.captured_at).where(Frame.id == frame_id)
    ).one()
    return row[0], row[1], row[2]


def create_cover(
    session: Session,
    stream_id: str,
    *,
    frame_id: int | None,
    source: CoverSource,
    score: float | None,
    captured_at: datetime | None,
    renditions: Sequence[StoredRendition],
    now: datetime,
    placeholder: Placeholder | None = None,
) -> int:
    """Insert a cover and its renditions (whose objects are already stored)."""
    cover = Cover(
        stream_id=stream_id,
        frame_id=frame_id,
        source=source.value,
        score=score,
        captured_at=captured_at,
        created_at=now,
        placeholder_color=placeholder.color if placeholder else None,
        placeholder_blurhash=placeholder.blurhash if placeholder else None,
    )
    session.add(cover)
    session.flush()
    session.add_all(
        Rendition(
            cover_id=cover.id,
            size=r.size,
            format=r.format,
            key=r.key,
            etag=r.etag,
            content_type=r.content_type,
            width=r.width,
            height=r.height,
            byte_size=r.byte_size,
        )
        for r in renditions
    )
    session.flush()
    return cover.id


def install_cover(
    session: Session,
    stream_id: str,
    *,
    expected_cover_id: int | None,
    frame_id: int | None,
    score: float | None,
    captured_at: datetime | None,
    renditions: Sequence[StoredRendition],
    now: datetime,
    placeholder: Placeholder | None = None,
) -> int | None:
    """Make a new automatic cover current, if the stream still has the cover the decision
    was made against (compare-and-set under the stream's row lock). Returns the new cover
    id, or None when someone else changed the cover first: the caller decides again.
    Overrides live in other columns, so this can never replace an admin's cover."""
    current = session.execute(
        select(Stream.cover_id).where(Stream.id == stream_id).with_for_update()
    ).one()
    if current[0] != expected_cover_id:
        return None
    if frame_id is not None and session.scalar(select(Frame.blocked).where(Frame.id == frame_id)):
        return None  # blocked since the decision: decide again without it
    cover_id = create_cover(
        session, stream_id, frame_id=frame_id, source=CoverSource.AUTO, score=score,
        captured_at=captured_at, renditions=renditions, now=now, placeholder=placeholder,
    )
    session.execute(update(Stream).where(Stream.id == stream_id).values(cover_id=cover_id))
    notify_cover_change(session, stream_id)
    return cover_id


def stream_state(session: Session, stream_id: str, *, now: datetime) -> StreamState | None:
    """The stream's push state and the cover it shows: an unexpired override, else its
    automatic cover. None for a stream never heard of."""
    stream = session.execute(
        select(Stream.live, Stream.cover_id, Stream.override_cover_id, Stream.override_expires_at).where(
            Stream.id == stream_id
        )
    ).one_or_none()
    if stream is None:
        return None
    live, auto_id, override_id, expires_at = stream
    shown = _shown_cover(auto_id, override_id, expires_at, now)
    if shown is not None:
        return StreamState(stream_id, live, _view(session, stream_id, *shown))
    return StreamState(stream_id, live, None)


def _shown_cover(
    auto_id: int | None, override_id: int | None, expires_at: datetime | None, now: datetime
) -> tuple[int, datetime | None] | None:
    """The cover a stream shows and until when: an unexpired override, else its
    automatic cover."""
    if override_id is not None and (expires_at is None or expires_at > now):
        return override_id, expires_at
    if auto_id is not None:
        return auto_id, None
    return None


def cover_view(session: Session, stream_id: str, *, now: datetime) -> CoverView | None:
    state = stream_state(session, stream_id, now=now)
    return state.cover if state else None


def _view(session: Session, stream_id: str, cover_id: int, valid_until: datetime | None) -> CoverView:
    cover, metrics = session.execute(
        select(Cover, Frame.metrics).outerjoin(Frame, Frame.id == Cover.frame_id).where(Cover.id == cover_id)
    ).one()
    renditions = session.scalars(select(Rendition).where(Rendition.cover_id == cover.id)).all()
    return _cover_view(stream_id, cover, metrics, renditions, valid_until)


def _cover_view(
    stream_id: str,
    cover: Cover,
    metrics: dict[str, Any] | None,
    renditions: Sequence[Rendition],
    valid_until: datetime | None,
) -> CoverView:
    return CoverView(
        stream_id=stream_id,
        cover_id=cover.id,
        source=cover.source,
        frame_id=cover.frame_id,
        score=cover.score,
        captured_at=cover.captured_at,
        created_at=cover.created_at,
        metrics=metrics,
        renditions={(r.size, r.format): _stored(r) for r in renditions},
        valid_until=valid_until,
        placeholder=_placeholder(cover),
    )


def _placeholder(cover: Cover) -> Placeholder | None:
    if cover.placeholder_color is None or cover.placeholder_blurhash is None:
        return None
    return Placeholder(cover.placeholder_color, cover.placeholder_blurhash)


def stream_states(session: Session, stream_ids: Sequence[str], *, now: datetime) -> dict[str, StreamState]:
    """``stream_state`` of many streams in three statements whatever their number (a page
    of rooms). Streams never heard of are absent from the result."""
    streams = session.execute(
        select(Stream.id, Stream.live, Stream.cover_id, Stream.override_cover_id, Stream.override_expires_at).where(
            Stream.id.in_(stream_ids)
        )
    ).all()
    shown = {sid: _shown_cover(auto_id, override_id, expires_at, now) for sid, _, auto_id, override_id, expires_at in streams}
    cover_ids = [c[0] for c in shown.values() if c is not None]
    covers: dict[int, tuple[Cover, dict[str, Any] | None]] = {}
    renditions: dict[int, list[Rendition]] = {cover_id: [] for cover_id in cover_ids}
    if cover_ids:
        for cover, metrics in session.execute(
            select(Cover, Frame.metrics).outerjoin(Frame, Frame.id == Cover.frame_id).where(Cover.id.in_(cover_ids))
        ):
            covers[cover.id] = (cover, metrics)
        for rendition in session.scalars(select(Rendition).where(Rendition.cover_id.in_(cover_ids))):
            renditions[rendition.cover_id].append(rendition)
    states = {}
    for sid, live, *_ in streams:
        pick = shown[sid]
        view = None
        if pick is not None and pick[0] in covers:
            cover, metrics = covers[pick[0]]
            view = _cover_view(sid, cover, metrics, renditions[cover.id], pick[1])
        states[sid] = StreamState(sid, live, view)
    return states


def rendition_owner(session: Session, key: str) -> tuple[str | None, bool]:
    """The stream whose covers use the object at ``key`` (None: no cover does), and whether
    one of them may show it: its frame is not blocked (uploads have no frame)."""
    shown = or_(Frame.id.is_(None), Frame.blocked.is_(False))
    row = session.execute(
        select(Cover.stream_id, shown)
        .join(Rendition, Rendition.cover_id == Cover.id)
        .outerjoin(Frame, Frame.id == Cover.frame_id)
        .where(Rendition.key == key)
        .order_by(shown.desc())
        .limit(1)
    ).first()
    return (None, False) if row is None else (row[0], bool(row[1]))


def add_rendition(session: Session, stream_id: str, cover_id: int, rendition: StoredRendition) -> StoredRendition:
    """Record a rendition made after its cover (AVIF, rendered on first request), its
    object already stored. The first one recorded for a (cover, size, format) stays, so
    its URL keeps its bytes when two processes render it at once: returns that one."""
    session.execute(
        _insert(session, Rendition)
        .values(cover_id=cover_id, **asdict(rendition))  # the dataclass names the columns
        .on_conflict_do_nothing(index_elements=[Rendition.cover_id, Rendition.size, Rendition.format])
    )
    r = session.execute(
        select(Rendition).where(
            Rendition.cover_id == cover_id, Rendition.size == rendition.size, Rendition.format == rendition.format
        )
    ).scalar_one()
    notify_cover_change(session, stream_id)
    return _stored(r)


def _stored(r: Rendition) -> StoredRendition:
    return StoredRendition(r.size, r.format, r.key, r.etag, r.content_type, r.width, r.height, r.byte_size)


def notify_cover_change(session: Session, stream_id: str) -> None:
    """Tell every API process to drop its cached cover of the stream. Postgres delivers
    the notification when (and only if) the transaction commits; SQLite deployments are
    one process, which invalidates its own cache."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, :stream)"), {"channel": COVER_CHANNEL, "stream": stream_id})


# --- overrides ------------------------------------------------------------------------------


def ensure_stream(session: Session, stream_id: str, *, now: datetime) -> None:
    session.execute(
        _insert(session, Stream).values(id=stream_id, created_at=now).on_conflict_do_nothing(index_elements=[Stream.id])
    )


def set_override(session: Session, stream_id: str, *, cover_id: int, expires_at: datetime | None) -> None:
    session.execute(
        update(Stream)
        .where(Stream.id == stream_id)
        .values(override_cover_id=cover_id, override_expires_at=expires_at)
    )
    notify_cover_change(session, stream_id)


def clear_override(session: Session, stream_id: str) -> bool:
    result = session.execute(
        update(Stream)
        .where(Stream.id == stream_id, Stream.override_cover_id.is_not(None))
        .values(override_cover_id=None, override_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    notify_cover_change(session, stream_id)
    return bool(result.rowcount)  # type: ignore[attr-defined]


# --- blocking and moderation -------------------------------------------------------------------


def block_frame(session: Session, frame_id: int, *, reason: str, now: datetime) -> str | None:
    """Block a frame and take it off its stream's covers at once, in this transaction:
    the automatic cover falls back to the stream's previous unblocked cover (its
    renditions are stored already; none: the placeholder) and a worker is asked to
    choose again; an override showing the frame is removed. Returns the stream id, or
    None for an unknown frame."""
    stream_id = session.scalar(select(Frame.stream_id).where(Frame.id == frame_id))
    if stream_id is None:
        return None
    session.execute(
        update(Frame).where(Frame.id == frame_id).values(blocked=True, blocked_reason=reason)
    )
    stream = session.execute(select(Stream).where(Stream.id == stream_id).with_for_update()).scalar_one()
    shows = {c.id: c.frame_id for c in session.scalars(
        select(Cover).where(Cover.id.in_([i for i in (stream.cover_id, stream.override_cover_id) if i]))
    )}
    if stream.override_cover_id is not None and shows.get(stream.override_cover_id) == frame_id:
        stream.override_cover_id = None
        stream.override_expires_at = None
    if stream.cover_id is not None and shows.get(stream.cover_id) == frame_id:
        stream.cover_id = session.scalar(
            select(Cover.id)
            .join(Frame, Frame.id == Cover.frame_id)
            .where(Cover.stream_id == stream_id, Cover.source == CoverSource.AUTO, Frame.blocked.is_(False))
            .order_by(Cover.id.desc())
            .limit(1)
        )
        stream.reselect_at = now
    session.flush()
    notify_cover_change(session, stream_id)
    return stream_id


def unblock_frame(session: Session, frame_id: int, *, now: datetime) -> str | None:
    stream_id = session.scalar(select(Frame.stream_id).where(Frame.id == frame_id))
    if stream_id is None:
        return None
    session.execute(update(Frame).where(Frame.id == frame_id).values(blocked=False, blocked_reason=None))
    # The frame may be the best one again.
    schedule_reselection(session, stream_id, at=now)
    return stream_id


def record_moderation(session: Session, event: ModerationEvent, *, now: datetime) -> list[int]:
    """Keep a blocking verdict and block the frames it names (by path, as CSS's img and
    pic_full_url may use different domains). Returns the frames blocked."""
    flag = _insert(session, ModerationFlag).values(
        stream_id=event.stream_id,
        img_path=event.img_path,
        img=event.img,
        suggestion=event.suggestion,
        payload=event.payload,
        received_at=now,
    )
    session.execute(
        flag.on_conflict_do_update(
            index_elements=[ModerationFlag.stream_id, ModerationFlag.img_path],
            set_={"suggestion": flag.excluded.suggestion, "payload": flag.excluded.payload},
        )
    )
    frame_ids = session.scalars(
        select(Frame.id).where(
            Frame.stream_id == event.stream_id,
            or_(Frame.pic_url == event.img_path, Frame.pic_full_url == event.img),
        )
    ).all()
    for frame_id in frame_ids:
        block_frame(session, frame_id, reason=f"{MODERATION_REASON}: {event.suggestion}", now=now)
    return list(frame_ids)


def schedule_reselection(
    session: Session,
    stream_id: str,
    *,
    at: datetime | None,
    claimed: datetime | None = None,
    seen: SelectionInputs | None = None,
) -> None:
    """Ask for the stream to be reconsidered at ``at`` (None: no time is needed).

    Anyone may move a due time earlier, never later: a decision made from an older
    snapshot (a concurrent worker's) must not cancel one that is needed, and one that
    fires for nothing costs a reselection that finds nothing to do.

    The worker that claimed the stream (``claimed``: the lease it set) replaces its lease
    with its decision's time, unless the stream moved on since its snapshot (``seen``):
    the due time was changed (a block, a push stop, another decision), another cover was
    installed, or a frame was scored that the snapshot did not hold. Then the lease stays
    as the due time, and the next look sees everything."""
    if claimed is not None and seen is not None:
        unseen = (
            select(Frame.id)
            .where(
                Frame.stream_id == stream_id,
                Frame.status == FrameStatus.SCORED,
                Frame.captured_at >= seen.since,
                Frame.id.not_in([c.frame_id for c in seen.view.candidates]),
            )
            .exists()
        )
        cover = Stream.cover_id.is_(None) if seen.current_cover_id is None else Stream.cover_id == seen.current_cover_id
        result = session.execute(
            update(Stream)
            .where(Stream.id == stream_id, Stream.reselect_at == claimed, cover, ~unseen)
            .values(reselect_at=at)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            return
    if at is None:
        return
    session.execute(
        update(Stream)
        .where(Stream.id == stream_id, or_(Stream.reselect_at.is_(None), Stream.reselect_at > at))
        .values(reselect_at=at)
        .execution_options(synchronize_session=False)
    )


def claim_reselections(
    session: Session, *, now: datetime, lease: timedelta, limit: int
) -> list[tuple[str, datetime]]:
    """Lease up to ``limit`` streams whose reselection is due, as frames are claimed:
    SKIP LOCKED in due order over ix_streams_reselect_at. The claim moves the due time
    one lease ahead, so a worker that dies before deciding leaves it due again. Returns
    each stream with the lease it holds (for ``schedule_reselection``)."""
    until = now + lease
    due = (
        select(Stream.id)
        .where(Stream.reselect_at <= now)
        .order_by(Stream.reselect_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(
        update(Stream)
        .where(Stream.id.in_(due.scalar_subquery()))
        .values(reselect_at=until)
        .returning(Stream.id)
        .execution_options(synchronize_session=False)
    ).all()
    return [(r[0], until) for r in rows]


# --- stream lifecycle ----------------------------------------------------------------------------


def set_stream_live(
    session: Session, stream_id: str, *, live: bool, at: datetime, now: datetime
) -> bool:
    """Record a push start or stop that happened ``at``; False when a later one is already
    recorded (CSS retries callbacks, so they can arrive out of order)."""
    stmt = _insert(session, Stream).values(id=stream_id, created_at=now, live=live, live_changed_at=at)
    result = session.execute(
        stmt.on_conflict_do_update(
            index_elements=[Stream.id],
            set_={"live": live, "live_changed_at": at},
            where=or_(Stream.live_changed_at.is_(None), Stream.live_changed_at <= at),
        )
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    if not live:
        # The cover may be one of the stream's last frames, which stop no longer admits.
        schedule_reselection(session, stream_id, at=now)
    notify_cover_change(session, stream_id)
    return True


# --- admin listings and audit ---------------------------------------------------------------------


def list_streams(session: Session, *, limit: int, after: str | None) -> list[Stream]:
    query = select(Stream).order_by(Stream.id).limit(limit)
    if after:
        query = query.where(Stream.id > after)
    return list(session.scalars(query))


def list_frames(session: Session, stream_id: str, *, limit: int) -> list[Frame]:
    return list(
        session.scalars(
            select(Frame).where(Frame.stream_id == stream_id).order_by(Frame.captured_at.desc(), Frame.id.desc()).limit(limit)
        )
    )


def get_frame(session: Session, frame_id: int) -> Frame | None:
    return session.get(Frame, frame_id)


def audit(
    session: Session,
    *,
    actor: str,
    action: str,
    now: datetime,
    stream_id: str | None = None,
    frame_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    session.add(
        AuditEntry(at=now, actor=actor, action=action, stream_id=stream_id, frame_id=frame_id, detail=detail or {})
    )


# --- retention ----------------------------------------------------------------------------------


def prune(session: Session, *, before: datetime) -> list[str]:
    """Delete frames and covers older than ``before``, except current covers, overrides
    and the frames they show. Returns the storage keys no remaining cover uses, for the
    caller to delete after commit (an object left behind by a failed delete is harmless:
    keys are content-addressed and unreferenced)."""
    kept_covers = select(Stream.cover_id).where(Stream.cover_id.is_not(None)).union(
        select(Stream.override_cover_id).where(Stream.override_cover_id.is_not(None))
    )
    old_covers = select(Cover.id).where(Cover.created_at < before, Cover.id.not_in(kept_covers))
    old_keys = set(session.scalars(select(Rendition.key).where(Rendition.cover_id.in_(old_covers))))
    session.execute(delete(Rendition).where(Rendition.cover_id.in_(old_covers)).execution_options(synchronize_session=False))
    session.execute(delete(Cover).where(Cover.id.in_(old_covers)).execution_options(synchronize_session=False))
    shown_frames = select(Cover.frame_id).where(Cover.frame_id.is_not(None))
    session.execute(
        delete(Frame)
        .where(Frame.received_at < before, Frame.id.not_in(shown_frames))
        .execution_options(synchronize_session=False)
    )
    session.execute(delete(ModerationFlag).where(ModerationFlag.received_at < before))
    if not old_keys:
        return []
    still_used = set(session.scalars(select(Rendition.key).where(Rendition.key.in_(old_keys))))
    return sorted(old_keys - still_used)


def frame_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Frame.status, func.count()).group_by(Frame.status)).all()
    return {status: count for status, count in rows}


@dataclass(frozen=True)
class QueueStats:
    pending: int
    processing: int
    due: int
    oldest_due_age: float  # seconds; 0 when nothing is due


def queue_stats(session: Session, *, now: datetime) -> QueueStats:
    """The frame queue for monitoring. Every condition leads with ``status``, so both
    queries are index ranges on (status, available_at): their cost follows the queue,
    not the millions of finished frames kept for retention."""
    counts = dict(
        session.execute(
            select(Frame.status, func.count())
            .where(Frame.status.in_([FrameStatus.PENDING, FrameStatus.PROCESSING]))
            .group_by(Frame.status)
        ).all()
    )
    due, oldest = session.execute(
        select(func.count(), func.min(Frame.available_at)).where(
            Frame.status == FrameStatus.PENDING, Frame.available_at <= now
        )
    ).one()
    age = 0.0
    if oldest is not None:
        age = max(0.0, (now - oldest).total_seconds())
    return QueueStats(
        pending=int(counts.get(FrameStatus.PENDING, 0)),
        processing=int(counts.get(FrameStatus.PROCESSING, 0)),
        due=int(due),
        oldest_due_age=age,
    )
