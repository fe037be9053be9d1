"""A private Postgres cluster for tests that stop and start the database server: never
the shared one of COVERSERVICE_TEST_DATABASE_URL, which other tests (and other people)
are using.

    with PrivateCluster() as pg:
        url = pg.create_database("test")
        pg.stop(mode="immediate")   # as if the server had crashed
        pg.start()

The cluster lives in a temporary directory owned by the ``postgres`` user (initdb refuses
to run as root), listens on a free loopback port with its socket in that directory, uses
trust authentication, and is stopped and deleted on exit. Needs the Debian server
binaries (``/usr/lib/postgresql/<version>/bin``); ``available()`` says whether they are
there.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg

from .servers import free_port

OWNER = "postgres"


def _bin_dir() -> Path | None:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name.split(".")[0])
    )
    return Path(candidates[-1]) if candidates and (Path(candidates[-1]) / "pg_ctl").exists() else None


def available() -> bool:
    try:
        pwd.getpwnam(OWNER)
    except KeyError:
        return False
    return _bin_dir() is not None and (os.geteuid() != 0 or shutil.which("runuser") is not None)


class PrivateCluster:
    def __init__(self) -> None:
        bin_dir = _bin_dir()
        if bin_dir is None:
            raise RuntimeError("no Postgres server binaries under /usr/lib/postgresql")
        self.bin = bin_dir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="coverservice-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        owner = pwd.getpwnam(OWNER)
        os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        # Loopback only, the socket in our directory; fsync stays on, so what a commit
        # acknowledged survives an immediate stop.
        self._options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c shared_buffers=32MB"

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", OWNER, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=check, cwd=self.root)

    @property
    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30", "-o", self._options, "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: a clean shutdown; ``immediate``: the server processes quit at once and
        the next start runs crash recovery from the WAL."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        try:
            if self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
