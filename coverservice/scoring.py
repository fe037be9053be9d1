"""How good a cover a frame makes, from its luma alone (pure: numpy arrays in, numbers out).

The luma comes from ``imaging.decode_luma`` at one analysis resolution (320×180, or that
area at the source's aspect ratio), so every figure means the same whatever the source
size; blockiness alone is read from the decode before that resampling, where the JPEG's
8×8 blocks still sit on whole pixels. A verdict is a product of factors, each 0..1 and
each a thing people notice:

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
- **blockiness**: low-bitrate video flattens each 8×8 block, so the picture changes in
  steps at the blocks' edges and hardly at all inside them. It is measured on the JPEG's
  own grid: the decode is DCT-scaled by at most 1/4 (a block stays 2, 4 or 8 whole
  pixels, the grid starting at 0) and read before any resampling, which would smear the
  edges between pixels (960-, 854- and 540-wide sources). An isolated step is a change of
  at least ``STEP_MIN`` levels between two neighbours whose own neighbours change at most
  half as much; in a picture such steps fall anywhere, in a blocky one on the block
  edges. Blockiness is ``(on - off) / (on + off + SEAM_PRIOR)`` of the step rates on and
  off the edges, the smaller of the two directions (stripes a block apart are picture,
  not artefacts), clipped to 0..1. ``SEAM_PRIOR`` keeps a smooth frame's handful of steps
  from reading as a pattern. Up to ``BLOCK_FREE`` (what the screenshot's own JPEG
  encoding shows) costs nothing. Blocks of a video that was scaled before the
  screenshot was taken sit off this grid and are not seen.

The draft's noise keeps only the part of the residual that halves when the frame is
shrunk 2× (fine texture does not halve; see ``_noise_not_texture``).

**The detail stage** (``score_detail``, on ``imaging.decode_detail`` of the same bytes)
runs only on contenders (``contenders``): frames whose draft puts them near the best of
their stream. It measures sharpness and noise again at the detail the large cover
shows, scale- and content-normalised and per direction, and its scores (``stage ==
"detail"``) compare only with each other. docs/quality.md says how the worker uses it.

Frames that are no cover at all are rejected with score 0 and a reason: black (FFmpeg
``blackframe``'s 98 % below 32), white, flat (almost no contrast), uniform (one shade over
90 % of the frame: "no signal" and "offline" slates, a black frame with a logo), test
cards (a few flat shades: colour bars) and featureless frames (gradients without an edge).

Speed: this runs on every screenshot, after a decode that takes ~1.5 ms, and must add
little (the quality benchmark prints the ratio). So each figure comes from as few array
passes as it needs, and some from a sample of rows: the histogram from every fourth row
(14 400 pixels at the analysis size put a percentile within 0.1 % of the whole frame's),
the Laplacian and the noise operator at every other row (each reads the rows above and
below, so every row takes part), neighbours' changes along every fourth row and column
(flat area; block steps along as many rows and columns of the decode). At this size the
number of numpy calls costs as much as the pixels they touch. For a 1280×720 or 640×360
JPEG the decode already is the analysis size: nothing is resampled, and flat area and
blockiness share one set of changes. (Block steps along every other line part clean
from blocky frames a little more widely but cost ~4 % of a decode more; the Laplacian at
every fourth row saved less than the timing's noise: measured, not taken.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import numpy.typing as npt

# Detail ratio (Laplacian RMS / luma std) that scores 0.5 sharpness. At the analysis scale:
# in-focus photos 0.5–0.9, visibly blurred ones 0.05–0.3, fine texture up to 2.4.
SHARPNESS_HALF = 0.5

# The detail stage (score_detail). Contenders: the CONTENDER_LIMIT best draft scores, as
# far as they reach CONTENDER_SHARE of the best.
CONTENDER_SHARE = 0.7
CONTENDER_LIMIT = 3
DETAIL_OCTAVES = (2, 3, 4)  # the finest octave is weighed against the picture this far up
DETAIL_WEAKEST = 0.7  # the weakest direction's share of the sharpness figure (motion blur)
DETAIL_HALF = 0.3  # octaves of detail per octave (see score_detail) that score 0.5
DETAIL_NOISE_FREE = 0.5  # noise σ at the detail decode that costs nothing (clean: ≤ 0.35)
DETAIL_NOISE_SCALE = 2.0  # σ beyond it that halves the noise factor
# Reasons at the detail stage, by fine_detail: "sharp" from DETAIL_SHARP, "soft" from
# DETAIL_SOFT, "blurry" below; "motion blur" when not sharp and the weakest direction has
# lost this much more than the average (streak; isotropic blur of real pictures: ≤ 0.35).
DETAIL_SHARP = 0.6
DETAIL_SOFT = 0.35
STREAK_NAMED = 0.38

DARK_LEVEL = 5  # luma at or below: crushed to black (dark_clip)
BRIGHT_LEVEL = 250  # luma at or above: blown to white (bright_clip)
DARK_CLIP_COST = 0.5  # exposure lost per unit of crushed fraction (black areas are common)
BRIGHT_CLIP_COST = 2.0  # ...and of blown fraction (blown areas are what people notice)
WHITE_REACH = 160.0  # a white_level below this marks the frame down: it looks dim
DIM_NAMED = 0.9  # ...and the reason calls it dark below this fraction of WHITE_REACH
BLACK_LIFT = 30.0  # a black_level above this marks the frame down: it looks washed out...
BLACK_SPAN = 150.0  # ...to nothing at BLACK_LIFT + BLACK_SPAN

NOISE_FREE = 1.0  # noise σ (luma levels at the analysis scale) that costs nothing
NOISE_SCALE = 1.0  # σ beyond NOISE_FREE that halves the noise factor
STEP_MIN = 3  # luma levels: a smaller change between neighbours is not a visible step
SEAM_PRIOR = 0.01  # steps per position and line added to on + off: too few steps say nothing
BLOCK_FREE = 0.2  # blockiness that costs nothing: clean JPEGs (their own blocks) stay below
BLOCK_COST = 2.5  # block_factor = exp(-BLOCK_COST × (blockiness - BLOCK_FREE))

BLACK_LEVEL = 32  # FFmpeg blackframe's default threshold...
BLANK_FRACTION = 0.98  # ...and its default amount
WHITE_LEVEL = 255 - BLACK_LEVEL
FLAT_CONTRAST = 5.0  # luma std below which nothing in the frame is visible
UNIFORM_SHARE = 0.90  # one shade (±3 levels) covering this much: a slate, not a picture
CARD_FLAT_AREA = 0.90  # test card: this share of neighbours unchanged...
CARD_SHADES = 16  # ...and 95 % of the pixels in at most this many luma levels
FEATURELESS_AREA = 0.975  # this share of neighbours within 2 levels: a backdrop, no picture

_HISTOGRAM_STEP = 4  # rows: the histogram's sample
_LINE_STEP = 4  # rows and columns: the sample of neighbours' changes
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

Luma = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Decoded:
    """A decoded picture as scoring reads it (``imaging.decode_luma`` makes one)."""

    luma: Luma  # at the analysis resolution: every figure but blockiness
    coded: Luma  # as decoded, before resampling to it (the same array when none was needed)
    block: int  # pixels per 8×8 JPEG block in ``coded``: 2, 4 or 8 (8 for other formats)


@dataclass(frozen=True)
class Detail:
    """A contender's luma at the detail the large cover shows (``imaging.decode_detail``)."""

    luma: Luma  # 2-D uint8, at least 32×32 for a figure (smaller: the draft stands)
    scale: float  # decoded pixels per source pixel: 1, 1/2, 1/4 or 1/8


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
    blockiness: float  # 0..1, how much more often isolated steps fall on block edges
    flat_area: float  # share of neighbouring pixels that differ by at most one level
    rejected: bool
    reason: str  # what a person reads: "sharp, well exposed", "black frame (mean luma 3.1)"
    # Which stage measured the sharpness (and so the score): "draft" (score_luma, every
    # frame) or "detail" (score_detail, contenders). Scores compare only within a stage.
    stage: str = "draft"
    # The draft's score (the same as score in a draft): what contenders() ranks by.
    draft_score: float | None = None
    # The detail stage's figures (0 in a draft): the finest octave's share of detail along
    # its weakest direction and on average (see score_detail), and how one-directional the
    # loss of detail is, 0..1 (motion blur is high).
    fine_detail: float = 0.0
    fine_detail_weakest: float = 0.0
    streak: float = 0.0
    detail_noise: float = 0.0  # noise σ at the detail decode

    @property
    def noise_factor(self) -> float:
        """The draft's noise factor (from ``noise``, at the analysis scale)."""
        return _noise_factor(self.noise)

    @property
    def detail_noise_factor(self) -> float:
        """The detail stage's noise factor (from ``detail_noise``), which its score uses."""
        return _detail_noise_factor(self.detail_noise) if self.stage == "detail" else 1.0

    @property
    def block_factor(self) -> float:
        return _block_factor(self.blockiness)

    def metrics(self) -> dict[str, float | str]:
        """Every measure by name, for storing beside the frame as JSON: numbers, and
        ``stage`` ("draft" or "detail"), which says what ``score`` may be compared with."""
        measures: dict[str, float | str] = {
            "stage": self.stage,
            "score": self.score,
            "draft_score": self.score if self.draft_score is None else self.draft_score,
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
        if self.stage == "detail":
            measures.update(
                fine_detail=self.fine_detail,
                fine_detail_weakest=self.fine_detail_weakest,
                streak=self.streak,
                detail_noise=self.detail_noise,
                detail_noise_factor=self.detail_noise_factor,
            )
        return measures


def score_luma(decoded: Decoded) -> Scores:
    """Score a frame: its luma 2-D uint8 of at least 8×8, its decode 2-D uint8."""
    luma, coded = decoded.luma, decoded.coded
    if luma.ndim != 2 or luma.dtype != np.uint8 or min(luma.shape) < 8:
        raise ValueError(f"expected 2-D uint8 luma of at least 8×8, got {luma.dtype} {luma.shape}")
    if coded.ndim != 2 or coded.dtype != np.uint8 or decoded.block not in (2, 4, 8):
        raise ValueError(
            f"expected a 2-D uint8 decode with 2, 4 or 8 px blocks, got {coded.dtype} "
            f"{coded.shape} with {decoded.block} px blocks"
        )

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

    # --- neighbours' changes: flat area (and blockiness, below) --------------------------
    changes = _changes(luma, _LINE_STEP, _LINE_STEP)
    flat_area = float(sum(np.count_nonzero(c <= 1) for c in changes)) / sum(c.size for c in changes)

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
    noise = _noise_not_texture(_noise(residual), luma)
    # White noise of σ puts 20 σ² into the Laplacian (4² + 4 × 1²): that is not detail.
    detail = math.sqrt(max(energy - 20.0 * noise * noise, 0.0)) / contrast
    sharpness = detail / (detail + SHARPNESS_HALF)

    # On the decode's own grid, along as many of its rows and columns as the changes
    # above took of the analysis luma (the same changes when the decode is that luma).
    if coded is not luma:
        changes = _changes(
            coded,
            max(1, round(_LINE_STEP * coded.shape[0] / luma.shape[0])),
            max(1, round(_LINE_STEP * coded.shape[1] / luma.shape[1])),
        )
    blockiness = max(0.0, min(_seams(c, decoded.block) for c in changes))
    score = sharpness * exposure * _noise_factor(noise) * _block_factor(blockiness)
    return Scores(
        score=score, sharpness=sharpness, exposure=exposure, brightness=brightness,
        contrast=contrast, black_level=black_level, white_level=white_level,
        dark_clip=dark_clip, bright_clip=bright_clip, noise=noise, blockiness=blockiness,
        flat_area=flat_area, rejected=False,
        reason=_describe(sharpness, brightness, black_level, white_level, bright_clip,
                         _noise_factor(noise), blockiness),
    )


@lru_cache(maxsize=16)
def _percentile_counts(total: int) -> npt.NDArray[np.float64]:
    counts = np.array([p * total for p in _PERCENTILES])
    counts.flags.writeable = False
    return counts


def _exposure(black_level: float, white_level: float, dark_clip: float, bright_clip: float) -> float:
    reach = min(1.0, white_level / WHITE_REACH)
    lift = 1.0 - min(1.0, max(0.0, black_level - BLACK_LIFT) / BLACK_SPAN)
    # 1 / (1 + cost), not 1 - cost: the same for a little clipping, but a picture on a
    # white page (a cartoon, a product shot) keeps its rank instead of hitting 0.
    clipping = 1.0 / (1.0 + DARK_CLIP_COST * dark_clip + BRIGHT_CLIP_COST * bright_clip)
    return reach * lift * clipping


def _within(
    a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8], levels: int
) -> npt.NDArray[np.bool_]:
    """|a - b| <= levels, elementwise, in uint8 (half the memory traffic of int16): the
    difference wraps, and adding ``levels`` maps -levels..levels onto 0..2 × levels."""
    difference = a - b
    difference += levels
    return difference <= 2 * levels


