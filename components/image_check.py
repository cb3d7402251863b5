"""Image check: are these bytes a picture that `tf.io.decode_image(channels=3)` reads right way up, and how big is it?

A pure core (bytes in, bytes and facts out, `Rejected` on failure) run before `decode_and_resize`. It decides by
content, never by file name, and reads only the header in the common case: an ordinary JPEG/PNG/GIF/BMP/WebP that
TensorFlow decodes correctly is passed through as the very same bytes object, so training sees exactly what the
serving graph sees for the same upload. Pixels are decoded here only when something is off:

- a missing end marker (JPEG EOI, GIF trailer): a full PIL decode tells truncation from harmless trailing bytes
  (a PNG without IEND is truncated outright: TF refuses it even when every row is there);
- TensorFlow would read the picture wrongly or not at all: an EXIF orientation other than 1 (TF ignores EXIF),
  WebP with alpha or animation (TF refuses 3 channels for those), a GIF whose first frame does not cover the
  screen (TF crops to the frame), a BMP that is compressed, palette-based, not 8/24/32-bit, has an OS/2 header or
  trailing bytes (TF reads palette indices as grey and demands an exact file size). These are re-encoded
  losslessly as PNG, upright and without metadata, and `ImageInfo.normalized` is True.

TF 2.21 handles natively (measured): greyscale, CMYK and 16-bit PNG/JPEG, RGBA/LA PNG (alpha dropped), palette PNG
with tRNS, GIF (first frame; transparent pixels black), progressive JPEG, RGB WebP. It rejects truncated JPEG/PNG
itself, but with a message that does not say "truncated" ("jpeg::Uncompress failed. Invalid JPEG data or crop
window."), hence the cheap end-marker checks here.

Not thread-safe against a caller setting PIL's global `ImageFile.LOAD_TRUNCATED_IMAGES = True`: the slow-path
truncation check relies on it being False (PIL's default).
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass

from PIL import BmpImagePlugin, GifImagePlugin, Image, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from components.records import (
    DECODE_ERROR,
    DECOMPRESSION_BOMB,
    EMPTY_FILE,
    NOT_AN_IMAGE,
    TOO_SMALL,
    TRUNCATED_IMAGE,
    Rejected,
)

JPEG, PNG, GIF, BMP, WEBP = "JPEG", "PNG", "GIF", "BMP", "WEBP"

# The plugin classes themselves rather than Image.open: Image.open applies PIL's global MAX_IMAGE_PIXELS (warning
# above ~89M pixels, error above ~179M) instead of our max_pixels, and it swallows the header error that tells a
# truncated header from a corrupt one. Constructing the plugin parses the header only, like Image.open.
_OPENERS = {
    JPEG: JpegImagePlugin.JpegImageFile,
    PNG: PngImagePlugin.PngImageFile,
    GIF: GifImagePlugin.GifImageFile,
    BMP: BmpImagePlugin.BmpImageFile,
    WEBP: WebPImagePlugin.WebPImageFile,
}

# The leading bytes TF's decode_image dispatches on (BMP's "BM" and WebP's "WEBP" at offset 8 are checked in _sniff).
_SIGNATURES = {JPEG: b"\xff\xd8\xff", PNG: b"\x89PNG\r\n\x1a\n", GIF: b"GIF8", BMP: b"BM", WEBP: b"RIFF"}
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_BMP_INFO_HEADER_SIZES = (12, 16, 40, 52, 56, 64, 108, 124)  # BITMAPCOREHEADER .. BITMAPV5HEADER
_PNG_MODES = ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA")  # modes PIL writes to PNG and TF reads back
_ORIENTATION = 0x0112
_TRANSPOSE = {  # EXIF orientation -> the transposition that makes the stored picture upright
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_KEYS = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")  # where PIL looks for an orientation

# Other signatures, only to make a NOT_AN_IMAGE message say what the content is.
_OTHER_SIGNATURES = (
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x1f\x8b", "gzip"),
    (b"PK\x03\x04", "ZIP"),
)

# TF error texts that mean "the data ends early"; JPEG/PNG/WebP failures do not say, so they stay DECODE_ERROR.
_TF_TRUNCATION = re.compile(
    r"premature end|truncated|incomplete bmp content|differ by -\d|eof detected before image complete"
    r"|failed to read from given file|not enough data",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ImageInfo:
    """What check_image found out about an image."""

    format: str  # content-sniffed format: "JPEG", "PNG", "GIF", "BMP", "WEBP"
    width: int  # as displayed, i.e. after EXIF orientation
    height: int
    mode: str  # PIL mode of the source, e.g. "RGB", "L", "RGBA", "CMYK", "I;16", "P"
    normalized: bool  # True when the returned bytes are a re-encoding, not the original


def check_image(data: bytes, min_side: int = 32, max_pixels: int = 50_000_000) -> tuple[bytes, ImageInfo]:
    """Bytes that tf.io.decode_image(channels=3) reads as the intended upright RGB picture, and facts about it.

    Raises components.records.Rejected(reason, message) with a reason category from components/records.py.
    """
    if not data:
        raise Rejected(EMPTY_FILE, "the file is empty (0 bytes)")
    fmt = _sniff(data)
    if fmt is None:
        if any(signature.startswith(data) for signature in _SIGNATURES.values()):
            raise Rejected(TRUNCATED_IMAGE, f"data ends within the image signature: {data!r} ({len(data)} bytes)")
        raise Rejected(NOT_AN_IMAGE, _describe_unknown(data))
    if fmt == WEBP:
        _check_webp_container(data, max_pixels)

    image = _open_header(fmt, data)
    width, height = image.size
    _check_pixels(fmt, width, height, max_pixels)
    if min(width, height) < min_side:
        raise Rejected(
            TOO_SMALL,
            f"{fmt} is {width}x{height} pixels; its shorter side {min(width, height)} is below the minimum {min_side}",
        )
    _check_complete(fmt, data, image)

    orientation = _orientation(image)
    why = _tf_misreads(fmt, data, image)
    if orientation == 1 and why is None:
        return data, ImageInfo(fmt, width, height, image.mode, normalized=False)
    png, width, height = _reencode_upright(fmt, image, orientation)
    return png, ImageInfo(fmt, width, height, image.mode, normalized=True)


def classify_decode_error(tf_message: str) -> str:
    """Reason category (TRUNCATED_IMAGE or DECODE_ERROR) for a TensorFlow decode error message."""
    return TRUNCATED_IMAGE if _TF_TRUNCATION.search(tf_message or "") else DECODE_ERROR


def _sniff(data: bytes) -> str | None:
    """The format TF's decode_image would dispatch on, or None."""
    for fmt in (JPEG, PNG, GIF):
        if data.startswith(_SIGNATURES[fmt]):
            return fmt
    # "BM" alone is too weak (any text starting with "BMW..."): also require a known info-header size.
    if data.startswith(b"BM") and (len(data) < 18 or _u32(data, 14) in _BMP_INFO_HEADER_SIZES):
        return BMP
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return WEBP
    return None


