"""Train: tf.data over the preprocess stage's TFRecords → the multi-head model (components/model.py).

The parse spec comes from schemas/schema.pbtxt, and images go through the same decode_and_resize as in
preprocessing and serving.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from components.model import SPECIES_HEAD, breed_head, build_multihead_model, compile_multihead
from components.preprocess import decode_and_resize, split_pattern
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


def _files(patterns: str | list[str]) -> list[str]:
    patterns = [patterns] if isinstance(patterns, str) else patterns
    return sorted(f for p in patterns for f in tf.io.gfile.glob(p))


def count_records(patterns: str | list[str]) -> int:
    return sum(1 for _ in tf.data.TFRecordDataset(_files(patterns), compression_type="GZIP"))


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
    files = _files(patterns)
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


def train_model(
    config: TrainConfig,
    tfrecord_dirs: list[str],
    schema,
    hierarchy: Hierarchy,
    image_size: int,
    log=print,
) -> tuple[keras.Model, dict]:
    """Fit the multi-head model on the train split of the given spans, validating on eval; (model, history)."""
    keras.utils.set_random_seed(config.seed)
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
    if _files(eval_patterns):  # data.eval_fraction=0 leaves the eval shards empty
        validation = make_dataset(eval_patterns, schema, hierarchy, image_size, config.batch_size, False)
        if int(validation.cardinality()) == 0:
            validation = None
    model = build_multihead_model(hierarchy, image_size, config.filters, config.dropout)
    steps_per_epoch = int(train.cardinality())
    # Cosine decay to zero: the last epochs take small steps, so the exported weights do not jitter.
    learning_rate = keras.optimizers.schedules.CosineDecay(config.learning_rate, config.epochs * steps_per_epoch)
    compile_multihead(model, hierarchy, learning_rate, config.breed_loss_weight)
    history = model.fit(
        train,
        validation_data=validation,
        epochs=config.epochs,
        shuffle=False,  # tf.data already reshuffles every epoch
        verbose=0,
        callbacks=[_EpochProgress(log, config.epochs)],
    )
    return model, history.history
