"""End to end: `coverservice serve` as a process on a loopback port, screenshots served by
a COS stand-in, signed callbacks over HTTP, covers read back over HTTP."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session
from support.cos_server import CosServer
from support.images import blurred, encode, scene, scene_jpeg
from support.polling import eventually
from support.servers import ServiceProcess

from coverservice.callbacks import sign
from coverservice.models import Frame
from coverservice.settings import Settings

KEY = "e2e-callback-key"


@pytest.fixture
def cos() -> Iterator[CosServer]:
    with CosServer() as server:
        yield server


def service_env(database_url: str, storage_url: str, **extra: str) -> dict[str, str]:
    return {
        "COVERSERVICE_DATABASE_URL": database_url,
        "COVERSERVICE_STORAGE_URL": storage_url,
        "COVERSERVICE_CALLBACK_KEYS": f"old-key,{KEY}",
        "COVERSERVICE_FETCH_ALLOWED_HOSTS": "127.0.0.1:*",
        "COVERSERVICE_FETCH_ALLOW_PRIVATE": "true",
        "COVERSERVICE_WORKER_POLL_INTERVAL": "0.05",
        "COVERSERVICE_COVER_CACHE_TTL": "0.2",
        "COVERSERVICE_FETCH_MAX_BYTES": "3000000",
        "COVERSERVICE_COVER_MIN_INTERVAL": "0",
        **extra,
    }


@pytest.fixture
def service(database_url: str, tmp_path: Path) -> Iterator[ServiceProcess]:
    env = service_env(database_url, (tmp_path / "covers").as_uri())
    with ServiceProcess.serve(env, log_path=tmp_path / "serve.log") as proc:
        yield proc


def callback(cos: CosServer, stream: str, path: str, *, t: int | None = None, key: str = KEY, **changes: Any) -> dict[str, Any]:
    t = t if t is not None else int(time.time()) + 600
    body: dict[str, Any] = {
        "event_type": 200,
        "stream_id": stream,
        "channel_id": stream,
        "create_time": int(time.time()),
        "file_size": 1000,
        "width": 1280,
        "height": 720,
        "pic_url": path,
        "pic_full_url": cos.url(path),
        "t": t,
        "sign": sign(key, t),
        "stream_param": "txSecret=topsecret&txTime=5C2A3F2B",
    }
    body.update(changes)
    return body


def post(service: ServiceProcess, body: dict[str, Any] | bytes) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(f"{service.base_url}/callbacks/css", content=body, headers={"content-type": "application/json"})
    return httpx.post(f"{service.base_url}/callbacks/css", json=body)


def frames(database_url: str) -> list[Frame]:
    engine = create_engine(Settings(database_url=database_url).database_url)
    try:
        with Session(engine) as s:
            return list(s.scalars(select(Frame).order_by(Frame.id)))
    finally:
        engine.dispose()


def settled(database_url: str, count: int) -> list[Frame] | None:
    rows = frames(database_url)
    done = [f for f in rows if f.status not in ("pending", "processing")]
    return rows if len(rows) == count and len(done) == count else None


def test_signed_screenshots_become_a_cover_served_with_cache_headers(
    service: ServiceProcess, cos: CosServer, database_url: str
) -> None:
    base = scene(1280, 720, seed=11)
    cos.put("/room/soft.jpg", encode(blurred(base, 4)))
    cos.put("/room/sharp.jpg", encode(base))
    for path in ("/room/soft.jpg", "/room/sharp.jpg"):
        response = post(service, callback(cos, "room", path))
        assert response.status_code == 200 and response.json() == {"code": 0}

    rows = eventually(lambda: settled(database_url, 2))
    sharp_id = next(f.id for f in rows if f.pic_url == "/room/sharp.jpg")
    meta = eventually(lambda: (r := httpx.get(f"{service.base_url}/api/covers/room")).status_code == 200
                    and r.json()["cover"]["frame_id"] == sharp_id and r.json())
    cover = meta["cover"]
    assert cover["source"] == "auto" and cover["score"] > 0
    assert set(cover["metrics"]) >= {"sharpness", "brightness"}
    assert cover["urls"]["small"]["webp"] == "/cover/room?size=small&format=webp"

    # default: medium, negotiated from Accept
    r = httpx.get(f"{service.base_url}/cover/room", headers={"accept": "image/webp,*/*"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/webp"
    assert r.headers["vary"] == "Accept"
    assert r.headers["cache-control"] == "public, max-age=30"
    assert Image.open(io.BytesIO(r.content)).size == (640, 360)
    etag = r.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')

    again = httpx.get(f"{service.base_url}/cover/room", headers={"accept": "image/webp", "if-none-match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag

    jpeg = httpx.get(f"{service.base_url}/cover/room", headers={"accept": "image/png,*/*"})
    assert jpeg.headers["content-type"] == "image/jpeg" and jpeg.headers["etag"] != etag
    # a browser that names AVIF gets it (rendered on this first request)
    avif = httpx.get(f"{service.base_url}/cover/room", headers={"accept": "image/avif,image/webp,*/*"})
    assert avif.headers["content-type"] == "image/avif" and avif.headers["vary"] == "Accept"
    assert Image.open(io.BytesIO(avif.content)).size == (640, 360)

    for size, dims in {"small": (320, 180), "medium": (640, 360), "large": (1280, 720)}.items():
        r = httpx.get(f"{service.base_url}/cover/room", params={"size": size, "format": "jpeg"})
        assert r.status_code == 200 and "vary" not in r.headers  # format chosen by the URL
        img = Image.open(io.BytesIO(r.content))
        assert (img.format, img.size) == ("JPEG", dims)

    assert httpx.get(f"{service.base_url}/cover/room", params={"size": "huge"}).status_code == 400
    assert httpx.get(f"{service.base_url}/cover/room", params={"format": "gif"}).status_code == 400
    missing = httpx.get(f"{service.base_url}/cover/nobody")
    assert missing.status_code == 404 and missing.headers["cache-control"] == "public, max-age=5"
    assert httpx.get(f"{service.base_url}/api/covers/nobody").status_code == 404
    assert httpx.get(f"{service.base_url}/readyz").json() == {"status": "ok", "database": "ok", "storage": "ok"}

    # secrets never stored, never logged
    assert all("topsecret" not in str(f.payload) for f in frames(database_url))
    assert "topsecret" not in service.log()


def test_a_new_better_frame_changes_the_served_cover(service: ServiceProcess, cos: CosServer, database_url: str) -> None:
    base = scene(1280, 720, seed=12)
    cos.put("/r2/1.jpg", encode(blurred(base, 5)))
    post(service, callback(cos, "r2", "/r2/1.jpg"))
    first = eventually(lambda: (r := httpx.get(f"{service.base_url}/cover/r2?format=jpeg")).status_code == 200 and r)
    cos.put("/r2/2.jpg", encode(base))
    post(service, callback(cos, "r2", "/r2/2.jpg"))
    second = eventually(
        lambda: (r := httpx.get(f"{service.base_url}/cover/r2?format=jpeg")).headers.get("etag") != first.headers["etag"] and r
    )
    assert int(second.headers["x-cover-version"]) > int(first.headers["x-cover-version"])


@pytest.mark.parametrize(
    "mutate, status, error",
    [
        (lambda b: {**b, "sign": "0" * 32}, 403, "signature_rejected"),
        (lambda b: {**b, "t": int(time.time()) - 10, "sign": sign(KEY, int(time.time()) - 10)}, 403, "signature_rejected"),
        (lambda b: {**b, "width": "wide"}, 400, "invalid_payload"),
        (lambda b: {k: v for k, v in b.items() if k != "pic_full_url"}, 400, "invalid_payload"),
    ],
    ids=["bad-sign", "expired", "mistyped", "missing-field"],
)
def test_refused_callbacks_store_nothing(
    service: ServiceProcess, cos: CosServer, database_url: str,
    mutate: Callable[[dict[str, Any]], dict[str, Any]], status: int, error: str,
) -> None:
    cos.put("/r3/1.jpg", scene_jpeg(640, 360))
    response = post(service, mutate(callback(cos, "r3", "/r3/1.jpg")))
    assert response.status_code == status
    assert response.json()["error"] == error
    assert frames(database_url) == []
    time.sleep(0.3)
    assert cos.total_requests == 0


def test_malformed_json_is_a_named_400(service: ServiceProcess, database_url: str) -> None:
    response = post(service, '{"event_type":200,"stream_id":"s",「width":640}'.encode())
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["message"]
    missing = post(service, {"event_type": 200, "t": int(time.time()) + 60, "sign": sign(KEY, int(time.time()) + 60)})
    assert missing.status_code == 400
    assert {p["field"] for p in missing.json()["problems"]} >= {"stream_id", "pic_full_url", "width"}
    assert frames(database_url) == []


def test_oversized_body_is_refused_before_parsing(service: ServiceProcess, database_url: str) -> None:
    response = post(service, b'{"event_type":200,"pad":"' + b"x" * 200_000 + b'"}')
    assert response.status_code == 413
    assert frames(database_url) == []


def test_retries_and_unknown_events(service: ServiceProcess, cos: CosServer, database_url: str) -> None:
    cos.put("/r4/1.jpg", scene_jpeg(640, 360))
    body = callback(cos, "r4", "/r4/1.jpg")
    assert post(service, body).json() == {"code": 0}
    retry = {**body, "t": body["t"] + 120, "sign": sign(KEY, body["t"] + 120)}
    assert post(service, retry).json() == {"code": 0}
    t = int(time.time()) + 600
    assert post(service, {"event_type": 100, "t": t, "sign": sign(KEY, t)}).json() == {"code": 0}
    rows = eventually(lambda: settled(database_url, 1))
    assert len(rows) == 1
    assert cos.requests["/r4/1.jpg"] == 1


def test_disallowed_host_is_recorded_as_failed_and_never_fetched(
    service: ServiceProcess, cos: CosServer, database_url: str
) -> None:
    cos.put("/r5/1.jpg", scene_jpeg(640, 360))
    body = callback(cos, "r5", "/r5/1.jpg", pic_full_url=cos.url("/r5/1.jpg", host="localhost"))
    assert post(service, body).status_code == 200
    [row] = frames(database_url)
    assert row.status == "failed" and "not allowed" in row.reason
    time.sleep(0.3)
    assert cos.total_requests == 0


def test_bad_downloads_end_in_a_state_with_a_reason(service: ServiceProcess, cos: CosServer, database_url: str) -> None:
    cos.put("/r6/huge.jpg", b"\xff\xd8\xff" + b"\0" * 3_100_000)
    cos.put("/r6/page.jpg", b"<html>nope</html>", "text/html")
    cos.put("/r6/cut.jpg", scene_jpeg(1280, 720)[:5000])
    for path in ("/r6/huge.jpg", "/r6/page.jpg", "/r6/cut.jpg"):
        assert post(service, callback(cos, "r6", path)).status_code == 200
    rows = {f.pic_url: f for f in eventually(lambda: settled(database_url, 3))}
    assert rows["/r6/huge.jpg"].status == "failed" and "larger than" in rows["/r6/huge.jpg"].reason
    assert rows["/r6/page.jpg"].status == "rejected" and "not an image" in rows["/r6/page.jpg"].reason
    assert rows["/r6/cut.jpg"].status == "rejected" and "truncated" in rows["/r6/cut.jpg"].reason
    assert httpx.get(f"{service.base_url}/cover/r6").status_code == 404


def test_covers_in_s3_through_a_real_endpoint(
    s3_storage: Any, cos: CosServer, database_url: str, tmp_path: Path
) -> None:
    env = service_env(database_url, f"s3://{s3_storage.bucket}/covers")
    with ServiceProcess.serve(env, log_path=tmp_path / "serve.log") as service:
        cos.put("/s3/1.jpg", scene_jpeg(1280, 720))
        post(service, callback(cos, "s3room", "/s3/1.jpg"))
        r = eventually(lambda: (r := httpx.get(f"{service.base_url}/cover/s3room?size=large&format=jpeg")).status_code == 200 and r)
        assert Image.open(io.BytesIO(r.content)).size == (1280, 720)
        keys = s3_storage.client.list_objects_v2(Bucket=s3_storage.bucket)["Contents"]
        assert len(keys) == 6 and all(k["Key"].startswith("covers/renditions/") for k in keys)
        assert httpx.get(f"{service.base_url}/readyz").status_code == 200


def test_two_workers_share_the_work_and_process_each_frame_once(
    postgres_url: str, cos: CosServer, tmp_path: Path
) -> None:
    env = service_env(postgres_url, (tmp_path / "covers").as_uri(), COVERSERVICE_WORKER_BATCH_SIZE="2")
    workers = [
        ServiceProcess(["worker"], {**env, "COVERSERVICE_WORKER_NAME": f"w{i}"}, log_path=tmp_path / f"w{i}.log")
        for i in range(2)
    ]
    paths = [f"/multi/{stream}/{n}.jpg" for stream in ("a", "b", "c", "d") for n in range(10)]
    with ServiceProcess.serve(env, log_path=tmp_path / "api.log", worker=False) as api:
        for i, path in enumerate(paths):
            cos.put(path, scene_jpeg(640, 360, seed=i))
            assert post(api, callback(cos, path.split("/")[2], path)).status_code == 200
        for w in workers:
            w.start()
        try:
            rows = eventually(lambda: settled(postgres_url, len(paths)), timeout=120)
        finally:
            for w in workers:
                assert w.stop() == 0, w.log()
    assert all(f.status == "scored" and f.attempts == 1 for f in rows)
    assert all(cos.requests[p] >= 1 for p in paths)
    # A frame is downloaded once to be scored (and at most once more if an older frame
    # wins a selection); no frame was processed twice.
    assert len({f.processed_by for f in rows}) == 2
    engine = create_engine(Settings(database_url=postgres_url).database_url)
    with engine.connect() as conn:
        current = conn.execute(text("SELECT count(*) FROM streams WHERE cover_id IS NOT NULL")).scalar()
    engine.dispose()
    assert current == 4


def test_embedded_default_needs_no_configuration(cos: CosServer, tmp_path: Path) -> None:
    with ServiceProcess.serve({}, log_path=tmp_path / "serve.log", cwd=tmp_path) as service:
        assert httpx.get(f"{service.base_url}/readyz").status_code == 200
        cos.put("/x.jpg", scene_jpeg(640, 360))
        body = callback(cos, "room", "/x.jpg", sign="unchecked")
        assert post(service, body).json() == {"code": 0}
        database_url = f"sqlite:///{tmp_path / 'coverservice.sqlite3'}"
        [row] = frames(database_url)
        # the default allowlist is COS's domains: a loopback URL is refused, not fetched
        assert row.status == "failed" and "not allowed" in row.reason
    assert (tmp_path / "coverservice-data").is_dir()
    assert "signatures are NOT checked" in service.log()
    assert cos.total_requests == 0


def test_a_bad_setting_stops_the_service_with_a_clear_message(tmp_path: Path) -> None:
    proc = subprocess.run(  # noqa: PLW1510  (the exit code is the point of the test)
        [sys.executable, "-m", "coverservice", "serve"],
        env={**os.environ, "COVERSERVICE_SELECTION_WINDOW": "ten minutes"},
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert "COVERSERVICE_SELECTION_WINDOW" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_block_reaches_every_api_process_at_once(postgres_url: str, cos: CosServer, tmp_path: Path) -> None:
    # Covers cached for five minutes: only the database's notification can explain B
    # dropping the blocked cover within a second or two.
    env = service_env(postgres_url, (tmp_path / "covers").as_uri(), COVERSERVICE_COVER_CACHE_TTL="300")
    with ServiceProcess.serve(env, log_path=tmp_path / "a.log") as a, \
            ServiceProcess.serve(env, log_path=tmp_path / "b.log", worker=False) as b:
        cos.put("/x/1.jpg", scene_jpeg(1280, 720))
        post(a, callback(cos, "xroom", "/x/1.jpg"))
        eventually(lambda: httpx.get(f"{a.base_url}/cover/xroom").status_code == 200)
        cached = httpx.get(f"{b.base_url}/cover/xroom?format=jpeg")
        assert cached.status_code == 200
        # and its immutable URL, which CDNs keep for a year, is served (and cached) by B too
        immutable = httpx.get(f"{b.base_url}/api/covers/xroom").json()["cover"]["images"]["small"]["webp"]["url"]
        assert httpx.get(f"{b.base_url}{immutable}").status_code == 200
        t = int(time.time()) + 600
        flag = {"event_type": 317, "streamId": "xroom", "img": cos.url("/x/1.jpg"), "suggestion": "Block",
                "t": t, "sign": sign(KEY, t)}
        assert post(a, flag).json() == {"code": 0}
        started = time.monotonic()
        eventually(lambda: httpx.get(f"{b.base_url}/cover/xroom?format=jpeg").status_code == 404, timeout=5)
        assert time.monotonic() - started < 5
        assert httpx.get(f"{b.base_url}{immutable}").status_code == 404
