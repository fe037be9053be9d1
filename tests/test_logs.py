"""Structured logs: a real `coverservice serve` process logging JSON at debug level while it
handles a signed callback carrying a txSecret, admin calls with a token and a request
that carries secrets in its URL; no secret may appear in any line, and the request id
must appear in every line logged for its request. The formatters and the scrubber are
also checked on their own."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.cos_server import CosServer
from support.images import encode, scene
from support.polling import eventually
from support.servers import ServiceProcess
from test_e2e import service_env

from coverservice import logs
from coverservice.callbacks import sign
from coverservice.settings import ConfigurationError, Settings, load_settings

KEY = "log-test-callback-key-5f2c"
TOKEN = "log-test-admin-token-8e41d0"
AWS_SECRET = "aws-secret-value-0b7e9a1c"
TX_SECRET = "publisher-txsecret-77aa"
SECRETS = (KEY, TOKEN, AWS_SECRET, TX_SECRET)


@pytest.fixture
def cos() -> Iterator[CosServer]:
    with CosServer() as server:
        yield server


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line is one JSON object


def test_a_served_process_logs_json_with_request_ids_and_no_secrets(
    sqlite_url: str, cos: CosServer, tmp_path: Path
) -> None:
    cos.put("/s/1.jpg", encode(scene(640, 360, seed=21)))
    env = service_env(
        sqlite_url, (tmp_path / "covers").as_uri(),
        COVERSERVICE_CALLBACK_KEYS=KEY, COVERSERVICE_ADMIN_TOKENS=f"ops:{TOKEN}",
        COVERSERVICE_LOG_FORMAT="json", COVERSERVICE_LOG_LEVEL="debug", AWS_SECRET_ACCESS_KEY=AWS_SECRET,
    )
    t = int(time.time()) + 600
    body = {
        "event_type": 200, "stream_id": "s", "channel_id": "s", "create_time": int(time.time()),
        "file_size": 1000, "width": 640, "height": 360, "pic_url": "/s/1.jpg", "pic_full_url": cos.url("/s/1.jpg"),
        "stream_param": f"txSecret={TX_SECRET}&txTime=5C2A3F2B", "t": t, "sign": sign(KEY, t),
    }
    admin = {"Authorization": f"Bearer {TOKEN}"}
    with ServiceProcess.serve(env, log_path=tmp_path / "serve.log") as service:
        base = service.base_url
        callback = httpx.post(f"{base}/callbacks/css", json=body, headers={"X-Request-Id": "css-cb-0001"})
        assert callback.status_code == 200 and callback.headers["x-request-id"] == "css-cb-0001"
        eventually(lambda: httpx.get(f"{base}/api/covers/s").status_code == 200)
        frames = httpx.get(f"{base}/admin/streams/s/frames", headers=admin)
        assert frames.status_code == 200
        generated = frames.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated)
        refused = httpx.get(f"{base}/admin/streams", headers={"Authorization": f"Bearer {TOKEN}x"})
        assert refused.status_code == 401
        # A caller's id that could forge a log line or a header is replaced.
        odd = httpx.get(f"{base}/healthz", headers={"X-Request-Id": "a b\tc" + "x" * 200})
        assert re.fullmatch(r"[0-9a-f]{32}", odd.headers["x-request-id"])
        # Secrets in a URL (a misconfigured client) reach the access log only scrubbed.
        stray = httpx.get(f"{base}/healthz", params={"access_token": TOKEN, "key": KEY, "aws": AWS_SECRET,
                                                     "txSecret": TX_SECRET})
        assert stray.status_code == 200
        stray_id = stray.headers["x-request-id"]
    text = service.log()

    for secret in SECRETS:
        assert secret not in text, secret
    entries = json_lines(text)
    by_request: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys()
        if "request_id" in entry:
            by_request.setdefault(entry["request_id"], []).append(entry)

    # Everything logged while handling the callback carries its id: the redacted payload
    # (debug) and the access line.
    callback_lines = by_request["css-cb-0001"]
    payload_line = next(e for e in callback_lines if e["logger"] == "coverservice.app")
    assert "txSecret=REDACTED" in payload_line["message"]
    assert any(e["logger"] == "uvicorn.access" and "POST /callbacks/css" in e["message"] for e in callback_lines)
    assert any(e["logger"] == "uvicorn.access" and "/admin/streams/s/frames" in e["message"]
               for e in by_request[generated])
    stray_access = next(e for e in by_request[stray_id] if e["logger"] == "uvicorn.access")
    assert "access_token=REDACTED" in stray_access["message"]
    # The worker's lines belong to no request.
    cover_lines = [e for e in entries if e["logger"] == "coverservice.worker" and "cover" in e["message"]]
    assert cover_lines and all("request_id" not in e for e in cover_lines)


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError(f"boom with {KEY}")
        except ValueError as error:
            exc_info = (type(error), error, error.__traceback__)
    return logging.LogRecord("coverservice.test", logging.WARNING, __file__, 1, message, args, exc_info)


def test_formatters_carry_the_request_id_and_scrub_secrets() -> None:
    redact = logs.Redactor([KEY, TOKEN])
    token = logs.request_id.set("req-42")
    try:
        line = logs.JsonFormatter(redact).format(record("token %s then %s", TOKEN, "Bearer abc.def", exc=True))
        text = logs.TextFormatter(redact).format(record("push url ?txSecret=%s&txTime=1", TX_SECRET))
    finally:
        logs.request_id.reset(token)
    entry = json.loads(line)
    assert entry["request_id"] == "req-42" and entry["level"] == "warning"
    assert entry["message"] == "token REDACTED then Bearer REDACTED"
    assert "ValueError: boom with REDACTED" in entry["exception"] and KEY not in line
    assert "[req-42]" in text and "txSecret=REDACTED&txTime=1" in text and TX_SECRET not in text
    outside = json.loads(logs.JsonFormatter(redact).format(record("no request")))
    assert "request_id" not in outside


def test_configure_routes_every_logger_through_one_format() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    try:
        logs.configure("json", "warning", secrets=[KEY])
        handler = root.handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)
        logging.getLogger("uvicorn.error").warning("key is %s", KEY)
        logging.getLogger("coverservice.x").info("below the level")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.NOTSET)
    [entry] = json_lines(stream.getvalue())
    assert (entry["logger"], entry["level"], entry["message"]) == ("uvicorn.error", "warning", "key is REDACTED")
    with pytest.raises(ValueError, match="log format"):
        logs.configure("xml", "info")


def test_log_settings_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COVERSERVICE_LOG_FORMAT", "JSON")
    monkeypatch.setenv("COVERSERVICE_LOG_LEVEL", "Debug")
    settings = load_settings()
    assert (settings.log_format, settings.log_level) == ("json", "debug")
    monkeypatch.setenv("COVERSERVICE_LOG_FORMAT", "xml")
    with pytest.raises(ConfigurationError, match="COVERSERVICE_LOG_FORMAT"):
        load_settings()
    monkeypatch.delenv("COVERSERVICE_LOG_FORMAT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    secrets = Settings(callback_keys=(KEY,), admin_tokens=(f"ops:{TOKEN}",)).secret_values()
    assert {KEY, TOKEN, AWS_SECRET} <= set(secrets)
