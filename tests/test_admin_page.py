"""The admin page in a real browser: `coverservice serve` as a process on a loopback port,
screenshots from a COS stand-in, Debian's Chromium driven by Playwright, and the public
cover read back over HTTP to see every admin action take effect."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import FilePayload, Locator, Page, expect
from support.cos_server import CosServer
from support.images import blurred, encode, scene
from support.polling import eventually
from support.servers import ServiceProcess

from coverservice.callbacks import sign

pytest_plugins = ["support.browser"]  # the browser and page fixtures
TOKEN = "s3cret-admin-token-for-tests"  # the service wants at least 16 characters
KEY = "admin-page-callback-key"
STREAM = "room-7"
T = TypeVar("T")


@pytest.fixture
def cos() -> Iterator[CosServer]:
    with CosServer() as server:
        yield server


def serve(sqlite_url: str, tmp_path: Path, **extra: str) -> ServiceProcess:
    env = {
        "COVERSERVICE_DATABASE_URL": sqlite_url,
        "COVERSERVICE_STORAGE_URL": (tmp_path / "covers").as_uri(),
        "COVERSERVICE_CALLBACK_KEYS": KEY,
        "COVERSERVICE_FETCH_ALLOWED_HOSTS": "127.0.0.1:*",
        "COVERSERVICE_FETCH_ALLOW_PRIVATE": "true",
        "COVERSERVICE_WORKER_POLL_INTERVAL": "0.05",
        "COVERSERVICE_COVER_CACHE_TTL": "0.2",
        "COVERSERVICE_COVER_MIN_INTERVAL": "0",
        **extra,
    }
    return ServiceProcess.serve(env, log_path=tmp_path / "serve.log")


@pytest.fixture
def service(sqlite_url: str, tmp_path: Path) -> Iterator[ServiceProcess]:
    with serve(sqlite_url, tmp_path, COVERSERVICE_ADMIN_TOKENS=f"alice:{TOKEN}") as proc:
        yield proc


def screenshot_callback(cos: CosServer, path: str, captured: int) -> dict[str, Any]:
    t = int(time.time()) + 600
    return {
        "event_type": 200, "stream_id": STREAM, "channel_id": STREAM, "create_time": captured,
        "file_size": 1000, "width": 1280, "height": 720, "pic_url": path,
        "pic_full_url": cos.url(path), "t": t, "sign": sign(KEY, t),
    }


def admin_get(service: ServiceProcess, path: str) -> Any:
    response = httpx.get(f"{service.base_url}{path}", headers={"authorization": f"Bearer {TOKEN}"})
    response.raise_for_status()
    return response.json()


def public_cover(service: ServiceProcess) -> httpx.Response:
    return httpx.get(f"{service.base_url}/cover/{STREAM}", params={"size": "large", "format": "jpeg"})


def cover_after(service: ServiceProcess, version: int) -> httpx.Response:
    """The public cover, once a version newer than ``version`` is served."""

    def newer() -> httpx.Response | None:
        r = public_cover(service)
        return r if r.status_code == 200 and int(r.headers["x-cover-version"]) > version else None

    response: httpx.Response = eventually(newer, timeout=15)
    return response


def card(page: Page, frame_id: int) -> Locator:
    return page.locator(f'[data-testid="frame-card"][data-frame-id="{frame_id}"]')


def upload_image() -> bytes:
    img = scene(1280, 720, seed=77)
    ImageDraw.Draw(img).rectangle((440, 200, 840, 520), fill=(220, 20, 20))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def test_admin_pins_blocks_uploads_and_releases_from_the_page(
    service: ServiceProcess, cos: CosServer, page: Page, tmp_path: Path
) -> None:
    base = scene(1280, 720, seed=21)
    shots = {
        "/room-7/sharp.jpg": encode(base),
        "/room-7/soft.jpg": encode(blurred(base, 3)),
        "/room-7/black.jpg": encode(Image.new("RGB", (1280, 720))),
    }
    now = int(time.time())
    for i, (path, data) in enumerate(shots.items()):
        cos.put(path, data)
        body = screenshot_callback(cos, path, captured=now - 30 + 10 * i)
        assert httpx.post(f"{service.base_url}/callbacks/css", json=body).json() == {"code": 0}

    def settled() -> dict[str, Any] | None:
        frames = admin_get(service, f"/admin/streams/{STREAM}/frames")["frames"]
        done = all(f["status"] not in ("pending", "processing") for f in frames)
        return {f["image_url"]: f for f in frames} if len(frames) == 3 and done else None

    frames = eventually(settled)
    sharp, soft, black = (frames[cos.url(path)] for path in shots)
    assert sharp["is_cover"] and soft["status"] == "scored" and black["status"] == "rejected"
    first = eventually(lambda: (r := public_cover(service)).status_code == 200 and r or None)
    first_version = int(first.headers["x-cover-version"])

    # The page itself is public and holds no data.
    shell = httpx.get(f"{service.base_url}/admin")
    assert shell.status_code == 200 and shell.headers["content-type"].startswith("text/html")
    assert STREAM not in shell.text

    # A wrong token: an error, no data, nothing kept.
    page.goto(f"{service.base_url}/admin")
    page.get_by_test_id("token").fill("not-the-token")
    page.get_by_test_id("login").click()
    expect(page.get_by_test_id("error")).to_contain_text("not accepted")
    expect(page.get_by_test_id("streams-view")).to_be_hidden()
    expect(page.get_by_test_id("stream-row")).to_have_count(0)
    assert page.evaluate("sessionStorage.length") == 0

    # The right token: the stream with its cover, score and source.
    page.get_by_test_id("token").fill(TOKEN)
    page.get_by_test_id("login").click()
    expect(page.get_by_test_id("error")).to_be_hidden()
    row = page.locator(f'[data-testid="stream-row"][data-stream-id="{STREAM}"]')
    expect(row).to_be_visible()
    expect(row.get_by_test_id("stream-source")).to_have_text("auto")
    expect(row.get_by_test_id("stream-score")).to_have_text(f"{sharp['score']:.3f}")
    thumb = row.get_by_test_id("stream-cover")
    expect(thumb).to_have_attribute("src", f"/cover/{STREAM}?size=small&format=jpeg&v={first_version}")
    thumb.evaluate("img => img.decode()")  # rejects unless the cover image loaded
    assert TOKEN not in page.url
    assert page.evaluate("Object.values(sessionStorage)") == [TOKEN]

    # The stream's frames with status, reason, score and metrics; thumbnails through the API.
    row.click()
    expect(page.get_by_test_id("frames")).to_be_visible()
    expect(page.get_by_test_id("frame-card")).to_have_count(3)
    expect(card(page, sharp["id"]).get_by_test_id("frame-is-cover")).to_be_visible()
    expect(card(page, sharp["id"]).get_by_test_id("frame-score")).to_have_text(f"score {sharp['score']:.3f}")
    expect(card(page, sharp["id"]).get_by_test_id("frame-reason")).to_have_text(sharp["reason"])
    expect(card(page, sharp["id"]).get_by_test_id("frame-metrics")).to_contain_text("sharpness")
    # What selection made of each frame.
    expect(card(page, sharp["id"]).get_by_test_id("frame-selection")).to_have_text(sharp["selection"])
    expect(card(page, sharp["id"]).get_by_test_id("frame-selection")).to_contain_text("became the cover")
    expect(card(page, soft["id"]).get_by_test_id("frame-is-cover")).to_have_count(0)
    expect(card(page, black["id"]).get_by_test_id("frame-status")).to_have_text("rejected")
    expect(card(page, black["id"]).get_by_test_id("frame-reason")).to_contain_text("black frame")
    for frame in (sharp, soft):
        frame_thumb = card(page, frame["id"]).get_by_test_id("frame-thumb")
        expect(frame_thumb).to_have_attribute("src", re.compile(r"^blob:"))
        frame_thumb.evaluate("img => img.decode()")

    # Pin the frame that is not the cover: the public cover changes.
    card(page, soft["id"]).get_by_test_id("pin").click()
    expect(page.get_by_test_id("notice")).to_contain_text(f"Frame {soft['id']} pinned")
    pinned = cover_after(service, first_version)
    assert pinned.content != first.content
    meta = httpx.get(f"{service.base_url}/api/covers/{STREAM}").json()["cover"]
    assert (meta["source"], meta["frame_id"]) == ("override", soft["id"])
    expect(card(page, soft["id"]).get_by_test_id("frame-is-cover")).to_be_visible()
    expect(page.get_by_test_id("cover-source")).to_have_text(f"override: pinned frame {soft['id']}")
    page.screenshot(path=tmp_path / "admin-page.png", full_page=True)

    # Block the old cover's frame; release the override: automatic again, never the blocked frame.
    card(page, sharp["id"]).get_by_test_id("block").click()
    expect(card(page, sharp["id"]).get_by_test_id("frame-blocked")).to_be_visible()
    expect(card(page, sharp["id"]).get_by_test_id("unblock")).to_be_visible()
    expect(card(page, sharp["id"]).get_by_test_id("pin")).to_be_disabled()
    blocked = {f["id"]: f["blocked"] for f in admin_get(service, f"/admin/streams/{STREAM}/frames")["frames"]}
    assert blocked == {sharp["id"]: True, soft["id"]: False, black["id"]: False}
    page.get_by_test_id("release").click()
    expect(page.get_by_test_id("notice")).to_contain_text("Override released")
    expect(page.get_by_test_id("release")).to_be_disabled()

    def automatic() -> dict[str, Any] | None:
        cover = httpx.get(f"{service.base_url}/api/covers/{STREAM}").json()["cover"]
        return cover if cover and cover["source"] == "auto" else None

    # A worker chooses the new automatic cover; the page follows by itself.
    assert eventually(automatic)["frame_id"] == soft["id"]  # the best frame not blocked
    expect(page.get_by_test_id("cover-source")).to_have_text("auto")

    # Upload an image: it becomes the cover.
    before = int(public_cover(service).headers["x-cover-version"])
    page.get_by_test_id("upload-file").set_input_files(
        files=FilePayload(name="cover.png", mimeType="image/png", buffer=upload_image())
    )
    page.get_by_test_id("upload").click()
    expect(page.get_by_test_id("notice")).to_contain_text("cover.png uploaded")
    uploaded = cover_after(service, before)
    centre = Image.open(io.BytesIO(uploaded.content)).convert("RGB").getpixel((640, 360))
    assert isinstance(centre, tuple) and centre[0] > 180 and max(centre[1:]) < 70  # the red square
    expect(page.get_by_test_id("cover-source")).to_have_text("override: uploaded image")

    # A reload keeps the session (tab storage); logging out forgets the token.
    page.reload()
    expect(page.get_by_test_id("frames")).to_be_visible()
    expect(page.get_by_test_id("frame-card")).to_have_count(3)
    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("login-form")).to_be_visible()
    expect(page.get_by_test_id("frame-card")).to_have_count(0)
    assert page.evaluate("sessionStorage.length") == 0


def test_admin_disabled_is_explained_on_the_page(sqlite_url: str, tmp_path: Path, page: Page) -> None:
    with serve(sqlite_url, tmp_path) as service:
        page.goto(f"{service.base_url}/admin")
        page.get_by_test_id("token").fill(TOKEN)
        page.get_by_test_id("login").click()
        expect(page.get_by_test_id("error")).to_contain_text("refused")
        expect(page.get_by_test_id("login-form")).to_be_visible()
        assert page.evaluate("sessionStorage.length") == 0
