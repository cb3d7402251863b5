import io
import json
import os
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from common.errors import DataError
from components.records import MALFORMED_LINE, STAGE_PARSE, Provenance, Quarantined, SourceRecord
from components.sources import (
    ClassFolders,
    encoded_image,
    read_class_folders,
    read_csv_manifest,
    read_tfds,
)

TFDS_NAME = "oxford_iiit_pet"


def write_image(path, fmt="JPEG", size=(6, 5), color=(200, 30, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


# --- class folders -------------------------------------------------------------------------------------------


@pytest.fixture
def class_tree(tmp_path):
    root = tmp_path / "pets"
    write_image(root / "cat" / "Bengal" / "b1.jpg")
    write_image(root / "cat" / "Bengal" / "b2.JPG")  # extension match is case-insensitive
    write_image(root / "cat" / "Persian" / "p.png", fmt="PNG")
    write_image(root / "dog" / "beagle" / "x.jpeg")
    (root / "dog" / "empty_breed").mkdir()
    # Not records:
    (root / "README.txt").write_text("depth 1")
    write_image(root / "cat" / "notes.jpg")  # depth 2: no breed folder
    (root / "cat" / "Bengal" / "stray.txt").write_text("not an image")
    write_image(root / "cat" / "Bengal" / "sub" / "deep.jpg")  # depth 4
    (root / "dog" / "beagle" / ".DS_Store").write_bytes(b"\0")
    return root


def test_class_folders_yield_sorted_records_with_names_and_absolute_paths(class_tree):
    records = list(read_class_folders(str(class_tree)))
    assert all(isinstance(r, SourceRecord) for r in records)
    assert [(r.key, r.species_name, r.breed_name) for r in records] == [
        ("cat/Bengal/b1.jpg", "cat", "Bengal"),
        ("cat/Bengal/b2.JPG", "cat", "Bengal"),
        ("cat/Persian/p.png", "cat", "Persian"),
        ("dog/beagle/x.jpeg", "dog", "beagle"),
    ]
    for r in records:
        assert r.image_path == str(class_tree / r.key)
        assert os.path.isabs(r.image_path) and os.path.isfile(r.image_path)
        assert r.provenance == Provenance(r.image_path, None)
        assert (r.split_hint, r.class_id, r.image_bytes) == (None, None, None)


def test_class_folders_report_what_they_skip(class_tree):
    source = ClassFolders(str(class_tree))
    keys = [r.key for r in source]
    assert len(keys) == 4
    skipped = {os.path.relpath(path, class_tree): why for path, why in source.skipped}
    assert sorted(skipped) == sorted(
        ["README.txt", "cat/notes.jpg", "cat/Bengal/stray.txt", "cat/Bengal/sub/deep.jpg", "dog/beagle/.DS_Store"]
    )
    assert skipped["README.txt"].startswith("wrong depth: 1 levels")
    assert skipped["cat/notes.jpg"].startswith("wrong depth: 2 levels")
    assert skipped["cat/Bengal/sub/deep.jpg"].startswith("wrong depth: 4 levels")
    assert skipped["cat/Bengal/stray.txt"].startswith("not an image file name (.txt)")
    assert skipped["dog/beagle/.DS_Store"].startswith("not an image file name (no extension)")
    # A second pass rebuilds the list instead of doubling it, and gives the same order.
    assert [r.key for r in source] == keys
    assert len(source.skipped) == 5


def test_class_folders_relative_root_gives_absolute_paths(class_tree, monkeypatch):
    monkeypatch.chdir(class_tree.parent)
    records = list(read_class_folders("pets"))
    assert records[0].image_path == str(class_tree / "cat" / "Bengal" / "b1.jpg")


def test_class_folders_missing_root_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="nope: class-folder root not found"):
        read_class_folders(str(tmp_path / "nope"))  # raised at once, before iterating


def test_non_utf8_file_name_is_quarantined(tmp_path):
    root = tmp_path / "pets"
    write_image(root / "dog" / "pug" / "ok.jpg")
    with open(os.path.join(os.fsencode(root / "dog" / "pug"), b"\xff.jpg"), "wb") as f:
        f.write(b"x")
    entries = list(read_class_folders(str(root)))
    bad = [e for e in entries if isinstance(e, Quarantined)]
    assert [e.key for e in entries if isinstance(e, SourceRecord)] == ["dog/pug/ok.jpg"]
    assert [(e.key, e.stage, e.reason, e.split) for e in bad] == [
        ("dog/pug/\\xff.jpg", STAGE_PARSE, MALFORMED_LINE, "train")
    ]
    assert "not valid UTF-8" in json.loads(bad[0].to_json())["message"]


def test_unlistable_directory_is_reported_as_skipped(class_tree, monkeypatch):
    blocked = str(class_tree / "cat" / "Persian")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == blocked:
            raise PermissionError(13, "Permission denied", blocked)
        return real_scandir(path)

    # Patching scandir rather than chmod: the tests may run as root, which ignores permissions.
    monkeypatch.setattr(os, "scandir", scandir)
    source = ClassFolders(str(class_tree))
    assert "cat/Persian/p.png" not in [r.key for r in source]
    assert (blocked, "cannot list directory: Permission denied") in source.skipped


# --- CSV manifest --------------------------------------------------------------------------------------------


def write_manifest(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def test_manifest_with_bom_crlf_spaces_extra_columns_and_any_column_order(tmp_path):
    absolute = write_image(tmp_path / "elsewhere" / "abs.jpg")
    manifest = write_manifest(
        tmp_path / "data" / "manifest.csv",
        "\ufeff Path , breed ,species, note \r\n"  # line 1: header, another column order, an extra column
        "\r\n"  # line 2: blank
        " images/a.jpg , Bengal , cat , hello\r\n"  # line 3
        "./images/../images/b.png,beagle,dog\r\n"  # line 4: the ignored column may be left off
        f"{absolute},Sphynx,cat,x\r\n"  # line 5: absolute path
        "   \r\n"  # line 6: whitespace only
        '"images/q, quoted.jpg",pug,dog,"two\r\nlines"\r\n'  # lines 7-8: quoted comma and newline
        "images/z.jpg,Unknown Breed,fish,\r\n",  # line 9: labels are carried as given
    )
    records = list(read_csv_manifest(str(manifest)))
    assert all(isinstance(r, SourceRecord) for r in records)
    assert [(r.key, r.species_name, r.breed_name, r.provenance.line_no) for r in records] == [
        ("images/a.jpg", "cat", "Bengal", 3),
        ("images/b.png", "dog", "beagle", 4),
        (str(absolute), "cat", "Sphynx", 5),
        ("images/q, quoted.jpg", "dog", "pug", 7),
        ("images/z.jpg", "fish", "Unknown Breed", 9),
    ]
    data_dir = tmp_path / "data"
    assert [r.image_path for r in records] == [
        str(data_dir / "images" / "a.jpg"),
        str(data_dir / "images" / "b.png"),
        str(absolute),
        str(data_dir / "images" / "q, quoted.jpg"),
        str(data_dir / "images" / "z.jpg"),
    ]
    assert {r.provenance.source for r in records} == {str(manifest)}
    assert {r.split_hint for r in records} == {None}


def test_relative_manifest_path_resolves_against_its_directory(tmp_path, monkeypatch):
    write_manifest(tmp_path / "sub" / "m.csv", "path,species,breed\npics/a.jpg,cat,Bengal\n")
    monkeypatch.chdir(tmp_path)
    [record] = read_csv_manifest(os.path.join("sub", "m.csv"))
    assert record.image_path == str(tmp_path / "sub" / "pics" / "a.jpg")
    assert record.provenance == Provenance(os.path.join("sub", "m.csv"), 2)


def test_unparsable_manifest_rows_are_quarantined_naming_the_field(tmp_path):
    manifest = write_manifest(
        tmp_path / "m.csv",
        "path,species,breed,note\n"
        "a.jpg,cat,Bengal\n"  # line 2: fine
        "b.jpg,cat,\n"  # line 3: empty breed
        "c.jpg,dog\n"  # line 4: breed missing
        ",,\n"  # line 5: everything empty
        "d.jpg,dog,Saint,Bernard,x\n"  # line 6: unquoted comma shifts the columns
        "e.jpg,dog,pug\n",  # line 7: fine
    )
    entries = list(read_csv_manifest(str(manifest)))
    assert [(type(e).__name__, e.key, e.provenance.line_no) for e in entries] == [
        ("SourceRecord", "a.jpg", 2),
        ("Quarantined", "b.jpg", 3),
        ("Quarantined", "c.jpg", 4),
        ("Quarantined", f"{manifest}:5", 5),
        ("Quarantined", "d.jpg", 6),
        ("SourceRecord", "e.jpg", 7),
    ]
    bad = [e for e in entries if isinstance(e, Quarantined)]
    assert {(e.stage, e.reason, e.split) for e in bad} == {(STAGE_PARSE, MALFORMED_LINE, "train")}
    assert [e.message for e in bad[:3]] == [
        "empty or missing field(s) 'breed'",
        "empty or missing field(s) 'breed'",
        "empty or missing field(s) 'path', 'species', 'breed'",
    ]
    assert bad[3].message.startswith("5 fields but the header has 4")
    assert json.loads(bad[0].to_json())["line"] == 3


def test_header_after_blank_lines_keeps_file_line_numbers(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", "\n\npath,species,breed\n\na.jpg,cat,Bengal\n")
    [record] = read_csv_manifest(str(manifest))
    assert record.provenance.line_no == 5


def test_missing_header_column_is_a_one_line_data_error(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", "path,species,label\na.jpg,cat,Bengal\n")
    with pytest.raises(DataError) as error:
        read_csv_manifest(str(manifest))  # raised at once, before iterating
    message = str(error.value)
    assert message.startswith(f"{manifest}:1: header lacks column(s) 'breed'")
    assert "\n" not in message


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "CSV manifest is empty"),
        (b"\r\n  \r\n", "CSV manifest is empty"),
        (b"a.jpg,cat,Bengal\n", "header lacks column(s) 'path', 'species', 'breed'"),
        (b"path,species,breed,path\n", "header repeats column(s) 'path'"),
        (b"path,species,breed\n\xff\xfe,cat,Bengal\n", "not UTF-8 text"),
    ],
)
def test_bad_manifest_files_are_data_errors(tmp_path, content, message):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(content)
    with pytest.raises(DataError, match=str(manifest)) as error:
        list(read_csv_manifest(str(manifest)))
    assert message in str(error.value)


def test_missing_manifest_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="nope.csv: cannot open CSV manifest"):
        read_csv_manifest(str(tmp_path / "nope.csv"))


