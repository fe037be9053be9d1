"""The worker: claim due frames, download, score, reselect the stream's cover, render and
store it, and commit the frame's outcome and the new cover together.

Workers coordinate only through the database (leases, SKIP LOCKED, a compare-and-set on
the stream's cover), so any number of them may run against one Postgres. A worker that
dies mid-frame leaves nothing half-done: its lease runs out and another worker starts the
frame again; objects it already put in storage are content-addressed, so a rerun writes
the same keys.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from . import imaging, queries, scoring
from .covers import render_and_store
from .db import transaction, utcnow
from .errors import FetchError, ImageRejected, StorageError
from .lifecycle import lifecycle_candidates
from .models import FrameStatus
from .queries import ClaimedFrame
from .selection import Candidate, choose_cover
from .settings import Settings
from .storage import Storage

log = logging.getLogger(__name__)

Fetch = Callable[[str], bytes]

# A cover decision lost to a concurrent worker is retried with fresh state this often.
_SELECTION_ROUNDS = 3
_DONE = object()
_UNFINISHED = object()


@dataclass(frozen=True)
class _Scored:
    data: bytes
    scores: scoring.Scores


class Worker:
    def __init__(
        self,
        settings: Settings,
        *,
        session_factory: sessionmaker[Session],
        storage: Storage,
        fetch: Fetch,
        clock: Callable[[], datetime] = utcnow,
        jitter: Callable[[], float] = random.random,
        name: str | None = None,
    ) -> None:
        self.settings = settings
        self._sessions = session_factory
        self._storage = storage
        self._fetch = fetch
        self._clock = clock
        self._jitter = jitter
        self.name = name or f"worker-{uuid.uuid4().hex[:12]}"
        self._lease = timedelta(seconds=settings.worker_lease)
        self._window = timedelta(seconds=settings.selection_window)
        self._grace = timedelta(seconds=settings.offline_grace)
        self._last_prune: datetime | None = None

    # --- loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set: a batch at a time, resting between polls when the
        queue is empty, and riding out database outages (the pool reconnects)."""
        log.info("worker %s started", self.name)
        while not stop.is_set():
            try:
                done = self.run_once()
            except SQLAlchemyError as exc:
                log.warning("worker %s: database unavailable (%s); retrying", self.name, type(exc).__name__)
                done = 0
            if done == 0:
                stop.wait(self.settings.worker_poll_interval)
        log.info("worker %s stopped", self.name)

    def run_once(self) -> int:
        """Claim one batch of due frames and process it; returns how many were claimed."""
        now = self._clock()
        with transaction(self._sessions) as session:
            queries.park_dead_frames(session, now=now, max_attempts=self.settings.worker_max_attempts)
        with transaction(self._sessions) as session:
            batch = queries.claim_frames(
                session,
                owner=f"{self.name}/{uuid.uuid4().hex[:8]}",
                now=now,
                lease=self._lease,
                limit=self.settings.worker_batch_size,
            )
        for frame in batch:
            # The lease was taken for the whole batch; renew it per frame so slow
            # downloads early in a batch cannot expire the frames queued behind them.
            with transaction(self._sessions) as session:
                owned = queries.start_frame(session, frame, until=self._clock() + self._lease)
            if owned:
                self.process(frame)
        with transaction(self._sessions) as session:
            streams = queries.claim_reselections(session, limit=self.settings.worker_batch_size)
        for stream_id in streams:
            try:
                self.reselect(stream_id)
            except Exception:
                log.exception("worker %s: reselecting %s failed", self.name, stream_id)
                with transaction(self._sessions) as session:
                    queries.request_reselection(session, stream_id, now=self._clock())
        self._maybe_prune(now)
        return len(batch) + len(streams)

    def _maybe_prune(self, now: datetime) -> None:
        if self._last_prune is not None and (now - self._last_prune).total_seconds() < self.settings.prune_interval:
            return
        self._last_prune = now
        self.prune(now)

    def prune(self, now: datetime) -> int:
        """Apply the retention period; returns the number of storage objects deleted."""
        with transaction(self._sessions) as session:
            keys = queries.prune(session, before=now - timedelta(seconds=self.settings.retention))
        deleted = 0
        for key in keys:
            try:
                self._storage.delete(key)
                deleted += 1
            except StorageError as exc:
                log.warning("prune: could not delete %s: %s", key, exc)
        if keys:
            log.info("prune: %d objects deleted", deleted)
        return deleted


    def drain(self, max_batches: int = 10_000) -> int:
        """Process until nothing is due (tests, the demo). Returns frames processed."""
        total = 0
        for _ in range(max_batches):
            done = self.run_once()
            if done == 0:
                break
            total += done
        return total

    # --- one frame ---------------------------------------------------------------------

    def process(self, frame: ClaimedFrame) -> None:
        try:
            scored = self._download_and_score(frame)
            if scored is not None:
                self._select(frame, scored)
        except StorageError as exc:
            log.warning("worker %s: frame %d: %s", self.name, frame.id, exc)
            self._retry_or_fail(frame, f"storage unavailable: {exc}")
        except Exception as exc:  # a bug or an unforeseen failure: retried, then failed
            log.exception("worker %s: frame %d failed unexpectedly", self.name, frame.id)
            self._retry_or_fail(frame, f"internal error: {type(exc).__name__}")

    def _download_and_score(self, frame: ClaimedFrame) -> _Scored | None:
        try:
            data = self._fetch(frame.pic_full_url)
        except FetchError as exc:
            if exc.transient:
                self._retry_or_fail(frame, f"download failed: {exc}")
            else:
                self._finish(frame, FrameStatus.FAILED, f"download refused: {exc}")
            return None
        try:
            luma = imaging.decode_luma(data, max_pixels=self.settings.max_image_pixels)
        except ImageRejected as exc:
            self._finish(frame, FrameStatus.REJECTED, str(exc))
            return None
        scores = scoring.score_luma(luma)
        if scores.rejected:
            self._finish(frame, FrameStatus.REJECTED, scores.reason, scores=scores)
            return None
        return _Scored(data, scores)

    def _select(self, frame: ClaimedFrame, scored: _Scored) -> None:
        """Finish a scored frame, together with the cover it produces if it changes one."""
        if self._choose(frame.stream_id, (frame, scored)) is _UNFINISHED:
            self._finish(frame, FrameStatus.SCORED, scored.scores.reason, scores=scored.scores)

    def reselect(self, stream_id: str) -> None:
        """Choose a stream's cover again without a new frame (its cover was blocked)."""
        self._choose(stream_id, None)

    def _choose(self, stream_id: str, new: tuple[ClaimedFrame, _Scored] | None) -> object:
        """Select, render and install. A new frame's result commits in the same
        transaction as the cover it produces; _UNFINISHED tells the caller the frame
        still needs its result recorded."""
        for _ in range(_SELECTION_ROUNDS):
            now = self._clock()
            with transaction(self._sessions) as session:
                inputs = queries.selection_inputs(session, stream_id, since=now - self._window)
            candidates = inputs.candidates
            if new is not None:
                # The new frame is still 'processing', so it is not among the stored ones.
                candidates.append(Candidate(new[0].id, new[1].scores.score, new[0].captured_at))
            candidates, current = lifecycle_candidates(
                candidates,
                inputs.current,
                live=inputs.live,
                changed_at=inputs.live_changed_at,
                grace=self._grace,
            )
            decision = choose_cover(
                candidates,
                current,
                now=now,
                window=self._window,
                hysteresis=self.settings.selection_hysteresis,
                freshness=timedelta(seconds=self.settings.selection_freshness),
                half_life=timedelta(seconds=self.settings.selection_half_life),
            )
            if decision.frame_id is None or self._too_soon(inputs, current, now):
                return _UNFINISHED
            winner = self._winner_source(stream_id, new, decision.frame_id)
            if winner is None:
                return _UNFINISHED
            data, score, captured_at = winner
            try:
                renditions = render_and_store(self._storage, data, max_pixels=self.settings.max_image_pixels)
            except ImageRejected as exc:
                # Scoring decodes a DCT-scaled grayscale; rendering decodes everything
                # and can still find the file broken.
                if new is not None and decision.frame_id == new[0].id:
                    self._finish(new[0], FrameStatus.REJECTED, str(exc), scores=new[1].scores)
                    return _DONE
                log.warning("stream %s: frame %d cannot be rendered: %s", stream_id, decision.frame_id, exc)
                return _UNFINISHED
            with self._sessions() as session, session.begin():
                if new is not None and not self._finish_in(
                    session, new[0], FrameStatus.SCORED, new[1].scores.reason, new[1].scores
                ):
                    session.rollback()
                    return _DONE  # another worker owns the frame now
                cover_id = queries.install_cover(
                    session,
                    stream_id,
                    expected_cover_id=inputs.current_cover_id,
                    frame_id=decision.frame_id,
                    score=score,
                    captured_at=captured_at,
                    renditions=renditions,
                    now=self._clock(),
                )
                if cover_id is None:
                    session.rollback()
                    continue
            log.info("stream %s: cover %d from frame %d (%s)", stream_id, cover_id, decision.frame_id, decision.reason)
            return _DONE
        # Other workers kept changing this stream's cover; theirs will see this frame.
        return _UNFINISHED

    def _too_soon(self, inputs: queries.SelectionInputs, current: Candidate | None, now: datetime) -> bool:
        """A fresh current cover is replaced by a better frame at most once per
        cover_min_interval. The better frame is not lost: the stream's next frame after
        the interval reselects over the whole window."""
        if current is None or inputs.current_since is None:
            return False
        fresh = current.captured_at >= now - self._window
        return fresh and (now - inputs.current_since).total_seconds() < self.settings.cover_min_interval

    def _winner_source(
        self, stream_id: str, new: tuple[ClaimedFrame, _Scored] | None, winner_id: int
    ) -> tuple[bytes, float, datetime] | None:
        if new is not None and winner_id == new[0].id:
            return new[1].data, new[1].scores.score, new[0].captured_at
        # An earlier frame wins (the cover went stale or was blocked): fetch it again.
        with transaction(self._sessions) as session:
            url, score, captured_at = queries.frame_source(session, winner_id)
        try:
            return self._fetch(url), float(score or 0.0), captured_at
        except FetchError as exc:
            log.warning("stream %s: frame %d could not be fetched again: %s", stream_id, winner_id, exc)
            return None

    # --- outcomes ------------------------------------------------------------------------

    def _finish(
        self,
        frame: ClaimedFrame,
        status: FrameStatus,
        reason: str,
        *,
        scores: scoring.Scores | None = None,
    ) -> None:
        with transaction(self._sessions) as session:
            self._finish_in(session, frame, status, reason, scores)
        if status is not FrameStatus.SCORED:
            log.info("frame %d of %s %s: %s", frame.id, frame.stream_id, status.value, reason)

    def _finish_in(
        self,
        session: Session,
        frame: ClaimedFrame,
        status: FrameStatus,
        reason: str,
        scores: scoring.Scores | None,
    ) -> bool:
        done = queries.finish_frame(
            session,
            frame,
            status=status,
            reason=reason,
            now=self._clock(),
            score=scores.score if scores else None,
            metrics=scores.metrics() if scores else None,
        )
        if not done:
            log.warning("worker %s lost the lease on frame %d; dropping its result", self.name, frame.id)
        return done

    def _retry_or_fail(self, frame: ClaimedFrame, reason: str) -> None:
        if frame.attempts >= self.settings.worker_max_attempts:
            self._finish(frame, FrameStatus.FAILED, f"{reason} (gave up after {frame.attempts} attempts)")
            return
        delay = self.backoff(frame.attempts)
        with transaction(self._sessions) as session:
            queries.retry_frame_later(
                session, frame, reason=reason, available_at=self._clock() + timedelta(seconds=delay)
            )
        log.info("frame %d of %s: %s; retry in %.1fs", frame.id, frame.stream_id, reason, delay)

    def backoff(self, attempts: int) -> float:
        """Exponential backoff with equal jitter: retries of frames that failed together
        (a COS hiccup) spread out instead of arriving together again."""
        base = min(self.settings.worker_retry_max, self.settings.worker_retry_base * 2.0 ** (attempts - 1))
        return base / 2 + self._jitter() * base / 2

