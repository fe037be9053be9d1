from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from coverservice import quality_bench as qb
from coverservice.cli import main
from coverservice.scenes import Degradation

FAMILIES = {
    "gaussian", "motion", "under", "over", "haze", "noise", "blocks", "black", "testcard", "flat",
}


@pytest.fixture(scope="module")
def tiny() -> qb.Result:
    return qb.run(replace(qb.TINY, speed_frames=2, speed_repeats=2))


def test_tiny_run_is_well_formed(tiny: qb.Result) -> None:
    data: dict[str, Any] = json.loads(json.dumps(qb.to_dict(tiny)))
    config = qb.TINY
    assert [s["name"] for s in data["sets"]] == ["tuning", "held-out"]
    assert [s["pictures"] for s in data["sets"]] == [["studio"], ["outdoor"]]
    for result in data["sets"]:
        windows = len(config.sizes) * config.windows
        pairs = windows * (config.frames_per_window - 1)
        graded = len(config.sizes) * len(qb.LADDERS)
        for scorer in qb.SCORERS:
            assert result["windows"][scorer]["total"] == windows
            assert result["pairs"][scorer]["total"] == pairs
            assert result["graded"][scorer]["total"] == graded
            assert 0 <= result["pairs"][scorer]["won"] <= pairs
            # Per kind and per size, each pair is counted once.
            for prefix, keys in (("pairs", FAMILIES), ("pairs", {"1280×720", "360×640"})):
                tallies = [t[scorer] for key, t in result["by"].items()
                           if key.split(" ", 1)[0] == prefix and key.split(" ", 1)[1] in keys]
                assert sum(t["total"] for t in tallies) == pairs
                assert sum(t["won"] for t in tallies) == result["pairs"][scorer]["won"]
        assert len(result["contenders"]) == windows
        assert all(1 <= n <= 3 for n in result["contenders"])
    cost = data["cost"]
    assert cost["frames"] == 2 and cost["draft_decode_ms"] > 0 and cost["draft_ms"] > 0
    assert cost["ratio"] == pytest.approx(cost["draft_ms"] / cost["draft_decode_ms"])
    assert set(cost["detail_ms"]) == {"1280×720", "1920×1080"}


def test_tiny_run_beats_the_baseline(tiny: qb.Result) -> None:
    for result in tiny.sets:
        for scorer in ("draft", "detail"):
            assert result.pairs[scorer].won >= result.pairs["baseline"].won, result.name
            assert result.graded[scorer].won > result.graded["baseline"].won, result.name
        assert result.windows["detail"].won >= result.windows["baseline"].won, result.name


def test_report_holds_every_scorer_the_held_out_breakdown_and_the_cost(tiny: qb.Result) -> None:
    lines = qb.report(tiny).splitlines()
    assert lines[0].startswith("| set | pictures | windows: baseline | draft | two-stage |")
    assert any(line.startswith("| tuning | studio | ") for line in lines)
    assert any(line.startswith("| held-out | outdoor | ") for line in lines)
    assert any(line.startswith("| held-out, by kind |") for line in lines)
    assert any(line.startswith("| held-out, by size |") for line in lines)
    assert any(line.startswith("| motion | ") for line in lines)
    assert any(line.startswith("| 360×640 | ") for line in lines)
    assert any(line.startswith("Cost, ") and "ratio" in line and "per contender" in line
               for line in lines)


def test_the_split_is_by_picture_and_covers_every_kind_and_size() -> None:
    assert not set(qb.TUNING) & set(qb.HELD_OUT)
    assert set(qb.TUNING) | set(qb.HELD_OUT) == set(qb.PICTURES)
    assert set(qb.PICTURES) == set(qb.LIBRARY_PHOTOS) | set(qb.SYNTHETIC) | set(qb.SHARED_PHOTOS)
    # Both sets hold shared photos and a synthetic scene; held-out needs no extra package.
    for members in (qb.TUNING, qb.HELD_OUT):
        assert set(members) & set(qb.SHARED_PHOTOS) and set(members) & set(qb.SYNTHETIC)
    assert {d.family for d in qb.DEGRADATIONS} == FAMILIES
    assert set(qb.SIZES) == {(1920, 1080), (1280, 720), (960, 540), (640, 360), (360, 640)}
    gaussian = [d.strength for d in qb.DEGRADATIONS if d.family == "gaussian"]
    motion = [d.strength for d in qb.DEGRADATIONS if d.family == "motion"]
    assert min(gaussian) == 0.8 and max(gaussian) == 5.0
    assert min(motion) == 5.0 and max(motion) == 21.0
    for family, (mild, medium, strong) in qb.LADDERS.items():
        assert len({mild, medium, strong}) == 3, family


ALL_DEGRADATIONS = sorted(
    set(qb.DEGRADATIONS) | {Degradation(f, s) for f, ss in qb.LADDERS.items() for s in ss},
    key=lambda d: d.label,
)


@pytest.mark.parametrize("degradation", ALL_DEGRADATIONS, ids=[d.label for d in ALL_DEGRADATIONS])
def test_every_degradation_makes_a_frame(degradation: Degradation) -> None:
    source = qb.scene_source("game")
    data = qb.make_frame(source, (320, 180), degradation, np.random.default_rng(0))
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG" and im.size == (320, 180)


def test_frames_are_reproducible_and_views_differ() -> None:
    source = qb.scene_source("studio")
    noise = Degradation("noise", 16.0)

    def frame(seed: int, degradation: Degradation | None = noise) -> bytes:
        return qb.make_frame(source, (640, 360), degradation, np.random.default_rng(seed))

    assert frame(1) == frame(1) != frame(2)
    rng = np.random.default_rng(3)
    clean = [qb.make_frame(source, (640, 360), None, rng) for _ in range(3)]
    assert len(set(clean)) == 3  # jittered views: no two frames alike


def test_shared_photos_are_found_beside_the_repository_or_left_out(tmp_path: Path) -> None:
    assert qb.default_photos().name == "quality-photos"
    config = replace(qb.TINY, pictures=("studio", "apple"), photos=tmp_path, ladders=False)
    result = qb.run(config)
    assert result.missing == ["apple"]
    assert [s.pictures for s in result.sets] == [("studio",)]
    assert qb.report(result).startswith("Not found, left out of every figure: apple")
    with pytest.raises(qb.BenchError, match="'apple' is not in"):
        qb.scene_source("apple", tmp_path)


def test_command_prints_json_and_refuses_unknown_scenes() -> None:
    out = CliRunner().invoke(main, ["bench-quality", "--tiny", "--no-speed", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["cost"] is None and [s["name"] for s in data["sets"]] == ["tuning", "held-out"]

    out = CliRunner().invoke(main, ["bench-quality", "--scenes", "nope", "--no-speed"])
    assert out.exit_code == 1
    assert "unknown scene 'nope'" in out.output
