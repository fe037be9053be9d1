"""``coverservice bench``: the service measured the way an operator sizing a deployment
would measure it, each figure as a ratio against a baseline taken in the same run
(absolute numbers on a shared machine are noise; ratios hold).

What runs where:

- scoring and rendering run in this process, timed in thread CPU time;
- the API is a real ``coverservice serve --no-worker`` process on a loopback port, loaded
  by an asyncio client on raw sockets in this process (keep-alive HTTP/1.1, one request in
  flight per connection); the no-op baseline is ``GET /healthz`` of the same process;
- workers are real ``coverservice worker`` processes; screenshots come from a small HTTP
  server in this process that serves a few pre-encoded synthetic JPEGs under any path;
- the database is a fresh SQLite file in a temporary directory, or, given a Postgres URL,
  a scratch database ``coverservice_bench_<random>`` created on that server and dropped
  at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import json
import math
import os
import platform
import random
import re
import socket
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self, cast

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from . import imaging, scoring
from .callbacks import sign
from .process import LOOPBACK, ServiceProcess
from .settings import Settings

Progress = Callable[[str], None]

MAX_PIXELS: int = Settings.model_fields["max_image_pixels"].default
HYSTERESIS: float = Settings.model_fields["selection_hysteresis"].default
COVER_MIN_INTERVAL: float = Settings.model_fields["cover_min_interval"].default
# What a browser sends for an <img>: the cover route negotiates WebP from it.
BROWSER_ACCEPT = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
WORKER_POLL_INTERVAL = 0.05

# Screenshot variants served by the stand-in; the tail variants never beat SHARP by the
# hysteresis margin, so a stream whose first frame is SHARP keeps its cover.
SHARP, SOFT, SOFTER = 0, 1, 2
TAIL = (SHARP, SOFT, SOFTER)


@dataclass(frozen=True)
class Config:
    duration: float = 10.0  # seconds of each throughput window
    warmup: float = 1.0  # seconds of load before each window opens
    concurrency: int = 32  # client connections
    frames: int = 10_000  # frames through one worker for the memory row
    freshness_samples: int = 50
    worker_streams: int = 20  # streams of the workers row (one rendered cover each)
    scoring_repeats: int = 40  # per JPEG and per size
    database_url: str | None = None  # postgresql://...: scratch database on that server
    # The service's COVERSERVICE_COVER_MIN_INTERVAL; None: its default. Freshness waits
    # this long after the first covers, so a better screenshot may replace them at once.
    cover_min_interval: float | None = None


TINY = Config(
    duration=0.5, warmup=0.2, concurrency=4, frames=200, freshness_samples=3, worker_streams=2,
    scoring_repeats=3, cover_min_interval=1.0,
)


@dataclass(frozen=True)
class Target:
    on: str  # "ratio" or "value"
    op: str  # "<=", ">=", "<"
    bound: float

    def met(self, number: float) -> bool:
        if self.op == "<=":
            return number <= self.bound
        if self.op == ">=":
            return number >= self.bound
        return number < self.bound

    def __str__(self) -> str:
        sign_ = {"<=": "≤", ">=": "≥", "<": "<"}[self.op]
        return f"{sign_} {self.bound:g}×" if self.on == "ratio" else f"{sign_} {self.bound:g}"


@dataclass
class Row:
    path: str
    measure: str
    unit: str
    value: float | None
    baseline: float | None = None
    baseline_measure: str = ""
    target: Target | None = None
    note: str = ""
    failed: str = ""  # a broken guarantee (not a slow machine): the row is FAIL

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    @property
    def result(self) -> str:
        if self.failed:
            return "FAIL"
        if self.value is None:
            return "SKIP"
        if self.target is None:
            return ""
        number = self.ratio if self.target.on == "ratio" else self.value
        return "PASS" if number is not None and self.target.met(number) else "MISS"

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "measure": self.measure,
            "unit": self.unit,
            "value": self.value,
            "baseline": self.baseline,
            "baseline_measure": self.baseline_measure,
            "ratio": self.ratio,
            "target": str(self.target) if self.target else "",
            "result": self.result,
            "note": self.failed or self.note,
        }


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": [row.as_dict() for row in self.rows],
            "figures": self.figures,
            "environment": self.environment,
            "config": self.config,
        }


# --- the run ---------------------------------------------------------------------------


def run(config: Config, *, progress: Progress = lambda _: None) -> Report:
    progress("measuring what else keeps this machine busy")
    busy_a, t_a = _machine_busy_seconds(), time.monotonic()
    time.sleep(min(2.0, config.duration))
    background = (_machine_busy_seconds() - busy_a) / (time.monotonic() - t_a)
    report = Report(
        environment={
            "cpus": os.cpu_count(),
            "busy_cores_before_run": background,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "database": "postgresql" if config.database_url else "sqlite",
            "layout": "server process and bench client (plus the screenshot stand-in) share "
            "this machine's cores; on 2 cores that is one core each",
        },
        config=asdict(config) | {"database_url": _hide_password(config.database_url)},
    )
    jpegs = {label: [synthetic_jpeg(w, h, seed=s) for s in range(3)] for label, (w, h) in _SCORING_SIZES.items()}
    progress("scoring: bytes → scores against Pillow's draft decode, thread CPU time")
    report.rows += measure_scoring(jpegs, config.scoring_repeats)
    progress("rendering: one cover change (3 sizes × JPEG/WebP)")
    report.figures.update(measure_rendering(jpegs, 1 if config.scoring_repeats < 10 else 3))

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="coverservice-bench-")))
        database_url = stack.enter_context(_scratch_database(config.database_url, tmp, progress))
        shots = stack.enter_context(ScreenshotServer(_variants()))
        bench = _Bench(config, database_url, tmp, shots, progress, stack)
        bench.run(report)
    return report


_SCORING_SIZES = {"1280×720": (1280, 720), "1920×1080": (1920, 1080)}


class _Bench:
    def __init__(
        self,
        config: Config,
        database_url: str,
        tmp: Path,
        shots: ScreenshotServer,
        progress: Progress,
        stack: contextlib.ExitStack,
    ) -> None:
        self.config = config
        self.postgres = not database_url.startswith("sqlite")
        self.tmp = tmp
        self.shots = shots
        self.progress = progress
        self.stack = stack
        self.key = uuid.uuid4().hex
        self.expires = int(time.time()) + 86_000
        self.signature = sign(self.key, self.expires)
        self.env = {
            "COVERSERVICE_DATABASE_URL": database_url,
            "COVERSERVICE_STORAGE_URL": (tmp / "storage").as_uri(),
            "COVERSERVICE_CALLBACK_KEYS": self.key,
            "COVERSERVICE_FETCH_ALLOWED_HOSTS": f"{LOOPBACK}:*",
            "COVERSERVICE_FETCH_ALLOW_PRIVATE": "true",
            "COVERSERVICE_WORKER_POLL_INTERVAL": str(WORKER_POLL_INTERVAL),
        }
        self.min_interval = COVER_MIN_INTERVAL
        if config.cover_min_interval is not None:
            self.min_interval = config.cover_min_interval
            self.env["COVERSERVICE_COVER_MIN_INTERVAL"] = str(config.cover_min_interval)
        connect_args = {"timeout": 30} if not self.postgres else {}
        self.engine: Engine = create_engine(database_url, connect_args=connect_args)
        stack.callback(self.engine.dispose)
        # Warnings only: uvicorn's access log (at info) would be measured with every request.
        self.server = ServiceProcess.serve(self.env, log_path=tmp / "serve.log", worker=False, log_level="warning")
        self.port = 0
        self.one_worker_rate: float | None = None
        self.queries = 0  # our own transactions, not to be counted as the workers'

    def run(self, report: Report) -> None:
        kind = "Postgres" if self.postgres else "SQLite"
        self.progress(f"starting coverservice serve --no-worker on a {kind} database")
        self.stack.enter_context(self.server)
        assert self.server.port is not None
        self.port = self.server.port
        streams = [f"fresh-{k}" for k in range(self.config.freshness_samples)]
        covered_at = self.first_covers(streams)
        report.rows.append(self.ingest(report))
        report.rows += self.freshness(streams, covered_at)
        report.rows.append(self.cover_get(report, streams))
        report.rows.append(self.memory(report))
        report.rows.append(self.workers(report))
        report.figures.update(self.storage_figures())

    # --- ingest ------------------------------------------------------------------------

    def ingest(self, report: Report) -> Row:
        c = self.config
        self.progress(f"ingest: GET /healthz for {c.duration:g}s ({c.concurrency} connections)")
        healthz = self.load(self.get_request("/healthz"))
        self.progress(f"ingest: POST /callbacks/css for {c.duration:g}s, a new screenshot each")
        posted = self.load(
            lambda i: self.callback_request(f"ingest-{i % 10_000}", f"/ingest/{i}.jpg", SHARP)
        )
        rows = self.count("SELECT count(*) FROM frames WHERE stream_id LIKE 'ingest-%'")
        ok = posted.statuses[200]
        row = Row(
            "ingest",
            "durable POST /callbacks/css, one server process",
            "req/s",
            posted.rate,
            healthz.rate,
            "GET /healthz, same process",
            Target("ratio", ">=", 0.5),
            note=f"{ok} × 200 = {rows} frame rows; {posted.describe()}; baseline {healthz.describe()}",
        )
        if rows != ok:
            row.failed = f"{ok} callbacks answered 200 but {rows} frame rows are committed"
        elif set(posted.statuses) != {200} or posted.errors:
            row.failed = f"not every callback was recorded: {posted.describe()}"
        server_ms = report.figures.setdefault("server_cpu_ms_per_request", {})
        server_ms["GET /healthz"] = healthz.cpu_ms("server")
        server_ms["POST /callbacks/css"] = posted.cpu_ms("server")
        if "postgres" in posted.cpu:
            report.figures["postgres_cpu_ms_per_callback"] = posted.cpu_ms("postgres")
        # The benchmark's workers must not inherit these rows.
        with self.engine.begin() as conn:
            conn.execute(text("DELETE FROM frames WHERE stream_id LIKE 'ingest-%'"))
            conn.execute(text("DELETE FROM streams WHERE id LIKE 'ingest-%'"))
        if self.postgres:
            # Nor may their space count in the bytes per frame row measured at the end.
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM FULL frames, streams"))
        return row

    # --- freshness and the hot cover -----------------------------------------------------

    def first_covers(self, streams: Sequence[str]) -> float:
        """Give each freshness stream a soft first cover; returns when (monotonic)."""
        with self.worker_processes(1, "first") as workers:
            self.progress(f"freshness: {len(streams)} streams get a soft first cover")
            self.post_frames([(s, f"/fresh/{s}/0.jpg", SOFTER) for s in streams])
            covered = "SELECT count(*) FROM streams WHERE id LIKE 'fresh-%' AND cover_id IS NOT NULL"
            self.wait_for(self.reached(covered, len(streams)), 60 + len(streams), "the first covers", workers)
        return time.monotonic()

    def freshness(self, streams: Sequence[str], covered_at: float) -> list[Row]:
        samples = len(streams)
        with self.freshness_deployment() as port:
            wait = covered_at + self.min_interval + 0.5 - time.monotonic()
            if wait > 0:
                self.progress(f"freshness: waiting {wait:.1f}s for the first covers to pass cover_min_interval")
                time.sleep(wait)
            self.progress(
                f"freshness: a sharper screenshot for each stream, callback → new cover in /api/covers "
                f"({samples} samples)"
            )
            delays, lost = self.freshness_samples(streams, port)
        p50 = _percentile(delays, 50) if delays else None
        p99 = _percentile(delays, 99) if delays else None
        common = (
            f"{len(delays)} samples, one at a time, each on a stream whose cover is older than "
            f"cover_min_interval ({self.min_interval:g}s); the worker polls every {WORKER_POLL_INTERVAL:g}s "
            "when idle (a busy one does not wait); includes download, scoring, rendering, commit and the "
            "API's cover cache" + (
                "; a worker process, its covers announced by NOTIFY" if self.postgres
                else "; the embedded deployment (one serve process, worker inside), as SQLite runs"
            )
        )
        rows = [
            Row("freshness", "callback → new cover visible, p50", "s", p50,
                target=Target("value", "<", 1.0), note=common),
            Row("freshness", "callback → new cover visible, p99", "s", p99,
                note=f"of {len(delays)} samples"),
        ]
        if lost:
            rows[0].failed = f"{lost} of {samples} new covers never became visible"
        return rows

    @contextlib.contextmanager
    def freshness_deployment(self) -> Iterator[int]:
        """Where freshness is measured, as each database is deployed: with Postgres, a
        worker process beside the API; with SQLite, one ``serve`` with its worker inside
        (SQLite has no NOTIFY, and one process is its deployment shape). Yields the
        port of the API to ask."""
        if self.postgres:
            with self.worker_processes(1, "fresh"):
                yield self.port
            return
        with ServiceProcess.serve(self.env, log_path=self.tmp / "serve-embedded.log", log_level="warning") as embedded:
            assert embedded.port is not None
            yield embedded.port

    def freshness_samples(self, streams: Sequence[str], port: int) -> tuple[list[float], int]:
        delays: list[float] = []
        lost = 0
        with contextlib.closing(_Client(port)) as client:
            for s in streams:
                before = _cover_version(client.get(f"/api/covers/{s}"))
                body = self.callback_body(s, f"/fresh/{s}/1.jpg", SHARP)
                start = time.perf_counter()
                status, _ = client.post("/callbacks/css", body)
                if status != 200:
                    raise BenchError(f"freshness callback answered {status}")
                deadline = start + 30
                while time.perf_counter() < deadline:
                    version = _cover_version(client.get(f"/api/covers/{s}"))
                    if version is not None and version != before:
                        delays.append(time.perf_counter() - start)
                        break
                    time.sleep(0.005)
                else:
                    lost += 1
        return delays, lost

    def cover_get(self, report: Report, streams: Sequence[str]) -> Row:
        c = self.config
        # Hot means already served once: formats rendered on first request (AVIF, which
        # a browser's Accept asks for) are made now, not inside the measured window.
        with contextlib.closing(_Client(self.port)) as client:
            for s in streams:
                status, _ = client.get(f"/cover/{s}", headers={"Accept": BROWSER_ACCEPT})
                if status != 200:
                    raise BenchError(f"GET /cover/{s} answered {status} before the load")
        self.progress(f"cover GET: GET /healthz for {c.duration:g}s")
        healthz = self.load(self.get_request("/healthz"))
        self.progress(
            f"cover GET: GET /cover/{{id}} (Accept as a browser sends) for {c.duration:g}s "
            f"over {len(streams)} hot covers"
        )
        covers = [self.get_request(f"/cover/{s}", accept=BROWSER_ACCEPT) for s in streams]
        got = self.load(lambda i: covers[i % len(covers)])
        row = Row(
            "cover GET",
            "hot GET /cover/{id}, one server process",
            "req/s",
            got.rate,
            healthz.rate,
            "GET /healthz, same process",
            Target("ratio", ">=", 0.8),
            note=f"{got.describe()}; baseline {healthz.describe()}",
        )
        if set(got.statuses) != {200} or got.errors:
            row.failed = f"not every cover was served: {got.describe()}"
        report.figures.setdefault("server_cpu_ms_per_request", {})["GET /cover/{id}"] = got.cpu_ms("server")
        return row

    # --- workers: memory and scaling -------------------------------------------------------

    def memory(self, report: Report) -> Row:
        total = self.config.frames
        first = max(1, total // 10)
        streams = max(1, min(100, total // 100))
        self.progress(f"memory: queueing {total} screenshots over {streams} streams")
        self.post_frames(self.stream_frames("mem", total, streams=streams))
        rss: dict[int, float] = {}
        marks: dict[int, tuple[float, Counters]] = {}
        done_sql = (
            "SELECT count(*) FROM frames WHERE stream_id LIKE 'mem-%' AND status NOT IN ('pending', 'processing')"
        )
        with self.worker_processes(1, "mem") as workers:
            pid = workers[0].pid
            last_shown = time.monotonic()
            deadline = time.monotonic() + 120 + total * 0.2
            while True:
                done = self.count(done_sql)
                now = time.monotonic()
                for mark in (first, total):
                    if done >= mark and mark not in rss:
                        rss[mark] = _rss_mib(pid)
                        marks[mark] = (now, self.counters({"worker": [pid]}))
                if total in rss:
                    break
                _check_alive(workers)
                if now > deadline:
                    raise BenchError(f"the worker processed {done} of {total} frames in time")
                if now - last_shown > 5:
                    self.progress(f"memory: {done}/{total} frames processed")
                    last_shown = now
                time.sleep(0.1)
        covers = self.count(
            "SELECT count(*) FROM covers c JOIN streams s ON s.id = c.stream_id WHERE s.id LIKE 'mem-%'"
        )
        statuses = dict(
            self.rows_of("SELECT status, count(*) FROM frames WHERE stream_id LIKE 'mem-%' GROUP BY status")
        )
        rate = None
        if total > first:
            (t_a, cpu_a), (t_b, cpu_b) = marks[first], marks[total]
            rate = (total - first) / (t_b - t_a)
            share = _cpu_shares(cpu_a, cpu_b, t_b - t_a)
            report.figures["one_worker_frames_per_s"] = rate
            report.figures["one_worker_cpu_ms_per_frame_with_renders"] = share["worker"] / rate * 1e3
        self.one_worker_rate = rate
        report.figures["memory_run_covers_rendered"] = covers
        row = Row(
            "memory",
            f"worker RSS after {total} frames",
            "MiB",
            rss[total],
            rss[first],
            f"RSS after {first} frames",
            Target("ratio", "<=", 1.1),
            note=f"one worker, {covers} covers rendered, {rate or 0:.0f} frames/s; frames {statuses}",
        )
        if statuses.get("scored", 0) < total * 0.9:
            row.failed = f"frames did not end scored: {statuses}"
        return row

    def workers(self, report: Report) -> Row:
        name = "frames/s with 2 worker processes"
        if not self.postgres:
            return Row("workers", name, "frames/s", None,
                       note="skipped: needs Postgres (--database-url postgresql://...)")
        c = self.config
        frames: dict[int, int] = {1: 0, 2: 0}
        seconds: dict[int, float] = {1: 0.0, 2: 0.0}
        busy: dict[int, list[float]] = {1: [], 2: []}
        notes: list[str] = []
        # 1, 2, 1, 2 workers: on a shared machine the speed of a core drifts over a
        # minute, and one window of each would compare two different machines.
        for round_, n in enumerate((1, 2, 1, 2)):
            streams = c.worker_streams
            expected = (self.one_worker_rate or 50.0) * n * (c.warmup + c.duration + 2)
            total = int(expected * 2) + streams * 2
            self.progress(f"workers: {n} worker process{'es' if n > 1 else ''}, {total} queued screenshots, "
                          f"{c.duration:g}s")
            prefix = f"w{round_}"
            inserted = self.pg_stats()["inserted"]
            self.post_frames(self.stream_frames(prefix, total, streams=streams))
            done_sql = (
                f"SELECT count(*) FROM frames WHERE stream_id LIKE '{prefix}-%' "
                "AND status NOT IN ('pending', 'processing')"
            )
            # The API's backends report their writes up to 10 s after going idle: wait
            # until these inserts show, or they would count as the workers' writes.
            deadline = time.monotonic() + 20
            while self.pg_stats()["inserted"] - inserted < total and time.monotonic() < deadline:
                time.sleep(0.2)
            stats_a, queries_a = self.pg_stats(), self.queries
            with self.worker_processes(n, prefix) as procs:
                # Warm: every stream has its first (rendered) cover, then warmup seconds more.
                self.wait_for(self.reached(done_sql, streams * 2), 60 + streams, "the first covers", procs)
                time.sleep(c.warmup)
                pids = {"workers": [proc.pid for proc in procs]}
                t_a, done_a, cpu_a = time.perf_counter(), self.count(done_sql), self.counters(pids)
                time.sleep(c.duration)
                t_b, done_b, cpu_b = time.perf_counter(), self.count(done_sql), self.counters(pids)
                _check_alive(procs)
            frames[n] += done_b - done_a
            seconds[n] += t_b - t_a
            rate = (done_b - done_a) / (t_b - t_a)
            share = _cpu_shares(cpu_a, cpu_b, t_b - t_a)
            busy[n].append(share["machine"])
            if done_b >= total:
                notes.append(f"the queue ran dry with {n} (rate underestimated)")
            if round_ == 0 and rate > 0:
                report.figures["worker_cpu_ms_per_frame"] = share["workers"] / rate * 1e3
                if "postgres" in share:
                    report.figures["postgres_cpu_ms_per_frame"] = share["postgres"] / rate * 1e3
                # Backends flush their statistics within a second of going idle, and
                # when they exit: count over the whole phase, the workers stopped.
                time.sleep(1.5)
                stats_b = self.pg_stats()
                finished = self.count(done_sql)
                commits = stats_b["xact_commit"] - stats_a["xact_commit"] - (self.queries - queries_a)
                report.figures["postgres_commits_per_frame"] = commits / finished
                report.figures["postgres_rows_written_per_frame"] = (stats_b["written"] - stats_a["written"]) / finished
            # What this round left queued would go first in the next one (oldest first).
            with self.engine.begin() as conn:
                conn.execute(text(
                    f"UPDATE frames SET status = 'failed', reason = 'bench: round over' "
                    f"WHERE stream_id LIKE '{prefix}-%' AND status IN ('pending', 'processing')"
                ))
        rates = {str(n): frames[n] / seconds[n] for n in (1, 2)}
        shares = {str(n): sum(b) / len(b) for n, b in busy.items()}
        report.figures["workers_frames_per_s"] = rates
        report.figures["workers_machine_busy_cores"] = shares
        shared = (
            f"two windows of each, alternated; one Postgres; of the machine's {os.cpu_count()} cores, "
            f"{shares['1']:.2f} / {shares['2']:.2f} were busy with 1 / 2 workers (workers, Postgres and the "
            "screenshot stand-in share them)"
        )
        return Row(
            "workers",
            name,
            "frames/s",
            rates["2"],
            rates["1"],
            "1 worker process",
            Target("ratio", ">=", 1.5),
            note="; ".join([shared, *notes]),
        )

    def storage_figures(self) -> dict[str, Any]:
        figures: dict[str, Any] = {}
        sizes = self.rows_of("SELECT size, format, avg(byte_size) FROM renditions GROUP BY size, format")
        figures["stored_rendition_bytes"] = {f"{size} {fmt}": float(avg) for size, fmt, avg in sorted(sizes)}
        if self.postgres:
            rows = self.count("SELECT count(*) FROM frames")
            size = self.count("SELECT pg_total_relation_size('frames')")
            if rows:
                figures["postgres_bytes_per_frame_row"] = size / rows
        return figures

    # --- helpers ---------------------------------------------------------------------------

    def load(self, request: bytes | Callable[[int], bytes | None], *, count: int | None = None) -> LoadResult:
        c = self.config
        make = (lambda i: request) if isinstance(request, bytes) else request
        return http_load(
            self.port,
            make,
            concurrency=c.concurrency,
            warmup=0.0 if count is not None else c.warmup,
            duration=None if count is not None else c.duration,
            counters=lambda: self.counters({"server": [self.server.pid]}),
        )

    def counters(self, pids: Mapping[str, Sequence[int]]) -> Counters:
        """Cumulative CPU seconds of the named processes, of this database's Postgres
        backends (when their /proc entries are readable: a local server) and of the
        whole machine."""
        out = {name: {pid: _cpu_seconds(pid) for pid in group} for name, group in pids.items()}
        out["machine"] = {0: _machine_busy_seconds()}
        if self.postgres:
            backends = {}
            for (pid,) in self.rows_of(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ):
                with contextlib.suppress(OSError, ValueError):
                    backends[int(pid)] = _cpu_seconds(int(pid))
            if backends:
                out["postgres"] = backends
        return out

    def post_frames(self, frames: Sequence[tuple[str, str, int]]) -> None:
        result = self.load(
            lambda i: self.callback_request(*frames[i]) if i < len(frames) else None, count=len(frames)
        )
        if result.statuses[200] != len(frames):
            raise BenchError(f"queueing {len(frames)} screenshots: {result.describe()}")

    def stream_frames(self, prefix: str, total: int, *, streams: int) -> list[tuple[str, str, int]]:
        """``total`` screenshots over ``streams`` streams; each stream's first is the sharp
        one (its cover), later ones never beat it, so covers change only when selection
        refreshes an old one."""
        rng = random.Random(total)
        return [
            (f"{prefix}-{i % streams}", f"/{prefix}/{i}.jpg", SHARP if i < streams else rng.choice(TAIL))
            for i in range(total)
        ]

    def callback_body(self, stream: str, path: str, variant: int) -> bytes:
        body = {
            "event_type": 200,
            "stream_id": stream,
            "channel_id": stream,
            "create_time": int(time.time()),
            "file_size": len(self.shots.variants[variant]),
            "width": 1280,
            "height": 720,
            "pic_url": path,
            "pic_full_url": self.shots.url(variant, path),
            "t": self.expires,
            "sign": self.signature,
        }
        return json.dumps(body, separators=(",", ":")).encode()

    def callback_request(self, stream: str, path: str, variant: int) -> bytes:
        body = self.callback_body(stream, path, variant)
        return (
            f"POST /callbacks/css HTTP/1.1\r\nHost: {LOOPBACK}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    def get_request(self, target: str, *, accept: str = "*/*") -> bytes:
        return f"GET {target} HTTP/1.1\r\nHost: {LOOPBACK}:{self.port}\r\nAccept: {accept}\r\n\r\n".encode()

    @contextlib.contextmanager
    def worker_processes(self, n: int, label: str) -> Iterator[list[ServiceProcess]]:
        procs = [
            ServiceProcess(["worker"], self.env, log_path=self.tmp / f"worker-{label}-{i}.log", log_level="warning")
            for i in range(n)
        ]
        with contextlib.ExitStack() as stack:
            for proc in procs:
                stack.enter_context(proc)
            yield procs

    def reached(self, sql: str, n: int) -> Callable[[], bool]:
        return lambda: self.count(sql) >= n

    def count(self, sql: str) -> int:
        self.queries += 1
        with self.engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar_one())

    def rows_of(self, sql: str) -> list[tuple[Any, ...]]:
        self.queries += 1
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]

    def pg_stats(self) -> dict[str, int]:
        row = self.rows_of(
            "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted, tup_inserted FROM pg_stat_database "
            "WHERE datname = current_database()"
        )[0]
        return {"xact_commit": int(row[0]), "written": int(row[1]), "inserted": int(row[2])}

    def wait_for(self, check: Callable[[], bool], timeout: float, what: str, procs: Sequence[ServiceProcess]) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            _check_alive(procs)
            if time.monotonic() > deadline:
                raise BenchError(f"timed out waiting for {what}; worker log:\n{procs[0].log_tail()}")
            time.sleep(0.1)


class BenchError(Exception):
    """The benchmark could not measure (not: the machine is slow)."""


def _check_alive(procs: Sequence[ServiceProcess]) -> None:
    for proc in procs:
        if proc.returncode is not None:
            raise BenchError(f"coverservice {proc.args[0]} exited with {proc.returncode}:\n{proc.log_tail()}")


def _cover_version(response: tuple[int, bytes]) -> int | None:
    status, body = response
    if status != 200:
        return None
    cover = json.loads(body).get("cover")
    return int(cover["version"]) if cover else None


def _percentile(values: Sequence[float], pct: float) -> float:
    """Nearest rank: the smallest value with at least pct % of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


