"""Pillow boundary: untrusted bytes in, luma for scoring and encoded renditions out.

Every image is opened the same way (``open_image``): the signature must be an allowed
format and the header's pixel count must fit ``max_pixels`` before any pixel is decoded.
Pillow's own failures (truncated data, broken streams, bad headers) become
``ImageRejected`` with a reason a person can read. Pillow's globals (``MAX_IMAGE_PIXELS``,
``LOAD_TRUNCATED_IMAGES``) are left alone: the caller's ``max_pixels`` is the only cap.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

import numpy as np
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from . import scoring
from .errors import ImageRejected

ALLOWED_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP"})

# The covers the frontend lays out: a fixed contract, so smaller sources are upscaled.
SIZES: dict[str, tuple[int, int]] = {
    "large": (1280, 720),
    "medium": (640, 360),
    "small": (320, 180),
}

# Rendition format name -> content type.
FORMATS: dict[str, str] = {"jpeg": "image/jpeg", "webp": "image/webp"}

# Scoring looks at every frame at one resolution, so a sharpness figure means the same for
# a 1920×1080 and a 640×360 screenshot. Other aspect ratios keep this size's *area*
# (portrait 360×640 → 180×320): the same number of samples and the same work per frame.
ANALYSIS_SIZE: tuple[int, int] = (320, 180)

# A portrait source's 16:9 band is centred this far down: faces and subjects of phone
# streams sit in the upper middle, and the bottom holds chat overlays and controls.
CROP_CENTRE_Y = 0.4

_JPEG_OPTIONS = {"quality": 82, "progressive": True, "optimize": True}
_WEBP_OPTIONS = {"quality": 80, "method": 4}

# The plugin classes parse only the header when constructed. Opening through them rather
# than Image.open() skips Pillow's global decompression-bomb check, whose warning or error
# (depending on the process's warning filters) would otherwise preempt our own cap.
_OPENERS: dict[str, Callable[[IO[bytes]], ImageFile.ImageFile]] = {
    "JPEG": JpegImagePlugin.JpegImageFile,
    "PNG": PngImagePlugin.PngImageFile,
    "WEBP": WebPImagePlugin.WebPImageFile,
}

# Leading bytes of formats we know, so a refusal can name the format it refuses.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"WEBP", 8, "WEBP"),  # after b"RIFF" and the chunk size
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"ftypavif", 4, "AVIF"),
    (b"ftypheic", 4, "HEIC"),
    (b"ftypmif1", 4, "HEIF"),
    (b"8BPS", 0, "PSD"),
    (b"\x00\x00\x01\x00", 0, "ICO"),
    (b"<svg", 0, "SVG"),
    (b"<?xml", 0, "SVG"),
    (b"%PDF", 0, "PDF"),
)


@dataclass(frozen=True)
class Rendition:
    size: str  # key of SIZES
    format: str  # key of FORMATS
    width: int
    height: int
    content_type: str
    data: bytes


def sniff_format(data: bytes) -> str | None:
    """The format named by the data's signature, or None when it is not one we know."""
    for magic, offset, name in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            if name == "WEBP" and not data.startswith(b"RIFF"):
                continue
            return name
    return None


def open_image(data: bytes, *, max_pixels: int) -> ImageFile.ImageFile:
    """Identify ``data`` and check it against the format allowlist and ``max_pixels``.

    Only the header is read: pixels are decoded when the image is loaded, which callers do
    inside ``decoding()`` so that broken data becomes ``ImageRejected``. An animated image
    stays on its first frame.
    """
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageRejected("not an image (unrecognised data)")
    if fmt not in ALLOWED_FORMATS:
        allowed = ", ".join(_display(f) for f in sorted(ALLOWED_FORMATS))
        raise ImageRejected(f"format {_display(fmt)} is not allowed ({allowed} only)")
    if fmt == "WEBP" and len(data) < 8 + int.from_bytes(data[4:8], "little"):
        # libwebp only says "could not create decoder"; the RIFF header knows the length.
        raise ImageRejected("truncated image data")
    with decoding(fmt):
        im = _OPENERS[fmt](io.BytesIO(data))
    width, height = im.size
    if width < 1 or height < 1:
        raise ImageRejected(f"not an image ({_display(fmt)} header gives {width}×{height})")
    if width * height > max_pixels:
        raise ImageRejected(
            f"image is {width}×{height} = {_mpx(width * height)} Mpx, "
            f"over the {_mpx(max_pixels)} Mpx cap"
        )
    return im


