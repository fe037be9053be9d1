"""Prometheus metrics over real sockets: the API's /metrics under uvicorn on loopback, a
`coverservice worker --metrics-port` process, and the embedded worker of `coverservice
serve`, all parsed with prometheus_client's own parser."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from support.cos_server import CosServer
from support.images import black, encode, flat, scene
from support.polling import eventually
from support.servers import ServiceProcess, ThreadedServer, free_port
from test_e2e import service_env

from coverservice import db, imaging, queries, scoring
from coverservice.app import create_app
from coverservice.callbacks import ScreenshotEvent, sign
from coverservice.errors import FetchError, ImageRejected
from coverservice.fetch import Fetcher, check_url
from coverservice.metrics import (
    REASON_CATEGORIES,
    Metrics,
    QueueCollector,
    reason_category,
)
from coverservice.settings import Settings
from coverservice.worker import Worker

KEY = "metrics-callback-key"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def cos() -> Iterator[CosServer]:
    with CosServer() as server:
        yield server


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(url: str) -> Samples:
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def screenshot(cos: CosServer, stream: str, path: str, **changes: Any) -> dict[str, Any]:
    t = int(time.time()) + 600
    body = {
        "event_type": 200, "stream_id": stream, "channel_id": stream, "create_time": int(time.time()),
        "file_size": 1000, "width": 1280, "height": 720, "pic_url": path, "pic_full_url": cos.url(path),
        "t": t, "sign": sign(KEY, t),
    }
    return {**body, **changes}


def signed(body: dict[str, Any]) -> dict[str, Any]:
    t = int(time.time()) + 600
    return {**body, "t": t, "sign": sign(KEY, t)}


def test_callbacks_frames_latencies_and_queue(
    make_settings: Callable[..., Settings], engine: Engine, sessions: sessionmaker[Session], cos: CosServer
) -> None:
    settings = make_settings(callback_keys=(KEY,), metrics_queue_ttl=0.0, callback_max_body_bytes=4096)
    metrics = Metrics()
    app = create_app(settings, engine=engine, metrics=metrics)
    cos.put("/r/sharp.jpg", encode(scene(1280, 720, seed=3)))
    cos.put("/r/black.jpg", encode(black(1280, 720)))
    with ThreadedServer(app) as server:
        url = f"{server.base_url}/metrics"
        before = scrape(url)
        assert value(before, "coverservice_queue_frames", status="pending") == 0

        def post(body: dict[str, Any] | bytes) -> int:
            if isinstance(body, bytes):
                return httpx.post(f"{server.base_url}/callbacks/css", content=body).status_code
            return httpx.post(f"{server.base_url}/callbacks/css", json=body).status_code

        assert post(screenshot(cos, "r", "/r/sharp.jpg")) == 200
        assert post(screenshot(cos, "r", "/r/sharp.jpg")) == 200  # a CSS retry
        assert post(screenshot(cos, "r", "/r/black.jpg")) == 200
        assert post(screenshot(cos, "r", "/r/far.jpg", pic_full_url="http://files.example.com/far.jpg")) == 200
        assert post({**screenshot(cos, "r", "/r/x.jpg"), "sign": "0" * 32}) == 403
        assert post(signed({"event_type": 200, "stream_id": "r"})) == 400
        assert post(b"not json") == 400
        assert post(b'{"event_type": 200, "pad": "' + b"x" * 5000 + b'"}') == 413
        assert post(signed({"event_type": 100, "stream_id": "r"})) == 200
        assert post(signed({"event_type": 1, "stream_id": "r"})) == 200
        flag = {"event_type": 317, "streamId": "m", "img": cos.url("/m/1.jpg")}
        assert post(signed({**flag, "suggestion": "Pass"})) == 200
        assert post(signed({**flag, "suggestion": "Block"})) == 200

        after = scrape(url)
        expected = {
            ("screenshot", "accepted"): 2,
            ("screenshot", "duplicate"): 1,
            ("screenshot", "host_not_allowed"): 1,
            # Refused after the event type was read: counted under it.
            ("screenshot", "signature_rejected"): 1,
            ("screenshot", "invalid"): 1,
            # Refused before: no type to count it under.
            ("unknown", "invalid"): 1,
            ("unknown", "too_large"): 1,
            ("other", "ignored"): 1,
            ("push_started", "accepted"): 1,
            ("moderation", "ignored"): 1,
            ("moderation", "accepted"): 1,
        }
        for (event, outcome), count in expected.items():
            name = "coverservice_callbacks_total"
            moved = value(after, name, event=event, outcome=outcome) - value(before, name, event=event, outcome=outcome)
            assert moved == count, (event, outcome)
        assert value(after, "coverservice_queue_frames", status="pending") == 2
        assert value(after, "coverservice_queue_due_frames") == 2
        assert 0 <= value(after, "coverservice_queue_oldest_pending_age_seconds") < 60

        with Fetcher.from_settings(settings) as fetcher:
            worker = Worker(settings, session_factory=sessions, storage=app.state.storage,
                            fetch=fetcher.fetch, metrics=metrics)
            assert worker.drain() == 2
        done = scrape(url)

    assert value(done, "coverservice_frames_finished_total", status="scored", reason="ok") == 1
    assert value(done, "coverservice_frames_finished_total", status="rejected", reason="black") == 1
    assert value(done, "coverservice_cover_changes_total", trigger="frame") == 1
    for histogram, count in (("download", 2), ("score", 2), ("render", 1)):
        assert value(done, f"coverservice_{histogram}_seconds_count") == count
        assert value(done, f"coverservice_{histogram}_seconds_bucket", le="+Inf") == count
        assert value(done, f"coverservice_{histogram}_seconds_sum") > 0
    assert value(done, "coverservice_queue_frames", status="pending") == 0
    assert value(done, "coverservice_queue_due_frames") == 0
    assert value(done, "coverservice_queue_oldest_pending_age_seconds") == 0


def test_queue_is_read_at_scrape_time_and_cached(
    sessions: sessionmaker[Session], cos: CosServer
) -> None:
    now = [100.0]
    registry = CollectorRegistry()
    registry.register(QueueCollector(sessions, ttl=10.0, clock=lambda: now[0]))

    def pending() -> float:
        return value(parse(generate_latest(registry).decode()), "coverservice_queue_frames", status="pending")

    assert pending() == 0
    event = ScreenshotEvent(
        stream_id="q", channel_id="q", create_time=1, file_size=1, width=2, height=2,
        pic_url="/q/1.jpg", pic_full_url=cos.url("/q/1.jpg"), app=None, payload={},
    )
    with db.transaction(sessions) as session:
        queries.record_frames(session, [queries.NewFrame(event, db.utcnow())], now=db.utcnow())
    assert pending() == 0  # one query per ttl, however often it is scraped
    now[0] += 10.0
    assert pending() == 1


def test_callbacks_refused_by_the_database_are_counted_and_metrics_still_served(
    tmp_path: Path, cos: CosServer
) -> None:
    # A SQLite file in a directory that does not exist: every connection fails.
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'missing' / 'db.sqlite3'}",
                        storage_url=(tmp_path / "covers").as_uri(), callback_keys=(KEY,), metrics_queue_ttl=0.0)
    with ThreadedServer(create_app(settings)) as server:
        flag = signed({"event_type": 317, "streamId": "m", "img": cos.url("/m/1.jpg"), "suggestion": "Block"})
        for body in (screenshot(cos, "d", "/d/1.jpg"), flag):
            assert httpx.post(f"{server.base_url}/callbacks/css", json=body).status_code == 503
        samples = scrape(f"{server.base_url}/metrics")
    for event in ("screenshot", "moderation"):
        assert value(samples, "coverservice_callbacks_total", event=event, outcome="unavailable") == 1
    # The queue cannot be read: its series are left out (alert on their absence).
    assert not any(name.startswith("coverservice_queue") for name, _ in samples)


def test_a_worker_process_serves_its_own_metrics(postgres_url: str, cos: CosServer, tmp_path: Path) -> None:
    cos.put("/w/1.jpg", encode(scene(640, 360, seed=5)))
    cos.put("/w/2.jpg", encode(flat(640, 360)))
    engine = db.make_engine(postgres_url)
    sessions = db.make_session_factory(engine)
    frames = [
        queries.NewFrame(ScreenshotEvent(
            stream_id="w", channel_id="w", create_time=int(time.time()), file_size=1, width=640, height=360,
            pic_url=path, pic_full_url=cos.url(path), app=None, payload={},
        ), db.utcnow())
        for path in ("/w/1.jpg", "/w/2.jpg")
    ]
    with db.transaction(sessions) as session:
        queries.record_frames(session, frames, now=db.utcnow())
    engine.dispose()
    port = free_port()
    env = service_env(postgres_url, (tmp_path / "covers").as_uri(), COVERSERVICE_METRICS_QUEUE_TTL="0")
    url = f"http://127.0.0.1:{port}/metrics"

    def finished() -> Samples | None:
        try:
            samples = scrape(url)
        except httpx.TransportError:
            return None
        scored = value(samples, "coverservice_frames_finished_total", status="scored", reason="ok")
        flat_ = value(samples, "coverservice_frames_finished_total", status="rejected", reason="flat")
        return samples if (scored, flat_) == (1, 1) else None

    with ServiceProcess(["worker", "--metrics-port", str(port)], env, log_path=tmp_path / "worker.log"):
        samples = eventually(finished)
    assert value(samples, "coverservice_cover_changes_total", trigger="frame") == 1
    assert value(samples, "coverservice_render_seconds_count") == 1
    assert value(samples, "coverservice_download_seconds_count") == 2
    assert value(samples, "coverservice_queue_frames", status="pending") == 0
    # The worker answers on loopback only, and only where asked to.
    assert f"metrics on http://127.0.0.1:{port}/metrics" in (tmp_path / "worker.log").read_text()


def test_the_embedded_worker_reports_through_the_api(sqlite_url: str, cos: CosServer, tmp_path: Path) -> None:
    cos.put("/e/1.jpg", encode(scene(640, 360, seed=9)))
    env = service_env(sqlite_url, (tmp_path / "covers").as_uri(), COVERSERVICE_CALLBACK_KEYS=KEY,
                      COVERSERVICE_METRICS_QUEUE_TTL="0")
    with ServiceProcess.serve(env, log_path=tmp_path / "serve.log") as service:
        assert httpx.post(f"{service.base_url}/callbacks/css", json=screenshot(cos, "e", "/e/1.jpg")).status_code == 200
        samples = eventually(
            lambda: (s := scrape(f"{service.base_url}/metrics"))
            and value(s, "coverservice_cover_changes_total", trigger="frame") == 1
            and s
        )
    assert value(samples, "coverservice_callbacks_total", event="screenshot", outcome="accepted") == 1
    assert value(samples, "coverservice_frames_finished_total", status="scored", reason="ok") == 1
    assert value(samples, "coverservice_queue_frames", status="pending") == 0


def _reasons() -> list[tuple[str, str, str]]:
    """Reasons as the code produces them, with the category each must land in."""
    cases: list[tuple[str, str, str]] = []
    for img, category in ((black(320, 180), "black"), (flat(320, 180, 250), "white"), (flat(320, 180), "flat")):
        result = scoring.score_luma(imaging.decode_luma(encode(img), max_pixels=10**7))
        assert result.rejected
        cases.append(("rejected", result.reason, category))
    for data, cap, category in ((b"GIF89a" + b"\0" * 64, 10**7, "undecodable"), (b"nothing", 10**7, "undecodable"),
                                (encode(scene(640, 360))[:3000], 10**7, "undecodable"),
                                (encode(scene(640, 360)), 1000, "too_many_pixels")):
        try:
            imaging.decode_luma(data, max_pixels=cap)
        except ImageRejected as exc:
            cases.append(("rejected", str(exc), category))
    try:
        check_url("http://files.example.com/x.jpg", ("*.myqcloud.com",))
    except FetchError as exc:
        cases.append(("failed", f"download refused: {exc}", "download_refused"))
    cases += [
        ("pending", "download failed: connection refused", "download_failed"),
        ("failed", "download failed: timed out (gave up after 5 attempts)", "download_failed"),
        ("pending", "storage unavailable: SlowDown", "storage"),
        ("pending", "internal error: KeyError", "internal"),
        ("failed", "gave up after 5 attempts: the worker stopped while processing it", "worker_died"),
        ("scored", "sharp, well exposed", "ok"),
        ("rejected", "something no one wrote yet", "other"),
    ]
    return cases


def test_frame_reasons_map_to_a_fixed_set_of_categories() -> None:
    cases = _reasons()
    assert len(cases) == 15
    for status, reason, category in cases:
        assert reason_category(status, reason) == category, reason
        assert category in REASON_CATEGORIES
