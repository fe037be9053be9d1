"""Prometheus metrics: what the API and the workers count, and the queue read from the
database at scrape time.

Each process has its own registry (``Metrics``), injected into the app and the worker.
The queue is not counted by anyone: every process that is scraped reads it from the
database through ``QueueCollector`` (cached briefly, so frequent scrapes cost one query),
so any number of API processes and workers report it without sharing state. It is the same
figure from every process: aggregate it with ``max``, not ``sum``.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from . import queries
from .db import transaction, utcnow
from .errors import CallbackError, PayloadTooLarge, SignatureRejected
from .models import FrameStatus

log = logging.getLogger(__name__)

class Outcome(enum.StrEnum):
    """What became of a callback: the `outcome` label of coverservice_callbacks_total."""

    ACCEPTED = "accepted"  # recorded (a screenshot: queued for a worker)
    DUPLICATE = "duplicate"  # a CSS retry of a recorded screenshot: acknowledged, not stored again
    HOST_NOT_ALLOWED = "host_not_allowed"  # recorded as failed: pic_full_url is not a download we make
    IGNORED = "ignored"  # an event type we do not use, or a 317 suggestion that blocks nothing
    SIGNATURE_REJECTED = "signature_rejected"
    INVALID = "invalid"
    TOO_LARGE = "too_large"
    OVERLOADED = "overloaded"  # shed: too many callbacks waiting for the database (503)
    UNAVAILABLE = "unavailable"  # the database refused the write (503)


# The `event` label: CSS event types by name; "unknown" when the callback was refused
# before its type was read (not JSON, too large, no integer event_type).
EVENTS = {200: "screenshot", 317: "moderation", 1: "push_started", 0: "push_interrupted"}
UNKNOWN_EVENT = "unknown"
OTHER_EVENT = "other"

# Frame reasons are sentences with figures in them ("black frame (mean luma 3.1)"); as a
# label they would make a series per frame. They are mapped to a fixed set by how they
# begin (the messages come from scoring.py, imaging.py, fetch.py, worker.py, queries.py).
_REASON_CATEGORIES = (
    ("black frame", "black"),
    ("white frame", "white"),
    ("flat frame", "flat"),
    ("uniform frame", "uniform"),
    ("test card", "test_card"),
    ("featureless frame", "featureless"),
    ("not an image", "undecodable"),
    ("format ", "undecodable"),
    ("truncated", "undecodable"),
    ("image is ", "too_many_pixels"),  # "image is 8000×8000 = 64 Mpx, over the ... cap"
    ("download refused", "download_refused"),
    ("download failed", "download_failed"),
    ("storage unavailable", "storage"),
    ("internal error", "internal"),
    ("gave up after", "worker_died"),
)
OK = "ok"
OTHER = "other"
REASON_CATEGORIES = frozenset({OK, OTHER, *(category for _, category in _REASON_CATEGORIES)})

# Seconds. Downloads from COS over the internet take tens to hundreds of milliseconds;
# scoring a 720p frame a few milliseconds; rendering a cover 100-200 ms.
_DOWNLOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SCORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)
_RENDER_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def refusal_outcome(error: CallbackError) -> Outcome:
    if isinstance(error, SignatureRejected):
        return Outcome.SIGNATURE_REJECTED
    if isinstance(error, PayloadTooLarge):
        return Outcome.TOO_LARGE
    return Outcome.INVALID


def reason_category(status: str, reason: str) -> str:
    """A frame's reason as a label value from ``REASON_CATEGORIES``."""
    if status == FrameStatus.SCORED:
        return OK
    lowered = reason.lower()
    for prefix, category in _REASON_CATEGORIES:
        if lowered.startswith(prefix):
            return category
    return OTHER


class Metrics:
    """One process's instruments, in a registry of its own (tests build as many as they
    like; nothing is registered globally)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.callbacks = Counter(
            "coverservice_callbacks",
            "CSS callbacks answered, by event type and outcome.",
            ["event", "outcome"],
            registry=self.registry,
        )
        self.frames = Counter(
            "coverservice_frames_finished",
            "Frames a worker finished (scored, rejected, failed) or put back for a retry "
            "(pending), by status and reason category.",
            ["status", "reason"],
            registry=self.registry,
        )
        self.cover_changes = Counter(
            "coverservice_cover_changes",
            "Covers installed by workers: for a new frame, or chosen again for a stream "
            "whose cover was blocked.",
            ["trigger"],
            registry=self.registry,
        )
        self.download_seconds = Histogram(
            "coverservice_download_seconds",
            "Time to download a screenshot (successful or not).",
            buckets=_DOWNLOAD_BUCKETS,
            registry=self.registry,
        )
        self.score_seconds = Histogram(
            "coverservice_score_seconds",
            "Time to decode and score a screenshot.",
            buckets=_SCORE_BUCKETS,
            registry=self.registry,
        )
        self.render_seconds = Histogram(
            "coverservice_render_seconds",
            "Time to render a cover in every size and format and store it.",
            buckets=_RENDER_BUCKETS,
            registry=self.registry,
        )

    def callback(self, event_type: int | None, outcome: Outcome, count: int = 1) -> None:
        if event_type is None:
            event = UNKNOWN_EVENT
        else:
            event = EVENTS.get(event_type, OTHER_EVENT)
        self.callbacks.labels(event, outcome.value).inc(count)

    def frame_finished(self, status: str, reason: str, count: int = 1) -> None:
        self.frames.labels(str(status), reason_category(status, reason)).inc(count)

    def track_queue(
        self, sessions: sessionmaker[Session], *, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Report the frame queue, read from the database when scraped."""
        self.registry.register(QueueCollector(sessions, ttl=ttl, clock=clock))


class QueueCollector(Collector):
    """Queue depth and the wait of the oldest due frame, read from the database at scrape
    time and cached for ``ttl`` seconds. If the database cannot be read, the queue series
    are left out of the scrape (alert on their absence) and the rest is still served."""

    def __init__(
        self, sessions: sessionmaker[Session], *, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._sessions = sessions
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, queries.QueueStats] | None = None

    def _stats(self) -> queries.QueueStats:
        with self._lock:
            now = self._clock()
            if self._cached is None or now - self._cached[0] >= self._ttl:
                with transaction(self._sessions) as session:
                    self._cached = (now, queries.queue_stats(session, now=utcnow()))
            return self._cached[1]

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self._stats()
        except SQLAlchemyError as exc:
            log.warning("queue metrics unavailable: %s", type(exc).__name__)
            return
        depth = GaugeMetricFamily(
            "coverservice_queue_frames",
            "Frames waiting for a worker (pending: due now or after a retry backoff) or "
            "held by one (processing).",
            labels=["status"],
        )
        depth.add_metric([FrameStatus.PENDING.value], stats.pending)
        depth.add_metric([FrameStatus.PROCESSING.value], stats.processing)
        yield depth
        yield GaugeMetricFamily(
            "coverservice_queue_due_frames", "Pending frames whose time has come (not waiting out a backoff).",
            value=stats.due,
        )
        yield GaugeMetricFamily(
            "coverservice_queue_oldest_pending_age_seconds",
            "How long the longest-waiting due frame has waited since it became due (received, "
            "or its retry backoff ended); 0 when none is due.",
            value=stats.oldest_due_age,
        )

    def describe(self) -> Iterator[Metric]:
        # Without describe(), register() would call collect(), which reads the database.
        yield GaugeMetricFamily("coverservice_queue_frames", "", labels=["status"])
        yield GaugeMetricFamily("coverservice_queue_due_frames", "")
        yield GaugeMetricFamily("coverservice_queue_oldest_pending_age_seconds", "")
