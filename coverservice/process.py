"""``coverservice`` commands in subprocesses on loopback ports, started and stopped by PID:
the servers and workers of ``coverservice bench`` and ``coverservice demo``, and of the
test suite's end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Self

import httpx

LOOPBACK = "127.0.0.1"
HEALTHY_WITHIN = 60.0  # seconds for `serve` to answer /healthz (migrations run first)


class ServiceError(Exception):
    """The process exited early or never became healthy; the message ends with its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class ServiceProcess:
    """``coverservice <args>`` with the given environment: the caller's own variables
    minus every ``COVERSERVICE_*`` one, so only what ``env`` says configures it. With a
    ``port`` (see ``serve``) starting waits until ``/healthz`` answers."""

    def __init__(
        self,
        args: list[str],
        env: Mapping[str, str],
        *,
        log_path: Path,
        port: int | None = None,
        cwd: Path | None = None,
        log_level: str | None = None,
    ) -> None:
        self.args = args
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("COVERSERVICE_")}, **env}
        self.log_path = log_path
        self.port = port
        self.cwd = cwd
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def serve(
        cls,
        env: Mapping[str, str],
        *,
        log_path: Path,
        worker: bool = True,
        cwd: Path | None = None,
        log_level: str | None = None,
    ) -> ServiceProcess:
        port = free_port()
        args = ["serve", "--host", LOOPBACK, "--port", str(port), *([] if worker else ["--no-worker"])]
        return cls(args, env, log_path=log_path, port=port, cwd=cwd, log_level=log_level)

    @property
    def base_url(self) -> str:
        assert self.port is not None
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        assert self.proc is not None
        return self.proc.poll()

    def start(self) -> Self:
        level = ["--log-level", self.log_level] if self.log_level else []
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "coverservice", *level, *self.args],
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if self.port is not None:
            try:
                self._wait_healthy()
            except BaseException:
                self.stop()
                raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + HEALTHY_WITHIN
        while time.monotonic() < deadline:
            if self.returncode is not None:
                raise ServiceError(f"coverservice {self.args[0]} exited early:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise ServiceError(f"coverservice {self.args[0]} did not become healthy:\n{self.log_tail()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)  # type: ignore[union-attr]

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it has not exited within 20 s; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
