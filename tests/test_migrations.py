from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from coverservice import db, models  # noqa: F401  (tables registered on Base.metadata)


def _diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, db.Base.metadata))


def test_migrations_and_models_describe_the_same_schema(engine: Engine) -> None:
    # The fixture database was built by `alembic upgrade head`.
    assert _diff(engine) == []


def test_downgrade_to_base_and_back(engine: Engine) -> None:
    config = db.alembic_config(engine)
    command.downgrade(config, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    db.upgrade(engine)
    assert {"streams", "frames", "covers", "renditions"} <= set(inspect(engine).get_table_names())
    assert _diff(engine) == []


def test_upgrade_is_idempotent(engine: Engine) -> None:
    db.upgrade(engine)
    db.upgrade(engine)
    assert _diff(engine) == []
