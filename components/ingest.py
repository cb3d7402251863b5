"""Ingest: source records → distinct, labelled records with a split and their image bytes — or quarantine entries.

Sources: the Oxford-IIIT Pet raw layout (`images/<Image>.jpg`, `annotations/{trainval,test}.txt` with lines
`Image CLASS-ID SPECIES BREED-ID`, `#` comments), class folders, a CSV manifest, or a prepared TFDS data set
(components/sources.py). Every record ends up either ingested or quarantined with a reason:

  parse  → a line that cannot be read (wrong column count, non-integer ids) is quarantined where it stands;
  label  → records are grouped by image key: identical duplicates count once, conflicting ones are
           quarantined; labels are mapped through the hierarchy (out of range, inconsistent, unknown → quarantine);
           Oxford images without an annotation line are counted (not records, not errors);
  read   → missing, unreadable or empty files are quarantined.

Splits: test.txt → test; trainval → eval for a stable `eval_fraction` of image keys (SHA-256), else train;
sources without a test list hash `test_fraction` of keys into test as well.

Pure core: parse_oxford_line / read_oxford_annotations, assign_split, resolve_duplicates, label_record,
read_image_bytes. Beam shell: IngestRecords (group by image key, resolve, read).

Files are read through tf.io.gfile (components/fileio.py), so the data directory may be gs://, s3://, ... as well
as a local path; TensorFlow is imported only when a file is read.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass

import apache_beam as beam

from common.errors import DataError
from components import records as rec
from components.records import Provenance, Quarantined, Rejected, SourceRecord
from schemas import EVAL, SPLITS, TEST, TRAIN, Hierarchy  # noqa: F401  (the split names, re-exported)

TRAINVAL = "trainval"
# Oxford annotation file → the split hint its records carry.
ANNOTATION_FILES = {"trainval.txt": TRAINVAL, "test.txt": TEST}
QUARANTINE = "quarantine"


@dataclass(frozen=True)
class AnnotationRecord:
    """A record whose labels agree with the hierarchy: 0-based indices, and where it came from."""

    image: str  # the record's key, e.g. "Abyssinian_100"
    breed: int  # global breed index (Oxford CLASS-ID - 1)
    species: int  # species index (Oxford SPECIES - 1)
    breed_in_species: int  # Oxford BREED-ID - 1
    source: str
    line_no: int | None

    @property
    def where(self) -> str:
        return str(Provenance(self.source, self.line_no))


@dataclass(frozen=True)
class LabelledImage:
    record: AnnotationRecord
    split: str
    path: str  # where the bytes came from (a file, or a TFDS split)
    data: bytes


# --- parse ---------------------------------------------------------------------------------------------------
def parse_oxford_line(line: str, source: str, line_no: int, images_dir: str, eval_fraction: float = 0.0):
    """SourceRecord for one annotation line; None for blank or `#` lines; Quarantined if it cannot be parsed."""
    text = line.strip().lstrip("\ufeff").strip()
    if not text or text.startswith("#"):
        return None
    hint = ANNOTATION_FILES.get(os.path.basename(source), TRAINVAL)
    provenance = Provenance(source, line_no)
    fields = text.split()
    key = fields[0]

    def malformed(message: str) -> Quarantined:
        split = assign_split(key, hint, eval_fraction, 0.0)
        return Quarantined(key, provenance, split, rec.STAGE_PARSE, rec.MALFORMED_LINE, f"{message}: {text!r}")

    if len(fields) != 4:
        return malformed(f"expected 4 columns 'Image CLASS-ID SPECIES BREED-ID', got {len(fields)}")
    try:
        class_id, species_id, breed_id = (int(n) for n in fields[1:])
    except ValueError:
        return malformed("CLASS-ID, SPECIES and BREED-ID must be integers")
    return SourceRecord(
        key,
        provenance,
        split_hint=hint,
        class_id=class_id,
        species_id=species_id,
        breed_id=breed_id,
        image_path=os.path.join(images_dir, f"{key}.jpg"),
    )


def read_oxford_annotations(path: str, images_dir: str, eval_fraction: float) -> list:
    """Every record and quarantine entry of one annotation file (BOM, CRLF, blank lines and spaces tolerated)."""
    from components import fileio  # imports TensorFlow: only when files are read

    try:
        with fileio.open_text(path, encoding="utf-8-sig", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read annotation file: {exc.strerror}") from None
    parsed = (parse_oxford_line(line, path, n, images_dir, eval_fraction) for n, line in enumerate(lines, 1))
    return [p for p in parsed if p is not None]


def check_layout(data_dir: str) -> list[str]:
    """The Oxford annotation files to read; DataError naming what is missing when the layout is wrong."""
    import tensorflow as tf

    from components import fileio

    if not tf.io.gfile.isdir(data_dir):
        raise DataError(f"{data_dir}: data directory not found (expected images/ and annotations/ inside)")
    images_dir = os.path.join(data_dir, "images")
    if not tf.io.gfile.isdir(images_dir) or not fileio.listdir(images_dir):
        raise DataError(f"{images_dir}: missing or empty; expected the Oxford-IIIT Pet images/<Image>.jpg files")
    paths = [os.path.join(data_dir, "annotations", name) for name in ANNOTATION_FILES]
    for path in paths:
        if not fileio.isfile(path):
            raise DataError(f"{path}: annotation file not found")
        if fileio.getsize(path) == 0:
            raise DataError(f"{path}: annotation file is empty")
    return paths


def image_stems(images_dir: str) -> list[str]:
    """Names (without .jpg) of the files in an Oxford images/ directory; other files (e.g. .mat) are not images."""
    from components import fileio

    return sorted(name[:-4] for name in fileio.listdir(images_dir) if name.endswith(".jpg"))


# --- split and label -------------------------------------------------------------------------------------------
def _bucket(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64


def assign_split(key: str, split_hint: str | None, eval_fraction: float, test_fraction: float) -> str:
    """test hint → test; trainval hint → eval for a stable eval_fraction of keys, else train; no hint → the
    first test_fraction of the hash range is test, the next eval_fraction eval, the rest train."""
    if split_hint == TEST:
        return TEST
    bucket = _bucket(key)
    if split_hint is None:
        if bucket < test_fraction:
            return TEST
        bucket = (bucket - test_fraction) / (1 - test_fraction)
    return EVAL if bucket < eval_fraction else TRAIN


def label_record(record: SourceRecord, hierarchy: Hierarchy) -> AnnotationRecord:
    """Map a record's ids or names through the hierarchy; Rejected when they are out of range or contradict."""
    if record.class_id is not None:
        n = len(hierarchy.breeds)
        if not 1 <= record.class_id <= n:
            raise Rejected(rec.LABEL_OUT_OF_RANGE, f"CLASS-ID {record.class_id} is outside 1..{n}")
        breed = hierarchy.breeds[record.class_id - 1]
        expected = (breed.species_index + 1, breed.index_in_species + 1)
        if (record.species_id, record.breed_id) != expected:
            raise Rejected(
                rec.INCONSISTENT_LABEL,
                f"SPECIES {record.species_id} / BREED-ID {record.breed_id} contradict CLASS-ID {record.class_id} "
                f"({breed.name}, which is SPECIES {expected[0]} BREED-ID {expected[1]})",
            )
    else:
        breed = hierarchy.by_lower_name.get((record.breed_name or "").strip().lower())
        if breed is None:
            raise Rejected(rec.UNKNOWN_LABEL, f"breed {record.breed_name!r} is not in the label hierarchy")
        species = (record.species_name or "").strip().lower()
        if species not in hierarchy.species_by_lower_name:
            raise Rejected(rec.UNKNOWN_LABEL, f"species {record.species_name!r} is not in the label hierarchy")
        if hierarchy.species_by_lower_name[species] != breed.species:
            raise Rejected(
                rec.INCONSISTENT_LABEL,
                f"species {record.species_name!r} contradicts breed {breed.name!r}, which is a {breed.species}",
            )
    return AnnotationRecord(
        record.key, breed.global_index, breed.species_index, breed.index_in_species, *_where(record.provenance)
    )


