"""The app in-process under uvicorn on a loopback port, with counting doubles around the
real storage and database, for what the end-to-end tests cannot see from outside."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event
from support.cos_server import CosServer
from support.images import blurred, encode, scene
from support.polling import eventually
from support.servers import ThreadedServer

from coverservice import queries
from coverservice.app import accepts_webp, create_app, etag_matches
from coverservice.db import make_engine, make_session_factory, transaction
from coverservice.errors import StorageError
from coverservice.models import Stream
from coverservice.settings import Settings
from coverservice.storage import FileStorage

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class CountingStorage(FileStorage):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gets = 0
        self.broken = False

    def get(self, key: str) -> bytes:
        self.gets += 1
        return super().get(key)

    def check(self) -> None:
        if self.broken:
            raise StorageError("bucket gone")
        super().check()


def install(engine: Engine, storage: FileStorage, stream: str = "room") -> None:
    data = encode(scene(320, 180), "JPEG")
    storage.put("renditions/ab/abc.jpeg", data, content_type="image/jpeg")
    sessions = make_session_factory(engine)
    with transaction(sessions) as s:
        s.add(Stream(id=stream, created_at=NOW))
        s.flush()
        queries.install_cover(
            s, stream, expected_cover_id=None, frame_id=None,
            score=None, captured_at=None, now=NOW,
            renditions=[queries.StoredRendition("medium", "jpeg", "renditions/ab/abc.jpeg", "abc", "image/jpeg", 320, 180, len(data))],
        )


def count_queries(engine: Engine) -> list[str]:
    seen: list[str] = []
    lock = threading.Lock()

    @event.listens_for(engine, "before_cursor_execute")
    def _count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        with lock:
            seen.append(statement)

    return seen


def test_a_hot_cover_is_served_from_memory(
    make_settings: Callable[..., Settings], engine: Engine, tmp_path: Path
) -> None:
    storage = CountingStorage(tmp_path / "s")
    install(engine, storage)
    app = create_app(make_settings(cover_cache_ttl=60.0), engine=engine, storage=storage)
    statements = count_queries(engine)
    with ThreadedServer(app) as server, httpx.Client(base_url=server.base_url) as client:
        bodies = {client.get("/cover/room?format=jpeg").content for _ in range(50)}
    assert len(bodies) == 1 and next(iter(bodies))[:2] == b"\xff\xd8"
    assert storage.gets == 1
    # one cover lookup (cover + renditions), not one per request
    assert 1 <= len([s for s in statements if "FROM covers" in s or "FROM renditions" in s]) <= 2


def test_unknown_streams_are_cached_too(make_settings: Callable[..., Settings], engine: Engine, tmp_path: Path) -> None:
    app = create_app(make_settings(cover_cache_ttl=60.0), engine=engine, storage=CountingStorage(tmp_path / "s"))
    statements = count_queries(engine)
    with ThreadedServer(app) as server, httpx.Client(base_url=server.base_url) as client:
        assert {client.get("/cover/ghost").status_code for _ in range(20)} == {404}
    assert len([s for s in statements if "FROM streams" in s]) == 1


def test_placeholder_is_served_with_a_short_ttl(
    make_settings: Callable[..., Settings], engine: Engine, tmp_path: Path
) -> None:
    placeholder = tmp_path / "placeholder.png"
    placeholder.write_bytes(encode(scene(64, 36), "PNG"))
    app = create_app(make_settings(placeholder_path=placeholder, missing_max_age=7), engine=engine, storage=CountingStorage(tmp_path / "s"))
    with ThreadedServer(app) as server:
        r = httpx.get(f"{server.base_url}/cover/nobody")
    assert r.status_code == 404
    assert r.headers["content-type"] == "image/png"
    assert r.content == placeholder.read_bytes()
    assert r.headers["cache-control"] == "public, max-age=7"


def test_readyz_reports_a_broken_dependency(
    make_settings: Callable[..., Settings], engine: Engine, tmp_path: Path
) -> None:
    storage = CountingStorage(tmp_path / "s")
    app = create_app(make_settings(), engine=engine, storage=storage)
    with ThreadedServer(app) as server:
        assert httpx.get(f"{server.base_url}/readyz").status_code == 200
        storage.broken = True
        r = httpx.get(f"{server.base_url}/readyz")
        assert r.status_code == 503
        assert r.json() == {"status": "unavailable", "database": "ok", "storage": "unavailable: bucket gone"}
        assert httpx.get(f"{server.base_url}/healthz").status_code == 200


def test_a_callback_that_cannot_be_recorded_is_not_acknowledged(
    make_settings: Callable[..., Settings], engine: Engine, tmp_path: Path
) -> None:
    from sqlalchemy import text

    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE frames RENAME TO frames_gone"))
    app = create_app(make_settings(), engine=engine, storage=CountingStorage(tmp_path / "s"))
    body = {
        "event_type": 200, "stream_id": "s", "channel_id": "s", "create_time": 1, "file_size": 1,
        "width": 1, "height": 1, "pic_url": "/a.jpg", "pic_full_url": "http://127.0.0.1:9/a.jpg",
    }
    with ThreadedServer(app) as server:
        r = httpx.post(f"{server.base_url}/callbacks/css", json=body)
    assert r.status_code == 503 and r.json()["code"] != 0


@pytest.mark.parametrize(
    "accept, expected",
    [
        ("image/webp,*/*", True),
        ("image/avif, image/webp;q=0.8", True),
        ("image/webp;q=0", False),
        ("image/png,*/*;q=0.8", False),
        ("", False),
        ("IMAGE/WEBP", True),
    ],
)
def test_accept_negotiation(accept: str, expected: bool) -> None:
    assert accepts_webp(accept) is expected


@pytest.mark.parametrize(
    "header, expected",
    [('"abc"', True), ('W/"abc"', True), ('"x", "abc"', True), ("*", True), ('"abd"', False), (None, False)],
)
def test_if_none_match(header: str | None, expected: bool) -> None:
    assert etag_matches(header, "abc") is expected


def test_the_embedded_workers_covers_reach_the_caches_at_once(sqlite_url: str, tmp_path: Path) -> None:
    # SQLite has no NOTIFY: with an hour-long cache TTL, only the in-process worker
    # telling the cache can make its covers visible.
    settings = Settings(
        database_url=sqlite_url, storage_url=(tmp_path / "storage").as_uri(), fetch_allowed_hosts=("127.0.0.1:*",),
        fetch_allow_private=True, cover_cache_ttl=3600.0, cover_min_interval=0.0, worker_poll_interval=0.05,
    )
    base = scene(1280, 720, seed=5)
    engine = make_engine(sqlite_url)
    app = create_app(settings, engine=engine, run_worker=True)

    def post(client: httpx.Client, cos: CosServer, path: str, data: bytes) -> None:
        cos.put(path, data)
        body = {
            "event_type": 200, "stream_id": "live", "channel_id": "live", "create_time": int(time.time()),
            "file_size": len(data), "width": 1280, "height": 720, "pic_url": path, "pic_full_url": cos.url(path),
        }
        assert client.post("/callbacks/css", json=body).status_code == 200

    def version(client: httpx.Client) -> Any:
        r = client.get("/api/covers/live")
        return r.status_code == 200 and r.json()["cover"]["version"]

    with CosServer() as cos, ThreadedServer(app) as server, httpx.Client(base_url=server.base_url) as client:
        assert client.get("/api/covers/live").status_code == 404  # "no cover" is now cached
        post(client, cos, "/live/soft.jpg", encode(blurred(base, 4)))
        first = eventually(lambda: version(client), timeout=20)
        etags = {client.get("/cover/live?format=jpeg").headers["etag"] for _ in range(3)}  # now a hot response
        post(client, cos, "/live/sharp.jpg", encode(base))
        assert eventually(lambda: (v := version(client)) != first and v, timeout=20)
        assert client.get("/cover/live?format=jpeg").headers["etag"] not in etags
    engine.dispose()


def test_a_hot_response_sent_again_carries_this_requests_headers(
    make_settings: Callable[..., Settings], engine: Engine, tmp_path: Path
) -> None:
    storage = CountingStorage(tmp_path / "s")
    install(engine, storage)
    app = create_app(make_settings(cover_cache_ttl=60.0), engine=engine, storage=storage)
    with ThreadedServer(app) as server, httpx.Client(base_url=server.base_url) as client:
        responses = [client.get("/cover/room?format=jpeg", headers={"X-Request-Id": f"req-{i}"}) for i in range(3)]
        conditional = client.get("/cover/room?format=jpeg", headers={"If-None-Match": '"abc"'})
    assert [r.headers.get_list("x-request-id") for r in responses] == [["req-0"], ["req-1"], ["req-2"]]
    assert {r.headers["etag"] for r in responses} == {'"abc"'} and len({r.content for r in responses}) == 1
    assert conditional.status_code == 304  # conditional requests still get their 304
