"""Every component reads and writes through tf.io.gfile: proven on TensorFlow's in-memory filesystem ram://, which
plain open()/os functions cannot reach (a stray one fails with "No such file" here). Stands in for gs:// / s3://."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import uuid

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components import fileio
from components.records import Provenance, Rejected, SourceRecord
from tests.components.test_report import PNG_SIGNATURE, _synthetic_metrics
from tests.conftest import TEST_EXPORT, TINY_TRAIN

IMAGE_SIZE = 64  # what the tiny_tfrecords fixture writes


# Two quirks of ram:// that real filesystems do not have: rewriting a file appends to it, and listing a directory
# also lists siblings whose names it prefixes ("assets" lists "assets.extra/x" as ".extra"), which makes
# tf.io.gfile.rmtree fail on a SavedModel (assets/ and assets.extra/). The helpers here step around both.


@pytest.fixture
def ram():
    """A fresh ram:// directory, emptied afterwards (the in-memory filesystem lives as long as the process)."""
    root = f"ram://petpipe-{uuid.uuid4().hex[:8]}"
    tf.io.gfile.makedirs(root)
    yield root
    for path in _files(root):
        tf.io.gfile.remove(path)


def _files(root: str) -> list[str]:
    return [os.path.join(directory, name) for directory, _, names in fileio.walk(root) for name in names]


def _put(path: str, data: bytes | str) -> str:
    tf.io.gfile.makedirs(os.path.dirname(path))
    if tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)  # ram:// appends to an existing file instead of truncating it
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return path


def _get(path: str) -> bytes:
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def _jpeg(color=(200, 30, 40), size=(6, 5)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="JPEG")
    return out.getvalue()


def _copy_tree(local: str, remote: str) -> str:
    for directory, _, files in os.walk(local):
        for name in files:
            source = os.path.join(directory, name)
            _put(os.path.join(remote, os.path.relpath(source, local)), _get(source))
    return remote


# --- fileio ----------------------------------------------------------------------------------------------------


def test_gfile_errors_are_the_oserrors_open_raises(tmp_path, ram):
    for root in (str(tmp_path), ram):
        missing = os.path.join(root, "missing.txt")
        with pytest.raises(FileNotFoundError) as error:
            fileio.read_bytes(missing)
        assert (error.value.strerror, error.value.filename) == ("No such file or directory", missing)
        with pytest.raises(FileNotFoundError):
            fileio.open_text(missing)  # at once, like open(), not at the first read
        with pytest.raises(IsADirectoryError):
            fileio.open_text(root)
    with pytest.raises(IsADirectoryError) as error:
        fileio.read_bytes(str(tmp_path))  # local: the "Is a directory" gfile reports on reading
    assert error.value.strerror == "Is a directory"


def test_open_text_streams_like_open(ram):
    path = _put(f"{ram}/m.csv", b"\xef\xbb\xbfa,b\r\n" + 'é,"x\r\ny"\n'.encode() * 5000)
    with fileio.open_text(path, encoding="utf-8-sig", newline="") as f:
        text = f.read()
    assert text == "a,b\r\n" + 'é,"x\r\ny"\n' * 5000  # BOM dropped, newlines untouched, across buffer chunks
    with fileio.open_text(path, encoding="utf-8-sig") as f:
        assert f.readline() == "a,b\n"  # universal newlines by default, as open()


def test_walk_lists_a_remote_tree_top_down(ram):
    for rel in ("b/2.txt", "a/1.txt", "top.txt", "a/deeper/3.txt"):
        _put(f"{ram}/{rel}", rel)
    seen = []
    for directory, dirnames, filenames in fileio.walk(ram):
        dirnames.sort()
        seen.append((directory, sorted(filenames)))
    assert seen == [
        (ram, ["top.txt"]),
        (f"{ram}/a", ["1.txt"]),
        (f"{ram}/a/deeper", ["3.txt"]),
        (f"{ram}/b", ["2.txt"]),
    ]
    errors = []
    assert list(fileio.walk(f"{ram}/nope", onerror=errors.append)) == []
    assert isinstance(errors[0], FileNotFoundError)


