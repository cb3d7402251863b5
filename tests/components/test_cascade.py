import dataclasses
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components import cascade
from components.cascade import build_cascade, species_examples, train_cascade
from components.export import DEFAULT_SIGNATURE, export_model
from components.model import build_multihead_model
from components.train_config import TrainConfig, TrainingJob
from tests.conftest import TEST_EXPORT, TINY_TRAIN

pytestmark = pytest.mark.slow  # trains, runs Beam jobs or subprocess servers: left out of make test-fast

IMAGE_SIZE = 64  # what the tiny_tfrecords fixture writes (preprocess.image_size default)


def _config(**changes) -> TrainConfig:
    """The shared tiny training (tests/conftest.py) in batches of 16, with augmentation as by default."""
    return dataclasses.replace(TINY_TRAIN, **{"batch_size": 16, "augment": True, **changes})


def _train_breed_counts(tfrecord_dir: str, hierarchy) -> dict[str, int]:
    with open(os.path.join(tfrecord_dir, "statistics.json")) as f:
        breeds = json.load(f)["train"]["breeds"]
    return {s: sum(breeds.get(b.name, 0) for b in hierarchy.breeds_of[s]) for s in hierarchy.species}


@pytest.fixture(scope="module")
def trained(tiny_tfrecords, hierarchy, schema):
    """(combined model, history) of one tiny cascade training; no run_dir (its callbacks are train.fit's)."""
    return train_cascade(TrainingJob(_config(), [tiny_tfrecords[0]], schema, hierarchy, IMAGE_SIZE, log=lambda _: None))


