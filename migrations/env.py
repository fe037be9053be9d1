"""Alembic environment: runs against the engine the service hands over
(``config.attributes["engine"]``), or one built from COVERSERVICE_DATABASE_URL when
Alembic is run by hand."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from coverservice import models  # noqa: F401  (registers the tables on Base.metadata)
from coverservice.db import Base, make_engine
from coverservice.settings import load_settings

config = context.config


def _engine() -> Engine:
    engine = config.attributes.get("engine")
    if engine is None:
        engine = make_engine(load_settings().database_url)
    return engine


def run_migrations_online() -> None:
    with _engine().connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
            render_as_batch=True,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