def test_absolute_leaves_urls_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert fileio.absolute("gs://bucket/pets") == "gs://bucket/pets"
    assert fileio.absolute("pets") == str(tmp_path / "pets")


# --- ingest and sources ----------------------------------------------------------------------------------------


def test_oxford_layout_on_ram(ram):
    from components.ingest import check_layout, image_stems, read_image_bytes, read_oxford_annotations

    data = f"{ram}/oxford"
    _put(f"{data}/images/Bengal_1.jpg", _jpeg())
    _put(f"{data}/images/pug_2.jpg", _jpeg((10, 10, 10)))
    _put(f"{data}/images/pug_2.mat", b"not an image")
    _put(f"{data}/annotations/trainval.txt", "#Image CLASS-ID SPECIES BREED ID\nBengal_1 6 1 2\nBengal_9 6 1 2\n")
    _put(f"{data}/annotations/test.txt", "pug_2 26 2 18\n")
    paths = check_layout(data)
    assert paths == [f"{data}/annotations/trainval.txt", f"{data}/annotations/test.txt"]
    assert image_stems(f"{data}/images") == ["Bengal_1", "pug_2"]
    records = [r for path in paths for r in read_oxford_annotations(path, f"{data}/images", 0.0)]
    assert [(r.key, r.image_path) for r in records] == [
        ("Bengal_1", f"{data}/images/Bengal_1.jpg"),
        ("Bengal_9", f"{data}/images/Bengal_9.jpg"),
        ("pug_2", f"{data}/images/pug_2.jpg"),
    ]
    assert read_image_bytes(records[0]) == _jpeg()
    with pytest.raises(Rejected, match="Bengal_9.jpg: no such file"):
        read_image_bytes(records[1])

    _put(f"{data}/annotations/test.txt", "")
    from common.errors import DataError

    with pytest.raises(DataError, match="test.txt: annotation file is empty"):
        check_layout(data)


def test_class_folders_on_ram(ram):
    from components.ingest import read_image_bytes
    from components.sources import ClassFolders

    root = f"{ram}/pets"
    _put(f"{root}/dog/pug/b.jpg", _jpeg())
    _put(f"{root}/cat/Bengal/a.png", _jpeg())
    _put(f"{root}/cat/Bengal/notes.txt", "x")
    _put(f"{root}/README.md", "x")
    source = ClassFolders(root)
    records = list(source)
    assert [(r.key, r.species_name, r.breed_name, r.image_path) for r in records] == [
        ("cat/Bengal/a.png", "cat", "Bengal", f"{root}/cat/Bengal/a.png"),
        ("dog/pug/b.jpg", "dog", "pug", f"{root}/dog/pug/b.jpg"),
    ]
    skipped = {path: why for path, why in source.skipped}
    assert sorted(skipped) == [f"{root}/README.md", f"{root}/cat/Bengal/notes.txt"]
    assert skipped[f"{root}/README.md"].startswith("wrong depth: 1 levels")
    assert skipped[f"{root}/cat/Bengal/notes.txt"].startswith("not an image file name (.txt)")
    assert read_image_bytes(records[1]) == _jpeg()


def test_csv_manifest_on_ram_resolves_relative_paths_under_its_url(ram):
    from components.ingest import read_image_bytes
    from components.sources import read_csv_manifest

    _put(f"{ram}/data/images/a.jpg", _jpeg())
    manifest = _put(
        f"{ram}/data/manifest.csv",
        "path,species,breed\nimages/a.jpg,cat,Bengal\n../other/b.jpg,dog,pug\ngs://bucket/c.jpg,dog,pug\n",
    )
    records = list(read_csv_manifest(manifest))
    assert [r.image_path for r in records] == [f"{ram}/data/images/a.jpg", f"{ram}/other/b.jpg", "gs://bucket/c.jpg"]
    assert records[0].provenance == Provenance(manifest, 2)
    assert read_image_bytes(records[0]) == _jpeg()
    assert read_image_bytes(SourceRecord("k", Provenance("t"), image_path=f"{ram}/data/images/a.jpg")) == _jpeg()


