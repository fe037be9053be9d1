"""The worker: claim due frames, download, score, reselect the stream's cover, render and
store it, and commit the frame's outcome and the new cover together.

Workers coordinate only through the database (leases, SKIP LOCKED, a compare-and-set on
the stream's cover), so any number of them may run against one Postgres. A worker that
dies mid-frame leaves nothing half-done: its lease runs out and another worker starts the
frame again; objects it already put in storage are content-addressed, so a rerun writes
the same keys.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from . import imaging, queries, scoring
from .covers import render_and_store
from .db import utcnow
from .errors import FetchError, ImageRejected, StorageError
from .metrics import Metrics
from .models import FrameStatus
from .queries import ClaimedFrame
from .selection import Candidate, Decision, Policy, decide, frame_note
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
        metrics: Metrics | None = None,
        on_cover_change: Callable[[str], object] | None = None,
    ) -> None:
        """``on_cover_change(stream_id)`` is called after a cover this worker installed is
        committed: an in-process worker tells its API's cache at once (with Postgres
        every process also hears of it through NOTIFY)."""
        self.settings = settings
        self.metrics = metrics if metrics is not None else Metrics()
        self._sessions = session_factory
        self._storage = storage
        self._fetch = fetch
        self._clock = clock
        self._jitter = jitter
        self.name = name or f"worker-{uuid.uuid4().hex[:12]}"
        self._lease = timedelta(seconds=settings.worker_lease)
        self._policy = Policy.from_settings(settings)
        self._last_prune: datetime | None = None
        self._on_cover_change = on_cover_change
        # The frame of the batch that comes next, begun by the final transaction of the
        # one before it (see _begin_next), and what that start found.
        self._upcoming: ClaimedFrame | None = None
        self._begun: dict[int, bool] = {}
        self._conn: Connection | None = None  # the batch's connection, see run_once

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
        bind = self._sessions.kw.get("bind")
        if not isinstance(bind, Engine):
            return self._run_batch()
        # The batch's transactions share one connection: one pool checkout, and one
        # liveness ping (a round trip and a transaction of its own), per batch rather
        # than per transaction.
        with bind.connect() as conn:
            self._conn = conn
            try:
                return self._run_batch()
            finally:
                self._conn = None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Session]:
        session = self._sessions() if self._conn is None else self._sessions(bind=self._conn)
        with session, session.begin():
            yield session

    def _run_batch(self) -> int:
        now = self._clock()
        # Commits are what a frame costs Postgres most: parking, claiming the batch,
        # claiming reselections and beginning the first frame share one transaction, and
        # each frame's final transaction begins the next frame (see _begin_next).
        with self._transaction() as session:
            parked = queries.park_dead_frames(session, now=now, max_attempts=self.settings.worker_max_attempts)
            batch = queries.claim_frames(
                session,
                owner=f"{self.name}/{uuid.uuid4().hex[:8]}",
                now=now,
                lease=self._lease,
                limit=self.settings.worker_batch_size,
            )
            streams = queries.claim_reselections(
                session, now=now, lease=self._lease, limit=self.settings.worker_batch_size
            )
            self._upcoming = batch[0] if batch else None
            self._begin_next(session)
        if parked:
            self.metrics.frame_finished(FrameStatus.FAILED, "gave up after", parked)
        try:
            for i, frame in enumerate(batch):
                self._upcoming = batch[i + 1] if i + 1 < len(batch) else None
                owned = self._begun.pop(frame.id, None)
                if owned is None:  # the previous frame ended without a final transaction
                    with self._transaction() as session:
                        owned = self._start(session, frame)
                if owned:
                    self.process(frame)
        finally:
            self._upcoming = None
            self._begun.clear()
        for stream_id, claimed in streams:
            try:
                self._choose(stream_id, None, claimed=claimed)
            except Exception:
                # The claim's lease stays as the stream's due time: it is tried again then.
                log.exception("worker %s: reselecting %s failed", self.name, stream_id)
        self._maybe_prune(now)
        return len(batch) + len(streams)

    def _start(self, session: Session, frame: ClaimedFrame) -> bool:
        # The lease was taken for the whole batch; renew it per frame so slow downloads
        # early in a batch cannot expire the frames queued behind them. The attempt is
        # counted here, not at the claim: a frame that kills its worker costs the frames
        # claimed with it nothing.
        return queries.start_frame(session, frame, until=self._clock() + self._lease)

    def _begin_next(self, session: Session) -> None:
        """Begin the batch's next frame in ``session``: called from a frame's final
        transaction (its result recorded), so a frame costs one commit, not two, and the
        next frame's attempt is still counted only once this one is done."""
        upcoming, self._upcoming = self._upcoming, None
        if upcoming is None:
            return
        owned = self._start(session, upcoming)

        def committed(_: Session) -> None:
            self._begun[upcoming.id] = owned

        # Only a committed start counts; otherwise the loop begins the frame itself.
        event.listen(session, "after_commit", committed, once=True)

    def _maybe_prune(self, now: datetime) -> None:
        if self._last_prune is not None and (now - self._last_prune).total_seconds() < self.settings.prune_interval:
            return
        self._last_prune = now
        self.prune(now)

    def prune(self, now: datetime) -> int:
        """Apply the retention period; returns the number of storage objects deleted."""
        with self._transaction() as session:
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
            with self.metrics.download_seconds.time():
                data = self._fetch(frame.pic_full_url)
        except FetchError as exc:
            if exc.transient:
                self._retry_or_fail(frame, f"download failed: {exc}")
            else:
                self._finish(frame, FrameStatus.FAILED, f"download refused: {exc}")
            return None
        try:
            with self.metrics.score_seconds.time():
                luma = imaging.decode_luma(data, max_pixels=self.settings.max_image_pixels)
                scores = scoring.score_luma(luma)
        except ImageRejected as exc:
            self._finish(frame, FrameStatus.REJECTED, str(exc))
            return None
        if scores.rejected:
            self._finish(frame, FrameStatus.REJECTED, scores.reason, scores=scores)
            return None
        return _Scored(data, scores)

    def _select(self, frame: ClaimedFrame, scored: _Scored) -> None:
        """Finish a scored frame, together with the cover it produces if it changes one."""
        if self._choose(frame.stream_id, (frame, scored)) is _UNFINISHED:
            self._finish(frame, FrameStatus.SCORED, scored.scores.reason, scores=scored.scores)

    def _finish_unchanged(
        self, session: Session, new: tuple[ClaimedFrame, _Scored] | None, decision: Decision
    ) -> object:
        """Record a new frame that changes no cover in the transaction that read the
        selection inputs: most frames end here, in one transaction."""
        if new is None:
            return _DONE
        frame, scored = new
        note = frame_note(decision, frame.id)
        if self._finish_in(session, frame, FrameStatus.SCORED, scored.scores.reason, scored.scores, note):
            self.metrics.frame_finished(FrameStatus.SCORED, scored.scores.reason)
        self._begin_next(session)
        return _DONE

    def _schedule(
        self,
        session: Session,
        stream_id: str,
        inputs: queries.SelectionInputs,
        decision: Decision,
        claimed: datetime | None,
    ) -> None:
        """Store when the stream must be looked at again. Most decisions leave the due
        time as it is (it is already as early or earlier), which costs no statement."""
        at, stored = decision.recheck_at, inputs.reselect_at
        if claimed is None and (at is None or (stored is not None and stored <= at)):
            return
        queries.schedule_reselection(session, stream_id, at=at, claimed=claimed, seen=inputs)

    def _choose(
        self, stream_id: str, new: tuple[ClaimedFrame, _Scored] | None, *, claimed: datetime | None = None
    ) -> object:
        """Select, render and install. A new frame's result commits in the same
        transaction as the cover it produces; _UNFINISHED tells the caller the frame
        still needs its result recorded. ``claimed``: the lease of a claimed reselection."""
        for _ in range(_SELECTION_ROUNDS):
            now = self._clock()
            with self._transaction() as session:
                inputs = queries.selection_inputs(session, stream_id, since=self._policy.window_start(now))
                view = inputs.view
                if new is not None:
                    # The new frame is still 'processing', so it is not among the stored ones.
                    arrived = Candidate(new[0].id, new[1].scores.score, new[0].captured_at)
                    view = replace(view, candidates=[*view.candidates, arrived])
                decision = decide(view, now=now, policy=self._policy)
                if decision.frame_id is None:
                    self._schedule(session, stream_id, inputs, decision, claimed)
                    return self._finish_unchanged(session, new, decision)
            winner = self._winner_source(stream_id, new, decision.frame_id)
            if winner is None:
                return _UNFINISHED
            data, score, captured_at = winner
            try:
                with self.metrics.render_seconds.time():
                    rendered = render_and_store(self._storage, data, max_pixels=self.settings.max_image_pixels)
            except ImageRejected as exc:
                # Scoring decodes a DCT-scaled grayscale; rendering decodes everything
                # and can still find the file broken.
                if new is not None and decision.frame_id == new[0].id:
                    self._finish(new[0], FrameStatus.REJECTED, str(exc), scores=new[1].scores)
                    return _DONE
                log.warning("stream %s: frame %d cannot be rendered: %s", stream_id, decision.frame_id, exc)
                return _UNFINISHED
            with self._transaction() as session:
                if new is not None and not self._finish_in(
                    session, new[0], FrameStatus.SCORED, new[1].scores.reason, new[1].scores,
                    frame_note(decision, new[0].id),
                ):
                    session.rollback()
                    return _DONE  # another worker owns the frame now
                # Before the install: a claimed reselection's due time is replaced only if
                # the stream still has the cover its decision was made against.
                self._schedule(session, stream_id, inputs, decision, claimed)
                cover_id = queries.install_cover(
                    session,
                    stream_id,
                    expected_cover_id=inputs.current_cover_id,
                    frame_id=decision.frame_id,
                    score=score,
                    captured_at=captured_at,
                    renditions=rendered.renditions,
                    placeholder=rendered.placeholder,
                    now=self._clock(),
                )
                if cover_id is None:
                    session.rollback()
                    continue
                if new is None or decision.frame_id != new[0].id:
                    note = frame_note(decision, decision.frame_id, rechecked_at=now if new is None else None)
                    queries.note_selection(session, decision.frame_id, note)
                self._begin_next(session)
            log.info("stream %s: cover %d from frame %d (%s)", stream_id, cover_id, decision.frame_id, decision.reason)
            if self._on_cover_change is not None:
                self._on_cover_change(stream_id)
            self.metrics.cover_changes.labels("frame" if new is not None else "reselection").inc()
            if new is not None:
                self.metrics.frame_finished(FrameStatus.SCORED, new[1].scores.reason)
            return _DONE
        # Other workers kept changing this stream's cover; theirs will see this frame.
        return _UNFINISHED

    def _winner_source(
        self, stream_id: str, new: tuple[ClaimedFrame, _Scored] | None, winner_id: int
    ) -> tuple[bytes, float, datetime] | None:
        if new is not None and winner_id == new[0].id:
            return new[1].data, new[1].scores.score, new[0].captured_at
        # An earlier frame wins (the cover went stale or was blocked): fetch it again.
        with self._transaction() as session:
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
        with self._transaction() as session:
            done = self._finish_in(session, frame, status, reason, scores, None)
            self._begin_next(session)
        if done:
            self.metrics.frame_finished(status, reason)
        if status is not FrameStatus.SCORED:
            log.info("frame %d of %s %s: %s", frame.id, frame.stream_id, status.value, reason)

    def _finish_in(
        self,
        session: Session,
        frame: ClaimedFrame,
        status: FrameStatus,
        reason: str,
        scores: scoring.Scores | None,
        selection: str | None,
    ) -> bool:
        done = queries.finish_frame(
            session,
            frame,
            status=status,
            reason=reason,
            now=self._clock(),
            score=scores.score if scores else None,
            metrics=scores.metrics() if scores else None,
            selection=selection,
        )
        if not done:
            log.warning("worker %s lost the lease on frame %d; dropping its result", self.name, frame.id)
        return done

    def _retry_or_fail(self, frame: ClaimedFrame, reason: str) -> None:
        if frame.attempts >= self.settings.worker_max_attempts:
            self._finish(frame, FrameStatus.FAILED, f"{reason} (gave up after {frame.attempts} attempts)")
            return
        delay = self.backoff(frame.attempts)
        with self._transaction() as session:
            queries.retry_frame_later(
                session, frame, reason=reason, available_at=self._clock() + timedelta(seconds=delay)
            )
            self._begin_next(session)
        self.metrics.frame_finished(FrameStatus.PENDING, reason)
        log.info("frame %d of %s: %s; retry in %.1fs", frame.id, frame.stream_id, reason, delay)

    def backoff(self, attempts: int) -> float:
        """Exponential backoff with equal jitter: retries of frames that failed together
        (a COS hiccup) spread out instead of arriving together again."""
        base = min(self.settings.worker_retry_max, self.settings.worker_retry_base * 2.0 ** (attempts - 1))
        return base / 2 + self._jitter() * base / 2

