"""Turning an image into stored renditions: shared by the worker (automatic covers) and
the admin API (pins and uploads), plus what is made from those renditions later: the
placeholder a page paints first, and AVIF on first request."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import blurhash  # type: ignore[import-untyped]
import numpy as np
from PIL import Image

from . import imaging
from .queries import Placeholder, StoredRendition
from .storage import Storage

# Formats rendered only when a client first asks for them, because encoding is slow:
# AVIF at speed 8 costs ~210 ms for a 1280×720 cover, more than all six eager renditions'
# resizes. Quality 60 looks like the JPEG at q82 in about half the bytes.
LAZY_FORMATS: dict[str, str] = {"avif": "image/avif"}
_AVIF_OPTIONS = {"quality": 60, "speed": 8}

# Every format a rendition may have, eager or lazy.
ALL_FORMATS: dict[str, str] = {**imaging.FORMATS, **LAZY_FORMATS}

# Streams per metadata request (GET /api/covers?ids=): a page of rooms, and a bound on
# what one request may make the database do.
MAX_BATCH = 100

# BlurHash components across × down: enough for a 16:9 frame's main masses (28 chars).
_BLURHASH_COMPONENTS = (4, 3)
# The placeholder is computed on a tiny copy: BlurHash's cost grows with the pixel count
# and a 32×18 image has all the detail 4×3 components can hold.
_PLACEHOLDER_SIZE = (32, 18)


@dataclass(frozen=True)
class RenderedCover:
    renditions: list[StoredRendition]
    placeholder: Placeholder


def rendition_key(digest: str, fmt: str) -> str:
    """Where a rendition with these bytes lives: keys derive from the content, so a key
    never changes meaning and a rerun after a crash writes the same keys."""
    return f"renditions/{digest[:2]}/{digest}.{fmt}"


def render_and_store(storage: Storage, data: bytes, *, max_pixels: int) -> RenderedCover:
    """Render every size and eager format, store them, and compute the placeholder."""
    rendered = imaging.render_renditions(data, max_pixels=max_pixels)
    stored = [_store(storage, r) for r in rendered]
    # From the smallest rendition: the same crop the page shows, and the cheapest decode.
    smallest = min(rendered, key=lambda r: r.width * r.height)
    return RenderedCover(stored, placeholder_of(smallest.data, max_pixels=max_pixels))


def placeholder_of(data: bytes, *, max_pixels: int) -> Placeholder:
    """The dominant colour (a CSS background, free to paint) and a BlurHash (a blurred
    preview, for pages that ship a decoder) of an image."""
    im = imaging.open_image(data, max_pixels=max_pixels)
    with imaging.decoding(im.format or "image"):
        tiny = im.convert("RGB").resize(_PLACEHOLDER_SIZE, Image.Resampling.BOX)
    # Dominant, not mean: the mean of a stage with a red curtain and a blue screen is a
    # grey that appears nowhere. Median cut into a few colours, then the most common.
    palette = tiny.quantize(colors=4, method=Image.Quantize.MEDIANCUT)
    # A "P" image's getcolors() gives (count, palette index) pairs.
    counts: list[tuple[int, int]] = palette.getcolors() or [(1, 0)]  # type: ignore[assignment]
    index = max(counts)[1]
    colours = palette.getpalette() or [0, 0, 0]
    r, g, b = colours[3 * index : 3 * index + 3]
    pixels = np.asarray(tiny, dtype=np.uint8).tolist()
    return Placeholder(
        color=f"#{r:02x}{g:02x}{b:02x}",
        blurhash=blurhash.encode(pixels, *_BLURHASH_COMPONENTS),
    )


def render_lazy(
    storage: Storage, source: StoredRendition, size: str, fmt: str, *, max_pixels: int
) -> StoredRendition:
    """Make a lazy format's rendition of ``size`` from a stored rendition of the same
    cover (at least as large) and store it. The caller records it."""
    width, height = imaging.SIZES[size]
    im = imaging.open_image(storage.get(source.key), max_pixels=max_pixels)
    with imaging.decoding(im.format or "image"):
        im.load()
        upright = im.convert("RGB")
    if upright.size != (width, height):
        upright = upright.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)
    buf = io.BytesIO()
    upright.save(buf, fmt.upper(), **_AVIF_OPTIONS)
    return _store(
        storage, imaging.Rendition(size, fmt, width, height, LAZY_FORMATS[fmt], buf.getvalue())
    )


def lazy_source(renditions: dict[tuple[str, str], StoredRendition], size: str) -> StoredRendition | None:
    """The rendition a lazy format of ``size`` is made from: the largest eager one at
    least that size, JPEG first (the least lossy of the eager encodes). Scaling down from
    a larger one also smooths away most of its compression artefacts."""
    width, _ = imaging.SIZES[size]
    candidates = [
        r for (_, fmt), r in renditions.items() if fmt in imaging.FORMATS and r.width >= width
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda r: (r.width, r.format == "jpeg"))


def _store(storage: Storage, r: imaging.Rendition) -> StoredRendition:
    digest = hashlib.sha256(r.data).hexdigest()
    key = rendition_key(digest, r.format)
    storage.put(key, r.data, content_type=r.content_type)
    return StoredRendition(
        size=r.size,
        format=r.format,
        key=key,
        etag=digest[:32],
        content_type=r.content_type,
        width=r.width,
        height=r.height,
        byte_size=len(r.data),
    )
