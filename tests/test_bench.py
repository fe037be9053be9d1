"""`coverservice bench` runs on a tiny configuration and prints well-formed output.

Not a timing test: the numbers are whatever this machine gives; what is checked is that
every row is measured, ratios are value / baseline, and no guarantee is broken (a FAIL
row means, for example, a 200 without a committed row)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from coverservice.settings import Settings

PG_URL = os.environ.get("COVERSERVICE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")

ROWS = ["scoring", "scoring", "ingest", "freshness", "freshness", "cover GET", "memory", "workers"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, subprocess.CompletedProcess[str]]]:
    """Both tiny runs, side by side (they are not timed, and this halves the wait): SQLite
    with --json, Postgres as a table."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERSERVICE_")}
    commands = {
        "sqlite": ["--json"],
        "postgres": ["--database-url", PG_URL],
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "coverservice", "bench", "--tiny", *args],
            cwd=tmp_path_factory.mktemp(name),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in commands.items()
    }
    results = {}
    try:
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=180)
            results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    yield results


def test_json_report_has_every_row_measured(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    run = runs["sqlite"]
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    rows = report["rows"]
    assert [row["path"] for row in rows] == ROWS
    for row in rows:
        assert row["result"] in ("PASS", "MISS", "SKIP", ""), row  # never FAIL
        if row["path"] == "workers":
            assert row["result"] == "SKIP" and "Postgres" in row["note"]
            continue
        assert row["value"] > 0, row
        if row["baseline"] is None:
            assert row["ratio"] is None
        else:
            assert row["baseline"] > 0 and math.isclose(row["ratio"], row["value"] / row["baseline"])
        assert bool(row["target"]) == (row["measure"] != "callback → new cover visible, p99"), row
    _check_figures(report["figures"])
    assert report["environment"]["database"] == "sqlite"
    # Progress went to stderr, line by line, while stdout stayed pure JSON.
    assert "ingest: POST /callbacks/css" in run.stderr and "memory:" in run.stderr


def _check_figures(figures: dict[str, Any]) -> None:
    for name in ("render_cpu_ms_per_cover_change", "rendition_bytes", "stored_rendition_bytes", "one_worker_frames_per_s"):
        assert name in figures, name
    numbers = [v for f in figures.values() for v in (f.values() if isinstance(f, dict) else [f])]
    assert numbers and all(isinstance(n, (int, float)) and n >= 0 for n in numbers), figures
    # Every eager rendition; formats rendered on first request appear once asked for.
    assert set(figures["stored_rendition_bytes"]) >= {
        f"{size} {fmt}" for size in ("small", "medium", "large") for fmt in ("jpeg", "webp")
    }


def test_table_report_on_postgres_measures_workers_and_drops_its_database(
    runs: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    run = runs["postgres"]
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "| path | measure | value | baseline | ratio | target | result |"
    table = [line for line in lines[2:] if line.startswith("| ")]
    assert [line.split(" | ")[0].removeprefix("| ") for line in table] == ROWS
    for line in table:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert len(cells) == 7, line
        assert cells[6] in ("PASS", "MISS", "—"), line
    workers = table[-1]
    assert "frames/s" in workers and "SKIP" not in workers
    assert "figures for sizing:" in run.stdout
    assert "postgres_bytes_per_frame_row" in run.stdout and "worker_cpu_ms_per_frame" in run.stdout

    scratch = re.findall(r"scratch database (coverservice_bench_\w+) dropped", run.stderr)
    assert len(scratch) == 1, run.stderr
    engine = create_engine(Settings(database_url=PG_URL).database_url)
    try:
        with engine.connect() as conn:
            left = conn.execute(text("SELECT count(*) FROM pg_database WHERE datname = :n"), {"n": scratch[0]})
            assert left.scalar_one() == 0
    finally:
        engine.dispose()


def test_bench_refuses_a_sqlite_url(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "coverservice", "bench", "--tiny", "--database-url", f"sqlite:///{tmp_path}/x.db"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode != 0 and "postgresql://" in run.stderr
