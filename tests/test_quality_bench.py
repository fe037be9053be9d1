from __future__ import annotations

import io
import json
from dataclasses import replace
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
    assert [s["name"] for s in data["splits"]] == ["tuned", "held-out"]
    for split, spec in zip(data["splits"], config.splits, strict=True):
        assert split["sizes"] == [list(size) for size in spec.sizes]
        windows = len(config.scenes) * len(spec.sizes) * config.windows
        pairs = windows * (config.frames_per_window - 1)
        for scorer in qb.SCORERS:
            assert split["windows"][scorer]["total"] == windows
            assert split["pairs"][scorer]["total"] == pairs
            assert 0 <= split["pairs"][scorer]["won"] <= pairs
            by_family = [t for key, t in split["families"].items() if key.startswith(f"{scorer} ")]
            assert sum(t["total"] for t in by_family) == pairs
            assert sum(t["won"] for t in by_family) == split["pairs"][scorer]["won"]
        assert {key.split(" ", 1)[1] for key in split["families"]} <= FAMILIES
        assert len(split["losses"]) == pairs - split["pairs"]["ours"]["won"]
    speed = data["speed"]
    assert speed["frames"] == 2 and speed["draft_ms"] > 0 and speed["ours_ms"] > 0
    assert speed["ratio"] == pytest.approx(speed["ours_ms"] / speed["draft_ms"])


def test_tiny_run_beats_the_baseline(tiny: qb.Result) -> None:
    for split in tiny.splits:
        assert split.pairs["ours"].won > split.pairs["baseline"].won, split.name
        assert split.windows["ours"].won >= split.windows["baseline"].won, split.name


def test_report_holds_both_scorers_and_the_speed_ratio(tiny: qb.Result) -> None:
    text = qb.report(tiny)
    lines = text.splitlines()
    assert lines[0].startswith("| split | sizes | pairs won: ours | baseline |")
    assert any(line.startswith("| tuned | 1280×720, 640×360 | ") for line in lines)
    assert any(line.startswith("| held-out | 960×540, 360×640 | ") for line in lines)
    assert any(line.startswith("| noise | ") for line in lines)
    assert any(line.startswith("Speed, 1280×720 JPEG") and "ratio" in line for line in lines)


def test_held_out_sizes_and_strengths_are_not_tuned_on() -> None:
    tuned, held, unseen, fresh = qb.TUNED, qb.HELD_OUT, qb.UNSEEN, qb.FRESH
    assert qb.SPLITS == (tuned, held, unseen, fresh)
    assert set(tuned.sizes) | set(held.sizes) == {(1280, 720), (960, 540), (640, 360), (360, 640)}
    for other in (held, unseen, fresh):
        assert not set(tuned.sizes) & set(other.sizes)
        # Strengths differ; the kinds of black frames, cards and slates are few.
        strengths = {d for d in other.degradations if not d.kind}
        assert strengths and not strengths & set(tuned.degradations)
    for split in qb.SPLITS:
        assert {d.family for d in split.degradations} == FAMILIES
    assert not set(held.degradations) & set(tuned.degradations)  # kinds too
    # The last split shares no size and no strength with any other.
    for other in (tuned, held, unseen):
        assert not set(fresh.sizes) & set(other.sizes)
        assert not {d for d in fresh.degradations if not d.kind} & set(other.degradations)


ALL_DEGRADATIONS = sorted({d for s in qb.SPLITS for d in s.degradations}, key=lambda d: d.label)


@pytest.mark.parametrize("degradation", ALL_DEGRADATIONS, ids=[d.label for d in ALL_DEGRADATIONS])
def test_every_degradation_makes_a_frame(degradation: Degradation) -> None:
    source = qb.scene_source("game")
    data = qb.make_frame(source, (320, 180), degradation, np.random.default_rng(0))
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG" and im.size == (320, 180)


def test_frames_are_reproducible() -> None:
    source = qb.scene_source("studio")
    noise = Degradation("noise", 16.0)

    def frame(seed: int) -> bytes:
        return qb.make_frame(source, (640, 360), noise, np.random.default_rng(seed))

    assert frame(1) == frame(1) != frame(2)


def test_command_prints_json_and_refuses_unknown_scenes() -> None:
    out = CliRunner().invoke(main, ["bench-quality", "--tiny", "--no-speed", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["speed"] is None and len(data["splits"]) == 2

    out = CliRunner().invoke(main, ["bench-quality", "--scenes", "nope", "--no-speed"])
    assert out.exit_code == 1
    assert "unknown scene 'nope'" in out.output
