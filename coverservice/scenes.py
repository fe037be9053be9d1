"""Synthetic live-stream scenes, and the ways live streams degrade.

Drawn with Pillow and numpy from fixed seeds: nothing is downloaded and no picture is
copied from anywhere, so the quality benchmark, the tests and ``coverservice demo`` can
all make screenshots that look like live rooms.

- ``source(name)``: the full picture of a scene (a talk show, a game, an outdoor
  panorama, a portrait phone stream);
- ``view(source, size, zoom=..., pan=...)``: what a camera framing that scene shows at a
  stream's resolution (consecutive screenshots pan and zoom);
- ``degrade(frame, Degradation(...), rng)``: the frame blurred, badly exposed, hazy, noisy,
  blocky, black, or replaced by a test card or a slate;
- ``jpeg(frame, quality)``: encoded as CSS delivers screenshots.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFilter, ImageFont

RGB = npt.NDArray[np.uint8]  # H×W×3
Size = tuple[int, int]  # width, height

# The order fixes each scene's seed: appending keeps every existing scene's pixels.
SCENES = ("studio", "game", "outdoor", "mobile")


@dataclass(frozen=True)
class Degradation:
    family: str  # gaussian, motion, under, over, haze, noise, blocks, black, testcard, flat
    strength: float = 0.0  # in the family's unit (see DEGRADE); unused by the kinds
    kind: str = ""  # which black frame / test card / flat frame

    @property
    def label(self) -> str:
        return f"{self.family} {self.kind}" if self.kind else f"{self.family} {self.strength:g}"


def degrade(frame: RGB, degradation: Degradation, rng: np.random.Generator) -> RGB:
    """``frame`` (H×W×3 uint8) as ``degradation`` leaves it, before the screenshot's JPEG."""
    return DEGRADE[degradation.family](frame, degradation, rng)


def view(source: RGB, size: Size, *, zoom: float = 1.0, pan: tuple[float, float] = (0.0, 0.0)) -> RGB:
    """The crop of ``source`` at the frame's aspect ratio a camera shows, zoomed in by
    ``zoom`` (1: the largest crop that fits) and moved ``pan`` (fractions of the picture's
    width and height) from the centre, kept inside the picture; resized to ``size``."""
    width, height = size
    src_h, src_w = source.shape[:2]
    ratio = width / height
    crop_w = min(src_w, src_h * ratio)
    crop_w /= zoom
    crop_h = crop_w / ratio
    cx = src_w / 2 + pan[0] * src_w
    cy = src_h / 2 + pan[1] * src_h
    left = min(max(cx - crop_w / 2, 0.0), src_w - crop_w)
    top = min(max(cy - crop_h / 2, 0.0), src_h - crop_h)
    img = Image.fromarray(source, "RGB").resize(
        size, Image.Resampling.LANCZOS, box=(left, top, left + crop_w, top + crop_h)
    )
    return np.asarray(img, dtype=np.uint8)