def _where(provenance: Provenance) -> tuple[str, int | None]:
    return provenance.source, provenance.line_no


def in_file_order(records: list[SourceRecord]) -> list[SourceRecord]:
    return sorted(records, key=lambda r: (r.provenance.source, r.provenance.line_no or 0))


def resolve_duplicates(key: str, records: list[SourceRecord]) -> tuple[SourceRecord, int]:
    """The one record for `key` (its first mention) and how many identical duplicates it had; Rejected if the
    copies disagree."""
    first, *others = in_file_order(records)
    conflicting = [r for r in others if not first.same_labels(r)]
    if conflicting:
        places = ", ".join(str(r.provenance) for r in [first, *others])
        raise Rejected(rec.CONFLICTING_DUPLICATE, f"{key!r} is annotated differently at {places}")
    return first, len(others)


def read_image_bytes(record: SourceRecord) -> bytes:
    """The record's image bytes; Rejected (missing, unreadable, empty) naming the file."""
    from components import fileio

    if record.image_bytes is not None:
        data = record.image_bytes
    else:
        try:
            data = fileio.read_bytes(record.image_path)
        except FileNotFoundError:
            raise Rejected(rec.MISSING_FILE, f"{record.image_path}: no such file") from None
        except OSError as exc:
            raise Rejected(rec.UNREADABLE_FILE, f"{record.image_path}: {exc.strerror or exc}") from None
    if not data:
        raise Rejected(rec.EMPTY_FILE, f"{record.image_path or record.key}: zero bytes")
    return data


