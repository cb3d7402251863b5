"""Sources beyond the Oxford layout, spans, drift, and a hierarchy that is not cat/dog — through the real stages."""

import csv
import json
import os
import shutil

import pytest
import tensorflow as tf

from common.errors import ValidationError
from components import records as rec
from components.preprocess import quarantine_path, split_pattern
from datasources.synthetic_pets import write_synthetic_pets
from pipeline.config import load_config
from pipeline.run import run_pipeline
from pipeline.spans import load_spans, span_window
from pipeline.stages.data import ingest_spans, run_span_job
from schemas import Hierarchy, schema_for
from tests.conftest import TINY_TRAINING

pytestmark = pytest.mark.slow  # trains, runs Beam jobs or subprocess servers: left out of make test-fast


def _written(span_dir: str) -> int:
    files = [f for split in ("train", "eval", "test") for f in tf.io.gfile.glob(split_pattern(span_dir, split))]
    return sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))


def _as_folders_and_csv(oxford_dir, hierarchy, out):
    """The same images as class folders (root/<species>/<breed>/) and as a CSV manifest next to them."""
    rows = []
    for name in sorted(os.listdir(os.path.join(oxford_dir, "images"))):
        breed = hierarchy.by_name[name.rsplit("_", 1)[0]]
        folder = out / "folders" / breed.species / breed.name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(oxford_dir, "images", name), folder / name)
        rows.append((f"folders/{breed.species}/{breed.name}/{name}", breed.species, breed.name))
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "species", "breed"])
        writer.writerows(rows)
        writer.writerow(["folders/cat/Bengal/nope.jpg", "cat", "Bengal"])  # a missing file
        writer.writerow(["folders/cat/Bengal/Bengal_1.jpg", "dog", "Bengal"])  # the same image, other labels
    (out / "folders" / "README.txt").write_text("not an image")
    return len(rows)


@pytest.mark.parametrize("source", ["folders", "csv"])
def test_folders_and_csv_sources(source, tiny_data, hierarchy, schema, tmp_path):
    images = _as_folders_and_csv(tiny_data, hierarchy, tmp_path)
    data_dir = tmp_path / ("folders" if source == "folders" else "manifest.csv")
    config = load_config(
        None,
        [
            f"work_dir={tmp_path / 'work'}",
            f"data.source={source}",
            f"data.data_dir={data_dir}",
            "data.test_fraction=0.3",
        ],
    )
    result = run_span_job(config, str(data_dir), 0, hierarchy, schema, [])
    assert result.written["test"] > 0 and result.written["train"] > result.written["test"]
    if source == "folders":
        assert _written(result.tfrecord_dir) == sum(result.written.values()) == images
        assert result.ignored_files == 1 and sum(result.quarantined.values()) == 0
    else:  # Bengal_1 is listed twice with different labels: neither copy can be trusted
        assert _written(result.tfrecord_dir) == sum(result.written.values()) == images - 1
        assert result.reasons == {rec.MISSING_FILE: 1, rec.CONFLICTING_DUPLICATE: 1}
    for split in ("train", "eval", "test"):
        assert result.written[split] + result.quarantined[split] == result.records[split]


def test_tfds_mock_data_maps_labels_by_name_and_quarantines_inconsistent_ones(hierarchy, schema, tmp_path):
    import tensorflow_datasets as tfds

    overrides = [
        f"work_dir={tmp_path}",
        "data.source=tfds",
        f"data.tfds_data_dir={tmp_path / 'tfds'}",
        "data.min_image_side=1",
    ]
    with tfds.testing.mock_data(num_examples=24):
        both = run_span_job(load_config(None, overrides), None, 0, hierarchy, schema, [])
        # mock_data serves the same 24 files as TFDS train and as TFDS test: each one is a train/test leak
        assert both.reasons == {rec.CONFLICTING_DUPLICATE: 24} and sum(both.written.values()) == 0
        config = load_config(None, [*overrides, "data.tfds_splits=test"])
        result = run_span_job(config, None, 0, hierarchy, schema, [])
    assert result.records == {"train": 0, "eval": 0, "test": 24}
    # mock labels are random: breed and species disagree for about half of them, and those are quarantined
    assert 0 < result.reasons.get(rec.INCONSISTENT_LABEL, 0) < 24
    assert result.written["test"] + result.quarantined["test"] == 24 and result.written["test"] > 0
    with open(quarantine_path(result.tfrecord_dir, "test")) as f:
        entry = json.loads(f.readline())
    assert entry["file"] == "tfds:oxford_iiit_pet/test" and entry["line"] >= 1


