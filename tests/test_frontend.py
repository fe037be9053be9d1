"""What a frontend uses: batch metadata for a page of rooms, immutable content-addressed
image URLs, placeholders, CORS and AVIF rendered on first request. The app under uvicorn
on a loopback port, on SQLite and Postgres; covers made by the admin upload and by a
worker from a COS stand-in's screenshot."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import blurhash  # type: ignore[import-untyped]
import httpx
import pytest
from PIL import Image
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from support.cos_server import CosServer
from support.images import encode, scene
from support.servers import ThreadedServer
from test_app import count_queries

from coverservice.app import create_app
from coverservice.covers import MAX_BATCH
from coverservice.fetch import Fetcher
from coverservice.models import Rendition
from coverservice.settings import ConfigurationError, Settings, load_settings
from coverservice.storage import FileStorage
from coverservice.worker import Worker

TOKEN = "front-0123456789abcdef"
AUTH = {"authorization": f"Bearer {TOKEN}"}
ORIGIN = "https://rooms.example"


class CountingStorage(FileStorage):
    """The real directory store, counting the AVIF objects written to it."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.avif_puts = 0
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes, *, content_type: str) -> None:
        if key.endswith(".avif"):
            with self._lock:
                self.avif_puts += 1
        super().put(key, data, content_type=content_type)


def painted(colour: tuple[int, int, int], accent: tuple[int, int, int]) -> bytes:
    """A detailed 1280×720 scene (one the scorer accepts) under a strong ``colour`` cast,
    with a smaller ``accent`` block."""
    im = Image.blend(scene(1280, 720, seed=5), Image.new("RGB", (1280, 720), colour), 0.75)
    im.paste(Image.new("RGB", (300, 200), accent), (100, 100))
    return encode(im, "JPEG")


@pytest.fixture
def placeholder(tmp_path: Path) -> Path:
    path = tmp_path / "placeholder.png"
    path.write_bytes(encode(scene(64, 36, seed=3), "PNG"))
    return path


@pytest.fixture
def serve(
    make_settings: Callable[..., Settings], engine: Engine, tmp_path: Path, placeholder: Path
) -> Iterator[Callable[..., tuple[httpx.Client, CountingStorage]]]:
    """Start the app (on the test's database and a storage directory) with settings
    overrides; every app started is stopped at the end."""
    stack: list[Callable[[], None]] = []

    def start(storage: CountingStorage | None = None, **overrides: Any) -> tuple[httpx.Client, CountingStorage]:
        values: dict[str, Any] = {
            "admin_tokens": (f"front:{TOKEN}",),
            "cover_cache_ttl": 0.0,
            "placeholder_path": placeholder,
            "cover_max_age": 30,
            "missing_max_age": 5,
            "immutable_max_age": 1234567,
        }
        settings = make_settings(**{**values, **overrides})
        storage = storage or CountingStorage(tmp_path / "storage")
        app = create_app(settings, engine=engine, storage=storage)
        server = ThreadedServer(app).__enter__()
        http = httpx.Client(base_url=server.base_url, timeout=30)
        stack.extend([http.close, lambda: server.__exit__(None, None, None)])
        return http, storage

    yield start
    for close in reversed(stack):
        close()


def upload(http: httpx.Client, stream: str, data: bytes) -> dict[str, Any]:
    r = http.put(f"/admin/covers/{stream}", content=data, headers=AUTH)
    assert r.status_code == 200, r.text
    cover: dict[str, Any] = r.json()["cover"]
    return cover


def worker_cover(
    http: httpx.Client, settings: Settings, sessions: sessionmaker[Session], storage: FileStorage, stream: str
) -> None:
    with CosServer() as cos, Fetcher.from_settings(settings) as fetcher:
        cos.put(f"/{stream}/1.jpg", painted((30, 40, 200), (250, 250, 250)))
        r = http.post("/callbacks/css", json={
            "event_type": 200, "stream_id": stream, "channel_id": stream, "create_time": int(time.time()) - 1,
            "file_size": 1, "width": 1280, "height": 720, "pic_url": f"/{stream}/1.jpg",
            "pic_full_url": cos.url(f"/{stream}/1.jpg"),
        })
        assert r.status_code == 200
        Worker(settings, session_factory=sessions, storage=storage, fetch=fetcher.fetch, name="w").drain()


def hex_rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def mean_rgb(hash_: str) -> tuple[float, float, float]:
    pixels = [p for row in blurhash.decode(hash_, 16, 9) for p in row]
    r, g, b = (sum(p[i] for p in pixels) / len(pixels) for i in range(3))
    return r, g, b


