"""Command line: ``coverservice serve | worker | migrate``."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import click
import uvicorn

from . import db
from .settings import ConfigurationError, Settings, load_settings


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@click.group()
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.pass_context
def main(ctx: click.Context, log_level: str) -> None:
    """Live-room covers: the best recent screenshot of every stream."""
    ctx.obj = log_level
    _logging(log_level)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--no-worker", is_flag=True, help="API only; run `coverservice worker` separately.")
@click.pass_obj
def serve(log_level: str, host: str, port: int, no_worker: bool) -> None:
    """Serve the API (with an in-process worker unless --no-worker). Applies migrations."""
    from .app import create_app

    settings = _settings()
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    app = create_app(settings, engine=engine, run_worker=not no_worker)
    uvicorn.run(app, host=host, port=port, log_level=log_level, proxy_headers=False)


@main.command()
def worker() -> None:
    """Process screenshots. Several may run against one Postgres."""
    from .fetch import Fetcher
    from .storage import storage_from_url
    from .worker import Worker

    settings = _settings()
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("signal %d: finishing the current batch", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with Fetcher.from_settings(settings) as fetcher:
        Worker(
            settings,
            session_factory=db.make_session_factory(engine),
            storage=storage_from_url(settings.storage_url),
            fetch=fetcher.fetch,
            name=settings.worker_name or None,
        ).run(stop)


@main.command()
def migrate() -> None:
    """Bring the database schema up to date."""
    settings = _settings()
    db.upgrade(db.make_engine(settings.database_url))
    click.echo("database schema is up to date")


if __name__ == "__main__":
    main()
