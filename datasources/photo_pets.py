"""The "photo" image style of the embedded data set: pets at the size and file size of real Oxford-IIIT Pet photos.

Real photos are about 500×375 JPEGs of 20–100 KB, and decoding them is what a data stage spends its time on, so
benchmarks want images that cost as much to decode. The pet is the small style's drawing (`paint_pet`: the same
species and breed cues, so a model learns the same way at 64 px), rendered on a canvas at half the photo's
resolution and upscaled; the full-resolution layers that make JPEG sizes realistic are added afterwards: fur
strands, textured background clutter (multi-octave value noise, shelves and furniture-like boxes), lighting
falloff and sensor noise.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from datasources.synthetic_pets import BreedLook, backdrop, paint_pet
from schemas import Breed

# Width:height of the canvas, landscape first: real pet photos are mostly 4:3 and 3:2, some portrait or square.
ASPECTS = ((4, 3), (4, 3), (4, 3), (3, 2), (3, 2), (3, 4), (2, 3), (1, 1), (5, 4))
LONG_SIDE = (300, 500)  # inclusive, pixels
RENDER_SCALE = 0.5  # the drawing is rendered at this fraction of the photo's size, then upscaled
QUALITY = (75, 96)  # JPEG quality range, 75..95, as cameras and web photos
TARGET_KB = (22, 48, 95)  # file sizes aimed at: lognormal around the middle value, clipped to the outer two
FULL_PIXELS = 500 * 375  # the typical photo, whose detail the texture amplitudes are set for


def photo_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height): long side the maximum of LONG_SIDE or uniform within it, aspect one of ASPECTS."""
    # Like the real set, most photos are at the largest size; the rest spread evenly below it.
    long_side = LONG_SIDE[1] if rng.uniform() < 0.5 else int(rng.integers(LONG_SIDE[0], LONG_SIDE[1]))
    aw, ah = ASPECTS[int(rng.integers(len(ASPECTS)))]
    short_side = round(long_side * min(aw, ah) / max(aw, ah))
    return (long_side, short_side) if aw >= ah else (short_side, long_side)