def _noise_not_texture(fine: float, luma: Luma) -> float:
    """The share of ``fine`` (the residual's σ at the analysis scale) that is noise.

    A frame shrunk 2× (2×2 means) halves its noise's σ, but not fine texture's (fur,
    gravel, a circuit board: their residual at the coarser scale is as strong or
    stronger). With fine² = n² + t² and coarse² = n²/4 + t², the noise is
    n = √(4/3 (fine² - coarse²)). Only worked out when ``fine`` would cost score (above
    NOISE_FREE): most frames are spared the ~0.1 ms it takes.
    """
    if fine <= NOISE_FREE:
        return fine
    h, w = luma.shape[0] // 2 * 2, luma.shape[1] // 2 * 2
    if h < 4 * _NOISE_TILE or w < 4 * _NOISE_TILE:  # too few coarse tiles to choose from
        return fine
    # Sums of 2×2 blocks (4× the means, ≤ 1020: the operator's 16× fits int16).
    sums = np.add(luma[:h:2, :w], luma[1:h:2, :w], dtype=np.int16)
    sums = sums[:, 0::2] + sums[:, 1::2]
    coarse = _noise(_immerkaer(sums)) / 4
    return math.sqrt(max(0.0, fine * fine - coarse * coarse) * 4 / 3)


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


