"""How good a cover a frame makes, from its luma alone (pure: numpy arrays in, numbers out).

The luma comes from ``imaging.decode_luma`` at one analysis resolution, so the figures mean
the same whatever the source size.

    detail     = std(4-neighbour Laplacian) / std(luma)   edge energy per unit of contrast
    sharpness  = detail / (detail + SHARPNESS_HALF)        0..1, 0.5 at SHARPNESS_HALF
    centring   = 1 - ((mean luma - 128) / 128)²            1 at mid-grey, 0 at black or white
    exposure   = centring × (1 - dark_clip - bright_clip)  clipped pixels carry no picture
    score      = sharpness × exposure                      0..1

Dividing by contrast keeps sharpness about focus, not lighting: a dim frame is marked down
once, by exposure, not twice. The product means a frame must be both sharp and well exposed
to score well, and for equal exposure the score rises with sharpness.

Frames that are no cover at all are rejected with score 0: black (like FFmpeg's
``blackframe``: 98% of pixels below 32), white (the mirror image) and flat (almost no
contrast: a solid slate, a stalled encoder, a camera facing a wall).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# Detail ratio that scores 0.5. Measured at the analysis resolution: in-focus natural
# photos 0.5–0.9, visibly blurred ones 0.05–0.3, fine texture (grass, gravel) up to 2.4.
SHARPNESS_HALF = 0.5

DARK_LEVEL = 16  # luma at or below: crushed shadows (dark_clip)
BRIGHT_LEVEL = 239  # luma at or above: blown highlights (bright_clip)

BLACK_LEVEL = 32  # FFmpeg blackframe's default threshold...
BLANK_FRACTION = 0.98  # ...and its default amount
WHITE_LEVEL = 255 - BLACK_LEVEL
FLAT_CONTRAST = 5.0  # luma std below which nothing in the frame is visible

_LEVELS = np.arange(256, dtype=np.float64)


@dataclass(frozen=True)
class Scores:
    score: float  # combined, 0..1, higher is better; 0 when rejected
    sharpness: float  # 0..1, measured at the analysis resolution
    brightness: float  # mean luma, 0..255
    contrast: float  # luma standard deviation
    dark_clip: float  # fraction of pixels <= DARK_LEVEL
    bright_clip: float  # fraction of pixels >= BRIGHT_LEVEL
    rejected: bool
    reason: str  # what a person reads: "sharp, well exposed", "black frame (mean luma 3.1)"

    @property
    def exposure(self) -> float:
        return _exposure(self.brightness, self.dark_clip, self.bright_clip)

    def metrics(self) -> dict[str, float]:
        """Every numeric measure by name, for storing beside the frame as JSON."""
        return {
            "score": self.score,
            "sharpness": self.sharpness,
            "exposure": self.exposure,
            "brightness": self.brightness,
            "contrast": self.contrast,
            "dark_clip": self.dark_clip,
            "bright_clip": self.bright_clip,
        }


def score_luma(luma: npt.NDArray[np.uint8]) -> Scores:
    """Score a 2-D uint8 luma image (at least 3×3)."""
    if luma.ndim != 2 or luma.dtype != np.uint8 or min(luma.shape) < 3:
        raise ValueError(f"expected 2-D uint8 luma of at least 3×3, got {luma.dtype} {luma.shape}")

    # One histogram gives every exposure figure without another pass over the pixels.
    histogram = np.bincount(luma.ravel(), minlength=256).astype(np.float64)
    share = histogram / luma.size
    brightness = float(share @ _LEVELS)
    contrast = float(np.sqrt(share @ (_LEVELS - brightness) ** 2))
    dark_clip = float(share[: DARK_LEVEL + 1].sum())
    bright_clip = float(share[BRIGHT_LEVEL:].sum())

    sharpness = 0.0
    if contrast > 0:
        detail = _laplacian_std(luma) / contrast
        sharpness = detail / (detail + SHARPNESS_HALF)

    reason = _rejection(share, brightness, contrast)
    rejected = reason is not None
    if reason is None:
        reason = _describe(sharpness, brightness, dark_clip + bright_clip)
    score = 0.0 if rejected else sharpness * _exposure(brightness, dark_clip, bright_clip)
    return Scores(
        score=score,
        sharpness=sharpness,
        brightness=brightness,
        contrast=contrast,
        dark_clip=dark_clip,
        bright_clip=bright_clip,
        rejected=rejected,
        reason=reason,
    )


def _laplacian_std(luma: npt.NDArray[np.uint8]) -> float:
    # int16 holds 4×255 + 4×255 of either sign, and is several times faster than float.
    y = luma.astype(np.int16)
    laplacian = 4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]
    return float(laplacian.std())


def _exposure(brightness: float, dark_clip: float, bright_clip: float) -> float:
    centring = max(0.0, 1.0 - ((brightness - 128.0) / 128.0) ** 2)
    return centring * max(0.0, 1.0 - dark_clip - bright_clip)


def _rejection(share: npt.NDArray[np.float64], brightness: float, contrast: float) -> str | None:
    if share[:BLACK_LEVEL].sum() >= BLANK_FRACTION:
        return f"black frame (mean luma {brightness:.1f})"
    if share[WHITE_LEVEL + 1 :].sum() >= BLANK_FRACTION:
        return f"white frame (mean luma {brightness:.1f})"
    if contrast < FLAT_CONTRAST:
        return f"flat frame (contrast {contrast:.1f})"
    return None


def _describe(sharpness: float, brightness: float, clipped: float) -> str:
    focus = "sharp" if sharpness >= 0.5 else "soft" if sharpness >= 0.3 else "blurry"
    if brightness < 60:
        light = "dark"
    elif brightness > 190:
        light = "overexposed"
    elif clipped > 0.25:
        light = f"{clipped:.0%} clipped"
    else:
        light = "well exposed"
    return f"{focus}, {light}"
