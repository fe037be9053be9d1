from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageCms
from support.images import encode, flat, scene, scene_jpeg

from coverservice import imaging
from coverservice.errors import ImageRejected

CAP = 16_777_216

RED = (220, 30, 30)
GREEN = (30, 200, 60)
BLUE = (30, 60, 220)
GREY = (128, 128, 128)


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (64, 36)) -> Image.Image:
    return Image.new("RGB", size, colour)


def decoded(r: imaging.Rendition) -> Image.Image:
    im = Image.open(io.BytesIO(r.data))
    im.load()
    return im


def colour_at(im: Image.Image, x: int, y: int) -> tuple[int, ...]:
    pixel = im.convert("RGB").getpixel((x, y))
    assert isinstance(pixel, tuple)
    return pixel


def near(actual: tuple[int, ...], expected: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims any size: IHDR, then a token IDAT and IEND."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(64)))
        + chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF0) is patched to claim another size."""
    data = bytearray(encode(scene(64, 64)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def animated(fmt: str) -> bytes:
    frames = [solid(RED), solid(BLUE), solid(GREEN)]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


# --- format allowlist and limits ---------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_allowed_formats_decode(fmt: str) -> None:
    data = encode(scene(640, 360), fmt)
    assert imaging.open_image(data, max_pixels=CAP).format == fmt
    assert imaging.decode_luma(data, max_pixels=CAP).luma.shape == (180, 320)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_formats_are_refused_by_name(fmt: str) -> None:
    data = encode(scene(64, 36), fmt)
    with pytest.raises(ImageRejected) as info:
        imaging.decode_luma(data, max_pixels=CAP)
    assert str(info.value) == f"format {fmt} is not allowed (JPEG, PNG, WebP only)"


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, world" * 20, b"<html><body>404</body></html>"],
    ids=["empty", "text", "html"],
)
def test_garbage_is_not_an_image(data: bytes) -> None:
    with pytest.raises(ImageRejected, match=r"^not an image"):
        imaging.decode_luma(data, max_pixels=CAP)


def test_broken_header_is_not_an_image() -> None:
    with pytest.raises(ImageRejected, match=r"^not an image \(broken JPEG data"):
        imaging.decode_luma(b"\xff\xd8\xff" + bytes(200), max_pixels=CAP)


@pytest.mark.parametrize("make", [png_header, jpeg_claiming], ids=["png", "jpeg"])
def test_pixel_cap_is_checked_on_the_header(make: Callable[[int, int], bytes]) -> None:
    # The file holds no pixel data for that size: rejected for its size, not as truncated,
    # so the check ran before any decoding.
    data = make(5000, 5000)
    assert len(data) < 5000
    with pytest.raises(ImageRejected) as info:
        imaging.decode_luma(data, max_pixels=CAP)
    assert str(info.value) == "image is 5000×5000 = 25 Mpx, over the 16.8 Mpx cap"


def test_pixel_cap_applies_beyond_pillows_bomb_limit() -> None:
    # 400 Mpx is past Pillow's own DecompressionBombError threshold (2 × 89 Mpx): our check
    # still answers, with our reason, and without any warning (warnings are errors here).
    with pytest.raises(ImageRejected, match=r"^image is 20000×20000 = 400 Mpx, over the 16.8"):
        imaging.decode_luma(png_header(20000, 20000), max_pixels=CAP)


def test_pixel_cap_is_ours_alone() -> None:
    # A cap above Pillow's global limit is honoured, and Pillow's global is not touched.
    before = Image.MAX_IMAGE_PIXELS
    im = imaging.open_image(png_header(15000, 15000), max_pixels=300_000_000)
    assert im.size == (15000, 15000)
    assert Image.MAX_IMAGE_PIXELS == before


def test_pixel_cap_boundary() -> None:
    data = encode(scene(640, 360), "PNG")
    imaging.decode_luma(data, max_pixels=640 * 360)
    with pytest.raises(ImageRejected, match="over the"):
        imaging.decode_luma(data, max_pixels=640 * 360 - 1)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_data_is_rejected(fmt: str, keep: float) -> None:
    data = encode(scene(640, 360), fmt)
    with pytest.raises(ImageRejected) as info:
        imaging.decode_luma(data[: int(len(data) * keep)], max_pixels=CAP)
    assert str(info.value) == "truncated image data"
    with pytest.raises(ImageRejected):
        imaging.render_renditions(data[: int(len(data) * keep)], max_pixels=CAP)


@pytest.mark.parametrize("fmt", ["WEBP", "PNG"])
def test_animated_images_use_their_first_frame(fmt: str) -> None:
    data = animated(fmt)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3  # really animated
    red_luma = np.asarray(solid(RED).convert("L"))[0, 0]
    assert abs(int(imaging.decode_luma(data, max_pixels=CAP).luma.mean()) - int(red_luma)) <= 3
    for r in imaging.render_renditions(data, max_pixels=CAP, formats=["jpeg"]):
        assert near(colour_at(decoded(r), r.width // 2, r.height // 2), RED)


# --- decode_luma ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "shape"),
    [
        ((1280, 720), (180, 320)),
        ((1920, 1080), (180, 320)),
        ((640, 360), (180, 320)),
        ((360, 640), (320, 180)),  # portrait: same area, same aspect
        ((160, 90), (180, 320)),  # small sources are brought up to the analysis size
        ((640, 480), (208, 277)),  # 4:3 keeps the area
    ],
)
def test_decode_luma_analysis_size(size: tuple[int, int], shape: tuple[int, int]) -> None:
    luma = imaging.decode_luma(scene_jpeg(*size), max_pixels=CAP).luma
    assert luma.shape == shape
    assert luma.dtype == np.uint8
    assert luma.ndim == 2


def test_decode_luma_jpeg_is_the_dct_scaled_grayscale_decode() -> None:
    data = scene_jpeg(1280, 720)
    result = imaging.decode_luma(data, max_pixels=CAP)
    luma = result.luma

    # libjpeg's own 1/4-scale grayscale decode, bit for bit, and nothing resampled...
    im = Image.open(io.BytesIO(data))
    im.draft("L", (320, 180))
    assert im.size == (320, 180)
    assert np.array_equal(luma, np.asarray(im))
    assert result.coded is luma and result.block == 2

    # ...which is not what a full decode, then a grayscale conversion and resize give.
    full = Image.open(io.BytesIO(data)).convert("L").resize((320, 180), Image.Resampling.BOX)
    assert not np.array_equal(luma, np.asarray(full))


def test_decode_luma_matches_across_formats() -> None:
    img = scene(1280, 720)
    lumas = [
        imaging.decode_luma(encode(img, fmt), max_pixels=CAP).luma
        for fmt in ("JPEG", "PNG", "WEBP")
    ]
    for luma in lumas[1:]:
        assert np.abs(luma.astype(int) - lumas[0].astype(int)).mean() < 3


@pytest.mark.parametrize(
    ("img", "expected"),
    [
        (Image.new("L", (320, 180), 200), 200),
        (Image.new("CMYK", (320, 180), (0, 0, 0, 0)), 255),
        (Image.new("RGBA", (320, 180), (255, 255, 255, 0)), 0),  # transparent → black
        (Image.new("I;16", (320, 180), 0x8000), 128),  # 16-bit scaled, not clipped
        (Image.new("1", (320, 180), 1), 255),
    ],
    ids=["L", "CMYK", "RGBA", "I;16", "1"],
)
def test_decode_luma_modes(img: Image.Image, expected: int) -> None:
    fmt = "JPEG" if img.mode == "CMYK" else "PNG"
    luma = imaging.decode_luma(encode(img, fmt), max_pixels=CAP).luma
    assert abs(float(luma.mean()) - expected) <= 2
    renditions = imaging.render_renditions(
        encode(img, fmt), max_pixels=CAP, sizes={"small": (320, 180)}
    )
    assert all(decoded(r).mode == "RGB" for r in renditions)


@pytest.mark.parametrize(
    ("size", "coded", "block"),
    [
        ((1280, 720), (180, 320), 2),  # 1/4: already the analysis size
        ((640, 360), (180, 320), 4),  # 1/2: already the analysis size
        ((960, 540), (270, 480), 4),  # 1/2, then resampled by 2/3: blocks 8/3 px apart
        ((854, 480), (240, 427), 4),
        ((540, 960), (480, 270), 4),
        ((1920, 1080), (270, 480), 2),
        ((2560, 1440), (360, 640), 2),  # not 1/8: a block would be one pixel, its edges gone
        ((160, 90), (90, 160), 8),  # smaller than the analysis size: decoded whole
    ],
)
def test_decode_luma_keeps_the_jpeg_block_grid(
    size: tuple[int, int], coded: tuple[int, int], block: int
) -> None:
    data = scene_jpeg(*size)
    result = imaging.decode_luma(data, max_pixels=CAP)
    assert result.coded.shape == coded and result.block == block
    # The decode is libjpeg's DCT-scaled one at that scale: every 8×8 block of the JPEG is
    # block × block pixels of it, the grid starting at the top left.
    im = Image.open(io.BytesIO(data))
    im.draft("L", (size[0] * block // 8, size[1] * block // 8))
    assert np.array_equal(result.coded, np.asarray(im))
    assert (result.coded is result.luma) == (coded == result.luma.shape)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_decode_luma_of_other_formats_keeps_the_full_size(fmt: str) -> None:
    # No DCT scaling: an 8×8 grid, if the picture was ever a JPEG or a video, is 8 pixels.
    result = imaging.decode_luma(encode(scene(960, 540), fmt), max_pixels=CAP)
    assert result.coded.shape == (540, 960) and result.block == 8
    assert result.luma.shape == (180, 320)


# --- renditions --------------------------------------------------------------------------


@pytest.mark.parametrize("source", [(1280, 720), (1920, 1080), (640, 360), (360, 640), (800, 600)])
def test_renditions_have_every_size_and_format(source: tuple[int, int]) -> None:
    renditions = imaging.render_renditions(scene_jpeg(*source), max_pixels=CAP)
    got = {(r.size, r.format): r for r in renditions}
    assert list(got) == [(s, f) for s in imaging.SIZES for f in imaging.FORMATS]
    for (size, fmt), r in got.items():
        assert (r.width, r.height) == imaging.SIZES[size]
        assert r.content_type == imaging.FORMATS[fmt]
        im = decoded(r)
        assert im.format == {"jpeg": "JPEG", "webp": "WEBP"}[fmt]
        assert im.size == imaging.SIZES[size]
        assert im.mode == "RGB"


def test_rendition_encoding_and_no_metadata() -> None:
    exif = Image.Exif()
    exif[0x010F] = "SpyCam"  # Make
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encode(scene(1280, 720), "JPEG", exif=exif.tobytes(), icc_profile=icc)
    assert "exif" in Image.open(io.BytesIO(data)).info  # the source does carry both

    for r in imaging.render_renditions(data, max_pixels=CAP):
        info = decoded(r).info
        assert "exif" not in info
        assert "icc_profile" not in info
        if r.format == "jpeg":
            assert info.get("progressive") or info.get("progression")


def test_portrait_is_cropped_around_forty_percent_not_squashed() -> None:
    # 360×640 phone stream: red top, blue bottom, a green band centred at 40% height.
    img = Image.new("RGB", (360, 640), GREY)
    img.paste(RED, (0, 0, 360, 64))
    img.paste(BLUE, (0, 576, 360, 640))
    img.paste(GREEN, (0, 224, 360, 288))
    for r in imaging.render_renditions(encode(img, "PNG"), max_pixels=CAP, formats=["jpeg"]):
        out = decoded(r)
        assert near(colour_at(out, r.width // 2, r.height // 2), GREEN)
        # The 16:9 band spans 24%..56% of the height: red and blue are cropped away
        # (a squash would keep them) and nothing is letterboxed.
        for y in (1, r.height - 2):
            assert near(colour_at(out, r.width // 2, y), GREY)
            assert near(colour_at(out, 1, y), GREY)


def test_wide_source_is_cropped_in_the_middle() -> None:
    img = Image.new("RGB", (800, 360), GREY)
    img.paste(RED, (0, 0, 80, 360))
    img.paste(BLUE, (720, 0, 800, 360))
    (r,) = imaging.render_renditions(
        encode(img, "PNG"), max_pixels=CAP, sizes={"large": (1280, 720)}, formats=["jpeg"]
    )
    out = decoded(r)
    assert near(colour_at(out, 2, 360), GREY)
    assert near(colour_at(out, 1277, 360), GREY)


def test_small_source_is_upscaled_to_fill() -> None:
    img = Image.new("RGB", (160, 90), GREY)
    img.paste(RED, (0, 0, 80, 90))
    got = imaging.render_renditions(encode(img, "PNG"), max_pixels=CAP, formats=["jpeg"])
    large = next(r for r in got if r.size == "large")
    out = decoded(large)
    assert out.size == (1280, 720)
    assert near(colour_at(out, 2, 2), RED)
    assert near(colour_at(out, 1277, 717), GREY)


def test_exif_orientation_is_honoured() -> None:
    # Stored as a 360×640 portrait (red top, blue bottom) with Orientation 6: shown turned
    # 90° clockwise, a landscape with blue on the left and red on the right.
    stored = Image.new("RGB", (360, 640), RED)
    stored.paste(BLUE, (0, 320, 360, 640))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", exif=exif.tobytes())
    for r in imaging.render_renditions(data, max_pixels=CAP, formats=["jpeg"]):
        out = decoded(r)
        assert near(colour_at(out, 4, r.height // 2), BLUE)
        assert near(colour_at(out, r.width - 5, r.height // 2), RED)


def test_rendition_arguments_are_checked() -> None:
    data = encode(flat(64, 36), "PNG")
    with pytest.raises(ValueError, match="unknown rendition formats"):
        imaging.render_renditions(data, max_pixels=CAP, formats=["gif"])
    with pytest.raises(ValueError, match="aspect ratio"):
        imaging.render_renditions(data, max_pixels=CAP, sizes={"a": (1280, 720), "b": (100, 100)})


def test_renditions_refuse_what_decoding_refuses() -> None:
    with pytest.raises(ImageRejected, match="over the"):
        imaging.render_renditions(png_header(5000, 5000), max_pixels=CAP)
    with pytest.raises(ImageRejected, match="not allowed"):
        imaging.render_renditions(encode(flat(64, 36), "GIF"), max_pixels=CAP)


# --- decode_detail -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "fmt", "shape", "scale"),
    [
        ((1280, 720), "JPEG", (720, 1280), 1.0),
        ((1920, 1080), "JPEG", (1080, 1920), 1.0),  # 1/2 would be narrower than the cover
        ((3840, 2160), "JPEG", (1080, 1920), 0.5),
        ((640, 360), "JPEG", (360, 640), 1.0),
        ((360, 640), "JPEG", (640, 360), 1.0),
        ((2560, 1440), "PNG", (720, 1280), 0.5),  # not DCT-scaled: box-reduced alike
        ((1280, 720), "WEBP", (720, 1280), 1.0),
    ],
)
def test_decode_detail_keeps_the_detail_of_the_large_cover(
    size: tuple[int, int], fmt: str, shape: tuple[int, int], scale: float
) -> None:
    detail = imaging.decode_detail(encode(flat(*size, 90), fmt), max_pixels=CAP)
    assert detail.luma.shape == shape and detail.luma.dtype == np.uint8
    assert detail.scale == scale
    assert abs(int(detail.luma.mean()) - 90) <= 2


def test_decode_detail_is_the_same_picture_as_decode_luma() -> None:
    data = scene_jpeg(1280, 720)
    detail = imaging.decode_detail(data, max_pixels=CAP)
    draft = imaging.decode_luma(data, max_pixels=CAP)
    shrunk = Image.fromarray(detail.luma).reduce(4)
    assert np.abs(np.asarray(shrunk, dtype=np.int16) - draft.luma.astype(np.int16)).mean() < 3


def test_decode_detail_refuses_what_decode_luma_refuses() -> None:
    data = scene_jpeg(640, 360)
    with pytest.raises(ImageRejected, match="over the"):
        imaging.decode_detail(data, max_pixels=640 * 360 - 1)
    with pytest.raises(ImageRejected, match="truncated"):
        imaging.decode_detail(data[: len(data) // 2], max_pixels=CAP)
    with pytest.raises(ImageRejected, match="not an image"):
        imaging.decode_detail(b"<html>", max_pixels=CAP)
