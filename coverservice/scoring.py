"""How good a cover a frame makes, from its luma alone (pure: numpy arrays in, numbers out).

The luma comes from ``imaging.decode_luma`` at one analysis resolution (320×180, or that
area at the source's aspect ratio), so every figure means the same whatever the source
size. A verdict is a product of factors, each 0..1 and each a thing people notice:

    score = sharpness × exposure × noise_factor × block_factor

- **sharpness**: the Laplacian's energy per unit of contrast, ``d / (d + SHARPNESS_HALF)``.
  The noise's share of that energy is taken out first, so grain does not pass for detail;
  dividing by the luma's standard deviation keeps it about focus, not lighting (a dim or
  hazy frame is marked down once, by exposure).
- **exposure**: dim, washed out or blown, read off the histogram. Highlights that never
  get bright (``white_level``, the 99th percentile, below ``WHITE_REACH``) look dim;
  blacks that are grey (``black_level``, the 1st percentile, above ``BLACK_LIFT``) look
  hazy; pixels crushed to black or blown to white carry no picture. There is no pull
  towards mid-grey: a night scene or a stage is low-key, not badly exposed, and contrast
  beyond what a good frame has earns nothing, so an over-exposed frame cannot win on its
  stretched range.
- **noise**: σ of the sensor noise. Picture detail is uneven (edges here, sky there);
  noise is everywhere, so the quietest tenth of the Laplacian's 8×8 tiles holds little
  else, and white noise of σ gives this Laplacian a mean square of 20 σ². Up to
  ``NOISE_FREE`` (what clean JPEGs show at this scale) costs nothing.
- **blockiness**: low-bitrate video flattens each 8×8 block. At the analysis scale a
  block is 2, 8/3 or 4 pixels wide and the grid still starts at 0 (DCT scaling keeps it
  aligned), so unchanged neighbours (|difference| ≤ 1) pile up inside blocks and thin
  out across their edges. The measure is how unevenly they fall over the grid's phases,
  in both directions (content is rarely periodic on one grid in both). Up to
  ``BLOCK_FREE`` (what the screenshot's own JPEG encoding shows) costs nothing.

Frames that are no cover at all are rejected with score 0 and a reason: black (FFmpeg
``blackframe``'s 98 % below 32), white, flat (almost no contrast), uniform (one shade over
90 % of the frame: "no signal" and "offline" slates, a black frame with a logo), test
cards (a few flat shades: colour bars) and featureless frames (gradients without an edge).

Speed: this runs on every screenshot, after a decode that takes ~1.5 ms, and must add
little (the quality benchmark prints the ratio). So each figure comes from as few array
passes as it needs, and some from a sample of rows: the histogram from every fourth row
(14 400 pixels at the analysis size put a percentile within 0.1 % of the whole frame's),
the Laplacian and the noise operator at every other row (each reads the rows above and
below, so every row takes part), horizontal neighbours on every other row. At this size
the number of numpy calls costs as much as the pixels they touch. (Sampling the Laplacian
at every fourth row saves another ~3 % of a decode but costs block artefacts at 854- and
540-wide sizes: measured, not taken.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

# Detail ratio (Laplacian RMS / luma std) that scores 0.5 sharpness. At the analysis scale:
# in-focus photos 0.5–0.9, visibly blurred ones 0.05–0.3, fine texture up to 2.4.
SHARPNESS_HALF = 0.5

DARK_LEVEL = 5  # luma at or below: crushed to black (dark_clip)
BRIGHT_LEVEL = 250  # luma at or above: blown to white (bright_clip)
DARK_CLIP_COST = 0.5  # exposure lost per unit of crushed fraction (black areas are common)
BRIGHT_CLIP_COST = 2.0  # ...and of blown fraction (blown areas are what people notice)
WHITE_REACH = 160.0  # a white_level below this marks the frame down: it looks dim
BLACK_LIFT = 40.0  # a black_level above this marks the frame down: it looks washed out...
BLACK_SPAN = 200.0  # ...to nothing at BLACK_LIFT + BLACK_SPAN

NOISE_FREE = 1.0  # noise σ (luma levels at the analysis scale) that costs nothing
NOISE_SCALE = 1.0  # σ beyond NOISE_FREE that halves the noise factor
BLOCK_FREE = 0.10  # blockiness that costs nothing: clean JPEGs (their own blocks) stay below
BLOCK_COST = 3.0  # block_factor = exp(-BLOCK_COST × (blockiness - BLOCK_FREE))
# Grid periods as fold lengths at the analysis scale: 8 covers the 8-px blocks of 1280- and
# 640-wide sources (2 and 4 px) and of 960-wide ones (8/3 px: 3 blocks in 8 px); 3 covers
# 854 px; 16 covers 480 px (16/3 px).
BLOCK_FOLDS = (3, 8, 16)

BLACK_LEVEL = 32  # FFmpeg blackframe's default threshold...
BLANK_FRACTION = 0.98  # ...and its default amount
WHITE_LEVEL = 255 - BLACK_LEVEL
FLAT_CONTRAST = 5.0  # luma std below which nothing in the frame is visible
UNIFORM_SHARE = 0.90  # one shade (±3 levels) covering this much: a slate, not a picture
CARD_FLAT_AREA = 0.90  # test card: this share of neighbours unchanged...
CARD_SHADES = 16  # ...and 95 % of the pixels in at most this many luma levels
FEATURELESS_AREA = 0.975  # this share of neighbours within 2 levels: a backdrop, no picture

_HISTOGRAM_STEP = 4  # rows: the histogram's sample
# Immerkær: for white noise of σ, the mean magnitude of his operator is σ × 6 × √(2/π).
_IMMERKAER = math.sqrt(math.pi / 2) / 6
_NOISE_TILE = 8
_NOISE_QUANTILE = 0.1
_LEVELS = np.arange(256, dtype=np.float64)
# counts @ _HISTOGRAM_SUMS: Σ luma, Σ luma², and the pixels crushed (dark_clip), blown
# (bright_clip), below BLACK_LEVEL and above WHITE_LEVEL: one product instead of six sums.
_HISTOGRAM_SUMS = np.stack(
    (
        _LEVELS,
        _LEVELS * _LEVELS,
        _LEVELS <= DARK_LEVEL,
        _LEVELS >= BRIGHT_LEVEL,
        _LEVELS < BLACK_LEVEL,
        _LEVELS > WHITE_LEVEL,
    ),
    axis=1,
).astype(np.float64)
# black_level, white_level, and the 5th and 95th percentiles (the uniform-frame check).
_PERCENTILES = (0.01, 0.99, 0.05, 0.95)
_FOLD_STARTS = tuple(sum(BLOCK_FOLDS[:i]) for i in range(len(BLOCK_FOLDS)))


@dataclass(frozen=True)
class Scores:
    score: float  # combined, 0..1, higher is better; 0 when rejected
    sharpness: float  # 0..1, noise-corrected
    exposure: float  # 0..1
    brightness: float  # mean luma, 0..255
    contrast: float  # luma standard deviation
    black_level: float  # 1st percentile of luma
    white_level: float  # 99th percentile of luma
    dark_clip: float  # share of pixels <= DARK_LEVEL
    bright_clip: float  # share of pixels >= BRIGHT_LEVEL
    noise: float  # noise σ, luma levels at the analysis resolution
    blockiness: float  # 0..1, unevenness of unchanged neighbours over the block grid
    flat_area: float  # share of neighbouring pixels that differ by at most one level
    rejected: bool
    reason: str  # what a person reads: "sharp, well exposed", "black frame (mean luma 3.1)"

    @property
    def noise_factor(self) -> float:
        return _noise_factor(self.noise)

    @property
    def block_factor(self) -> float:
        return _block_factor(self.blockiness)

    def metrics(self) -> dict[str, float]:
        """Every numeric measure by name, for storing beside the frame as JSON."""
        return {
            "score": self.score,
            "sharpness": self.sharpness,
            "exposure": self.exposure,
            "noise_factor": self.noise_factor,
            "block_factor": self.block_factor,
            "brightness": self.brightness,
            "contrast": self.contrast,
            "black_level": self.black_level,
            "white_level": self.white_level,
            "dark_clip": self.dark_clip,
            "bright_clip": self.bright_clip,
            "noise": self.noise,
            "blockiness": self.blockiness,
            "flat_area": self.flat_area,
        }


def score_luma(luma: npt.NDArray[np.uint8]) -> Scores:
    """Score a 2-D uint8 luma image (at least 8×8)."""
    if luma.ndim != 2 or luma.dtype != np.uint8 or min(luma.shape) < 8:
        raise ValueError(f"expected 2-D uint8 luma of at least 8×8, got {luma.dtype} {luma.shape}")

    # --- histogram: exposure, and most rejections -------------------------------------
    sample = luma[::_HISTOGRAM_STEP]
    counts = np.bincount(sample.ravel(), minlength=256)
    total = sample.size
    cumulative = np.cumsum(counts)  # pixels at or below each level
    level_sum, square_sum, dark, bright, black, white = (counts @ _HISTOGRAM_SUMS).tolist()
    brightness = level_sum / total
    contrast = math.sqrt(max(0.0, square_sum / total - brightness * brightness))
    low, high, p5, p95 = np.searchsorted(cumulative, _percentile_counts(total)).tolist()
    black_level, white_level = float(low), float(high)
    dark_clip, bright_clip = dark / total, bright / total
    exposure = _exposure(black_level, white_level, dark_clip, bright_clip)

    # --- unchanged neighbours: flat area and blockiness -------------------------------
    # Horizontal pairs on every other row, vertical pairs on all rows (a block grid shows
    # in the rows' profile only with every row boundary).
    still_x = _within(luma[::2, 1:], luma[::2, :-1], 1)
    still_y = _within(luma[1:], luma[:-1], 1)
    # Per column (horizontal pairs) and per row (vertical ones). Summing the bytes of a
    # bool array is several times faster than counting it.
    columns = _phases(still_x.view(np.uint8).sum(axis=0, dtype=np.uint16))
    rows = _phases(still_y.view(np.uint8).sum(axis=1, dtype=np.uint16))
    flat_area = (columns[-1] + rows[-1]) / (still_x.size + still_y.size)

    reason = _rejection(
        luma, counts, cumulative, brightness, contrast, black / total, white / total,
        p95 - p5, flat_area,
    )
    if reason is not None:
        return Scores(
            score=0.0, sharpness=0.0, exposure=exposure, brightness=brightness,
            contrast=contrast, black_level=black_level, white_level=white_level,
            dark_clip=dark_clip, bright_clip=bright_clip, noise=0.0, blockiness=0.0,
            flat_area=flat_area, rejected=True, reason=reason,
        )

    # --- second differences: sharpness and noise ---------------------------------------
    # In int16 (|values| ≤ 16 × 255), several times faster than floats, in place where
    # possible. dxx is the horizontal second difference on every row; the Laplacian
    # (dxx + dyy) and Immerkær's noise operator (the vertical second difference of dxx)
    # are taken at every other row.
    dxx = np.add(luma[:, :-2], luma[:, 2:], dtype=np.int16)
    dxx -= luma[:, 1:-1]
    dxx -= luma[:, 1:-1]
    laplacian = dxx[1:-1:2] + luma[:-2:2, 1:-1]
    laplacian += luma[2::2, 1:-1]
    laplacian -= luma[1:-1:2, 1:-1]
    laplacian -= luma[1:-1:2, 1:-1]
    residual = dxx[:-2:2] + dxx[2::2]
    residual -= dxx[1:-1:2]
    residual -= dxx[1:-1:2]
    # Mean square, not variance: a Laplacian sums differences, its mean is ~0.
    flat = laplacian.astype(np.float32).ravel()
    energy = float(np.dot(flat, flat)) / flat.size
    noise = _noise(residual)
    # White noise of σ puts 20 σ² into the Laplacian (4² + 4 × 1²): that is not detail.
    detail = math.sqrt(max(energy - 20.0 * noise * noise, 0.0)) / contrast
    sharpness = detail / (detail + SHARPNESS_HALF)

    # Spreads of shares: the phases are sums over still_x.shape[0] rows (columns) and
    # still_y.shape[1] columns (rows).
    blockiness = max(
        map(min, _spreads(columns, still_x.shape[0]), _spreads(rows, still_y.shape[1]))
    )
    score = sharpness * exposure * _noise_factor(noise) * _block_factor(blockiness)
    return Scores(
        score=score, sharpness=sharpness, exposure=exposure, brightness=brightness,
        contrast=contrast, black_level=black_level, white_level=white_level,
        dark_clip=dark_clip, bright_clip=bright_clip, noise=noise, blockiness=blockiness,
        flat_area=flat_area, rejected=False,
        reason=_describe(sharpness, brightness, black_level, white_level, bright_clip,
                         noise, blockiness),
    )


@lru_cache(maxsize=16)
def _percentile_counts(total: int) -> npt.NDArray[np.float64]:
    counts = np.array([p * total for p in _PERCENTILES])
    counts.flags.writeable = False
    return counts


def _exposure(black_level: float, white_level: float, dark_clip: float, bright_clip: float) -> float:
    reach = min(1.0, white_level / WHITE_REACH)
    lift = 1.0 - min(1.0, max(0.0, black_level - BLACK_LIFT) / BLACK_SPAN)
    clipping = max(0.0, 1.0 - DARK_CLIP_COST * dark_clip - BRIGHT_CLIP_COST * bright_clip)
    return reach * lift * clipping


def _within(
    a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8], levels: int
) -> npt.NDArray[np.bool_]:
    """|a - b| <= levels, elementwise, in uint8 (half the memory traffic of int16): the
    difference wraps, and adding ``levels`` maps -levels..levels onto 0..2 × levels."""
    difference = a - b
    difference += levels
    return difference <= 2 * levels


def _noise(residual: npt.NDArray[np.int16]) -> float:
    """Noise σ from Immerkær's operator: the mean magnitude of its quietest 8×8 tiles."""
    magnitude = np.abs(residual, out=residual)
    t = _NOISE_TILE
    rows, cols = magnitude.shape[0] // t, magnitude.shape[1] // t
    if rows == 0 or cols == 0:  # smaller than one tile: the whole frame is its quietest part
        return float(magnitude.mean()) * _IMMERKAER
    bands = magnitude[: rows * t].reshape(rows, t, magnitude.shape[1]).sum(axis=1, dtype=np.int32)
    tiles = np.add.reduceat(bands[:, : cols * t], _tile_starts(cols, t), axis=1)
    k = int(_NOISE_QUANTILE * tiles.size)
    return float(np.partition(tiles, k, axis=None)[k]) / (t * t) * _IMMERKAER


