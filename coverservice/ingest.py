"""Group commit for screenshot callbacks.

A callback is acknowledged only once its row is committed (CSS must retry anything we
lose). One transaction per request makes ingest cost one commit — a disk flush — per
callback; here concurrent callbacks share one: while a batch is being written, the next
one gathers, and each request still waits for the commit of its own batch.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from sqlalchemy import Connection, Engine

from .errors import CoverServiceError
from .queries import NewFrame


class IngestOverloaded(CoverServiceError):
    """More callbacks are waiting than the database keeps up with; shed load (CSS retries)."""


class GroupCommitter:
    """Up to ``writers`` batches may be in flight at once, each written by a thread of its
    own: while one waits for its commit's flush, the callbacks that arrived meanwhile are
    already being written. ``write`` must then be safe to call from that many threads.

    A writer thread takes the next batch as soon as it has committed one, so under load
    a batch costs no hand-over to a thread; the event loop is called back once per batch
    to answer its requests. A thread left without work for ``linger`` seconds ends, and
    the next callback starts another. One committer serves one event loop."""

    def __init__(
        self,
        write: Callable[[list[NewFrame]], None],
        *,
        max_batch: int = 500,
        max_pending: int = 20_000,
        writers: int = 1,
        linger: float = 1.0,
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._max_writers = writers
        self._linger = linger
        self._pending: list[tuple[NewFrame, asyncio.Future[None]]] = []
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._threads = 0  # writer threads alive
        self._idle = 0  # of which waiting for work

    async def record(self, frame: NewFrame) -> None:
        """Return once ``frame`` is committed; raise what the write raised otherwise."""
        if len(self._pending) >= self._max_pending:
            raise IngestOverloaded(f"{len(self._pending)} callbacks waiting to be recorded")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((frame, future))
        # Under load every writer is busy and this is all: no lock. A writer about to
        # wait or end counts itself idle or gone before it looks at the queue one last
        # time, and this reads the counts after appending, so one of the two sees the
        # other (the GIL orders these steps).
        if self._idle or self._threads < self._max_writers:
            with self._lock:
                if self._idle:
                    self._work.notify()
                elif self._threads < self._max_writers:
                    self._threads += 1
                    threading.Thread(target=self._run, name="coverservice-ingest", daemon=True).start()
        await future

    def _run(self) -> None:
        while True:
            with self._lock:
                batch = self._pending[: self._max_batch]
                # What was taken, not max_batch: the event loop appends without the lock,
                # and a callback appended between these two lines must stay queued.
                del self._pending[: len(batch)]
                if not batch and not self._wait_for_work():
                    return
            if batch:
                _answer(self._commit(batch))

    def _wait_for_work(self) -> bool:
        """With the lock held: wait up to ``linger`` seconds for callbacks; False if this
        thread is to end."""
        self._idle += 1
        # Woken for callbacks another writer took first: not a reason to end.
        woken = bool(self._pending) or self._work.wait(self._linger)
        self._idle -= 1
        if woken or self._pending:
            return True
        self._threads -= 1
        if self._pending:  # appended while the count still showed this thread
            self._threads += 1
            return True
        return False

    def _commit(self, batch: list[tuple[NewFrame, asyncio.Future[None]]]) -> list[_Answer]:
        try:
            self._write([frame for frame, _ in batch])
        except Exception as exc:  # noqa: BLE001  (every waiter must get an answer)
            if len(batch) == 1:
                return [(batch[0][1], exc)]
            # One bad row must not fail its neighbours: retry them one by one (a
            # database that is down fails each of them quickly anyway).
            answers: list[_Answer] = []
            for frame, future in batch:
                try:
                    self._write([frame])
                except Exception as single:  # noqa: BLE001  (as above)
                    answers.append((future, single))
                else:
                    answers.append((future, None))
            return answers
        return [(future, None) for _, future in batch]


_Answer = tuple["asyncio.Future[None]", BaseException | None]


def _answer(answers: list[_Answer]) -> None:
    """Settle the futures of a batch from its writer thread: one call into their loop."""
    with suppress(RuntimeError):  # the loop is closed: nobody is waiting
        answers[0][0].get_loop().call_soon_threadsafe(_settle_all, answers)


def _settle_all(answers: list[_Answer]) -> None:
    for future, error in answers:
        if future.done():  # a client that went away cancelled its wait
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


class CommitterConnections:
    """The connections the committer writes through (one per writer), kept between
    batches: a batch then costs its statements and its commit, with no pool checkout and
    no liveness ping (each a round trip, and each a wait for the GIL on a busy event
    loop). A connection that broke is dropped, and the next batch opens a new one.

    ``single_statement``: the write is one statement, atomic by itself, so it runs in
    autocommit mode: one round trip per batch instead of BEGIN, statement and COMMIT.
    Durability is the same (the statement returns once its commit is flushed)."""

    def __init__(self, engine: Engine, *, single_statement: bool = False) -> None:
        self._engine = engine
        self._single_statement = single_statement
        self._idle: list[Connection] = []  # list.pop and append are atomic: no lock

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._engine.connect()
            if self._single_statement:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        try:
            with conn.begin():
                yield conn
        finally:
            if conn.invalidated:  # SQLAlchemy marks a connection lost to a disconnect
                conn.close()
            else:
                self._idle.append(conn)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
