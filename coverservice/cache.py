"""In-process caches for the cover hot path: a hot cover is served without touching the
database or storage on every request, and how they learn of changes made elsewhere.

- Stream → its state and cover, for ``ttl`` seconds (the bound on how stale a cover may be seen
  by this process), misses included, so an unknown stream cannot hammer the database.
- Storage key → bytes, LRU bounded in bytes. Keys are content-addressed, so an entry is
  never stale; it only ages out.

Concurrent misses for one stream share a single load (single flight). With Postgres,
every process LISTENs for cover changes, so a blocked frame leaves every process's cache
at once instead of after the TTL.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Generic, TypeVar

import psycopg
from sqlalchemy.engine import make_url

from .db import utcnow
from .queries import COVER_CHANNEL, StreamState

log = logging.getLogger(__name__)

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
        wall: Callable[[], datetime] = utcnow,
    ) -> None:
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._clock = clock
        self._wall = wall
        self._generation = 0
        self._views: OrderedDict[str, tuple[float, StreamState | None]] = OrderedDict()
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self._blob_bytes = 0
        self._view_flight: _SingleFlight[StreamState | None] = _SingleFlight()
        self._blob_flight: _SingleFlight[bytes] = _SingleFlight()

    async def view(
        self, stream_id: str, load: Callable[[str], Awaitable[StreamState | None]]
    ) -> StreamState | None:
        entry = self._views.get(stream_id)
        now = self._clock()
        if entry is not None and entry[0] > now:
            return entry[1]

        async def fill() -> StreamState | None:
            generation = self._generation
            value = await load(stream_id)
            # An invalidation that arrived while loading may concern what was just read:
            # serve it this once, but do not keep it.
            if generation == self._generation:
                expires = self._clock() + self.ttl
                until = value.cover.valid_until if value is not None and value.cover else None
                if until is not None:
                    expires = min(expires, self._clock() + (until - self._wall()).total_seconds())
                self._views[stream_id] = (expires, value)
                self._views.move_to_end(stream_id)
                while len(self._views) > MAX_STREAMS:
                    self._views.popitem(last=False)
            return value

        return await self._view_flight.run(stream_id, fill)

    def invalidate(self, stream_id: str) -> None:
        self._generation += 1
        self._views.pop(stream_id, None)

    def clear(self) -> None:
        """Forget every cover view (e.g. after missing invalidations)."""
        self._generation += 1
        self._views.clear()

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


class InvalidationListener:
    """LISTEN on the cover channel in a thread and drop the named streams from ``cache``
    on the event loop. After a lost connection it reconnects and clears the whole cache,
    since notifications sent meanwhile are gone."""

    def __init__(self, database_url: str, cache: CoverCache, loop: asyncio.AbstractEventLoop) -> None:
        self._conninfo = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._cache = cache
        self._loop = loop
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="coverservice-listen", daemon=True)
        self.connected = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {COVER_CHANNEL}")
                    self._loop.call_soon_threadsafe(self._cache.clear)
                    self.connected.set()
                    delay = 0.5
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self._loop.call_soon_threadsafe(self._cache.invalidate, note.payload)
            except psycopg.Error as exc:
                self.connected.clear()
                log.warning("cover invalidations: %s; reconnecting in %.1fs", type(exc).__name__, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
            except RuntimeError:
                return  # the event loop closed under us: shutting down
