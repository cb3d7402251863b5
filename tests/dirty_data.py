"""A small Oxford-layout data set with one instance of every kind of dirt a real collection has.

`make_dirty_dataset(out)` returns what a correct ingest must make of it: which images are kept (decodable but
odd) and which annotation records are quarantined, with their reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from components import records as rec
from datasources.synthetic_pets import write_synthetic_pets
from tests.image_factory import encode, png_header_only, quadrants


@dataclass
class DirtyDataset:
    root: Path
    kept_odd: dict[str, str] = field(default_factory=dict)  # image key → what is odd about it
    quarantined: dict[str, str] = field(default_factory=dict)  # image key → expected reason
    records: int = 0  # distinct annotation records
    unannotated: int = 0
    duplicates: int = 0
    upright_key: str = ""  # an EXIF-rotated image; its upright picture is quadrants(80, 40)


def _picture(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def make_dirty_dataset(out: str | os.PathLike, per_breed: int = 4, seed: int = 11) -> DirtyDataset:
    root = Path(out)
    write_synthetic_pets(root, per_breed=per_breed, seed=seed)
    images = root / "images"
    dirty = DirtyDataset(root)

    def replace(key: str, data: bytes, *, kept: str | None = None, reason: str | None = None) -> None:
        (images / f"{key}.jpg").write_bytes(data)
        if kept:
            dirty.kept_odd[key] = kept
        if reason:
            dirty.quarantined[key] = reason

    picture = _picture(images / "Bengal_1.jpg")
    replace("Abyssinian_1", b"", reason=rec.EMPTY_FILE)
    jpeg = (images / "beagle_1.jpg").read_bytes()
    replace("beagle_1", jpeg[: len(jpeg) // 2], reason=rec.TRUNCATED_IMAGE)
    replace("boxer_1", np.random.default_rng(0).bytes(3000), reason=rec.NOT_AN_IMAGE)
    replace("pug_1", b"<html><body>404 Not Found</body></html>\n", reason=rec.NOT_AN_IMAGE)
    replace("samoyed_1", encode(Image.new("RGB", (12, 9), (9, 9, 9)), "JPEG"), reason=rec.TOO_SMALL)
    replace("saint_bernard_1", png_header_only(100_000, 100_000), reason=rec.DECOMPRESSION_BOMB)
    replace("Bengal_1", encode(picture, "PNG"), kept="PNG named .jpg")
    replace("Birman_1", encode(_picture(images / "Birman_1.jpg"), "GIF"), kept="GIF named .jpg")
    rgba = _picture(images / "Bombay_1.jpg").convert("RGBA")
    rgba.putalpha(200)
    replace("Bombay_1", encode(rgba, "PNG"), kept="RGBA PNG named .jpg")
    replace("chihuahua_1", encode(_picture(images / "chihuahua_1.jpg").convert("L"), "JPEG"), kept="grayscale")
    replace("havanese_1", encode(_picture(images / "havanese_1.jpg").convert("CMYK"), "JPEG"), kept="CMYK JPEG")
    gray16 = np.asarray(_picture(images / "keeshond_1.jpg").convert("L"), np.uint16) * 257
    replace("keeshond_1", encode(Image.fromarray(gray16), "PNG"), kept="16-bit PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; a viewer turns it 90° clockwise
    upright = quadrants(80, 40)
    replace(
        "leonberger_1",
        encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif),
        kept="EXIF-rotated JPEG",
    )
    dirty.upright_key = "leonberger_1"
    newfoundland = _picture(images / "newfoundland_1.jpg")
    replace("newfoundland_1", encode(newfoundland, "JPEG", progressive=True), kept="progressive JPEG")
    (images / "stray_cat_photo.jpg").write_bytes(encode(picture, "JPEG"))  # an image nobody annotated
    (images / "notes.mat").write_bytes(b"MATLAB 5.0")  # not a .jpg: not even an unannotated image
    dirty.unannotated = 1

    trainval = root / "annotations" / "trainval.txt"
    lines = trainval.read_text().splitlines()
    extra = [
        lines[5],  # an exact duplicate line: counted once
        "Persian_99 24 1 8",  # annotated, but there is no such file
        "Ragdoll_98 40 1 9",  # CLASS-ID out of range
        "Siamese_97 33 2 11",  # SPECIES contradicts the CLASS-ID
        "Sphynx_96 34 1",  # wrong column count
    ]
    dirty.duplicates = 1
    dirty.quarantined.update(
        {
            "Persian_99": rec.MISSING_FILE,
            "Ragdoll_98": rec.LABEL_OUT_OF_RANGE,
            "Siamese_97": rec.INCONSISTENT_LABEL,
            "Sphynx_96": rec.MALFORMED_LINE,
        }
    )
    # A UTF-8 BOM, CRLF line ends, trailing spaces and blank lines: all tolerated.
    body = "\r\n".join(f"{line}  " for line in lines[:10]) + "\r\n\r\n" + "\r\n".join(lines[10:] + extra) + "\r\n"
    trainval.write_bytes(b"\xef\xbb\xbf" + body.encode())
    dirty.records = per_breed * 37 + 4  # every generated image once + the four extra distinct keys
    return dirty