def _span_input(base, hierarchy, drop_breed=None):
    """base/span-1 and base/span-2 (another seed); span 2 optionally without one breed."""
    for span, seed in ((1, 1), (2, 2)):
        write_synthetic_pets(base / f"span-{span}", per_breed=4, seed=seed)
    if drop_breed:
        annotations = base / "span-2" / "annotations"
        for name in ("trainval.txt", "test.txt", "list.txt"):
            lines = (annotations / name).read_text().splitlines(keepends=True)
            (annotations / name).write_text("".join(x for x in lines if not x.startswith(f"{drop_breed}_")))
        for image in (base / "span-2" / "images").glob(f"{drop_breed}_*"):
            image.unlink()


def test_spans_latest_range_and_window(hierarchy, schema, tmp_path):
    _span_input(tmp_path / "in", hierarchy)
    config = load_config(None, [f"work_dir={tmp_path / 'work'}", "data.eval_fraction=0"])
    latest = ingest_spans(config, str(tmp_path / "in"), hierarchy, schema, [])
    assert [r.span for r in latest] == [2]
    both = ingest_spans(
        load_config(None, [f"work_dir={tmp_path / 'work'}", "data.spans=1-2"]),
        str(tmp_path / "in"),
        hierarchy,
        schema,
        [],
    )
    assert [r.span for r in both] == [1, 2]
    assert sorted(load_spans(str(tmp_path / "work"))) == [1, 2]
    window = span_window(str(tmp_path / "work"), 2)
    assert [os.path.basename(d) for d in window] == ["span-1", "span-2"]
    assert _written(window[0]) == _written(window[1]) == 37 * 4


def test_a_breed_missing_from_a_new_span_is_flagged_and_stops_the_run(hierarchy, schema, tmp_path):
    _span_input(tmp_path / "in", hierarchy, drop_breed="pug")
    work = tmp_path / "work"
    ingest_spans(load_config(None, [f"work_dir={work}", "data.spans=1"]), str(tmp_path / "in"), hierarchy, schema, [])
    with pytest.raises(ValidationError, match="pug"):
        ingest_spans(
            load_config(None, [f"work_dir={work}", "data.spans=2"]), str(tmp_path / "in"), hierarchy, schema, []
        )
    report = json.loads((work / "tfrecords" / "span-2" / "validation.json").read_text())
    kinds = {(a["kind"], a["severe"]) for a in report["anomalies"]}
    assert ("missing_class", True) in kinds and ("distribution_drift", False) in kinds
    assert sorted(load_spans(str(work))) == [1]  # span 2 is not offered to the trainer


def test_whole_pipeline_with_three_species_groups(tmp_path):
    hierarchy_file = tmp_path / "hierarchy.json"
    breeds = [
        ("Alpha", "cat"),
        ("bravo", "dog"),
        ("Charlie", "bird"),
        ("delta", "cat"),
        ("echo", "dog"),
        ("Foxtrot", "bird"),
        ("golf", "bird"),
    ]
    hierarchy_file.write_text(
        json.dumps({"species": ["cat", "dog", "bird"], "breeds": [{"name": n, "species": s} for n, s in breeds]})
    )
    hierarchy = Hierarchy.from_dict(json.loads(hierarchy_file.read_text()))
    write_synthetic_pets(tmp_path / "data", per_breed=6, seed=3, hierarchy=hierarchy)
    config = load_config(
        None,
        [
            f"work_dir={tmp_path / 'work'}",
            f"data.data_dir={tmp_path / 'data'}",
            f"data.hierarchy={hierarchy_file}",
            *TINY_TRAINING,
            "train.epochs=2",  # two epochs on 42 images, not one
        ],
    )
    summary = run_pipeline(config, [])
    features = {f.name for f in schema_for(hierarchy).feature}
    assert {"label/cat_breed", "label/dog_breed", "label/bird_breed"} <= features
    assert sum(summary.counts.values()) == 42
    loaded = tf.saved_model.load(summary.version_path)
    with open(os.path.join(tmp_path / "data" / "images", "Charlie_1.jpg"), "rb") as f:
        out = loaded.signatures["serving_default"](image_bytes=tf.constant([f.read()]))
    assert out["bird_breed_probs"].shape == (1, 3) and out["breed_probs"].shape == (1, 7)
    assert out["species_probs"].shape == (1, 3)
    answer_species = out["species"].numpy()[0].decode()
    assert hierarchy.by_name[out["breed"].numpy()[0].decode()].species == answer_species
    assert len(summary.answers) == 3
