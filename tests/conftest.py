"""Shared fixtures.

Database tests run twice: against SQLite (the embedded default) and against the real
Postgres named by COVERSERVICE_TEST_DATABASE_URL. Postgres databases are cloned from a
template built once per session with ``alembic upgrade head``, so every test starts from
the migrated schema and migrations run on every test session.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from support.s3_server import s3_endpoint, s3_storage  # noqa: F401  (fixtures)

from coverservice import db
from coverservice.settings import Settings
from coverservice.storage import FileStorage

PG_URL = Settings(
    database_url=os.environ.get(
        "COVERSERVICE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
    )
).database_url


def _admin_engine() -> Engine:
    return create_engine(PG_URL, isolation_level="AUTOCOMMIT", poolclass=None)


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    name = f"coverservice_tmpl_{os.getpid()}"
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = db.make_engine(make_url(PG_URL).set(database=name).render_as_string(hide_password=False))
    db.upgrade(engine)
    engine.dispose()
    yield name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    template = request.getfixturevalue("pg_template")
    name = f"coverservice_test_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'coverservice.sqlite3'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = db.make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return db.make_session_factory(engine)


@pytest.fixture
def storage(tmp_path: Path) -> FileStorage:
    return FileStorage(tmp_path / "storage")


@pytest.fixture
def make_settings(database_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a test: its database, a storage directory of its own, downloads from
    loopback allowed. Keyword arguments override."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "storage_url": (tmp_path / "storage").as_uri(),
            "fetch_allowed_hosts": ("127.0.0.1:*",),
            "fetch_allow_private": True,
            "fetch_timeout": 3.0,
            "worker_retry_base": 0.0,
            "worker_retry_max": 0.0,
            "cover_min_interval": 0.0,
        }
        values.update(overrides)
        return Settings(**values)

    return make