# --- TFDS ----------------------------------------------------------------------------------------------------


def test_tfds_mock_gives_encoded_bytes_and_carries_inconsistent_labels_unchanged(tmp_path, hierarchy):
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        label_names = tfds.builder(TFDS_NAME, data_dir=str(tmp_path)).info.features["label"].names
        records = list(read_tfds(TFDS_NAME, str(tmp_path), "train"))
        test_records = list(read_tfds(TFDS_NAME, str(tmp_path), "test"))
    assert set(label_names) == set(hierarchy.breed_names)  # TFDS and our hierarchy agree on the 37 names
    assert len(records) == 40  # nothing dropped
    assert [r.provenance for r in records] == [Provenance(f"tfds:{TFDS_NAME}/train", i) for i in range(1, 41)]
    assert {r.split_hint for r in records} == {"trainval"}
    assert {r.split_hint for r in test_records} == {"test"}
    assert test_records[0].provenance == Provenance(f"tfds:{TFDS_NAME}/test", 1)
    for r in records:
        assert r.breed_name in hierarchy.by_name
        assert r.species_name in ("cat", "dog")
        assert isinstance(r.key, str) and r.key
        assert r.image_path is None
        # mock_data honours SkipDecoding: the image arrives as encoded JPEG bytes.
        assert r.image_bytes[:3] == b"\xff\xd8\xff"
        assert Image.open(io.BytesIO(r.image_bytes)).format == "JPEG"
    # The mock's labels are random, so breed and species often disagree; the reader keeps those records as
    # they are (the label stage quarantines them).
    inconsistent = [r for r in records if hierarchy.by_name[r.breed_name].species != r.species_name]
    assert 0 < len(inconsistent) < len(records)
    assert {r.species_name for r in inconsistent} == {"cat", "dog"}


