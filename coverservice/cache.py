"""In-process caches for the cover hot path: a hot cover is served without touching the
database or storage on every request.

- Stream → cover view, for ``ttl`` seconds (the bound on how stale a cover may be seen
  by this process), misses included, so an unknown stream cannot hammer the database.
- Storage key → bytes, LRU bounded in bytes. Keys are content-addressed, so an entry is
  never stale; it only ages out.

Concurrent misses for one stream share a single load (single flight).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from .queries import CoverView

T = TypeVar("T")

MAX_STREAMS = 100_000


class _SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future[T]] = {}

    async def run(self, key: str, load: Callable[[], Awaitable[T]]) -> T:
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await load()
        except BaseException as exc:
            future.set_exception(exc)
            # Waiters get the error; nobody else awaits this future, so mark it seen.
            future.exception()
            raise
        else:
            future.set_result(value)
            return value
        finally:
            del self._inflight[key]


class CoverCache:
    def __init__(
        self,
        *,
        ttl: float,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._clock = clock
        self._views: OrderedDict[str, tuple[float, CoverView | None]] = OrderedDict()
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self._blob_bytes = 0
        self._view_flight: _SingleFlight[CoverView | None] = _SingleFlight()
        self._blob_flight: _SingleFlight[bytes] = _SingleFlight()

    async def view(
        self, stream_id: str, load: Callable[[str], Awaitable[CoverView | None]]
    ) -> CoverView | None:
        entry = self._views.get(stream_id)
        now = self._clock()
        if entry is not None and entry[0] > now:
            return entry[1]

        async def fill() -> CoverView | None:
            value = await load(stream_id)
            self._views[stream_id] = (self._clock() + self.ttl, value)
            self._views.move_to_end(stream_id)
            while len(self._views) > MAX_STREAMS:
                self._views.popitem(last=False)
            return value

        return await self._view_flight.run(stream_id, fill)

    def invalidate(self, stream_id: str) -> None:
        self._views.pop(stream_id, None)

    async def blob(self, key: str, load: Callable[[str], Awaitable[bytes]]) -> bytes:
        data = self._blobs.get(key)
        if data is not None:
            self._blobs.move_to_end(key)
            return data

        async def fill() -> bytes:
            value = await load(key)
            self._remember(key, value)
            return value

        return await self._blob_flight.run(key, fill)

    def _remember(self, key: str, data: bytes) -> None:
        if len(data) > self.max_bytes or key in self._blobs:
            return
        self._blobs[key] = data
        self._blob_bytes += len(data)
        while self._blob_bytes > self.max_bytes:
            _, old = self._blobs.popitem(last=False)
            self._blob_bytes -= len(old)
