"""In-process caches for the cover hot path: a hot cover is served without touching the
database or storage on every request, and how they learn of changes made elsewhere.

- Stream → its state and cover, for ``ttl`` seconds (the bound on how stale a cover may be seen
  by this process), misses included, so an unknown stream cannot hammer the database.
- Storage key → bytes, LRU bounded in bytes. Keys are content-addressed, so an entry is
  never stale; it only ages out.
- Storage key → whether a cover may show it (not when its frame is blocked, nor when no
  cover uses it), for ``ttl`` seconds. The bytes of a key never change, but whether they
  may be served does: this entry gates the ``/r/`` URLs and is dropped with its stream's
  view, so a block (or an unblock) reaches them as fast as ``/cover``.

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
from collections.abc import Awaitable, Callable, Hashable
from datetime import datetime
from typing import Generic, TypeVar

import psycopg
from sqlalchemy.engine import make_url

from .db import utcnow
from .queries import COVER_CHANNEL, StreamState

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_STREAMS = 100_000


class SingleFlight(Generic[T]):
    """Concurrent calls for one key share the first caller's load and its outcome."""

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
        # Streams being loaded now → whether an invalidation arrived meanwhile. Per stream,
        # so one stream's change costs no other stream its load; bounded by the loads in
        # flight (single flight: at most one per stream).
        self._loading: dict[str, bool] = {}
        self._views: OrderedDict[str, tuple[float, StreamState | None]] = OrderedDict()
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self._blob_bytes = 0
        self._admissions: OrderedDict[str, tuple[float, str | None, bool]] = OrderedDict()
        self._admitted: dict[str, set[str]] = {}  # stream → its keys in _admissions
        # Invalidations are numbered; a stream's last number tells an admission load that
        # started before it not to keep what it read. Bounded like the views.
        self._invalidations = 0
        self._cleared = 0
        self._invalidated: OrderedDict[str, int] = OrderedDict()
        self._admission_flight: SingleFlight[bool] = SingleFlight()
        self._view_flight: SingleFlight[StreamState | None] = SingleFlight()
        self._blob_flight: SingleFlight[bytes] = SingleFlight()

    async def view(
        self, stream_id: str, load: Callable[[str], Awaitable[StreamState | None]]
    ) -> StreamState | None:
        entry = self._views.get(stream_id)
        now = self._clock()
        if entry is not None and entry[0] > now:
            return entry[1]

        async def fill() -> StreamState | None:
            self._loading[stream_id] = False
            try:
                value = await load(stream_id)
            finally:
                invalidated = self._loading.pop(stream_id)
            # An invalidation of this stream that arrived while loading may concern what
            # was just read: serve it this once, but do not keep it.
            if not invalidated:
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

    def peek(self, stream_id: str) -> StreamState | None:
        """The stream's cached state while it is fresh; None otherwise (nothing loaded)."""
        entry = self._views.get(stream_id)
        return entry[1] if entry is not None and entry[0] > self._clock() else None

    def invalidate(self, stream_id: str) -> None:
        if stream_id in self._loading:
            self._loading[stream_id] = True
        self._views.pop(stream_id, None)
        for key in self._admitted.pop(stream_id, ()):
            self._admissions.pop(key, None)
        self._invalidations += 1
        self._invalidated[stream_id] = self._invalidations
        self._invalidated.move_to_end(stream_id)
        while len(self._invalidated) > MAX_STREAMS:
            self._invalidated.popitem(last=False)

    def clear(self) -> None:
        """Forget every cover view (e.g. after missing invalidations)."""
        for stream_id in self._loading:
            self._loading[stream_id] = True
        self._views.clear()
        self._admissions.clear()
        self._admitted.clear()
        # Loads in flight started before this: none may keep what it read.
        self._invalidations += 1
        self._cleared = self._invalidations

    async def admitted(
        self, key: str, load: Callable[[str], Awaitable[tuple[str | None, bool]]]
    ) -> bool:
        """Whether storage ``key`` may be served; ``load`` gives its stream and the answer."""
        entry = self._admissions.get(key)
        if entry is not None and entry[0] > self._clock():
            return entry[2]

        async def fill() -> bool:
            started = self._invalidations
            stream_id, allowed = await load(key)
            stale = self._cleared > started or (
                stream_id is not None and self._invalidated.get(stream_id, 0) > started
            )
            if not stale:
                self._forget_admission(key)
                self._admissions[key] = (self._clock() + self.ttl, stream_id, allowed)
                if stream_id is not None:
                    self._admitted.setdefault(stream_id, set()).add(key)
                while len(self._admissions) > MAX_STREAMS:
                    self._forget_admission(next(iter(self._admissions)))
            return allowed

        return await self._admission_flight.run(key, fill)

    def _forget_admission(self, key: str) -> None:
        entry = self._admissions.pop(key, None)
        if entry is not None and entry[1] is not None:
            keys = self._admitted.get(entry[1])
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._admitted[entry[1]]

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


Headers = list[tuple[bytes, bytes]]


class HotResponses:
    """Finished responses for hot covers, sent again without building anything: a hit
    costs a dict lookup and two sends, no request or response object. An entry is used
    only while ``cache`` still holds, fresh, the very state it was built from, so it
    never outlives the cover cache's own entry (TTL, invalidations). Bounded in bytes
    and entries; when full it starts over (hot covers come back at once)."""

    def __init__(self, cache: CoverCache, *, max_bytes: int, max_entries: int = 4096) -> None:
        self._cache = cache
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._bytes = 0
        self._entries: dict[Hashable, tuple[str, StreamState, int, Headers, bytes]] = {}

    def get(self, key: Hashable) -> tuple[int, Headers, bytes] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        stream_id, state, status, headers, body = entry
        if self._cache.peek(stream_id) is not state:
            del self._entries[key]
            self._bytes -= len(body)
            return None
        return status, headers, body

    def put(self, key: Hashable, stream_id: str, state: StreamState, status: int, headers: Headers, body: bytes) -> None:
        if len(body) > self._max_bytes:
            return
        if len(self._entries) >= self._max_entries or self._bytes + len(body) > self._max_bytes:
            self._entries.clear()
            self._bytes = 0
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old[4])
        self._entries[key] = (stream_id, state, status, headers, body)
        self._bytes += len(body)