def test_tfds_decoded_arrays_are_encoded_as_png(tmp_path):
    pixels = np.arange(3 * 4 * 5 * 3, dtype=np.uint8).reshape(3, 4, 5, 3)

    def decoded_as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        # Stands in for a TFDS that ignores SkipDecoding and hands out pixel arrays.
        return tf.data.Dataset.from_tensor_slices(
            {
                "image": pixels,
                "label": np.array([0, 7, 36]),
                "species": np.array([0, 0, 1]),
                "file_name": np.array([b"Abyssinian_1.jpg", b"Bombay_2.jpg", b"yorkshire_terrier_3.jpg"]),
            }
        )

    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, as_dataset_fn=decoded_as_dataset):
        records = list(read_tfds(TFDS_NAME, str(tmp_path), "test"))
    assert [(r.key, r.breed_name, r.species_name) for r in records] == [
        ("Abyssinian_1.jpg", "Abyssinian", "cat"),
        ("Bombay_2.jpg", "Bombay", "cat"),
        ("yorkshire_terrier_3.jpg", "yorkshire_terrier", "dog"),
    ]
    for r, expected in zip(records, pixels, strict=True):
        image = Image.open(io.BytesIO(r.image_bytes))
        assert image.format == "PNG"
        np.testing.assert_array_equal(np.asarray(image), expected)