def _describe_unknown(data: bytes) -> str:
    head = data[:16]
    for signature, name in _OTHER_SIGNATURES:
        if data.startswith(signature):
            return f"{name} content (starts with {head!r}); only JPEG, PNG, GIF, BMP and WebP are supported"
    if data[4:8] == b"ftyp":
        return f"ISO media content such as HEIC/AVIF/MP4 (starts with {head!r}); only JPEG, PNG, GIF, BMP and WebP"
    sample = data[:512]
    looks_like_text = all(32 <= b < 127 or b in b"\t\r\n" for b in sample.lstrip(b"\xef\xbb\xbf"))
    kind = "text" if looks_like_text else "content"
    return f"{kind} starting with {head!r} has no JPEG, PNG, GIF, BMP or WebP signature ({len(data)} bytes)"


def _u32(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 4], "little")


def _check_webp_container(data: bytes, max_pixels: int) -> None:
    """RIFF length and canvas size from the WebP header, before PIL (whose WebP reader allocates the canvas)."""
    declared = _u32(data, 4) + 8
    if len(data) < declared:
        raise Rejected(TRUNCATED_IMAGE, f"WEBP data ends early: RIFF header declares {declared} bytes, got {len(data)}")
    chunk = data[12:16]
    size = None
    if chunk == b"VP8X" and len(data) >= 30:
        size = 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    elif chunk == b"VP8L" and len(data) >= 25:
        bits = _u32(data, 21)
        size = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    elif chunk == b"VP8 " and len(data) >= 30:
        size = int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    if size is not None:
        _check_pixels(WEBP, *size, max_pixels)


