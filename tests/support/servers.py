"""Run the service for tests on real loopback sockets: in a thread (to hand the app its
test doubles) or as `coverservice` processes (``ServiceProcess``, to test the shipped
command), always stopped by the test that started them."""

from __future__ import annotations

import socket
import threading
import time
from typing import Self

import uvicorn
from starlette.types import ASGIApp

# The shipped commands' own process runner (bench and demo use it too).
from coverservice.process import ServiceProcess, free_port

__all__ = ["ServiceProcess", "ThreadedServer", "free_port"]


class ThreadedServer:
    """uvicorn serving an app object on 127.0.0.1, in a background thread."""

    def __init__(self, app: ASGIApp) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
        self._sock.close()
