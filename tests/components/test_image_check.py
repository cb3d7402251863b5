import io
import struct
import warnings

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from components.image_check import ImageInfo, check_image, classify_decode_error
from components.preprocess import decode_and_resize
from components.records import (
    DECODE_ERROR,
    DECOMPRESSION_BOMB,
    EMPTY_FILE,
    NOT_AN_IMAGE,
    TOO_SMALL,
    TRUNCATED_IMAGE,
    Rejected,
)
from tests.image_factory import BLUE, GREEN, PNG_SIGNATURE, RED, WHITE, encode, png_header_only, quadrants


def _noise(width: int = 200, height: int = 150, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _pixels(data: bytes, info: ImageInfo) -> np.ndarray:
    """What the project's decoder makes of `data`, letterbox removed (scale 1, so pixels are unchanged)."""
    assert tf.io.decode_image(data, channels=3, expand_animations=False).shape == (info.height, info.width, 3)
    size = max(info.width, info.height)
    square = decode_and_resize(tf.constant(data), size).numpy()
    top, left = (size - info.height) // 2, (size - info.width) // 2
    return square[top : top + info.height, left : left + info.width].astype(int)


def _rejected(data: bytes, **kwargs) -> Rejected:
    with pytest.raises(Rejected) as caught:
        check_image(data, **kwargs)
    assert "\n" not in caught.value.message and caught.value.message  # one concrete line
    return caught.value


# --- the common case: header only, same bytes back


def test_ordinary_rgb_jpeg_is_returned_as_the_same_object():
    data = encode(Image.fromarray(_noise()), "JPEG", quality=90)
    out, info = check_image(data)
    assert out is data
    assert info == ImageInfo(format="JPEG", width=200, height=150, mode="RGB", normalized=False)


def test_ordinary_rgb_png_is_returned_as_is_and_decodes_exactly():
    pixels = _noise()
    data = encode(Image.fromarray(pixels), "PNG")
    out, info = check_image(data)
    assert out is data and info == ImageInfo("PNG", 200, 150, "RGB", False)
    assert np.array_equal(_pixels(out, info), pixels)


def test_progressive_jpeg_is_kept():
    image = quadrants(96, 64)
    data = encode(image, "JPEG", quality=95, progressive=True)
    assert Image.open(io.BytesIO(data)).info.get("progressive")
    out, info = check_image(data)
    assert out is data and info == ImageInfo("JPEG", 96, 64, "RGB", False)
    assert np.abs(_pixels(out, info)[10, 10] - RED).max() <= 8


# --- content, not name


def test_empty_data_is_an_empty_file():
    assert _rejected(b"").reason == EMPTY_FILE


@pytest.mark.parametrize(
    "data, says",
    [
        (np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "no JPEG, PNG"),
        # What a web server returns instead of "cat.jpg": only the content counts, never the name.
        (b"<html><head><title>404 Not Found</title></head></html>\n", "text starting with b'<html>"),
        (b"II*\x00" + bytes(100), "TIFF"),
    ],
)
def test_content_without_a_supported_signature_is_not_an_image(data, says):
    rejected = _rejected(data)
    assert rejected.reason == NOT_AN_IMAGE and says in rejected.message


def test_png_content_is_read_as_png_whatever_else_it_claims():
    data = encode(Image.fromarray(_noise(40, 40)), "PNG")
    assert check_image(data)[1].format == "PNG"  # e.g. a PNG saved as "photo.jpg"


# --- truncation


def _cut(data: bytes, keep: float) -> bytes:
    return data[: int(len(data) * keep)]


@pytest.mark.parametrize(
    "fmt, make",
    [
        ("JPEG", lambda d: _cut(d, 0.5)),
        ("JPEG", lambda d: d[:-2]),  # only the EOI marker missing: TF fails on this too
        ("JPEG", lambda d: d[:200]),  # cut inside the header
        ("PNG", lambda d: _cut(d, 0.5)),
        ("PNG", lambda d: d[:-12]),  # all rows present, IEND missing: PIL reads it, TF does not
        ("PNG", lambda d: d[:30]),  # cut inside IHDR
        ("GIF", lambda d: _cut(d, 0.5)),
        ("WEBP", lambda d: _cut(d, 0.9)),
        ("BMP", lambda d: d[:-1]),
    ],
    ids=["jpeg-half", "jpeg-no-eoi", "jpeg-header", "png-half", "png-no-iend", "png-header", "gif", "webp", "bmp"],
)
def test_data_that_ends_early_is_truncated(fmt, make):
    data = encode(Image.fromarray(_noise()), fmt)
    rejected = _rejected(make(data))
    assert rejected.reason == TRUNCATED_IMAGE and fmt in rejected.message


def test_tf_fails_on_a_truncated_jpeg_without_saying_it_is_truncated():
    # Why check_image checks the end marker: TF 2.21 does refuse the data, but its message is the generic one.
    data = encode(Image.fromarray(_noise()), "JPEG")
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        tf.io.decode_image(_cut(data, 0.5), channels=3, expand_animations=False)
    assert classify_decode_error(caught.value.message) == DECODE_ERROR


@pytest.mark.parametrize("fmt, tail", [("JPEG", b"\x00" * 100), ("JPEG", b"trailer"), ("PNG", b"junk"), ("GIF", b"x")])
def test_bytes_after_the_end_marker_are_harmless(fmt, tail):
    data = encode(Image.fromarray(_noise(64, 48)), fmt) + tail
    out, info = check_image(data)
    assert out is data and not info.normalized
    _pixels(out, info)  # TF reads it


# --- kinds TF reads natively: original bytes, right pixels


def test_gif_is_kept_with_its_colours():
    image = quadrants()
    out, info = check_image(encode(image, "GIF"))
    assert info == ImageInfo("GIF", 80, 40, "P", False)
    assert np.array_equal(_pixels(out, info), np.asarray(image))


def test_rgba_png_is_kept_and_decodes_to_its_rgb_channels():
    pixels = np.zeros((40, 60, 4), np.uint8)
    pixels[:, :30] = (10, 20, 30, 255)
    pixels[:, 30:] = (200, 100, 50, 0)  # fully transparent: TF drops alpha, the colour stays
    data = encode(Image.fromarray(pixels), "PNG")
    out, info = check_image(data)
    assert out is data and info == ImageInfo("PNG", 60, 40, "RGBA", False)
    assert np.array_equal(_pixels(out, info), pixels[..., :3])


def test_palette_png_with_transparency_is_kept():
    image = Image.new("P", (40, 40), 0)
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.paste(1, (20, 0, 40, 40))
    data = encode(image, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).info["transparency"] == 0
    out, info = check_image(data)
    assert out is data and info == ImageInfo("PNG", 40, 40, "P", False)
    decoded = _pixels(out, info)
    assert (decoded[:, :20] == (10, 20, 30)).all() and (decoded[:, 20:] == (200, 100, 50)).all()


@pytest.mark.parametrize("fmt, tolerance", [("PNG", 0), ("JPEG", 1)])
def test_grayscale_is_kept_and_becomes_grey_rgb(fmt, tolerance):
    data = encode(Image.new("L", (48, 40), 77), fmt)
    out, info = check_image(data)
    assert out is data and info == ImageInfo(fmt, 48, 40, "L", False)
    assert np.abs(_pixels(out, info) - 77).max() <= tolerance


def test_cmyk_jpeg_is_kept_because_tf_converts_it_right():
    pixels = np.zeros((40, 80, 4), np.uint8)
    pixels[:, :40] = (255, 0, 0, 0)  # pure cyan
    pixels[:, 40:] = (0, 0, 0, 128)  # half black
    data = encode(Image.fromarray(pixels, "CMYK"), "JPEG", quality=95)
    out, info = check_image(data)
    assert out is data and info == ImageInfo("JPEG", 80, 40, "CMYK", False)
    decoded = _pixels(out, info)
    assert np.abs(decoded[20, 10] - (0, 255, 255)).max() <= 3
    assert np.abs(decoded[20, 70] - (127, 127, 127)).max() <= 3


def test_16_bit_grayscale_png_is_kept_and_scaled_to_8_bits():
    levels = np.zeros((40, 60), np.uint16)
    levels[:, :30] = 65535
    levels[:, 30:] = 32896  # 128 * 257
    image = Image.fromarray(levels)
    assert image.mode == "I;16"
    out, info = check_image(encode(image, "PNG"))
    assert info == ImageInfo("PNG", 60, 40, "I;16", False)
    decoded = _pixels(out, info)
    assert (decoded[:, :30] == 255).all() and (decoded[:, 30:] == 128).all()


def test_rgb_webp_is_kept():
    pixels = _noise(64, 48)
    data = encode(Image.fromarray(pixels), "WEBP", lossless=True)
    out, info = check_image(data)
    assert out is data and info == ImageInfo("WEBP", 64, 48, "RGB", False)
    assert np.array_equal(_pixels(out, info), pixels)


def test_24_bit_bmp_is_kept():
    pixels = _noise(50, 40)
    data = encode(Image.fromarray(pixels), "BMP")
    out, info = check_image(data)
    assert out is data and info == ImageInfo("BMP", 50, 40, "RGB", False)
    assert np.array_equal(_pixels(out, info), pixels)


# --- kinds TF would read wrongly or not at all: lossless PNG re-encoding


@pytest.mark.parametrize(
    "orientation, stored_from_upright",
    [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270), (3, Image.Transpose.ROTATE_180)],
)
def test_exif_rotated_jpeg_comes_back_upright(orientation, stored_from_upright):
    upright = quadrants(80, 40)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(upright.transpose(stored_from_upright), "JPEG", quality=95, exif=exif)
    out, info = check_image(data)
    assert out.startswith(PNG_SIGNATURE)
    assert info == ImageInfo("JPEG", 80, 40, "RGB", True)  # the upright size, not the stored one
    decoded = _pixels(out, info)
    for (y, x), colour in {(10, 20): RED, (10, 60): GREEN, (30, 20): BLUE, (30, 60): WHITE}.items():
        assert np.abs(decoded[y, x] - colour).max() <= 10, (orientation, (y, x))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pil_exif_transpose(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(_noise(64, 40)), "PNG", exif=exif)  # PNG: lossless, so compare exactly
    out, info = check_image(data)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    assert info.normalized == (orientation != 1) and (info.height, info.width) == expected.shape[:2]
    assert np.array_equal(_pixels(out, info), expected)
    assert Image.open(io.BytesIO(out)).getexif().get(0x0112, 1) == 1  # no orientation left to apply twice


