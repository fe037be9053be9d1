"""A stand-in for COS: a real HTTP/1.1 server on a loopback port, in threads, serving the
objects a test puts into it, honestly or with the misbehaviour the test asks for (a status,
a lying or absent Content-Length, a slow drip, a stall, a redirect).

    with CosServer() as cos:
        cos.put("/shot.jpg", jpeg)
        fetcher.fetch(cos.url("/shot.jpg?sign=abc"))
        assert cos.requests["/shot.jpg"] == 1

Requests are counted before anything is answered, and connections when accepted, so a
test can assert that a refused download never reached the server.
"""

from __future__ import annotations

import io
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlsplit

Framing = Literal["length", "chunked", "close"]
_Request = socket.socket | tuple[bytes, socket.socket]  # socketserver's request type

LOOPBACK = "127.0.0.1"
CHUNK = 16 * 1024


@dataclass(frozen=True)
class Resource:
    body: bytes
    content_type: str | None = "image/jpeg"
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    # "length": Content-Length; "chunked": Transfer-Encoding: chunked; "close": neither,
    # the body ends when the server closes the connection.
    framing: Framing = "length"
    # Sent instead of the true length when set (with any framing, to make it lie).
    content_length: int | None = None
    # Seconds between single bytes of the body, or of the whole response with drip_headers.
    drip: float | None = None
    drip_headers: bool = False
    # Seconds to hold the connection open after the body, without ending it.
    stall: float | None = None


class CosServer:
    """Starts serving on construction; ``stop()`` (or leaving the ``with`` block) closes
    every connection and joins every thread."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.host = LOOPBACK
        self.scheme = "https" if ssl_context is not None else "http"
        self.requests: Counter[str] = Counter()  # path (without the query) -> count
        self.targets: list[str] = []  # request targets as sent, query included
        self.headers: list[dict[str, str]] = []  # each request's, names lower-cased
        self.connections = 0
        self._resources: dict[str, Resource] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._open: set[socket.socket] = set()
        self._server = _Server(self, ssl_context)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def put(
        self,
        path: str,
        data: bytes,
        content_type: str | None = "image/jpeg",
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        framing: Framing = "length",
        content_length: int | None = None,
        drip: float | None = None,
        drip_headers: bool = False,
        stall: float | None = None,
    ) -> None:
        resource = Resource(
            data,
            content_type,
            status,
            tuple((headers or {}).items()),
            framing,
            content_length,
            drip,
            drip_headers,
            stall,
        )
        with self._lock:
            self._resources[path] = resource

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.put(path, b"", None, status=status, headers={"Location": location})

    def remove(self, path: str) -> None:
        with self._lock:
            self._resources.pop(path, None)

    def url(self, path: str, *, host: str | None = None) -> str:
        """The URL of ``path`` here; ``host`` names it differently (a test resolver maps the
        name back to this server)."""
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    @property
    def total_requests(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    def stop(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
            still_open = list(self._open)
        self._server.shutdown()
        for conn in still_open:
            # Wakes handler threads blocked reading a kept-alive connection.
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()  # joins the handler threads
        self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # --- called from the server's threads ----------------------------------------------

    def _accepted(self) -> bool:
        with self._lock:
            if self._stopping.is_set():
                return False
            self.connections += 1
            return True

    def _opened(self, conn: socket.socket) -> bool:
        with self._lock:
            if self._stopping.is_set():
                return False
            self._open.add(conn)
            return True

    def _closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._open.discard(conn)

    def _respond(self, handler: _Handler) -> None:
        path = urlsplit(handler.path).path
        with self._lock:
            self.requests[path] += 1
            self.targets.append(handler.path)
            self.headers.append({name.lower(): value for name, value in handler.headers.items()})
            resource = self._resources.get(path)
        if resource is None:
            resource = Resource(b"not found\n", "text/plain", status=404)
        try:
            self._write(handler, resource)
        except OSError:
            handler.close_connection = True  # the client went away: expected in tests

    def _write(self, handler: _Handler, resource: Resource) -> None:
        body = resource.body
        if resource.framing == "chunked":
            pieces = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]
            body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
            ending = b"0\r\n\r\n"
        else:
            ending = b""

        status = HTTPStatus(resource.status)
        lines = [f"HTTP/1.1 {status.value} {status.phrase}"]
        if resource.content_type is not None:
            lines.append(f"Content-Type: {resource.content_type}")
        length = resource.content_length
        if length is None and resource.framing == "length":
            length = len(resource.body)
        if length is not None:
            lines.append(f"Content-Length: {length}")
        if resource.framing == "chunked":
            lines.append("Transfer-Encoding: chunked")
        if resource.framing == "close":
            lines.append("Connection: close")
            handler.close_connection = True
        lines.extend(f"{name}: {value}" for name, value in resource.headers)
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

        out = handler.wfile
        if resource.drip is not None and resource.drip_headers:
            self._drip(out, head + body, resource.drip)
        elif resource.drip is not None:
            out.write(head)
            self._drip(out, body, resource.drip)
        else:
            out.write(head if handler.command == "HEAD" else head + body)
        if resource.stall is not None and self._stopping.wait(resource.stall):
            handler.close_connection = True
            return
        out.write(ending)
        out.flush()

    def _drip(self, out: io.BufferedIOBase, data: bytes, interval: float) -> None:
        for i in range(len(data)):
            out.write(data[i : i + 1])
            if self._stopping.wait(interval):
                raise ConnectionAbortedError("server stopping")


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True

    def __init__(self, owner: CosServer, ssl_context: ssl.SSLContext | None) -> None:
        self.owner = owner
        self.ssl_context = ssl_context
        super().__init__((LOOPBACK, 0), _Handler)

    def verify_request(self, request: _Request, client_address: Any) -> bool:
        return self.owner._accepted()  # in the accepting thread, before any byte is read

    def finish_request(self, request: _Request, client_address: Any) -> None:
        assert isinstance(request, socket.socket)
        conn = request
        try:
            if self.ssl_context is not None:
                request.settimeout(_Handler.timeout)
                # The handshake runs here, in the connection's thread, not in accept().
                conn = self.ssl_context.wrap_socket(request, server_side=True)
        except OSError:
            return  # the client refused our certificate: a case tests provoke
        if not self.owner._opened(conn):
            return
        try:
            _Handler(conn, client_address, self)
        finally:
            self.owner._closed(conn)
            if conn is not request:
                conn.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10.0  # a forgotten keep-alive connection cannot hold stop() for longer
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Head and body go out in one write, but the chunk terminator after a stall is a
        # second small one: without this, Nagle holds it for the client's delayed ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self.server.owner._respond(self)

    def do_HEAD(self) -> None:
        self.server.owner._respond(self)

    def log_message(self, format: str, *args: object) -> None:
        pass  # tests read .requests, not stderr
