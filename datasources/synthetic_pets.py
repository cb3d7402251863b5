"""A generated stand-in for the Oxford-IIIT Pet data set, written in the real download's exact raw layout.

The point is a data set that a small CNN can learn on two CPU cores in minutes, yet not trivially:

* species shows only in shape: cats have pointed ears and a small nose, dogs floppy side ears and a muzzle
  (a third species group of a custom hierarchy gets small round ears);
* breed shows in finer cues: coat colour × coat pattern (solid, stripes, spots, bicolour, dark points) and
  head proportions; some cat and dog breeds share a coat colour *and* pattern, so species must come from shape;
* nuisance variation everywhere: canvas size and aspect, position, scale, rotation, background, lighting,
  colour cast, sensor noise and JPEG quality.

Every image is drawn from its own random stream seeded by (seed, CLASS-ID, image number), so a data set is
identical for a seed whatever the order or the number of worker processes.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas import Breed, Hierarchy, load_hierarchy

# The real list.txt starts with these six lines, typo included ("1-25:Cat 1:12:Dog").
LIST_HEADER = (
    "#Image CLASS-ID SPECIES BREED ID\n"
    "#ID: 1:37 Class ids\n"
    "#SPECIES: 1:Cat 2:Dog\n"
    "#BREED ID: 1-25:Cat 1:12:Dog\n"
    "#All images with 1st letter as captial are cat images\n"
    "#images with small first letter are dog images\n"
)

COATS: dict[str, tuple[int, int, int]] = {
    "black": (40, 38, 42),
    "white": (236, 233, 224),
    "ginger": (214, 118, 40),
    "chocolate": (104, 60, 30),
    "grey": (132, 134, 142),
    "cream": (226, 198, 140),
    "golden": (196, 156, 48),
    "blue": (86, 108, 152),
}
PATTERNS = ("solid", "stripes", "spots", "bicolour", "points")
HEAD_ASPECTS = (0.88, 1.0, 1.14)  # width / height of the head ellipse


@dataclass(frozen=True)
class BreedLook:
    """How one breed is drawn."""

    coat: str
    pattern: str
    head_aspect: float


def breed_looks(hierarchy: Hierarchy) -> dict[str, BreedLook]:
    """Deterministic coat × pattern × proportions per breed, unique within each species.

    Species i takes its coats from the palette starting at offset i, so neighbouring species share coats.
    """
    coat_names = list(COATS)
    looks = {}
    for species_index, species in enumerate(hierarchy.species):
        breeds = hierarchy.breeds_of[species]
        n_patterns = min(len(PATTERNS), math.ceil(math.sqrt(len(breeds))))
        if math.ceil(len(breeds) / n_patterns) > len(coat_names):
            raise ValueError(f"species {species!r} has more breeds than the generator has looks for")
        for breed in breeds:
            coat = coat_names[(species_index + breed.index_in_species // n_patterns) % len(coat_names)]
            pattern = PATTERNS[breed.index_in_species % n_patterns]
            aspect = HEAD_ASPECTS[(breed.index_in_species // 2) % len(HEAD_ASPECTS)]
            looks[breed.name] = BreedLook(coat, pattern, aspect)
    return looks


def _ellipse(u, v, cu, cv, au, av):
    return ((u - cu) / au) ** 2 + ((v - cv) / av) ** 2 <= 1.0


def _triangle(u, v, a, b, c):
    """Pixels inside triangle abc (any winding)."""

    def side(p, q):
        return (u - q[0]) * (p[1] - q[1]) - (p[0] - q[0]) * (v - q[1])

    d1, d2, d3 = side(a, b), side(b, c), side(c, a)
    has_neg = (d1 < 0) | (d2 < 0) | (d3 < 0)
    has_pos = (d1 > 0) | (d2 > 0) | (d3 > 0)
    return ~(has_neg & has_pos)


def paint_pet(image: np.ndarray, u: np.ndarray, v: np.ndarray, breed: Breed, look: BreedLook, rng) -> np.ndarray:
    """Paint the head of `breed` into float `image` (H, W, 3) in place; `u`, `v` are head coordinates (unit radius,
    rotated with the head, v down). Returns the fur mask (head and ears)."""
    coat = np.array(COATS[look.coat], np.float32) * rng.uniform(0.92, 1.08, size=3)
    dark = coat * 0.42
    light = np.minimum(coat * 0.35 + 170, 250)
    aspect = look.head_aspect * rng.uniform(0.95, 1.05)
    head = _ellipse(u, v, 0, 0, aspect, 0.9)

    shape = breed.species_index % 3  # the shape family: what tells species apart
    ears = np.zeros_like(head)
    if shape == 0:  # pointed, upright ears behind the head (cats)
        ear_len = rng.uniform(0.9, 1.1)
        for sgn in (-1, 1):
            ears |= _triangle(
                u,
                v,
                (sgn * 0.9 * aspect, -0.3),
                (sgn * 0.2 * aspect, -0.78),
                (sgn * 0.78 * aspect, -0.75 - 0.75 * ear_len),
            )
    elif shape == 1:  # floppy ears hanging over the sides of the head (dogs)
        for sgn in (-1, 1):
            ears |= _ellipse(u, v, sgn * 0.92 * aspect, 0.12, 0.3, 0.68 * rng.uniform(0.9, 1.1))
    else:  # small round ears on top (a third group, for hierarchies beyond cat/dog)
        for sgn in (-1, 1):
            ears |= _ellipse(u, v, sgn * 0.62 * aspect, -0.82, 0.3, 0.3)
    fur = head | ears

    pattern_mask = np.zeros_like(fur)
    if look.pattern == "stripes":
        phase = rng.uniform(0, 2 * math.pi)
        pattern_mask = np.sin(2 * math.pi * 2.4 * (u + 0.25 * v) + phase) > 0.3
    elif look.pattern == "spots":
        cell = 0.42
        gu, gv = (u + 5) / cell, (v + 5) / cell
        fu, fv = gu - np.floor(gu) - 0.5, gv - np.floor(gv) - 0.5
        pattern_mask = fu**2 + fv**2 < 0.16**2 / cell**2
    elif look.pattern == "bicolour":
        pattern_mask = v > 0.12
    elif look.pattern == "points":
        pattern_mask = ears | (u**2 / aspect**2 + v**2 > 0.62)
    accent = light if look.pattern == "bicolour" and look.coat != "white" else dark

    image[fur] = coat
    image[fur & pattern_mask] = accent
    if shape != 1:
        image[_triangle(u, v, (-0.13, 0.22), (0.13, 0.22), (0, 0.36))] = (200, 110, 120)
    else:
        muzzle = _ellipse(u, v, 0, 0.45, 0.42, 0.32)
        image[muzzle] = np.minimum(coat * 0.6 + 90, 245)
        image[_ellipse(u, v, 0, 0.3, 0.14, 0.1)] = (20, 18, 20)
    for sgn in (-1, 1):
        image[_ellipse(u, v, sgn * 0.38 * aspect, -0.15, 0.12, 0.12)] = (18, 18, 18)
        image[_ellipse(u, v, sgn * 0.38 * aspect + 0.04, -0.19, 0.035, 0.035)] = (240, 240, 240)
    return fur


def backdrop(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A background (float, H×W×3): a two-colour gradient in a random direction plus soft blobs; with the pixel
    coordinate grids x, y."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.uniform(30, 230, size=(2, 3))
    theta = rng.uniform(0, 2 * math.pi)
    t = ((x * math.cos(theta) + y * math.sin(theta)) / (width + height) + 0.5)[..., None]
    image = c0 * (1 - t) + c1 * t
    for _ in range(int(rng.integers(1, 4))):
        bx, by, br = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.1, 0.4) * min(width, height)
        blob = np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * br**2))[..., None]
        image = image * (1 - 0.5 * blob) + rng.uniform(30, 230, size=3) * 0.5 * blob
    return image, x, y


def render_pet(breed: Breed, look: BreedLook, rng: np.random.Generator) -> np.ndarray:
    """One RGB uint8 image of `breed`, with random size, pose, background, lighting and noise."""
    width, height = (int(x) for x in rng.integers(96, 208, size=2))
    side = min(width, height)
    radius = rng.uniform(0.24, 0.34) * side
    margin = 1.25 * radius
    cx = rng.uniform(margin, max(margin, width - margin)) if width > 2 * margin else width / 2
    cy = rng.uniform(margin * 1.2, max(margin * 1.2, height - margin)) if height > 2.2 * margin else height / 2
    angle = rng.uniform(-0.45, 0.45)

    image, x, y = backdrop(rng, width, height)

    # Head coordinates: unit radius, rotated with the head, v grows downwards.
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    dx, dy = (x - cx) / radius, (y - cy) / radius
    u = cos_a * dx + sin_a * dy
    v = -sin_a * dx + cos_a * dy

    paint_pet(image, u, v, breed, look, rng)

    # Camera: lighting, colour cast and sensor noise.
    image = image * rng.uniform(0.75, 1.2) * rng.uniform(0.93, 1.07, size=3)
    image = image + rng.normal(0, rng.uniform(1.5, 7), size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@dataclass(frozen=True)
class Annotation:
    image: str  # file name without .jpg, e.g. "Abyssinian_12"
    class_id: int  # 1..37
    species: int  # 1..S
    breed_id: int  # 1..n within the species

    def line(self) -> str:
        return f"{self.image} {self.class_id} {self.species} {self.breed_id}\n"


def plan(hierarchy: Hierarchy, per_breed: int, test_fraction: float) -> tuple[list[Annotation], list[Annotation]]:
    """The (trainval, test) annotations: per breed, the last `test_fraction` of its images go to test."""
    trainval, test = [], []
    n_test = max(1, round(per_breed * test_fraction))
    for breed in hierarchy.breeds:
        for number in range(1, per_breed + 1):
            annotation = Annotation(
                f"{breed.name}_{number}", breed.global_index + 1, breed.species_index + 1, breed.index_in_species + 1
            )
            (test if number > per_breed - n_test else trainval).append(annotation)
    return trainval, test


def image_rng(seed: int, annotation: Annotation) -> np.random.Generator:
    number = int(annotation.image.rsplit("_", 1)[1])
    return np.random.default_rng([seed, annotation.class_id, number])


IMAGE_STYLES = ("small", "photo")
PARALLEL_MIN_IMAGES = 300  # below this, starting worker processes costs more than it saves


def small_jpeg(breed: Breed, look: BreedLook, rng: np.random.Generator) -> bytes:
    """The JPEG file of one small-style image (about 100–200 px, JPEG quality 55–95)."""
    pixels = render_pet(breed, look, rng)
    return encode_jpeg(pixels, quality=int(rng.integers(55, 96)))


def pet_jpeg(style: str, breed: Breed, look: BreedLook, rng: np.random.Generator) -> bytes:
    if style == "photo":
        from datasources.photo_pets import photo_jpeg  # it builds on this module

        return photo_jpeg(breed, look, rng)
    return small_jpeg(breed, look, rng)


def _write_image(job: tuple) -> None:
    """Render and write one image; a job is picklable, for worker processes."""
    images_dir, style, seed, breed, look, annotation = job
    jpeg = pet_jpeg(style, breed, look, image_rng(seed, annotation))
    (images_dir / f"{annotation.image}.jpg").write_bytes(jpeg)


def default_processes(n_images: int) -> int:
    """All usable cores for a data set big enough to pay for starting the workers, else 1."""
    return len(os.sched_getaffinity(0)) if n_images >= PARALLEL_MIN_IMAGES else 1


def write_synthetic_pets(
    out_dir: str | os.PathLike,
    per_breed: int = 60,
    seed: int = 0,
    test_fraction: float = 0.3,
    hierarchy: Hierarchy | None = None,
    progress=None,
    style: str = "small",
    processes: int | None = None,
) -> dict[str, int]:
    """Write images/ and annotations/{list,trainval,test}.txt under `out_dir`; returns counts per split.

    `style` is "small" (about 150 px) or "photo" (real photo size and file size, see photo_pets.py). `processes`
    worker processes render the images (None: default_processes); the bytes are the same whatever the number.
    `progress(done, total)` is called as images are written.
    """
    if per_breed < 2:
        raise ValueError("per_breed must be at least 2 (one trainval and one test image per breed)")
    if style not in IMAGE_STYLES:
        raise ValueError(f"image style must be one of {', '.join(IMAGE_STYLES)}; got {style!r}")
    hierarchy = hierarchy or load_hierarchy()
    looks = breed_looks(hierarchy)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    trainval, test = plan(hierarchy, per_breed, test_fraction)
    everything = sorted(trainval + test, key=lambda a: (a.class_id, int(a.image.rsplit("_", 1)[1])))
    jobs = [
        (out / "images", style, seed, breed, looks[breed.name], annotation)
        for annotation in everything
        for breed in [hierarchy.breeds[annotation.class_id - 1]]
    ]
    processes = default_processes(len(jobs)) if processes is None else processes
    if processes > 1:
        # spawn, not fork: `petpipe run` may have TensorFlow's threads running in this process.
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            for done, _ in enumerate(pool.imap(_write_image, jobs, chunksize=16), 1):
                if progress:
                    progress(done, len(jobs))
    else:
        for done, job in enumerate(jobs, 1):
            _write_image(job)
            if progress:
                progress(done, len(jobs))
    (out / "annotations" / "list.txt").write_text(LIST_HEADER + "".join(a.line() for a in everything))
    (out / "annotations" / "trainval.txt").write_text("".join(a.line() for a in trainval))
    (out / "annotations" / "test.txt").write_text("".join(a.line() for a in test))
    return {"trainval": len(trainval), "test": len(test)}