# --- batch metadata ---------------------------------------------------------------------------


def test_a_page_of_rooms_in_one_request(
    serve: Callable[..., tuple[httpx.Client, CountingStorage]],
    make_settings: Callable[..., Settings],
    sessions: sessionmaker[Session],
    engine: Engine,
    placeholder: Path,
) -> None:
    http, storage = serve()
    upload(http, "red-room", painted((210, 30, 30), (20, 200, 40)))
    worker_cover(http, make_settings(), sessions, storage, "blue-room")

    statements = count_queries(engine)
    r = http.get("/api/covers", params={"ids": "blue-room,ghost,red-room,blue-room"})
    assert r.status_code == 200
    # three statements (streams, covers, renditions), however many ids
    assert len(statements) <= 4, statements
    # a stream without a cover makes the whole answer as short-lived as a 404
    assert r.headers["cache-control"] == "public, max-age=5"
    entries = r.json()["covers"]
    assert [e["stream_id"] for e in entries] == ["blue-room", "ghost", "red-room"]  # asked order, once each

    blue, ghost, red = entries
    assert ghost["cover"] is None and ghost["live"] is None
    # the placeholder image, at an immutable URL named by its bytes
    assert ghost["placeholder_url"] == f"/r/{hashlib.sha256(placeholder.read_bytes()).hexdigest()}.png"
    shown = http.get(ghost["placeholder_url"])
    assert shown.status_code == 200 and shown.content == placeholder.read_bytes()
    assert shown.headers["content-type"] == "image/png"
    assert shown.headers["cache-control"] == "public, max-age=1234567, immutable"

    for entry, expected in ((red, "red"), (blue, "blue")):
        cover = entry["cover"]
        # an uploaded cover says nothing about the push; a screenshot is proof of life
        assert entry["placeholder_url"] is None and entry["live"] is (expected == "blue")
        assert cover["source"] == ("override" if expected == "red" else "auto")
        assert cover["version"] > 0 and cover["created_at"]
        # the dominant colour, and a BlurHash that decodes to the same cast
        r_, g, b = hex_rgb(cover["placeholder"]["color"])
        mean = mean_rgb(cover["placeholder"]["blurhash"])
        if expected == "red":
            assert r_ > 150 and g < 80 and b < 80, cover["placeholder"]
            assert mean[0] > mean[1] + 60 and mean[0] > mean[2] + 60, mean
        else:
            assert b > 150 and r_ < 80 and g < 80, cover["placeholder"]
            assert mean[2] > mean[0] + 60 and mean[2] > mean[1] + 60, mean
        # every size in both eager formats, each an immutable URL named by its bytes
        assert {size: set(formats) for size, formats in cover["images"].items()} == {
            size: {"jpeg", "webp"} for size in ("large", "medium", "small")
        }
        for size, formats in cover["images"].items():
            for fmt, image in formats.items():
                got = http.get(image["url"])
                digest = hashlib.sha256(got.content).hexdigest()
                assert got.status_code == 200 and image["url"] == f"/r/{digest}.{fmt}"
                assert got.headers["etag"] == f'"{digest[:32]}"'
                assert got.headers["cache-control"] == "public, max-age=1234567, immutable"
                assert got.headers["content-type"] == f"image/{fmt}"
                assert len(got.content) == image["bytes"]
                assert Image.open(io.BytesIO(got.content)).size == (image["width"], image["height"])
                # the same bytes the stream's URL serves now
                by_stream = http.get(cover["urls"][size][fmt])
                assert by_stream.content == got.content and by_stream.headers["etag"] == got.headers["etag"]

        # the single-stream endpoint answers with the same entry
        alone = http.get(f"/api/covers/{entry['stream_id']}")
        assert alone.status_code == 200 and alone.json() == entry
        assert alone.headers["cache-control"] == "public, max-age=30"

    assert http.get("/api/covers/ghost").json() == ghost
    only_covered = http.get("/api/covers", params={"ids": "red-room,blue-room"})
    assert only_covered.headers["cache-control"] == "public, max-age=30"


def test_a_new_cover_is_a_new_url_and_the_old_one_keeps_its_bytes(
    serve: Callable[..., tuple[httpx.Client, CountingStorage]],
) -> None:
    http, _ = serve()
    first = upload(http, "room", painted((210, 30, 30), (20, 200, 40)))["images"]["small"]["jpeg"]
    old = http.get(first["url"]).content
    second = upload(http, "room", painted((20, 200, 40), (210, 30, 30)))["images"]["small"]["jpeg"]
    assert second["url"] != first["url"]
    assert http.get(first["url"]).content == old
    assert http.get("/api/covers", params={"ids": "room"}).json()["covers"][0]["cover"]["images"]["small"]["jpeg"] == second


