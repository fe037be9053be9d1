"""The schema: streams, their frames (one row per screenshot callback), and covers with
their renditions. Typed SQLAlchemy 2.0; the Alembic migrations build the same schema."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from .db import Base

# SQLite only auto-increments an INTEGER PRIMARY KEY; Postgres gets a bigint identity.
BigId = Annotated[int, mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)]
StreamId = Annotated[str, mapped_column(String(200))]
Json = Annotated[dict[str, Any], mapped_column(JSON)]


class FrameStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for a worker (first try or a retry after backoff)
    PROCESSING = "processing"  # claimed by a worker holding a lease
    SCORED = "scored"  # usable; may be or become the cover
    REJECTED = "rejected"  # the image is unusable (not an image, black, flat, ...)
    FAILED = "failed"  # could not be obtained or processed, retries spent


class CoverSource(enum.StrEnum):
    AUTO = "auto"
    OVERRIDE = "override"


def _in(column: str, values: type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Stream(Base):
    __tablename__ = "streams"
    # The reselection claim: due streams in due order, over the few that have a due time.
    __table_args__ = (
        Index(
            "ix_streams_reselect_at", "reselect_at",
            postgresql_where=text("reselect_at IS NOT NULL"), sqlite_where=text("reselect_at IS NOT NULL"),
        ),
    )

    id: Mapped[StreamId] = mapped_column(primary_key=True)
    created_at: Mapped[datetime]
    last_frame_at: Mapped[datetime | None]
    # The cover currently served. Changed only together with the new cover's rows, in one
    # transaction, so it never points at a cover whose renditions are not stored.
    cover_id: Mapped[int | None] = mapped_column(
        ForeignKey("covers.id", use_alter=True, ondelete="SET NULL")
    )
    # An admin's cover (pinned frame or upload). It wins over cover_id until removed or
    # expired; the worker never writes these columns, so it cannot undo an override.
    override_cover_id: Mapped[int | None] = mapped_column(
        ForeignKey("covers.id", use_alter=True, ondelete="SET NULL")
    )
    override_expires_at: Mapped[datetime | None]
    # Push state from CSS events 1 / 0.
    live: Mapped[bool] = mapped_column(default=False, server_default=false())
    live_changed_at: Mapped[datetime | None]
    # When the cover must be chosen again without a new frame: a held-back better frame's
    # interval ends, the cover leaves the window or is overtaken as it ages, its frame was
    # blocked, the push stopped. Workers claim due streams as they claim frames (a claim
    # moves it one lease ahead, so a worker that dies leaves it due again).
    reselect_at: Mapped[datetime | None]


class Frame(Base):
    __tablename__ = "frames"
    __table_args__ = (
        # A CSS retry carries the same stream and picture path: it is recorded once.
        UniqueConstraint("stream_id", "pic_url"),
        CheckConstraint(_in("status", FrameStatus), name="status"),
        # The claim query: due frames in arrival order.
        Index("ix_frames_status_available_at", "status", "available_at"),
        # Selection: a stream's recent frames.
        Index("ix_frames_stream_id_captured_at", "stream_id", "captured_at"),
    )

    id: Mapped[BigId]
    stream_id: Mapped[StreamId] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"))
    channel_id: Mapped[str] = mapped_column(String(200))
    pic_url: Mapped[str] = mapped_column(String(1024))
    pic_full_url: Mapped[str] = mapped_column(String(2048))
    captured_at: Mapped[datetime]  # CSS create_time
    file_size: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int]
    height: Mapped[int]
    app: Mapped[str | None] = mapped_column(String(200))
    payload: Mapped[Json]  # the callback as received, secrets redacted
    received_at: Mapped[datetime]

    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(default=0)
    available_at: Mapped[datetime]  # not claimable before this (retry backoff)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    processed_at: Mapped[datetime | None]
    processed_by: Mapped[str | None] = mapped_column(String(64))  # worker name, for operators

    score: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Blocked frames (moderation or an admin) are never used for a cover.
    blocked: Mapped[bool] = mapped_column(default=False, server_default=false())
    blocked_reason: Mapped[str | None] = mapped_column(Text)
    # What selection made of the frame ("became the cover: ...", "held back until ...").
    selection: Mapped[str | None] = mapped_column(Text)


class ModerationFlag(Base):
    """A CSS 317 verdict that blocks a screenshot, kept even when the screenshot's own
    callback has not arrived yet, so the frame is blocked the moment it does."""

    __tablename__ = "moderation_flags"
    __table_args__ = (UniqueConstraint("stream_id", "img_path"),)

    id: Mapped[BigId]
    stream_id: Mapped[StreamId]
    img_path: Mapped[str] = mapped_column(String(1024))  # matched against Frame.pic_url
    img: Mapped[str] = mapped_column(String(2048))
    suggestion: Mapped[str] = mapped_column(String(32))
    payload: Mapped[Json]
    received_at: Mapped[datetime]


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[BigId]
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(64))  # admin token's name, or "moderation"
    action: Mapped[str] = mapped_column(String(32))
    stream_id: Mapped[str | None] = mapped_column(String(200), index=True)
    frame_id: Mapped[int | None] = mapped_column(BigInteger)
    detail: Mapped[Json]


class Cover(Base):
    __tablename__ = "covers"
    __table_args__ = (CheckConstraint(_in("source", CoverSource), name="source"),)

    id: Mapped[BigId]  # also the cover's version
    stream_id: Mapped[StreamId] = mapped_column(
        ForeignKey("streams.id", ondelete="CASCADE"), index=True
    )
    frame_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("frames.id", ondelete="SET NULL"), index=True
    )
    source: Mapped[str] = mapped_column(String(16))
    score: Mapped[float | None] = mapped_column(Float)
    captured_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    # What a page paints before the image arrives, computed once when the cover is
    # rendered (covers.py). Null for covers made before placeholders existed.
    placeholder_color: Mapped[str | None] = mapped_column(String(7))  # "#rrggbb"
    placeholder_blurhash: Mapped[str | None] = mapped_column(String(64))


class Rendition(Base):
    __tablename__ = "renditions"

    cover_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("covers.id", ondelete="CASCADE"), primary_key=True
    )
    size: Mapped[str] = mapped_column(String(16), primary_key=True)
    format: Mapped[str] = mapped_column(String(16), primary_key=True)
    # Content-addressed storage key; indexed for the /r/ URLs, which ask by key.
    key: Mapped[str] = mapped_column(String(300), index=True)
    etag: Mapped[str] = mapped_column(String(80))
    content_type: Mapped[str] = mapped_column(String(64))
    width: Mapped[int]
    height: Mapped[int]
    byte_size: Mapped[int]
