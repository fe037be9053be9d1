"""Command line: ``coverservice serve | worker | migrate | demo | bench | score | bench-quality``."""

from __future__ import annotations

import logging
import pathlib
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING

import click
import uvicorn
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError

from . import db, logs
from .errors import StorageError
from .settings import ConfigurationError, Settings, load_settings

if TYPE_CHECKING:
    from .storage import Storage


def _settings() -> Settings:
    """The settings, and logging as they say (``--log-level`` wins over
    COVERSERVICE_LOG_LEVEL), with every secret they hold scrubbed from the logs."""
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    level = click.get_current_context().obj or settings.log_level
    logs.configure(settings.log_format, level, secrets=settings.secret_values())
    return settings


def _database(settings: Settings) -> Engine:
    """The engine, with the schema brought up to date; a database that cannot be reached
    stops the command with the address and the variable to change (a traceback only at
    --log-level debug)."""
    engine = db.make_engine(settings.database_url)
    try:
        db.upgrade(engine)
    except (OperationalError, InterfaceError) as exc:
        logging.getLogger(__name__).debug("database unreachable", exc_info=True)
        where = make_url(settings.database_url).render_as_string(hide_password=True)
        detail = str(exc.orig if exc.orig is not None else exc).strip().splitlines()[0]
        password = make_url(settings.database_url).password
        if password:
            detail = detail.replace(str(password), "***")
        raise click.ClickException(
            f"cannot reach the database at {where}: {detail}\n"
            "Set COVERSERVICE_DATABASE_URL to a reachable postgresql://user:password@host:port/db "
            "(or sqlite:////absolute/path.sqlite3), and check that the server is running."
        ) from None
    return engine


def _storage(settings: Settings) -> Storage:
    """The storage backend; one that cannot even be set up (incomplete credentials) stops
    the command, one that cannot be reached is logged by name and retried by the work."""
    from .storage import storage_from_url

    try:
        return storage_from_url(settings.storage_url)
    except StorageError as exc:
        logging.getLogger(__name__).debug("storage set-up failed", exc_info=True)
        raise click.ClickException(str(exc)) from None


@click.group()
@click.version_option(package_name="coverservice", message="coverservice %(version)s")
@click.option("--log-level", type=click.Choice(logs.LOG_LEVELS),
              help="Overrides COVERSERVICE_LOG_LEVEL (default info).")
@click.pass_context
def main(ctx: click.Context, log_level: str | None) -> None:
    """Live-room covers: the best recent screenshot of every stream."""
    ctx.obj = log_level
    logs.configure("text", log_level or "info")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--no-worker", is_flag=True, help="API only; run `coverservice worker` separately.")
def serve(host: str, port: int, no_worker: bool) -> None:
    """Serve the API (with an in-process worker unless --no-worker). Applies migrations."""
    from .app import create_app

    settings = _settings()
    engine = _database(settings)
    app = create_app(settings, engine=engine, storage=_storage(settings), run_worker=not no_worker)
    # log_config=None: uvicorn's loggers go through ours (format, request id, scrubbing).
    uvicorn.run(app, host=host, port=port, log_config=None, proxy_headers=False)


@main.command()
@click.option("--metrics-port", type=click.IntRange(0, 65535),
              help="Serve Prometheus metrics on this port (0: any free port, logged). Default: off.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Address for --metrics-port.")
