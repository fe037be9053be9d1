"""A real worker that SIGKILLs itself at a chosen moment: run as a script by the crash
tests, configured like ``coverservice worker`` from ``COVERSERVICE_*`` variables.

    python tests/support/crash_worker.py after-download|after-put|before-commit|poison

- ``after-download``: the screenshot is downloaded, nothing else happened;
- ``after-put``: the first rendition object is in storage, the others are not and the
  database knows of none;
- ``before-commit``: every object is stored and the cover rows are written inside the
  transaction, which is never committed;
- ``poison``: dies whenever it downloads a URL containing ``poison`` (a screenshot that
  crashes its worker every time), and works normally otherwise.

Nothing in the service is changed: the same Worker, fetcher, storage and queries, with
a wrapper around one of them that ends the process the way ``kill -9`` or the kernel's
OOM killer would, with no chance to clean up.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any, NoReturn

from coverservice import db, queries
from coverservice.fetch import Fetcher
from coverservice.settings import load_settings
from coverservice.storage import Storage, storage_from_url
from coverservice.worker import Worker

MODES = ("after-download", "after-put", "before-commit", "poison")


def die() -> NoReturn:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


class KillAfterPut:
    """Storage that dies right after the first object is written."""

    def __init__(self, inner: Storage) -> None:
        self._inner = inner

    def put(self, key: str, data: bytes, *, content_type: str) -> None:
        self._inner.put(key, data, content_type=content_type)
        print(f"crash-worker: stored {key}; dying", flush=True)
        die()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def main(mode: str) -> None:
    settings = load_settings()
    engine = db.make_engine(settings.database_url)
    storage: Storage = storage_from_url(settings.storage_url)
    fetcher = Fetcher.from_settings(settings)

    def fetch(url: str) -> bytes:
        if mode == "poison" and "poison" in url:
            print(f"crash-worker: poison {url}; dying", flush=True)
            die()
        data = fetcher.fetch(url)
        if mode == "after-download":
            print(f"crash-worker: downloaded {len(data)} bytes; dying", flush=True)
            die()
        return data

    if mode == "after-put":
        storage = KillAfterPut(storage)
    if mode == "before-commit":
        install_cover = queries.install_cover

        def install_then_die(session: Any, *args: Any, **kwargs: Any) -> int | None:
            cover_id = install_cover(session, *args, **kwargs)
            session.flush()  # the rows are written; only the COMMIT is missing
            print(f"crash-worker: cover {cover_id} written, not committed; dying", flush=True)
            die()

        queries.install_cover = install_then_die  # this process only

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker = Worker(
        settings,
        session_factory=db.make_session_factory(engine),
        storage=storage,
        fetch=fetch,
        name=settings.worker_name or f"crash-{mode}",
    )
    worker.run(stop)


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in MODES:
        raise SystemExit(f"usage: crash_worker.py {'|'.join(MODES)}")
    main(sys.argv[1])
