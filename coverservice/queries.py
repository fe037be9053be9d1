"""Every statement the service runs against the database, in one place.

Functions take a Session inside a transaction the caller owns, so each caller decides
what commits together (e.g. a frame's result and the cover it produced).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, delete, func, or_, select, text, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .callbacks import ModerationEvent, ScreenshotEvent
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
from .selection import Candidate


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


@dataclass(frozen=True)
class StreamState:
    """What the public endpoints serve for a stream: its push state and the cover shown."""

    stream_id: str
    live: bool
    cover: CoverView | None


@dataclass(frozen=True)
class SelectionInputs:
    candidates: list[Candidate]  # scored, unblocked frames since the window start
    current: Candidate | None  # the automatic cover, if it is a frame
    current_cover_id: int | None
    current_since: datetime | None  # when the automatic cover was installed
    live: bool
    live_changed_at: datetime | None


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


def record_frames(session: Session, frames: Sequence[NewFrame], *, now: datetime) -> None:
    """Store screenshot callbacks, many per statement: the API groups concurrent
    callbacks into one transaction. A CSS retry (same stream and pic_url as a recorded
    frame) is skipped; a frame a 317 already flagged is born blocked."""
    if not frames:
        return
    latest: dict[str, datetime] = {}
    for f in frames:
        latest[f.event.stream_id] = max(f.captured_at, latest.get(f.event.stream_id, f.captured_at))
    stream = _insert(session, Stream)
    newer = stream.excluded.last_frame_at
    session.execute(
        stream.on_conflict_do_update(
            index_elements=[Stream.id],
            set_={
                "last_frame_at": case(
                    (or_(Stream.last_frame_at.is_(None), Stream.last_frame_at < newer), newer),
                    else_=Stream.last_frame_at,
                )
            },
        ),
        # Sorted: concurrent batches lock stream rows in one order, so never deadlock.
        [{"id": sid, "created_at": now, "last_frame_at": at} for sid, at in sorted(latest.items())],
    )
    pairs = [(f.event.stream_id, f.event.pic_url) for f in frames]
    flagged = {
        (sid, path)
        for sid, path in session.execute(
            select(ModerationFlag.stream_id, ModerationFlag.img_path).where(
                tuple_(ModerationFlag.stream_id, ModerationFlag.img_path).in_(pairs)
            )
        )
    }
    session.execute(
        _insert(session, Frame).on_conflict_do_nothing(index_elements=[Frame.stream_id, Frame.pic_url]),
        [
            {
                "stream_id": f.event.stream_id,
                "channel_id": f.event.channel_id,
                "pic_url": f.event.pic_url,
                "pic_full_url": f.event.pic_full_url,
                "captured_at": f.captured_at,
                "file_size": f.event.file_size,
                "width": f.event.width,
                "height": f.event.height,
                "app": f.event.app,
                "payload": f.event.payload,
                "received_at": now,
                "status": f.status.value,
                "reason": f.reason,
                "attempts": 0,
                "available_at": now,
                "processed_at": None if f.status is FrameStatus.PENDING else now,
                "blocked": (f.event.stream_id, f.event.pic_url) in flagged,
                "blocked_reason": MODERATION_REASON if (f.event.stream_id, f.event.pic_url) in flagged else None,
            }
            for f in frames
        ],
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
    due = (
        select(Frame.id)
        .where(
            or_(
                and_(Frame.status == FrameStatus.PENDING, Frame.available_at <= now),
                and_(Frame.status == FrameStatus.PROCESSING, Frame.lease_expires_at < now),
            )
        )
        .order_by(Frame.available_at, Frame.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(
        update(Frame)
        .where(Frame.id.in_(due.scalar_subquery()))
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
    rows = session.execute(
        select(Frame.id, Frame.score, Frame.captured_at).where(
            Frame.stream_id == stream_id,
            Frame.status == FrameStatus.SCORED,
            Frame.blocked.is_(False),
            Frame.captured_at >= since,
        )
    ).all()
    candidates = [Candidate(r[0], r[1] or 0.0, r[2]) for r in rows]
    row = session.execute(
        select(
            Stream.cover_id, Stream.live, Stream.live_changed_at,
            Cover.frame_id, Cover.score, Cover.captured_at, Cover.created_at,
        )
        .outerjoin(Cover, Cover.id == Stream.cover_id)
        .where(Stream.id == stream_id)
    ).one_or_none()
    if row is None:
        return SelectionInputs(candidates, None, None, None, False, None)
    cover_id, live, live_changed_at, frame_id, score, captured_at, created_at = row
    current = None
    if frame_id is not None and score is not None and captured_at is not None:
        current = Candidate(frame_id, score, captured_at)
    return SelectionInputs(candidates, current, cover_id, created_at, live, live_changed_at)


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
) -> int:
    """Insert a cover and its renditions (whose objects are already stored)."""
    cover = Cover(
        stream_id=stream_id,
        frame_id=frame_id,
        source=source.value,
        score=score,
        captured_at=captured_at,
        created_at=now,
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
        captured_at=captured_at, renditions=renditions, now=now,
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
    if override_id is not None and (expires_at is None or expires_at > now):
        return StreamState(stream_id, live, _view(session, stream_id, override_id, expires_at))
    if auto_id is not None:
        return StreamState(stream_id, live, _view(session, stream_id, auto_id, None))
    return StreamState(stream_id, live, None)


def cover_view(session: Session, stream_id: str, *, now: datetime) -> CoverView | None:
    state = stream_state(session, stream_id, now=now)
    return state.cover if state else None


def _view(session: Session, stream_id: str, cover_id: int, valid_until: datetime | None) -> CoverView:
    cover, metrics = session.execute(
        select(Cover, Frame.metrics).outerjoin(Frame, Frame.id == Cover.frame_id).where(Cover.id == cover_id)
    ).one()
    renditions = session.scalars(select(Rendition).where(Rendition.cover_id == cover.id)).all()
    return CoverView(
        stream_id=stream_id,
        cover_id=cover.id,
        source=cover.source,
        frame_id=cover.frame_id,
        score=cover.score,
        captured_at=cover.captured_at,
        created_at=cover.created_at,
        metrics=metrics,
        renditions={
            (r.size, r.format): StoredRendition(
                r.size, r.format, r.key, r.etag, r.content_type, r.width, r.height, r.byte_size
            )
            for r in renditions
        },
        valid_until=valid_until,
    )


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
        stream.reselect_requested_at = now
    session.flush()
    notify_cover_change(session, stream_id)
    return stream_id


def unblock_frame(session: Session, frame_id: int, *, now: datetime) -> str | None:
    stream_id = session.scalar(select(Frame.stream_id).where(Frame.id == frame_id))
    if stream_id is None:
        return None
    session.execute(update(Frame).where(Frame.id == frame_id).values(blocked=False, blocked_reason=None))
    # The frame may be the best one again.
    session.execute(update(Stream).where(Stream.id == stream_id).values(reselect_requested_at=now))
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


def request_reselection(session: Session, stream_id: str, *, now: datetime) -> None:
    session.execute(update(Stream).where(Stream.id == stream_id).values(reselect_requested_at=now))


def claim_reselections(session: Session, *, limit: int) -> list[str]:
    due = (
        select(Stream.id)
        .where(Stream.reselect_requested_at.is_not(None))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(
        update(Stream)
        .where(Stream.id.in_(due.scalar_subquery()))
        .values(reselect_requested_at=None)
        .returning(Stream.id)
        .execution_options(synchronize_session=False)
    ).all()
    return [r[0] for r in rows]


# --- stream lifecycle ----------------------------------------------------------------------------


def set_stream_live(session: Session, stream_id: str, *, live: bool, now: datetime) -> None:
    stmt = _insert(session, Stream).values(id=stream_id, created_at=now, live=live, live_changed_at=now)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=[Stream.id], set_={"live": live, "live_changed_at": now}
        )
    )
    notify_cover_change(session, stream_id)


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