@lru_cache(maxsize=16)
def _tile_starts(count: int, tile: int) -> npt.NDArray[np.intp]:
    starts: npt.NDArray[np.intp] = np.arange(0, count * tile, tile)
    starts.flags.writeable = False
    return starts


def _phases(profile: npt.NDArray[np.uint16]) -> list[float]:
    """The profile summed per grid phase for every fold of BLOCK_FOLDS, then its total."""
    result: list[float] = (profile @ _phase_matrix(len(profile))).tolist()
    return result


@lru_cache(maxsize=16)
def _phase_matrix(length: int) -> npt.NDArray[np.float64]:
    """profile @ matrix = the mean of every grid phase of every fold, and the profile's
    total, in one product. A fold needs two whole periods; shorter ones get zeros."""
    matrix = np.zeros((length, sum(BLOCK_FOLDS) + 1))
    for period, start in zip(BLOCK_FOLDS, _FOLD_STARTS, strict=True):
        whole = length - length % period
        if whole >= 2 * period:
            index = np.arange(whole)
            matrix[index, start + index % period] = period / whole
    matrix[:, -1] = 1.0
    matrix.flags.writeable = False
    return matrix


def _spreads(phases: list[float], scale: int) -> list[float]:
    """For each fold, the spread between its phases, as a share of ``scale``."""
    spreads = []
    for start, period in zip(_FOLD_STARTS, BLOCK_FOLDS, strict=True):
        fold = phases[start : start + period]
        spreads.append((max(fold) - min(fold)) / scale)
    return spreads


