from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from click.testing import CliRunner
from PIL import Image
from support.images import (
    black,
    blown_out,
    blurred,
    darkened,
    degraded,
    encode,
    flat,
    noisy,
    scene,
    white,
)

from coverservice import imaging, scoring
from coverservice.cli import main

CAP = 16_777_216
SIZES = [(1280, 720), (640, 360), (360, 640)]


def decoded_of(img: Image.Image, fmt: str = "JPEG") -> scoring.Decoded:
    return imaging.decode_luma(encode(img, fmt), max_pixels=CAP)


def scores_of(img: Image.Image, fmt: str = "JPEG") -> scoring.Scores:
    return scoring.score_luma(decoded_of(img, fmt))


def as_decoded(luma: npt.NDArray[np.uint8], block: int = 2) -> scoring.Decoded:
    """``luma`` as a JPEG's DCT-scaled decode that needed no resampling (a 1280×720
    source's, with 2-px blocks, unless told)."""
    return scoring.Decoded(luma=luma, coded=luma, block=block)


def score(luma: npt.NDArray[np.uint8], block: int = 2) -> scoring.Scores:
    return scoring.score_luma(as_decoded(luma, block))


# --- sharpness -------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=["720p", "360p", "portrait"])
def test_sharper_beats_blurred(size: tuple[int, int]) -> None:
    img = scene(*size)
    results = [scores_of(img)] + [scores_of(blurred(img, r)) for r in (1, 2, 4, 8)]
    sharpness = [s.sharpness for s in results]
    score = [s.score for s in results]
    assert sharpness == sorted(sharpness, reverse=True)
    assert score == sorted(score, reverse=True)
    assert len(set(score)) == len(score)
    assert results[0].reason == "sharp, well exposed"
    assert results[-1].reason.startswith("blurry, ")


@pytest.mark.parametrize("seed", [0, 1])
def test_sharpness_is_comparable_across_source_sizes(seed: int) -> None:
    # The same picture at three resolutions, sharp and with the same relative blur.
    for relative_blur in (0.0, 1 / 320):
        values = []
        for width, height in [(1920, 1080), (1280, 720), (640, 360)]:
            img = scene(width, height, seed=seed)
            if relative_blur:
                img = blurred(img, relative_blur * width)
            values.append(scores_of(img).sharpness)
        assert max(values) - min(values) < 0.03, values


def test_sharpness_does_not_depend_on_the_source_format() -> None:
    img = scene(1280, 720)
    values = [scores_of(img, fmt).sharpness for fmt in ("JPEG", "PNG", "WEBP")]
    assert max(values) - min(values) < 0.02, values


def test_small_sources_score_as_soft() -> None:
    # A 160×90 screenshot has half the detail the analysis grid holds: brought up to it, it
    # must not look as sharp as the same picture at full detail.
    small = scores_of(scene(160, 90))
    full = scores_of(scene(640, 360))
    assert small.sharpness < full.sharpness - 0.1


# --- noise and blocks: each lowers the score, neither passes for detail -------------------


def test_noise_is_measured_and_costs_score_but_not_sharpness() -> None:
    img = scene(1280, 720)
    results = [scores_of(img)] + [scores_of(noisy(img, sigma)) for sigma in (10, 20, 40)]
    noise = [s.noise for s in results]
    assert noise == sorted(noise) and noise[0] < scoring.NOISE_FREE < noise[1]
    assert [s.score for s in results] == sorted((s.score for s in results), reverse=True)
    # The Laplacian's noise energy is taken out: grain does not pass for focus.
    assert all(abs(s.sharpness - results[0].sharpness) < 0.02 for s in results)
    assert results[0].noise_factor == 1.0
    assert results[-1].reason == "sharp, well exposed, noisy"


def test_noise_estimate_ignores_picture_texture() -> None:
    # A textured clean frame (the scene's bottom third is random cells) is not noisy.
    assert scores_of(scene(1280, 720)).noise < 0.5 * scoring.NOISE_FREE


