"""Ingest: read the Oxford-IIIT Pet raw layout (the real download or the generated one) into labelled records.

Layout: `images/<Image>.jpg` and `annotations/{trainval,test}.txt` with lines `Image CLASS-ID SPECIES BREED-ID`
(`#` lines are comments). trainval is split into train/eval by a hash of the image name, so an image keeps
its split when the data set grows; test.txt is the test split.

Pure core: parse_annotation_line, split_of, check_layout, read_image. Beam shell: ReadPetImages.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import apache_beam as beam

from pipeline.errors import DataError
from schemas import Hierarchy

TRAIN, EVAL, TEST = "train", "eval", "test"
SPLITS = (TRAIN, EVAL, TEST)
# Annotation file → the split(s) its records go to.
ANNOTATION_FILES = {"trainval.txt": (TRAIN, EVAL), "test.txt": (TEST,)}


@dataclass(frozen=True)
class AnnotationRecord:
    """One annotation line, with 0-based labels and where it came from."""

    image: str  # e.g. "Abyssinian_100" (no extension)
    breed: int  # global breed index, CLASS-ID - 1
    species: int  # species index, SPECIES - 1
    breed_in_species: int  # BREED-ID - 1
    source: str  # annotation file path
    line_no: int  # 1-based

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line_no}"


@dataclass(frozen=True)
class LabelledImage:
    record: AnnotationRecord
    split: str
    path: str
    data: bytes


def parse_annotation_line(line: str, source: str, line_no: int, hierarchy: Hierarchy) -> AnnotationRecord | None:
    """The record on one annotation line; None for a blank or `#` comment line; DataError if malformed."""
    text = line.strip().lstrip("\ufeff")
    if not text or text.startswith("#"):
        return None
    where = f"{source}:{line_no}"
    fields = text.split()
    if len(fields) != 4:
        raise DataError(f"{where}: expected 4 columns 'Image CLASS-ID SPECIES BREED-ID', got {len(fields)}: {text!r}")
    image, *numbers = fields
    try:
        class_id, species_id, breed_id = (int(n) for n in numbers)
    except ValueError:
        raise DataError(f"{where}: CLASS-ID, SPECIES and BREED-ID must be integers: {text!r}") from None
    if not 1 <= class_id <= len(hierarchy.breeds):
        raise DataError(f"{where}: CLASS-ID {class_id} is outside 1..{len(hierarchy.breeds)}: {text!r}")
    breed = hierarchy.breeds[class_id - 1]
    if (species_id, breed_id) != (breed.species_index + 1, breed.index_in_species + 1):
        raise DataError(
            f"{where}: SPECIES {species_id} / BREED-ID {breed_id} contradict CLASS-ID {class_id} ({breed.name}, "
            f"which is SPECIES {breed.species_index + 1} BREED-ID {breed.index_in_species + 1}): {text!r}"
        )
    return AnnotationRecord(image, breed.global_index, breed.species_index, breed.index_in_species, source, line_no)


def parse_annotation_text(text: str, source: str, hierarchy: Hierarchy) -> list[AnnotationRecord]:
    records = (parse_annotation_line(line, source, n, hierarchy) for n, line in enumerate(text.splitlines(), 1))
    return [r for r in records if r is not None]


def split_of(image: str, annotation_file: str, eval_fraction: float) -> str:
    """test.txt → test; trainval.txt → eval for a stable `eval_fraction` of names (by SHA-256), else train."""
    splits = ANNOTATION_FILES[annotation_file]
    if splits == (TEST,):
        return TEST
    bucket = int.from_bytes(hashlib.sha256(image.encode("utf-8")).digest()[:8], "big") / 2**64
    return EVAL if bucket < eval_fraction else TRAIN


def check_layout(data_dir: str) -> list[str]:
    """The annotation files to read; DataError naming what is missing when the layout is wrong."""
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: data directory not found (expected images/ and annotations/ inside)")
    images_dir = os.path.join(data_dir, "images")
    if not os.path.isdir(images_dir) or not os.listdir(images_dir):
        raise DataError(f"{images_dir}: missing or empty; expected the Oxford-IIIT Pet images/<Image>.jpg files")
    paths = [os.path.join(data_dir, "annotations", name) for name in ANNOTATION_FILES]
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"{path}: annotation file not found")
        if os.path.getsize(path) == 0:
            raise DataError(f"{path}: annotation file is empty")
    return paths


def image_path(data_dir: str, record: AnnotationRecord) -> str:
    return os.path.join(data_dir, "images", f"{record.image}.jpg")


def read_image(data_dir: str, record: AnnotationRecord) -> bytes:
    path = image_path(data_dir, record)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DataError(f"{path} (annotated at {record.where}): cannot read image: {exc.strerror}") from None
    if not data:
        raise DataError(f"{path} (annotated at {record.where}): image file is empty")
    return data


def _parse_annotation_file(path: str, hierarchy: Hierarchy) -> list[AnnotationRecord]:
    with open(path, encoding="utf-8-sig") as f:
        return parse_annotation_text(f.read(), path, hierarchy)


class ReadPetImages(beam.PTransform):
    """Annotation file paths → LabelledImage per annotation line, with its split and the image's bytes."""

    def __init__(self, data_dir: str, hierarchy: Hierarchy, eval_fraction: float):
        super().__init__()
        self.data_dir = data_dir
        self.hierarchy = hierarchy
        self.eval_fraction = eval_fraction

    def expand(self, annotation_paths):
        data_dir, hierarchy, eval_fraction = self.data_dir, self.hierarchy, self.eval_fraction
        return (
            annotation_paths
            | "ParseAnnotations" >> beam.FlatMap(lambda path: _parse_annotation_file(path, hierarchy))
            | "SpreadWork" >> beam.Reshuffle()
            | "ReadImage"
            >> beam.Map(
                lambda r: LabelledImage(
                    r,
                    split_of(r.image, os.path.basename(r.source), eval_fraction),
                    image_path(data_dir, r),
                    read_image(data_dir, r),
                )
            )
        )
