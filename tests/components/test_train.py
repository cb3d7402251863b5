import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from components.model import build_backbone, build_multihead_model, with_augmentation
from components.preprocess import TFRECORD_SUFFIX, make_example, split_prefix
from components.train import balanced_class_weights, prepare_checkpoints, train_model
from components.train_config import TrainingJob
from tests.conftest import TINY_TRAIN
from tests.image_factory import jpeg_bytes


def test_mobilenet_backbone_loads_weights_from_a_local_file(tmp_path):
    source = build_backbone(32, (8,), "mobilenet_v3_small")
    path = str(tmp_path / "mobilenet.weights.h5")
    source.save_weights(path)
    loaded = build_backbone(32, (8,), "mobilenet_v3_small", path)
    assert len(loaded.weights) == len(source.weights) > 50
    for a, b in zip(source.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ValueError, match="cannot load mobilenet_v3_small backbone weights"):
        build_backbone(32, (8,), "mobilenet_v3_small", str(tmp_path / "missing.weights.h5"))


def test_augmentation_only_when_training(hierarchy):
    model = build_multihead_model(hierarchy, 32, TINY_TRAIN)
    images = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3)).astype("float32")
    first = model(images, training=False)["species"].numpy()
    np.testing.assert_array_equal(first, model(images, training=False)["species"].numpy())
    augmented = with_augmentation(model, 32, seed=1)
    assert model.get_layer("backbone") is augmented.layers[-1].get_layer("backbone")  # shared weights
    assert not np.allclose(augmented(images, training=True)["species"].numpy(), first)


def test_balanced_class_weights_from_train_statistics(hierarchy, tmp_path):
    breeds = {name: 10 for name in hierarchy.breed_names}
    breeds["Bengal"], breeds["pug"] = 40, 0
    span = tmp_path / "span-0"
    span.mkdir()
    (span / "statistics.json").write_text(json.dumps({"train": {"breeds": breeds}}))
    weights = balanced_class_weights([str(span)], hierarchy)
    cats = {b.name: w for b, w in zip(hierarchy.breeds_of["cat"], weights["cat"], strict=True)}
    assert cats["Bengal"] == pytest.approx(150 / (12 * 40))  # n_species / (n_breeds · n_breed)
    assert cats["Abyssinian"] == pytest.approx(150 / (12 * 10))
    dogs = {b.name: w for b, w in zip(hierarchy.breeds_of["dog"], weights["dog"], strict=True)}
    assert dogs["pug"] == 1.0  # no examples: neutral, not infinite


def test_checkpoint_of_other_settings_is_discarded(tmp_path):
    messages = []
    directory = tmp_path / "checkpoints"
    prepare_checkpoints(str(directory), "a", True, messages.append)
    (directory / "latest.weights.h5").write_bytes(b"x")
    prepare_checkpoints(str(directory), "a", True, messages.append)
    assert (directory / "latest.weights.h5").exists() and "resuming" in messages[-1]
    prepare_checkpoints(str(directory), "b", True, messages.append)
    assert not (directory / "latest.weights.h5").exists() and "made for other data or settings" in messages[-1]


# --- train_model on a few dozen examples, written as the data stage writes them ---------------------------------
TRAIN_IMAGE_SIZE = 32
CATS, DOGS = ("Abyssinian", "Bengal", "Persian"), ("beagle", "pug", "boxer")


def _write_span(directory, hierarchy, splits: dict[str, list[str]], first_seed: int = 0) -> str:
    """A span directory as the data stage leaves one: per split, a GZIP TFRecord shard named as WriteSplits names
    them, of the tf.train.Examples components.preprocess.make_example builds (here from small noisy JPEGs);
    `splits` maps a split to the breed names of its examples; a split's example i shows jpeg_bytes(first_seed + i).
    No statistics.json: the tests train without class weights."""
    for split, breeds in splits.items():
        prefix = split_prefix(str(directory), split)
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
        with tf.io.TFRecordWriter(f"{prefix}-00000-of-00001{TFRECORD_SUFFIX}", options="GZIP") as writer:
            for i, name in enumerate(breeds):
                b = hierarchy.by_name[name]
                jpeg = jpeg_bytes(first_seed + i, TRAIN_IMAGE_SIZE)
                example = make_example(
                    f"{name}_{i}", b.global_index, b.species_index, b.index_in_species, jpeg, hierarchy
                )
                writer.write(example.SerializeToString())
    return str(directory)


def _train(config, span: str, hierarchy, schema, run_dir=None, warm_start_weights=None, log=None):
    """The one call of components.train.train_model in this file: (model, history)."""
    job = TrainingJob(
        config=config,
        tfrecord_dirs=[span],
        schema=schema,
        hierarchy=hierarchy,
        image_size=TRAIN_IMAGE_SIZE,
        run_dir=run_dir,
        warm_start_weights=warm_start_weights,
        log=log or (lambda _: None),
    )
    return train_model(job)


