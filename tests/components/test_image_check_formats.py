"""components/image_check.py on images it accepts: the original bytes back for what TF decodes right (with the pixels
TF gives checked), and a lossless PNG for what TF would read wrongly or not at all (EXIF rotation, WEBP alpha and
animation, palette and odd BMPs, GIFs whose first frame does not cover the screen). What it rejects:
test_image_check_rejects.py."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from components.image_check import ImageInfo, check_image
from tests.components.image_pixels import _noise, _pixels
from tests.image_factory import BLUE, GREEN, PNG_SIGNATURE, RED, WHITE, encode, quadrants

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
