"""`coverservice demo` as a user runs it: the real command in a subprocess, starting its
own service or pointed at a running `coverservice serve`, with a short configuration."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Page
from support.servers import ServiceProcess, free_port

from coverservice import demo

pytest_plugins = ["support.browser"]  # the browser and page fixtures

KEY = "demo-test-callback-key"
ADMIN = "demo-test-admin-token-0123456789"
SHORT = ["--frames", "4", "--interval", "0.1", "--timeout", "60"]


def run_demo(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERSERVICE_")}
    return subprocess.run(
        [sys.executable, "-m", "coverservice", "demo", *args],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )


@dataclass
class Figure:
    stream: str
    classes: list[str]
    attrs: dict[str, str]
    images: list[str] = field(default_factory=list)


class _Sheet(HTMLParser):
    """The contact sheet's frame cards, by room."""

    def __init__(self) -> None:
        super().__init__()
        self.stream: str | None = None
        self.figures: list[Figure] = []
        self.cover_images: list[str] = []
        self._figure: Figure | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "div" and "data-stream" in a:
            self.stream = a["data-stream"]
        elif tag == "figure":
            assert self.stream is not None, "a frame outside any room"
            self._figure = Figure(self.stream, a["class"].split(), a)
            self.figures.append(self._figure)
        elif tag == "img" and self._figure is not None:
            self._figure.images.append(a["src"])
        elif tag == "img" and "coverimg" in a.get("class", ""):
            self.cover_images.append(a["src"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._figure = None


def read_sheet(path: Path) -> _Sheet:
    sheet = _Sheet()
    sheet.feed(path.read_text(encoding="utf-8"))
    return sheet


def check_summary(summary: dict[str, Any], rooms: int, frames: int, directory: Path) -> None:
    """What every successful run shows: each room's cover made from a frame the demo left
    clean, every frame processed, and a contact sheet listing them all."""
    assert summary["ok"] is True and summary["problems"] == []
    assert len(summary["rooms"]) == rooms
    for room in summary["rooms"]:
        assert len(room["frames"]) == frames
        labels = [f["label"] for f in room["frames"]]
        index = summary["rooms"].index(room)
        assert labels == demo.ROOMS[index].plan(index, frames)
        assert any(f["degraded"] for f in room["frames"]) and not all(f["degraded"] for f in room["frames"])
        for f in room["frames"]:
            assert f["status"] in {"scored", "rejected"}, f
            assert (directory / f["file"]).is_file()
            if f["label"] == "black":
                assert f["status"] == "rejected" and "black" in f["reason"]
        chosen = room["frames"][room["chosen"]]
        assert chosen["is_cover"] and chosen["status"] == "scored"
        assert not chosen["degraded"] and chosen["label"] == "clean"
        assert [f["index"] for f in room["frames"] if f["is_cover"]] == [room["chosen"]]
        cover = room["cover"]
        assert cover["frame_id"] == chosen["frame_id"] and cover["score"] == pytest.approx(chosen["score"])
        # The clean frame's score beats every degraded frame's: the pick is the scorer's.
        assert all(chosen["score"] > (f["score"] or 0) for f in room["frames"] if f["degraded"])
        if demo.ROOMS[index].live_for:
            # Past its first minute: the clean frames came within the interval of the soft
            # cover, were held back, and one became the cover when the interval ended.
            assert room["frames"][1]["selection"] == "became the cover: first usable frame"
            assert "with no new frame" in chosen["selection"], chosen["selection"]
        with Image.open(directory / room["cover_file"]) as im:
            assert im.format == "JPEG" and im.size[0] > 0

    sheet_path = Path(summary["contact_sheet"])
    assert sheet_path == directory / "contact-sheet.html"
    sheet = read_sheet(sheet_path)
    for room in summary["rooms"]:
        cards = [f for f in sheet.figures if f.stream == room["stream_id"]]
        assert [int(c.attrs["data-index"]) for c in cards] == list(range(frames))
        assert [c.attrs["data-label"] for c in cards] == [f["label"] for f in room["frames"]]
        assert [c.attrs["data-status"] for c in cards] == [f["status"] for f in room["frames"]]
        marked = [int(c.attrs["data-index"]) for c in cards if "cover" in c.classes]
        assert marked == [room["chosen"]]
        for card in cards:
            assert card.images and all((directory / src).is_file() for src in card.images)
    assert len(sheet.cover_images) == rooms
    assert all((directory / src).is_file() for src in sheet.cover_images)


@dataclass(frozen=True)
class Run:
    out: subprocess.CompletedProcess[str]
    directory: Path


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One run of the demo with its own service, shared by the tests that read it."""
    directory = tmp_path_factory.mktemp("demo")
    return Run(run_demo("--rooms", "4", *SHORT, "--dir", str(directory), "--json"), directory)


def test_demo_starts_a_service_and_every_room_gets_a_clean_cover(embedded: Run) -> None:
    out, tmp_path = embedded.out, embedded.directory
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["embedded"] is True and summary["directory"] == str(tmp_path)
    check_summary(summary, rooms=4, frames=4, directory=tmp_path)
    sizes = {r["scene"]: (r["width"], r["height"]) for r in summary["rooms"]}
    assert sizes["mobile"] == (720, 1280) and sizes["game"] == (1280, 720)

    # Progress on stderr, a line per tick; the service ran on the embedded default in
    # the output directory and was stopped by its PID.
    assert re.findall(r"tick +(\d+)/4", out.stderr) == ["1", "2", "3", "4"]
    assert (tmp_path / "coverservice.sqlite3").is_file() and (tmp_path / "storage").is_dir()
    pid = int(re.search(r"service up \(pid (\d+)\)", out.stderr).group(1))  # type: ignore[union-attr]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_contact_sheet_opens_from_disk_in_a_browser(embedded: Run, page: Page) -> None:
    assert embedded.out.returncode == 0, embedded.out.stderr
    summary = json.loads(embedded.out.stdout)
    page.goto((embedded.directory / "contact-sheet.html").as_uri())
    for img in page.locator("img").all():
        img.scroll_into_view_if_needed()  # the frames load lazily
    images = page.eval_on_selector_all("img", "els => els.map(e => [e.getAttribute('src'), e.naturalWidth])")
    frames = sum(len(r["frames"]) for r in summary["rooms"])
    assert len(images) == frames + len(summary["rooms"])  # every frame, and each room's cover
    assert all(width > 0 for _, width in images), [src for src, width in images if not width]
    covers = page.locator("figure.cover")
    assert covers.count() == len(summary["rooms"])
    # The chosen frame stands out: outlined in green, badged "cover".
    assert covers.first.evaluate("e => getComputedStyle(e).borderTopColor") == "rgb(26, 143, 58)"
    assert "cover" in covers.first.locator(".badge").all_inner_texts()
    assert page.locator("figure:not(.cover)").first.evaluate("e => getComputedStyle(e).borderTopColor") != "rgb(26, 143, 58)"


def test_demo_prints_each_rooms_cover(tmp_path: Path) -> None:
    out = run_demo("--rooms", "1", "--frames", "2", "--interval", "0", "--dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert re.fullmatch(r"demo-[0-9a-f]{6}-game  \(game stream, 1280×720\)", lines[0])
    assert re.fullmatch(r"  cover: frame #1 \(clean\), frame id \d+, version \d+, score 0\.\d+", lines[1])
    assert re.fullmatch(r"  http://127\.0\.0\.1:\d+/cover/demo-[0-9a-f]{6}-game\?size=medium&format=jpeg", lines[2])
    assert "sharpness" in lines[4] and "exposure" in lines[4]
    assert f"contact sheet: {tmp_path / 'contact-sheet.html'}" in lines


# --- against a running service ---------------------------------------------------------------


def env_for(database_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "COVERSERVICE_DATABASE_URL": database_url,
        "COVERSERVICE_STORAGE_URL": (tmp_path / "covers").as_uri(),
        "COVERSERVICE_CALLBACK_KEYS": KEY,
        "COVERSERVICE_ADMIN_TOKENS": f"demo:{ADMIN}",
        "COVERSERVICE_FETCH_ALLOWED_HOSTS": "127.0.0.1:*",
        "COVERSERVICE_FETCH_ALLOW_PRIVATE": "true",
        **extra,
    }


@pytest.fixture
def service(database_url: str, tmp_path: Path) -> Iterator[ServiceProcess]:
    # The service's own defaults otherwise, cover_min_interval (15 s) included.
    with ServiceProcess.serve(env_for(database_url, tmp_path), log_path=tmp_path / "serve.log") as proc:
        yield proc


def test_demo_against_a_running_service(service: ServiceProcess, tmp_path: Path) -> None:
    out_dir = tmp_path / "demo"
    out = run_demo("--url", service.base_url, "--key", KEY, "--admin-token", ADMIN,
                   "--rooms", "2", *SHORT, "--dir", str(out_dir), "--json")
    assert out.returncode == 0, out.stderr + service.log()
    summary = json.loads(out.stdout)
    assert summary["embedded"] is False and summary["service"] == service.base_url
    check_summary(summary, rooms=2, frames=4, directory=out_dir)
    assert not (out_dir / "coverservice.sqlite3").exists()  # no service of its own
    # The service is still up and serves the covers the demo reported.
    assert service.proc is not None and service.proc.poll() is None
    for room in summary["rooms"]:
        live = httpx.get(f"{service.base_url}/api/covers/{room['stream_id']}").json()
        assert live["live"] is True and live["cover"]["frame_id"] == room["cover"]["frame_id"]


def test_demo_explains_a_wrong_key_or_token(sqlite_url: str, tmp_path: Path) -> None:
    with ServiceProcess.serve(env_for(sqlite_url, tmp_path), log_path=tmp_path / "serve.log") as proc:
        base = ["--url", proc.base_url, "--rooms", "1", "--frames", "2", "--dir", str(tmp_path / "d")]
        wrong_key = run_demo(*base, "--key", "wrong", "--admin-token", ADMIN)
        wrong_token = run_demo(*base, "--key", KEY, "--admin-token", "wrong-token-0123456789")
        no_token = run_demo(*base, "--key", KEY)
    assert wrong_key.returncode == 1
    assert "refused the callback's signature" in wrong_key.stderr and "--key" in wrong_key.stderr
    assert wrong_token.returncode == 1
    assert "answered 401" in wrong_token.stderr and "--admin-token" in wrong_token.stderr
    assert no_token.returncode == 1 and "--admin-token is needed with --url" in no_token.stderr


def test_demo_explains_a_service_that_may_not_download_from_it(sqlite_url: str, tmp_path: Path) -> None:
    env = env_for(sqlite_url, tmp_path, COVERSERVICE_FETCH_ALLOWED_HOSTS="*.myqcloud.com")
    with ServiceProcess.serve(env, log_path=tmp_path / "serve.log") as proc:
        out = run_demo("--url", proc.base_url, "--key", KEY, "--admin-token", ADMIN,
                       "--rooms", "1", "--frames", "2", "--dir", str(tmp_path / "d"))
    assert out.returncode == 1
    assert "would not download the screenshots" in out.stderr
    assert "COVERSERVICE_FETCH_ALLOWED_HOSTS=127.0.0.1:*" in out.stderr


def test_demo_gives_up_when_frames_are_not_processed(sqlite_url: str, tmp_path: Path) -> None:
    with ServiceProcess.serve(env_for(sqlite_url, tmp_path), log_path=tmp_path / "serve.log", worker=False) as proc:
        out = run_demo("--url", proc.base_url, "--key", KEY, "--admin-token", ADMIN,
                       "--rooms", "1", "--frames", "3", "--interval", "0", "--timeout", "1",
                       "--dir", str(tmp_path / "d"))
    assert out.returncode == 1
    assert "frames not processed within 1 s" in out.stderr and "3 pending" in out.stderr


def test_demo_fails_when_a_degraded_frame_becomes_the_cover(sqlite_url: str, tmp_path: Path) -> None:
    # A service told to value only the newest frame: a frame's worth halves every 50 ms,
    # so the third frame (blurred) wins over the clean one a second older.
    env = env_for(sqlite_url, tmp_path, COVERSERVICE_SELECTION_FRESHNESS="0",
                  COVERSERVICE_SELECTION_HALF_LIFE="0.05", COVERSERVICE_COVER_MIN_INTERVAL="0")
    with ServiceProcess.serve(env, log_path=tmp_path / "serve.log") as proc:
        out = run_demo("--url", proc.base_url, "--key", KEY, "--admin-token", ADMIN, "--rooms", "1",
                       "--frames", "3", "--interval", "1.1", "--dir", str(tmp_path / "d"), "--json")
    assert out.returncode == 1, out.stderr
    summary = json.loads(out.stdout)
    [room] = summary["rooms"]
    assert room["chosen"] == 2 and room["frames"][2]["label"] == "blurred"
    assert summary["ok"] is False
    assert summary["problems"] == [f"{room['stream_id']}: the cover is frame #2, which is blurred"]
    assert "the cover is frame #2, which is blurred" in out.stderr
    sheet = read_sheet(tmp_path / "d" / "contact-sheet.html")
    assert [int(f.attrs["data-index"]) for f in sheet.figures if "cover" in f.classes] == [2]


def test_demo_explains_a_service_that_is_not_there(tmp_path: Path) -> None:
    out = run_demo("--url", f"http://127.0.0.1:{free_port()}", "--admin-token", ADMIN, "--dir", str(tmp_path))
    assert out.returncode == 1 and "no coverservice answers at http://127.0.0.1:" in out.stderr


# --- the frames ------------------------------------------------------------------------------


def test_every_short_run_has_a_clean_frame_after_the_black_one() -> None:
    for index, room in enumerate(demo.ROOMS):
        labels = room.plan(index, 12)
        assert labels[0] == "black"
        # A room live for a while starts soft: its clean frame comes inside the interval.
        assert labels[1:3] == (["soft", demo.CLEAN] if room.live_for else [demo.CLEAN, labels[2]])
        assert set(labels) - {"soft"} == {demo.CLEAN, *demo.DEGRADATIONS} - {"soft"}
    assert any(room.live_for for room in demo.ROOMS)
    # Rooms start their spoiled frames at different kinds, so a short run shows several.
    starts = {room.plan(i, 3)[2] for i, room in enumerate(demo.ROOMS) if not room.live_for}
    assert len(starts) == sum(1 for room in demo.ROOMS if not room.live_for) and demo.CLEAN not in starts


def test_frames_move_from_one_screenshot_to_the_next() -> None:
    [frames] = demo.make_frames(demo.ROOMS[:1], 4, "abc123")
    clean = [f for f in frames if not f.degraded]
    assert len(clean) == 2 and clean[0].data != clean[1].data
    assert [f.file for f in frames] == [f"frames/demo-abc123-game/{i:02d}-{label}.jpg"
                                        for i, label in enumerate(demo.ROOMS[0].plan(0, 4))]
    assert demo.make_frames(demo.ROOMS[:1], 4, "abc123")[0][1].data == clean[0].data  # reproducible
