"""Workers killed with SIGKILL at the worst moments, as real processes against Postgres.

A worker (``support/crash_worker.py``: the real Worker with a wrapper that kills its own
process) dies right after the download, right after the first storage PUT, or with the
cover rows written but not committed. Nothing it did may be served; after its lease runs
out a real ``coverservice worker`` redoes the frame, exactly one cover is current and
every object it references is in storage. A screenshot that kills every worker that
touches it is parked as failed after COVERSERVICE_WORKER_MAX_ATTEMPTS, while the other
frames keep flowing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from support.cos_server import CosServer
from support.images import scene_jpeg
from support.polling import eventually
from support.servers import ServiceProcess, ThreadedServer

from coverservice import db
from coverservice.app import create_app
from coverservice.models import Cover, Frame, Rendition, Stream
from coverservice.settings import Settings
from coverservice.storage import FileStorage

CRASH_WORKER = Path(__file__).parent / "support" / "crash_worker.py"
LEASE = 2.0


class Rig:
    """The API in this process (records callbacks, serves covers), a COS stand-in, and
    the environment shared by the worker processes."""

    def __init__(self, database_url: str, tmp_path: Path, cos: CosServer, **env: str) -> None:
        self.tmp_path = tmp_path
        self.cos = cos
        self.storage_dir = tmp_path / "covers"
        self.env = {
            "COVERSERVICE_DATABASE_URL": database_url,
            "COVERSERVICE_STORAGE_URL": self.storage_dir.as_uri(),
            "COVERSERVICE_FETCH_ALLOWED_HOSTS": "127.0.0.1:*",
            "COVERSERVICE_FETCH_ALLOW_PRIVATE": "true",
            "COVERSERVICE_WORKER_LEASE": str(LEASE),
            "COVERSERVICE_WORKER_POLL_INTERVAL": "0.05",
            "COVERSERVICE_WORKER_MAX_ATTEMPTS": "3",
            **env,
        }
        settings = Settings(
            database_url=database_url,
            storage_url=self.storage_dir.as_uri(),
            fetch_allowed_hosts=("127.0.0.1:*",),
            fetch_allow_private=True,
            cover_cache_ttl=0.0,
        )
        self.engine = db.make_engine(settings.database_url)
        self.storage = FileStorage(self.storage_dir)
        self.server = ThreadedServer(
            create_app(settings, engine=self.engine, storage=self.storage, fetch=lambda url: b"")
        ).__enter__()
        self.http = httpx.Client(base_url=self.server.base_url, timeout=10)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.http.close()
        self.server.__exit__(None, None, None)
        self.engine.dispose()

    # --- callbacks and state ----------------------------------------------------------

    def screenshot(self, stream: str, path: str, data: bytes | None = None) -> int:
        self.cos.put(path, data if data is not None else scene_jpeg(1280, 720, seed=len(path)))
        body = {
            "event_type": 200, "stream_id": stream, "channel_id": stream,
            "create_time": int(time.time()) - 1, "file_size": 1000, "width": 1280, "height": 720,
            "pic_url": path, "pic_full_url": self.cos.url(path),
        }
        assert self.http.post("/callbacks/css", json=body).status_code == 200
        with Session(self.engine) as s:
            return s.scalars(select(Frame.id).where(Frame.stream_id == stream, Frame.pic_url == path)).one()

    def frame(self, frame_id: int) -> Frame:
        with Session(self.engine) as s:
            return s.get_one(Frame, frame_id)

    def covers(self, stream: str) -> tuple[int | None, list[Cover], dict[int, list[str]]]:
        """The stream's current cover id, all its cover rows, and each cover's keys."""
        with Session(self.engine) as s:
            current = s.scalar(select(Stream.cover_id).where(Stream.id == stream))
            covers = list(s.scalars(select(Cover).where(Cover.stream_id == stream)))
            keys = {
                c.id: sorted(s.scalars(select(Rendition.key).where(Rendition.cover_id == c.id)))
                for c in covers
            }
        return current, covers, keys

    def stored(self) -> set[str]:
        return {
            p.relative_to(self.storage_dir).as_posix()
            for p in self.storage_dir.rglob("*")
            if p.is_file()
        }

    # --- processes ------------------------------------------------------------------------

    def crash_worker(self, mode: str, name: str) -> subprocess.Popen[bytes]:
        log = self.tmp_path / f"{name}.log"
        self.logs.append(log)
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("COVERSERVICE_")}
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, str(CRASH_WORKER), mode],
                env={**inherited, **self.env, "COVERSERVICE_WORKER_NAME": name},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(proc)
        return proc

    def worker(self, name: str) -> ServiceProcess:
        return ServiceProcess(
            ["worker"], {**self.env, "COVERSERVICE_WORKER_NAME": name}, log_path=self.tmp_path / f"{name}.log"
        )

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text(errors="replace")


@pytest.fixture
def cos() -> Iterator[CosServer]:
    with CosServer() as server:
        yield server


@pytest.fixture
def rig_factory(postgres_url: str, tmp_path: Path, cos: CosServer) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(**env: str) -> Rig:
        rig = Rig(postgres_url, tmp_path, cos, **env)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


@pytest.mark.parametrize(
    "mode, objects_left",
    [("after-download", 0), ("after-put", 1), ("before-commit", 6)],
)
def test_a_worker_killed_mid_frame_leaves_nothing_served_and_the_frame_is_redone(
    rig_factory: Callable[..., Rig], mode: str, objects_left: int
) -> None:
    rig = rig_factory()
    frame_id = rig.screenshot("crashroom", "/crash/1.jpg")

    crashed = rig.crash_worker(mode, "crashing")
    assert crashed.wait(timeout=30) == -signal.SIGKILL, rig.log("crashing")
    assert "dying" in rig.log("crashing")

    # Dead mid-frame: the frame is still leased to it, nothing is current, nothing served.
    row = rig.frame(frame_id)
    assert (row.status, row.attempts, row.lease_owner is not None) == ("processing", 1, True)
    lease_end = row.lease_expires_at
    assert lease_end is not None
    current, covers, _ = rig.covers("crashroom")
    assert (current, covers) == (None, [])
    assert rig.http.get("/cover/crashroom").status_code == 404
    assert rig.http.get("/api/covers/crashroom").status_code == 404
    # Objects it had stored are harmless: no row names them.
    assert len(rig.stored()) == objects_left

    with rig.worker("survivor"):
        row = eventually(lambda: (f := rig.frame(frame_id)).status == "scored" and f, timeout=LEASE + 20)
    # Redone only after the dead worker's lease ran out, by the survivor, as attempt 2.
    assert row.processed_at is not None and row.processed_at >= lease_end
    assert (row.attempts, row.processed_by, row.lease_owner) == (2, "survivor", None)

    current, covers, keys = rig.covers("crashroom")
    assert len(covers) == 1 and current == covers[0].id and covers[0].frame_id == frame_id
    assert len(keys[current]) == 6
    # Every referenced object exists, and (keys being content-addressed) the rerun wrote
    # the same keys as the dead worker: nothing is orphaned.
    assert rig.stored() == set(keys[current])
    for size in ("small", "medium", "large"):
        for fmt in ("jpeg", "webp"):
            r = rig.http.get(f"/cover/crashroom?size={size}&format={fmt}")
            assert r.status_code == 200 and r.headers["x-cover-version"] == str(current)


def test_a_screenshot_that_kills_every_worker_is_parked_and_the_others_flow(
    rig_factory: Callable[..., Rig],
) -> None:
    lease = 1.0
    rig = rig_factory(COVERSERVICE_WORKER_BATCH_SIZE="8", COVERSERVICE_WORKER_LEASE=str(lease))
    poison = rig.screenshot("poisoned", "/poison/1.jpg")
    good = [rig.screenshot(f"healthy{i}", f"/healthy/{i}.jpg") for i in range(3)]

    # A supervisor (systemd, Kubernetes) restarts the worker each time it dies.
    restarts = 0
    proc = rig.crash_worker("poison", "w0")
    deadline = time.monotonic() + 60
    late: list[int] = []
    while True:
        frames = [rig.frame(i) for i in [poison, *good, *late]]
        if all(f.status not in ("pending", "processing") for f in frames):
            break
        assert time.monotonic() < deadline, [(f.id, f.status, f.attempts, f.reason) for f in frames]
        if proc.poll() is not None:
            assert proc.returncode == -signal.SIGKILL
            restarts += 1
            if restarts == 1:
                # Frames arriving while the poison is being retried flow too.
                late = [rig.screenshot(f"late{i}", f"/late/{i}.jpg") for i in range(2)]
            # Restarted once every lease of the dead worker has run out, so the new one
            # claims its whole batch again (a quicker restart could catch the frames it
            # never started a moment before the poison, whose lease was renewed later).
            time.sleep(lease + 0.2)
            proc = rig.crash_worker("poison", f"w{restarts}")
        time.sleep(0.05)

    parked = rig.frame(poison)
    assert parked.status == "failed"
    assert parked.reason == "gave up after 3 attempts: the worker stopped while processing it"
    assert restarts == 3  # one death per allowed attempt, then never again
    for frame_id in [*good, *late]:
        row = rig.frame(frame_id)
        assert row.status == "scored", (row.id, row.status, row.attempts, row.reason)
        current, _, _ = rig.covers(row.stream_id)
        assert current is not None
    assert proc.poll() is None  # the last worker lives on
    with Session(rig.engine) as s:
        assert s.scalar(select(func.count()).select_from(Cover).where(Cover.stream_id == "poisoned")) == 0