# --- written outputs -------------------------------------------------------------------------------------------


def test_report_is_written_to_ram(hierarchy, ram):
    from components.report import BREED_CONFUSION, INDEX, write_run_report

    out = f"{ram}/report"
    metrics = _synthetic_metrics(hierarchy)
    index = write_run_report(out, title="remote", metrics=metrics, history=None, hierarchy=hierarchy)
    assert index == f"{out}/{INDEX}"
    page = _get(index).decode("utf-8")
    assert "<h1>remote</h1>" in page and not tf.io.gfile.exists(index + ".tmp")
    images = [name for name in tf.io.gfile.listdir(out) if name.endswith(".png")]
    assert BREED_CONFUSION in images
    for name in images:
        assert f'src="{name}"' in page
        data = _get(f"{out}/{name}")
        assert data.startswith(PNG_SIGNATURE)
        assert Image.open(io.BytesIO(data)).size[0] > 100
    partial = {k: v for k, v in metrics.items() if k != "breed_confusion"}
    write_run_report(out, title="again", metrics=partial, history=None, hierarchy=hierarchy)
    assert not tf.io.gfile.exists(f"{out}/{BREED_CONFUSION}")  # the stale plot is removed remotely too


def test_statistics_report_is_written_to_ram(ram):
    from components.validation import Anomaly, write_validation_json

    anomaly = Anomaly("missing_class", "train", "breed", "no examples of breed pug", severe=True)
    write_validation_json(f"{ram}/span-0/statistics.json", {"train": {"examples": 3}}, [anomaly])
    report = json.loads(_get(f"{ram}/span-0/statistics.json"))
    assert report["statistics"] == {"train": {"examples": 3}} and report["anomalies"][0]["kind"] == "missing_class"


# --- export ----------------------------------------------------------------------------------------------------


def _png(color) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(out, format="PNG")
    return out.getvalue()


def test_export_to_ram_loads_back_and_serves(small_model, hierarchy, ram):
    from components.export import (
        DEFAULT_SIGNATURE,
        STAGING_PREFIX,
        WARMUP_FILE,
        existing_versions,
        export_model,
        read_model_config,
        write_model_config,
    )

    base = f"{ram}/serving/pets"
    version, path = export_model(small_model, hierarchy, base, 32, TEST_EXPORT, {"run": 1}, [_png(1)])
    assert (version, path) == (1, f"{base}/1")
    assert tf.io.gfile.exists(f"{path}/saved_model.pb") and tf.io.gfile.exists(f"{path}/{WARMUP_FILE}")
    assert json.loads(_get(f"{path}/assets.extra/petpipe.json")) == {"run": 1}
    assert _get(f"{path}/assets/breeds.txt").decode().splitlines() == hierarchy.breed_names
    assert not [f for f in _files(base) if STAGING_PREFIX in f]  # everything moved out of staging

    serve = tf.saved_model.load(path).signatures[DEFAULT_SIGNATURE]
    out = serve(image_bytes=tf.constant([_png((200, 30, 30)), _png((20, 200, 30))]))
    np.testing.assert_allclose(out["breed_probs"].numpy().sum(axis=1), 1.0, rtol=1e-5)
    expected = small_model(tf.zeros([1, 32, 32, 3]), training=False)["species"].numpy()
    blank = serve(image_bytes=tf.constant([b"not an image"]))  # answers for a blank image
    np.testing.assert_allclose(blank["species_probs"].numpy(), expected, rtol=1e-5)

    assert export_model(small_model, hierarchy, base, 32, TEST_EXPORT)[0] == 2
    assert existing_versions(base) == [1, 2]
    write_model_config(f"{ram}/serving", "pets", base)
    entry = read_model_config(f"{ram}/serving").model_config_list.config[0]
    assert entry.base_path == base  # a URL stays a URL (os.path.abspath would mangle it)


