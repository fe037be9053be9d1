"""Loopback servers that misbehave in ways the other stand-ins do not.

- ``ConnectionCounter``: an HTTP server that answers slowly and records how many client
  connections were open at once (the download connection cap).
- ``BlackHole``: accepts TCP connections and never answers (a stalled S3 endpoint).
- ``FlakyProxy``: an HTTP reverse proxy in front of another loopback server that fails or
  delays the requests a test picks (S3 errors and slowness in front of moto).

Each starts on construction on 127.0.0.1 and is stopped by its ``stop()`` (or ``with``).
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self

LOOPBACK = "127.0.0.1"


class _Stoppable:
    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10.0

    def log_message(self, format: str, *args: object) -> None:
        pass


# --- connection counting ---------------------------------------------------------------


class ConnectionCounter(_Stoppable):
    """Answers every GET with ``body`` after ``delay`` seconds, over keep-alive
    connections; ``peak`` is the most connections that were open at the same time."""

    def __init__(self, body: bytes, *, delay: float) -> None:
        self.body = body
        self.delay = delay
        self.open = 0
        self.peak = 0
        self.requests = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(_QuietHandler):
            def setup(self) -> None:
                super().setup()
                with owner._lock:
                    owner.open += 1
                    owner.peak = max(owner.peak, owner.open)

            def finish(self) -> None:
                with owner._lock:
                    owner.open -= 1
                super().finish()

            def do_GET(self) -> None:
                with owner._lock:
                    owner.requests += 1
                time.sleep(owner.delay)
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                self.wfile.write(owner.body)

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


# --- a stalled endpoint ------------------------------------------------------------------


class BlackHole(_Stoppable):
    """Accepts connections and never reads or answers."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind((LOOPBACK, 0))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.connections = 0
        self._held: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self._held.append(conn)  # open and silent until stop()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()
        for conn in self._held:
            conn.close()
        self._sock.close()


# --- a flaky reverse proxy ---------------------------------------------------------------


@dataclass
class Fault:
    """What the proxy does to one request: answer ``status`` itself (with an S3-style
    error body), or forward it after ``delay`` seconds."""

    status: int | None = None
    delay: float = 0.0


Rule = Callable[[str, str], Fault | None]  # (method, path) -> fault, or None to pass


class FlakyProxy(_Stoppable):
    """Forwards requests to ``upstream`` (host, port), except those ``rule`` picks.
    ``log`` lists (method, path, status answered) for every request."""

    def __init__(self, upstream: tuple[str, int], rule: Rule | None = None) -> None:
        self.upstream = upstream
        self.rule: Rule = rule or (lambda method, path: None)
        self.log: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(_QuietHandler):
            def _proxy(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = owner.rule(self.command, self.path)
                if fault is not None and fault.delay:
                    time.sleep(fault.delay)
                if fault is not None and fault.status is not None:
                    self._answer(fault.status, _s3_error(fault.status), "application/xml")
                    return
                upstream = http.client.HTTPConnection(*owner.upstream, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                    headers["Host"] = f"{owner.upstream[0]}:{owner.upstream[1]}"
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    self.send_response(response.status)
                    for name, value in response.getheaders():
                        if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                    owner._record(self.command, self.path, response.status)
                finally:
                    upstream.close()

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                owner._record(self.command, self.path, status)

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _proxy

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.log.append((method, path, status))

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _s3_error(status: int) -> bytes:
    code = {500: "InternalError", 503: "SlowDown"}.get(status, "ServiceUnavailable")
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>injected by the test proxy</Message></Error>"
    ).encode()
