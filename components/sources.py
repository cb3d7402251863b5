"""Readers for the non-Oxford sources: class folders, a CSV manifest, and the TFDS `oxford_iiit_pet` data set.

Each reader is pure (no Beam) and yields SourceRecord per image, carrying labels exactly as the source gives
them; checking them against the hierarchy is the label stage's job. A row that cannot be parsed at all becomes
a Quarantined entry (stage "parse", reason MALFORMED_LINE). Problems with the source as a whole (missing root,
missing header column, TFDS data set not prepared) raise DataError when the reader is created, not mid-run.

Files are listed and read through tf.io.gfile (components/fileio.py): roots, manifests and the image paths in
them may be gs://, s3://, ... URLs as well as local paths. TensorFlow is imported only when a file is touched.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

from common.errors import DataError
from components.records import MALFORMED_LINE, STAGE_PARSE, Provenance, Quarantined, SourceRecord

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# The split a parse-stage Quarantined entry is filed under when the source does not say.
DEFAULT_QUARANTINE_SPLIT = "train"

MANIFEST_COLUMNS = ("path", "species", "breed")

# TFDS split → SourceRecord.split_hint (TFDS calls Oxford's trainval list "train").
TFDS_SPLIT_HINTS = {"train": "trainval", "test": "test"}
TFDS_FEATURES = ("image", "label", "species", "file_name")


def _printable(text: str) -> str:
    """`text` with undecodable file-name bytes (surrogate escapes) shown as \\xNN, so it can be written out."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# --- class folders -------------------------------------------------------------------------------------------


class ClassFolders:
    """Images in `root/<species>/<breed>/*.{jpg,jpeg,png}`; iterate for records, then read `skipped`.

    `skipped` lists (absolute path, why) for every file that is not a record (other extension, wrong depth,
    unlistable directory), so the caller can report them; it is rebuilt on each iteration.
    """

    def __init__(self, root: str):
        import tensorflow as tf

        from components import fileio

        if not tf.io.gfile.isdir(root):
            raise DataError(f"{root}: class-folder root not found (expected <species>/<breed>/<image> inside)")
        self.root = fileio.absolute(root)
        self.skipped: list[tuple[str, str]] = []

    def __iter__(self) -> Iterator[SourceRecord | Quarantined]:
        from components import fileio

        self.skipped = []

        def unlistable(exc: OSError) -> None:
            self.skipped.append((exc.filename, f"cannot list directory: {exc.strerror}"))

        for directory, dirnames, filenames in fileio.walk(self.root, onerror=unlistable):
            dirnames.sort()  # walk visits subdirectories in this list's order: sorting makes the run repeatable
            rel_dir = os.path.relpath(directory, self.root)
            parts = [] if rel_dir == os.curdir else rel_dir.split(os.sep)
            for filename in sorted(filenames):
                path = os.path.join(directory, filename)
                if len(parts) != 2:
                    self.skipped.append((path, f"wrong depth: {len(parts) + 1} levels below the root, expected 3"))
                    continue
                if not filename.lower().endswith(IMAGE_EXTENSIONS):
                    ext = os.path.splitext(filename)[1] or "no extension"
                    self.skipped.append((path, f"not an image file name ({ext}); expected .jpg, .jpeg or .png"))
                    continue
                yield self._record(path, [*parts, filename])

    def _record(self, path: str, parts: list[str]) -> SourceRecord | Quarantined:
        key = "/".join(parts)
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            # A file name with bytes that are not UTF-8 cannot become a key or a TFRecord string.
            return Quarantined(
                _printable(key),
                Provenance(_printable(path)),
                DEFAULT_QUARANTINE_SPLIT,
                STAGE_PARSE,
                MALFORMED_LINE,
                "file or folder name is not valid UTF-8",
            )
        species, breed, _ = parts
        return SourceRecord(key, Provenance(path), species_name=species, breed_name=breed, image_path=path)


def read_class_folders(root: str) -> Iterator[SourceRecord | Quarantined]:
    """Records of `root/<species>/<breed>/<image>`, sorted; use ClassFolders(root) to also get what was skipped."""
    return iter(ClassFolders(root))


