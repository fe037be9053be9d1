"""The CDN contract, with a real nginx (``proxy_cache``) in front of the app under uvicorn,
both on loopback: covers are cached and revalidated with ETag/304, ``Vary: Accept`` keeps
formats apart, new covers and overrides show through the cache once their max-age is
over, a 404 is kept no longer than its short TTL, and immutable URLs stay cached.

Max-ages are a few seconds here, so the tests wait them out. nginx counts freshness in
whole seconds: an entry may be served up to one second past its max-age.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import support.nginx as nginx_support
from sqlalchemy.orm import Session, sessionmaker
from support.cos_server import CosServer
from support.images import blurred, encode, scene
from support.nginx import Hit, Nginx
from support.servers import ThreadedServer, free_port

from coverservice import db
from coverservice.app import create_app
from coverservice.fetch import Fetcher
from coverservice.settings import Settings
from coverservice.storage import FileStorage
from coverservice.worker import Worker

COVER_MAX_AGE = 3
MISSING_MAX_AGE = 1
TOKEN = "cdn-admin-0123456789abcdef"
WEBP = {"accept": "image/webp,*/*"}
JPEG = {"accept": "*/*"}
AVIF = {"accept": "image/avif,image/webp,*/*"}


def past(max_age: int) -> None:
    """Sleep until an entry cached now with ``max_age`` has expired in nginx's clock."""
    time.sleep(max_age + 1.1)


@dataclass
class Rig:
    cdn: httpx.Client  # through nginx
    origin: httpx.Client  # straight to the app
    nginx: Nginx
    cos: CosServer
    worker: Worker

    def screenshot(self, stream: str, name: str, data: bytes) -> None:
        path = f"/{stream}/{name}.jpg"
        self.cos.put(path, data)
        r = self.origin.post("/callbacks/css", json={
            "event_type": 200, "stream_id": stream, "channel_id": stream, "create_time": int(time.time()) - 1,
            "file_size": len(data), "width": 1280, "height": 720, "pic_url": path, "pic_full_url": self.cos.url(path),
        })
        assert r.status_code == 200
        self.worker.drain()

    def version(self, stream: str) -> int:
        """The stream's cover version, asked of the origin."""
        r = self.origin.get(f"/api/covers/{stream}")
        assert r.status_code == 200, r.text
        version: int = r.json()["cover"]["version"]
        return version

    def upstream_requests(self, uri: str) -> list[Hit]:
        return [h for h in self.nginx.hits() if h.uri == uri and h.upstream != "-"]


@pytest.fixture
def rig(sqlite_url: str, tmp_path: Path) -> Iterator[Rig]:
    # The cache contract does not depend on the database: SQLite only.
    settings = Settings(
        database_url=sqlite_url,
        admin_tokens=(f"cdn:{TOKEN}",),
        fetch_allowed_hosts=("127.0.0.1:*",),
        fetch_allow_private=True,
        cover_max_age=COVER_MAX_AGE,
        missing_max_age=MISSING_MAX_AGE,
        cover_cache_ttl=0.0,
        cover_min_interval=0.0,
    )
    engine = db.make_engine(sqlite_url)
    sessions: sessionmaker[Session] = db.make_session_factory(engine)
    storage = FileStorage(tmp_path / "storage")
    with (
        CosServer() as cos,
        Fetcher.from_settings(settings) as fetcher,
        ThreadedServer(create_app(settings, engine=engine, storage=storage, fetch=fetcher.fetch)) as app,
        Nginx(app.port, tmp_path / "nginx") as nginx,
        httpx.Client(base_url=nginx.base_url, timeout=30) as cdn,
        httpx.Client(base_url=app.base_url, timeout=30, headers={"authorization": f"Bearer {TOKEN}"}) as origin,
    ):
        worker = Worker(settings, session_factory=sessions, storage=storage, fetch=fetcher.fetch, name="w")
        yield Rig(cdn, origin, nginx, cos, worker)
    engine.dispose()


def test_covers_are_cached_then_revalidated_with_etag(rig: Rig) -> None:
    rig.screenshot("room", "1", encode(scene(1280, 720, seed=1)))
    first = rig.cdn.get("/cover/room", headers=WEBP)
    assert (first.status_code, first.headers["x-cache-status"]) == (200, "MISS")
    assert first.headers["cache-control"] == f"public, max-age={COVER_MAX_AGE}"
    second = rig.cdn.get("/cover/room", headers=WEBP)
    assert second.headers["x-cache-status"] == "HIT"
    assert second.content == first.content and second.headers["etag"] == first.headers["etag"]
    # a browser revalidating its own copy is answered by the cache
    mine = rig.cdn.get("/cover/room", headers={**WEBP, "if-none-match": first.headers["etag"]})
    assert (mine.status_code, mine.headers["x-cache-status"]) == (304, "HIT")
    assert len(rig.upstream_requests("/cover/room")) == 1

    past(COVER_MAX_AGE)
    # expired: nginx asks the origin with the ETag; the cover has not changed, so a 304
    later = rig.cdn.get("/cover/room", headers=WEBP)
    assert (later.status_code, later.headers["x-cache-status"]) == (200, "REVALIDATED")
    assert later.content == first.content
    assert rig.upstream_requests("/cover/room")[-1].upstream == "304"
    assert rig.cdn.get("/cover/room", headers=WEBP).headers["x-cache-status"] == "HIT"