def test_malformed_exif_does_not_stop_the_rotation():
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Camera"
    data = bytearray(encode(quadrants(80, 40).transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif))
    data[data.index(b"Exif\x00\x00") + 6 + 11] = 0  # the Make tag's type becomes 0: PIL cannot write it back
    out, info = check_image(bytes(data))
    assert info == ImageInfo("JPEG", 80, 40, "RGB", True)
    assert np.abs(_pixels(out, info)[10, 20] - RED).max() <= 10


def test_exif_orientation_1_is_not_reencoded():
    exif = Image.Exif()
    exif[0x0112] = 1
    data = encode(quadrants(), "JPEG", exif=exif)
    out, info = check_image(data)
    assert out is data and not info.normalized


def test_webp_with_alpha_is_reencoded_because_tf_refuses_three_channels():
    pixels = np.zeros((40, 40, 4), np.uint8)
    pixels[..., :3] = (10, 200, 30)
    pixels[..., 3] = 128
    data = encode(Image.fromarray(pixels), "WEBP", lossless=True)
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_image(data, channels=3, expand_animations=False)
    out, info = check_image(data)
    assert out.startswith(PNG_SIGNATURE) and info == ImageInfo("WEBP", 40, 40, "RGBA", True)
    assert (_pixels(out, info) == (10, 200, 30)).all()