# Component tests start from the shared tiny training; no class weights (the spans have no statistics.json).
SMALL_TRAIN = dataclasses.replace(TINY_TRAIN, batch_size=8, class_weights=False)


@pytest.fixture(scope="module")
def mixed_span(hierarchy, tmp_path_factory):
    """36 train and 12 eval examples, cats and dogs."""
    breeds = [*CATS, *DOGS]
    directory = tmp_path_factory.mktemp("mixed")
    _write_span(directory, hierarchy, {"train": breeds * 6})
    return _write_span(directory, hierarchy, {"eval": breeds * 2}, first_seed=100)  # other pictures


def test_an_interrupted_training_resumes_from_its_last_epoch_checkpoint(mixed_span, hierarchy, schema, tmp_path):
    class Interrupted(Exception):
        pass

    def stop_at_the_end_of_epoch_3(line):  # the progress line comes before epoch 3's checkpoint is written
        lines.append(line)
        if "epoch 3/4" in line:
            raise Interrupted

    config = dataclasses.replace(SMALL_TRAIN, epochs=4, early_stopping_patience=0)
    run_dir, lines = str(tmp_path / "train"), []
    with pytest.raises(Interrupted):
        _train(config, mixed_span, hierarchy, schema, run_dir, log=stop_at_the_end_of_epoch_3)
    checkpoints = tmp_path / "train" / "checkpoints"
    assert json.loads((checkpoints / "training_metadata.json").read_text())["epoch"] == 2  # epochs 1 and 2 saved
    assert (checkpoints / "latest.weights.h5").is_file()

    lines.clear()
    _, history = _train(config, mixed_span, hierarchy, schema, run_dir, log=lines.append)
    assert any("resuming from checkpoint" in line for line in lines)
    assert [line.split(":")[0].strip() for line in lines if "epoch " in line] == ["epoch 3/4", "epoch 4/4"]
    assert len(history["loss"]) == 2  # epochs 3 and 4 only: it continued, ending at 4 in all
    assert not checkpoints.joinpath("latest.weights.h5").exists()  # a finished training removes its checkpoint


def test_early_stopping_ends_training_when_val_loss_stops_improving(hierarchy, schema, tmp_path):
    # Train on dogs, validate on the same images labelled as cats: learning the train split can only make val_loss
    # worse after the first epoch.
    images = [*DOGS] * 6
    span = _write_span(tmp_path / "span", hierarchy, {"train": images})
    contradicting = [CATS[DOGS.index(name)] for name in images]
    _write_span(tmp_path / "span", hierarchy, {"eval": contradicting})  # the same pictures as train
    config = dataclasses.replace(SMALL_TRAIN, epochs=8, learning_rate=1e-2, early_stopping_patience=2)
    _, history = _train(config, span, hierarchy, schema)
    epochs_run = len(history["val_loss"])
    assert epochs_run < config.epochs
    best = int(np.argmin(history["val_loss"]))
    assert epochs_run == best + 1 + config.early_stopping_patience  # stopped after `patience` epochs without gain


def test_the_masked_breed_loss_trains_only_the_heads_of_the_examples_species(hierarchy, schema, tmp_path):
    """Dog examples carry label/cat_breed = -1: through train_model, they reach the species and dog breed heads and
    leave the cat breed head exactly as it was (the loss itself: tests/components/test_model.py)."""
    span = _write_span(tmp_path / "dogs", hierarchy, {"train": [*DOGS] * 8})  # no eval split: no early stopping
    config = dataclasses.replace(SMALL_TRAIN, epochs=2, learning_rate=1e-2)
    initial = build_multihead_model(hierarchy, TRAIN_IMAGE_SIZE, config)
    weights = str(tmp_path / "initial.weights.h5")
    initial.save_weights(weights)

    lines = []
    model, history = _train(config, span, hierarchy, schema, warm_start_weights=weights, log=lines.append)
    assert any("warm start from" in line for line in lines)  # it started from `initial`'s weights
    assert history["cat_breed_loss"] == [0.0, 0.0]  # every label of the cat breed head is -1: no loss at all
    assert all(loss > 0 for loss in history["dog_breed_loss"])

    def head(m, name):
        return [w.numpy() for w in m.get_layer(name).weights]

    for before, after in zip(head(initial, "cat_breed"), head(model, "cat_breed"), strict=True):
        np.testing.assert_array_equal(before, after)  # no gradient reached it: Adam moved it by exactly 0
    for name in ("dog_breed", "species"):
        kernel_before, kernel_after = head(initial, name)[0], head(model, name)[0]
        assert not np.allclose(kernel_before, kernel_after), f"{name} did not train"