# --- CSV manifest --------------------------------------------------------------------------------------------


def _csv_rows(f: io.TextIOBase) -> Iterator[tuple[int, list[str] | csv.Error]]:
    """(1-based line number where the row starts, stripped cells or the csv.Error) per row."""
    reader = csv.reader(f)
    while True:
        # line_num counts physical lines read so far, so the next row starts one line later (even if quoted
        # newlines make it span several).
        line_no = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield line_no, exc
            continue
        yield line_no, [cell.strip() for cell in row]


def _is_blank(cells: list[str]) -> bool:
    return cells in ([], [""])


def _open_manifest(path: str) -> io.TextIOBase:
    from components import fileio

    try:
        # utf-8-sig drops a BOM; newline="" lets the csv module handle CRLF and quoted newlines.
        return fileio.open_text(path, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise DataError(f"{path}: cannot open CSV manifest: {exc.strerror}") from None


@dataclass(frozen=True)
class _ManifestHeader:
    line_no: int  # the header row's line (blank lines may precede it)
    width: int  # number of header columns
    index: dict[str, int]  # required column → its position


def _manifest_header(path: str) -> _ManifestHeader:
    """The header (the first non-blank row); DataError if a required column is missing."""
    with _open_manifest(path) as f:
        try:
            for line_no, cells in _csv_rows(f):
                if isinstance(cells, csv.Error):
                    raise DataError(f"{path}:{line_no}: cannot parse the CSV header: {cells}")
                if not _is_blank(cells):
                    break
            else:
                raise DataError(f"{path}: CSV manifest is empty; expected a header {','.join(MANIFEST_COLUMNS)}")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    names = [cell.lower() for cell in cells]
    missing = [c for c in MANIFEST_COLUMNS if c not in names]
    if missing:
        raise DataError(
            f"{path}:{line_no}: header lacks column(s) {', '.join(map(repr, missing))}; "
            f"expected {','.join(MANIFEST_COLUMNS)} (extra columns allowed), got {cells}"
        )
    repeated = [c for c in MANIFEST_COLUMNS if names.count(c) > 1]
    if repeated:
        raise DataError(f"{path}:{line_no}: header repeats column(s) {', '.join(map(repr, repeated))}")
    return _ManifestHeader(line_no, len(names), {c: names.index(c) for c in MANIFEST_COLUMNS})


def read_csv_manifest(path: str) -> Iterator[SourceRecord | Quarantined]:
    """Records of a CSV manifest with header columns path, species, breed (any order, extra columns ignored).

    Relative image paths resolve against the manifest's directory; key is the path as written, normalized.
    The header is checked now (DataError), rows are read lazily.
    """
    return _manifest_records(path, _manifest_header(path))


def _image_path(base_dir: str, path: str) -> str:
    """Where a manifest's image `path` is: a URL or absolute path as written, a relative one under base_dir."""
    if "://" in path or os.path.isabs(path):
        return path
    if "://" in base_dir:  # normpath would fold the "//" of the URL
        scheme, rest = base_dir.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, path))}"
    return os.path.normpath(os.path.join(base_dir, path))


def _manifest_records(path: str, header: _ManifestHeader) -> Iterator[SourceRecord | Quarantined]:
    from components import fileio

    base_dir = os.path.dirname(fileio.absolute(path))

    def quarantined(key: str, where: Provenance, message: str) -> Quarantined:
        return Quarantined(key, where, DEFAULT_QUARANTINE_SPLIT, STAGE_PARSE, MALFORMED_LINE, message)

    with _open_manifest(path) as f:
        try:
            for line_no, cells in _csv_rows(f):
                if line_no <= header.line_no:
                    continue
                where = Provenance(path, line_no)
                if isinstance(cells, csv.Error):
                    yield quarantined(str(where), where, f"cannot parse the CSV row: {cells}")
                    continue
                if _is_blank(cells):
                    continue
                values = {c: cells[i] if i < len(cells) else "" for c, i in header.index.items()}
                key = posixpath.normpath(values["path"]) if values["path"] else str(where)
                if len(cells) > header.width:
                    # More cells than header columns usually means an unquoted comma inside a value: the
                    # columns may be shifted, so no label on this row can be trusted.
                    yield quarantined(key, where, f"{len(cells)} fields but the header has {header.width}: {cells}")
                    continue
                empty = [c for c in MANIFEST_COLUMNS if not values[c]]
                if empty:
                    yield quarantined(key, where, f"empty or missing field(s) {', '.join(map(repr, empty))}")
                    continue
                image_path = _image_path(base_dir, values["path"] if "://" in values["path"] else key)
                yield SourceRecord(
                    key, where, species_name=values["species"], breed_name=values["breed"], image_path=image_path
                )
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


