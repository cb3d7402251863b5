"""Train: tf.data over the preprocess stage's TFRecords → the multi-head model (components/model.py).

The parse spec comes from schemas/schema.pbtxt, and images go through the same decode_and_resize as in
preprocessing and serving.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil

import keras
import tensorflow as tf

from components.model import SPECIES_HEAD, breed_head, build_multihead_model, compile_multihead, with_augmentation
from components.preprocess import TFRECORD_SUFFIX, decode_and_resize, split_pattern
from pipeline.config import TrainConfig
from pipeline.errors import DataError
from schemas import IMAGE_ENCODED, LABEL_BREED, LABEL_SPECIES, Hierarchy, breed_feature


def _feature_dtype(feature) -> tf.DType:
    from tensorflow_metadata.proto.v0 import schema_pb2

    return {schema_pb2.BYTES: tf.string, schema_pb2.INT: tf.int64, schema_pb2.FLOAT: tf.float32}[feature.type]


def parse_spec(schema) -> dict[str, tf.io.FixedLenFeature]:
    """tf.io parse spec for every feature of a TFMD schema (all are required scalars here)."""
    return {f.name: tf.io.FixedLenFeature([], _feature_dtype(f)) for f in schema.feature}


def parse_labelled_example(serialized: tf.Tensor, spec: dict, hierarchy: Hierarchy, image_size: int):
    """Serialized tf.train.Example → (uint8 image [H,W,3], {head name: label}) with -1 for other species."""
    parsed = tf.io.parse_single_example(serialized, spec)
    image = decode_and_resize(parsed[IMAGE_ENCODED], image_size)
    labels = {SPECIES_HEAD: parsed[LABEL_SPECIES]}
    for species in hierarchy.species:
        labels[breed_head(species)] = parsed[breed_feature(species)]
    labels["breed"] = parsed[LABEL_BREED]
    return image, labels


def tfrecord_files(patterns: str | list[str]) -> list[str]:
    patterns = [patterns] if isinstance(patterns, str) else patterns
    return sorted(f for p in patterns for f in tf.io.gfile.glob(p))


def count_records(patterns: str | list[str]) -> int:
    return sum(1 for _ in tf.data.TFRecordDataset(tfrecord_files(patterns), compression_type="GZIP"))


def make_dataset(
    patterns: str | list[str],
    schema,
    hierarchy: Hierarchy,
    image_size: int,
    batch_size: int,
    training: bool,
    shuffle_buffer: int = 2048,
    seed: int = 0,
    keep_breed: bool = False,
) -> tf.data.Dataset:
    """Batches of (image, labels) from GZIP TFRecords: parallel reads, parse, decode, cache, shuffle, prefetch.

    The decoded images are cached in memory after the first pass (64 px × 3 bytes each); with `training`, the
    order is reshuffled every epoch and images get a random left-right flip (pets are symmetric).
    """
    files = tfrecord_files(patterns)
    if not files:
        raise DataError(f"{patterns}: no TFRecord files; run the preprocess stage first")
    records = count_records(files)
    spec = parse_spec(schema)
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=tf.data.AUTOTUNE)
    dataset = dataset.map(
        lambda s: parse_labelled_example(s, spec, hierarchy, image_size), num_parallel_calls=tf.data.AUTOTUNE
    )
    if not keep_breed:
        dataset = dataset.map(lambda image, labels: (image, {k: v for k, v in labels.items() if k != "breed"}))
    # Known size: Keras then knows where an epoch ends instead of running into the end of the data.
    dataset = dataset.cache().apply(tf.data.experimental.assert_cardinality(records))
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.map(
            lambda image, labels: (tf.image.random_flip_left_right(image, seed=seed), labels),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


class _EpochProgress(keras.callbacks.Callback):
    """One line per epoch through `log`, so long training shows progress outside a terminal too."""

    def __init__(self, log, epochs: int):
        super().__init__()
        self.log = log
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        shown = {k: v for k, v in logs.items() if k == "loss" or k.endswith("accuracy")}
        text = " ".join(f"{k}={v:.3f}" for k, v in sorted(shown.items()))
        self.log(f"  epoch {epoch + 1}/{self.epochs}: {text}")


class CheckpointError(Exception):
    """The resume checkpoint exists but cannot be read."""


class _BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras's epoch checkpoints for resuming, with an unreadable checkpoint reported as such."""

    def on_train_begin(self, logs=None):
        try:
            super().on_train_begin(logs)
        except Exception as exc:
            raise CheckpointError(f"{self.backup_dir}: cannot restore the checkpoint ({exc})") from exc


def prepare_checkpoints(checkpoint_dir: str, fingerprint: str, resume: bool, log) -> None:
    """Keep the checkpoint of an interrupted run only if it was made for the same data and settings."""
    marker = os.path.join(checkpoint_dir, "fingerprint")
    if os.path.isdir(checkpoint_dir):
        previous = ""
        if os.path.exists(marker):
            with open(marker) as f:
                previous = f.read()
        if not resume or previous != fingerprint:
            why = "train.resume=false" if not resume else "made for other data or settings"
            log(f"  discarding checkpoint {checkpoint_dir}: {why}")
            shutil.rmtree(checkpoint_dir)
        else:
            log(f"  resuming from checkpoint {checkpoint_dir}")
    os.makedirs(checkpoint_dir, exist_ok=True)
    with open(marker, "w") as f:
        f.write(fingerprint)