def recompressed(img: Image.Image, quality: int) -> Image.Image:
    """A low-bitrate encode, decoded: what a screenshot of a starved stream holds."""
    return Image.open(io.BytesIO(encode(img, quality=quality))).convert("RGB")


# Every size whose 8×8 blocks land 2, 4, 8/3 or 3 analysis pixels apart, or sit in a small
# or portrait frame.
BLOCK_SIZES = [(1280, 720), (960, 540), (854, 480), (640, 360), (360, 640), (540, 960)]


@pytest.mark.parametrize("size", BLOCK_SIZES, ids=[f"{w}x{h}" for w, h in BLOCK_SIZES])
def test_block_artefacts_are_measured_and_cost_score(size: tuple[int, int]) -> None:
    img = scene(*size)
    clean = scores_of(img)
    blocky = [scores_of(recompressed(img, q)) for q in (15, 5)]
    assert clean.block_factor > 0.95  # a clean JPEG shows a little of its own grid
    assert clean.blockiness < blocky[0].blockiness < blocky[1].blockiness
    assert scoring.BLOCK_FREE < blocky[0].blockiness
    assert clean.score > blocky[0].score > blocky[1].score
    assert blocky[1].reason.endswith(", blocky")
    # The block edges pass for detail: only blockiness tells these frames apart. (This
    # scene's darkest percent sits near BLACK_LIFT, and flattening blocks moves it by a
    # few levels: a few percent of exposure either way.)
    for result in blocky:
        assert result.sharpness == pytest.approx(clean.sharpness, abs=0.03)
        assert result.exposure == pytest.approx(clean.exposure, abs=0.06)


