from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event, func, select
from support.servers import ThreadedServer

from coverservice.app import create_app
from coverservice.callbacks import ScreenshotEvent
from coverservice.db import make_session_factory
from coverservice.ingest import GroupCommitter, IngestOverloaded
from coverservice.models import Frame
from coverservice.queries import NewFrame
from coverservice.settings import Settings
from coverservice.storage import FileStorage


def new_frame(n: int) -> NewFrame:
    from datetime import UTC, datetime

    ev = ScreenshotEvent("s", "s", 1, 1, 1, 1, f"/{n}.jpg", f"http://h/{n}.jpg", None, {})
    return NewFrame(ev, datetime(2026, 1, 1, tzinfo=UTC))


def test_concurrent_callbacks_share_commits_and_every_200_is_stored(
    make_settings: Callable[..., Settings], engine: Engine, tmp_path: Path
) -> None:
    commits = 0
    lock = threading.Lock()

    @event.listens_for(engine, "commit")
    def _count(conn: Any) -> None:
        # A slow disk flush, so callbacks arrive while a commit is under way (a loopback
        # client cannot outrun an in-memory-fast commit otherwise).
        time.sleep(0.05)
        nonlocal commits
        with lock:
            commits += 1

    app = create_app(make_settings(), engine=engine, storage=FileStorage(tmp_path / "s"))
    n = 200

    async def send_all(base_url: str) -> list[int]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
            async def one(i: int) -> int:
                body = {
                    "event_type": 200, "stream_id": f"s{i % 7}", "channel_id": "c", "create_time": 1_700_000_000 + i,
                    "file_size": 1, "width": 640, "height": 360, "pic_url": f"/p/{i}.jpg",
                    "pic_full_url": f"http://127.0.0.1:9/p/{i}.jpg",
                }
                return (await client.post("/callbacks/css", json=body)).status_code

            return await asyncio.gather(*(one(i) for i in range(n)))

    with ThreadedServer(app) as server:
        statuses = asyncio.run(send_all(server.base_url))
    assert statuses == [200] * n
    with make_session_factory(engine)() as s:
        assert s.scalar(select(func.count()).select_from(Frame)) == n
    # one commit per callback would be n; grouping makes it far fewer
    assert commits < n / 2, commits


def test_a_failed_write_fails_every_request_of_its_batch() -> None:
    def write(frames: list[NewFrame]) -> None:
        time.sleep(0.05)
        raise RuntimeError("database gone")

    async def run() -> list[BaseException | None]:
        committer = GroupCommitter(write)
        results = await asyncio.gather(*(committer.record(new_frame(i)) for i in range(5)), return_exceptions=True)
        return list(results)

    results = asyncio.run(run())
    assert all(isinstance(r, RuntimeError) for r in results)


def test_too_many_waiting_callbacks_are_shed() -> None:
    release = threading.Event()
    written: list[int] = []

    def write(frames: list[NewFrame]) -> None:
        release.wait(5)
        written.append(len(frames))

    async def run() -> list[BaseException | None]:
        committer = GroupCommitter(write, max_batch=2, max_pending=3)
        tasks = [asyncio.ensure_future(committer.record(new_frame(i))) for i in range(8)]
        await asyncio.sleep(0.1)
        release.set()
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    results = asyncio.run(run())
    shed = [r for r in results if isinstance(r, IngestOverloaded)]
    assert shed and all(r is None or isinstance(r, IngestOverloaded) for r in results)
    assert sum(written) == len(results) - len(shed)


@pytest.mark.parametrize("batch", [1, 3])
def test_batches_respect_the_maximum(batch: int) -> None:
    sizes: list[int] = []

    def write(frames: list[NewFrame]) -> None:
        time.sleep(0.01)
        sizes.append(len(frames))

    async def run() -> None:
        committer = GroupCommitter(write, max_batch=batch)
        await asyncio.gather(*(committer.record(new_frame(i)) for i in range(10)))

    asyncio.run(run())
    assert sum(sizes) == 10 and max(sizes) <= batch


def test_one_bad_row_does_not_fail_its_batch() -> None:
    written: list[str] = []

    def write(frames: list[NewFrame]) -> None:
        time.sleep(0.01)
        if any(f.event.pic_url == "/3.jpg" for f in frames):
            raise ValueError("the database refused a row")
        written.extend(f.event.pic_url for f in frames)

    async def run() -> list[BaseException | None]:
        committer = GroupCommitter(write)
        return list(await asyncio.gather(*(committer.record(new_frame(i)) for i in range(6)), return_exceptions=True))

    results = asyncio.run(run())
    assert [type(r).__name__ for r in results] == ["NoneType"] * 3 + ["ValueError"] + ["NoneType"] * 2
    assert sorted(written) == sorted(f"/{i}.jpg" for i in range(6) if i != 3)


def test_a_writer_left_without_work_ends_and_the_next_callback_starts_another() -> None:
    written: list[str] = []

    def write(frames: list[NewFrame]) -> None:
        written.extend(f.event.pic_url for f in frames)

    def writers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "coverservice-ingest"]

    async def run() -> tuple[int, int]:
        committer = GroupCommitter(write, linger=0.05)
        await committer.record(new_frame(1))

        async def ended() -> None:
            while writers():
                await asyncio.sleep(0.01)

        await asyncio.wait_for(ended(), timeout=10)  # it lingered without work, then ended
        await committer.record(new_frame(2))
        started_again = len(writers())
        await asyncio.gather(*(committer.record(new_frame(i)) for i in range(3, 9)))
        return started_again, len(writers())

    started_again, busy = asyncio.run(run())
    assert written == [f"/{i}.jpg" for i in range(1, 9)]
    assert started_again == 1 and busy <= 1


def test_a_callback_queued_while_a_writer_takes_its_batch_stays_queued() -> None:
    # The event loop appends without the writer's lock; force the worst moment: a
    # callback arriving between the writer copying its batch and removing it.
    written: list[str] = []

    def write(frames: list[NewFrame]) -> None:
        written.extend(f.event.pic_url for f in frames)

    async def run() -> None:
        committer = GroupCommitter(write)
        loop = asyncio.get_running_loop()
        late: asyncio.Future[None] = loop.create_future()

        armed = [True]

        class Queue(list[Any]):
            def __getitem__(self, index: Any) -> Any:
                taken = super().__getitem__(index)
                if isinstance(index, slice) and armed:  # the first batch taken only
                    armed.clear()
                    self.append((new_frame(99), late))
                return taken

        committer._pending = Queue()
        await committer.record(new_frame(1))
        await asyncio.wait_for(late, timeout=10)  # written by the next batch, not dropped

    asyncio.run(run())
    assert written == ["/1.jpg", "/99.jpg"]
