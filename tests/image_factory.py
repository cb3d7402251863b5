"""Images made on the fly for tests: encodings, recognisable pictures, and crafted headers."""

import io
import struct
import zlib

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def jpeg_bytes(seed: int, size: int = 48) -> bytes:
    """A small noisy RGB JPEG; different seeds give different pictures."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "JPEG")


def quadrants(width: int = 80, height: int = 40) -> Image.Image:
    """Red top-left, green top-right, blue bottom-left, white bottom-right: any rotation or flip shows."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[: height // 2, : width // 2] = RED
    pixels[: height // 2, width // 2 :] = GREEN
    pixels[height // 2 :, : width // 2] = BLUE
    pixels[height // 2 :, width // 2 :] = WHITE
    return Image.fromarray(pixels)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int, color_type: int = 2) -> bytes:
    """A PNG whose IHDR declares width x height, with one tiny IDAT: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


# Intact start and end markers (so the in-graph envelope check passes it) around bytes the decoder refuses: one
# such image fails its request in the decoder, as it would on TF Serving.
DAMAGED_JPEG = b"\xff\xd8\xff" + b"x" * 100 + b"\xff\xd9"