def _noise_factor(noise: float) -> float:
    excess = max(0.0, noise - NOISE_FREE) / NOISE_SCALE
    return 1.0 / (1.0 + excess * excess)


def _block_factor(blockiness: float) -> float:
    return math.exp(-BLOCK_COST * max(0.0, blockiness - BLOCK_FREE))


def _rejection(
    luma: npt.NDArray[np.uint8],
    counts: npt.NDArray[np.intp],
    cumulative: npt.NDArray[np.intp],
    brightness: float,
    contrast: float,
    black_share: float,
    white_share: float,
    middle_spread: int,
    flat_area: float,
) -> str | None:
    if black_share >= BLANK_FRACTION:
        return f"black frame (mean luma {brightness:.1f})"
    if white_share >= BLANK_FRACTION:
        return f"white frame (mean luma {brightness:.1f})"
    if contrast < FLAT_CONTRAST:
        return f"flat frame (contrast {contrast:.1f})"
    # One shade, give or take 3 levels (JPEG noise around a solid colour). Only possible
    # when the middle 90 % of the pixels lie within 6 levels of each other.
    if middle_spread <= 6:
        window = cumulative[6:].copy()
        window[1:] -= cumulative[:-7]
        dominant = float(window.max()) / float(cumulative[-1])
        if dominant >= UNIFORM_SHARE:
            return f"uniform frame ({dominant:.0%} one shade: a slate or 'no signal' card)"
    if flat_area >= CARD_FLAT_AREA:
        ordered = np.cumsum(np.sort(counts)[::-1])
        shades = int(np.searchsorted(ordered, 0.95 * float(cumulative[-1]))) + 1
        if shades <= CARD_SHADES:
            return f"test card ({flat_area:.0%} flat, {shades} shades)"
    if flat_area >= 0.75:  # only a mostly unchanging frame can be featureless
        smooth_x = _within(luma[:, 1:], luma[:, :-1], 2)
        smooth_y = _within(luma[1:], luma[:-1], 2)
        smooth = (np.count_nonzero(smooth_x) + np.count_nonzero(smooth_y)) / (
            smooth_x.size + smooth_y.size
        )
        if smooth >= FEATURELESS_AREA:
            return f"featureless frame ({smooth:.0%} without an edge: a backdrop or gradient)"
    return None


def _describe(
    sharpness: float,
    brightness: float,
    black_level: float,
    white_level: float,
    bright_clip: float,
    noise: float,
    blockiness: float,
) -> str:
    focus = "sharp" if sharpness >= 0.5 else "soft" if sharpness >= 0.3 else "blurry"
    if white_level < WHITE_REACH or brightness < 60:
        light = "dark"
    elif bright_clip > 0.1 or brightness > 190:
        light = "overexposed"
    elif black_level > BLACK_LIFT + 20:
        light = "washed out"
    else:
        light = "well exposed"
    flaws = []
    if _noise_factor(noise) < 0.8:
        flaws.append("noisy")
    if _block_factor(blockiness) < 0.8:
        flaws.append("blocky")
    return ", ".join([focus, light, *flaws])
