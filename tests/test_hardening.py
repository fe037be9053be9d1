"""Hostile callbacks and hostile download hosts: what issue 5 lists beyond the module
tests. The app runs under uvicorn on a loopback port, with a real fetcher and a worker
that can be drained, on SQLite and Postgres."""

from __future__ import annotations

import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from support.cos_server import CosServer
from support.hostile import ConnectionCounter
from support.images import scene_jpeg
from support.servers import ThreadedServer

from coverservice import callbacks
from coverservice.app import create_app
from coverservice.callbacks import sign
from coverservice.errors import FetchError, SignatureRejected
from coverservice.fetch import Fetcher
from coverservice.models import Frame
from coverservice.settings import Settings
from coverservice.storage import FileStorage
from coverservice.worker import Worker

KEY = "current-key"
OLD_KEY = "retired-key"


@dataclass
class Service:
    http: httpx.Client
    cos: CosServer
    worker: Worker
    sessions: sessionmaker[Session]

    def body(self, stream: str = "room", path: str = "/room/1.jpg", *, t: int | None = None,
             key: str = KEY, **changes: Any) -> dict[str, Any]:
        t = t if t is not None else int(time.time()) + 600
        body: dict[str, Any] = {
            "event_type": 200, "stream_id": stream, "channel_id": stream,
            "create_time": int(time.time()) - 1, "file_size": 1000, "width": 1280, "height": 720,
            "pic_url": path, "pic_full_url": self.cos.url(path), "t": t, "sign": sign(key, t),
        }
        body.update(changes)
        return body

    def post(self, body: dict[str, Any] | bytes) -> httpx.Response:
        if isinstance(body, bytes):
            return self.http.post("/callbacks/css", content=body, headers={"content-type": "application/json"})
        return self.http.post("/callbacks/css", json=body)

    def frames(self) -> list[Frame]:
        with self.sessions() as s:
            return list(s.scalars(select(Frame).order_by(Frame.id)))


@pytest.fixture
def service(
    make_settings: Callable[..., Settings], engine: Engine, sessions: sessionmaker[Session], storage: FileStorage
) -> Iterator[Service]:
    settings = make_settings(callback_keys=(KEY,), cover_cache_ttl=0.0)
    with CosServer() as cos, Fetcher.from_settings(settings) as fetcher:
        app = create_app(settings, engine=engine, storage=storage, fetch=fetcher.fetch)
        worker = Worker(settings, session_factory=sessions, storage=storage, fetch=fetcher.fetch, name="w")
        with ThreadedServer(app) as server, httpx.Client(base_url=server.base_url, timeout=10) as http:
            yield Service(http, cos, worker, sessions)


# --- signatures ------------------------------------------------------------------------------


def test_every_configured_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # No early exit and no ==: timing says neither whether nor which key matched.
    calls: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)  # what callbacks.py calls
    now = time.time()
    t = int(now) + 600
    keys = ("first", "second", "third")
    for given, accepted in ((sign("first", t), True), (sign("third", t), True), ("0" * 32, False)):
        calls.clear()
        payload = {"t": t, "sign": given}
        if accepted:
            callbacks.verify_signature(payload, keys=keys, now=now, max_validity=86_400)
        else:
            with pytest.raises(SignatureRejected):
                callbacks.verify_signature(payload, keys=keys, now=now, max_validity=86_400)
        assert len(calls) == len(keys)


REFUSED_SIGNATURES: dict[str, dict[str, Any]] = {
    "t-word": {"t": "in-the-future"},
    "t-exponent": {"t": "1e12"},
    "t-hex": {"t": "0x7fffffff"},
    "t-plus": {"t": "+1999999999"},
    "t-float": {"t": 1.9e9},
    "t-null": {"t": None},
    "sign-null": {"sign": None},
    "sign-list": {"sign": ["a"]},
    "sign-uppercase": {"sign": "upper"},
    "expired": {"t_offset": -1},
    "far-future": {"t_offset": 86_400 + 3600},
    "removed-key": {"key": OLD_KEY},  # the key a rotation retired
}


def test_refused_signatures_store_nothing_and_fetch_nothing(service: Service) -> None:
    service.cos.put("/room/1.jpg", scene_jpeg(640, 360))
    answers = {}
    for name, case in REFUSED_SIGNATURES.items():
        changes = dict(case)
        body = service.body(
            t=int(time.time()) + changes.pop("t_offset", 600), key=changes.pop("key", KEY)
        )
        if changes.get("sign") == "upper":
            changes["sign"] = body["sign"].upper()
        body.update(changes)
        response = service.post(body)
        answers[name] = (response.status_code, response.json().get("error"))
    assert answers == {name: (403, "signature_rejected") for name in REFUSED_SIGNATURES}
    assert service.frames() == []
    assert service.worker.drain() == 0
    assert service.cos.total_requests == 0


# --- dedupe --------------------------------------------------------------------------------------


