"""Train: tf.data over the preprocess stage's TFRecords → the multi-head model (components/model.py).

The parse spec comes from schemas/schema.pbtxt, and images go through the same decode_and_resize as in
preprocessing and serving. Every path (TFRecords, statistics, checkpoints, TensorBoard logs) may be a gs://,
s3://, ... URL: files are accessed through tf.io.gfile, and Keras's checkpoint and TensorBoard callbacks write
through it too.

Distributed training: `strategy` (train.distribute, see components/distribute.py) picks a tf.distribute strategy;
the model, its compilation and the datasets are created under its scope, and train.batch_size stays the global
batch. With more than one replica the train split drops its last partial batch each epoch (a different one each
epoch, as the order is reshuffled): a partial batch can leave a replica with zero examples, whose batch-norm
statistics are NaN and poison the mirrored moving averages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os

import keras
import tensorflow as tf

from common.errors import DataError
from components import distribute, fileio
from components.model import SPECIES_HEAD, breed_head, build_multihead_model, compile_multihead, with_augmentation
from components.preprocess import TFRECORD_SUFFIX, decode_and_resize, split_pattern
from components.train_config import TrainConfig, TrainingJob
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


def labelled_batches(
    patterns: str | list[str],
    schema,
    hierarchy: Hierarchy,
    image_size: int,
    batch_size: int,
    training: bool,
    shuffle_buffer: int = 2048,
    seed: int = 0,
    keep_breed: bool = False,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batches of (image, labels) from GZIP TFRecords: parallel reads, parse, decode, cache, shuffle, prefetch.

    The decoded images are cached in memory after the first pass (64 px × 3 bytes each); with `training`, the
    order is reshuffled every epoch and images get a random left-right flip (pets are symmetric).
    `drop_remainder` leaves out the last partial batch (for training with several replicas).

    Under a multi-worker strategy every worker reads all files and keeps its share of each batch (tf.data
    auto-shard policy DATA): sharding by file would give workers different numbers of batches, and the known
    size asserted here is that of the whole data. The same seed on every worker gives them the same order.
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
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    batches = dataset.batch(batch_size, drop_remainder=drop_remainder).with_options(options)
    return batches.prefetch(tf.data.AUTOTUNE)


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
    if tf.io.gfile.isdir(checkpoint_dir):
        previous = ""
        if tf.io.gfile.exists(marker):
            with tf.io.gfile.GFile(marker) as f:
                previous = f.read()
        if not resume or previous != fingerprint:
            why = "train.resume=false" if not resume else "made for other data or settings"
            log(f"  discarding checkpoint {checkpoint_dir}: {why}")
            tf.io.gfile.rmtree(checkpoint_dir)
        else:
            log(f"  resuming from checkpoint {checkpoint_dir}")
    tf.io.gfile.makedirs(checkpoint_dir)
    with tf.io.gfile.GFile(marker, "w") as f:
        f.write(fingerprint)


def _prepare_multi_worker_fit(model: keras.Model, train: tf.data.Dataset) -> None:
    """Work around Keras 3's fit under MultiWorkerMirroredStrategy (keras-team/keras#20585), on this model only:
    1. fit builds the compiled loss and metrics from one batch that it first reduces across the workers
       (Trainer._maybe_symbolic_build), and that reduce fails for a nested (image, {head: label}) batch. The
       build only needs shapes and dtypes: build from one local batch here and skip fit's own attempt.
    2. fit reduces each step's logs with strategy.reduce(MEAN, log, axis=0), which fails on the scalar logs
       (metric results). Steps here return them as [1] tensors, whose mean over the workers is the scalar again:
       Keras's metric variables are summed across all replicas on update, so every worker holds the same
       global values."""
    with model.distribute_strategy.scope():
        model._symbolic_build(data_batch=next(iter(train)))
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None

    def with_vector_logs(step):
        return lambda data: {name: tf.reshape(value, [1]) for name, value in step(data).items()}

    model.train_step = with_vector_logs(model.train_step)
    model.test_step = with_vector_logs(model.test_step)


def fit(model, train, validation, config: TrainConfig, log, run_dir: str | None = None, fingerprint: str = "") -> dict:
    """model.fit with the callbacks every architecture gets: epoch progress; with a run_dir, per-epoch checkpoints
    that a re-run resumes from (ending at the same epoch count) and TensorBoard logs; early stopping on val_loss.
    The model must be compiled (under its strategy's scope, if any). Returns the Keras history dict.

    A worker other than the chief of a multi-worker strategy keeps its checkpoints and logs in
    run_dir/workers/<task>-<index>/: the workers hold the same weights, but must not write the same files."""
    callbacks = [_EpochProgress(log, config.epochs)]
    checkpoint_dir = None
    own_dir = distribute.worker_dir(model.distribute_strategy)
    if run_dir and own_dir:
        run_dir = os.path.join(run_dir, own_dir)
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
    if distribute.is_multi_worker(model.distribute_strategy):
        _prepare_multi_worker_fit(model, train)
    try:
        history = model.fit(train, **kwargs)  # shuffle=False: tf.data already reshuffles every epoch
    except CheckpointError as exc:
        log(f"  {exc}; discarding it and training from the start")
        fileio.rmtree(checkpoint_dir, ignore_errors=True)
        prepare_checkpoints(checkpoint_dir, fingerprint, config.resume, log)
        history = model.fit(train, **kwargs)
    return history.history


def balanced_class_weights(tfrecord_dirs: list[str], hierarchy: Hierarchy) -> dict[str, list[float]]:
    """Per species, n_species / (n_breeds · n_breed) for each breed, from the train split's statistics; breeds
    without examples get 1. Clipped to [0.1, 10] so a nearly absent breed cannot dominate a head."""
    counts = {b: 0 for b in hierarchy.breed_names}
    for directory in tfrecord_dirs:
        with tf.io.gfile.GFile(os.path.join(directory, "statistics.json")) as f:
            for breed, n in json.load(f)["train"]["breeds"].items():
                counts[breed] = counts.get(breed, 0) + n
    weights = {}
    for species, breeds in hierarchy.breeds_of.items():
        total = sum(counts[b.name] for b in breeds)
        weights[species] = [
            min(10.0, max(0.1, total / (len(breeds) * counts[b.name]))) if counts[b.name] else 1.0 for b in breeds
        ]
    return weights


def training_data(
    config: TrainConfig,
    tfrecord_dirs: list[str],
    schema,
    hierarchy: Hierarchy,
    image_size: int,
    drop_remainder: bool = False,
):
    """(train, validation or None) datasets over the spans' TFRecords; `drop_remainder` applies to train only."""
    train = labelled_batches(
        [split_pattern(d, "train") for d in tfrecord_dirs],
        schema,
        hierarchy,
        image_size,
        config.batch_size,
        True,
        config.shuffle_buffer,
        config.seed,
        drop_remainder=drop_remainder,
    )
    if drop_remainder and int(train.cardinality()) == 0:
        raise DataError(
            f"fewer train examples than one global batch of {config.batch_size}: with several replicas the last "
            "partial batch is dropped; lower train.batch_size"
        )
    eval_patterns = [split_pattern(d, "eval") for d in tfrecord_dirs]
    validation = None
    if tfrecord_files(eval_patterns):  # data.eval_fraction=0 leaves the eval shards empty
        validation = labelled_batches(eval_patterns, schema, hierarchy, image_size, config.batch_size, False)
        if int(validation.cardinality()) == 0:
            validation = None
    return train, validation


def fingerprint_of(config: TrainConfig, tfrecord_dirs: list[str], image_size: int) -> str:
    """Identifies a training job: its settings and the exact TFRecord files (names, sizes, modification times —
    whole seconds, which is what tf.io.gfile.stat gives for local files)."""
    files = sorted(f for d in tfrecord_dirs for f in tf.io.gfile.glob(os.path.join(d, "*", "*" + TFRECORD_SUFFIX)))
    stats = {f: tf.io.gfile.stat(f) for f in files}
    stamp = [(f, stats[f].length, stats[f].mtime_nsec) for f in files]
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


def strategy_scope(strategy: tf.distribute.Strategy | None):
    """The strategy's scope, or a no-op without one."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def setup_strategy(config: TrainConfig, strategy, log) -> tf.distribute.Strategy | None:
    """make_strategy(strategy), checked against the global batch size, and logged when there is one."""
    strategy = distribute.make_strategy(strategy)
    replicas = distribute.replicas(strategy)
    if strategy is not None:
        if config.batch_size < replicas:
            raise ValueError(f"train.batch_size={config.batch_size} is smaller than the {replicas} replicas")
        log(f"  {type(strategy).__name__}: {replicas} replicas, {config.batch_size} examples per global batch")
    return strategy


def train_model(job: TrainingJob) -> tuple[keras.Model, dict]:
    """Fit the multi-head model on the train split of the job's spans, validating on eval; (model, history)."""
    config, log, image_size = job.config, job.log, job.image_size
    keras.utils.set_random_seed(config.seed)
    strategy = setup_strategy(config, config.distribute if job.strategy is None else job.strategy, log)
    with strategy_scope(strategy):
        drop = distribute.replicas(strategy) > 1
        train, validation = training_data(config, job.tfrecord_dirs, job.schema, job.hierarchy, image_size, drop)
        model = build_multihead_model(job.hierarchy, image_size, config)
        warm_start(model, job.warm_start_weights, log)
        trained = with_augmentation(model, image_size, config.seed) if config.augment else model
        steps_per_epoch = int(train.cardinality())
        # Cosine decay to zero: the last epochs take small steps, so the exported weights do not jitter.
        learning_rate = keras.optimizers.schedules.CosineDecay(config.learning_rate, config.epochs * steps_per_epoch)
        class_weights = balanced_class_weights(job.tfrecord_dirs, job.hierarchy) if config.class_weights else None
        compile_multihead(trained, job.hierarchy, learning_rate, config.breed_loss_weight, class_weights)
        fingerprint = fingerprint_of(config, job.tfrecord_dirs, image_size)
        history = fit(trained, train, validation, config, log, job.run_dir, fingerprint)
    return model, history