def _changes(
    image: Luma, row_step: int, column_step: int
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]]:
    """|difference| between horizontal neighbours on every ``row_step``-th row, and
    between vertical ones on every ``column_step``-th column (transposed: each array's
    lines run along axis 1)."""
    across = np.subtract(image[::row_step, 1:], image[::row_step, :-1], dtype=np.int16)
    columns = image[:, ::column_step].T
    down = np.subtract(columns[:, 1:], columns[:, :-1], dtype=np.int16)
    return np.abs(across, out=across), np.abs(down, out=down)


def _seams(change: npt.NDArray[np.int16], block: int) -> float:
    """``(on - off) / (on + off + SEAM_PRIOR)`` for the steps in ``change`` (from
    ``_changes``: ``change[:, j]`` is between pixels j and j + 1 of a line), on and off the
    edges between blocks of ``block`` pixels, per position and line."""
    if change.shape[1] < 2 * block:  # no block edge with a whole block on each side
        return 0.0
    # A step: at least STEP_MIN, and at least twice either neighbouring change.
    bound = np.maximum(change[:, :-2], change[:, 2:])
    bound <<= 1
    np.maximum(bound, STEP_MIN, out=bound)
    steps = bound <= change[:, 1:-1]  # steps[:, i] is change[:, i + 1]
    # The rate at each position in a block. On the edges: change j from the last pixel of
    # a block to the first of the next, j % block == block - 1, so i % block == block - 2.
    # Off them, the quietest position's: fine stripes or a texture with a pitch of its
    # own can fill some positions in every block with steps, but not all.
    rates = [np.count_nonzero(steps[:, i::block]) / steps[:, i::block].size for i in range(block)]
    on = rates.pop(block - 2)
    off = min(rates)
    return float((on - off) / (on + off + SEAM_PRIOR))


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
    noise_factor: float,
    blockiness: float,
    focus: str | None = None,
) -> str:
    if focus is None:
        focus = "sharp" if sharpness >= 0.5 else "soft" if sharpness >= 0.3 else "blurry"
    # Named only when the exposure factor shows it: a frame just under WHITE_REACH loses a
    # percent or two and looks fine, and the reason must not say otherwise.
    if white_level < DIM_NAMED * WHITE_REACH or brightness < 60:
        light = "dark"
    elif bright_clip > 0.1 or brightness > 190:
        light = "overexposed"
    elif black_level > BLACK_LIFT + 20:
        light = "washed out"
    else:
        light = "well exposed"
    flaws = []
    if noise_factor < 0.8:
        flaws.append("noisy")
    if _block_factor(blockiness) < 0.8:
        flaws.append("blocky")
    return ", ".join([focus, light, *flaws])