def test_animated_webp_is_reencoded_as_its_first_frame():
    first, second = Image.new("RGB", (40, 40), RED), Image.new("RGB", (40, 40), BLUE)
    data = encode(first, "WEBP", save_all=True, append_images=[second], lossless=True, duration=100)
    out, info = check_image(data)
    assert out.startswith(PNG_SIGNATURE) and info.normalized
    assert (_pixels(out, info) == RED).all()


def test_palette_bmp_is_reencoded_because_tf_shows_indices_as_grey():
    image = quadrants().convert("P")
    data = encode(image, "BMP")
    native = tf.io.decode_image(data, channels=3).numpy()
    assert not np.array_equal(native, np.asarray(quadrants()))  # what TF alone would train on
    out, info = check_image(data)
    assert out.startswith(PNG_SIGNATURE) and info == ImageInfo("BMP", 80, 40, "P", True)
    assert np.array_equal(_pixels(out, info), np.asarray(quadrants()))


@pytest.mark.parametrize(
    "image, tail",
    [(quadrants().convert("1", dither=Image.Dither.NONE), b""), (quadrants(), b"xx")],
    ids=["1-bit", "bytes-after-rows"],  # TF: "channels ... must be 1, 3 or 4" / "Input size should match"
)
def test_bmp_variants_tf_rejects_are_reencoded(image, tail):
    data = encode(image, "BMP") + tail
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_image(data, channels=3, expand_animations=False)
    out, info = check_image(data)
    assert out.startswith(PNG_SIGNATURE) and info.normalized
    assert np.array_equal(_pixels(out, info), np.asarray(image.convert("RGB")))


