"""``coverservice demo``: the product working end to end, on generated live rooms.

A few simulated rooms (a game, a talking head, an outdoor pan, a portrait phone stream)
each get a run of screenshots drawn here (``scenes.py``): the camera pans and zooms from
frame to frame, and some frames are blurred, dark, noisy, shaken or black, as live
streams are. The screenshots are served from a stand-in for COS on 127.0.0.1 in this
process; each is announced to the service by a signed CSS screenshot callback (event 200),
one per room every ``interval`` seconds. When every frame is processed, the demo reads the
frames' outcomes (admin API) and each room's cover (``GET /api/covers/{id}``), prints
them, and writes ``contact-sheet.html``: every frame with its status, reason and scores,
the chosen one marked, images beside it in the output directory.

The service is a ``coverservice serve`` subprocess on the embedded default (SQLite file
and local storage in the output directory, worker in-process, a free loopback port),
stopped by PID at the end; or an already running service given by URL, which must be
allowed to download from the stand-in (``COVERSERVICE_FETCH_ALLOWED_HOSTS`` admitting
``127.0.0.1:*`` and ``COVERSERVICE_FETCH_ALLOW_PRIVATE=true``).

The demo knows which frames it degraded: a cover on a degraded frame, a room without a
cover or a frame that could not be downloaded fails the run, so it doubles as a smoke test.
"""

from __future__ import annotations

import contextlib
import html
import json
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from . import scenes
from .bench import ScreenshotServer
from .callbacks import PUSH_STARTED, SCREENSHOT, sign
from .process import LOOPBACK, ServiceError, ServiceProcess
from .scenes import Degradation, Size

Progress = Callable[[str], None]

# CSS signs with t = now + 10 minutes by default.
SIGNATURE_VALIDITY = 600
# Frame states a worker has finished with (docs/architecture.md, "Frame states").
FINAL = frozenset({"scored", "rejected", "failed"})
CLEAN = "clean"
# How the demo spoils a frame. Strong enough that a person would never pick them; the
# scorer must not either.
DEGRADATIONS: dict[str, Degradation] = {
    "blurred": Degradation("gaussian", 6.0),
    "dark": Degradation("under", 0.12),
    "noisy": Degradation("noise", 24.0),
    "shaken": Degradation("motion", 28.0),
    "black": Degradation("black", kind="dim"),
    # Mildly soft: usable, so it becomes a cover when nothing better is there yet.
    "soft": Degradation("gaussian", 2.5),
}
_CYCLE = ("blurred", "dark", "noisy", "shaken", "black")


@dataclass(frozen=True)
class Camera:
    """How the camera moves over a room's run: zoom and pan go linearly from the first
    frame's to the last one's, plus a random shake (fractions of the picture)."""

    zoom: tuple[float, float]
    pan_from: tuple[float, float]
    pan_to: tuple[float, float]
    shake: float


