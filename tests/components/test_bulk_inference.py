"""components/bulk_inference.py without a Beam job: the model handler, the version and input rules, the commit."""

from __future__ import annotations

import os

import pytest

from common.errors import PetpipeError
from components.bulk_inference import (
    SUCCESS_FILE,
    ServingSignatureHandler,
    commit_output,
    resolve_inputs,
    resolve_version,
    staging_dir,
)
from tests.image_factory import DAMAGED_JPEG, jpeg_bytes


def test_a_damaged_image_fails_only_its_own_row_not_the_batch(exported_model):
    served = resolve_version(exported_model[0])
    handler = ServingSignatureHandler(served, max_batch_size=8)
    model = handler.load_model()
    batch = [jpeg_bytes(1), DAMAGED_JPEG, b"no picture, only words", jpeg_bytes(2)]

    answers = [result.inference for result in handler.run_inference(batch, model)]

    whole = [result.inference for result in handler.run_inference([batch[0], batch[3]], model)]
    assert answers[2].error == "not a JPEG, PNG, GIF or BMP image"  # reported by the graph, batch unharmed
    assert answers[1].error.startswith("cannot decode image: ") and answers[1].top_k == []
    assert (answers[0].error, answers[3].error) == ("", "")
    assert (answers[0].breed, answers[3].breed) == (whole[0].breed, whole[1].breed)
    assert answers[0].species_probs == pytest.approx(whole[0].species_probs, abs=1e-6)
    assert {a.version for a in answers} == {served.version}
    assert handler.get_num_bytes(batch) == sum(map(len, batch))


def test_the_latest_version_is_taken_unless_one_is_named(exported_model, tmp_path):
    base, version, path = exported_model
    assert resolve_version(base).path == path and resolve_version(base).version == version
    assert resolve_version(path + "/").version == version
    assert resolve_version(base).species_names == ("cat", "dog")
    os.makedirs(tmp_path / "pets" / "not-a-version")
    with pytest.raises(PetpipeError, match=f"{tmp_path / 'pets'}: no model versions there"):
        resolve_version(str(tmp_path / "pets"))
    os.makedirs(tmp_path / "pets" / "7")  # a version without its SavedModel (a half-copied upload)
    with pytest.raises(PetpipeError, match="7: latest version has no saved_model.pb"):
        resolve_version(str(tmp_path / "pets"))


def test_inputs_are_images_of_a_directory_else_its_tfrecords(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "b.PNG").write_bytes(b"x")
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    (tmp_path / "photos" / "notes.txt").write_text("x")
    (tmp_path / "span" / "test").mkdir(parents=True)
    (tmp_path / "span" / "test" / "test-00000-of-00001.tfrecord.gz").write_bytes(b"")
    (tmp_path / "span" / "statistics.json").write_text("{}")

    inputs = resolve_inputs([str(tmp_path / "photos"), str(tmp_path / "span"), str(tmp_path / "photos" / "*.txt")])

    photos = tmp_path / "photos"
    assert inputs.images == (str(photos / "a.jpg"), str(photos / "b.PNG"), str(photos / "notes.txt"))
    assert inputs.tfrecords == (str(tmp_path / "span" / "test" / "test-00000-of-00001.tfrecord.gz"),)
    with pytest.raises(PetpipeError, match="nothing.jpg: no image or TFRecord files there"):
        resolve_inputs([str(tmp_path / "nothing.jpg")])


def test_commit_renames_the_staging_directory_into_place_with_success_inside(tmp_path):
    output = str(tmp_path / "out")
    staging = staging_dir(output)
    assert os.path.dirname(staging) == str(tmp_path) and os.path.basename(staging).startswith(".out.staging-")
    os.makedirs(staging)
    with open(os.path.join(staging, "answers-00000-of-00001.jsonl"), "w") as f:
        f.write("{}\n")

    commit_output(staging, output, {"rows": 1})

    assert sorted(os.listdir(output)) == ["_SUCCESS", "answers-00000-of-00001.jsonl"] and not os.path.exists(staging)
    with open(os.path.join(output, SUCCESS_FILE)) as f:
        assert '"rows": 1' in f.read()


def test_commit_to_a_url_moves_the_shards_then_writes_success_last(tmp_path):
    import tensorflow as tf

    output, staging = "ram://bulk-inference/out", "ram://bulk-inference/.out.staging-1"
    tf.io.gfile.makedirs(staging)
    with tf.io.gfile.GFile(f"{staging}/answers-00000-of-00001.jsonl", "w") as f:
        f.write("{}\n")

    commit_output(staging, output, {"rows": 1})

    assert sorted(tf.io.gfile.listdir(output)) == ["_SUCCESS", "answers-00000-of-00001.jsonl"]
    assert not tf.io.gfile.exists(f"{staging}/answers-00000-of-00001.jsonl")