@contextmanager
def decoding(fmt: str) -> Iterator[None]:
    """Turn what Pillow and its codecs raise on bad data into ``ImageRejected``."""
    try:
        yield
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        # Some openers (WebP) check Pillow's own limit before our pixel cap is reached.
        raise ImageRejected(f"image is over the pixel cap ({exc})") from exc
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as exc:
        if "truncated" in str(exc).lower() or isinstance(exc, EOFError):
            raise ImageRejected("truncated image data") from exc
        detail = str(exc) or type(exc).__name__
        raise ImageRejected(f"not an image (broken {_display(fmt)} data: {detail[:100]})") from exc


def analysis_size(width: int, height: int) -> tuple[int, int]:
    """``ANALYSIS_SIZE``'s area at the source's aspect ratio."""
    scale = math.sqrt(ANALYSIS_SIZE[0] * ANALYSIS_SIZE[1] / (width * height))
    # 8 px keeps the 3×3 Laplacian meaningful even for absurd aspect ratios.
    return max(8, round(width * scale)), max(8, round(height * scale))


def decode_luma(data: bytes, *, max_pixels: int) -> scoring.Decoded:
    """The image's luma at the analysis resolution, and as decoded before resampling to it
    (where the JPEG's 8×8 blocks are whole pixels), for ``scoring.score_luma``.

    EXIF orientation is ignored: a quarter turn does not change what scoring measures.
    """
    im = open_image(data, max_pixels=max_pixels)
    target = analysis_size(*im.size)
    block = 8
    with decoding(im.format or "image"):
        if im.format == "JPEG":
            # libjpeg scales by 1/2, 1/4 or 1/8 inside the IDCT and skips the chroma
            # planes: the smallest decode still at least as large as the target, but no
            # smaller than 1/4, where a block is still 2 pixels and its edges can be seen.
            width, height = im.size
            drafted = im.draft("L", (max(target[0], width // 4), max(target[1], height // 4)))
            if drafted is not None:  # the box is the source's size in decoded pixels
                block = round(8 * drafted[1][2] / width)
        im.load()
        small = _flattened(im)
        if small.mode != "L":
            small = small.convert("L")
    coded = np.asarray(small, dtype=np.uint8)
    if small.size == target:
        return scoring.Decoded(luma=coded, coded=coded, block=block)
    # BOX (area average) going down, like the DCT scaling and like reduce(), so the JPEG
    # and PNG paths see the same detail. Going up, a smooth filter: a small source's lack
    # of detail should score as such, not as pixel-sharp edges.
    shrink = small.width > target[0]
    small = small.resize(target, Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR)
    return scoring.Decoded(luma=np.asarray(small, dtype=np.uint8), coded=coded, block=block)


def decode_detail(data: bytes, *, max_pixels: int) -> scoring.Detail:
    """The image's luma at the detail the large cover shows, for ``scoring.score_detail``.

    Shrunk by the largest power of two (at most 1/8) that still leaves at least the large
    cover's width and height (``SIZES["large"]``; a portrait frame, cropped to a 16:9 band
    for the cover, needs only the width): a 1920×1080 or smaller frame decodes whole, a
    4K one at 1/2. JPEGs shrink inside the IDCT (``draft``), other formats by a box
    reduce. Meant for the few frames that could become the cover, while their bytes are
    still in hand: a full decode costs several times the draft's.
    """
    im = open_image(data, max_pixels=max_pixels)
    width, height = im.size
    large = SIZES["large"]
    # Portrait frames are cropped to a 16:9 band for the cover: what must be covered is
    # their width, against the cover's width (a 360×640 frame decodes whole).
    need = large[0] / width if width < height else max(large[0] / width, large[1] / height)
    shrink = 1  # 1, 2, 4 or 8: the most the decode may shrink and still cover the cover
    while shrink < 8 and need * shrink * 2 <= 1:
        shrink *= 2
    with decoding(im.format or "image"):
        if im.format == "JPEG" and shrink > 1:
            im.draft("L", (math.ceil(width / shrink), math.ceil(height / shrink)))
        im.load()
        picture = _flattened(im)
        if picture.mode != "L":
            picture = picture.convert("L")
    if picture.width > math.ceil(width / shrink):  # not DCT-scaled: reduce it to the same
        picture = picture.reduce(shrink)
    return scoring.Detail(luma=np.asarray(picture, dtype=np.uint8), scale=picture.width / width)


def render_renditions(
    data: bytes,
    *,
    max_pixels: int,
    sizes: Mapping[str, tuple[int, int]] = SIZES,
    formats: Iterable[str] = FORMATS,
) -> list[Rendition]:
    """One ``Rendition`` per (size, format), in the order of ``sizes`` then ``formats``.

    All sizes must share one aspect ratio: the source is cropped to it once, resized to
    the largest size and each smaller size is made from the one above it.
    """
    format_names = list(formats)
    unknown = [name for name in format_names if name not in FORMATS]
    if unknown:
        raise ValueError(f"unknown rendition formats: {unknown}")
    ordered = sorted(sizes.items(), key=lambda item: item[1][0] * item[1][1], reverse=True)
    if not ordered:
        return []
    ratio = ordered[0][1][0] / ordered[0][1][1]
    if any(abs(w / h - ratio) > 0.01 * ratio for _, (w, h) in ordered):
        raise ValueError("rendition sizes must share one aspect ratio")

    im = open_image(data, max_pixels=max_pixels)
    with decoding(im.format or "image"):
        im.load()
        try:
            ImageOps.exif_transpose(im, in_place=True)
        except (OSError, ValueError, SyntaxError, struct.error, EOFError):
            pass  # a broken EXIF block costs the orientation, not the cover
        upright = _flattened(im)
        if upright.mode != "RGB":
            upright = upright.convert("RGB")

    images: dict[str, Image.Image] = {}
    # The crop rides on the first resize (its box is in source pixels, sub-pixel exact);
    # each later size is made from the one before it, already cropped and much smaller.
    source = upright
    box: tuple[float, float, float, float] | None = _crop_box(upright.size, ratio)
    for name, size in ordered:
        # reducing_gap lets Pillow box-reduce by an integer factor before LANCZOS when
        # shrinking a lot (a 4K source): much faster, and no visible difference.
        source = images[name] = source.resize(
            size, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0
        )
        box = None

    renditions = []
    for name in sizes:
        for fmt in format_names:
            rendered = images[name]
            renditions.append(
                Rendition(
                    size=name,
                    format=fmt,
                    width=rendered.width,
                    height=rendered.height,
                    content_type=FORMATS[fmt],
                    data=_encode(rendered, fmt),
                )
            )
    return renditions


def _crop_box(size: tuple[int, int], ratio: float) -> tuple[float, float, float, float]:
    """The largest ``ratio`` (width / height) box in an image of ``size``."""
    width, height = size
    if width / height >= ratio:
        # Wider than wanted (landscape): keep the middle.
        crop_width = height * ratio
        left = (width - crop_width) / 2
        return left, 0.0, left + crop_width, float(height)
    # Taller than wanted (portrait, 4:3): keep a band around CROP_CENTRE_Y.
    crop_height = width / ratio
    top = min(max(height * CROP_CENTRE_Y - crop_height / 2, 0.0), height - crop_height)
    return 0.0, top, float(width), top + crop_height


def _flattened(im: Image.Image) -> Image.Image:
    """``im`` as 8-bit L or RGB(A-free), transparency composited onto black.

    Black, because covers are video stills: it is what a player shows behind a
    transparent overlay, and it does not depend on the page the cover lands on.
    """
    if im.mode.startswith("I;16"):
        # Pillow clips 16-bit samples to 0..255 on convert; keep the top byte instead.
        return Image.fromarray((np.asarray(im) >> 8).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode in ("L", "RGB"):
        return im
    return im.convert("RGB")


def _encode(im: Image.Image, fmt: str) -> bytes:
    # Pillow writes EXIF, ICC and XMP only when passed to save(): renditions carry none,
    # so no camera or location data leaks and every cover is taken as sRGB.
    buf = io.BytesIO()
    if fmt == "jpeg":
        im.save(buf, "JPEG", **_JPEG_OPTIONS)
    else:
        im.save(buf, "WEBP", **_WEBP_OPTIONS)
    return buf.getvalue()


def _display(fmt: str) -> str:
    return "WebP" if fmt == "WEBP" else fmt


def _mpx(pixels: int) -> str:
    return f"{pixels / 1_000_000:.3g}"