def test_screenshots_sharing_t_and_sign_are_all_kept(service: Service) -> None:
    # CSS signs with the expiry time only: every callback of the same second carries the
    # same t and sign. Deduping on them would drop real screenshots.
    t = int(time.time()) + 600
    bodies = [
        service.body("room", "/room/a.jpg", t=t),
        service.body("room", "/room/b.jpg", t=t),
        service.body("other", "/room/a.jpg", t=t),
    ]
    assert len({(b["t"], b["sign"]) for b in bodies}) == 1
    for body in bodies:
        assert service.post(body).json() == {"code": 0}
    assert sorted((f.stream_id, f.pic_url) for f in service.frames()) == [
        ("other", "/room/a.jpg"), ("room", "/room/a.jpg"), ("room", "/room/b.jpg"),
    ]


def test_a_css_retry_is_recorded_once_even_when_it_races_the_original(service: Service) -> None:
    body = service.body("room", "/room/retry.jpg")
    # CSS's retry two minutes later: same body fields, a new t and sign.
    later = service.body("room", "/room/retry.jpg", t=body["t"] + 120)
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda b: service.post(b).status_code, [body] * 6 + [later] * 6))
    assert statuses == [200] * 12
    [frame] = service.frames()
    assert frame.pic_url == "/room/retry.jpg"


# --- bodies --------------------------------------------------------------------------------------


REFUSED, ACCEPTED = 400, 200

HOSTILE_BODIES: dict[str, tuple[Callable[[dict[str, Any]], bytes], int]] = {
    "deep-arrays": (lambda b: b"[" * 30_000 + b"]" * 30_000, REFUSED),
    "deep-objects": (lambda b: b'{"a":' * 10_000 + b"1" + b"}" * 10_000, REFUSED),
    # past Python's 4300-digit int conversion limit: json.loads raises a bare ValueError
    "long-integer": (lambda b: json.dumps(b).encode().replace(b'"width": 1280', b'"width": ' + b"9" * 5000), REFUSED),
    "infinite-float": (lambda b: json.dumps(b).encode().replace(b'"width": 1280', b'"width": 1e999'), REFUSED),
    "huge-count": (lambda b: json.dumps({**b, "file_size": 2**64}).encode(), REFUSED),
    "long-string": (lambda b: json.dumps({**b, "pic_full_url": "http://x/" + "a" * 50_000}).encode(), REFUSED),
    "nul-in-id": (lambda b: json.dumps({**b, "stream_id": "room\u0000"}).encode(), REFUSED),
    "surrogate-in-id": (lambda b: json.dumps(b).encode().replace(b'"room"', b'"\\ud800"'), REFUSED),
    "surrogate-in-channel": (lambda b: json.dumps({**b, "channel_id": "ch\ud800"}).encode(), REFUSED),
    "surrogate-in-path": (lambda b: json.dumps({**b, "pic_url": "/a\udfff.jpg"}).encode(), REFUSED),
    "nul-in-path": (lambda b: json.dumps({**b, "pic_url": "/a\u0000.jpg"}).encode(), REFUSED),
    "duplicate-keys": (lambda b: json.dumps(b).encode().replace(b'"width": 1280', b'"width": 1280, "width": "x"'), REFUSED),
    "nan": (lambda b: b"NaN", REFUSED),
    # Unknown fields are kept as received (redacted): harmless, whatever they hold.
    "many-keys": (lambda b: json.dumps({**{f"k{i}": i for i in range(4000)}, **b}).encode(), ACCEPTED),
    "surrogate-in-extra": (lambda b: json.dumps({**b, "note": "\udbff"}).encode(), ACCEPTED),
    "nul-in-extra": (lambda b: json.dumps({**b, "note": {"nested": ["nul\u0000"]}}).encode(), ACCEPTED),
    "bom": (lambda b: b"\xef\xbb\xbf" + json.dumps(b).encode(), ACCEPTED),
}


def test_hostile_json_is_refused_or_harmless_never_a_5xx(service: Service) -> None:
    answers, expected = {}, {}
    for name, (make_body, status) in HOSTILE_BODIES.items():
        body = make_body(service.body(path=f"/room/{name}.jpg"))
        assert len(body) <= 65_536, name
        response = service.post(body)
        answers[name], expected[name] = response.status_code, status
    assert answers == expected
    assert len(service.frames()) == list(expected.values()).count(ACCEPTED)
    # Still answering, and a good callback after them all is recorded.
    assert service.post(service.body("after", "/after.jpg")).status_code == 200


