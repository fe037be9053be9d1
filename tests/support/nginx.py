"""Debian's nginx as a caching reverse proxy (the CDN) in front of the app, on loopback.

Everything nginx writes (pid, logs, temporary files, the cache) stays in the test's
directory; it runs in the foreground as one process (no daemon, no master), so the test
that starts it stops it by its PID. The cache status and the upstream's status of every
response are in headers and in the access log, which is what the tests read.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx
import pytest

from .servers import free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

# The cache contract an operator deploys, with two test additions: the cache status in a
# response header, and an access log line per request that says whether the origin was
# asked and what it answered. No proxy_cache_valid: the origin's Cache-Control decides.
CONFIG = """\
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;
events {{ worker_connections 256; }}
http {{
    log_format cdn '$request_method $request_uri $status $upstream_cache_status $upstream_status';
    access_log {dir}/access.log cdn;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    proxy_cache_path {dir}/cache levels=1:2 keys_zone=covers:4m max_size=256m inactive=1d use_temp_path=off;

    upstream coverservice {{
        server 127.0.0.1:{upstream};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://coverservice;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_cache covers;
            # After max-age, ask the origin with If-None-Match: a 304 keeps the bytes.
            proxy_cache_revalidate on;
            # Concurrent misses for one URL wait for one origin request.
            proxy_cache_lock on;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}
}}
"""


@dataclass(frozen=True)
class Hit:
    """One access log line."""

    method: str
    uri: str
    status: int
    cache: str  # $upstream_cache_status: MISS, HIT, EXPIRED, REVALIDATED, ... or "-"
    upstream: str  # the origin's status, "-" when it was not asked


class Nginx:
    def __init__(self, upstream_port: int, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.config = self.dir / "nginx.conf"
        self.config.write_text(CONFIG.format(dir=self.dir, upstream=upstream_port, port=self.port))
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        if not os.access(NGINX, os.X_OK):
            pytest.fail(f"no nginx at {NGINX}: apt-get install nginx (scripts/test installs it)")
        # -e: the error log from the first moment, before the config is read (else nginx
        # would open the distribution's /var/log/nginx/error.log); -p: no default prefix.
        args = [NGINX, "-p", str(self.dir), "-e", str(self.dir / "error.log"), "-c", str(self.config)]
        check = subprocess.run([*args, "-t"], check=False, capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx config refused: {check.stderr}")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"{self.base_url}/healthz", timeout=1)
                return self
            except httpx.TransportError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"nginx did not start: {self.error_log()}") from None
                time.sleep(0.02)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # SIGQUIT: graceful shutdown; SIGKILL only if it does not come.
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def error_log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text() if path.exists() else ""

    def hits(self) -> list[Hit]:
        """The access log so far (nginx writes each line when the response is done)."""
        path = self.dir / "access.log"
        if not path.exists():
            return []
        hits = []
        for line in path.read_text().splitlines():
            method, uri, status, cache, upstream = line.split(" ")
            hits.append(Hit(method, uri, int(status), cache, upstream))
        return hits