def _check_pixels(fmt: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise Rejected(
            DECOMPRESSION_BOMB,
            f"{fmt} declares {width}x{height} pixels ({width * height}), above the maximum {max_pixels}",
        )


def _open_header(fmt: str, data: bytes) -> Image.Image:
    stream = io.BytesIO(data)
    try:
        return _OPENERS[fmt](stream)
    except Image.DecompressionBombError as exc:  # GIF frames larger than the screen still hit PIL's own limit
        raise Rejected(DECOMPRESSION_BOMB, f"{fmt}: {exc}") from None
    except Exception as exc:  # PIL signals a bad header with many exception types
        # The header parser stopped at the end of the data: it ran out rather than met something invalid. (PIL's
        # WebP reader always reads everything, but the RIFF length was checked before.)
        ran_out = fmt != WEBP and stream.tell() >= len(data)
        raise _decode_failure(fmt, "header", exc, ran_out) from None


def _decode_failure(fmt: str, part: str, exc: BaseException, ran_out: bool = False) -> Rejected:
    """TRUNCATED_IMAGE when PIL ran out of data, DECODE_ERROR otherwise."""
    text = str(exc) or type(exc).__name__
    if ran_out or isinstance(exc.__cause__ or exc, EOFError) or "truncated" in text.lower():
        return Rejected(TRUNCATED_IMAGE, f"{fmt} data ends early ({part}): {text}")
    return Rejected(DECODE_ERROR, f"{fmt} {part} cannot be decoded: {text}")


def _check_complete(fmt: str, data: bytes, image: Image.Image) -> None:
    """Reject data that ends early; cheap end-marker test first, a full decode only when the marker is missing."""
    if fmt == JPEG and not data.endswith(b"\xff\xd9"):
        # No EOI at the very end: truncated, or bytes appended after EOI (harmless to TF); only decoding tells.
        _load(fmt, image)
    elif fmt == PNG and not data.endswith(_PNG_IEND) and _PNG_IEND not in data:
        # TF (libpng) fails without IEND even when all rows are present, PIL does not: decide here.
        raise Rejected(TRUNCATED_IMAGE, f"PNG data ends early: no IEND chunk in {len(data)} bytes")
    elif fmt == GIF and not data.endswith(b"\x00;"):
        # TF returns the first frame as long as that one is complete (giflib errors in later frames are only
        # logged), so decoding the first frame decides.
        _load(fmt, image)


def _load(fmt: str, image: Image.Image) -> None:
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise Rejected(DECOMPRESSION_BOMB, f"{fmt}: {exc}") from None
    except Exception as exc:  # decoders raise OSError, ValueError, SyntaxError, ...
        raise _decode_failure(fmt, "pixel data", exc) from None


def _orientation(image: Image.Image) -> int:
    """EXIF (or XMP) orientation as PIL.ImageOps.exif_transpose reads it; 1 when absent, invalid or unreadable."""
    if not any(key in image.info for key in _EXIF_KEYS):
        return 1  # the common case: no metadata to parse
    try:
        # The base-class getexif: PngImageFile.getexif would decode all pixels to look for an eXIf after IDAT.
        orientation = Image.Image.getexif(image).get(_ORIENTATION, 1)
    except Exception:  # malformed EXIF: TF ignores EXIF anyway, so show the stored picture
        return 1
    return orientation if isinstance(orientation, int) and orientation in _TRANSPOSE else 1


def _tf_misreads(fmt: str, data: bytes, image: Image.Image) -> str | None:
    """Why TF's decode_image(channels=3) would fail or give other pixels than PIL, or None if it reads it right."""
    if fmt == WEBP:
        if getattr(image, "is_animated", False):
            return "animated WebP"  # TF: "WebP Animation must be 4 channel RGBA"
        if image.mode != "RGB":
            return "WebP with alpha"  # TF: "Number of channels requested does not match input"
    if fmt == GIF and image.tile and image.tile[0][1] != (0, 0, *image.size):
        # TF's canvas is the largest frame, not the logical screen: it would crop to the first frame.
        return "GIF whose first frame does not cover the screen"
    if fmt == BMP:
        return _bmp_misread(data, image)
    return None


def _bmp_misread(data: bytes, image: Image.Image) -> str | None:
    # TF's BMP reader takes width/height/bpp at fixed offsets, ignores compression and palette, and requires the
    # file size to be exactly offset + rows.
    offset, header_size = _u32(data, 10), _u32(data, 14)
    if header_size < 40:
        return "OS/2 BMP header"
    width, height, _planes, bpp, compression = struct.unpack_from("<iiHHI", data, 18)
    if compression != 0:
        return f"compressed BMP (compression {compression})"
    if bpp not in (8, 24, 32):
        return f"{bpp}-bit BMP"
    if bpp == 8 and image.mode != "L":
        return "palette BMP"  # TF would show the palette indices as grey levels
    expected = offset + (bpp // 8 * width + 3) // 4 * 4 * abs(height)
    if len(data) < expected:
        raise Rejected(TRUNCATED_IMAGE, f"BMP data ends early: pixel rows need {expected} bytes, got {len(data)}")
    if len(data) > expected:
        return f"BMP with {len(data) - expected} bytes after the pixel rows"
    return None


def _reencode_upright(fmt: str, image: Image.Image, orientation: int) -> tuple[bytes, int, int]:
    """Lossless PNG of the upright first frame, without metadata; TF reads PNG of every mode kept here."""
    _load(fmt, image)
    # ImageOps.exif_transpose's table, without its EXIF rewrite: that fails on malformed EXIF, and the PNG keeps no
    # EXIF (an orientation left in it would turn the picture again for a reader that honours it).
    upright = image.transpose(_TRANSPOSE[orientation]) if orientation != 1 else image.copy()
    upright.info = {key: image.info[key] for key in ("transparency",) if key in image.info}
    if upright.mode not in _PNG_MODES:  # CMYK, YCbCr, PA, ...
        has_alpha = "A" in upright.getbands() or "transparency" in upright.info
        upright = upright.convert("RGBA" if has_alpha else "RGB")
    buffer = io.BytesIO()
    # Fastest zlib level: the bytes are decoded once by preprocess, size hardly matters.
    upright.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue(), upright.width, upright.height
