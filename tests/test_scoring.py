from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from support.images import black, blown_out, blurred, darkened, encode, flat, noisy, scene, white

from coverservice import imaging, scoring

CAP = 16_777_216
SIZES = [(1280, 720), (640, 360), (360, 640)]


def luma_of(img: Image.Image, fmt: str = "JPEG") -> npt.NDArray[np.uint8]:
    return imaging.decode_luma(encode(img, fmt), max_pixels=CAP)


def scores_of(img: Image.Image, fmt: str = "JPEG") -> scoring.Scores:
    return scoring.score_luma(luma_of(img, fmt))


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
    assert results[-1].reason == "blurry, well exposed"


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
    result = scoring.score_luma(luma)
    assert result.rejected
    assert result.reason.startswith("flat frame")


def test_dim_frame_with_visible_content_is_not_rejected() -> None:
    result = scores_of(darkened(scene(1280, 720), 0.3))
    assert not result.rejected
    assert result.reason == "sharp, dark"


def test_bad_exposure_scores_lower() -> None:
    img = scene(1280, 720)
    good = scores_of(img)
    dark = scores_of(darkened(img))
    blown = scores_of(blown_out(img))
    assert not dark.rejected and not blown.rejected
    assert dark.score < 0.7 * good.score
    assert blown.score < 0.7 * good.score
    assert blown.bright_clip > 0.3
    assert dark.brightness < 60 < good.brightness
    assert blown.reason == "sharp, overexposed"
    # Exposure, not focus, is what marks them down.
    assert dark.sharpness == pytest.approx(good.sharpness, abs=0.03)
    assert blown.sharpness == pytest.approx(good.sharpness, abs=0.03)


def test_score_is_sharpness_times_exposure() -> None:
    result = scores_of(scene(1280, 720))
    assert result.score == pytest.approx(result.sharpness * result.exposure)
    assert 0.0 < result.exposure <= 1.0


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
        "tiny": np.array([[0, 255, 0], [255, 0, 255], [0, 255, 0]], np.uint8),
    }


@pytest.mark.parametrize("name", list(_extremes()))
def test_scores_stay_in_range(name: str) -> None:
    result = scoring.score_luma(_extremes()[name])
    assert 0.0 <= result.score <= 1.0
    assert 0.0 <= result.sharpness <= 1.0
    assert 0.0 <= result.brightness <= 255.0
    assert 0.0 <= result.dark_clip <= 1.0
    assert 0.0 <= result.bright_clip <= 1.0
    if result.rejected:
        assert result.score == 0.0
    assert result.reason


def test_noisy_and_sharp_scenes_score_in_range() -> None:
    for img in (scene(640, 360), noisy(scene(640, 360)), noisy(blurred(scene(640, 360), 4))):
        result = scores_of(img)
        assert 0.0 < result.score < 1.0


def test_metrics_hold_every_measure() -> None:
    result = scores_of(scene(640, 360))
    metrics = result.metrics()
    assert set(metrics) == {
        "score",
        "sharpness",
        "exposure",
        "brightness",
        "contrast",
        "dark_clip",
        "bright_clip",
    }
    assert all(type(v) is float for v in metrics.values())
    assert metrics["score"] == result.score
    assert metrics["brightness"] == result.brightness
    assert json.loads(json.dumps(metrics)) == metrics


def test_exposure_figures_from_a_known_histogram() -> None:
    luma = np.full((10, 10), 128, np.uint8)
    luma[0, :] = 16  # 10% crushed (16 counts as crushed)...
    luma[1, :] = 17  # ...17 does not
    luma[2, :5] = 239  # 5% blown (239 counts as blown)...
    luma[3, :] = 238  # ...238 does not
    result = scoring.score_luma(luma)
    assert result.dark_clip == pytest.approx(0.10)
    assert result.bright_clip == pytest.approx(0.05)
    assert result.brightness == pytest.approx(float(luma.mean()))
    assert result.contrast == pytest.approx(float(luma.std()))


def test_clipping_costs_exposure_at_equal_brightness() -> None:
    def frame(low: int, high: int) -> npt.NDArray[np.uint8]:
        luma = np.full((180, 320), 128, np.uint8)
        luma[:36], luma[-36:] = low, high  # 20% each, mean stays 128
        return luma

    clipped = scoring.score_luma(frame(1, 255))
    held = scoring.score_luma(frame(40, 216))
    assert clipped.brightness == held.brightness == 128.0
    assert clipped.dark_clip == clipped.bright_clip == pytest.approx(0.2)
    assert clipped.exposure < 0.7 * held.exposure
    assert held.exposure == pytest.approx(1.0)
    assert clipped.reason.endswith(", 40% clipped")
    assert held.reason.endswith(", well exposed")


@pytest.mark.parametrize(
    "luma",
    [
        np.zeros((180, 320, 3), np.uint8),
        np.zeros((180, 320), np.float64),
        np.zeros((2, 320), np.uint8),
    ],
    ids=["3-D", "float", "too small"],
)
def test_score_luma_refuses_what_is_not_luma(luma: npt.NDArray[np.generic]) -> None:
    with pytest.raises(ValueError, match="expected 2-D uint8 luma"):
        scoring.score_luma(luma)  # type: ignore[arg-type]


def test_scoring_stays_pure() -> None:
    # The scorer is a function of a numpy array: no Pillow, no I/O modules pulled in.
    code = (
        "import sys, coverservice.scoring;"
        "print(sorted({'PIL', 'sqlalchemy', 'httpx'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_small_sources_score_as_soft() -> None:
    # A 160×90 screenshot has half the detail the analysis grid holds: brought up to it, it
    # must not look as sharp as the same picture at full detail.
    small = scores_of(scene(160, 90))
    full = scores_of(scene(640, 360))
    assert small.sharpness < full.sharpness - 0.1
