"""The records that flow between ingest and preprocess, and the quarantine entry a failing record becomes.

Every source (Oxford layout, class folders, CSV manifest, TFDS) yields SourceRecord or Quarantined; ingest
resolves duplicates, maps labels through the hierarchy and assigns splits; nothing is dropped silently — a
record that cannot be used becomes a Quarantined entry with a reason category a person can act on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

# Stage names, in pipeline order.
STAGE_PARSE = "parse"  # reading an annotation line / manifest row / folder entry
STAGE_LABEL = "label"  # resolving duplicates, mapping labels through the hierarchy
STAGE_READ = "read"  # fetching the image bytes
STAGE_DECODE = "decode"  # checking and decoding the image

# Reason categories (the `reason` of a Quarantined entry).
MALFORMED_LINE = "malformed_line"  # wrong column count, non-integer id, unparsable row
LABEL_OUT_OF_RANGE = "label_out_of_range"  # CLASS-ID outside 1..N
INCONSISTENT_LABEL = "inconsistent_label"  # SPECIES / BREED-ID (or species name) contradicts the breed
UNKNOWN_LABEL = "unknown_label"  # a species or breed name the hierarchy does not know
CONFLICTING_DUPLICATE = "conflicting_duplicate"  # the same image annotated twice with different labels/splits
MISSING_FILE = "missing_file"  # the annotated image file does not exist
UNREADABLE_FILE = "unreadable_file"  # exists but cannot be read (permissions, I/O error)
EMPTY_FILE = "empty_file"  # zero bytes
NOT_AN_IMAGE = "not_an_image"  # content is not a known image format (text, random bytes, ...)
TRUNCATED_IMAGE = "truncated_image"  # a known format whose data ends early or is corrupt
DECODE_ERROR = "decode_error"  # any other failure to decode
TOO_SMALL = "too_small"  # shorter side below the configured minimum
DECOMPRESSION_BOMB = "decompression_bomb"  # header declares more pixels than the configured maximum

REASONS = (
    MALFORMED_LINE,
    LABEL_OUT_OF_RANGE,
    INCONSISTENT_LABEL,
    UNKNOWN_LABEL,
    CONFLICTING_DUPLICATE,
    MISSING_FILE,
    UNREADABLE_FILE,
    EMPTY_FILE,
    NOT_AN_IMAGE,
    TRUNCATED_IMAGE,
    DECODE_ERROR,
    TOO_SMALL,
    DECOMPRESSION_BOMB,
)


@dataclass(frozen=True)
class Provenance:
    """Where a record came from: a file and, when the file has lines, the 1-based line number."""

    source: str
    line_no: int | None = None

    def __str__(self) -> str:
        return f"{self.source}:{self.line_no}" if self.line_no is not None else self.source


@dataclass(frozen=True)
class SourceRecord:
    """One labelled image as a source describes it, before its labels are checked against the hierarchy.

    Labels come either as 1-based ids (Oxford: class_id, species_id, breed_id) or as names (species_name,
    breed_name); the image either as a path or as bytes (TFDS).
    """

    key: str  # unique image id within the data set, e.g. "Abyssinian_12" or "cat/Bengal/x.jpg"
    provenance: Provenance
    split_hint: str | None = None  # "trainval" or "test" when the source says; None: assigned by hash
    class_id: int | None = None
    species_id: int | None = None
    breed_id: int | None = None
    species_name: str | None = None
    breed_name: str | None = None
    image_path: str | None = None
    image_bytes: bytes | None = None

    def same_labels(self, other: SourceRecord) -> bool:
        fields = ("split_hint", "class_id", "species_id", "breed_id", "species_name", "breed_name")
        return all(getattr(self, f) == getattr(other, f) for f in fields)


@dataclass(frozen=True)
class Quarantined:
    """A record that was not written, and why. One JSON line in the split's quarantine file."""

    key: str
    provenance: Provenance
    split: str
    stage: str
    reason: str
    message: str

    def to_json(self) -> str:
        entry = asdict(self)
        entry["file"] = entry["provenance"]["source"]
        entry["line"] = entry["provenance"]["line_no"]
        del entry["provenance"]
        return json.dumps(entry, sort_keys=True)


class Rejected(Exception):
    """Raised by pure cores to say "quarantine this record": carries the reason category and a message."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