@dataclass(frozen=True)
class Room:
    name: str  # the stream id's suffix
    title: str
    scene: str  # a scenes.SCENES name
    size: Size
    camera: Camera
    # Seconds the push has been live when the demo starts (its push start callback says
    # so). Past the first minute a cover is no longer provisional: a better frame that
    # comes within COVERSERVICE_COVER_MIN_INTERVAL of a cover change is held back, and
    # becomes the cover when the interval ends, with no further screenshot.
    live_for: float = 0.0

    def plan(self, room_index: int, frames: int) -> list[str]:
        """The frame labels: black first (a stream starting), then clean and spoiled
        frames in turn, the spoiled ones cycling through every kind from a different start
        in each room, so even a short run shows several kinds. A room that has been live a
        while has a soft frame before the first clean one, which so comes inside the
        interval."""
        labels = ["black"]
        for i in range(1, frames):
            labels.append(CLEAN if i % 2 else _CYCLE[(room_index + i // 2 - 1) % len(_CYCLE)])
        if self.live_for:
            labels = ["black", "soft", *labels[1:]][:frames]
        return labels


ROOMS = (
    Room("game", "game stream", "game", (1280, 720), Camera((1.0, 1.3), (0.0, 0.0), (0.05, 0.03), 0.004)),
    Room("talk", "talking head", "studio", (1280, 720), Camera((1.08, 1.14), (-0.02, 0.0), (0.02, 0.01), 0.004)),
    Room("outdoor", "outdoor pan, live for two minutes", "outdoor", (1280, 720),
         Camera((1.0, 1.04), (-0.17, 0.0), (0.17, 0.0), 0.002), live_for=120.0),
    Room("mobile", "portrait phone stream", "mobile", (720, 1280), Camera((1.02, 1.1), (0.0, 0.0), (0.0, -0.02), 0.012)),
)


@dataclass(frozen=True)
class Config:
    rooms: int = len(ROOMS)  # the first N of ROOMS
    frames: int = 12  # per room
    interval: float = 0.5  # seconds between a room's screenshots (CSS: every 5-10 s)
    timeout: float = 60.0  # for the last frames to be processed, after the last callback
    directory: Path | None = None  # default: a new temporary directory, kept
    url: str | None = None  # a running service; default: start one
    key: str = ""  # the target's callback key (with url)
    admin_token: str = ""  # a bearer token of the target's COVERSERVICE_ADMIN_TOKENS (with url)


class DemoError(Exception):
    """The demo could not run to the end; the message says why and what to do."""


@dataclass
class Frame:
    room: Room
    stream_id: str
    index: int
    label: str  # "clean" or a DEGRADATIONS key
    data: bytes
    file: str  # relative to the output directory
    url: str = ""  # pic_full_url, once the stand-in serves it
    sent: bool = False  # its callback was acknowledged
    outcome: dict[str, Any] = field(default_factory=dict)  # the admin API's view of it

    @property
    def degraded(self) -> bool:
        return self.label != CLEAN


@dataclass
class RoomResult:
    room: Room
    stream_id: str
    frames: list[Frame]
    cover: dict[str, Any] | None = None  # GET /api/covers/{id} "cover"
    cover_file: str | None = None

    @property
    def chosen(self) -> Frame | None:
        return next((f for f in self.frames if f.outcome.get("is_cover")), None)


@dataclass
class Summary:
    service: str
    embedded: bool
    directory: Path
    rooms: list[RoomResult]
    problems: list[str] = field(default_factory=list)
    log: Path | None = None  # the started service's log

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def contact_sheet(self) -> Path:
        return self.directory / "contact-sheet.html"


def make_frames(rooms: Sequence[Room], frames: int, run_id: str) -> list[list[Frame]]:
    out = []
    for r, room in enumerate(rooms):
        stream_id = f"demo-{run_id}-{room.name}"
        source = scenes.source(room.scene)
        cam = room.camera
        room_frames = []
        for i, label in enumerate(room.plan(r, frames)):
            rng = np.random.default_rng([r, i])
            t = i / max(1, frames - 1)
            shake = rng.normal(0.0, cam.shake, 2)
            pan = tuple(a + (b - a) * t + s for a, b, s in zip(cam.pan_from, cam.pan_to, shake, strict=True))
            zoom = cam.zoom[0] + (cam.zoom[1] - cam.zoom[0]) * t
            rgb = scenes.view(source, room.size, zoom=zoom, pan=(pan[0], pan[1]))
            if label != CLEAN:
                rgb = scenes.degrade(rgb, DEGRADATIONS[label], rng)
            data = scenes.jpeg(rgb, int(rng.integers(80, 93)))
            file = f"frames/{stream_id}/{i:02d}-{label}.jpg"
            room_frames.append(Frame(room, stream_id, i, label, data, file))
        out.append(room_frames)
    return out


def run(config: Config, *, progress: Progress = lambda _: None) -> Summary:
    if not 1 <= config.rooms <= len(ROOMS):
        raise DemoError(f"rooms must be 1 to {len(ROOMS)}")
    if config.frames < 2:
        raise DemoError("frames must be at least 2 (the first of each room is black)")
    directory = (config.directory or Path(tempfile.mkdtemp(prefix="coverservice-demo-"))).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    run_id = secrets.token_hex(3)  # fresh stream ids: earlier runs' frames never compete
    rooms = ROOMS[: config.rooms]
    progress(f"drawing {config.frames} screenshots of each of {len(rooms)} rooms")
    per_room = make_frames(rooms, config.frames, run_id)
    frames = [f for room_frames in per_room for f in room_frames]
    for f in frames:
        path = directory / f.file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f.data)

    with contextlib.ExitStack() as stack:
        shots = stack.enter_context(ScreenshotServer([f.data for f in frames]))
        for k, f in enumerate(frames):
            # Named as CSS names screenshots: <date>/<stream>-screenshot-<time>-<w>x<h>.jpg
            w, h = f.room.size
            f.url = shots.url(k, f"/{datetime.now(UTC):%Y-%m-%d}/{f.stream_id}-screenshot-{f.index:02d}-{w}x{h}.jpg")
        progress(f"COS stand-in serving {len(frames)} screenshots at http://{LOOPBACK}:{shots.port}/")
        if config.url is None:
            target = stack.enter_context(_start_service(directory, shots.port, config.interval, progress))
        else:
            target = _Target(config.url.rstrip("/"), config.key, config.admin_token)
        client = stack.enter_context(httpx.Client(base_url=target.base_url, timeout=10.0))
        _check_target(client, target)
        results = [RoomResult(room_frames[0].room, room_frames[0].stream_id, room_frames) for room_frames in per_room]
        _send(client, target, results, config, progress)
        _wait(client, target, results, config, progress)
        for result in results:
            _read_cover(client, result, directory)
    summary = Summary(target.base_url, config.url is None, directory, results, log=target.log)
    summary.problems = _problems(results)
    summary.contact_sheet.write_text(contact_sheet(summary), encoding="utf-8")
    return summary


# --- the service ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    base_url: str
    key: str
    admin_token: str
    log: Path | None = None  # the started service's log


@contextlib.contextmanager
def _start_service(directory: Path, cos_port: int, interval: float, progress: Progress) -> Iterator[_Target]:
    key, token = secrets.token_hex(16), secrets.token_hex(16)
    env = {
        "COVERSERVICE_DATABASE_URL": f"sqlite:///{directory / 'coverservice.sqlite3'}",
        "COVERSERVICE_STORAGE_URL": (directory / "storage").as_uri(),
        "COVERSERVICE_CALLBACK_KEYS": key,
        "COVERSERVICE_ADMIN_TOKENS": f"demo:{token}",
        # The stand-in is on loopback, which downloads refuse unless told otherwise.
        "COVERSERVICE_FETCH_ALLOWED_HOSTS": f"{LOOPBACK}:{cos_port}",
        "COVERSERVICE_FETCH_ALLOW_PRIVATE": "true",
        # The demo compresses CSS's 5 s between screenshots into `interval`; the minimum
        # interval (15 s) and the provisional period (60 s) are compressed alike, the
        # interval to 2 s at least, so the room live for a while shows a hold-back.
        "COVERSERVICE_COVER_MIN_INTERVAL": f"{max(2.0, 3 * interval):g}",
        "COVERSERVICE_COVER_PROVISIONAL": f"{12 * interval:g}",
        "COVERSERVICE_WORKER_POLL_INTERVAL": "0.2",
    }
    log = directory / "service.log"
    service = ServiceProcess.serve(env, log_path=log, log_level="warning")
    progress(f"starting coverservice serve on {LOOPBACK}:{service.port} (SQLite and storage in {directory})")
    try:
        with service:
            progress(f"service up (pid {service.pid}); log: {log}")
            yield _Target(service.base_url, key, token, log)
            progress(f"stopping the service (pid {service.pid})")
    except ServiceError as exc:
        raise DemoError(str(exc)) from None


def _check_target(client: httpx.Client, target: _Target) -> None:
    try:
        health = client.get("/healthz")
    except httpx.HTTPError as exc:
        raise DemoError(f"no coverservice answers at {target.base_url}: {exc}") from None
    if health.status_code != 200:
        raise DemoError(f"{target.base_url}/healthz answered {health.status_code}: is this a coverservice?")
    if not target.admin_token:
        raise DemoError("--admin-token is needed with --url: the demo reads each frame's outcome from the admin API")
    listing = client.get("/admin/streams", params={"limit": 1}, headers=_bearer(target))
    if listing.status_code != 200:
        raise DemoError(
            f"the admin API of {target.base_url} answered {listing.status_code} "
            f"({_message(listing)}): pass one of its COVERSERVICE_ADMIN_TOKENS with --admin-token"
        )


def _bearer(target: _Target) -> dict[str, str]:
    return {"Authorization": f"Bearer {target.admin_token}"}


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("message") or body.get("error") or body) if isinstance(body, dict) else str(body)[:200]


# --- callbacks -------------------------------------------------------------------------------


def _post(client: httpx.Client, target: _Target, payload: dict[str, Any]) -> None:
    t = int(time.time()) + SIGNATURE_VALIDITY
    body = {**payload, "t": t, "sign": sign(target.key, t)}
    try:
        response = client.post("/callbacks/css", json=body)
    except httpx.HTTPError as exc:
        raise DemoError(f"callback to {target.base_url}/callbacks/css failed: {exc}") from None
    if response.status_code == 403:
        raise DemoError(
            f"the service refused the callback's signature ({_message(response)}): "
            "pass its callback key (COVERSERVICE_CALLBACK_KEYS) with --key"
        )
    if response.status_code != 200 or response.json().get("code") != 0:
        raise DemoError(f"callback answered {response.status_code}: {_message(response)}")


def _send(
    client: httpx.Client, target: _Target, results: list[RoomResult], config: Config, progress: Progress
) -> None:
    for result in results:  # CSS: push started
        started_at = {"event_time": int(time.time() - result.room.live_for)} if result.room.live_for else {}
        _post(client, target, {"event_type": PUSH_STARTED, "stream_id": result.stream_id, "app": "live", **started_at})
    # A screenshot's create_time counts whole seconds, and the service dates the push from
    # the callback's arrival: a screenshot from the same second would count as taken
    # before the push started, and lose to any later frame (selection.py). CSS takes its
    # first screenshot seconds after the push; wait for the next second at least.
    time.sleep(1.0 - time.time() % 1.0 + 0.01)
    started = time.monotonic()
    for i in range(config.frames):
        tick = started + i * config.interval
        time.sleep(max(0.0, tick - time.monotonic()))
        sent = []
        for result in results:
            f = result.frames[i]
            w, h = f.room.size
            _post(client, target, {
                "event_type": SCREENSHOT,
                "stream_id": f.stream_id,
                "channel_id": f.stream_id,
                "create_time": int(time.time()),
                "file_size": len(f.data),
                "width": w,
                "height": h,
                "pic_url": urlsplit(f.url).path,
                "pic_full_url": f.url,
                "app": "live",
            })
            f.sent = True
            sent.append(f"{f.room.name} {f.label}")
        _refresh(client, target, results)
        progress(f"tick {i + 1:>2}/{config.frames}  sent: {', '.join(sent)}  |  {_counts(results)}")


# --- outcomes --------------------------------------------------------------------------------


def _refresh(client: httpx.Client, target: _Target, results: list[RoomResult]) -> None:
    """Read every room's frames from the admin API into ``Frame.outcome``."""
    for result in results:
        response = client.get(
            f"/admin/streams/{result.stream_id}/frames",
            params={"limit": min(500, max(50, len(result.frames)))},
            headers=_bearer(target),
        )
        if response.status_code == 404:
            continue  # no callback recorded yet
        if response.status_code != 200:
            raise DemoError(f"reading {result.stream_id}'s frames answered {response.status_code}: {_message(response)}")
        by_url = {row["image_url"]: row for row in response.json()["frames"]}
        for f in result.frames:
            f.outcome = by_url.get(f.url, f.outcome)


def _counts(results: list[RoomResult]) -> str:
    counts = Counter(f.outcome.get("status", "not recorded") for r in results for f in r.frames if f.sent)
    order = ["scored", "rejected", "failed", "processing", "pending", "not recorded"]
    return ", ".join(f"{counts[s]} {s}" for s in order if counts[s])


def _wait(client: httpx.Client, target: _Target, results: list[RoomResult], config: Config, progress: Progress) -> None:
    deadline = time.monotonic() + config.timeout
    last_report = 0.0
    while True:
        _refresh(client, target, results)
        frames = [f for r in results for f in r.frames]
        refused = [f for f in frames if f.outcome.get("status") == "failed" and "refused" in f.outcome.get("reason", "")]
        if refused:
            raise DemoError(
                f"the service would not download the screenshots ({refused[0].outcome['reason']}): "
                f"allow the stand-in on it with COVERSERVICE_FETCH_ALLOWED_HOSTS=127.0.0.1:* and "
                "COVERSERVICE_FETCH_ALLOW_PRIVATE=true (it must run on this machine)"
            )
        processed = all(f.outcome.get("status") in FINAL for f in frames)
        # A held-back frame becomes its room's cover when the interval ends.
        settled = processed and all(r.chosen is not None and not r.chosen.degraded for r in results)
        now = time.monotonic()
        if settled or (processed and now > deadline):
            progress(f"all {len(frames)} frames processed: {_counts(results)}")
            return
        if now > deadline:
            hint = f"see {target.log}" if target.log else "is a worker running against the service's database?"
            raise DemoError(f"frames not processed within {config.timeout:g} s ({_counts(results)}): {hint}")
        if now - last_report >= 1.0:
            held = [f"{r.room.name} #{f.index}" for r in results for f in r.frames
                    if str(f.outcome.get("selection") or "").startswith("held back")]
            waiting = "held-back frames to become covers" if processed else "the worker"
            progress(f"waiting for {waiting}: {_counts(results)}" + (f"; held back: {', '.join(held)}" if held else ""))
            last_report = now
        time.sleep(0.2)


def _read_cover(client: httpx.Client, result: RoomResult, directory: Path) -> None:
    """The room's cover as the public API shows it, and its medium JPEG. The API caches
    a stream's cover for up to COVERSERVICE_COVER_CACHE_TTL: wait for it to agree with
    the frames' outcome."""
    chosen = result.chosen
    deadline = time.monotonic() + 10
    while True:
        response = client.get(f"/api/covers/{result.stream_id}")
        cover = response.json().get("cover") if response.status_code in (200, 404) else None
        if (cover and chosen and cover.get("frame_id") == chosen.outcome.get("id")) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    result.cover = cover
    if cover is None:
        return
    url = cover["urls"].get("medium", {}).get("jpeg")
    if url:
        image = client.get(url)
        if image.status_code == 200:
            result.cover_file = f"covers/{result.stream_id}.jpg"
            path = directory / result.cover_file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(image.content)


def _problems(results: list[RoomResult]) -> list[str]:
    problems = []
    for r in results:
        chosen = r.chosen
        if r.cover is None or chosen is None:
            problems.append(f"{r.stream_id}: no cover")
        elif chosen.degraded:
            problems.append(f"{r.stream_id}: the cover is frame #{chosen.index}, which is {chosen.label}")
        for f in r.frames:
            if f.outcome.get("status") == "failed":
                problems.append(f"{r.stream_id}: frame #{f.index} failed: {f.outcome.get('reason')}")
    return problems


# --- output ------------------------------------------------------------------------------------


def to_dict(summary: Summary) -> dict[str, Any]:
    return {
        "ok": summary.ok,
        "problems": summary.problems,
        "service": summary.service,
        "embedded": summary.embedded,
        "directory": str(summary.directory),
        "contact_sheet": str(summary.contact_sheet),
        "service_log": None if summary.log is None else str(summary.log),
        "rooms": [
            {
                "stream_id": r.stream_id,
                "title": r.room.title,
                "scene": r.room.scene,
                "width": r.room.size[0],
                "height": r.room.size[1],
                "chosen": None if r.chosen is None else r.chosen.index,
                "cover": r.cover,
                "cover_file": r.cover_file,
                "frames": [
                    {
                        "index": f.index,
                        "label": f.label,
                        "degraded": f.degraded,
                        "file": f.file,
                        "pic_full_url": f.url,
                        "frame_id": f.outcome.get("id"),
                        "status": f.outcome.get("status"),
                        "reason": f.outcome.get("reason"),
                        "selection": f.outcome.get("selection"),
                        "score": f.outcome.get("score"),
                        "metrics": f.outcome.get("metrics"),
                        "is_cover": bool(f.outcome.get("is_cover")),
                    }
                    for f in r.frames
                ],
            }
            for r in summary.rooms
        ],
    }


def to_json(summary: Summary) -> str:
    return json.dumps(to_dict(summary), indent=2)


def format_text(summary: Summary) -> str:
    lines = []
    for r in summary.rooms:
        w, h = r.room.size
        chosen = r.chosen
        lines.append(f"{r.stream_id}  ({r.room.title}, {w}×{h})")
        if r.cover is None or chosen is None:
            lines.append("  no cover")
        else:
            lines.append(
                f"  cover: frame #{chosen.index} ({chosen.label}), frame id {r.cover['frame_id']}, "
                f"version {r.cover['version']}, score {_num(r.cover.get('score'))}"
            )
            medium = r.cover["urls"].get("medium", {})
            for url in medium.values():
                lines.append(f"  {_absolute(url, summary.service)}")
            metrics = r.cover.get("metrics") or {}
            lines.append("  " + "  ".join(f"{k} {_num(v)}" for k, v in metrics.items() if k != "score"))
        counts = Counter(f.outcome.get("status", "?") for f in r.frames)
        lines.append("  frames: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    lines.append(f"contact sheet: {summary.contact_sheet}")
    if summary.embedded:
        lines.append("(the demo's service has stopped: the contact sheet and covers/ keep copies)")
    lines += [f"PROBLEM: {p}" for p in summary.problems]
    if summary.problems and summary.log:
        lines.append(f"service log: {summary.log}")
    return "\n".join(lines)


def _absolute(url: str, base: str) -> str:
    return url if "://" in url else base + url


def _num(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; background: #f4f4f6; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; }
.problems { color: #a00; } .ok { color: #070; }
.room { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.frame { background: #fff; border: 3px solid #ddd; border-radius: 6px; padding: 6px; width: 230px; margin: 0; }
.frame img { max-width: 100%; max-height: 250px; display: block; margin: 0 auto 4px; }
.frame.cover { border-color: #1a8f3a; box-shadow: 0 0 0 3px #bfe8c9; }
.frame.status-rejected, .frame.status-failed { opacity: 0.8; }
.badge { display: inline-block; padding: 1px 6px; border-radius: 4px; font-size: 12px; color: #fff; }
.b-scored { background: #2463b5; } .b-rejected { background: #777; } .b-failed { background: #b52424; }
.b-pending, .b-processing, .b-not-recorded { background: #c98a00; } .b-cover { background: #1a8f3a; }
.degraded { color: #a35200; } .reason { color: #555; font-size: 12px; }
.selection { color: #0b5394; font-size: 12px; }
table.metrics { font-size: 11px; color: #444; border-collapse: collapse; }
table.metrics td { padding: 0 6px 0 0; }
.coverimg { max-width: 320px; border: 3px solid #1a8f3a; border-radius: 6px; }
"""


def contact_sheet(summary: Summary) -> str:
    """One self-contained HTML page; images are relative links into the output directory,
    so it opens from disk after the service is gone."""
    e = html.escape
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8"><title>coverservice demo: contact sheet</title>',
        f"<style>{_STYLE}</style></head><body>",
        "<h1>coverservice demo: contact sheet</h1>",
        (
            f"<p>Service {e(summary.service)}{' (started by the demo)' if summary.embedded else ''}; "
            f"{sum(len(r.frames) for r in summary.rooms)} screenshots of {len(summary.rooms)} rooms. "
            "The frame each room's cover was made from is outlined in green.</p>"
        ),
    ]
    if summary.problems:
        out.append('<ul class="problems">' + "".join(f"<li>{e(p)}</li>" for p in summary.problems) + "</ul>")
    else:
        out.append('<p class="ok">Every room has a cover made from a clean frame.</p>')
    for r in summary.rooms:
        w, h = r.room.size
        out.append(f'<h2 id="{e(r.stream_id)}">{e(r.stream_id)} <small>({e(r.room.title)}, {w}×{h})</small></h2>')
        if r.cover_file and r.cover:
            out.append(
                f'<p>Cover (medium JPEG, version {r.cover["version"]}, score {_num(r.cover.get("score"))}):<br>'
                f'<img class="coverimg" src="{e(r.cover_file)}" alt="cover of {e(r.stream_id)}"></p>'
            )
        out.append(f'<div class="room" data-stream="{e(r.stream_id)}">')
        for f in r.frames:
            status = str(f.outcome.get("status", "not recorded"))
            css = status.replace(" ", "-")
            classes = ["frame", f"status-{css}"] + (["cover"] if f.outcome.get("is_cover") else [])
            label = f'<span class="degraded">{e(f.label)}</span>' if f.degraded else e(f.label)
            metrics = f.outcome.get("metrics") or {}
            rows = "".join(
                f"<tr><td>{e(str(k))}</td><td>{e(_num(v))}</td></tr>" for k, v in metrics.items() if k != "score"
            )
            score = f.outcome.get("score")
            out.append(
                f'<figure class="{" ".join(classes)}" data-index="{f.index}" data-label="{e(f.label)}" '
                f'data-frame-id="{e(str(f.outcome.get("id", "")))}" data-status="{e(status)}">'
                f'<a href="{e(f.file)}"><img src="{e(f.file)}" alt="frame {f.index}" loading="lazy"></a>'
                f"<figcaption>#{f.index} {label} "
                f'<span class="badge b-{e(css)}">{e(status)}</span>'
                + (' <span class="badge b-cover">cover</span>' if f.outcome.get("is_cover") else "")
                + (f"<br>score {_num(score)}" if score is not None else "")
                + f'<div class="reason">{e(str(f.outcome.get("reason") or ""))}</div>'
                + f'<div class="selection">{e(str(f.outcome.get("selection") or ""))}</div>'
                + (f'<table class="metrics">{rows}</table>' if rows else "")
                + "</figcaption></figure>"
            )
        out.append("</div>")
    out.append("</body></html>")
    return "\n".join(out)
