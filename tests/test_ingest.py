from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, event, func, select, text
from sqlalchemy.exc import DBAPIError
from support.servers import ThreadedServer

from coverservice.app import create_app
from coverservice.callbacks import ScreenshotEvent
from coverservice.db import make_session_factory
from coverservice.ingest import AsyncFrameRecorder, GroupCommitter, IngestOverloaded
from coverservice.models import Frame
from coverservice.queries import NewFrame
from coverservice.settings import Settings
from coverservice.storage import FileStorage


def new_frame(n: int, stream: str = "s") -> NewFrame:
    ev = ScreenshotEvent(stream, stream, 1, 1, 1, 1, f"/{n}.jpg", f"http://h/{n}.jpg", None, {})
    return NewFrame(ev, datetime(2026, 1, 1, tzinfo=UTC))


@contextlib.contextmanager
def slow_commits(engine: Engine) -> Iterator[Callable[[], int]]:
    """Commits slow enough that callbacks arrive while one is under way (a loopback
    client cannot outrun a fast commit otherwise). Yields a function counting the
    transactions that stored frames."""
    if engine.dialect.name == "sqlite":
        commits = 0
        lock = threading.Lock()

        def _slow(conn: Any) -> None:
            time.sleep(0.05)  # a slow disk flush
            nonlocal commits
            with lock:
                commits += 1

        event.listen(engine, "commit", _slow)
        try:
            yield lambda: commits
        finally:
            event.remove(engine, "commit", _slow)
        return
    # Postgres: ingest writes on connections of its own, so the delay goes into the
    # database: a statement-level trigger on frames (this test's database only).
    with engine.begin() as conn:
        conn.execute(text(
            "CREATE FUNCTION slow_flush() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(0.05); RETURN NULL; END $$"
        ))
        conn.execute(text("CREATE TRIGGER slow_flush AFTER INSERT ON frames FOR EACH STATEMENT EXECUTE FUNCTION slow_flush()"))
    # Rows written by one transaction share its id (xmin).
    with engine.connect() as conn:
        yield lambda: int(conn.scalar(text("SELECT count(DISTINCT xmin::text) FROM frames")) or 0)


def test_concurrent_callbacks_share_commits_and_every_200_is_stored(
    make_settings: Callable[..., Settings], engine: Engine, tmp_path: Path
) -> None:
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

    with ThreadedServer(app) as server, slow_commits(engine) as transactions:
        statuses = asyncio.run(send_all(server.base_url))
        grouped = transactions()
    assert statuses == [200] * n
    with make_session_factory(engine)() as s:
        assert s.scalar(select(func.count()).select_from(Frame)) == n
    # one commit per callback would be n; grouping makes it far fewer
    assert 0 < grouped < n / 2, grouped


def test_callbacks_arriving_during_a_write_go_together_in_the_next() -> None:
    sizes: list[int] = []
    first_written = asyncio.Event()

    async def write(frames: list[NewFrame]) -> None:
        sizes.append(len(frames))
        await first_written.wait()

    async def run() -> None:
        committer = GroupCommitter(write)
        first = asyncio.ensure_future(committer.record(new_frame(0)))
        await asyncio.sleep(0.01)  # the first batch is being written
        rest = [asyncio.ensure_future(committer.record(new_frame(i))) for i in range(1, 6)]
        await asyncio.sleep(0.01)
        first_written.set()
        await asyncio.wait_for(asyncio.gather(first, *rest), timeout=10)

    asyncio.run(run())
    assert sizes == [1, 5]


def test_a_batch_closes_one_loop_turn_after_its_writer_starts() -> None:
    # Callbacks the event loop handles while the writer is starting join its batch,
    # rather than each paying a commit of their own.
    sizes: list[int] = []

    async def write(frames: list[NewFrame]) -> None:
        sizes.append(len(frames))

    async def run() -> None:
        committer = GroupCommitter(write)
        first = asyncio.ensure_future(committer.record(new_frame(0)))
        await asyncio.sleep(0)  # the first callback is queued and its writer scheduled
        rest = [asyncio.ensure_future(committer.record(new_frame(i))) for i in range(1, 4)]
        await asyncio.wait_for(asyncio.gather(first, *rest), timeout=10)

    asyncio.run(run())
    assert sizes == [4]


@pytest.mark.parametrize("turns", range(6))
def test_a_callback_queued_as_the_writer_ends_is_written(turns: int) -> None:
    # The writer ends when it finds the queue empty. A callback queued at any moment
    # around that (here: after ``turns`` turns of the loop) must get a writer, not wait
    # for some later callback to start one.
    written: list[str] = []

    async def write(frames: list[NewFrame]) -> None:
        written.extend(f.event.pic_url for f in frames)

    async def run() -> None:
        committer = GroupCommitter(write)
        first = asyncio.ensure_future(committer.record(new_frame(0)))
        for _ in range(turns):
            await asyncio.sleep(0)
        late = asyncio.ensure_future(committer.record(new_frame(1)))
        await asyncio.wait_for(asyncio.gather(first, late), timeout=5)

    asyncio.run(run())
    assert written == ["/0.jpg", "/1.jpg"]


def test_a_failed_write_fails_every_request_of_its_batch() -> None:
    async def write(frames: list[NewFrame]) -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("database gone")

    async def run() -> list[BaseException | None]:
        committer = GroupCommitter(write)
        results = await asyncio.gather(*(committer.record(new_frame(i)) for i in range(5)), return_exceptions=True)
        return list(results)

    results = asyncio.run(run())
    assert all(isinstance(r, RuntimeError) for r in results)


