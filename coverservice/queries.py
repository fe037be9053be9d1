"""Every statement the service runs against the database, in one place.

Functions take a Session inside a transaction the caller owns, so each caller decides
what commits together (e.g. a frame's result and the cover it produced).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .callbacks import ScreenshotEvent
from .models import Cover, CoverSource, Frame, FrameStatus, Rendition, Stream
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


def _insert(session: Session, model: type[Any]) -> Any:
    # ON CONFLICT is spelled the same in both dialects, but lives in each one's insert().
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)


# --- ingest ----------------------------------------------------------------------------


def record_frame(
    session: Session,
    event: ScreenshotEvent,
    *,
    now: datetime,
    captured_at: datetime,
    status: FrameStatus = FrameStatus.PENDING,
    reason: str = "",
) -> int | None:
    """Store one screenshot callback. Returns the new frame id, or None for a retry of a
    callback already recorded (same stream and pic_url)."""
    stream = _insert(session, Stream).values(
        id=event.stream_id, created_at=now, last_frame_at=captured_at
    )
    newer = stream.excluded.last_frame_at
    stream = stream.on_conflict_do_update(
        index_elements=[Stream.id],
        set_={
            "last_frame_at": case(
                (or_(Stream.last_frame_at.is_(None), Stream.last_frame_at < newer), newer),
                else_=Stream.last_frame_at,
            )
        },
    )
    session.execute(stream)
    frame = (
        _insert(session, Frame)
        .values(
            stream_id=event.stream_id,
            channel_id=event.channel_id,
            pic_url=event.pic_url,
            pic_full_url=event.pic_full_url,
            captured_at=captured_at,
            file_size=event.file_size,
            width=event.width,
            height=event.height,
            app=event.app,
            payload=event.payload,
            received_at=now,
            status=status.value,
            reason=reason,
            attempts=0,
            available_at=now,
            processed_at=None if status is FrameStatus.PENDING else now,
        )
        .on_conflict_do_nothing(index_elements=[Frame.stream_id, Frame.pic_url])
        .returning(Frame.id)
    )
    return session.execute(frame).scalar_one_or_none()


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
    writer at a time, has no need of it and ignores it)."""
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
            attempts=Frame.attempts + 1,
        )
        .returning(Frame.id, Frame.stream_id, Frame.pic_full_url, Frame.captured_at, Frame.attempts)
        .execution_options(synchronize_session=False)
    ).all()
    claimed = [ClaimedFrame(r[0], r[1], r[2], r[3], r[4], owner) for r in rows]
    return sorted(claimed, key=lambda f: f.id)


def _owned(frame: ClaimedFrame) -> Any:
    # Fencing: a worker whose lease expired (and whose frame another worker took over)
    # must not overwrite the newer result.
    return and_(
        Frame.id == frame.id,
        Frame.status == FrameStatus.PROCESSING,
        Frame.lease_owner == frame.owner,
    )


def extend_lease(session: Session, frame: ClaimedFrame, *, until: datetime) -> bool:
    result = session.execute(
        update(Frame)
        .where(_owned(frame))
        .values(lease_expires_at=until)
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


def selection_inputs(
    session: Session, stream_id: str, *, since: datetime
) -> tuple[list[Candidate], Candidate | None, int | None]:
    """The stream's scored frames captured since ``since``, its current cover as a
    candidate (None if it has none or it is not a frame), and the current cover id."""
    rows = session.execute(
        select(Frame.id, Frame.score, Frame.captured_at).where(
            Frame.stream_id == stream_id,
            Frame.status == FrameStatus.SCORED,
            Frame.captured_at >= since,
        )
    ).all()
    candidates = [Candidate(r[0], r[1] or 0.0, r[2]) for r in rows]
    current_row = session.execute(
        select(Stream.cover_id, Cover.frame_id, Cover.score, Cover.captured_at)
        .outerjoin(Cover, Cover.id == Stream.cover_id)
        .where(Stream.id == stream_id)
    ).one_or_none()
    if current_row is None or current_row[0] is None:
        return candidates, None, None
    cover_id, frame_id, score, captured_at = current_row
    if frame_id is None or score is None or captured_at is None:
        return candidates, None, cover_id
    return candidates, Candidate(frame_id, float(score), captured_at), cover_id


def frame_url(session: Session, frame_id: int) -> tuple[str, float | None, datetime]:
    row = session.execute(
        select(Frame.pic_full_url, Frame.score, Frame.captured_at).where(Frame.id == frame_id)
    ).one()
    return row[0], row[1], row[2]


def install_cover(
    session: Session,
    stream_id: str,
    *,
    expected_cover_id: int | None,
    frame_id: int | None,
    source: CoverSource,
    score: float | None,
    captured_at: datetime | None,
    renditions: Sequence[StoredRendition],
    now: datetime,
) -> int | None:
    """Make a new cover current, if the stream still has the cover the decision was made
    against (compare-and-set under the stream's row lock). Returns the new cover id, or
    None when someone else changed the cover first: the caller decides again."""
    current = session.execute(
        select(Stream.cover_id).where(Stream.id == stream_id).with_for_update()
    ).one()
    if current[0] != expected_cover_id:
        return None
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
    session.execute(update(Stream).where(Stream.id == stream_id).values(cover_id=cover.id))
    return cover.id


def cover_view(session: Session, stream_id: str) -> CoverView | None:
    """What GET /cover serves for the stream: its current cover and renditions."""
    row = session.execute(
        select(Cover, Frame.metrics)
        .join(Stream, Stream.cover_id == Cover.id)
        .outerjoin(Frame, Frame.id == Cover.frame_id)
        .where(Stream.id == stream_id)
    ).one_or_none()
    if row is None:
        return None
    cover, metrics = row
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
    )


def frame_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Frame.status, func.count()).group_by(Frame.status)).all()
    return {status: count for status, count in rows}