def test_gif_whose_first_frame_does_not_cover_the_screen_is_reencoded():
    image = Image.new("P", (100, 80), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    gif = bytearray(encode(image, "GIF"))
    descriptor = gif.index(b",", 13)
    gif[6:10] = struct.pack("<HH", 200, 160)  # logical screen
    gif[descriptor + 1 : descriptor + 5] = struct.pack("<HH", 50, 40)  # frame offset
    out, info = check_image(bytes(gif))
    assert info == ImageInfo("GIF", 200, 160, "P", True)  # TF alone would give a 100x80 crop
    assert (_pixels(out, info)[40:120, 50:150] == RED).all()


# --- size limits


def test_short_side_below_the_minimum_is_too_small():
    data = encode(Image.fromarray(_noise(40, 20)), "PNG")
    rejected = _rejected(data, min_side=32)
    assert rejected.reason == TOO_SMALL and "40x20" in rejected.message and "32" in rejected.message
    assert check_image(data, min_side=20)[1].height == 20


def test_decompression_bomb_is_rejected_from_the_header():
    data = png_header_only(100_000, 100_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning from PIL either
        rejected = _rejected(data)
    assert rejected.reason == DECOMPRESSION_BOMB
    assert "100000x100000 pixels (10000000000), above the maximum 50000000" in rejected.message


def test_our_max_pixels_applies_not_pils_limit():
    between_pils_warning_and_error = png_header_only(10_000, 10_000)  # 100M pixels
    assert _rejected(between_pils_warning_and_error).reason == DECOMPRESSION_BOMB
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, info = check_image(between_pils_warning_and_error, max_pixels=200_000_000)
    assert out is between_pils_warning_and_error and (info.width, info.height) == (10_000, 10_000)
    small = encode(Image.fromarray(_noise(100, 100)), "PNG")
    assert "100x100 pixels (10000), above the maximum 5000" in _rejected(small, max_pixels=5000).message


def _patch_jpeg_size(data: bytes) -> bytes:
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + struct.pack(">HH", 60_000, 60_000) + data[sof + 9 :]


def _patch_at(offset: int, fmt: str):
    return lambda data: data[:offset] + struct.pack(fmt, 60_000, 60_000) + data[offset + struct.calcsize(fmt) :]


@pytest.mark.parametrize(
    "fmt, options, patch",
    [
        ("JPEG", {}, _patch_jpeg_size),
        ("GIF", {}, _patch_at(6, "<HH")),  # logical screen
        ("BMP", {}, _patch_at(18, "<ii")),
        # VP8X canvas width-1 and height-1, 24 bits each (the Exif makes PIL write the extended VP8X header).
        ("WEBP", {"lossless": True, "exif": Image.Exif()}, lambda d: d[:24] + bytes.fromhex("5fea00" * 2) + d[30:]),
    ],
    ids=["jpeg-sof", "gif-screen", "bmp", "webp-vp8x"],
)
def test_bomb_headers_of_every_format_are_rejected(fmt, options, patch):
    data = patch(encode(Image.new("RGB", (40, 40), RED), fmt, **options))
    rejected = _rejected(data)
    assert rejected.reason == DECOMPRESSION_BOMB and "60000x60000" in rejected.message


# --- decode errors


def test_corrupt_header_is_a_decode_error():
    bad_colour_type = png_header_only(40, 40, color_type=9)
    rejected = _rejected(bad_colour_type)
    assert rejected.reason == DECODE_ERROR and "PNG" in rejected.message


def _tf_message(data: bytes) -> str:
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        tf.io.decode_image(data, channels=3, expand_animations=False)
    return caught.value.message


def test_classify_decode_error_on_real_tf_messages():
    bmp = encode(Image.fromarray(_noise()), "BMP")
    gif = encode(Image.fromarray(_noise()), "GIF")
    jpeg = encode(Image.fromarray(_noise()), "JPEG")
    assert classify_decode_error(_tf_message(bmp[:-100])) == TRUNCATED_IMAGE  # "... differ by -100"
    assert classify_decode_error(_tf_message(_cut(gif, 0.2))) == TRUNCATED_IMAGE  # giflib read failure
    assert classify_decode_error(_tf_message(bmp + b"xx")) == DECODE_ERROR  # "... differ by 2"
    assert classify_decode_error(_tf_message(jpeg[:600] + bytes(len(jpeg) - 600))) == DECODE_ERROR
    assert classify_decode_error(_tf_message(b"not an image")) == DECODE_ERROR
    assert classify_decode_error("Premature end of JPEG data. Stopped at line 62/150") == TRUNCATED_IMAGE
    assert classify_decode_error("") == DECODE_ERROR