def test_too_many_waiting_callbacks_are_shed() -> None:
    release = asyncio.Event()
    written: list[int] = []

    async def write(frames: list[NewFrame]) -> None:
        await release.wait()
        written.append(len(frames))

    async def run() -> list[BaseException | None]:
        committer = GroupCommitter(write, max_batch=2, max_pending=3)
        tasks = [asyncio.ensure_future(committer.record(new_frame(i))) for i in range(8)]
        await asyncio.sleep(0.05)
        release.set()
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    results = asyncio.run(run())
    shed = [r for r in results if isinstance(r, IngestOverloaded)]
    assert shed and all(r is None or isinstance(r, IngestOverloaded) for r in results)
    assert sum(written) == len(results) - len(shed)


@pytest.mark.parametrize("batch", [1, 3])
def test_batches_respect_the_maximum(batch: int) -> None:
    sizes: list[int] = []

    async def write(frames: list[NewFrame]) -> None:
        await asyncio.sleep(0.01)
        sizes.append(len(frames))

    async def run() -> None:
        committer = GroupCommitter(write, max_batch=batch)
        await asyncio.gather(*(committer.record(new_frame(i)) for i in range(10)))

    asyncio.run(run())
    assert sum(sizes) == 10 and max(sizes) <= batch


def test_one_bad_row_does_not_fail_its_batch() -> None:
    written: list[str] = []

    async def write(frames: list[NewFrame]) -> None:
        await asyncio.sleep(0.01)
        if any(f.event.pic_url == "/3.jpg" for f in frames):
            raise ValueError("the database refused a row")
        written.extend(f.event.pic_url for f in frames)

    async def run() -> list[BaseException | None]:
        committer = GroupCommitter(write)
        return list(await asyncio.gather(*(committer.record(new_frame(i)) for i in range(6)), return_exceptions=True))

    results = asyncio.run(run())
    assert [type(r).__name__ for r in results] == ["NoneType"] * 3 + ["ValueError"] + ["NoneType"] * 2
    assert sorted(written) == sorted(f"/{i}.jpg" for i in range(6) if i != 3)


def test_a_client_that_went_away_does_not_disturb_its_batch() -> None:
    release = asyncio.Event()
    written: list[str] = []

    async def write(frames: list[NewFrame]) -> None:
        await release.wait()
        written.extend(f.event.pic_url for f in frames)

    async def run() -> tuple[list[BaseException | None], int]:
        committer = GroupCommitter(write)
        tasks = [asyncio.ensure_future(committer.record(new_frame(i))) for i in range(4)]
        await asyncio.sleep(0.01)
        tasks[1].cancel()  # its client disconnected while the batch was being written
        await asyncio.sleep(0)
        release.set()
        results = list(await asyncio.gather(*tasks, return_exceptions=True))
        await committer.record(new_frame(9))  # and the committer goes on
        return results, len(asyncio.all_tasks())

    results, tasks_left = asyncio.run(run())
    assert [type(r).__name__ for r in results] == ["NoneType", "CancelledError", "NoneType", "NoneType"]
    assert written == ["/0.jpg", "/1.jpg", "/2.jpg", "/3.jpg", "/9.jpg"]  # recorded all the same
    assert tasks_left == 1  # only the test's own: the writer ended with its queue empty


def test_the_postgres_recorder_commits_reports_retries_and_reconnects(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    recorder = AsyncFrameRecorder(engine)
    now = datetime.now(UTC)

    async def run() -> tuple[list[bool], list[bool], DBAPIError | None, list[bool]]:
        first = await recorder.record([new_frame(1), new_frame(2), new_frame(1)], now=now)
        again = await recorder.record([new_frame(2), new_frame(3)], now=now)
        # The server ends the recorder's connection (a restart, a failover).
        with engine.connect() as conn:
            conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ))
        lost: DBAPIError | None = None
        try:
            await recorder.record([new_frame(4)], now=now)
        except DBAPIError as exc:
            lost = exc
        after = await recorder.record([new_frame(4), new_frame(5, stream="t")], now=now)
        await recorder.close()
        return first, again, lost, after

    try:
        first, again, lost, after = asyncio.run(run())
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT stream_id, pic_url FROM frames ORDER BY id")).all()
    finally:
        engine.dispose()
    assert first == [True, True, False]  # the same screenshot twice in one batch: once
    assert again == [False, True]  # a CSS retry is not stored again
    assert lost is not None and lost.connection_invalidated  # as SQLAlchemy reports a lost connection
    assert after == [True, True]  # a new connection, nothing lost
    assert [tuple(r) for r in stored] == [("s", "/1.jpg"), ("s", "/2.jpg"), ("s", "/3.jpg"), ("s", "/4.jpg"), ("t", "/5.jpg")]


def test_a_write_cancelled_mid_statement_does_not_poison_the_next(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    recorder = AsyncFrameRecorder(engine)
    now = datetime.now(UTC)

    async def run() -> list[bool]:
        await recorder.record([new_frame(1)], now=now)  # a connection, kept for the next batch
        with engine.connect() as blocker:
            # The frame statement reads moderation_flags: it waits while this is held.
            blocker.execute(text("LOCK TABLE moderation_flags IN ACCESS EXCLUSIVE MODE"))
            stuck = asyncio.ensure_future(recorder.record([new_frame(2)], now=now))
            await asyncio.sleep(0.3)
            stuck.cancel()  # e.g. the server shutting down
            with contextlib.suppress(asyncio.CancelledError):
                await stuck
            blocker.rollback()
        after = await asyncio.wait_for(recorder.record([new_frame(3)], now=now), timeout=10)
        await recorder.close()
        return after

    try:
        assert asyncio.run(run()) == [True]
    finally:
        engine.dispose()