@pytest.fixture(scope="module")
def prepared_tfds(tmp_path_factory):
    """(data_dir, raw_dir): a real prepared oxford_iiit_pet built offline from a 4-image raw layout."""
    raw = tmp_path_factory.mktemp("oxford-raw")
    data_dir = tmp_path_factory.mktemp("tfds")
    annotations = {
        # Bombay is a cat breed; SPECIES 2 (dog) contradicts it, and the reader must pass that on unchanged.
        "trainval.txt": ["Abyssinian_1 1 1 1", "beagle_2 5 2 1", "Bombay_4 8 2 2"],
        "test.txt": ["Bengal_3 6 1 2"],
    }
    for file_name, lines in annotations.items():
        (raw / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
        (raw / "annotations" / file_name).write_text("\n".join(lines) + "\n")
        for n, line in enumerate(lines):
            image = line.split()[0]
            write_image(raw / "images" / f"{image}.jpg", color=(10 * n, 20, 30))
            Image.new("L", (6, 5), 1).save(raw / "annotations" / "trimaps" / f"{image}.png")
    builder = tfds.builder(TFDS_NAME, data_dir=str(data_dir))
    # The builder's own generator runs on the local files; only the download step is replaced.
    with mock.patch.object(
        tfds.download.DownloadManager, "download_and_extract", lambda self, urls: dict.fromkeys(urls, raw)
    ):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)
        )
    return str(data_dir), raw


def test_prepared_tfds_gives_the_original_image_bytes_and_labels_by_name(prepared_tfds):
    data_dir, raw = prepared_tfds
    train = list(read_tfds(TFDS_NAME, data_dir, "train"))
    [test] = read_tfds(TFDS_NAME, data_dir, "test")
    assert sorted((r.key, r.species_name, r.breed_name, r.split_hint) for r in train) == [
        ("Abyssinian_1.jpg", "cat", "Abyssinian", "trainval"),
        ("Bombay_4.jpg", "dog", "Bombay", "trainval"),  # inconsistent, kept as given
        ("beagle_2.jpg", "dog", "beagle", "trainval"),
    ]
    assert [r.provenance.line_no for r in train] == [1, 2, 3]
    assert (test.key, test.species_name, test.breed_name, test.split_hint) == ("Bengal_3.jpg", "cat", "Bengal", "test")
    assert test.provenance == Provenance(f"tfds:{TFDS_NAME}/test", 1)
    for r in [*train, test]:
        assert r.image_bytes == (raw / "images" / r.key).read_bytes()  # not re-encoded
    assert [r.key for r in read_tfds(TFDS_NAME, data_dir, "train")] == [r.key for r in train]  # stable order


def test_unprepared_tfds_is_a_data_error_and_never_downloads(tmp_path):
    def no_download(*args, **kwargs):
        raise AssertionError("download_and_prepare must not be called")

    with (
        mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare", no_download),
        pytest.raises(DataError) as error,
    ):
        read_tfds(TFDS_NAME, str(tmp_path), "train")  # raised at once, before iterating
    message = str(error.value)
    assert f"not prepared in {tmp_path}" in message
    assert f"tfds build {TFDS_NAME} --data_dir {tmp_path}" in message
    assert "\n" not in message


def test_tfds_rejects_unknown_splits_and_data_sets(tmp_path):
    with pytest.raises(DataError, match="split 'validation' is not supported"):
        read_tfds(TFDS_NAME, str(tmp_path), "validation")
    with pytest.raises(DataError, match="no such TFDS data set"):
        read_tfds("no_such_pets_dataset", str(tmp_path), "train")


def test_encoded_image_passes_bytes_through_and_encodes_grey_arrays():
    assert encoded_image(b"\xff\xd8\xffdata") == b"\xff\xd8\xffdata"
    grey = np.array([[[0], [255]], [[128], [7]]], dtype=np.uint8)
    image = Image.open(io.BytesIO(encoded_image(grey)))
    assert (image.format, image.mode) == ("PNG", "L")
    np.testing.assert_array_equal(np.asarray(image), grey[:, :, 0])
    with pytest.raises(TypeError, match="float32"):
        encoded_image(np.zeros((2, 2, 3), np.float32))