def jpeg(frame: RGB, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame, "RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# --- degradations ----------------------------------------------------------------------


def _scale(frame: RGB) -> float:
    """Picture units: 1 for a 720-line frame (the short side, so portrait matches)."""
    return float(min(frame.shape[:2])) / 720


def _gaussian(frame: RGB, d: Degradation, rng: np.random.Generator) -> RGB:
    img = Image.fromarray(frame, "RGB").filter(ImageFilter.GaussianBlur(d.strength * _scale(frame)))
    return np.asarray(img, dtype=np.uint8)


def _motion(frame: RGB, d: Degradation, rng: np.random.Generator) -> RGB:
    """A camera shake: the average of the frame shifted along a line of the given length."""
    length = d.strength * _scale(frame)
    angle = rng.uniform(0, math.pi)
    steps = max(2, math.ceil(length) + 1)
    offsets = np.linspace(-length / 2, length / 2, steps)
    pad = math.ceil(length / 2) + 1
    padded = np.pad(frame.astype(np.float32), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    h, w = frame.shape[:2]
    total = np.zeros((h, w, 3), np.float32)
    for t in offsets:
        dx, dy = round(t * math.cos(angle)), round(t * math.sin(angle))
        total += padded[pad + dy : pad + dy + h, pad + dx : pad + dx + w]
    return _u8(total / steps)


def _gain(frame: RGB, d: Degradation, rng: np.random.Generator) -> RGB:
    """Exposure in linear light, as a camera's shutter or gain changes it; clipped at white."""
    linear = (frame.astype(np.float32) / 255) ** 2.2
    return _u8(255 * np.clip(linear * d.strength, 0, 1) ** (1 / 2.2))


def _haze(frame: RGB, d: Degradation, rng: np.random.Generator) -> RGB:
    """A bright veil (fogged lens, glare, a washed-out encoder): contrast drops, detail stays."""
    veil = rng.uniform(160, 220) + rng.uniform(-10, 10, 3)
    return _u8(frame.astype(np.float32) * (1 - d.strength) + veil * d.strength)


def _noise(frame: RGB, d: Degradation, rng: np.random.Generator) -> RGB:
    """Sensor noise: mostly luma, some chroma, stronger in the shadows the camera gained up."""
    h, w = frame.shape[:2]
    x = frame.astype(np.float32)
    shadows = 1.3 - 0.6 * (x.mean(axis=2, keepdims=True) / 255)
    luma_noise = rng.normal(0, d.strength, (h, w, 1)).astype(np.float32)
    chroma_noise = rng.normal(0, d.strength / 2, (h, w, 3)).astype(np.float32)
    return _u8(x + (luma_noise + chroma_noise) * shadows)


def _blocks(frame: RGB, d: Degradation, rng: np.random.Generator) -> RGB:
    """Low-bitrate encode: a very low JPEG quality, decoded (re-encoded as normal by the
    caller), so the 8×8 blocks sit on the grid of the final JPEG as they would in a
    screenshot taken at the video's own resolution."""
    with Image.open(io.BytesIO(jpeg(frame, int(d.strength)))) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _black(frame: RGB, d: Degradation, rng: np.random.Generator) -> RGB:
    h, w = frame.shape[:2]
    if d.kind == "pure":
        return rng.integers(0, 5, (h, w, 3), dtype=np.uint8)
    if d.kind == "dim":  # an encoder's idea of black: limited-range 16 and a little noise
        return _u8(16 + rng.normal(0, 1.5, (h, w, 3)))
    if d.kind == "logo":  # a black slate with the channel's mark in a corner
        img = Image.fromarray(rng.integers(0, 5, (h, w, 3), dtype=np.uint8), "RGB")
        unit = min(w, h)
        _text(img, (w - unit // 3, unit // 20), "LIVE", unit // 18, (230, 230, 230))
        return np.asarray(img, dtype=np.uint8)
    raise ValueError(d.kind)


def _testcard(frame: RGB, d: Degradation, rng: np.random.Generator) -> RGB:
    h, w = frame.shape[:2]
    img = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(img)
    if d.kind in ("smpte", "ebu"):
        if d.kind == "smpte":  # 75 % bars over 2/3, a reversed castellation strip, PLUGE
            bars = [(191, 191, 191), (191, 191, 0), (0, 191, 191), (0, 191, 0),
                    (191, 0, 191), (191, 0, 0), (0, 0, 191)]
            bottom = int(h * 2 / 3)
        else:  # full-height 100 % bars, white to black
            bars = [(255, 255, 255), (255, 255, 0), (0, 255, 255), (0, 255, 0),
                    (255, 0, 255), (255, 0, 0), (0, 0, 255), (0, 0, 0)]
            bottom = h
        for i, colour in enumerate(bars):
            draw.rectangle((i * w // len(bars), 0, (i + 1) * w // len(bars), bottom), fill=colour)
        if d.kind == "smpte":
            strip = [(0, 0, 191), (19, 19, 19), (191, 0, 191), (19, 19, 19),
                     (0, 191, 191), (19, 19, 19), (191, 191, 191)]
            for i, colour in enumerate(strip):
                draw.rectangle((i * w // 7, bottom, (i + 1) * w // 7, bottom + h // 12),
                               fill=colour)
            pluge = [(0, 33, 76), (255, 255, 255), (50, 0, 106), (19, 19, 19), (9, 9, 9),
                     (19, 19, 19), (29, 29, 29), (19, 19, 19)]
            edges = [0, 5, 10, 15, 20, 22, 24, 26, 28]
            for i, colour in enumerate(pluge):
                draw.rectangle((edges[i] * w // 28, bottom + h // 12, edges[i + 1] * w // 28, h),
                               fill=colour)
    elif d.kind == "nosignal":
        draw.rectangle((0, 0, w, h), fill=(16, 40, 190))
        _text(img, (w // 2, h // 2), "NO SIGNAL", min(w, h) // 10, (235, 235, 235), centre=True)
    elif d.kind == "offline":
        draw.rectangle((0, 0, w, h), fill=(38, 38, 46))
        unit = min(w, h)
        draw.rounded_rectangle((w // 2 - unit // 8, h // 2 - unit // 4, w // 2 + unit // 8,
                                h // 2 - unit // 40), radius=unit // 30, fill=(120, 80, 200))
        _text(img, (w // 2, h // 2 + unit // 10), "Stream offline", unit // 16,
              (200, 200, 210), centre=True)
    else:
        raise ValueError(d.kind)
    return np.asarray(img, dtype=np.uint8)


def _flat(frame: RGB, d: Degradation, rng: np.random.Generator) -> RGB:
    h, w = frame.shape[:2]
    grain = rng.normal(0, 1.0, (h, w, 1)) * np.ones(3)
    if d.kind == "grey":
        return _u8(128 + grain)
    if d.kind == "colour":
        return _u8(np.array([20, 90, 100], np.float32) + grain)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    if d.kind == "ramp":  # a "starting soon" backdrop: a smooth diagonal gradient
        t = (x / w + y / h) / 2
        return _u8(np.array([40, 60, 110]) + t[..., None] * np.array([90, 80, 60]) + grain)
    if d.kind == "vignette":  # a lens cap in a lit room: bright middle, dark corners
        r = np.hypot((x - w / 2) / w, (y - h / 2) / h)
        return _u8((150 - 160 * r)[..., None] * np.ones(3) + grain)
    raise ValueError(d.kind)


DEGRADE: dict[str, Callable[[RGB, Degradation, np.random.Generator], RGB]] = {
    "gaussian": _gaussian,
    "motion": _motion,
    "under": _gain,
    "over": _gain,
    "haze": _haze,
    "noise": _noise,
    "blocks": _blocks,
    "black": _black,
    "testcard": _testcard,
    "flat": _flat,
}


# --- synthetic scenes ------------------------------------------------------------------


@lru_cache(maxsize=4)
def source(name: str) -> RGB:
    """A stream-like scene drawn at twice its size and averaged down (anti-aliased edges,
    like a camera's), with a little grain: 1600×900 for the studio and the game, a
    2400×900 panorama for outdoor (room to pan), a portrait 900×1600 for mobile."""
    if name not in SCENES:
        raise ValueError(f"unknown scene {name!r}; known: {', '.join(SCENES)}")
    rng = np.random.default_rng(SCENES.index(name))
    draw, (w, h) = _DRAW[name]
    img = draw(w, h, rng).reduce(2)
    grain = rng.normal(0, 1.5, (img.height, img.width, 1))
    return _u8(np.asarray(img, dtype=np.float32) + grain)


def _gradient(w: int, h: int, top: Sequence[float], bottom: Sequence[float]) -> Image.Image:
    t = np.linspace(0.0, 1.0, 64)[:, None, None]
    column = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t
    strip = Image.fromarray(_u8(np.repeat(column, 2, axis=1)), "RGB")
    return strip.resize((w, h), Image.Resampling.BILINEAR)


def _studio(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """A talk stream: wall, bookshelf, plant, a person at a desk, a caption bar."""
    img = _gradient(w, h, (150, 135, 120), (95, 85, 80))
    draw = ImageDraw.Draw(img)
    # Bookshelf on the left: rows of books of random widths and colours.
    for row in range(4):
        y0 = int(h * (0.08 + row * 0.15))
        draw.rectangle((int(w * 0.04), y0 + int(h * 0.13), int(w * 0.38), y0 + int(h * 0.14)),
                       fill=(70, 50, 35))
        x = int(w * 0.05)
        while x < w * 0.37:
            bw = int(rng.integers(w // 160, w // 60))
            bh = int(h * rng.uniform(0.09, 0.13))
            colour = tuple(int(c) for c in rng.integers(30, 220, 3))
            draw.rectangle((x, y0 + int(h * 0.13) - bh, x + bw, y0 + int(h * 0.13)), fill=colour)
            x += bw + int(rng.integers(2, 8))
    # A plant: many leaves.
    for _ in range(400):
        cx, cy = rng.normal(w * 0.85, w * 0.04), rng.normal(h * 0.35, h * 0.1)
        r = rng.uniform(w * 0.004, w * 0.012)
        g = int(rng.integers(80, 170))
        draw.ellipse((cx - r, cy - r * 0.5, cx + r, cy + r * 0.5), fill=(30, g, 40))
    draw.rectangle((int(w * 0.81), int(h * 0.5), int(w * 0.89), int(h * 0.62)), fill=(150, 80, 50))
    # The person: shoulders, neck, head, hair, eyes, mouth.
    draw.ellipse((int(w * 0.36), int(h * 0.62), int(w * 0.66), int(h * 1.2)), fill=(40, 70, 130))
    draw.rectangle((int(w * 0.485), int(h * 0.5), int(w * 0.535), int(h * 0.66)), fill=(214, 170, 140))
    draw.ellipse((int(w * 0.44), int(h * 0.22), int(w * 0.58), int(h * 0.58)), fill=(224, 180, 150))
    draw.chord((int(w * 0.43), int(h * 0.18), int(w * 0.59), int(h * 0.44)), 180, 360, fill=(50, 30, 20))
    for ex in (0.485, 0.535):
        draw.ellipse((int(w * (ex - 0.008)), int(h * 0.37), int(w * (ex + 0.008)), int(h * 0.39)),
                     fill=(40, 30, 30))
    draw.arc((int(w * 0.49), int(h * 0.43), int(w * 0.53), int(h * 0.49)), 20, 160,
             fill=(150, 60, 60), width=max(2, w // 400))
    # Desk with a mug, and a lower-third caption.
    draw.rectangle((0, int(h * 0.82), w, h), fill=(110, 75, 50))
    draw.rectangle((int(w * 0.7), int(h * 0.72), int(w * 0.75), int(h * 0.84)), fill=(230, 230, 225))
    draw.rectangle((int(w * 0.03), int(h * 0.86), int(w * 0.5), int(h * 0.95)), fill=(20, 20, 30))
    _text(img, (int(w * 0.05), int(h * 0.875)), "Late night chat  #42", h // 22, (250, 250, 250))
    return img


def _game(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """A game stream: sky, mountains, textured ground, trees, and a HUD."""
    img = _gradient(w, h, (70, 130, 210), (190, 215, 235))
    draw = ImageDraw.Draw(img)
    for layer, shade in enumerate(((110, 120, 150), (80, 95, 110))):
        points = [(0, h)]
        for x in np.linspace(0, w, 12):
            points.append((int(x), int(h * (0.35 + 0.1 * layer + rng.uniform(0, 0.15)))))
        points.append((w, h))
        draw.polygon(points, fill=shade)
    ground = rng.integers(60, 140, (40, 80, 3)).astype(np.uint8)
    ground[..., 0] //= 2
    texture = Image.fromarray(ground, "RGB").resize((w, h // 3), Image.Resampling.BICUBIC)
    img.paste(texture, (0, h - h // 3))
    for _ in range(25):
        x, base = rng.uniform(0, w), rng.uniform(h * 0.6, h * 0.95)
        size = rng.uniform(0.03, 0.08) * h
        draw.rectangle((x - size * 0.1, base - size * 0.6, x + size * 0.1, base), fill=(80, 50, 30))
        draw.polygon([(x - size * 0.6, base - size * 0.5), (x + size * 0.6, base - size * 0.5),
                      (x, base - size * 2.2)], fill=(20, int(rng.integers(90, 140)), 40))
    # HUD: health bar, minimap, score, crosshair.
    draw.rectangle((w // 40, h // 30, w // 40 + w // 4, h // 30 + h // 30), fill=(40, 40, 40))
    draw.rectangle((w // 40 + 4, h // 30 + 4, w // 40 + w // 6, h // 30 + h // 30 - 4),
                   fill=(200, 40, 40))
    draw.rectangle((w - w // 6, h // 30, w - w // 40, h // 30 + w // 7), fill=(20, 30, 20),
                   outline=(220, 220, 220), width=max(2, w // 500))
    for _ in range(30):
        x = rng.uniform(w - w // 6, w - w // 40)
        y = rng.uniform(h // 30, h // 30 + w // 7)
        draw.point((x, y), fill=(240, 240, 60))
    _text(img, (w // 40, h // 30 + h // 20), "SCORE 128 450   WAVE 7", h // 28, (255, 255, 255))
    cx, cy, arm = w // 2, h // 2, h // 40
    draw.line((cx - arm, cy, cx + arm, cy), fill=(255, 255, 255), width=max(2, w // 800))
    draw.line((cx, cy - arm, cx, cy + arm), fill=(255, 255, 255), width=max(2, w // 800))
    return img


def _outdoor(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """A hiking stream: sky and clouds, snow-capped ridges, a lake that mirrors them, a
    forest on the shore and a meadow in front; wide enough for the camera to pan."""
    img = _gradient(w, h, (60, 120, 200), (200, 220, 235))
    draw = ImageDraw.Draw(img)
    draw.ellipse((int(w * 0.78), int(h * 0.06), int(w * 0.78) + h // 8, int(h * 0.06) + h // 8),
                 fill=(255, 244, 200))
    for _ in range(14):  # clouds: clusters of soft white puffs
        cx, cy = rng.uniform(0, w), rng.uniform(h * 0.05, h * 0.3)
        for _ in range(6):
            rx, ry = rng.uniform(0.02, 0.05) * h * 2, rng.uniform(0.02, 0.04) * h
            dx, dy = rng.normal(0, rx), rng.normal(0, ry / 2)
            white = int(rng.integers(225, 250))
            draw.ellipse((cx + dx - rx, cy + dy - ry, cx + dx + rx, cy + dy + ry), fill=(white, white, white + 5))
    horizon = int(h * 0.55)
    for layer, ridge in enumerate(((120, 130, 160), (85, 100, 120))):
        xs = np.linspace(0, w, 28)
        peaks = [(int(x), int(h * (0.2 + 0.08 * layer + rng.uniform(0, 0.18)))) for x in xs]
        draw.polygon([(0, horizon), *peaks, (w, horizon)], fill=ridge)
        if layer == 0:  # snow on the far ridge's peaks
            for (x0, y0), (x1, y1) in itertools.pairwise(peaks):
                top = min(y0, y1)
                if top < h * 0.3:
                    px = x0 if y0 < y1 else x1
                    draw.polygon([(px - w // 90, top + h // 25), (px, top), (px + w // 90, top + h // 25)],
                                 fill=(245, 245, 250))
    # The lake mirrors what stands above it, darker and a little blue.
    above = np.asarray(img.crop((0, horizon - int(h * 0.2), w, horizon)), dtype=np.float32)[::-1]
    lake = above * 0.6 + np.array([10, 30, 60], np.float32)
    img.paste(Image.fromarray(_u8(lake), "RGB"), (0, horizon))
    draw = ImageDraw.Draw(img)
    for _ in range(120):  # ripples
        x, y = rng.uniform(0, w), rng.uniform(horizon, horizon + h * 0.2)
        draw.line((x, y, x + rng.uniform(w * 0.005, w * 0.02), y), fill=(190, 210, 230), width=max(1, h // 600))
    shore = horizon + int(h * 0.2)
    meadow = rng.integers(70, 150, (30, 120, 3)).astype(np.uint8)
    meadow[..., 0] //= 2
    meadow[..., 2] //= 3
    img.paste(Image.fromarray(meadow, "RGB").resize((w, h - shore), Image.Resampling.BICUBIC), (0, shore))
    draw = ImageDraw.Draw(img)
    for _ in range(160):  # the forest on the shore
        x = rng.uniform(0, w)
        base = shore + rng.uniform(-h * 0.01, h * 0.03)
        size = rng.uniform(0.04, 0.09) * h
        draw.polygon([(x - size * 0.35, base), (x + size * 0.35, base), (x, base - size * 1.6)],
                     fill=(15, int(rng.integers(60, 110)), 35))
    for _ in range(200):  # flowers in the meadow
        x, y = rng.uniform(0, w), rng.uniform(shore + h * 0.05, h)
        r = rng.uniform(0.002, 0.005) * h
        colour = ((240, 220, 60), (230, 90, 120), (250, 250, 250))[int(rng.integers(0, 3))]
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    return img


def _mobile(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """A portrait phone stream: a selfie in front of a city street at dusk, with the
    app's overlay (live badge, viewer count, chat, hearts)."""
    img = _gradient(w, h, (60, 50, 110), (230, 140, 90))
    draw = ImageDraw.Draw(img)
    for _ in range(9):  # buildings with lit windows
        x0 = rng.uniform(-0.1, 0.95) * w
        bw, top = rng.uniform(0.15, 0.3) * w, rng.uniform(0.1, 0.45) * h
        draw.rectangle((x0, top, x0 + bw, h), fill=tuple(int(c) for c in rng.integers(30, 70, 3)))
        step = w // 40
        for wy in range(int(top) + step, h, step * 2):
            for wx in range(int(x0) + step, int(x0 + bw) - step, step * 2):
                if rng.random() < 0.45:
                    draw.rectangle((wx, wy, wx + step, wy + step), fill=(250, 220, 140))
    # The streamer: shoulders, neck, face, hair, eyes, smile, close to the lens.
    draw.ellipse((int(w * 0.05), int(h * 0.62), int(w * 0.95), int(h * 1.15)), fill=(180, 40, 60))
    draw.rectangle((int(w * 0.42), int(h * 0.5), int(w * 0.58), int(h * 0.66)), fill=(205, 160, 130))
    draw.ellipse((int(w * 0.25), int(h * 0.22), int(w * 0.75), int(h * 0.58)), fill=(222, 178, 148))
    draw.chord((int(w * 0.22), int(h * 0.17), int(w * 0.78), int(h * 0.42)), 180, 360, fill=(40, 25, 20))
    for ex in (0.4, 0.6):
        draw.ellipse((int(w * (ex - 0.03)), int(h * 0.37), int(w * (ex + 0.03)), int(h * 0.4)), fill=(250, 250, 250))
        draw.ellipse((int(w * (ex - 0.015)), int(h * 0.375), int(w * (ex + 0.015)), int(h * 0.395)), fill=(50, 35, 30))
    draw.arc((int(w * 0.42), int(h * 0.43), int(w * 0.58), int(h * 0.5)), 20, 160, fill=(160, 60, 70), width=max(2, w // 150))
    # The app's overlay.
    draw.rounded_rectangle((w // 25, h // 40, w // 25 + w // 6, h // 40 + h // 30), radius=h // 120, fill=(230, 30, 60))
    _text(img, (w // 25 + w // 12, h // 40 + h // 60), "LIVE", h // 45, (255, 255, 255), centre=True)
    _text(img, (w // 4, h // 40 + h // 200), "12.4k watching", h // 45, (255, 255, 255))
    for i, line in enumerate(("mia: hi from Lisbon!", "kenji: the lights!!", "ola: where is this?")):
        row = int(h * (0.74 + 0.05 * i))
        draw.rounded_rectangle((w // 25, row, int(w * 0.62), row + h // 25), radius=h // 80, fill=(20, 20, 30))
        _text(img, (w // 25 + w // 40, row + h // 160), line, h // 50, (240, 240, 240))
    for _ in range(8):  # hearts floating up on the right
        x, y = rng.uniform(0.8, 0.93) * w, rng.uniform(0.5, 0.9) * h
        r = w // 40
        colour = (255, int(rng.integers(40, 120)), int(rng.integers(90, 160)))
        draw.ellipse((x - r, y - r, x, y), fill=colour)
        draw.ellipse((x, y - r, x + r, y), fill=colour)
        draw.polygon([(x - r, y - r // 2), (x + r, y - r // 2), (x, y + r)], fill=colour)
    return img


_DRAW: dict[str, tuple[Callable[[int, int, np.random.Generator], Image.Image], Size]] = {
    "studio": (_studio, (3200, 1800)),
    "game": (_game, (3200, 1800)),
    "outdoor": (_outdoor, (4800, 1800)),
    "mobile": (_mobile, (1800, 3200)),
}


# --- helpers ---------------------------------------------------------------------------


def _text(
    img: Image.Image,
    xy: tuple[int, int],
    text: str,
    size: int,
    fill: tuple[int, int, int],
    *,
    centre: bool = False,
) -> None:
    font = ImageFont.load_default(size=max(8, size))
    ImageDraw.Draw(img).text(xy, text, fill=fill, font=font, anchor="mm" if centre else "la")


def _u8(x: npt.ArrayLike) -> RGB:
    return np.clip(np.rint(np.asarray(x, dtype=np.float32)), 0, 255).astype(np.uint8)
