"""components/image_check.py judging data by content, never by name, and rejecting it with a reason and one
concrete line: empty files, non-images, truncated images (bytes after the end marker are harmless), images too small
or too large (from the header alone), and decode errors. What it accepts: test_image_check_formats.py."""

from __future__ import annotations

import struct
import warnings

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components import records
from components.image_check import check_image, classify_decode_error
from tests.components.image_pixels import _noise, _pixels
from tests.image_factory import RED, encode, png_header_only


def _rejected(data: bytes, **kwargs) -> records.Rejected:
    with pytest.raises(records.Rejected) as caught:
        check_image(data, **kwargs)
    assert "\n" not in caught.value.message and caught.value.message  # one concrete line
    return caught.value


# --- content, not name


def test_empty_data_is_an_empty_file():
    assert _rejected(b"").reason == records.EMPTY_FILE


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
    assert rejected.reason == records.NOT_AN_IMAGE and says in rejected.message


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
    assert rejected.reason == records.TRUNCATED_IMAGE and fmt in rejected.message


def test_tf_fails_on_a_truncated_jpeg_without_saying_it_is_truncated():
    # Why check_image checks the end marker: TF 2.21 does refuse the data, but its message is the generic one.
    data = encode(Image.fromarray(_noise()), "JPEG")
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        tf.io.decode_image(_cut(data, 0.5), channels=3, expand_animations=False)
    assert classify_decode_error(caught.value.message) == records.DECODE_ERROR


@pytest.mark.parametrize("fmt, tail", [("JPEG", b"\x00" * 100), ("JPEG", b"trailer"), ("PNG", b"junk"), ("GIF", b"x")])
def test_bytes_after_the_end_marker_are_harmless(fmt, tail):
    data = encode(Image.fromarray(_noise(64, 48)), fmt) + tail
    out, info = check_image(data)
    assert out is data and not info.normalized
    _pixels(out, info)  # TF reads it


# --- size limits


def test_short_side_below_the_minimum_is_too_small():
    data = encode(Image.fromarray(_noise(40, 20)), "PNG")
    rejected = _rejected(data, min_side=32)
    assert rejected.reason == records.TOO_SMALL and "40x20" in rejected.message and "32" in rejected.message
    assert check_image(data, min_side=20)[1].height == 20


def test_decompression_bomb_is_rejected_from_the_header():
    data = png_header_only(100_000, 100_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning from PIL either
        rejected = _rejected(data)
    assert rejected.reason == records.DECOMPRESSION_BOMB
    assert "100000x100000 pixels (10000000000), above the maximum 50000000" in rejected.message


def test_our_max_pixels_applies_not_pils_limit():
    between_pils_warning_and_error = png_header_only(10_000, 10_000)  # 100M pixels
    assert _rejected(between_pils_warning_and_error).reason == records.DECOMPRESSION_BOMB
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
    assert rejected.reason == records.DECOMPRESSION_BOMB and "60000x60000" in rejected.message


# --- decode errors


def test_corrupt_header_is_a_decode_error():
    bad_colour_type = png_header_only(40, 40, color_type=9)
    rejected = _rejected(bad_colour_type)
    assert rejected.reason == records.DECODE_ERROR and "PNG" in rejected.message


def _tf_message(data: bytes) -> str:
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        tf.io.decode_image(data, channels=3, expand_animations=False)
    return caught.value.message


def test_classify_decode_error_on_real_tf_messages():
    bmp = encode(Image.fromarray(_noise()), "BMP")
    gif = encode(Image.fromarray(_noise()), "GIF")
    jpeg = encode(Image.fromarray(_noise()), "JPEG")
    assert classify_decode_error(_tf_message(bmp[:-100])) == records.TRUNCATED_IMAGE  # "... differ by -100"
    assert classify_decode_error(_tf_message(_cut(gif, 0.2))) == records.TRUNCATED_IMAGE  # giflib read failure
    assert classify_decode_error(_tf_message(bmp + b"xx")) == records.DECODE_ERROR  # "... differ by 2"
    assert classify_decode_error(_tf_message(jpeg[:600] + bytes(len(jpeg) - 600))) == records.DECODE_ERROR
    assert classify_decode_error(_tf_message(b"not an image")) == records.DECODE_ERROR
    assert classify_decode_error("Premature end of JPEG data. Stopped at line 62/150") == records.TRUNCATED_IMAGE
    assert classify_decode_error("") == records.DECODE_ERROR