def test_a_blocked_frames_images_leave_their_immutable_urls_at_once(
    serve: Callable[..., tuple[httpx.Client, CountingStorage]],
    make_settings: Callable[..., Settings],
    sessions: sessionmaker[Session],
) -> None:
    # An hour of in-process caching: only the block itself can take the images away.
    http, storage = serve(cover_cache_ttl=3600.0)
    worker_cover(http, make_settings(), sessions, storage, "room")
    cover = http.get("/api/covers/room").json()["cover"]
    urls = [image["url"] for formats in cover["images"].values() for image in formats.values()]
    etags = {url: http.get(url).headers["etag"] for url in urls}
    assert http.post(f"/admin/frames/{cover['frame_id']}/block", headers=AUTH).status_code == 200
    for url in urls:
        assert http.get(url).status_code == 404, url
        # a CDN revalidating its copy must lose it, not be told it is still good
        assert http.get(url, headers={"if-none-match": etags[url]}).status_code == 404, url
    assert http.post(f"/admin/frames/{cover['frame_id']}/unblock", headers=AUTH).status_code == 200
    assert all(http.get(url).status_code == 200 for url in urls)


def test_batch_requests_are_bounded_and_checked(serve: Callable[..., tuple[httpx.Client, CountingStorage]]) -> None:
    http, _ = serve()
    for params, error, words in (
        ({}, "invalid_ids", "one or more"),
        ({"ids": " , ,"}, "invalid_ids", "one or more"),
        ({"ids": ",".join(f"room-{i}" for i in range(MAX_BATCH + 1))}, "too_many_ids", f"at most {MAX_BATCH}"),
        ({"ids": "fine,not a stream!"}, "invalid_ids", "'not a stream!' is not a stream id"),
    ):
        r = http.get("/api/covers", params=params)
        assert r.status_code == 400, params
        assert r.json()["error"] == error and words in r.json()["message"], r.json()
    full = http.get("/api/covers", params={"ids": ",".join(f"room-{i}" for i in range(MAX_BATCH))})
    assert full.status_code == 200
    assert [e["stream_id"] for e in full.json()["covers"]] == [f"room-{i}" for i in range(MAX_BATCH)]
    assert all(e["cover"] is None for e in full.json()["covers"])


