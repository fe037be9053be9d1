"""moto's S3-compatible server in a subprocess on a loopback port, and pytest fixtures.

A real HTTP server (not moto's in-process mock) so that S3Storage is tested through the
same path as production: the standard AWS environment, botocore's endpoint resolution,
retries and error parsing over a socket.

Import the fixtures where they are used: ``from support.s3_server import s3_endpoint,
s3_storage``.
"""

from __future__ import annotations

import functools
import http.client
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import pytest

from coverservice.process import free_port
from coverservice.storage import S3Storage, default_s3_client

LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT = 30.0


@contextmanager
def moto_s3_server() -> Iterator[str]:
    """Start ``python -m moto.server`` on a free loopback port, yield its endpoint URL
    once it answers HTTP, and stop that process (and only it) on exit."""
    with tempfile.TemporaryFile() as log:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_until_answering(process, port, log)
            yield f"http://{LOOPBACK}:{port}"
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_answering(process: subprocess.Popen[bytes], port: int, log: IO[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            # Most likely another process took the port between free_port() and bind.
            log.seek(0)
            output = log.read().decode(errors="replace")
            raise RuntimeError(f"moto server exited with {process.returncode}:\n{output}")
        connection = http.client.HTTPConnection(LOOPBACK, port, timeout=1)
        try:
            connection.request("GET", "/")
            connection.getresponse().read()
            return
        except OSError:
            time.sleep(0.1)
        finally:
            connection.close()
    raise RuntimeError(f"moto server did not answer on port {port} in {STARTUP_TIMEOUT:.0f} s")


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of a moto server shared by the session, with the standard AWS
    environment pointing at it (restored afterwards)."""
    with moto_s3_server() as endpoint, pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        # Nothing from the developer's own AWS setup may leak in: no profile, no
        # ~/.aws files (an addressing_style there would change the URLs), no proxy
        # for loopback.
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION"):
            env.delenv(name, raising=False)
        nowhere = tmp_path_factory.mktemp("aws") / "absent"
        env.setenv("AWS_CONFIG_FILE", str(nowhere))
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere))
        env.setenv("NO_PROXY", _with_loopback(os.environ.get("NO_PROXY", "")))
        env.setenv("no_proxy", _with_loopback(os.environ.get("no_proxy", "")))
        yield endpoint


def _with_loopback(no_proxy: str) -> str:
    return ",".join(part for part in (no_proxy, LOOPBACK, "localhost") if part)


@pytest.fixture
def s3_storage(s3_endpoint: str) -> S3Storage:
    """S3Storage on a fresh bucket of its own, objects under the ``covers`` prefix."""
    client = _client_for(s3_endpoint)
    bucket = f"covers-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket)
    return S3Storage(bucket, "covers", client=client)


@functools.cache
def _client_for(endpoint: str) -> Any:
    # Building a client loads botocore's service models (a few hundred ms), so the
    # session's tests share one, made the production way from the environment above.
    return default_s3_client()
