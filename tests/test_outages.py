"""Dependencies that stall, fail or restart, with the real processes where it matters:

- the callback is answered at once while the download host drips and the S3 endpoint
  never answers (CSS gives up after 20 s and retries);
- Postgres crashes and restarts under a steady stream of callbacks: every callback that
  got a 200 is in the database, those that could not be recorded got a non-200, and API
  and worker recover without a restart of their own;
- S3 errors and slowness are retried by botocore, errors that outlast the retries send
  the frame back for a later attempt, and no cover ever names an object that is not there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, sessionmaker
from support import pg_cluster
from support.cos_server import CosServer
from support.hostile import BlackHole, Fault, FlakyProxy
from support.images import scene_jpeg
from support.servers import ServiceProcess, ThreadedServer

from coverservice import db
from coverservice.app import create_app
from coverservice.fetch import Fetcher
from coverservice.models import Frame, Rendition
from coverservice.settings import Settings
from coverservice.storage import S3Storage, default_s3_client
from coverservice.worker import Worker

KEY = "outage-key"


@pytest.fixture
def cos() -> Iterator[CosServer]:
    with CosServer() as server:
        yield server


def callback(cos: CosServer, stream: str, path: str) -> dict[str, Any]:
    return {
        "event_type": 200, "stream_id": stream, "channel_id": stream,
        "create_time": int(time.time()) - 1, "file_size": 1000, "width": 1280, "height": 720,
        "pic_url": path, "pic_full_url": cos.url(path),
    }


def service_env(database_url: str, **extra: str) -> dict[str, str]:
    return {
        "COVERSERVICE_DATABASE_URL": database_url,
        "COVERSERVICE_FETCH_ALLOWED_HOSTS": "127.0.0.1:*",
        "COVERSERVICE_FETCH_ALLOW_PRIVATE": "true",
        "COVERSERVICE_WORKER_POLL_INTERVAL": "0.05",
        **extra,
    }


def frames_of(database_url: str) -> list[Frame]:
    engine = create_engine(Settings(database_url=database_url).database_url)
    try:
        with Session(engine) as s:
            return list(s.scalars(select(Frame)))
    finally:
        engine.dispose()


# --- stalled dependencies ----------------------------------------------------------------------


def test_callbacks_are_answered_at_once_while_downloads_and_storage_stall(
    sqlite_url: str, cos: CosServer, tmp_path: Path
) -> None:
    # A screenshot that drips a byte a second (the download takes its whole 10 s budget),
    # and sharp ones whose covers go to an S3 endpoint that accepts connections and never
    # answers (each PUT waits out botocore's read timeout, then its retries).
    cos.put("/slow/1.jpg", scene_jpeg(640, 360), drip=1.0)
    for i in range(3):
        cos.put(f"/sharp/{i}.jpg", scene_jpeg(1280, 720, seed=i))
    with BlackHole() as s3:
        env = service_env(
            sqlite_url,
            COVERSERVICE_STORAGE_URL="s3://covers/prefix",
            AWS_ENDPOINT_URL_S3=s3.url,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_CONFIG_FILE=str(tmp_path / "absent"),
            AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "absent"),
            AWS_EC2_METADATA_DISABLED="true",
        )
        service = ServiceProcess.serve(env, log_path=tmp_path / "serve.log").start()
        try:
            http = httpx.Client(base_url=service.base_url, timeout=20)
            bodies = [callback(cos, "slow", "/slow/1.jpg")]
            bodies += [callback(cos, f"sharp{i}", f"/sharp/{i}.jpg") for i in range(3)]
            for body in bodies:
                assert http.post("/callbacks/css", json=body).status_code == 200
            # The worker is now stuck on the drip or on the silent S3 endpoint.
            stuck = time.monotonic() + 10
            while s3.connections == 0 and cos.requests["/slow/1.jpg"] == 0:
                assert time.monotonic() < stuck, service.log()
                time.sleep(0.05)

            latencies = []
            for i in range(30):
                started = time.monotonic()
                response = http.post("/callbacks/css", json=callback(cos, f"more{i % 3}", f"/more/{i}.jpg"))
                latencies.append(time.monotonic() - started)
                assert response.json() == {"code": 0}
            assert http.get("/healthz").status_code == 200
            # Readiness says which dependency is stuck instead of hanging with it.
            started = time.monotonic()
            ready = http.get("/readyz")
            waited = time.monotonic() - started
            http.close()
            assert ready.status_code == 503
            assert ready.json()["storage"].startswith("unavailable: no answer within")
            # Functional bounds, far inside CSS's 20 s and a load balancer's check (not a
            # benchmark): the stalled S3 read timeout alone is a minute.
            assert max(latencies) < 2.0, latencies
            assert waited < 10.0, waited
            assert len(frames_of(sqlite_url)) == 34
        finally:
            service.kill()  # its worker is blocked on the black hole: no clean stop
            service.stop()


# --- Postgres restarted under load ---------------------------------------------------------------


@pytest.fixture
def private_postgres() -> Iterator[pg_cluster.PrivateCluster]:
    if not pg_cluster.available():
        pytest.skip("needs the Postgres server binaries and a postgres user")
    with pg_cluster.PrivateCluster() as cluster:
        yield cluster


def test_postgres_restarted_under_load_loses_no_acknowledged_callback(
    private_postgres: pg_cluster.PrivateCluster, cos: CosServer, tmp_path: Path
) -> None:
    database_url = private_postgres.create_database("coverservice")
    for stream in range(4):
        cos.put(f"/s{stream}.jpg", scene_jpeg(640, 360, seed=stream))
    env = service_env(
        database_url,
        COVERSERVICE_STORAGE_URL=(tmp_path / "covers").as_uri(),
        # A frame the worker held when the database went away is taken again after this.
        COVERSERVICE_WORKER_LEASE="3",
        COVERSERVICE_WORKER_RETRY_BASE="0.2",
        COVERSERVICE_WORKER_RETRY_MAX="1",
    )
    answers: list[tuple[float, float, str, int | str]] = []  # (sent, answered, pic_url, status)
    lock = threading.Lock()
    stop = threading.Event()

    def load(client_id: int) -> None:
        with httpx.Client(base_url=service.base_url, timeout=15) as http:
            n = 0
            while not stop.is_set():
                n += 1
                path = f"/c{client_id}/{n}.jpg"
                body = callback(cos, f"s{n % 4}", path)
                body["pic_full_url"] = cos.url(f"/s{n % 4}.jpg")  # what the worker downloads
                sent = time.monotonic()
                try:
                    status: int | str = http.post("/callbacks/css", json=body).status_code
                except httpx.TransportError as exc:
                    status = type(exc).__name__
                with lock:
                    answers.append((sent, time.monotonic(), path, status))
                stop.wait(0.03)

    with ServiceProcess.serve(env, log_path=tmp_path / "serve.log") as service:
        with ThreadPoolExecutor(3) as pool:
            clients = [pool.submit(load, i) for i in range(3)]
            time.sleep(1.5)
            private_postgres.stop("immediate")  # as if the server had crashed
            down_at = time.monotonic()
            time.sleep(1.5)
            restarting_at = time.monotonic()
            private_postgres.start()
            up_at = time.monotonic()
            time.sleep(3.0)
            stop.set()
            for client in clients:
                client.result()

        statuses = [status for _, _, _, status in answers]
        # The API process itself never went away: every request got an HTTP answer, and
        # only 200 (recorded) or 503 (not recorded: CSS retries).
        assert set(statuses) <= {200, 503}, sorted(set(map(str, statuses)))
        # Whatever was answered while the database was down was a 503.
        during = [status for _, answered, _, status in answers if down_at + 0.1 < answered < restarting_at]
        assert during and set(during) == {503}
        # Recovered without a restart: the last second of callbacks all got through.
        last = [status for sent, _, _, status in answers if sent > up_at + 2.0]
        assert last and set(last) == {200}

        # None acknowledged and lost (the cluster ran crash recovery from its WAL).
        acknowledged = {path for _, _, path, status in answers if status == 200}
        recorded = {f.pic_url for f in frames_of(database_url)}
        assert acknowledged <= recorded, sorted(acknowledged - recorded)[:10]

        # The worker recovered too: every recorded frame reaches a final state.
        deadline = time.monotonic() + 40
        while True:
            rows = frames_of(database_url)
            open_ = [f for f in rows if f.status in ("pending", "processing")]
            if not open_:
                break
            assert time.monotonic() < deadline, (len(open_), service.log()[-3000:])
            time.sleep(0.2)
        assert {f.status for f in rows} == {"scored"}, {(f.status, f.reason) for f in rows if f.status != "scored"}
        for stream in range(4):
            assert httpx.get(f"{service.base_url}/cover/s{stream}?format=jpeg").status_code == 200
        assert httpx.get(f"{service.base_url}/readyz").status_code == 200
    assert len(answers) > 100


# --- S3 errors and slowness --------------------------------------------------------------------------


@pytest.fixture
def proxied_s3(
    s3_storage: S3Storage, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[S3Storage, FlakyProxy]]:
    """The test bucket, reached through a FlakyProxy by a client built the production
    way (standard retry mode) from the environment."""
    host, port = s3_endpoint.removeprefix("http://").split(":")
    with FlakyProxy((host, int(port))) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        yield S3Storage(s3_storage.bucket, s3_storage.prefix, client=default_s3_client()), proxy


def test_s3_errors_and_slowness_never_leave_a_cover_without_its_objects(
    proxied_s3: tuple[S3Storage, FlakyProxy], sqlite_url: str, cos: CosServer
) -> None:
    storage, proxy = proxied_s3
    settings = Settings(
        database_url=sqlite_url, fetch_allowed_hosts=("127.0.0.1:*",), fetch_allow_private=True,
        worker_retry_base=0.0, worker_retry_max=0.0, cover_cache_ttl=0.0,
    )
    engine = db.make_engine(settings.database_url)
    sessions = db.make_session_factory(engine)
    puts: list[str] = []

    def flaky(method: str, path: str) -> Fault | None:
        # The first rendition PUT answers 503 SlowDown twice; every third one is slow.
        if method != "PUT" or "/renditions/" not in path:
            return None
        puts.append(path)
        if len(puts) <= 2:
            return Fault(status=503)
        return Fault(delay=0.3) if len(puts) % 3 == 0 else None

    def refusing_after_three(method: str, path: str) -> Fault | None:
        # A refusal botocore does not retry, after three of the six objects are stored.
        if method != "PUT" or "/renditions/" not in path:
            return None
        puts.append(path)
        return Fault(status=403) if len(puts) > 3 else None

    with Fetcher.from_settings(settings) as fetcher, ThreadedServer(
        create_app(settings, engine=engine, storage=storage, fetch=fetcher.fetch)
    ) as api, httpx.Client(base_url=api.base_url) as http:
        worker = Worker(settings, session_factory=sessions, storage=storage, fetch=fetcher.fetch, name="w")

        def screenshot(stream: str, path: str) -> int:
            cos.put(path, scene_jpeg(1280, 720, seed=len(path)))
            assert http.post("/callbacks/css", json=callback(cos, stream, path)).status_code == 200
            with sessions() as s:
                return s.scalars(select(Frame.id).where(Frame.stream_id == stream, Frame.pic_url == path)).one()

        def cover_is_complete(stream: str) -> None:
            meta = http.get(f"/api/covers/{stream}").json()["cover"]
            with sessions() as s:
                keys = s.scalars(
                    select(Rendition.key).where(Rendition.cover_id == meta["version"])
                ).all()
            assert len(keys) == 6 and all(storage.exists(key) for key in keys)
            for size, formats in meta["urls"].items():
                for url in formats.values():
                    assert http.get(url).status_code == 200, (size, url)

        # 1. Transient errors and slowness are absorbed by botocore's retries.
        proxy.rule = flaky
        first = screenshot("flaky", "/flaky/1.jpg")
        worker.drain()
        row = _frame(sessions, first)
        assert (row.status, row.attempts) == ("scored", 1)  # retried inside botocore
        assert [status for method, path, status in proxy.log if path == puts[0]] == [503, 503, 200]
        cover_is_complete("flaky")

        # 2. An error that outlasts them, halfway through a cover's objects: the frame goes
        # back to pending with the storage reason and no cover names the missing objects.
        # Once S3 is back the redo completes it (content-addressed keys: same objects).
        puts.clear()
        proxy.rule = refusing_after_three
        second = screenshot("broken", "/broken/1.jpg")
        worker.run_once()
        row = _frame(sessions, second)
        assert row.status == "pending" and row.reason.startswith("storage unavailable")
        assert http.get("/cover/broken").status_code == 404
        proxy.rule = lambda method, path: None
        worker.drain()
        assert _frame(sessions, second).status == "scored"
        cover_is_complete("broken")
    engine.dispose()


def _frame(sessions: sessionmaker[Session], frame_id: int) -> Frame:
    with sessions() as s:
        return s.get_one(Frame, frame_id)
