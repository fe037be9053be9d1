"""The worker against real parts: a COS stand-in on loopback, the real fetcher, real
storage, SQLite and Postgres."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker
from support.cos_server import CosServer
from support.images import black, blurred, encode, scene, scene_jpeg

from coverservice import queries
from coverservice.callbacks import ScreenshotEvent
from coverservice.db import transaction
from coverservice.errors import StorageError
from coverservice.fetch import Fetcher
from coverservice.models import Cover, Frame, FrameStatus, Stream
from coverservice.settings import Settings
from coverservice.storage import FileStorage, Storage
from coverservice.worker import Worker

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def cos() -> Iterator[CosServer]:
    with CosServer() as server:
        yield server


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        fetch_max_bytes=2_000_000, worker_max_attempts=3, worker_retry_base=1.0, worker_retry_max=10.0
    )


@pytest.fixture
def make_worker(
    settings: Settings, sessions: sessionmaker[Session], storage: FileStorage, clock: Clock
) -> Iterator[Callable[..., Worker]]:
    fetchers: list[Fetcher] = []

    def make(storage_: Storage | None = None, name: str = "w1") -> Worker:
        fetcher = Fetcher.from_settings(settings)
        fetchers.append(fetcher)
        return Worker(
            settings, session_factory=sessions, storage=storage_ or storage,
            fetch=fetcher.fetch, clock=clock, jitter=lambda: 0.5, name=name,
        )

    yield make
    for fetcher in fetchers:
        fetcher.close()


def add_frame(
    sessions: sessionmaker[Session], cos: CosServer, clock: Clock, path: str, data: bytes | None,
    *, stream: str = "room", age: float = 1.0,
) -> int:
    if data is not None:
        cos.put(path, data)
    event = ScreenshotEvent(
        stream_id=stream, channel_id=stream, create_time=int(clock.now.timestamp() - age),
        file_size=len(data or b""), width=1280, height=720, pic_url=path,
        pic_full_url=cos.url(path), app=None, payload={},
    )
    with transaction(sessions) as s:
        queries.record_frames(s, [queries.NewFrame(event, clock.now - timedelta(seconds=age))], now=clock.now)
    with sessions() as s:
        return s.scalars(select(Frame.id).where(Frame.pic_url == path)).one()


def frame(sessions: sessionmaker[Session], frame_id: int) -> Frame:
    with sessions() as s:
        return s.get_one(Frame, frame_id)


def current_cover(sessions: sessionmaker[Session], stream: str = "room") -> queries.CoverView | None:
    with transaction(sessions) as s:
        return queries.cover_view(s, stream, now=datetime.now(UTC))


def test_sharper_frame_wins_and_renditions_are_stored(
    sessions: sessionmaker[Session], cos: CosServer, clock: Clock, make_worker: Callable[..., Worker],
    storage: FileStorage,
) -> None:
    base = scene(1280, 720, seed=3)
    soft = add_frame(sessions, cos, clock, "/room/soft.jpg", encode(blurred(base, 4)))
    sharp = add_frame(sessions, cos, clock, "/room/sharp.jpg", encode(base))
    assert make_worker().drain() == 2

    assert frame(sessions, soft).status == FrameStatus.SCORED
    assert frame(sessions, sharp).score > frame(sessions, soft).score  # type: ignore[operator]
    view = current_cover(sessions)
    assert view is not None and view.frame_id == sharp and view.source == "auto"
    assert sorted(view.renditions) == sorted(
        (s, f) for s in ("large", "medium", "small") for f in ("jpeg", "webp")
    )
    for (size, fmt), r in view.renditions.items():
        data = storage.get(r.key)
        assert len(data) == r.byte_size
        img = Image.open(io.BytesIO(data))
        assert img.size == (r.width, r.height) == {"large": (1280, 720), "medium": (640, 360), "small": (320, 180)}[size]
        assert img.format == fmt.upper()
        assert r.key.endswith(f".{fmt}") and r.etag in r.key  # content-addressed
    metrics = frame(sessions, sharp).metrics
    assert metrics is not None and {"sharpness", "brightness"} <= set(metrics)


def test_a_worse_frame_later_does_not_replace_the_cover(
    sessions: sessionmaker[Session], cos: CosServer, clock: Clock, make_worker: Callable[..., Worker]
) -> None:
    base = scene(1280, 720, seed=4)
    sharp = add_frame(sessions, cos, clock, "/room/a.jpg", encode(base))
    make_worker().drain()
    add_frame(sessions, cos, clock, "/room/b.jpg", encode(blurred(base, 3)))
    make_worker().drain()
    view = current_cover(sessions)
    assert view is not None and view.frame_id == sharp
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Cover)) == 1


def test_a_stale_cover_follows_the_stream(
    sessions: sessionmaker[Session], cos: CosServer, clock: Clock, make_worker: Callable[..., Worker],
    settings: Settings,
) -> None:
    base = scene(1280, 720, seed=5)
    add_frame(sessions, cos, clock, "/room/old.jpg", encode(base))
    make_worker().drain()
    clock.advance(settings.selection_window + 60)
    newer = add_frame(sessions, cos, clock, "/room/new.jpg", encode(blurred(base, 2)))
    make_worker().drain()
    view = current_cover(sessions)
    assert view is not None and view.frame_id == newer


@pytest.mark.parametrize(
    "body, status, reason",
    [
        (b"<html>not an image</html>", FrameStatus.REJECTED, "not an image"),
        (scene_jpeg(640, 360)[:3000], FrameStatus.REJECTED, "truncated"),
        (encode(black(640, 360)), FrameStatus.REJECTED, "black"),
        (encode(scene(640, 360), "GIF"), FrameStatus.REJECTED, "GIF"),
        (b"\xff" * 2_100_000, FrameStatus.FAILED, "larger than"),
    ],
    ids=["html", "truncated", "black", "gif", "oversized"],
)
def test_bad_downloads_end_with_a_reason_and_no_cover(
    sessions: sessionmaker[Session], cos: CosServer, clock: Clock, make_worker: Callable[..., Worker],
    body: bytes, status: FrameStatus, reason: str, storage: FileStorage,
) -> None:
    frame_id = add_frame(sessions, cos, clock, "/room/bad", body)
    make_worker().drain()
    row = frame(sessions, frame_id)
    assert row.status == status
    assert reason in row.reason
    assert row.attempts == 1  # permanent: never retried
    assert current_cover(sessions) is None
    assert not list(storage.root.rglob("*.jpeg"))


def test_transient_failures_are_retried_with_backoff_then_failed(
    sessions: sessionmaker[Session], cos: CosServer, clock: Clock, make_worker: Callable[..., Worker],
    settings: Settings,
) -> None:
    cos.put("/room/flaky.jpg", b"busy", status=503)
    frame_id = add_frame(sessions, cos, clock, "/room/flaky.jpg", None)
    worker = make_worker()
    assert worker.run_once() == 1
    row = frame(sessions, frame_id)
    assert row.status == FrameStatus.PENDING and "503" in row.reason
    assert row.available_at > clock.now  # backoff: not due yet
    assert worker.run_once() == 0
    for _ in range(settings.worker_max_attempts - 1):
        clock.advance(3600)
        assert worker.run_once() == 1
    row = frame(sessions, frame_id)
    assert row.status == FrameStatus.FAILED
    assert f"gave up after {settings.worker_max_attempts} attempts" in row.reason
    assert cos.requests["/room/flaky.jpg"] == settings.worker_max_attempts


def test_a_recovered_download_is_scored(
    sessions: sessionmaker[Session], cos: CosServer, clock: Clock, make_worker: Callable[..., Worker]
) -> None:
    cos.put("/room/late.jpg", b"", status=503)
    frame_id = add_frame(sessions, cos, clock, "/room/late.jpg", None)
    worker = make_worker()
    worker.run_once()
    cos.put("/room/late.jpg", scene_jpeg(640, 360))
    clock.advance(60)
    worker.drain()
    assert frame(sessions, frame_id).status == FrameStatus.SCORED
    view = current_cover(sessions)
    assert view is not None and view.frame_id == frame_id


def test_backoff_grows_and_is_capped(
    make_settings: Callable[..., Settings], sessions: sessionmaker[Session], storage: FileStorage
) -> None:
    s = make_settings(worker_retry_base=2.0, worker_retry_max=60.0)

    def worker(jitter: float) -> Worker:
        return Worker(s, session_factory=sessions, storage=storage, fetch=lambda url: b"", jitter=lambda: jitter)

    low, high = worker(0.0), worker(1.0)
    assert [low.backoff(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert [high.backoff(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert high.backoff(30) == 60.0


def test_covers_go_to_s3_storage(
    sessions: sessionmaker[Session], cos: CosServer, clock: Clock, make_worker: Callable[..., Worker],
    s3_storage: Storage,
) -> None:
    frame_id = add_frame(sessions, cos, clock, "/room/s3.jpg", scene_jpeg(1280, 720))
    make_worker(storage_=s3_storage).drain()
    view = current_cover(sessions)
    assert view is not None and view.frame_id == frame_id
    for r in view.renditions.values():
        assert s3_storage.get(r.key)[:2] in (b"\xff\xd8", b"RI")


def test_a_storage_outage_never_leaves_a_cover_without_objects(
    sessions: sessionmaker[Session], cos: CosServer, clock: Clock, make_worker: Callable[..., Worker],
    storage: FileStorage,
) -> None:
    class BrokenStorage(FileStorage):
        def put(self, key: str, data: bytes, *, content_type: str) -> None:
            raise StorageError("cannot put renditions/x: disk full")

    frame_id = add_frame(sessions, cos, clock, "/room/x.jpg", scene_jpeg(640, 360))
    make_worker(storage_=BrokenStorage(storage.root)).run_once()
    row = frame(sessions, frame_id)
    assert row.status == FrameStatus.PENDING and row.reason.startswith("storage unavailable")
    assert current_cover(sessions) is None
    # storage is back: the retry produces the cover
    clock.advance(60)
    make_worker().drain()
    assert frame(sessions, frame_id).status == FrameStatus.SCORED
    view = current_cover(sessions)
    assert view is not None
    assert all(storage.exists(r.key) for r in view.renditions.values())


def test_a_worker_that_died_mid_frame_is_replaced_after_the_lease(
    sessions: sessionmaker[Session], cos: CosServer, clock: Clock, make_worker: Callable[..., Worker],
    settings: Settings,
) -> None:
    frame_id = add_frame(sessions, cos, clock, "/room/crash.jpg", scene_jpeg(640, 360))
    with transaction(sessions) as s:  # a worker claims and starts it, then vanishes
        [claimed] = queries.claim_frames(s, owner="dead/1", now=clock.now, lease=timedelta(seconds=settings.worker_lease), limit=5)
        queries.start_frame(s, claimed, until=clock.now + timedelta(seconds=settings.worker_lease))
    worker = make_worker()
    assert worker.run_once() == 0  # still leased
    clock.advance(settings.worker_lease + 1)
    assert worker.run_once() == 1
    row = frame(sessions, frame_id)
    assert (row.status, row.attempts, row.processed_by) == (FrameStatus.SCORED, 2, "w1")
    with sessions() as s:
        assert s.get_one(Stream, "room").cover_id is not None
    assert claimed.id == frame_id


def test_a_held_back_frame_becomes_the_cover_when_the_interval_ends_with_no_new_frame(
    make_settings: Callable[..., Settings], sessions: sessionmaker[Session], storage: FileStorage,
    cos: CosServer, clock: Clock,
) -> None:
    settings = make_settings(cover_min_interval=60.0, cover_provisional=0.0)
    with Fetcher.from_settings(settings) as fetcher:
        worker = Worker(settings, session_factory=sessions, storage=storage, fetch=fetcher.fetch, clock=clock)
        base = scene(1280, 720, seed=9)
        soft = add_frame(sessions, cos, clock, "/room/soft.jpg", encode(blurred(base, 4)))
        worker.drain()
        clock.advance(5)
        sharp = add_frame(sessions, cos, clock, "/room/sharp.jpg", encode(base))
        worker.drain()
        view = current_cover(sessions)
        assert view is not None and view.frame_id == soft  # too soon to render again
        note = frame(sessions, sharp).selection
        assert note is not None and note.startswith("held back until 12:01:00 UTC: the cover changed 5 s ago"), note
        with sessions() as s:
            assert s.get_one(Stream, "room").reselect_at == T0 + timedelta(seconds=60)
        clock.advance(54)
        assert worker.drain() == 0  # not due yet
        clock.advance(1)
        assert worker.drain() == 1  # the stream, with no new frame
        view = current_cover(sessions)
        assert view is not None and view.frame_id == sharp
        note = frame(sessions, sharp).selection
        assert note is not None and note.startswith("became the cover: score"), note
        assert note.endswith("(on a recheck at 12:01:00 UTC, with no new frame)"), note
        with sessions() as s:
            # Nothing newer than the cover: nothing left for time alone to change.
            assert s.get_one(Stream, "room").reselect_at is None


def test_a_first_cover_is_provisional(
    make_settings: Callable[..., Settings], sessions: sessionmaker[Session], storage: FileStorage,
    cos: CosServer, clock: Clock,
) -> None:
    settings = make_settings(cover_min_interval=60.0, cover_provisional=30.0)
    with Fetcher.from_settings(settings) as fetcher:
        worker = Worker(settings, session_factory=sessions, storage=storage, fetch=fetcher.fetch, clock=clock)
        base = scene(1280, 720, seed=9)

        def send(name: str, sigma: float, after: float) -> int:
            clock.advance(after)
            frame_id = add_frame(sessions, cos, clock, f"/room/{name}.jpg", encode(blurred(base, sigma) if sigma else base))
            worker.drain()
            return frame_id

        send("blurry", 6, 0)
        softer = send("softer", 3, 5)
        view = current_cover(sessions)
        assert view is not None and view.frame_id == softer  # 5 s after the start: no wait
        assert "provisional" in (frame(sessions, softer).selection or "")
        # Installed inside the first 30 s, that cover stays provisional...
        soft = send("soft", 1.5, 35)
        view = current_cover(sessions)
        assert view is not None and view.frame_id == soft
        # ...and this one, installed 40 s in, is protected by the interval.
        sharp = send("sharp", 0, 5)
        view = current_cover(sessions)
        assert view is not None and view.frame_id == soft
        assert (frame(sessions, sharp).selection or "").startswith("held back until"), frame(sessions, sharp).selection


def test_a_frame_that_changes_no_cover_costs_one_commit(
    sessions: sessionmaker[Session], engine: Engine, cos: CosServer, clock: Clock, make_worker: Callable[..., Worker]
) -> None:
    base = scene(1280, 720, seed=6)
    add_frame(sessions, cos, clock, "/room/sharp.jpg", encode(base))
    worker = make_worker()
    worker.drain()
    frames = [
        add_frame(sessions, cos, clock, f"/room/soft-{i}.jpg", encode(blurred(base, 2 + i % 3))) for i in range(12)
    ]
    commits = 0

    @event.listens_for(engine, "commit")
    def _count(conn: Any) -> None:
        nonlocal commits
        commits += 1

    assert worker.drain() == len(frames)
    event.remove(engine, "commit", _count)
    assert {frame(sessions, f).status for f in frames} == {FrameStatus.SCORED}
    # Per batch of 8: one to claim it (and begin its first frame), one per frame (its
    # result, and the next frame begun); and one claim that finds the queue empty.
    batches = -(-len(frames) // worker.settings.worker_batch_size)
    assert commits == len(frames) + batches + 1, commits