# --- the detail stage --------------------------------------------------------------------


def contenders(
    scores: Sequence[float],
    noise_factors: Sequence[float],
    *,
    share: float = CONTENDER_SHARE,
    limit: int = CONTENDER_LIMIT,
) -> list[int]:
    """Which frames deserve the detail stage, from their draft figures (``draft_score``
    and ``noise_factor`` of ``Scores.metrics()``, present at either stage; frames that
    were not rejected): the ``limit - 1`` best draft scores, and the best of the rest once
    the noise factor is taken out, each only as far as it reaches ``share`` of the best.

    The second kind of seat is there because at the draft's scale fine texture (a
    circuit board, fur, gravel) can pass for noise, and the draft marks such a frame down;
    the detail stage reads noise where it can be told from texture. Indices, in the
    order given.
    """
    if len(scores) != len(noise_factors):
        raise ValueError("one noise factor per score")
    if not scores or limit < 1:
        return []
    floor = share * max(scores)
    ranked = sorted(range(len(scores)), key=lambda i: -scores[i])
    chosen = [i for i in ranked[: max(1, limit - 1)] if scores[i] >= floor]
    if limit > 1:
        denoised = [s / max(n, 1e-9) for s, n in zip(scores, noise_factors, strict=True)]
        best = max(denoised)
        rest = [i for i in range(len(scores)) if i not in chosen]
        if rest:
            pick = max(rest, key=lambda i: denoised[i])
            if denoised[pick] >= share * best:
                chosen.append(pick)
    return sorted(chosen)