def test_retention_on_ram(ram):
    from components.export import apply_retention, existing_versions

    base = f"{ram}/serving/pets"
    for version in range(1, 5):
        _put(f"{base}/{version}/variables/variables.index", b"x")
    _put(f"{ram}/serving/models.config", 'model_config_list { config { name: "pets" base_path: "x" } }')
    assert apply_retention(f"{ram}/serving", "pets", base, keep=2) == [1, 2]
    assert existing_versions(base) == [3, 4] and not tf.io.gfile.exists(f"{base}/1/variables/variables.index")


@pytest.mark.parametrize("where", ["local", "ram"])
def test_a_taken_version_number_is_never_mixed_into(small_model, hierarchy, tmp_path, ram, monkeypatch, where):
    """Another export claims version 1 between our listing and our claim: we move on to 2, and 1 stays theirs."""
    from components import export

    base = str(tmp_path / "pets") if where == "local" else f"{ram}/pets"
    theirs = _put(os.path.join(base, "1", "assets.extra", "petpipe.json"), '{"theirs": true}')
    real, calls = export.existing_versions, []

    def listing(model_base_path):  # the first listing misses their version 1
        calls.append(model_base_path)
        return [] if len(calls) == 1 else real(model_base_path)

    monkeypatch.setattr(export, "existing_versions", listing)
    version, path = export.export_model(small_model, hierarchy, base, 32, TEST_EXPORT, {"theirs": False})
    assert (version, path) == (2, os.path.join(base, "2"))
    assert json.loads(_get(theirs)) == {"theirs": True}
    assert fileio.listdir(os.path.join(base, "1")) == ["assets.extra"]
    assert json.loads(_get(os.path.join(path, "assets.extra", "petpipe.json"))) == {"theirs": False}


# --- train -----------------------------------------------------------------------------------------------------


def test_training_reads_ram_records_and_writes_ram_checkpoints_and_logs(tiny_tfrecords, hierarchy, schema, ram):
    from components.train import balanced_class_weights, prepare_checkpoints, train_model
    from components.train_config import TrainingJob

    span = _copy_tree(tiny_tfrecords[0], f"{ram}/tfrecords/span-0")
    assert balanced_class_weights([span], hierarchy) == balanced_class_weights([tiny_tfrecords[0]], hierarchy)

    class Interrupted(Exception):
        pass

    def log(text):  # stop during epoch 2's end: epoch 1's checkpoint is written, as after a crash
        lines.append(text)
        if "epoch 2/" in text:
            raise Interrupted

    run_dir, lines = f"{ram}/train/multihead", []
    config = dataclasses.replace(TINY_TRAIN, epochs=3, batch_size=16)
    with pytest.raises(Interrupted):
        train_model(TrainingJob(config, [span], schema, hierarchy, IMAGE_SIZE, run_dir, log=log))
    checkpoints = f"{run_dir}/checkpoints"
    assert tf.io.gfile.exists(f"{checkpoints}/latest.weights.h5")  # Keras's BackupAndRestore, through gfile
    events = [name for _, _, names in fileio.walk(f"{run_dir}/tensorboard") for name in names]
    assert any(name.startswith("events.out.tfevents") for name in events)
    fingerprint = _get(f"{checkpoints}/fingerprint").decode()
    assert len(fingerprint) == 64

    # A re-run with the same data and settings keeps the checkpoint; other settings discard it.
    prepare_checkpoints(checkpoints, fingerprint, True, lines.append)
    assert "resuming" in lines[-1] and tf.io.gfile.exists(f"{checkpoints}/latest.weights.h5")
    prepare_checkpoints(checkpoints, "other", True, lines.append)
    assert "made for other data" in lines[-1] and not tf.io.gfile.exists(f"{checkpoints}/latest.weights.h5")

    # A complete run: history, and the checkpoint removed at the end.
    config = dataclasses.replace(TINY_TRAIN, batch_size=16)  # one epoch
    _, history = train_model(TrainingJob(config, [span], schema, hierarchy, IMAGE_SIZE, run_dir, log=lines.append))
    assert len(history["loss"]) == 1 and np.isfinite(history["loss"][0])
    assert not tf.io.gfile.exists(f"{checkpoints}/latest.weights.h5")