def _upscale(channels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of a float (h, w) or (h, w, c) array to (height, width[, c]), as float32."""
    planes = channels[..., None] if channels.ndim == 2 else channels
    out = [
        np.asarray(Image.fromarray(np.ascontiguousarray(planes[..., i], np.float32)).resize((width, height), 2))
        for i in range(planes.shape[-1])
    ]
    stacked = np.stack(out, axis=-1)
    return stacked[..., 0] if channels.ndim == 2 else stacked


def value_noise(rng: np.random.Generator, width: int, height: int, cells: tuple[int, ...]) -> np.ndarray:
    """Multi-octave value noise in about [-1, 1]: one random grid per octave (`cells` across the long side),
    upscaled bilinearly; finer octaves weigh less, as in natural textures."""
    total = np.zeros((height, width), np.float32)
    for octave, n in enumerate(cells):
        gw, gh = max(2, round(n * width / max(width, height))), max(2, round(n * height / max(width, height)))
        total += _upscale(rng.standard_normal((gh, gw), np.float32), width, height) * 0.6**octave
    return total / 1.6


def _room(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A room behind the pet, at render resolution: the small style's backdrop plus a few flat boxes (furniture,
    shelves, doors); with the pixel coordinate grids x, y."""
    image, x, y = backdrop(rng, width, height)
    for _ in range(int(rng.integers(1, 5))):
        x0, x1 = np.sort(rng.uniform(-0.2, 1.2, size=2)) * width
        y0, y1 = np.sort(rng.uniform(-0.2, 1.2, size=2)) * height
        box = ((x >= x0) & (x < x1) & (y >= y0) & (y < y1))[..., None]
        image = np.where(box, image * 0.3 + rng.uniform(20, 235, size=3) * 0.7, image)
    return image, x, y


def render_photo_pet(breed: Breed, look: BreedLook, rng: np.random.Generator) -> np.ndarray:
    """One RGB uint8 photo-sized image of `breed`: the small style's cues, photo size, texture and noise."""
    width, height = photo_size(rng)
    lw, lh = round(width * RENDER_SCALE), round(height * RENDER_SCALE)
    side = min(lw, lh)
    radius = rng.uniform(0.24, 0.34) * side
    margin = 1.25 * radius
    cx = rng.uniform(margin, max(margin, lw - margin))
    cy = rng.uniform(margin * 1.2, max(margin * 1.2, lh - margin))
    angle = rng.uniform(-0.45, 0.45)

    image, x, y = _room(rng, lw, lh)
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    dx, dy = (x - cx) / radius, (y - cy) / radius
    fur = paint_pet(image, cos_a * dx + sin_a * dy, -sin_a * dx + cos_a * dy, breed, look, rng)

    # Full resolution: upscale the drawing, then add what a camera sees at that scale.
    drawing = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
    fur_weight = _upscale(fur.astype(np.float32), width, height)
    # Fur strands: fine noise smeared along the strand direction (a running mean over a few rows).
    strands = np.cumsum(rng.standard_normal((height + 6, width), np.float32), axis=0)
    strands = (strands[6:] - strands[:-6]) * np.float32(1 / math.sqrt(6))
    clutter = value_noise(rng, width, height, (6, 24, 96, 240))
    # Smaller photos are downscaled ones, denser in detail per pixel.
    detail = math.sqrt(FULL_PIXELS / (width * height))
    grain = np.float32(rng.uniform(10, 16) * detail)  # background texture: carpets, blankets, upholstery
    fur_grain = np.float32(rng.uniform(7, 12) * detail)
    texture = clutter * grain + fur_weight * (fur_grain * strands - grain * clutter)

    # Camera: lighting falloff (vignette), exposure, colour cast and sensor noise.
    yy, xx = np.ogrid[0:height, 0:width]
    r2 = (((xx - width / 2) / width) ** 2 + ((yy - height / 2) / height) ** 2).astype(np.float32)
    light = 1 - np.float32(rng.uniform(0.1, 0.5)) * r2
    cast = (rng.uniform(0.8, 1.15) * rng.uniform(0.93, 1.07, size=3)).astype(np.float32)
    sigma = np.float32(rng.uniform(4, 8) * detail)
    out = np.asarray(drawing, np.float32) + texture[..., None]
    out *= light[..., None] * cast
    out += rng.standard_normal(out.shape, np.float32) * sigma
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def encode_to_size(pixels: np.ndarray, target_bytes: float) -> bytes:
    """The JPEG of `pixels` at the quality in QUALITY whose size is nearest `target_bytes`, as a photo site's
    encoder aims at a file size: a binary search over quality (sizes grow with it)."""
    from datasources.synthetic_pets import encode_jpeg

    lo, hi = QUALITY[0], QUALITY[1] - 1
    encoded = {q: encode_jpeg(pixels, q) for q in (lo, hi)}
    if len(encoded[lo]) >= target_bytes:
        return encoded[lo]
    if len(encoded[hi]) <= target_bytes:
        return encoded[hi]
    while hi - lo > 1:  # invariant: size(lo) < target < size(hi)
        mid = (lo + hi) // 2
        encoded[mid] = encode_jpeg(pixels, mid)
        lo, hi = (mid, hi) if len(encoded[mid]) < target_bytes else (lo, mid)
    return min(encoded[lo], encoded[hi], key=lambda jpeg: abs(len(jpeg) - target_bytes))


def photo_jpeg(breed: Breed, look: BreedLook, rng: np.random.Generator) -> bytes:
    """The JPEG file of one photo-style image: render, then encode near a file size drawn like real photos'."""
    pixels = render_photo_pet(breed, look, rng)
    target_kb = np.clip(rng.lognormal(math.log(TARGET_KB[1]), 0.35), TARGET_KB[0], TARGET_KB[2])
    return encode_to_size(pixels, target_kb * 1024)