def _jpeg(color, size=(50, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_combined_model_has_the_multihead_outputs(trained, hierarchy):
    model, history = trained
    multihead = build_multihead_model(hierarchy, IMAGE_SIZE, _config())
    images = tf.random.uniform([3, IMAGE_SIZE, IMAGE_SIZE, 3], 0, 255)
    out = model(images, training=False)
    assert sorted(out) == sorted(multihead(images, training=False))
    assert out["species"].shape == (3, 2)
    assert out["cat_breed"].shape == (3, 12) and out["dog_breed"].shape == (3, 25)
    for probs in out.values():
        np.testing.assert_allclose(probs.numpy().sum(axis=1), 1.0, rtol=1e-5)
    for head in ("species", "cat_breed", "dog_breed"):
        assert len(history[f"{head}/loss"]) == 1  # epochs=1 for every sub-model
        assert f"{head}/val_accuracy" in history


def test_species_examples_keeps_only_that_species():
    species = tf.constant([0, 1, 0, 1, 1, 0, 1], tf.int64)
    labels = {
        "species": species,
        "cat_breed": tf.where(species == 0, tf.constant(3, tf.int64), -1),
        "dog_breed": tf.where(species == 1, tf.constant(7, tf.int64), -1),
    }
    images = tf.zeros([7, 4, 4, 3], tf.uint8)
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(3)  # batches like labelled_batches's
    cats = list(species_examples(batches, 0))
    assert len(cats) == 3
    assert all(int(labels["species"]) == 0 for _, labels in cats)
    assert all(int(labels["cat_breed"]) == 3 for _, labels in cats)  # never -1 inside the subset
    dogs = list(species_examples(batches, 1))
    assert len(dogs) == 4 and {int(labels["species"]) for _, labels in dogs} == {1}


def test_each_breed_model_is_fed_only_its_species(tiny_tfrecords, hierarchy, schema, monkeypatch, tmp_path):
    seen = {}

    def recording_fit(model, train, validation, config, log, run_dir=None, fingerprint=""):
        labels = np.concatenate([y.numpy() for _, y in train])
        seen[model.name] = (labels, int(train.cardinality()))
        assert run_dir == str(tmp_path / model.name)  # own checkpoints and TensorBoard logs per sub-model
        assert validation is not None and config.epochs == 1
        return {"loss": [0.5], "val_loss": [0.7]}

    monkeypatch.setattr(cascade, "fit", recording_fit)
    tfrecord_dir, counts = tiny_tfrecords
    _, history = train_cascade(
        TrainingJob(_config(), [tfrecord_dir], schema, hierarchy, IMAGE_SIZE, str(tmp_path), log=lambda _: None)
    )
    assert history["cat_breed/val_loss"] == [0.7] and history["species/loss"] == [0.5]
    species_labels, _ = seen["species"]
    assert len(species_labels) == counts["train"]
    per_species = _train_breed_counts(tfrecord_dir, hierarchy)
    for species, breeds in hierarchy.breeds_of.items():
        labels, batches = seen[f"{species}_breed"]
        assert len(labels) == per_species[species] == np.sum(species_labels == hierarchy.species.index(species))
        assert labels.min() >= 0 and labels.max() < len(breeds)
        assert batches == -(-len(labels) // 16)  # the declared cardinality matches the filtered data


def test_export_matches_the_multihead_signature(trained, hierarchy, tmp_path):
    model = trained[0]
    _, cascade_path = export_model(model, hierarchy, str(tmp_path / "cascade"), IMAGE_SIZE, TEST_EXPORT)
    multihead = build_multihead_model(hierarchy, IMAGE_SIZE, _config())
    _, multihead_path = export_model(multihead, hierarchy, str(tmp_path / "multihead"), IMAGE_SIZE, TEST_EXPORT)
    serve = tf.saved_model.load(cascade_path).signatures[DEFAULT_SIGNATURE]
    reference = tf.saved_model.load(multihead_path).signatures[DEFAULT_SIGNATURE]
    assert sorted(serve.structured_outputs) == sorted(reference.structured_outputs)
    images = tf.constant([_jpeg((200, 30, 30)), _jpeg((20, 200, 30), size=(90, 30)), _jpeg((90, 90, 90))])
    out = {k: v.numpy() for k, v in serve(image_bytes=images).items()}
    assert out["breed_probs"].shape == (3, 37)
    np.testing.assert_allclose(out["breed_probs"].sum(axis=1), 1.0, rtol=1e-5)
    for i in range(3):  # the species answer routes the breed answer
        species = out["species"][i].decode()
        assert all(hierarchy.by_name[b.decode()].species == species for b in out["top_k_breeds"][i])


def test_cascade_has_more_parameters_than_multihead(hierarchy):
    combined, models = build_cascade(hierarchy, IMAGE_SIZE, _config())
    multihead = build_multihead_model(hierarchy, IMAGE_SIZE, _config())
    assert combined.count_params() == sum(m.count_params() for m in models.values())
    assert combined.count_params() > multihead.count_params()


@pytest.mark.filterwarnings("ignore:Skipping nested container")  # Keras, while failing to load foreign weights
def test_weights_round_trip_and_warm_start_failure_is_logged(trained, tiny_tfrecords, hierarchy, schema, tmp_path):
    model = trained[0]
    path = str(tmp_path / "cascade.weights.h5")
    model.save_weights(path)
    fresh, _ = build_cascade(hierarchy, IMAGE_SIZE, _config(augment=True))
    fresh.load_weights(path)
    images = tf.random.uniform([2, IMAGE_SIZE, IMAGE_SIZE, 3], 0, 255)
    expected, loaded = model(images), fresh(images)
    for head in expected:
        np.testing.assert_allclose(loaded[head], expected[head], rtol=1e-5)

    wrong = str(tmp_path / "multihead.weights.h5")
    build_multihead_model(hierarchy, IMAGE_SIZE, _config()).save_weights(wrong)
    lines = []
    train_cascade(
        TrainingJob(_config(), [tiny_tfrecords[0]], schema, hierarchy, IMAGE_SIZE, None, wrong, log=lines.append)
    )
    assert any("not warm-starting" in line for line in lines)
