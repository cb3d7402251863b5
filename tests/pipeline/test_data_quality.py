"""Issue 3's bar: a data set with every kind of dirt runs through `petpipe run`; nothing is lost or let through."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from components.preprocess import decode_and_resize, quarantine_path, split_pattern
from components.train import parse_spec
from pipeline.cli import main
from schemas import breed_feature
from tests.conftest import TINY_TRAINING, set_flags
from tests.dirty_data import make_dirty_dataset
from tests.image_factory import BLUE, GREEN, RED, WHITE


@pytest.fixture(scope="module")
def dirty_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dirty")
    dirty = make_dirty_dataset(root / "data")
    work = root / "work"
    argv = ["run", "--data-dir", str(dirty.root), "--work-dir", str(work), "--max-bad-fraction", "0.2"]
    code = main(argv + set_flags(TINY_TRAINING, "preprocess.image_size=48"))
    return dirty, work / "tfrecords" / "span-0", code


def _examples(span_dir, schema):
    spec = parse_spec(schema)
    found = {}
    for split in ("train", "eval", "test"):
        files = tf.io.gfile.glob(split_pattern(str(span_dir), split))
        for serialized in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            example = tf.io.parse_single_example(serialized, spec)
            key = example["image/filename"].numpy().decode()[: -len(".jpg")]
            assert key not in found, f"{key} written twice"
            found[key] = (split, example)
    return found


def _quarantine(span_dir):
    entries = {}
    for split in ("train", "eval", "test"):
        with open(quarantine_path(str(span_dir), split)) as f:
            for line in f:
                entry = json.loads(line)
                assert entry["split"] == split
                entries[entry["key"]] = entry
    return entries


def test_run_succeeds_under_the_threshold_and_accounts_for_every_record(dirty_run, capsys):
    dirty, span_dir, code = dirty_run
    assert code == 0
    spans = json.loads((span_dir.parent.parent / "spans.json").read_text())["0"]
    for split in ("train", "eval", "test"):
        assert spans["written"][split] + spans["quarantined"][split] == spans["records"][split]
    assert sum(spans["records"].values()) == dirty.records
    assert spans["unannotated_images"] == dirty.unannotated
    assert spans["duplicate_lines"] == dirty.duplicates


def test_every_bad_record_is_quarantined_with_its_reason(dirty_run):
    dirty, span_dir, _ = dirty_run
    entries = _quarantine(span_dir)
    assert {key: e["reason"] for key, e in entries.items()} == dirty.quarantined
    for entry in entries.values():
        assert entry["file"].endswith(".txt") and entry["line"] >= 1 and entry["stage"] and entry["message"]


def test_odd_but_decodable_images_are_kept_with_correct_labels(dirty_run, hierarchy, schema):
    dirty, span_dir, _ = dirty_run
    examples = _examples(span_dir, schema)
    assert not set(examples) & set(dirty.quarantined)  # nothing bad was written
    assert len(examples) + len(dirty.quarantined) == dirty.records
    for key in dirty.kept_odd:
        _, example = examples[key]
        breed = hierarchy.by_name[key.rsplit("_", 1)[0]]
        assert int(example["label/breed"]) == breed.global_index
        assert int(example["label/species"]) == breed.species_index
        for index, species in enumerate(hierarchy.species):
            expected = breed.index_in_species if index == breed.species_index else -1
            assert int(example[breed_feature(species)]) == expected


def test_exif_rotated_image_is_stored_upright(dirty_run, schema):
    dirty, span_dir, _ = dirty_run
    _, example = _examples(span_dir, schema)[dirty.upright_key]
    image = decode_and_resize(example["image/encoded"], 48).numpy().astype(int)  # 80x40 → 48x24, rows 12..35
    for (y, x), colour in {(17, 12): RED, (17, 36): GREEN, (30, 12): BLUE, (30, 36): WHITE}.items():
        assert np.abs(image[y, x] - colour).max() <= 40, (y, x, image[y, x])


def test_statistics_and_validation_report_exist(dirty_run, hierarchy):
    dirty, span_dir, _ = dirty_run
    report = json.loads((span_dir / "validation.json").read_text())
    train = report["statistics"]["train"]
    assert train["records"] == sum(train["breeds"].values()) == sum(train["species"].values())
    assert set(train["breeds"]) == set(hierarchy.breed_names)
    assert sum(sum(s["quarantined"].values()) for s in report["statistics"].values()) == len(dirty.quarantined)
    kinds = {a["kind"] for a in report["anomalies"]}
    assert "quarantine" in kinds and not any(a["severe"] for a in report["anomalies"])
    assert (span_dir / "schema.pbtxt").is_file()


def test_default_threshold_fails_after_writing_the_quarantine(tmp_path, capsys):
    dirty = make_dirty_dataset(tmp_path / "data")
    work = tmp_path / "work"
    code = main(["run", "--data-dir", str(dirty.root), "--work-dir", str(work), *set_flags(TINY_TRAINING)])
    err = capsys.readouterr().err
    assert code == 3
    assert "quarantined, above data.max_bad_fraction 5.0%" in err and "Traceback" not in err
    assert os.path.getsize(quarantine_path(str(work / "tfrecords" / "span-0"), "train")) > 0
    assert not (work / "spans.json").exists()  # the span is not recorded as usable
    assert not list((work / "serving" / "pets").iterdir())  # nothing trained or exported (the directory was checked)