# --- Beam shell ------------------------------------------------------------------------------------------------
@functools.cache
def counter(namespace: str, name: str):
    """Beam's counter object, made once per name: making one costs more than the rest of counting an element (the
    object looks up the running step's metrics container at each inc, so one object serves every bundle)."""
    return beam.metrics.Metrics.counter(namespace, name)


def count(name: str, by: int = 1) -> None:
    counter("ingest", name).inc(by)


READ_REASONS = {rec.MISSING_FILE, rec.UNREADABLE_FILE, rec.EMPTY_FILE}


class ResolveFn(beam.DoFn):
    """(key, {records, files}) → one LabelledImage, or a Quarantined entry; counts every distinct record."""

    def __init__(self, hierarchy: Hierarchy, eval_fraction: float, test_fraction: float, has_listing: bool):
        self.hierarchy = hierarchy
        self.fractions = (eval_fraction, test_fraction)
        self.has_listing = has_listing

    def process(self, element):
        key, grouped = element
        records, files = list(grouped["records"]), list(grouped["files"])
        if not records:
            count("unannotated_images")  # an image nobody labelled: reported, not a record
            return
        first = in_file_order(records)[0]
        split = assign_split(key, first.split_hint, *self.fractions)
        count(f"records_{split}")
        try:
            record, duplicates = resolve_duplicates(key, records)
            count("duplicate_lines", duplicates)
            labelled = label_record(record, self.hierarchy)
            if self.has_listing and not files:
                raise Rejected(rec.MISSING_FILE, f"{record.image_path}: no such file")
            data = read_image_bytes(record)
        except Rejected as exc:
            stage = rec.STAGE_READ if exc.reason in READ_REASONS else rec.STAGE_LABEL
            yield beam.pvalue.TaggedOutput(
                QUARANTINE, Quarantined(key, first.provenance, split, stage, exc.reason, exc.message)
            )
            return
        yield LabelledImage(labelled, split, record.image_path or record.provenance.source, data)


def count_parse_quarantine(entry: Quarantined) -> Quarantined:
    count(f"records_{entry.split}")
    return entry


class IngestRecords(beam.PTransform):
    """PCollection of SourceRecord | Quarantined (+ optional listing of existing image keys) →
    {"images": LabelledImage, "quarantine": Quarantined}."""

    def __init__(self, hierarchy: Hierarchy, eval_fraction: float, test_fraction: float, image_listing=None):
        super().__init__()
        self.hierarchy = hierarchy
        self.fractions = (eval_fraction, test_fraction)
        self.image_listing = image_listing  # a PCollection of image keys that exist (Oxford images/), or None

    def expand(self, parsed):
        by_kind = parsed | "SplitParsed" >> beam.Partition(lambda item, _: int(isinstance(item, Quarantined)), 2)
        records, unparsable = by_kind[0], by_kind[1]
        keyed = records | "KeyRecords" >> beam.Map(lambda r: (r.key, r))
        files = (
            self.image_listing | "KeyFiles" >> beam.Map(lambda k: (k, True))
            if self.image_listing is not None
            else records.pipeline | "NoListing" >> beam.Create([])
        )
        resolved = (
            {"records": keyed, "files": files}
            | "GroupByImage" >> beam.CoGroupByKey()
            | "Resolve"
            >> beam.ParDo(ResolveFn(self.hierarchy, *self.fractions, self.image_listing is not None)).with_outputs(
                QUARANTINE, main="images"
            )
        )
        quarantine = (
            resolved[QUARANTINE],
            unparsable | "CountUnparsable" >> beam.Map(count_parse_quarantine),
        ) | "AllIngestQuarantine" >> beam.Flatten()
        return {"images": resolved.images, QUARANTINE: quarantine}
