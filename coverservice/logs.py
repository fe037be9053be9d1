"""Logging: one line per record, as JSON or text, carrying the id of the HTTP request it
was emitted for, with secrets scrubbed from every line.

The request id lives in a context variable set by ``RequestIdMiddleware``: everything the
request runs (its handler, the threads Starlette hands blocking work to, uvicorn's access
line) logs with it, and nothing else does.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import UTC, datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .callbacks import SECRET_PARAMS

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
REQUEST_ID_HEADER = "x-request-id"

request_id: ContextVar[str | None] = ContextVar("coverservice_request_id", default=None)

# A caller's id is kept only if it is short and plain: it is echoed in a header and
# written to every log line, so it must not be able to forge either.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")

# Attributes every LogRecord has; anything else came in through `extra=` and is logged
# (but not uvicorn's copy of each message with terminal colour codes).
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "color_message"
}
# Libraries that log a line per HTTP request they make: a worker downloads a screenshot
# every few milliseconds, so theirs are shown at debug level only.
_CHATTY = ("httpx", "httpcore")


def request_id_from(header: str | None) -> str:
    """The caller's X-Request-Id if it is sane, else a new one."""
    if header is not None and _SANE_REQUEST_ID.fullmatch(header):
        return header
    return os.urandom(16).hex()  # as random as uuid4().hex, at a fifth of the cost


class RequestIdMiddleware:
    """Give each HTTP request an id (the caller's ``X-Request-Id`` when sane), set it for
    the logs emitted while handling the request and echo it in the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value.decode("latin-1")
                break
        rid = request_id_from(given)
        header = (b"x-request-id", rid.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        token = request_id.set(rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


class Redactor:
    """Scrubs secrets from text: the values of configured secrets (callback keys, admin
    tokens, AWS credentials) wherever they appear, the value of any query parameter that
    authenticates a publisher (``txSecret`` and the rest of ``callbacks.SECRET_PARAMS``),
    and bearer tokens. The last line of defence: code logs no secrets to begin with."""

    MASK = "REDACTED"

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret containing another is masked whole. Very short
        # values would mask ordinary words; settings refuse such keys and tokens anyway.
        values = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)
        self._values = re.compile("|".join(map(re.escape, values))) if values else None
        params = "|".join(sorted(map(re.escape, SECRET_PARAMS)))
        self._params = re.compile(rf"(?i)(\b(?:{params})=)[^&\s\"',;]+")
        self._bearer = re.compile(r"(?i)(\bbearer\s+)[^\s\"',;]+")

    def __call__(self, text: str) -> str:
        if self._values is not None:
            text = self._values.sub(self.MASK, text)
        text = self._params.sub(rf"\g<1>{self.MASK}", text)
        return self._bearer.sub(rf"\g<1>{self.MASK}", text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id (inside a
    request), exception (with a traceback) and any ``extra=`` fields."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self._redact(record.getMessage()),
        }
        rid = request_id.get()
        if rid is not None:
            entry["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in entry:
                entry[key] = value if isinstance(value, int | float | bool) or value is None else self._redact(str(value))
        if record.exc_info:
            entry["exception"] = self._redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = self._redact(record.exc_text)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level logger [request id]: message`` for people reading a terminal."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        rid = request_id.get()
        context = f" [{rid}]" if rid is not None else ""
        line = f"{self.formatTime(record)} {record.levelname} {record.name}{context}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return self._redact(line)


def configure(log_format: str, level: str, *, secrets: Iterable[str] = ()) -> None:
    """Send every logger's records (the service's, uvicorn's, libraries') to stderr in
    ``log_format``, replacing whatever was configured before."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    redact = Redactor(secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(redact) if log_format == "json" else TextFormatter(redact))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's own logging config (if anything applied it) gives its loggers handlers
    # of their own and stops them propagating: take them back.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.NOTSET if level.lower() == "debug" else logging.WARNING)