def fit(model, train, validation, config: TrainConfig, log, run_dir: str | None = None, fingerprint: str = "") -> dict:
    """model.fit with the callbacks every architecture gets: epoch progress; with a run_dir, per-epoch checkpoints
    that a re-run resumes from (ending at the same epoch count) and TensorBoard logs; early stopping on val_loss.
    The model must be compiled. Returns the Keras history dict."""
    callbacks = [_EpochProgress(log, config.epochs)]
    checkpoint_dir = None
    if run_dir:
        checkpoint_dir = os.path.join(run_dir, "checkpoints")
        prepare_checkpoints(checkpoint_dir, fingerprint, config.resume, log)
        callbacks += [
            _BackupAndRestore(checkpoint_dir, delete_checkpoint=True),
            keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"), write_graph=False),
        ]
    if validation is not None and config.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=config.early_stopping_patience, restore_best_weights=True
            )
        )
    kwargs = dict(validation_data=validation, epochs=config.epochs, shuffle=False, verbose=0, callbacks=callbacks)
    try:
        history = model.fit(train, **kwargs)  # shuffle=False: tf.data already reshuffles every epoch
    except CheckpointError as exc:
        log(f"  {exc}; discarding it and training from the start")
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        prepare_checkpoints(checkpoint_dir, fingerprint, config.resume, log)
        history = model.fit(train, **kwargs)
    return history.history


def balanced_class_weights(tfrecord_dirs: list[str], hierarchy: Hierarchy) -> dict[str, list[float]]:
    """Per species, n_species / (n_breeds · n_breed) for each breed, from the train split's statistics; breeds
    without examples get 1. Clipped to [0.1, 10] so a nearly absent breed cannot dominate a head."""
    counts = {b: 0 for b in hierarchy.breed_names}
    for directory in tfrecord_dirs:
        with open(os.path.join(directory, "statistics.json")) as f:
            for breed, n in json.load(f)["train"]["breeds"].items():
                counts[breed] = counts.get(breed, 0) + n
    weights = {}
    for species, breeds in hierarchy.breeds_of.items():
        total = sum(counts[b.name] for b in breeds)
        weights[species] = [
            min(10.0, max(0.1, total / (len(breeds) * counts[b.name]))) if counts[b.name] else 1.0 for b in breeds
        ]
    return weights


def training_data(config: TrainConfig, tfrecord_dirs: list[str], schema, hierarchy: Hierarchy, image_size: int):
    """(train, validation or None) datasets over the spans' TFRecords."""
    train = make_dataset(
        [split_pattern(d, "train") for d in tfrecord_dirs],
        schema,
        hierarchy,
        image_size,
        config.batch_size,
        True,
        config.shuffle_buffer,
        config.seed,
    )
    eval_patterns = [split_pattern(d, "eval") for d in tfrecord_dirs]
    validation = None
    if tfrecord_files(eval_patterns):  # data.eval_fraction=0 leaves the eval shards empty
        validation = make_dataset(eval_patterns, schema, hierarchy, image_size, config.batch_size, False)
        if int(validation.cardinality()) == 0:
            validation = None
    return train, validation


def fingerprint_of(config: TrainConfig, tfrecord_dirs: list[str], image_size: int) -> str:
    """Identifies a training job: its settings and the exact TFRecord files (names, sizes, times)."""
    files = sorted(f for d in tfrecord_dirs for f in tf.io.gfile.glob(os.path.join(d, "*", "*" + TFRECORD_SUFFIX)))
    stamp = [(f, os.path.getsize(f), os.path.getmtime(f)) for f in files]
    text = json.dumps([dataclasses.asdict(config), image_size, stamp], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def warm_start(model: keras.Model, weights_path: str | None, log) -> None:
    """Load the blessed model's weights when given; another architecture or hierarchy trains from scratch, and
    says so."""
    if not weights_path:
        return
    try:
        model.load_weights(weights_path)
        log(f"  warm start from {weights_path}")
    except Exception as exc:
        log(f"  not warm-starting from {weights_path}: {str(exc).splitlines()[0]}")


def train_model(
    config: TrainConfig,
    tfrecord_dirs: list[str],
    schema,
    hierarchy: Hierarchy,
    image_size: int,
    log=print,
    run_dir: str | None = None,
    warm_start_weights: str | None = None,
) -> tuple[keras.Model, dict]:
    """Fit the multi-head model on the train split of the given spans, validating on eval; (model, history)."""
    keras.utils.set_random_seed(config.seed)
    train, validation = training_data(config, tfrecord_dirs, schema, hierarchy, image_size)
    model = build_multihead_model(
        hierarchy, image_size, config.filters, config.dropout, config.backbone, config.backbone_weights
    )
    warm_start(model, warm_start_weights, log)
    trained = with_augmentation(model, image_size, config.seed) if config.augment else model
    steps_per_epoch = int(train.cardinality())
    # Cosine decay to zero: the last epochs take small steps, so the exported weights do not jitter.
    learning_rate = keras.optimizers.schedules.CosineDecay(config.learning_rate, config.epochs * steps_per_epoch)
    class_weights = balanced_class_weights(tfrecord_dirs, hierarchy) if config.class_weights else None
    compile_multihead(trained, hierarchy, learning_rate, config.breed_loss_weight, class_weights)
    fingerprint = fingerprint_of(config, tfrecord_dirs, image_size)
    history = fit(trained, train, validation, config, log, run_dir, fingerprint)
    return model, history