def worker(metrics_port: int | None, metrics_host: str) -> None:
    """Process screenshots. Several may run against one Postgres."""
    import prometheus_client

    from .fetch import Fetcher
    from .metrics import Metrics
    from .storage import check_at_start
    from .worker import Worker

    settings = _settings()
    engine = _database(settings)
    storage = _storage(settings)
    threading.Thread(target=check_at_start, args=(storage,), name="coverservice-storage-check", daemon=True).start()
    sessions = db.make_session_factory(engine)
    metrics = Metrics()
    exporter = None
    if metrics_port is not None:
        metrics.track_queue(sessions, ttl=settings.metrics_queue_ttl)
        exporter, _ = prometheus_client.start_http_server(metrics_port, metrics_host, registry=metrics.registry)
        host, port = exporter.server_address[:2]
        logging.getLogger(__name__).info("metrics on http://%s:%d/metrics", host, port)
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("signal %d: finishing the current batch", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        with Fetcher.from_settings(settings) as fetcher:
            Worker(
                settings,
                session_factory=sessions,
                storage=storage,
                fetch=fetcher.fetch,
                name=settings.worker_name or None,
                metrics=metrics,
            ).run(stop)
    finally:
        if exporter is not None:
            exporter.shutdown()


@main.command()
def migrate() -> None:
    """Bring the database schema up to date."""
    _database(_settings())
    click.echo("database schema is up to date")


@main.command()
@click.option("--duration", type=click.FloatRange(min=0.1), help="Seconds of each throughput window (default 10).")
@click.option("--concurrency", type=click.IntRange(1, 1024), help="Client connections (default 32).")
@click.option("--frames", type=click.IntRange(10), help="Frames through one worker for the memory row (default 10000).")
@click.option("--database-url", help="postgresql://... : a scratch database on that server, dropped at the end "
              "(needed for the workers row). Default: a fresh SQLite file in a temporary directory.")
@click.option("--tiny", is_flag=True, help="A seconds-long run that checks the benchmark itself, not the machine.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
def bench(duration: float | None, concurrency: int | None, frames: int | None,
          database_url: str | None, tiny: bool, as_json: bool) -> None:
    """Measure scoring, ingest, cover GET, freshness, worker scaling and worker memory,
    each against a baseline from the same run. Progress on stderr, report on stdout."""
    import time
    from dataclasses import replace

    from . import bench as benchmark
    from .process import ServiceError

    config = replace(benchmark.TINY if tiny else benchmark.Config(), database_url=database_url)
    if duration is not None:
        config = replace(config, duration=duration)
    if concurrency is not None:
        config = replace(config, concurrency=concurrency)
    if frames is not None:
        config = replace(config, frames=frames)
    try:
        started = time.monotonic()
        report = benchmark.run(
            config, progress=lambda line: click.echo(f"bench {time.monotonic() - started:6.1f}s  {line}", err=True)
        )
    except (benchmark.BenchError, ServiceError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(benchmark.to_json(report) if as_json else benchmark.format_table(report))


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--max-pixels", default=Settings.model_fields["max_image_pixels"].default,
              show_default=True, type=click.IntRange(1), help="Decode cap, as COVERSERVICE_MAX_IMAGE_PIXELS.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file, then the pick.")
@click.option("--detail", is_flag=True, help="Measure the contenders (the best drafts) again by the detail "
              "stage and pick among them. The worker does not: on held-out pictures it picked no better.")
def score(files: tuple[str, ...], max_pixels: int, as_json: bool, detail: bool) -> None:
    """Score screenshots as the worker does: each file's metrics, score and verdict, and
    the one selection would pick as a stream's cover. With --detail, the two-stage
    scorer of docs/quality.md instead."""
    import json
    from datetime import UTC, datetime
    from pathlib import Path

    from . import imaging, scoring
    from .errors import ImageRejected
    from .selection import Candidate, best_of

    now = datetime.now(UTC)
    results: dict[int, scoring.Scores] = {}
    contents: dict[int, bytes] = {}
    refused: dict[int, str] = {}
    for index, name in enumerate(files):
        data = Path(name).read_bytes()
        try:
            results[index] = scoring.score_luma(imaging.decode_luma(data, max_pixels=max_pixels))
            contents[index] = data
        except ImageRejected as exc:
            refused[index] = str(exc)
    usable = [i for i, r in results.items() if not r.rejected]
    for j in scoring.contenders([results[i].score for i in usable],
                                [results[i].noise_factor for i in usable]) if detail else []:
        index = usable[j]
        results[index] = scoring.score_detail(
            results[index], imaging.decode_detail(contents[index], max_pixels=max_pixels)
        )
    for index, name in enumerate(files):
        if index in refused:
            click.echo(json.dumps({"file": name, "rejected": True, "reason": refused[index]}) if as_json
                       else f"{name}: rejected: {refused[index]}")
            continue
        result = results[index]
        if as_json:
            click.echo(json.dumps({"file": name, "rejected": result.rejected, "reason": result.reason,
                                   "metrics": result.metrics()}))
            continue
        verdict = f"rejected: {result.reason}" if result.rejected else result.reason
        click.echo(f"{name}: score {result.score:.3f} ({result.stage}), {verdict}")
        metrics = result.metrics()
        del metrics["score"], metrics["stage"]
        click.echo("  " + "  ".join(f"{key} {value:.3g}" for key, value in metrics.items()
                                    if isinstance(value, float)))
    # Screenshots of one moment: ties go to the later file, as selection prefers newer frames.
    # Detail scores compare with detail scores only: with --detail, the pick is among the
    # contenders.
    stage = "detail" if detail else "draft"
    candidates = [Candidate(i, r.score, now) for i, r in results.items() if not r.rejected and r.stage == stage]
    best = best_of(candidates, now=now)
    pick = None if best is None else files[best]
    if as_json:
        click.echo(json.dumps({"pick": pick}))
    else:
        click.echo(f"would pick: {pick}" if pick else "would pick: none (no usable frame)")


@main.command()
@click.option("--url", help="A running coverservice to use (it must be allowed to download from 127.0.0.1: "
              "COVERSERVICE_FETCH_ALLOWED_HOSTS=127.0.0.1:* and COVERSERVICE_FETCH_ALLOW_PRIVATE=true). "
              "Default: start one on the embedded default, stopped at the end.")
@click.option("--key", default="", help="With --url: the service's callback key (COVERSERVICE_CALLBACK_KEYS).")
@click.option("--admin-token", default="", help="With --url: one of the service's COVERSERVICE_ADMIN_TOKENS "
              "(the demo reads each frame's outcome from the admin API).")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=pathlib.Path),
              help="Output directory: screenshots, covers, contact-sheet.html (and the started service's "
              "database, storage and log). Default: a new temporary directory, kept.")
