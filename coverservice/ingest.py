"""Group commit for screenshot callbacks.

A callback is acknowledged only once its row is committed (CSS must retry anything we
lose). One transaction per request makes ingest cost one commit — a disk flush — per
callback; here concurrent callbacks share one: while a batch is being written, the next
one gathers, and each request still waits for the commit of its own batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool

from .errors import CoverServiceError
from .queries import NewFrame


class IngestOverloaded(CoverServiceError):
    """More callbacks are waiting than the database keeps up with; shed load (CSS retries)."""


class GroupCommitter:
    def __init__(
        self, write: Callable[[list[NewFrame]], None], *, max_batch: int = 500, max_pending: int = 20_000
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._pending: list[tuple[NewFrame, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, frame: NewFrame) -> None:
        """Return once ``frame`` is committed; raise what the write raised otherwise."""
        if len(self._pending) >= self._max_pending:
            raise IngestOverloaded(f"{len(self._pending)} callbacks waiting to be recorded")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((frame, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        await future

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                await run_in_threadpool(self._write, [frame for frame, _ in batch])
            except Exception as exc:
                if len(batch) == 1:
                    _settle(batch[0][1], exc)
                    continue
                # One bad row must not fail its neighbours: retry them one by one (a
                # database that is down fails each of them quickly anyway).
                for item in batch:
                    try:
                        await run_in_threadpool(self._write, [item[0]])
                    except Exception as single:
                        _settle(item[1], single)
                    else:
                        _settle(item[1], None)
            else:
                for _, future in batch:
                    _settle(future, None)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():  # a client that went away cancelled its wait
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
