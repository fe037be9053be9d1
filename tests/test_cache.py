"""The cover cache: what an invalidation arriving during a load does to that load."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from coverservice.cache import CoverCache, HotResponses
from coverservice.queries import StreamState


class SlowLoads:
    """A loader whose loads wait until released, counting them per stream."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.release = asyncio.Event()

    async def __call__(self, stream_id: str) -> StreamState | None:
        self.calls[stream_id] = self.calls.get(stream_id, 0) + 1
        await self.release.wait()
        return StreamState(stream_id, True, None)


async def _load_while(cache: CoverCache, loads: SlowLoads, meanwhile: Callable[[], None]) -> None:
    task = asyncio.create_task(cache.view("a", loads))
    await asyncio.sleep(0)  # the load has started and waits
    assert loads.calls == {"a": 1}
    meanwhile()
    loads.release.set()
    assert (await task) == StreamState("a", True, None)  # served this once either way
    await cache.view("a", loads)


@pytest.mark.parametrize(
    ("meanwhile", "loads_of_a"),
    [
        (lambda cache: cache.invalidate("b"), 1),  # another stream's change: the load is kept
        (lambda cache: cache.invalidate("a"), 2),  # its own change: not kept, loaded again
        (lambda cache: cache.clear(), 2),  # everything forgotten: not kept either
    ],
    ids=["other-stream", "same-stream", "clear"],
)
def test_an_invalidation_during_a_load_costs_only_its_own_stream(
    meanwhile: Callable[[CoverCache], None], loads_of_a: int
) -> None:
    cache = CoverCache(ttl=60.0, max_bytes=1 << 20)
    loads = SlowLoads()
    asyncio.run(_load_while(cache, loads, lambda: meanwhile(cache)))
    assert loads.calls["a"] == loads_of_a


def test_a_cached_stream_is_loaded_again_after_its_invalidation_only() -> None:
    async def run() -> dict[str, int]:
        cache = CoverCache(ttl=60.0, max_bytes=1 << 20)
        loads = SlowLoads()
        loads.release.set()
        for stream in ("a", "b", "a", "b"):
            await cache.view(stream, loads)
        cache.invalidate("a")
        await cache.view("a", loads)
        await cache.view("b", loads)
        return loads.calls

    assert asyncio.run(run()) == {"a": 2, "b": 1}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_hot_response_lives_only_as_long_as_the_state_it_was_built_from() -> None:
    clock = Clock()
    cache = CoverCache(ttl=10.0, max_bytes=1 << 20, clock=clock)
    hot = HotResponses(cache, max_bytes=1000)
    loads = SlowLoads()
    loads.release.set()
    headers = [(b"etag", b'"1"')]

    def cached_state(stream_id: str) -> StreamState:
        state = asyncio.run(cache.view(stream_id, loads))
        assert state is not None
        return state

    hot.put("a-key", "a", cached_state("a"), 200, headers, b"A")
    hot.put("b-key", "b", cached_state("b"), 200, headers, b"B")
    assert hot.get("a-key") == (200, headers, b"A")
    cache.invalidate("a")  # a's cover changed: its response goes, b's stays
    assert hot.get("a-key") is None and hot.get("b-key") == (200, headers, b"B")
    hot.put("a-key", "a", cached_state("a"), 200, headers, b"A2")
    assert hot.get("a-key") == (200, headers, b"A2")
    clock.now = 11.0  # the cover cache's entries expired: so did the responses
    assert hot.get("a-key") is None and hot.get("b-key") is None


def test_hot_responses_are_bounded_in_bytes() -> None:
    cache = CoverCache(ttl=10.0, max_bytes=1 << 20)
    hot = HotResponses(cache, max_bytes=10)
    loads = SlowLoads()
    loads.release.set()
    state = asyncio.run(cache.view("a", loads))
    assert state is not None
    hot.put("big", "a", state, 200, [], b"x" * 11)
    assert hot.get("big") is None
    hot.put("one", "a", state, 200, [], b"x" * 6)
    hot.put("two", "a", state, 200, [], b"x" * 6)  # over the bound: starts over
    assert hot.get("one") is None and hot.get("two") == (200, [], b"x" * 6)


# --- admissions of /r/ keys -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("meanwhile", "loads_of_key"),
    [
        (lambda cache: cache.invalidate("b"), 1),  # another stream's change: the answer is kept
        (lambda cache: cache.invalidate("a"), 2),  # its stream's (a block): asked again
        (lambda cache: cache.clear(), 2),
    ],
    ids=["other-stream", "same-stream", "clear"],
)
def test_an_admission_read_before_its_streams_change_is_not_kept(
    meanwhile: Callable[[CoverCache], None], loads_of_key: int
) -> None:
    calls: list[str] = []
    release = asyncio.Event()

    async def owner(key: str) -> tuple[str | None, bool]:
        calls.append(key)
        await release.wait()
        return "a", True

    async def run() -> None:
        cache = CoverCache(ttl=60.0, max_bytes=1 << 20)
        task = asyncio.create_task(cache.admitted("k", owner))
        await asyncio.sleep(0)
        meanwhile(cache)
        release.set()
        assert await task is True
        assert await cache.admitted("k", owner) is True

    asyncio.run(run())
    assert len(calls) == loads_of_key


def test_a_kept_admission_goes_with_its_streams_invalidation() -> None:
    answers = {"k": ("a", True), "j": ("b", True)}
    calls: list[str] = []

    async def owner(key: str) -> tuple[str | None, bool]:
        calls.append(key)
        return answers[key]

    async def run() -> None:
        cache = CoverCache(ttl=60.0, max_bytes=1 << 20)
        assert await cache.admitted("k", owner) and await cache.admitted("j", owner)
        answers["k"] = ("a", False)  # its frame is blocked
        assert await cache.admitted("k", owner)  # cached: nobody said so yet
        cache.invalidate("a")
        assert not await cache.admitted("k", owner)
        assert await cache.admitted("j", owner)

    asyncio.run(run())
    assert calls == ["k", "j", "k"]
