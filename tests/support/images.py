"""Synthetic test images: made with numpy and Pillow from a fixed seed, so tests need no
downloads and no copyrighted pictures.

``scene`` draws in relative coordinates, so the same seed at 1280×720 and 640×360 shows the
same picture at two resolutions (what the scorer must rate alike), and 360×640 gives the
portrait layout of mobile streams.
"""

from __future__ import annotations

import io
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def scene(width: int, height: int, *, seed: int = 0) -> Image.Image:
    """A detailed RGB scene: gradient backdrop, a checkerboard, stripes and random shapes."""
    return _scene(width, height, seed).copy()


@lru_cache(maxsize=32)
def _scene(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    # Drawn at twice the size and averaged down, so edges are anti-aliased like a camera's
    # rather than stair-stepped (which would look sharper at one size than at another).
    w, h = width * 2, height * 2
    unit = min(w, h)

    # A smooth colour backdrop, built small and stretched (cheap, and free of detail).
    x = np.linspace(0.0, 1.0, 16)[None, :]
    y = np.linspace(0.0, 1.0, 9)[:, None]
    backdrop = np.stack(
        np.broadcast_arrays(70 + 110 * x, 90 + 90 * y, 160 - 60 * x * y), axis=-1
    ).astype(np.uint8)
    img = Image.fromarray(backdrop, "RGB").resize((w, h), Image.Resampling.BILINEAR)

    # Texture (foliage, crowd, gravel) along the bottom third: random cells on a grid
    # counted in picture units, so every resolution shows the same texture.
    grid = (round(64 * w / unit), round(64 * h / unit / 3))
    cells = rng.integers(40, 200, (grid[1], grid[0], 3), dtype=np.uint8)
    texture = Image.fromarray(cells, "RGB").resize((w, h // 3), Image.Resampling.BICUBIC)
    img.paste(texture, (0, h - h // 3))
    draw = ImageDraw.Draw(img)

    # Checkerboard in the upper left quarter.
    cell = max(2, unit // 24)
    for row in range(0, h // 2, cell):
        for col in range(0, w // 2, cell):
            if (row // cell + col // cell) % 2 == 0:
                draw.rectangle((col, row, col + cell - 1, row + cell - 1), fill=(40, 40, 50))

    # Fine stripes on the right: the first detail blur removes.
    stripe = max(2, unit // 90)
    for i, col in enumerate(range(w * 3 // 4, w, stripe)):
        shade = 60 if i % 2 else 210
        draw.rectangle((col, h // 8, col + stripe - 1, h * 5 // 8), fill=(shade, shade, shade))

    for _ in range(70):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(0.02, 0.12) * unit, rng.uniform(0.02, 0.12) * unit
        colour = tuple(int(c) for c in rng.integers(25, 235, size=3))
        box = (cx - rx, cy - ry, cx + rx, cy + ry)
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        else:
            draw.line(box, fill=colour, width=max(1, unit // 150))
    return img.reduce(2)


def scene_jpeg(width: int = 1280, height: int = 720, *, seed: int = 0, quality: int = 90) -> bytes:
    return encode(scene(width, height, seed=seed), "JPEG", quality=quality)


def encode(img: Image.Image, fmt: str = "JPEG", *, quality: int = 90, **params: Any) -> bytes:
    """``img`` saved as ``fmt`` (any format Pillow writes); ``params`` go to ``save``."""
    if fmt.upper() in {"JPEG", "WEBP"}:
        params["quality"] = quality
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def blurred(img: Image.Image, radius: float) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius))


def darkened(img: Image.Image, factor: float = 0.3) -> Image.Image:
    """An under-exposed copy: every channel scaled by ``factor``."""
    return _scaled(img, factor)


def blown_out(img: Image.Image, factor: float = 2.5) -> Image.Image:
    """An over-exposed copy: channels scaled up and clipped at white."""
    return _scaled(img, factor)


def noisy(img: Image.Image, sigma: float = 20.0, *, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.asarray(img, dtype=np.float64) + rng.normal(0.0, sigma, (img.height, img.width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def black(width: int, height: int, *, seed: int = 0) -> Image.Image:
    """A black frame as encoders produce it: not exactly zero, a little dark noise."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 7, (height, width, 3), dtype=np.uint8), "RGB")


def white(width: int, height: int) -> Image.Image:
    return Image.new("RGB", (width, height), (252, 252, 252))


def flat(width: int, height: int, value: int = 128) -> Image.Image:
    return Image.new("RGB", (width, height), (value, value, value))


def _scaled(img: Image.Image, factor: float) -> Image.Image:
    pixels = np.asarray(img, dtype=np.float64) * factor
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def degraded(img: Image.Image, family: str, strength: float = 0.0, kind: str = "") -> Image.Image:
    """``img`` degraded as the quality benchmark degrades its frames (see
    ``coverservice.scenes``): "haze" 0.5, "blocks" 8, "testcard" kind "smpte"..."""
    from coverservice.scenes import Degradation, degrade

    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    out = degrade(rgb, Degradation(family, strength, kind), np.random.default_rng(0))
    return Image.fromarray(out, "RGB")