def test_an_oversized_body_is_refused_before_it_is_parsed(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[bytes] = []
    real_parse = callbacks.parse_callback

    def spy(body: bytes, **kwargs: Any) -> Any:
        parsed.append(body)
        return real_parse(body, **kwargs)

    monkeypatch.setattr(callbacks, "parse_callback", spy)
    big = json.dumps({**service.body(), "pad": "x" * 70_000}).encode()

    declared = service.post(big)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap is on what arrives
        for _ in range(64):
            yield b" " * 16_384

    streamed = service.http.post("/callbacks/css", content=chunks(), headers={"content-type": "application/json"})

    assert (declared.status_code, streamed.status_code) == (413, 413)
    assert parsed == []
    assert service.post(service.body()).status_code == 200 and len(parsed) == 1  # the spy works


# --- downloads ----------------------------------------------------------------------------------


def test_downloads_never_open_more_connections_than_the_cap() -> None:
    with ConnectionCounter(b"\xff\xd8\xff" + bytes(1000), delay=0.2) as server:
        with Fetcher(
            allowed_hosts=["127.0.0.1:*"], allow_private=True, max_bytes=10_000,
            timeout=10, connect_timeout=2, max_connections=2,
        ) as fetcher, ThreadPoolExecutor(8) as pool:
            bodies = list(pool.map(lambda i: fetcher.fetch(server.url(f"/{i}.jpg")), range(8)))
        assert len(bodies) == 8 and server.requests == 8
        assert server.peak == 2

        # The same load without the cap does open more: the measurement can see it.
        with Fetcher(
            allowed_hosts=["127.0.0.1:*"], allow_private=True, max_bytes=10_000,
            timeout=10, connect_timeout=2, max_connections=16,
        ) as fetcher, ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: fetcher.fetch(server.url(f"/{i}.jpg")), range(8)))
        assert server.peak > 2


def test_a_stalled_dns_lookup_is_bounded_by_the_download_deadline() -> None:
    release = threading.Event()

    def stalled(host: str, port: int) -> list[str]:
        release.wait(30)  # a DNS server that never answers: getaddrinfo's own retries
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    with Fetcher(
        allowed_hosts=["cos.test:*"], allow_private=True, max_bytes=10_000,
        timeout=1.0, connect_timeout=0.5, resolver=stalled,
    ) as fetcher:
        started = time.monotonic()
        with pytest.raises(FetchError) as caught:
            fetcher.fetch("http://cos.test:9000/s.jpg")
        elapsed = time.monotonic() - started
    release.set()
    assert elapsed < 1.5
    assert caught.value.transient is True
    assert "cos.test:9000" in str(caught.value)


def test_an_endless_header_block_is_cut_off() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def flood() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65_536)
                try:
                    conn.sendall(b"HTTP/1.1 200 OK\r\n")
                    for i in range(100_000):
                        conn.sendall(b"X-Junk-%d: %s\r\n" % (i, b"a" * 100))
                except OSError:
                    pass  # the client hung up, as it should

        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        with Fetcher(
            allowed_hosts=["127.0.0.1:*"], allow_private=True, max_bytes=10_000,
            timeout=5.0, connect_timeout=1.0,
        ) as fetcher:
            started = time.monotonic()
            with pytest.raises(FetchError):
                fetcher.fetch(f"http://127.0.0.1:{port}/s.jpg")
            assert time.monotonic() - started < 2.0
        thread.join(timeout=5)


# --- admin parameters --------------------------------------------------------------------------


def test_hostile_admin_parameters_are_4xx_never_5xx(
    make_settings: Callable[..., Settings], engine: Engine, storage: FileStorage
) -> None:
    token = "admin-0123456789abcdef"
    settings = make_settings(admin_tokens=(f"alice:{token}",))
    app = create_app(settings, engine=engine, storage=storage, fetch=lambda url: scene_jpeg(320, 180))
    auth = {"authorization": f"Bearer {token}"}
    requests = {
        # Postgres refuses a NUL byte in a text parameter outright (a DataError, once a 500).
        "after-nul": ("GET", "/admin/streams?after=%00", None),
        "after-surrogate": ("GET", "/admin/streams?after=%ED%A0%80", None),
        "after-long": ("GET", "/admin/streams?after=" + "a" * 5000, None),
        "limit-negative": ("GET", "/admin/streams?limit=-1", None),
        "limit-huge": ("GET", "/admin/streams?limit=" + "9" * 40, None),
        "frame-huge": ("POST", "/admin/frames/" + "9" * 40 + "/block", None),
        "frame-nul": ("GET", "/admin/frames/1%00/thumbnail", None),
        "stream-nul": ("GET", "/admin/streams/a%00b/frames", None),
        # A frame id past a bigint overflowed SQLite's driver (once a 500).
        "pin-huge": ("POST", "/admin/covers/room/pin", b'{"frame_id": 18446744073709551616}'),
        "pin-negative": ("POST", "/admin/covers/room/pin", b'{"frame_id": -1}'),
        "pin-float": ("POST", "/admin/covers/room/pin", b'{"frame_id": 1.5}'),
        "pin-nested": ("POST", "/admin/covers/room/pin", b"[" * 3000 + b"]" * 3000),
        "upload-garbage": ("PUT", "/admin/covers/room", b"\x89PNG\r\n\x1a\n" + bytes(100)),
    }
    with ThreadedServer(app) as server, httpx.Client(base_url=server.base_url, headers=auth) as http:
        answers = {
            name: http.request(method, path, content=body).status_code
            for name, (method, path, body) in requests.items()
        }
    assert all(400 <= status < 500 for status in answers.values()), answers
