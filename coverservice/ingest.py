"""Group commit for screenshot callbacks.

A callback is acknowledged only once its row is committed (CSS must retry anything we
lose). One transaction per request makes ingest cost one commit — a disk flush — per
callback; here concurrent callbacks share one: while a batch is being written, the next
one gathers, and each request still waits for the commit of its own batch.

Everything runs on the event loop. On Postgres the batch goes out on an asyncio driver
connection, so a batch costs no thread hand-over and no wait for the GIL between the
event loop and a writer thread; SQLite, which has no asyncio driver, writes in a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from .errors import CoverServiceError
from .queries import NewFrame, record_frames_async


class IngestOverloaded(CoverServiceError):
    """More callbacks are waiting than the database keeps up with; shed load (CSS retries)."""


class GroupCommitter:
    """One batch is in flight at a time: while it commits, the next one gathers and grows
    with the commit's latency. Measured on Postgres (bench, 32 connections), a second
    writer halved the batches without more callbacks per second, and a third cost a fifth
    of them (more statements and commits for the same rows). The writer takes the next
    batch as soon as it has committed one and ends when none is waiting; the next callback
    starts another. One committer serves one event loop."""

    def __init__(
        self,
        write: Callable[[list[NewFrame]], Awaitable[None]],
        *,
        max_batch: int = 500,
        max_pending: int = 20_000,
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._pending: list[tuple[NewFrame, asyncio.Future[None]]] = []
        # The running writer; also the reference that keeps it from being collected mid-write.
        self._writer: asyncio.Task[None] | None = None

    async def record(self, frame: NewFrame) -> None:
        """Return once ``frame`` is committed; raise what the write raised otherwise."""
        if len(self._pending) >= self._max_pending:
            raise IngestOverloaded(f"{len(self._pending)} callbacks waiting to be recorded")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((frame, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain())
        await future

    async def _drain(self) -> None:
        try:
            await self._write_batches()
        finally:
            # In the same step that found the queue empty: a callback queued after it
            # starts a new writer. (A done callback would run a step later, and a
            # callback queued in between would wait for the next one to be written.)
            self._writer = None

    async def _write_batches(self) -> None:
        while self._pending:
            # One turn of the event loop before the batch closes: callbacks the loop has
            # already received are parsed meanwhile and join it. Larger batches pay a
            # commit's fixed cost less often; at low load the turn costs microseconds.
            # Measured (bench, Postgres, 32 connections, runs alternated): +9 % callbacks
            # per second; a second turn, or turns while the queue still grew, did not help.
            await asyncio.sleep(0)
            batch = self._pending[: self._max_batch]
            del self._pending[: len(batch)]
            for future, error in await self._commit(batch):
                if future.done():  # a client that went away cancelled its wait
                    continue
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)

    async def _commit(
        self, batch: list[tuple[NewFrame, asyncio.Future[None]]]
    ) -> list[tuple[asyncio.Future[None], BaseException | None]]:
        try:
            await self._write([frame for frame, _ in batch])
        except Exception as exc:  # noqa: BLE001  (every waiter must get an answer)
            if len(batch) == 1:
                return [(batch[0][1], exc)]
            # One bad row must not fail its neighbours: retry them one by one (a
            # database that is down fails each of them quickly anyway).
            answers: list[tuple[asyncio.Future[None], BaseException | None]] = []
            for frame, future in batch:
                try:
                    await self._write([frame])
                except Exception as single:  # noqa: BLE001  (as above)
                    answers.append((future, single))
                else:
                    answers.append((future, None))
            return answers
        return [(future, None) for _, future in batch]


class AsyncFrameRecorder:
    """Records frames on Postgres over one asyncio driver connection (the committer's one
    writer), kept between batches: a batch then costs one statement in autocommit mode — one round trip,
    flushed when it returns — with no pool checkout and no liveness ping. A connection
    that broke is dropped, and the next batch opens a new one."""

    def __init__(self, engine: Engine) -> None:
        # The engine's own connection arguments (host, credentials, connect options).
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        self._args: Sequence[Any] = args
        self._kwargs: dict[str, Any] = dict(kwargs)
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def record(self, frames: Sequence[NewFrame], *, now: datetime) -> list[bool]:
        if self._conn is None:
            self._conn = await self._connect()
        conn = self._conn
        try:
            return await record_frames_async(conn, frames, now=now)
        finally:
            if conn.broken or conn.closed:
                self._conn = None
                await conn.close()

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        try:
            return await psycopg.AsyncConnection.connect(*self._args, autocommit=True, **self._kwargs)
        except psycopg.Error as exc:  # as SQLAlchemy's, like every other database error
            raise DBAPIError.instance(None, None, exc, psycopg.Error, connection_invalidated=True) from exc

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
