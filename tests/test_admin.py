"""Admin API, moderation (CSS 317), stream lifecycle (CSS 1 / 0) and retention: the app
under uvicorn on a loopback port, a worker on the same database, screenshots from a COS
stand-in, on SQLite and Postgres."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from support.cos_server import CosServer
from support.images import blurred, encode, scene
from support.servers import ThreadedServer

from coverservice.app import create_app
from coverservice.fetch import Fetcher
from coverservice.models import AuditEntry, Cover, Frame, Stream
from coverservice.settings import Settings
from coverservice.storage import FileStorage
from coverservice.worker import Worker

TOKEN = "alice-0123456789abcdef"
AUTH = {"authorization": f"Bearer {TOKEN}"}


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Harness:
    http: httpx.Client
    cos: CosServer
    worker: Worker
    clock: Clock
    sessions: sessionmaker[Session]
    storage: FileStorage

    def screenshot(self, stream: str, path: str, data: bytes | None, *, age: float = 1.0) -> int:
        if data is not None:
            self.cos.put(path, data)
        body = {
            "event_type": 200, "stream_id": stream, "channel_id": stream,
            "create_time": int(self.clock.now.timestamp() - age), "file_size": len(data or b""),
            "width": 1280, "height": 720, "pic_url": path, "pic_full_url": self.cos.url(path),
        }
        assert self.callback(body).status_code == 200
        with self.sessions() as s:
            return s.scalars(select(Frame.id).where(Frame.stream_id == stream, Frame.pic_url == path)).one()

    def callback(self, body: dict[str, Any]) -> httpx.Response:
        return self.http.post("/callbacks/css", json=body)

    def moderation(self, stream: str, path: str, suggestion: str = "Block") -> httpx.Response:
        return self.callback({
            "event_type": 317, "streamId": stream, "channelId": stream, "img": self.cos.url(path),
            "type": [1], "score": 99, "suggestion": suggestion,
        })

    def cover(self, stream: str) -> dict[str, Any] | None:
        r = self.http.get(f"/api/covers/{stream}")
        return r.json()["cover"] if r.status_code == 200 else None

    def cover_frame(self, stream: str) -> int | None:
        cover = self.cover(stream)
        return cover["frame_id"] if cover else None

    def frame(self, frame_id: int) -> Frame:
        with self.sessions() as s:
            return s.get_one(Frame, frame_id)

    def audit(self) -> list[AuditEntry]:
        with self.sessions() as s:
            return list(s.scalars(select(AuditEntry).order_by(AuditEntry.id)))


@pytest.fixture
def harness_factory(
    make_settings: Callable[..., Settings], engine: Engine, sessions: sessionmaker[Session], storage: FileStorage
) -> Iterator[Callable[..., Harness]]:
    stack: list[Any] = []

    def make(**overrides: Any) -> Harness:
        values: dict[str, Any] = {
            "admin_tokens": (f"alice:{TOKEN}", "bob:bob-0123456789abcdef"),
            "cover_cache_ttl": 0.0,
            "fetch_max_bytes": 2_000_000,
        }
        settings = make_settings(**{**values, **overrides})
        clock = Clock()
        cos = CosServer()
        fetcher = Fetcher.from_settings(settings)
        app = create_app(settings, engine=engine, storage=storage, fetch=fetcher.fetch, clock=clock)
        server = ThreadedServer(app).__enter__()
        http = httpx.Client(base_url=server.base_url, timeout=30)
        worker = Worker(settings, session_factory=sessions, storage=storage, fetch=fetcher.fetch, clock=clock, name="w")
        stack.extend([http.close, server.__exit__, fetcher.close, cos.stop])
        return Harness(http, cos, worker, clock, sessions, storage)

    yield make
    for close in stack:
        close(None, None, None) if close.__name__ == "__exit__" else close()


@pytest.fixture
def h(harness_factory: Callable[..., Harness]) -> Harness:
    return harness_factory()


def two_frames(h: Harness, stream: str = "room") -> tuple[int, int]:
    """A stream whose cover is a sharp frame, with a softer frame beside it."""
    base = scene(1280, 720, seed=21)
    sharp = h.screenshot(stream, f"/{stream}/sharp.jpg", encode(base), age=5)
    soft = h.screenshot(stream, f"/{stream}/soft.jpg", encode(blurred(base, 3)), age=4)
    h.worker.drain()
    assert h.cover_frame(stream) == sharp
    return sharp, soft


# --- authentication ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, status",
    [({}, 401), ({"authorization": "Bearer wrong-token-000000000"}, 401), ({"authorization": f"Basic {TOKEN}"}, 401)],
)
def test_admin_needs_a_valid_token_and_changes_nothing_without(h: Harness, headers: dict[str, str], status: int) -> None:
    sharp, soft = two_frames(h)
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/admin/streams", {}),
        ("GET", "/admin/streams/room/frames", {}),
        ("POST", "/admin/covers/room/pin", {"json": {"frame_id": soft}}),
        ("PUT", "/admin/covers/room", {"content": encode(scene(640, 360), "PNG")}),
        ("DELETE", "/admin/covers/room/override", {}),
        ("POST", f"/admin/frames/{sharp}/block", {}),
    ]
    for method, url, kwargs in requests:
        r = h.http.request(method, url, headers=headers, **kwargs)
        assert r.status_code == status, (method, url)
        assert r.json()["error"] == "unauthorized"
    assert h.cover_frame("room") == sharp
    assert not h.frame(sharp).blocked
    assert h.audit() == []


def test_admin_is_disabled_without_tokens(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory(admin_tokens=())
    r = h.http.get("/admin/streams", headers=AUTH)
    assert r.status_code == 403 and r.json()["error"] == "admin_disabled"


# --- overrides -------------------------------------------------------------------------------


def test_pin_wins_until_released_and_is_audited(h: Harness) -> None:
    sharp, soft = two_frames(h)
    r = h.http.post("/admin/covers/room/pin", json={"frame_id": soft}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["cover"]["source"] == "override" and r.json()["cover"]["frame_id"] == soft
    assert h.cover_frame("room") == soft
    img = h.http.get("/cover/room?size=large&format=jpeg")
    assert img.status_code == 200 and Image.open(io.BytesIO(img.content)).size == (1280, 720)

    streams = h.http.get("/admin/streams", headers=AUTH).json()["streams"]
    assert streams[0]["override"] == {"kind": "pin", "frame_id": soft, "expires_at": None}

    r = h.http.delete("/admin/covers/room/override", headers=AUTH)
    assert r.status_code == 200 and r.json()["cover"]["frame_id"] == sharp
    assert h.cover_frame("room") == sharp
    assert [(a.actor, a.action, a.frame_id) for a in h.audit()] == [("alice", "pin", soft), ("alice", "release", None)]
    assert all(TOKEN not in str(a.detail) for a in h.audit())


def test_an_override_wins_over_a_worker_finishing_a_better_frame(h: Harness) -> None:
    base = scene(1280, 720, seed=22)
    soft = h.screenshot("room", "/room/a.jpg", encode(blurred(base, 4)), age=6)
    h.worker.drain()
    h.http.post("/admin/covers/room/pin", json={"frame_id": soft}, headers=AUTH).raise_for_status()
    # the worker finishes a much better frame after the pin
    sharp = h.screenshot("room", "/room/b.jpg", encode(base), age=2)
    h.worker.drain()
    with h.sessions() as s:
        stream = s.get_one(Stream, "room")
        auto = s.get_one(Cover, stream.cover_id)
    assert auto.frame_id == sharp  # selection went on underneath
    assert h.cover_frame("room") == soft and h.cover("room")["source"] == "override"  # type: ignore[index]
    h.http.delete("/admin/covers/room/override", headers=AUTH).raise_for_status()
    assert h.cover_frame("room") == sharp


def test_a_pin_expires(h: Harness) -> None:
    sharp, soft = two_frames(h)
    h.http.post("/admin/covers/room/pin", json={"frame_id": soft, "expires_in": 60}, headers=AUTH).raise_for_status()
    assert h.cover_frame("room") == soft
    h.clock.advance(61)
    assert h.cover_frame("room") == sharp


def test_upload_becomes_the_cover_in_every_size_and_format(h: Harness) -> None:
    two_frames(h)
    png = encode(scene(800, 800, seed=5), "PNG")
    r = h.http.put("/admin/covers/room", content=png, headers={**AUTH, "content-type": "image/png"})
    assert r.status_code == 200, r.text
    cover = r.json()["cover"]
    assert cover["source"] == "override" and cover["frame_id"] is None
    for size, dims in {"small": (320, 180), "medium": (640, 360), "large": (1280, 720)}.items():
        for fmt in ("jpeg", "webp"):
            img = h.http.get(f"/cover/room?size={size}&format={fmt}")
            assert Image.open(io.BytesIO(img.content)).size == dims
            assert img.headers["x-cover-version"] == str(cover["version"])
    # uploads may also set a cover for a room that has not streamed yet
    assert h.http.put("/admin/covers/newroom", content=png, headers=AUTH).status_code == 200
    assert h.cover("newroom") is not None


@pytest.mark.parametrize(
    "body, status, error",
    [
        (encode(scene(64, 64), "GIF"), 422, "image_rejected"),
        (b"not an image", 422, "image_rejected"),
        (b"\xff\xd8\xff" + b"\0" * 2_100_000, 413, "payload_too_large"),
    ],
)
def test_bad_uploads_are_refused_and_change_nothing(h: Harness, body: bytes, status: int, error: str) -> None:
    sharp, _ = two_frames(h)
    r = h.http.put("/admin/covers/room", content=body, headers=AUTH)
    assert (r.status_code, r.json()["error"]) == (status, error)
    assert h.cover_frame("room") == sharp and h.audit() == []


def test_pin_refuses_frames_of_other_streams_and_unknown_ones(h: Harness) -> None:
    two_frames(h, "room")
    other, _ = two_frames(h, "other")
    assert h.http.post("/admin/covers/room/pin", json={"frame_id": other}, headers=AUTH).status_code == 404
    assert h.http.post("/admin/covers/room/pin", json={"frame_id": 99999}, headers=AUTH).status_code == 404
    assert h.http.post("/admin/covers/room/pin", json={"frame": 1}, headers=AUTH).status_code == 400
    assert h.http.post("/admin/covers/room/pin", json={"frame_id": "1"}, headers=AUTH).status_code == 400


def test_listings_show_streams_and_frames_with_scores(h: Harness) -> None:
    sharp, soft = two_frames(h)
    streams = h.http.get("/admin/streams", headers=AUTH).json()["streams"]
    assert [s["stream_id"] for s in streams] == ["room"]
    assert streams[0]["cover"]["frame_id"] == sharp and streams[0]["override"] is None
    one = h.http.get("/admin/streams/room", headers=AUTH).json()["stream"]
    assert one == streams[0]
    assert h.http.get("/admin/streams/nobody", headers=AUTH).status_code == 404
    frames = h.http.get("/admin/streams/room/frames", headers=AUTH).json()["frames"]
    by_id = {f["id"]: f for f in frames}
    assert by_id[sharp]["is_cover"] and not by_id[soft]["is_cover"]
    assert by_id[sharp]["status"] == "scored" and by_id[sharp]["score"] > by_id[soft]["score"]
    assert "sharpness" in by_id[sharp]["metrics"] and by_id[sharp]["reason"]
    assert by_id[sharp]["selection"] == "became the cover: first usable frame"
    assert by_id[soft]["selection"] == "not the cover: the cover is still the best frame"
    thumb = h.http.get(by_id[soft]["thumbnail_url"], headers=AUTH)
    assert Image.open(io.BytesIO(thumb.content)).size == (320, 180)
    assert h.http.get(by_id[soft]["thumbnail_url"]).status_code == 401
    assert h.http.get("/admin/streams/nobody/frames", headers=AUTH).status_code == 404
    page = h.http.get("/admin")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


# --- blocking and moderation ----------------------------------------------------------------------


def test_blocking_the_cover_frame_replaces_it_at_once(h: Harness) -> None:
    base = scene(1280, 720, seed=23)
    first = h.screenshot("room", "/room/1.jpg", encode(blurred(base, 3)), age=8)
    h.worker.drain()
    second = h.screenshot("room", "/room/2.jpg", encode(base), age=4)
    h.worker.drain()
    assert h.cover_frame("room") == second
    old_etag = h.http.get("/cover/room?format=jpeg").headers["etag"]

    r = h.http.post(f"/admin/frames/{second}/block", headers=AUTH)
    assert r.status_code == 200 and r.json()["frame"]["blocked"]
    # at once, before any worker ran: the previous stored cover
    assert h.cover_frame("room") == first
    assert h.http.get("/cover/room?format=jpeg").headers["etag"] != old_etag
    # and the worker never picks the blocked frame again
    h.worker.drain()
    assert h.cover_frame("room") == first
    assert h.http.post("/admin/covers/room/pin", json={"frame_id": second}, headers=AUTH).status_code == 409

    h.http.post(f"/admin/frames/{second}/unblock", headers=AUTH).raise_for_status()
    h.worker.drain()
    assert h.cover_frame("room") == second
    assert [a.action for a in h.audit()] == ["block", "unblock"]


def test_blocking_the_only_frame_serves_the_placeholder(h: Harness) -> None:
    only = h.screenshot("room", "/room/only.jpg", encode(scene(1280, 720)), age=2)
    h.worker.drain()
    assert h.http.get("/cover/room").status_code == 200
    h.http.post(f"/admin/frames/{only}/block", headers=AUTH).raise_for_status()
    assert h.http.get("/cover/room").status_code == 404


def test_blocking_a_pinned_frame_removes_the_override(h: Harness) -> None:
    sharp, soft = two_frames(h)
    h.http.post("/admin/covers/room/pin", json={"frame_id": soft}, headers=AUTH).raise_for_status()
    h.http.post(f"/admin/frames/{soft}/block", headers=AUTH).raise_for_status()
    assert h.cover_frame("room") == sharp and h.cover("room")["source"] == "auto"  # type: ignore[index]


def test_moderation_block_takes_the_frame_off_the_cover(h: Harness) -> None:
    sharp, soft = two_frames(h)
    assert h.moderation("room", "/room/sharp.jpg").json() == {"code": 0}
    assert h.frame(sharp).blocked and h.frame(sharp).blocked_reason == "moderation: Block"
    assert h.cover_frame("room") != sharp
    h.worker.drain()
    assert h.cover_frame("room") == soft
    assert [(a.actor, a.action) for a in h.audit()] == [("moderation", "block")]


def test_moderation_review_blocks_only_when_configured(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory()
    sharp, _ = two_frames(h)
    h.moderation("room", "/room/sharp.jpg", "Review")
    h.moderation("room", "/room/sharp.jpg", "Pass")
    assert not h.frame(sharp).blocked and h.cover_frame("room") == sharp

    strict = harness_factory(moderation_block_suggestions=("Block", "Review"))
    strict.moderation("room", "/room/sharp.jpg", "Review")
    assert strict.frame(sharp).blocked


def test_a_flag_before_its_screenshot_blocks_the_frame_on_arrival(h: Harness) -> None:
    h.moderation("room", "/room/early.jpg")
    frame_id = h.screenshot("room", "/room/early.jpg", encode(scene(1280, 720)), age=1)
    assert h.frame(frame_id).blocked
    h.worker.drain()
    assert h.frame(frame_id).status == "scored"  # scored, for the record, but never shown
    assert h.cover("room") is None


def test_malformed_moderation_callbacks_are_a_400(h: Harness) -> None:
    r = h.callback({"event_type": 317, "streamId": "room", "suggestion": "Block"})
    assert r.status_code == 400 and r.json()["problems"][0]["field"] == "img"


# --- stream lifecycle ---------------------------------------------------------------------------------


def test_push_events_set_live_in_the_metadata(h: Harness) -> None:
    two_frames(h)
    h.callback({"event_type": 0, "stream_id": "room"})
    assert h.http.get("/api/covers/room").json()["live"] is False
    assert h.callback({"event_type": 1, "stream_id": "room"}).json() == {"code": 0}
    assert h.http.get("/api/covers/room").json()["live"] is True
    h.callback({"event_type": 0, "stream_id": "room"})
    assert h.http.get("/api/covers/room").json()["live"] is False
    assert h.callback({"event_type": 1}).status_code == 400


def test_screenshots_mean_live_until_a_push_stop_says_otherwise(h: Harness) -> None:
    def live() -> bool:
        return bool(h.http.get("/api/covers/room").json()["live"])

    frame = encode(scene(1280, 720, seed=33))
    # No push-start callback has come (lost, or the stream began before we were set up).
    h.screenshot("room", "/room/1.jpg", frame, age=10)
    assert live()
    stopped_at = int(h.clock.now.timestamp())
    h.callback({"event_type": 0, "stream_id": "room", "event_time": stopped_at})
    assert not live()
    # A screenshot taken before the stop, retried by CSS, arrives late: no proof of anything.
    h.screenshot("room", "/room/2.jpg", frame, age=2)
    assert not live()
    # One taken after it: the push is back, whether or not a start callback ever comes.
    h.clock.advance(30)
    h.screenshot("room", "/room/3.jpg", frame, age=10)
    assert live()
    # The stop again, retried by CSS: it happened before that screenshot, so it stays live.
    h.callback({"event_type": 0, "stream_id": "room", "event_time": stopped_at})
    assert live()
    # A stop that happened after the last screenshot does end it.
    h.callback({"event_type": 0, "stream_id": "room", "event_time": stopped_at + 25})
    assert not live()


def test_the_last_frames_of_an_ending_stream_never_become_the_cover(h: Harness) -> None:
    base = scene(1280, 720, seed=24)
    h.callback({"event_type": 1, "stream_id": "room"})
    h.clock.advance(30)
    good = h.screenshot("room", "/room/good.jpg", encode(blurred(base, 2)), age=20)
    h.worker.drain()
    h.callback({"event_type": 0, "stream_id": "room"})
    # the final screenshot (taken 3 s before the interruption) arrives afterwards; even
    # though it scores higher, it is not cover material
    final = h.screenshot("room", "/room/final.jpg", encode(base), age=3)
    h.worker.drain()
    assert h.frame(final).score > h.frame(good).score  # type: ignore[operator]
    assert h.cover_frame("room") == good


def test_a_push_stop_takes_the_cover_off_a_frame_from_just_before_it(h: Harness) -> None:
    # The final screenshot was processed (and became the cover) before the interruption
    # arrived: the stop has the stream reconsidered, with no new frame.
    base = scene(1280, 720, seed=27)
    h.callback({"event_type": 1, "stream_id": "room"})
    h.clock.advance(30)
    good = h.screenshot("room", "/room/good.jpg", encode(blurred(base, 2)), age=20)
    final = h.screenshot("room", "/room/final.jpg", encode(base), age=2)
    h.worker.drain()
    assert h.cover_frame("room") == final
    h.callback({"event_type": 0, "stream_id": "room"})
    assert h.worker.drain() == 1  # the stream's reselection
    assert h.cover_frame("room") == good
    assert "just before the push stopped" in (h.frame(good).selection or "")


def test_fresh_frames_win_once_the_stream_is_back(h: Harness) -> None:
    base = scene(1280, 720, seed=25)
    old = h.screenshot("room", "/room/old.jpg", encode(base), age=120)
    h.worker.drain()
    h.callback({"event_type": 0, "stream_id": "room"})
    h.clock.advance(60)
    h.callback({"event_type": 1, "stream_id": "room"})
    h.clock.advance(5)
    fresh = h.screenshot("room", "/room/fresh.jpg", encode(blurred(scene(1280, 720, seed=26), 2)), age=1)
    h.worker.drain()
    assert h.frame(fresh).score < h.frame(old).score  # type: ignore[operator]
    assert h.cover_frame("room") == fresh


def test_a_frame_of_the_same_second_as_the_restart_is_fresh(h: Harness) -> None:
    # Screenshot times are whole seconds; the push start is recorded to the microsecond.
    h.clock.advance(0.7 - h.clock.now.microsecond / 1e6 % 1)
    base = scene(1280, 720, seed=29)
    h.callback({"event_type": 1, "stream_id": "room"})
    clean = h.screenshot("room", "/room/clean.jpg", encode(base), age=0)
    h.worker.drain()
    h.clock.advance(5)
    blurry = h.screenshot("room", "/room/blurry.jpg", encode(blurred(base, 4)), age=0)
    h.worker.drain()
    assert h.frame(blurry).score < h.frame(clean).score  # type: ignore[operator]
    assert h.cover_frame("room") == clean


def test_a_late_push_start_is_judged_by_its_event_time(h: Harness) -> None:
    base = scene(1280, 720, seed=30)
    h.callback({"event_type": 0, "stream_id": "room"})
    h.clock.advance(120)
    # The push restarted 60 s ago; its callback arrives only now (CSS retried it), after a
    # screenshot taken since the restart.
    good = h.screenshot("room", "/room/good.jpg", encode(base), age=30)
    h.worker.drain()
    h.callback({"event_type": 1, "stream_id": "room", "event_time": int(h.clock.now.timestamp()) - 60})
    h.clock.advance(5)
    worse = h.screenshot("room", "/room/worse.jpg", encode(blurred(base, 4)), age=1)
    h.worker.drain()
    assert h.frame(worse).score < h.frame(good).score  # type: ignore[operator]
    assert h.cover_frame("room") == good


def test_push_events_arriving_out_of_order_keep_the_latest_state(h: Harness) -> None:
    now = int(h.clock.now.timestamp())
    h.callback({"event_type": 1, "stream_id": "room", "event_time": now - 5})
    # the interruption before that restart, retried by CSS, arrives last
    assert h.callback({"event_type": 0, "stream_id": "room", "event_time": now - 10}).json() == {"code": 0}
    assert h.http.get("/api/covers/room").json()["live"] is True


def test_frames_after_an_interruption_mean_the_stream_is_back(h: Harness) -> None:
    # The push start callback was lost: screenshots taken after the interruption still
    # make covers (a stopped stream sends none).
    base = scene(1280, 720, seed=31)
    old = h.screenshot("room", "/room/old.jpg", encode(base), age=300)
    h.worker.drain()
    h.callback({"event_type": 0, "stream_id": "room"})
    h.clock.advance(60)
    back = h.screenshot("room", "/room/back.jpg", encode(blurred(scene(1280, 720, seed=32), 2)), age=1)
    h.worker.drain()
    assert h.frame(back).score < h.frame(old).score  # type: ignore[operator]
    assert h.cover_frame("room") == back


# --- retention --------------------------------------------------------------------------------------


def test_retention_prunes_old_frames_and_covers_but_keeps_what_is_shown(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory(retention=3600.0)
    base = scene(1280, 720, seed=27)
    first = h.screenshot("room", "/room/1.jpg", encode(blurred(base, 3)), age=5)
    h.worker.drain()
    second = h.screenshot("room", "/room/2.jpg", encode(base), age=4)
    h.worker.drain()
    pinned = h.screenshot("other", "/other/p.jpg", encode(scene(1280, 720, seed=28)), age=4)
    h.worker.drain()
    h.http.post("/admin/covers/other/pin", json={"frame_id": pinned}, headers=AUTH).raise_for_status()
    objects_before = {p.name for p in h.storage.root.rglob("*.*")}

    h.clock.advance(7200)
    assert h.worker.prune(h.clock.now) > 0
    with h.sessions() as s:
        frames = set(s.scalars(select(Frame.id)))
        covers = list(s.scalars(select(Cover)))
    assert first not in frames  # old, not shown: gone
    assert second in frames and pinned in frames  # shown by the current cover / override
    assert {c.frame_id for c in covers} == {second, pinned}
    objects_after = {p.name for p in h.storage.root.rglob("*.*")}
    assert objects_after < objects_before
    # what is shown is still served
    assert h.http.get("/cover/room?format=jpeg").status_code == 200
    assert h.http.get("/cover/other?format=webp").status_code == 200