def test_immutable_urls_revalidate_and_refuse_what_is_not_there(
    serve: Callable[..., tuple[httpx.Client, CountingStorage]],
) -> None:
    http, _ = serve()
    image = upload(http, "room", painted((210, 30, 30), (20, 200, 40)))["images"]["medium"]["webp"]
    first = http.get(image["url"])
    etag = first.headers["etag"]
    again = http.get(image["url"], headers={"if-none-match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert again.headers["cache-control"] == "public, max-age=1234567, immutable"
    head = http.head(image["url"])
    assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == etag
    unknown = http.get(f"/r/{'0' * 64}.jpeg")
    assert unknown.status_code == 404 and unknown.headers["cache-control"] == "public, max-age=5"
    # the bytes must be stored under that format: a digest with another extension is not them
    digest = image["url"].removeprefix("/r/").removesuffix(".webp")
    assert http.get(f"/r/{digest}.jpeg").status_code == 404
    for bad in ("/r/xyz.jpeg", f"/r/{digest}.gif", f"/r/{digest.upper()}.webp"):
        assert http.get(bad).status_code == 404, bad


# --- CORS --------------------------------------------------------------------------------------


def test_cors_for_configured_origins_only(serve: Callable[..., tuple[httpx.Client, CountingStorage]]) -> None:
    http, _ = serve(cors_origins=(ORIGIN,))
    image = upload(http, "room", painted((210, 30, 30), (20, 200, 40)))["images"]["small"]["jpeg"]["url"]

    preflight = http.options(
        "/api/covers?ids=room", headers={"origin": ORIGIN, "access-control-request-method": "GET"}
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert set(preflight.headers["access-control-allow-methods"].replace(" ", "").split(",")) == {"GET", "HEAD"}
    assert preflight.headers["access-control-max-age"] == "600"
    # another origin, a method that changes things, or a credential header: refused
    for headers in (
        {"origin": "https://evil.example", "access-control-request-method": "GET"},
        {"origin": ORIGIN, "access-control-request-method": "PUT"},
        {"origin": ORIGIN, "access-control-request-method": "GET", "access-control-request-headers": "authorization"},
    ):
        refused = http.options("/api/covers?ids=room", headers=headers)
        assert refused.status_code == 400, headers
        assert refused.headers.get("access-control-allow-origin") != "https://evil.example"

    simple = http.get(image, headers={"origin": ORIGIN})
    assert simple.status_code == 200 and simple.headers["access-control-allow-origin"] == ORIGIN
    assert {"etag", "x-cover-version"} <= {
        h.strip().lower() for h in simple.headers["access-control-expose-headers"].split(",")
    }
    assert "Origin" in simple.headers["vary"]
    foreign = http.get("/api/covers?ids=room", headers={"origin": "https://evil.example"})
    assert foreign.status_code == 200 and "access-control-allow-origin" not in foreign.headers


@pytest.mark.parametrize("value", ["https://rooms.example/", "rooms.example", "https://rooms.example/app", "null"])
def test_cors_origins_must_be_origins(value: str) -> None:
    with pytest.raises(ConfigurationError, match="COVERSERVICE_CORS_ORIGINS.*is not an origin"):
        load_settings(cors_origins=value)


def test_no_cors_headers_by_default(serve: Callable[..., tuple[httpx.Client, CountingStorage]]) -> None:
    http, _ = serve()
    r = http.get("/api/covers?ids=room", headers={"origin": ORIGIN})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    preflight = http.options("/api/covers?ids=room", headers={"origin": ORIGIN, "access-control-request-method": "GET"})
    assert preflight.status_code == 405 and "access-control-allow-origin" not in preflight.headers


# --- AVIF ----------------------------------------------------------------------------------------


def test_avif_is_rendered_once_on_first_request_then_served_like_the_others(
    serve: Callable[..., tuple[httpx.Client, CountingStorage]], sessions: sessionmaker[Session]
) -> None:
    http, storage = serve()
    cover = upload(http, "room", painted((210, 30, 30), (20, 200, 40)))
    assert storage.avif_puts == 0  # not rendered with the cover
    assert all("avif" not in formats for formats in cover["images"].values())

    browser = {"accept": "image/avif,image/webp,image/apng,*/*;q=0.8"}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: http.get("/cover/room", headers=browser), range(8)))
    assert {a.status_code for a in answers} == {200}
    assert {a.headers["content-type"] for a in answers} == {"image/avif"}
    assert {a.headers["vary"] for a in answers} == {"Accept"}
    assert len({a.content for a in answers}) == 1
    assert storage.avif_puts == 1  # eight concurrent first requests, one render
    avif = answers[0]
    assert Image.open(io.BytesIO(avif.content)).format == "AVIF"
    assert Image.open(io.BytesIO(avif.content)).size == (640, 360)
    assert avif.headers["etag"] == f'"{hashlib.sha256(avif.content).hexdigest()[:32]}"'
    assert avif.headers["cache-control"] == "public, max-age=30"
    assert http.get("/cover/room", headers={**browser, "if-none-match": avif.headers["etag"]}).status_code == 304

    with sessions() as s:
        recorded = s.scalars(select(Rendition).where(Rendition.cover_id == cover["version"], Rendition.format == "avif")).all()
    assert [(r.size, r.content_type) for r in recorded] == [("medium", "image/avif")]

    # recorded: the metadata lists it at an immutable URL, and a new process does not render it again
    image = http.get("/api/covers/room").json()["cover"]["images"]["medium"]["avif"]
    assert http.get(image["url"]).content == avif.content
    other, _ = serve(storage=storage)
    assert other.get("/cover/room", headers=browser).content == avif.content
    assert storage.avif_puts == 1

    # asked for by name: no Vary; another size is rendered on its first request
    named = http.get("/cover/room", params={"size": "small", "format": "avif"})
    assert named.status_code == 200 and named.headers["content-type"] == "image/avif" and "vary" not in named.headers
    assert Image.open(io.BytesIO(named.content)).size == (320, 180)
    assert storage.avif_puts == 2

    # clients that do not name AVIF keep getting WebP or JPEG, as before
    webp = http.get("/cover/room", headers={"accept": "image/webp,*/*"})
    assert webp.headers["content-type"] == "image/webp" and webp.headers["vary"] == "Accept"
    jpeg = http.get("/cover/room", headers={"accept": "*/*"})
    assert jpeg.headers["content-type"] == "image/jpeg"
    refused = http.get("/cover/room", headers={"accept": "image/avif;q=0,image/webp"})
    assert refused.headers["content-type"] == "image/webp"
    assert http.get("/cover/ghost", params={"format": "avif"}).status_code == 404
