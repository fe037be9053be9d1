"""Selection followed to its end, against the running service: a better frame held back by
the minimum interval becomes the cover when the interval ends, with no further callback,
even when the worker that held it back is killed; and many streams at CSS's pace end on
their clean frames. `coverservice serve` and `coverservice worker` as processes on
loopback, screenshots from a COS stand-in, signed callbacks over HTTP."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session
from support.cos_server import CosServer
from support.images import blurred, degraded, encode, scene
from support.polling import eventually
from support.servers import ServiceProcess
from test_e2e import callback, service_env

from coverservice import imaging, scoring
from coverservice.models import Cover, Frame, Stream
from coverservice.settings import Settings

INTERVAL = 3.0  # COVERSERVICE_COVER_MIN_INTERVAL, scaled down from 15 s
POLL = 0.05  # COVERSERVICE_WORKER_POLL_INTERVAL


@pytest.fixture
def cos() -> Iterator[CosServer]:
    with CosServer() as server:
        yield server


class Db:
    def __init__(self, url: str) -> None:
        self.engine = create_engine(Settings(database_url=url).database_url)

    def frame(self, stream: str, path: str) -> Frame | None:
        with Session(self.engine) as s:
            return s.scalars(select(Frame).where(Frame.stream_id == stream, Frame.pic_url == path)).one_or_none()

    def cover(self, stream: str) -> Cover | None:
        with Session(self.engine) as s:
            cover_id = s.scalar(select(Stream.cover_id).where(Stream.id == stream))
            return None if cover_id is None else s.get(Cover, cover_id)

    def cover_frames(self) -> dict[str, int | None]:
        with Session(self.engine) as s:
            rows = s.execute(select(Stream.id, Cover.frame_id).join(Cover, Cover.id == Stream.cover_id)).all()
        return {r[0]: r[1] for r in rows}


@pytest.fixture
def database(database_url: str) -> Iterator[Db]:
    db = Db(database_url)
    yield db
    db.engine.dispose()


def send(service: ServiceProcess, cos: CosServer, stream: str, path: str, image: Image.Image, **changes: Any) -> None:
    cos.put(path, encode(image))
    body = callback(cos, stream, path, width=image.width, height=image.height, **changes)
    response = httpx.post(f"{service.base_url}/callbacks/css", json=body)
    assert response.status_code == 200 and response.json() == {"code": 0}, response.text


def held_back(database: Db, stream: str, path: str) -> Frame | None:
    row = database.frame(stream, path)
    return row if row is not None and (row.selection or "").startswith("held back until") else None


def env(database_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return service_env(database_url, (tmp_path / "covers").as_uri(), **{
        "COVERSERVICE_COVER_MIN_INTERVAL": str(INTERVAL), "COVERSERVICE_COVER_PROVISIONAL": "0",
        "COVERSERVICE_WORKER_POLL_INTERVAL": str(POLL), **extra,
    })


def blurry_then_sharp(service: ServiceProcess, cos: CosServer, database: Db, stream: str) -> tuple[int, datetime]:
    """Send a blurry frame, then (once it is the cover) a sharp one, then nothing. Returns
    the sharp frame and when the blurry cover was installed."""
    base = scene(1280, 720, seed=21)
    send(service, cos, stream, f"/{stream}/blurry.jpg", blurred(base, 5))
    first = eventually(lambda: database.cover(stream))
    send(service, cos, stream, f"/{stream}/sharp.jpg", base, create_time=int(time.time()) + 1)
    sharp = eventually(lambda: held_back(database, stream, f"/{stream}/sharp.jpg"))
    cover = database.cover(stream)
    assert cover is not None and cover.id == first.id  # held back: the cover changed < INTERVAL ago
    return sharp.id, first.created_at


def test_blurry_then_sharp_then_silence_ends_on_the_sharp_frame(
    cos: CosServer, database: Db, database_url: str, tmp_path: Path
) -> None:
    with ServiceProcess.serve(env(database_url, tmp_path), log_path=tmp_path / "serve.log") as service:
        sharp, installed = blurry_then_sharp(service, cos, database, "quiet")
        cover = eventually(lambda: (c := database.cover("quiet")) is not None and c.frame_id == sharp and c,
                           timeout=INTERVAL + 10)
    # Within the interval and one worker poll (and the render) of the blurry cover's
    # installation: not when some later frame arrives, as none does.
    waited = (cover.created_at - installed).total_seconds()
    assert INTERVAL <= waited < INTERVAL + POLL + 2.0, waited
    row = database.frame("quiet", "/quiet/sharp.jpg")
    assert row is not None
    assert (row.selection or "").startswith("became the cover: score"), row.selection


def test_a_held_back_frame_survives_its_worker_being_killed(
    cos: CosServer, database: Db, database_url: str, tmp_path: Path
) -> None:
    variables = env(database_url, tmp_path)
    with ServiceProcess.serve(variables, log_path=tmp_path / "serve.log", worker=False) as service:
        first = ServiceProcess(["worker"], {**variables, "COVERSERVICE_WORKER_NAME": "first"},
                               log_path=tmp_path / "first.log").start()
        try:
            sharp, installed = blurry_then_sharp(service, cos, database, "killed")
        finally:
            first.kill()  # SIGKILL: no chance to finish anything
        # Let the due time pass with no worker running at all.
        time.sleep(max(0.0, INTERVAL + 0.5 - (datetime.now(installed.tzinfo) - installed).total_seconds()))
        cover = database.cover("killed")
        assert cover is not None and cover.frame_id != sharp
        with ServiceProcess(["worker"], {**variables, "COVERSERVICE_WORKER_NAME": "second"},
                            log_path=tmp_path / "second.log"):
            eventually(lambda: (c := database.cover("killed")) is not None and c.frame_id == sharp, timeout=15)


def test_streams_at_css_pace_end_on_their_clean_frames(
    cos: CosServer, database: Db, database_url: str, tmp_path: Path
) -> None:
    """Streams sending a screenshot every 5 s (here 0.5 s, with the interval and the
    provisional period scaled alike), six each, one clean at a random place among them."""
    pace, streams, count = 0.5, 20, 6
    rng = random.Random(7)
    kinds = [("gaussian", 6.0, ""), ("under", 0.15, ""), ("over", 3.0, ""), ("haze", 0.7, ""),
             ("noise", 24.0, ""), ("blocks", 6.0, ""), ("black", 0.0, "dim")]
    plan: dict[str, list[tuple[str, Image.Image]]] = {}
    for s in range(streams):
        base = scene(640, 360, seed=100 + s)
        clean_at = rng.randrange(count)
        frames = []
        for i in range(count):
            family, strength, kind = rng.choice(kinds)
            frames.append(("clean", base) if i == clean_at else (family, degraded(base, family, strength, kind)))
        plan[f"room{s}"] = frames
        # The premise: the scorer alone ranks the clean frame first.
        scores = [scoring.score_luma(imaging.decode_luma(encode(img), max_pixels=1 << 26)) for _, img in frames]
        assert max(range(count), key=lambda i: scores[i].score) == clean_at

    variables = env(database_url, tmp_path, COVERSERVICE_COVER_MIN_INTERVAL=str(15 * pace / 5),
                    COVERSERVICE_COVER_PROVISIONAL=str(10 * pace / 5))
    with ServiceProcess.serve(variables, log_path=tmp_path / "serve.log") as service:
        started = time.time()
        for i in range(count):
            time.sleep(max(0.0, started + i * pace - time.time()))
            for stream, frames in plan.items():
                name, image = frames[i]
                send(service, cos, stream, f"/{stream}/{i}-{name}.jpg", image, create_time=int(started) + i)
        clean: dict[str, int | None] = {}
        for stream, frames in plan.items():
            path = f"/{stream}/{[name for name, _ in frames].index('clean')}-clean.jpg"
            clean[stream] = eventually(partial(database.frame, stream, path)).id

        def on_clean() -> bool:
            return database.cover_frames() == clean

        eventually(on_clean, timeout=30)