def test_vary_accept_keeps_formats_apart(rig: Rig) -> None:
    rig.screenshot("room", "1", encode(scene(1280, 720, seed=2)))
    expected = {"webp": "image/webp", "jpeg": "image/jpeg", "avif": "image/avif"}
    bodies: dict[str, bytes] = {}
    for name, accept in (("webp", WEBP), ("jpeg", JPEG), ("avif", AVIF)):
        r = rig.cdn.get("/cover/room", headers=accept)
        assert (r.headers["content-type"], r.headers["x-cache-status"]) == (expected[name], "MISS")
        assert r.headers["vary"] == "Accept"
        bodies[name] = r.content
    for name, accept in (("jpeg", JPEG), ("avif", AVIF), ("webp", WEBP)):
        r = rig.cdn.get("/cover/room", headers=accept)
        assert (r.headers["content-type"], r.headers["x-cache-status"]) == (expected[name], "HIT")
        assert r.content == bodies[name]
    assert len(rig.upstream_requests("/cover/room")) == 3


def test_a_new_cover_and_an_override_show_through_the_cache_within_max_age(rig: Rig) -> None:
    base = scene(1280, 720, seed=3)
    rig.screenshot("room", "soft", encode(blurred(base, 3)))
    soft = rig.version("room")
    assert rig.cdn.get("/cover/room", headers=WEBP).headers["x-cover-version"] == str(soft)
    batch = "/api/covers?ids=room"
    assert rig.cdn.get(batch).json()["covers"][0]["cover"]["version"] == soft

    # a sharper screenshot: a new automatic cover
    rig.screenshot("room", "sharp", encode(base))
    sharp = rig.version("room")
    assert sharp != soft
    cached = rig.cdn.get("/cover/room", headers=WEBP)
    assert (cached.headers["x-cache-status"], cached.headers["x-cover-version"]) == ("HIT", str(soft))
    past(COVER_MAX_AGE)
    fresh = rig.cdn.get("/cover/room", headers=WEBP)
    assert fresh.headers["x-cover-version"] == str(sharp) and fresh.headers["x-cache-status"] == "EXPIRED"
    assert rig.cdn.get(batch).json()["covers"][0]["cover"]["version"] == sharp

    # an admin's upload
    upload = rig.origin.put("/admin/covers/room", content=encode(scene(1280, 720, seed=4)))
    assert upload.status_code == 200
    override = upload.json()["cover"]["version"]
    assert rig.cdn.get("/cover/room", headers=WEBP).headers["x-cover-version"] == str(sharp)
    past(COVER_MAX_AGE)
    assert rig.cdn.get("/cover/room", headers=WEBP).headers["x-cover-version"] == str(override)
    assert rig.cdn.get(batch).json()["covers"][0]["cover"]["version"] == override


def test_a_missing_cover_is_cached_only_for_its_short_ttl(rig: Rig) -> None:
    for path in ("/cover/late", "/api/covers/late"):
        first = rig.cdn.get(path, headers=WEBP)
        assert (first.status_code, first.headers["x-cache-status"]) == (404, "MISS")
        assert first.headers["cache-control"] == f"public, max-age={MISSING_MAX_AGE}"
        # cached (a burst of requests for a room without a cover does not reach the origin)...
        assert rig.cdn.get(path, headers=WEBP).headers["x-cache-status"] == "HIT"
    rig.screenshot("late", "1", encode(scene(1280, 720, seed=5)))
    # ...but only for the 404's TTL, well before a cover's max-age would be over
    past(MISSING_MAX_AGE)
    for path in ("/cover/late", "/api/covers/late"):
        r = rig.cdn.get(path, headers=WEBP)
        assert (r.status_code, r.headers["x-cache-status"]) == (200, "EXPIRED"), path


def test_immutable_urls_stay_cached(rig: Rig) -> None:
    rig.screenshot("room", "1", encode(scene(1280, 720, seed=6)))
    url = rig.origin.get("/api/covers/room").json()["cover"]["images"]["small"]["jpeg"]["url"]
    first = rig.cdn.get(url)
    assert (first.status_code, first.headers["x-cache-status"]) == (200, "MISS")
    assert first.headers["cache-control"] == "public, max-age=31536000, immutable"
    past(COVER_MAX_AGE)
    # long after a cover's max-age: still served from the cache, the origin not asked again
    later = rig.cdn.get(url)
    assert (later.headers["x-cache-status"], later.content) == ("HIT", first.content)
    assert len(rig.upstream_requests(url)) == 1


def test_a_missing_nginx_fails_with_the_command_that_installs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nginx_support, "NGINX", str(tmp_path / "no-nginx"))
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install nginx"):
        Nginx(free_port(), tmp_path / "cdn").__enter__()