# --- TFDS ----------------------------------------------------------------------------------------------------


def read_tfds(name: str, data_dir: str, split: str) -> Iterator[SourceRecord]:
    """Records of a prepared TFDS `oxford_iiit_pet`-like data set, with the original encoded image bytes.

    Never downloads: DataError (telling how to prepare it) if the data set is not in `data_dir`. Labels are
    mapped through the data set's own ClassLabel names; they are not checked here.
    """
    if split not in TFDS_SPLIT_HINTS:
        raise DataError(f"tfds:{name}: split {split!r} is not supported; use one of {sorted(TFDS_SPLIT_HINTS)}")
    import tensorflow_datasets as tfds  # heavy: only when a TFDS source is used

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"tfds:{name}: no such TFDS data set") from None
    features = builder.info.features
    lacking = [f for f in TFDS_FEATURES if f not in features]
    if lacking:
        raise DataError(f"tfds:{name}: lacks feature(s) {lacking}; expected the oxford_iiit_pet features")
    # PartialDecoding reads only the features we use (no segmentation mask or head box is parsed), and
    # SkipDecoding keeps the image as the stored JPEG/PNG bytes instead of a pixel array.
    decoders = tfds.decode.PartialDecoding(
        {f: True for f in TFDS_FEATURES}, decoders={"image": tfds.decode.SkipDecoding()}
    )
    try:
        dataset = builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)
    except AssertionError:
        # TFDS signals "not prepared" with AssertionError; builder.is_prepared() cannot be used instead
        # because it is False under tfds.testing.mock_data even though as_dataset works there.
        raise DataError(
            f"tfds:{name}: not prepared in {data_dir} (version {builder.version}); run "
            f"`tfds build {name} --data_dir {data_dir}` on a machine with internet and copy that directory here"
        ) from None
    return _tfds_records(tfds.as_numpy(dataset), features, f"tfds:{name}/{split}", TFDS_SPLIT_HINTS[split])


def _tfds_records(examples, features, source: str, split_hint: str) -> Iterator[SourceRecord]:
    label_names, species_names = features["label"], features["species"]
    for index, example in enumerate(examples, 1):
        where = Provenance(source, index)
        try:
            breed = label_names.int2str(int(example["label"]))
            species = species_names.int2str(int(example["species"])).lower()  # TFDS names them "Cat", "Dog"
        except ValueError as exc:
            raise DataError(f"{where}: label outside the data set's class names: {exc}") from None
        file_name = example["file_name"]
        key = file_name.decode("utf-8") if isinstance(file_name, bytes) else str(file_name)
        yield SourceRecord(
            key,
            where,
            split_hint=split_hint,
            species_name=species,
            breed_name=breed,
            image_bytes=encoded_image(example["image"]),
        )


def encoded_image(image) -> bytes:
    """Encoded image bytes as they are; a decoded HxW[xC] uint8 array (a TFDS that ignored SkipDecoding) as PNG."""
    if isinstance(image, bytes):
        return image
    import numpy as np
    from PIL import Image

    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise TypeError(f"expected encoded bytes or an HxW[x1|3|4] uint8 image, got {array.dtype} {array.shape}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]  # PIL wants grey images as HxW
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")  # lossless, so no pixel changes from re-encoding
    return out.getvalue()