def score_detail(draft: Scores, detail: Detail) -> Scores:
    """The frame scored again at the detail the large cover shows, its draft in hand
    (``score_luma`` of the same bytes). Returns ``Scores`` with ``stage == "detail"``: the
    rejection, exposure and blockiness are the draft's, sharpness and noise are measured
    again on ``detail.luma``, and ``score`` compares with other detail scores only.

    Sharpness here is scale- and content-normalised: how much gradient energy the finest
    octave holds against the picture 2, 3 and 4 octaves up (blur removes the finest band
    first; a picture's own content moves every band), along the weakest of eight
    directions and on average (motion blur removes detail along one direction only; an
    average over directions would hide it). Noise is estimated first, on the same decode,
    and its energy taken out of every band, so grain does not pass for detail.
    """
    if draft.rejected:
        return draft
    luma = detail.luma
    if luma.ndim != 2 or luma.dtype != np.uint8:
        raise ValueError(f"expected 2-D uint8 luma, got {luma.dtype} {luma.shape}")
    coarsest = max(DETAIL_OCTAVES)
    if min(luma.shape) < 8 << coarsest:
        return replace(draft, stage="detail")  # too small to hold the octaves: as drafted
    noise = detail_noise(luma)
    tensors = octave_tensors(luma, coarsest + 1)
    fine = tensors[0] - noise * noise * _NOISE_TENSOR
    fine_along = _along(fine)
    weakest_sum = average_sum = 0.0
    for octave in DETAIL_OCTAVES:
        # Box-halving k times divides white noise's σ by 2^k; a smooth picture's gradient
        # per (coarser) pixel grows 2^k times, so ratios are taken against 4^k.
        coarse = tensors[octave] - (noise / (1 << octave)) ** 2 * _NOISE_TENSOR
        gain = float(4**octave)
        along = fine_along * gain / np.maximum(_along(coarse), 1e-6)
        mean = float(fine[0] + fine[1]) * gain / max(float(coarse[0] + coarse[1]), 1e-6)
        weakest_sum += math.log(max(float(along.min()), 1.0)) / octave
        average_sum += math.log(max(mean, 1.0)) / octave
    weakest = weakest_sum / len(DETAIL_OCTAVES)
    average = average_sum / len(DETAIL_OCTAVES)
    # Octaves of detail per octave of scale, in log units: 0 when nothing is finer than
    # the coarse picture, ~0.5–1 for a sharp photograph.
    fine_detail = DETAIL_WEAKEST * weakest + (1 - DETAIL_WEAKEST) * average
    sharpness = fine_detail / (fine_detail + DETAIL_HALF)
    streak = 1.0 - weakest / average if average > 0 else 0.0
    # Noise is read here, not in the draft: at the full decode noise added at the frame's
    # size shows in the quiet areas, and the texture of an upscaled source does not.
    noise_factor = _detail_noise_factor(noise)
    score = sharpness * draft.exposure * noise_factor * draft.block_factor
    return replace(
        draft, score=score, sharpness=sharpness, stage="detail", draft_score=draft.score,
        fine_detail=fine_detail, fine_detail_weakest=weakest, streak=streak,
        detail_noise=noise,
        reason=_describe(sharpness, draft.brightness, draft.black_level, draft.white_level,
                         draft.bright_clip, noise_factor, draft.blockiness,
                         _detail_focus(fine_detail, streak)),
    )