def blocks_of(block: int, *, seed: int = 0) -> npt.NDArray[np.uint8]:
    """A 180×320 luma of flat ``block``-px squares on the grid from the top left: what a
    starved encoder leaves of a picture (every block reduced to its mean), with a little
    grain that hides nothing."""
    rng = np.random.default_rng(seed)
    means = rng.integers(60, 200, (180 // block + 1, 320 // block + 1)).astype(np.uint8)
    luma = np.kron(means, np.ones((block, block), np.uint8))[:180, :320]
    grain = rng.integers(0, 2, luma.shape, dtype=np.uint8)
    return luma + grain


@pytest.mark.parametrize("block", [2, 4, 8])
def test_blockiness_is_read_on_the_jpeg_grid(block: int) -> None:
    on_grid = score(blocks_of(block), block)
    assert on_grid.blockiness > 0.9 and on_grid.reason.endswith(", blocky")
    # The same squares a pixel off the grid are edges of the picture, not of its blocks.
    off_grid = score(np.ascontiguousarray(blocks_of(block)[1:, 1:]), block)
    assert off_grid.blockiness == 0.0 and off_grid.block_factor == 1.0


def squares(*, stripes: bool = False) -> npt.NDArray[np.uint8]:
    """A checkerboard of 8-px squares on the grid (or stripes 8 px wide), with grain."""
    grain = np.random.default_rng(0).integers(0, 2, (180, 320), dtype=np.uint8)
    x = np.arange(320)[None, :] // 8 % 2
    y = np.arange(180)[:, None] // 8 % 2 * (not stripes)
    return (100 + 80 * (x ^ y)).astype(np.uint8) + grain


def test_blockiness_needs_the_grid_in_both_directions() -> None:
    # Vertical stripes a block wide step on every block edge across, never down: picture,
    # not artefacts. The same squares in both directions are blocks.
    assert score(squares(stripes=True), 8).block_factor == 1.0
    assert score(squares(), 8).blockiness > 0.9


def test_a_picture_with_a_pitch_of_its_own_still_shows_its_blocks() -> None:
    # Stripes 2 px wide step between pixels 0|1 and 2|3 of every 4-px block: half the
    # positions off the edges are full of the picture's own steps. Blocks still show
    # against the quiet one left.
    stripes = (30 * ((np.arange(320) + 1) // 2 % 2)).astype(np.uint8)
    blocky = blocks_of(4) + stripes
    assert score(blocky, 4).blockiness > 0.9
    # ...and the stripes alone, on a plain grainy frame, are no blocks.
    grain = np.random.default_rng(1).integers(0, 3, (180, 320), dtype=np.uint8)
    plain = (120 + grain + stripes).astype(np.uint8)
    assert score(plain, 4).block_factor == 1.0


def test_a_few_steps_on_block_edges_are_not_a_pattern() -> None:
    # A smooth frame whose only steps are a box's sides, all on block edges: every step
    # is on an edge, yet one box is not a grid of blocks (SEAM_PRIOR).
    y, x = np.mgrid[0:180, 0:320]
    luma = 120 + 60 * np.sin(x / 9) * np.cos(y / 7)  # changes of up to ~8 levels, smooth
    luma[48:136, 80:240] += 30  # sides between pixels 47|48, 135|136, 79|80, 239|240
    luma = luma.astype(np.uint8)
    result = score(luma)  # 2-px blocks: the edges of the most common source, 1280×720
    assert not result.rejected
    assert 0.0 < result.blockiness < 0.5
    assert score(squares(), 8).blockiness > 0.9


# --- exposure ----------------------------------------------------------------------------


def test_dim_frame_with_visible_content_is_not_rejected() -> None:
    result = scores_of(darkened(scene(1280, 720), 0.3))
    assert not result.rejected
    assert result.reason == "sharp, dark"


@pytest.mark.parametrize(("factor", "light"), [(0.75, "well exposed"), (0.6, "dark")])
def test_the_reason_calls_a_frame_dark_only_when_its_exposure_suffers(factor: float, light: str) -> None:
    result = scores_of(darkened(scene(1280, 720), factor))
    assert result.reason == f"sharp, {light}"
    assert (result.exposure < 0.9) == (light == "dark")


def test_bad_exposure_scores_lower() -> None:
    img = scene(1280, 720)
    good = scores_of(img)
    dark = scores_of(darkened(img))
    blown = scores_of(blown_out(img))
    assert not dark.rejected and not blown.rejected
    assert dark.score < 0.7 * good.score
    assert blown.score < 0.7 * good.score
    assert blown.bright_clip > 0.3
    assert dark.white_level < scoring.WHITE_REACH < good.white_level
    assert blown.reason == "sharp, overexposed"
    # Exposure, not focus, is what marks them down.
    assert dark.sharpness == pytest.approx(good.sharpness, abs=0.03)
    assert blown.sharpness == pytest.approx(good.sharpness, abs=0.03)


@pytest.mark.parametrize(
    ("family", "strengths", "figure", "direction"),
    [
        ("haze", (0.3, 0.5, 0.7), "black_level", +1),
        ("under", (0.4, 0.2, 0.1), "white_level", -1),
        ("over", (2.0, 3.0, 5.0), "bright_clip", +1),
    ],
)
def test_each_exposure_fault_moves_its_figure_and_the_score(
    family: str, strengths: tuple[float, ...], figure: str, direction: int
) -> None:
    img = scene(1280, 720)
    results = [scores_of(img)] + [scores_of(degraded(img, family, s)) for s in strengths]
    values = [getattr(s, figure) for s in results]
    assert values == sorted(values, reverse=direction < 0)
    exposure = [s.exposure for s in results]
    assert exposure == sorted(exposure, reverse=True) and exposure[0] > exposure[1]
    assert [s.score for s in results] == sorted((s.score for s in results), reverse=True)


def test_a_low_key_scene_is_not_marked_down_for_being_dark() -> None:
    # Night, a stage: dark overall, but the highlights reach white. Only clipping and
    # dim highlights cost exposure, not a mean far below mid-grey.
    luma = decoded_of(scene(1280, 720)).luma
    low_key = (255 * (luma / luma.max()) ** 2.5).astype(np.uint8)
    result = score(low_key)
    assert not result.rejected
    assert result.brightness < 0.6 * float(luma.mean())
    assert result.white_level > scoring.WHITE_REACH
    assert result.exposure > 0.9


def test_exposure_figures_from_a_known_histogram() -> None:
    # Every row alike, so any sample of rows sees the same histogram.
    row = np.full(100, 128, np.uint8)
    row[:10] = 5  # 10% crushed (5 counts as crushed)...
    row[10:20] = 6  # ...6 does not
    row[20:25] = 250  # 5% blown (250 counts as blown)...
    row[25:35] = 249  # ...249 does not
    luma = np.tile(row, (40, 1))
    result = score(luma)
    assert result.dark_clip == pytest.approx(0.10)
    assert result.bright_clip == pytest.approx(0.05)
    assert result.black_level == 5.0 and result.white_level == 250.0
    assert result.brightness == pytest.approx(float(luma.mean()))
    assert result.contrast == pytest.approx(float(luma.std()))


def test_clipping_costs_exposure_at_equal_brightness() -> None:
    def frame(low: int, high: int) -> npt.NDArray[np.uint8]:
        luma = np.full((180, 320), 128, np.uint8)
        luma[:, :64], luma[:, -64:] = low, high  # 20% each, mean stays 128
        return luma

    clipped = score(frame(1, 255))
    held = score(frame(30, 226))
    assert clipped.brightness == held.brightness == 128.0
    assert clipped.dark_clip == clipped.bright_clip == pytest.approx(0.2)
    assert clipped.exposure < 0.7 * held.exposure
    assert held.exposure == pytest.approx(1.0)


# --- rejections ------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=["720p", "360p", "portrait"])
def test_black_frames_are_rejected(size: tuple[int, int]) -> None:
    result = scores_of(black(*size))
    assert result.rejected
    assert result.score == 0.0
    assert result.reason.startswith("black frame (mean luma ")
    assert 1.0 < result.brightness < 5.0


def test_white_frames_are_rejected() -> None:
    result = scores_of(white(1280, 720))
    assert result.rejected
    assert result.score == 0.0
    assert result.reason == "white frame (mean luma 252.0)"


@pytest.mark.parametrize("value", [40, 128, 200])
def test_flat_frames_are_rejected(value: int) -> None:
    result = scores_of(flat(1280, 720, value))
    assert result.rejected
    assert result.score == 0.0
    assert result.reason.startswith("flat frame (contrast ")


def test_nearly_flat_frame_with_noise_is_still_flat() -> None:
    rng = np.random.default_rng(0)
    luma = np.clip(rng.normal(100, 2, (180, 320)), 0, 255).astype(np.uint8)
    result = score(luma)
    assert result.rejected
    assert result.reason.startswith("flat frame")


@pytest.mark.parametrize(
    ("family", "kind", "reason"),
    [
        ("testcard", "smpte", "test card ("),
        ("testcard", "ebu", "test card ("),
        ("testcard", "nosignal", "uniform frame ("),
        ("testcard", "offline", "uniform frame ("),
        ("black", "logo", "black frame ("),
        ("flat", "ramp", "featureless frame ("),
        ("flat", "vignette", "featureless frame ("),
    ],
)
@pytest.mark.parametrize("size", [(1280, 720), (360, 640)], ids=["720p", "portrait"])
def test_no_picture_is_rejected_with_a_reason(
    family: str, kind: str, reason: str, size: tuple[int, int]
) -> None:
    result = scores_of(degraded(scene(*size), family, kind=kind))
    assert result.rejected and result.score == 0.0
    assert result.reason.startswith(reason), result.reason


@pytest.mark.parametrize("size", SIZES + [(960, 540), (160, 90)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pictures_are_not_rejected(size: tuple[int, int], seed: int) -> None:
    soft = blurred(scene(*size, seed=seed), 4 * min(size) / 720)  # visibly out of focus
    for img in (scene(*size, seed=seed), soft):
        result = scores_of(img)
        assert not result.rejected, result.reason
        assert result.score > 0.0


# --- the interface -----------------------------------------------------------------------


def _extremes() -> dict[str, npt.NDArray[np.uint8]]:
    rng = np.random.default_rng(1)
    checker = (np.indices((180, 320)).sum(axis=0) % 2 * 255).astype(np.uint8)
    one_dot = np.zeros((180, 320), np.uint8)
    one_dot[90, 160] = 255
    half = np.zeros((180, 320), np.uint8)
    half[:, 160:] = 255
    return {
        "noise": rng.integers(0, 256, (180, 320), dtype=np.uint8),
        "checker": checker,
        "one dot": one_dot,
        "half and half": half,
        "ramp": np.tile(np.linspace(0, 255, 320).astype(np.uint8), (180, 1)),
        "zeros": np.zeros((180, 320), np.uint8),
        "smallest": rng.integers(0, 256, (8, 8), dtype=np.uint8),
        "thin": rng.integers(0, 256, (8, 700), dtype=np.uint8),
        "tall": rng.integers(0, 256, (700, 8), dtype=np.uint8),
    }


@pytest.mark.parametrize("name", list(_extremes()))
def test_scores_stay_in_range(name: str) -> None:
    result = score(_extremes()[name])
    assert 0.0 <= result.score <= 1.0
    for share in ("sharpness", "exposure", "dark_clip", "bright_clip", "blockiness", "flat_area"):
        assert 0.0 <= getattr(result, share) <= 1.0, share
    assert 0.0 <= result.black_level <= result.white_level <= 255.0
    assert 0.0 <= result.brightness <= 255.0 and result.noise >= 0.0
    if result.rejected:
        assert result.score == 0.0
    else:
        assert result.score == pytest.approx(
            result.sharpness * result.exposure * result.noise_factor * result.block_factor
        )
    assert result.reason


def test_metrics_hold_every_measure_as_json_floats_and_the_stage() -> None:
    result = scores_of(scene(640, 360))
    metrics = result.metrics()
    assert set(metrics) == {
        "stage", "score", "draft_score", "sharpness", "exposure", "noise_factor", "block_factor", "brightness",
        "contrast", "black_level", "white_level", "dark_clip", "bright_clip", "noise",
        "blockiness", "flat_area",
    }
    assert metrics.pop("stage") == "draft"
    assert all(type(v) is float for v in metrics.values())
    assert metrics["score"] == result.score
    assert json.loads(json.dumps(metrics)) == metrics
    rejected = scores_of(black(640, 360)).metrics()
    assert rejected.pop("stage") == "draft"
    assert all(type(v) is float for v in rejected.values())


@pytest.mark.parametrize(
    "luma",
    [
        np.zeros((180, 320, 3), np.uint8),
        np.zeros((180, 320), np.float64),
        np.zeros((7, 320), np.uint8),
    ],
    ids=["3-D", "float", "too small"],
)
def test_score_luma_refuses_what_is_not_luma(luma: npt.NDArray[np.generic]) -> None:
    with pytest.raises(ValueError, match="expected 2-D uint8 luma"):
        score(luma)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("coded", "block"),
    [(np.zeros((270, 480, 3), np.uint8), 4), (np.zeros((270, 480), np.int16), 4),
     (np.zeros((270, 480), np.uint8), 3)],
    ids=["3-D", "int16", "3 px blocks"],
)
def test_score_luma_refuses_a_decode_it_cannot_read_blocks_from(
    coded: npt.NDArray[np.generic], block: int
) -> None:
    luma = np.zeros((180, 320), np.uint8)
    with pytest.raises(ValueError, match="expected a 2-D uint8 decode with 2, 4 or 8 px blocks"):
        scoring.score_luma(scoring.Decoded(luma, coded, block))  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [(1280, 720), (960, 540)], ids=["one array", "two arrays"])
def test_score_luma_leaves_its_input_alone(size: tuple[int, int]) -> None:
    decoded = decoded_of(recompressed(scene(*size), 10))
    before = decoded.luma.copy(), decoded.coded.copy()
    scoring.score_luma(decoded)
    assert np.array_equal(decoded.luma, before[0]) and np.array_equal(decoded.coded, before[1])


def test_scoring_stays_pure() -> None:
    # The scorer is a function of a numpy array: no Pillow, no I/O modules pulled in.
    code = (
        "import sys, coverservice.scoring;"
        "print(sorted({'PIL', 'sqlalchemy', 'httpx'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- coverservice score ------------------------------------------------------------------


def test_score_command_explains_each_file_and_picks_one(tmp_path: Path) -> None:
    base = scene(1280, 720, seed=4)
    files = {
        "soft.jpg": encode(blurred(base, 3)),
        "sharp.jpg": encode(base),
        "bars.jpg": encode(degraded(base, "testcard", kind="smpte")),
        "page.jpg": b"<html>",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    paths = [str(tmp_path / name) for name in files]

    out = CliRunner().invoke(main, ["score", *paths])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].startswith(f"{paths[0]}: score ") and "sharpness" in lines[1]
    assert any(line.startswith(f"{paths[2]}: score 0.000 (draft), rejected: test card") for line in lines)
    assert f"{paths[3]}: rejected: not an image" in out.output
    assert lines[-1] == f"would pick: {paths[1]}"

    out = CliRunner().invoke(main, ["score", "--json", *paths])
    records = [json.loads(line) for line in out.output.splitlines()]
    assert records[-1] == {"pick": paths[1]}
    assert records[1]["metrics"]["score"] > records[0]["metrics"]["score"] > 0
    assert records[2]["rejected"] and records[3]["rejected"]
    assert records[1]["metrics"]["stage"] == "draft"  # as the worker scores

    out = CliRunner().invoke(main, ["score", "--json", "--detail", *paths])
    records = [json.loads(line) for line in out.output.splitlines()]
    assert records[-1] == {"pick": paths[1]} and records[1]["metrics"]["stage"] == "detail"


# --- the detail stage ----------------------------------------------------------------------


def both_stages(data: bytes) -> tuple[scoring.Scores, scoring.Scores]:
    draft = scoring.score_luma(imaging.decode_luma(data, max_pixels=CAP))
    return draft, scoring.score_detail(draft, imaging.decode_detail(data, max_pixels=CAP))


@pytest.mark.parametrize("size", [(1280, 720), (1920, 1080)], ids=["720p", "1080p"])
def test_the_detail_stage_sees_a_mild_blur_the_draft_hardly_does(size: tuple[int, int]) -> None:
    # σ 0.8 px of the large cover: 0.2 px at the draft's 320×180, plain at 1280 px.
    from coverservice import scenes

    view = scenes.view(scenes.source("studio"), size, zoom=1.08)
    sharp = both_stages(scenes.jpeg(view, 88))
    blur = scenes.degrade(view, scenes.Degradation("gaussian", 0.8), np.random.default_rng(0))
    soft = both_stages(scenes.jpeg(blur, 88))
    draft_loss = 1 - soft[0].score / sharp[0].score
    detail_loss = 1 - soft[1].score / sharp[1].score
    assert detail_loss > 0.06 and detail_loss > 1.5 * draft_loss, (draft_loss, detail_loss)
    assert sharp[1].stage == soft[1].stage == "detail"


def streaked_texture(*, streak: int = 0, seed: int = 0) -> bytes:
    """A 1280×720 JPEG of texture with detail at every scale (foliage, gravel), or the same
    smeared along rows over ``streak`` px (a pan) and crisped up down the columns, as a
    camera's sharpening would: as much detail on average, none of it along the rows."""
    rng = np.random.default_rng(seed)
    texture = np.zeros((720, 1280))
    for octave in range(6):
        f = 2**octave
        cells = rng.normal(0, 1, (720 // f + 2, 1280 // f + 2)).astype(np.float32)
        grown = Image.fromarray(cells, "F").resize((1280 + 2 * f, 720 + 2 * f), Image.Resampling.BICUBIC)
        texture += np.asarray(grown)[:720, :1280] * f**0.8
    texture = 128 + 40 * (texture - texture.mean()) / texture.std()
    if streak:
        kernel = np.ones(streak) / streak
        texture = np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="same"), 1, texture)
        texture += 0.6 * (2 * texture - np.roll(texture, 1, 0) - np.roll(texture, -1, 0))
    luma = np.clip(np.rint(texture), 0, 255).astype(np.uint8)
    return encode(Image.fromarray(luma, "L").convert("RGB"))


def test_the_detail_stage_sees_detail_lost_along_one_direction() -> None:
    # Averaged over directions the streaked frame holds as much fine detail as the clean
    # one; along the rows it holds none. Only the directional measure ranks it below.
    clean = both_stages(streaked_texture())[1]
    streaked = both_stages(streaked_texture(streak=5))[1]
    assert streaked.streak > clean.streak + 0.2
    assert streaked.fine_detail_weakest < clean.fine_detail_weakest
    assert clean.score > streaked.score


def test_motion_blur_is_named_as_such() -> None:
    from coverservice import scenes

    view = scenes.view(scenes.source("game"), (1280, 720), zoom=1.06)
    shaken = scenes.degrade(view, scenes.Degradation("motion", 9.0), np.random.default_rng(1))
    gauss = scenes.degrade(view, scenes.Degradation("gaussian", 2.5), np.random.default_rng(5))
    clean = both_stages(scenes.jpeg(view, 88))[1]
    moved = both_stages(scenes.jpeg(shaken, 88))[1]
    soft = both_stages(scenes.jpeg(gauss, 88))[1]
    assert moved.reason.startswith("motion blur"), moved.reason
    assert not soft.reason.startswith("motion blur"), soft.reason
    assert clean.score > moved.score and clean.score > soft.score
    assert scoring.why_lower(moved, clean) == "motion blur"
    assert scoring.why_lower(soft, clean) == "softer"


def test_the_detail_stage_reads_noise_where_texture_cannot_pass_for_it() -> None:
    img = scene(1280, 720)
    clean = both_stages(encode(img))[1]
    grainy = both_stages(encode(noisy(img, 8)))[1]
    assert clean.detail_noise < scoring.DETAIL_NOISE_FREE < grainy.detail_noise
    assert grainy.score < clean.score
    assert grainy.reason.endswith("noisy")
    assert scoring.why_lower(grainy, clean) == "noisier"


def test_detail_scores_say_their_stage_and_keep_the_draft() -> None:
    data = encode(scene(960, 540))
    draft, detail = both_stages(data)
    metrics = detail.metrics()
    assert metrics["stage"] == "detail" and draft.metrics()["stage"] == "draft"
    assert metrics["draft_score"] == draft.score == draft.metrics()["draft_score"]
    assert {"fine_detail", "fine_detail_weakest", "streak", "detail_noise",
            "detail_noise_factor"} <= set(metrics)
    assert all(type(v) is float for k, v in metrics.items() if k != "stage")
    assert json.loads(json.dumps(metrics)) == metrics
    # What the draft decided stays decided: rejection, exposure, blockiness.
    assert (detail.rejected, detail.exposure, detail.blockiness) == (
        draft.rejected, draft.exposure, draft.blockiness
    )
    assert 0.0 <= detail.score <= 1.0 and 0.0 <= detail.sharpness <= 1.0
    rejected = scores_of(black(640, 360))
    assert scoring.score_detail(rejected, scoring.Detail(np.zeros((360, 640), np.uint8), 1.0)) is rejected


def test_score_detail_refuses_what_is_not_luma() -> None:
    draft = scores_of(scene(640, 360))
    with pytest.raises(ValueError, match="expected 2-D uint8 luma"):
        scoring.score_detail(draft, scoring.Detail(np.zeros((360, 640, 3), np.uint8), 1.0))


def test_contenders_are_the_best_drafts_and_the_best_once_noise_is_set_aside() -> None:
    scores = [0.5, 0.8, 0.1, 0.75, 0.7]
    factors = [1.0, 1.0, 0.1, 1.0, 1.0]
    # Two best drafts, then the frame the draft's noise figure marked down the most.
    assert scoring.contenders(scores, factors) == [1, 2, 3]
    assert scoring.contenders(scores, [1.0] * 5) == [1, 3, 4]
    assert scoring.contenders([0.9, 0.2, 0.1], [1.0, 1.0, 1.0]) == [0]  # far below: no seat
    assert scoring.contenders([], []) == []
    with pytest.raises(ValueError):
        scoring.contenders([0.5], [])