# --- scoring and rendering, in this process ---------------------------------------------


def measure_scoring(jpegs: Mapping[str, Sequence[bytes]], repeats: int) -> list[Row]:
    """Our bytes → scores against Pillow's DCT-scaled grayscale decode of the same bytes,
    interleaved (alternating which goes first), median thread CPU time per frame."""

    def draft(data: bytes) -> None:
        im = Image.open(io.BytesIO(data))
        im.draft("L", (im.width // 4, im.height // 4))
        im.load()

    def ours(data: bytes) -> None:
        scoring.score_luma(imaging.decode_luma(data, max_pixels=MAX_PIXELS))

    rows = []
    for label, frames in jpegs.items():
        times: dict[str, list[int]] = {"draft": [], "ours": []}
        for data in frames:  # warm both paths
            draft(data)
            ours(data)
        for rep in range(repeats):
            for data in frames:
                order = (("draft", draft), ("ours", ours)) if rep % 2 == 0 else (("ours", ours), ("draft", draft))
                for name, fn in order:
                    start = time.thread_time_ns()
                    fn(data)
                    times[name].append(time.thread_time_ns() - start)
        ours_ms = statistics.median(times["ours"]) / 1e6
        draft_ms = statistics.median(times["draft"]) / 1e6
        kib = sum(len(d) for d in frames) / len(frames) / 1024
        rows.append(
            Row(
                "scoring",
                f"CPU per frame, {label} JPEG → scores",
                "ms",
                ours_ms,
                draft_ms,
                "Pillow draft('L', (w//4, h//4)) + load, same bytes",
                Target("ratio", "<=", 1.3),
                note=f"median of {len(times['ours'])}; {len(frames)} synthetic JPEGs of {kib:.0f} KiB",
            )
        )
    return rows


def measure_rendering(jpegs: Mapping[str, Sequence[bytes]], repeats: int) -> dict[str, Any]:
    """CPU per cover change (every size and format), and what the renditions weigh."""
    render_ms: dict[str, float] = {}
    rendition_bytes: dict[str, float] = {}
    for label, frames in jpegs.items():
        times = []
        sizes: dict[str, list[int]] = {}
        for data in frames[:repeats]:
            start = time.thread_time_ns()
            renditions = imaging.render_renditions(data, max_pixels=MAX_PIXELS)
            times.append(time.thread_time_ns() - start)
            for r in renditions:
                sizes.setdefault(f"{r.size} {r.format}", []).append(len(r.data))
        render_ms[label] = statistics.median(times) / 1e6
        if label == "1280×720":
            rendition_bytes = {k: statistics.mean(v) for k, v in sizes.items()}
    return {
        "render_cpu_ms_per_cover_change": render_ms,
        "rendition_bytes": rendition_bytes,
        "screenshot_bytes": {label: statistics.mean(len(d) for d in frames) for label, frames in jpegs.items()},
    }


def synthetic_jpeg(width: int, height: int, *, seed: int, blur: float = 0.0, quality: int = 85) -> bytes:
    """A stand-in for a live-stream screenshot: a lit backdrop, shapes with hard edges, a
    textured band and a little sensor noise, encoded as CSS does (baseline JPEG)."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, 16)[None, :]
    y = np.linspace(0.0, 1.0, 9)[:, None]
    backdrop = np.stack(np.broadcast_arrays(60 + 130 * x, 80 + 100 * y, 170 - 80 * x * y), axis=-1)
    img = Image.fromarray(backdrop.astype(np.uint8), "RGB").resize((width, height), Image.Resampling.BILINEAR)
    cells = rng.integers(30, 220, (24, 96, 3), dtype=np.uint8)
    band = Image.fromarray(cells, "RGB").resize((width, height // 3), Image.Resampling.BICUBIC)
    img.paste(band, (0, height - height // 3))
    draw = ImageDraw.Draw(img)
    unit = min(width, height)
    for _ in range(60):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = (int(v) for v in rng.integers(unit // 40, unit // 5, 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=colour)
        else:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=colour)
    for _ in range(40):  # thin strokes: captions, overlays
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        draw.line((x0, y0, x0 + int(rng.integers(20, unit // 3)), y0), fill=(240, 240, 240), width=max(1, unit // 360))
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur * unit / 720))
    pixels = np.asarray(img, dtype=np.int16) + rng.normal(0, 3, (height, width, 3)).astype(np.int16)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def _variants() -> list[bytes]:
    variants = [synthetic_jpeg(1280, 720, seed=7, blur=b) for b in (0.0, 1.5, 4.0)]
    scores = [scoring.score_luma(imaging.decode_luma(v, max_pixels=MAX_PIXELS)).score for v in variants]
    if not scores[SHARP] > scores[SOFTER] * (1 + HYSTERESIS) * 1.05 or max(scores) != scores[SHARP]:
        raise BenchError(f"synthetic screenshots do not score as the benchmark needs: {scores}")
    return variants


# --- the screenshot stand-in ----------------------------------------------------------


class ScreenshotServer:
    """Serves ``variants[k]`` at ``/<k>/<any path>`` on a loopback port (HTTP/1.1,
    keep-alive), in threads of this process."""

    def __init__(self, variants: Sequence[bytes]) -> None:
        self.variants = list(variants)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30.0

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self) -> None:
                head, _, _ = self.path.lstrip("/").partition("/")
                data = owner.variants[int(head)] if head.isdigit() and int(head) < len(owner.variants) else None
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def url(self, variant: int, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port}/{variant}{path}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# --- processes ---------------------------------------------------------------------------


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for process {pid}")


Counters = dict[str, dict[int, float]]  # name → pid → cumulative CPU seconds


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent on anything but idling."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _cpu_shares(before: Counters, after: Counters, elapsed: float) -> dict[str, float]:
    """Cores used by each named group between two readings. A process that appeared in
    between counts whole; one that went away is left out."""
    return {
        name: sum(cpu - before.get(name, {}).get(pid, 0.0) for pid, cpu in pids.items()) / elapsed
        for name, pids in after.items()
    }


class _Client:
    """A blocking keep-alive client for the few requests that are not load."""

    def __init__(self, port: int) -> None:
        self._conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)

    def get(self, target: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        self._conn.request("GET", target, headers=dict(headers or {}))
        response = self._conn.getresponse()
        return response.status, response.read()

    def post(self, target: str, body: bytes) -> tuple[int, bytes]:
        self._conn.request("POST", target, body=body, headers={"Content-Type": "application/json"})
        response = self._conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self._conn.close()


@contextlib.contextmanager
def _scratch_database(url: str | None, tmp: Path, progress: Progress) -> Iterator[str]:
    if url is None:
        yield f"sqlite:///{tmp / 'bench.sqlite3'}"
        return
    normalised = Settings(database_url=url).database_url
    if normalised.startswith("sqlite"):
        raise BenchError("--database-url takes a postgresql:// URL (the default is a fresh SQLite file)")
    name = f"coverservice_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalised, isolation_level="AUTOCOMMIT", poolclass=None)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    progress(f"scratch database {name} created")
    try:
        yield make_url(normalised).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        progress(f"scratch database {name} dropped")


def _hide_password(url: str | None) -> str | None:
    return make_url(url).render_as_string(hide_password=True) if url else None


# --- the load client ----------------------------------------------------------------------


@dataclass
class LoadResult:
    rate: float  # responses per second inside the window
    completed: int  # every response, warm-up and drain included
    statuses: Counter[int]
    errors: int  # connections lost with a request in flight
    cpu: dict[str, float]  # cores used inside the window: client, server, postgres, machine

    def cpu_ms(self, name: str) -> float:
        """CPU milliseconds of ``name`` per response."""
        return self.cpu[name] / self.rate * 1e3 if self.rate else 0.0

    def describe(self) -> str:
        statuses = ", ".join(f"{n} × {s}" for s, n in sorted(self.statuses.items()))
        errors = f", {self.errors} connection errors" if self.errors else ""
        cores = ", ".join(f"{name} {share:.2f}" for name, share in self.cpu.items())
        return f"{statuses}{errors}; cores used: {cores}"


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


class _LoadState:
    def __init__(self, request: Callable[[int], bytes | None], connections: int) -> None:
        self.request = request
        self.issued = 0
        self.completed = 0
        self.statuses: Counter[int] = Counter()
        self.errors = 0
        self.running = True
        self.busy = connections
        self.idle = asyncio.Event()

    def next_request(self) -> bytes | None:
        data = self.request(self.issued) if self.running else None
        if data is not None:
            self.issued += 1
        return data

    def done(self, status: int) -> None:
        self.completed += 1
        self.statuses[status] += 1

    def release(self) -> None:
        self.busy -= 1
        if self.busy == 0:
            self.idle.set()


class _Connection(asyncio.Protocol):
    """One keep-alive connection: send a request, read its response (status line and
    Content-Length are all we parse), send the next."""

    def __init__(self, state: _LoadState) -> None:
        self.state = state
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.active = False
        self.expect = -1
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def start(self) -> None:
        self.active = True
        self.send_next()

    def send_next(self) -> None:
        data = self.state.next_request()
        if data is None:
            self.active = False
            self.state.release()
            return
        assert self.transport is not None
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        while self.active:
            if self.expect < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                length = _CONTENT_LENGTH.search(buf, 0, end + 2)
                self.status = int(buf[9:12])
                self.expect = end + 4 + (int(length.group(1)) if length else 0)
            if len(buf) < self.expect:
                return
            del buf[: self.expect]
            self.expect = -1
            self.state.done(self.status)
            self.send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.active:
            self.active = False
            self.state.errors += 1
            self.state.release()


def http_load(
    port: int,
    request: Callable[[int], bytes | None],
    *,
    concurrency: int,
    warmup: float,
    duration: float | None,
    counters: Callable[[], Counters] = dict,
) -> LoadResult:
    """``concurrency`` connections, each with one request in flight, until ``request``
    returns None (``duration`` None) or for ``warmup`` + ``duration`` seconds; the rate
    counts the responses completed inside the window, ``counters`` (read at its start and
    end) the CPU used in it."""

    async def drive() -> LoadResult:
        loop = asyncio.get_running_loop()
        state = _LoadState(request, concurrency)
        conns = []
        for _ in range(concurrency):
            transport, conn = await loop.create_connection(lambda: _Connection(state), LOOPBACK, port)
            # uvloop calls connection_made on the next loop turn, not before returning.
            conn.transport = transport
            conns.append(conn)
        for conn in conns:
            conn.start()
        if warmup:
            await asyncio.sleep(warmup)
        count_a, client_a, cpu_a, t_a = state.completed, time.thread_time(), counters(), loop.time()
        if duration is not None:
            await asyncio.sleep(duration)
            state.running = False
        else:
            await asyncio.wait_for(state.idle.wait(), timeout=600)
        count_b, client_b, cpu_b, t_b = state.completed, time.thread_time(), counters(), loop.time()
        await asyncio.wait_for(state.idle.wait(), timeout=60)
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()
        elapsed = max(t_b - t_a, 1e-9)
        return LoadResult(
            rate=(count_b - count_a) / elapsed,
            completed=state.completed,
            statuses=state.statuses,
            errors=state.errors,
            cpu={"client": (client_b - client_a) / elapsed, **_cpu_shares(cpu_a, cpu_b, elapsed)},
        )

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(drive())


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# --- output ----------------------------------------------------------------------------


def format_table(report: Report | Mapping[str, Any]) -> str:
    """The rows as a Markdown table, then each row's note and the sizing figures."""
    data = report.as_dict() if isinstance(report, Report) else report
    lines = [
        "| path | measure | value | baseline | ratio | target | result |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for i, row in enumerate(data["rows"], 1):
        value = _fmt(row["value"], row["unit"])
        baseline = f"{_fmt(row['baseline'], row['unit'])} ({row['baseline_measure']})" if row["baseline"] else "—"
        ratio = f"{row['ratio']:.2f}×" if row["ratio"] is not None else "—"
        lines.append(
            f"| {row['path']} | {row['measure']} | {value} | {baseline} | {ratio} | {row['target'] or '—'} | {row['result'] or '—'} |"
        )
        if row["note"]:
            notes.append(f"{i}. {row['path']}: {row['note']}")
    env = data["environment"]
    out = [
        "\n".join(lines),
        "",
        (
            f"{env['cpus']} CPUs ({env['busy_cores_before_run']:.2f} busy with other work before the run), "
            f"Python {env['python']}, {env['database']}; {env['layout']}."
        ),
        "",
        *notes,
    ]
    if data["figures"]:
        out += ["", "figures for sizing:"]
        out += [f"- {name}: {_fmt_figure(value)}" for name, value in data["figures"].items()]
    return "\n".join(out)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit in ("req/s",):
        return f"{value:,.0f} {unit}"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "s":
        return f"{value:.3f} s"
    return f"{value:,.1f} {unit}"


def _fmt_figure(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt_figure(v)}" for k, v in value.items())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"


def to_json(report: Report) -> str:
    return json.dumps(report.as_dict(), indent=2, ensure_ascii=False)