# [Jxx, Jyy, Jxy] of white noise of σ = 1 under forward differences from one pixel.
_NOISE_TENSOR = np.array([2.0, 2.0, 1.0])
_ANGLES = np.linspace(0.0, math.pi, 8, endpoint=False)
_ALONG = np.stack((np.cos(_ANGLES) ** 2, np.sin(_ANGLES) ** 2, 2 * np.cos(_ANGLES) * np.sin(_ANGLES)))


def _along(tensor: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Gradient energy along each of 8 directions, from a structure tensor."""
    energies: npt.NDArray[np.float64] = tensor @ _ALONG
    return energies


def _detail_focus(fine_detail: float, streak: float) -> str:
    if fine_detail >= DETAIL_SHARP:
        return "sharp"
    # Detail lost along one direction more than the others: the camera or subject moved.
    if streak >= STREAK_NAMED:
        return "motion blur"
    return "soft" if fine_detail >= DETAIL_SOFT else "blurry"


def why_lower(loser: Scores, winner: Scores) -> str:
    """What a person would name first for why ``loser`` scores below ``winner`` (two
    frames of one stream, scored at the same stage): the factor that costs it most.
    "motion blur", "softer", "darker", "overexposed", "washed out", "noisier",
    "blockier", or the loser's rejection reason."""
    if loser.rejected:
        return loser.reason
    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else 1.0
    costs = {
        "softer": ratio(loser.sharpness, winner.sharpness),
        "exposure": ratio(loser.exposure, winner.exposure),
        "noisier": ratio(_stage_noise_factor(loser), _stage_noise_factor(winner)),
        "blockier": ratio(loser.block_factor, winner.block_factor),
    }
    worst = min(costs, key=lambda k: costs[k])
    if worst == "softer":
        return "motion blur" if loser.streak >= STREAK_NAMED else "softer"
    if worst == "exposure":
        if loser.white_level < winner.white_level and loser.brightness < winner.brightness:
            return "darker"
        if loser.black_level > winner.black_level + 10:
            return "washed out"
        return "overexposed" if loser.bright_clip > winner.bright_clip else "darker"
    return worst


def _stage_noise_factor(scores: Scores) -> float:
    return scores.detail_noise_factor if scores.stage == "detail" else scores.noise_factor


def _detail_noise_factor(noise: float) -> float:
    excess = max(0.0, noise - DETAIL_NOISE_FREE) / DETAIL_NOISE_SCALE
    return 1.0 / (1.0 + excess * excess)


def octave_tensors(luma: Luma, levels: int) -> list[npt.NDArray[np.float64]]:
    """The gradient structure tensor [Jxx, Jyy, Jxy] (means over the picture) of ``luma``
    and of each 2×2 box-halving of it, finest first."""
    image = luma.astype(np.float32)
    tensors = []
    for _ in range(levels):
        gx = image[:-1, 1:] - image[:-1, :-1]
        gy = image[1:, :-1] - image[:-1, :-1]
        n = gx.size
        tensors.append(np.array([
            float(np.vdot(gx, gx)) / n, float(np.vdot(gy, gy)) / n, float(np.vdot(gx, gy)) / n,
        ]))
        h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
        image = image[:h:2, :w] + image[1:h:2, :w]
        image = (image[:, 0::2] + image[:, 1::2]) * 0.25
    return tensors


def detail_noise(luma: Luma) -> float:
    """Noise σ of a detail decode, as ``score_luma`` estimates it (Immerkær, quiet tiles)."""
    return _noise(_immerkaer(luma.astype(np.int16)))


def _immerkaer(image: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
    """Immerkær's noise operator (the second difference across of the one along) on every
    row and column of ``image``: |values| up to 16× the input's range must fit int16."""
    dxx = image[:, :-2] + image[:, 2:]
    dxx -= image[:, 1:-1]
    dxx -= image[:, 1:-1]
    residual = dxx[:-2] + dxx[2:]
    residual -= dxx[1:-1]
    residual -= dxx[1:-1]
    return residual