@click.option("--rooms", default=4, show_default=True, type=click.IntRange(1, 4),
              help="Simulated live rooms: game, talking head, outdoor pan, portrait phone stream.")
@click.option("--frames", default=12, show_default=True, type=click.IntRange(2, 200), help="Screenshots per room.")
@click.option("--interval", default=0.5, show_default=True, type=click.FloatRange(0, 60),
              help="Seconds between a room's screenshots (CSS takes one every 5-10 s).")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds to wait for the last frames to be processed.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (every frame, what the demo "
              "did to it, its outcome, the covers).")
def demo(url: str | None, key: str, admin_token: str, directory: pathlib.Path | None, rooms: int, frames: int,
         interval: float, timeout: float, as_json: bool) -> None:
    """Show the product working: simulated live rooms send signed screenshot callbacks
    (some frames blurred, dark, noisy or black), then each room's cover is printed and an
    HTML contact sheet of every frame is written. Progress on stderr; exit 1 if a room
    gets no cover or a degraded one."""
    import time

    from . import demo as demonstration

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the progress
    config = demonstration.Config(rooms=rooms, frames=frames, interval=interval, timeout=timeout,
                                  directory=directory, url=url, key=key, admin_token=admin_token)
    started = time.monotonic()
    try:
        summary = demonstration.run(
            config, progress=lambda line: click.echo(f"demo {time.monotonic() - started:6.1f}s  {line}", err=True)
        )
    except demonstration.DemoError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(demonstration.to_json(summary) if as_json else demonstration.format_text(summary))
    if not summary.ok:
        more = f" (and {len(summary.problems) - 1} more, above)" if len(summary.problems) > 1 else ""
        raise click.ClickException(summary.problems[0] + more)


@main.command("bench-quality")
@click.option("--tiny", is_flag=True, help="One tuning and one held-out synthetic scene, one window each: "
              "checks the benchmark, not the scorer.")
@click.option("--scenes", help="Comma-separated pictures (default: every one, tuning and held-out).")
@click.option("--sizes", help="Comma-separated frame sizes, e.g. 1280x720,360x640 (default: all five).")
@click.option("--windows", type=click.IntRange(1), help="Windows per picture and size (default 8).")
@click.option("--photos", type=click.Path(file_okay=False, path_type=pathlib.Path),
              help="The shared development photos (default: ../shared/quality-photos beside the repository).")
@click.option("--no-ladders", is_flag=True, help="Skip the graded-severity ladders.")
@click.option("--no-speed", is_flag=True, help="Skip the cost measurement.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON instead of tables.")
def bench_quality(tiny: bool, scenes: str | None, sizes: str | None, windows: int | None,
                  photos: pathlib.Path | None, no_ladders: bool, no_speed: bool, as_json: bool) -> None:
    """Does the scorer pick the frame a person would pick, on pictures it was not tuned on?
    Windows, pairs and graded ladders from tuning and held-out pictures, per degradation
    kind and frame size, beside a variance-of-Laplacian baseline; the draft stage's cost
    against Pillow's draft decode and the detail stage's per contender."""
    import json
    import time
    from dataclasses import replace

    from . import quality_bench

    config = quality_bench.TINY if tiny else quality_bench.Config()
    if scenes:
        config = replace(config, pictures=tuple(s.strip() for s in scenes.split(",") if s.strip()))
    if sizes:
        try:
            parsed = tuple(
                (int(w), int(h)) for w, h in (item.strip().lower().split("x") for item in sizes.split(","))
            )
        except ValueError:
            raise click.BadParameter("sizes are WIDTHxHEIGHT, comma-separated", param_hint="--sizes") from None
        config = replace(config, sizes=parsed)
    if windows is not None:
        config = replace(config, windows=windows)
    if photos is not None:
        config = replace(config, photos=photos)
    if no_ladders:
        config = replace(config, ladders=False)
    if no_speed:
        config = replace(config, speed_frames=0)
    started = time.monotonic()
    try:
        result = quality_bench.run(
            config,
            progress=lambda line: click.echo(f"bench-quality {time.monotonic() - started:6.1f}s  {line}", err=True),
        )
    except quality_bench.BenchError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(quality_bench.to_dict(result), indent=2) if as_json else quality_bench.report(result))


if __name__ == "__main__":
    main()
