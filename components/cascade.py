"""The cascade baseline (the seed's first answer): a species model and one breed model per species, each with its
own backbone, trained separately — each breed model only on the images of its species.

The trained sub-models are joined into ONE Keras model with the multi-head model's outputs,
{'species': [N,S], '<species>_breed': [N,B_s]}, so evaluation and export treat both architectures alike and the
routing (species decides which breed model answers) happens in the served graph through
components.model.hierarchical_answer. Every breed model runs on every image: a fixed-shape output per head is
what the serving signature and the joint p(species)·p(breed | species) need, and it is also what the seed's
"one call answers everything" comparison is about — the cascade pays three backbones per image.

With a tf.distribute strategy (train.distribute) every sub-model is built, compiled and fitted under its scope,
like the multi-head model in components/train.py; with several replicas each sub-model's train batches drop
their last partial batch (see there why).
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from components import distribute
from components.model import (
    SPECIES_HEAD,
    MaskedSparseCategoricalCrossentropy,
    breed_head,
    build_backbone,
    with_augmentation,
)
from components.train import (
    balanced_class_weights,
    fingerprint_of,
    fit,
    setup_strategy,
    strategy_scope,
    training_data,
    warm_start,
)
from components.train_config import TrainConfig, TrainingJob
from schemas import Hierarchy


def build_classifier(name: str, classes: int, image_size: int, config: TrainConfig) -> keras.Model:
    """uint8-range RGB image → softmax over `classes`: backbone → dropout → dense."""
    image = keras.Input(shape=(image_size, image_size, 3), name="image")
    backbone = build_backbone(image_size, config.filters, config.backbone, config.backbone_weights, f"{name}_backbone")
    x = keras.layers.Dropout(config.dropout)(backbone(image))
    return keras.Model(image, keras.layers.Dense(classes, activation="softmax", name=f"{name}_probs")(x), name=name)


def build_cascade(
    hierarchy: Hierarchy, image_size: int, config: TrainConfig
) -> tuple[keras.Model, dict[str, keras.Model]]:
    """(combined model, {head name: training model}). Each training model is [augmentation (config.augment) →] a
    classifier that
    the combined model shares, so fitting it trains the combined model; the combined outputs are named like
    build_multihead_model's.

    The augmentation stays out of the combined model: it only belongs to training, and Keras's random layers
    augment whenever `training` is not passed as False, so `combined(images)` would otherwise be random.
    """
    heads = {SPECIES_HEAD: len(hierarchy.species)}
    heads.update({breed_head(s): len(breeds) for s, breeds in hierarchy.breeds_of.items()})
    classifiers = {head: build_classifier(head, n, image_size, config) for head, n in heads.items()}
    image = keras.Input(shape=(image_size, image_size, 3), name="image")
    combined = keras.Model(image, {head: model(image) for head, model in classifiers.items()}, name="cascade")
    training = {
        head: with_augmentation(classifier, image_size, config.seed) if config.augment else classifier
        for head, classifier in classifiers.items()
    }
    return combined, training


def build_combined_cascade(hierarchy: Hierarchy, image_size: int, config: TrainConfig) -> keras.Model:
    """The combined model alone (the architecture registry's build entry: to load trained weights into)."""
    return build_cascade(hierarchy, image_size, config)[0]


def species_examples(batches: tf.data.Dataset, species_index: int) -> tf.data.Dataset:
    """Unbatched (image, labels) of the examples whose labels['species'] is `species_index`, from batches."""
    return batches.unbatch().filter(lambda image, labels: tf.equal(labels[SPECIES_HEAD], species_index))


def _species_counts(batches: tf.data.Dataset, num_species: int) -> np.ndarray:
    """Examples per species in one pass: a filtered dataset does not know its size, the LR schedule needs it."""
    counts = np.zeros(num_species, np.int64)
    for species in batches.map(lambda image, labels: labels[SPECIES_HEAD]):
        counts += np.bincount(species.numpy().reshape(-1), minlength=num_species)
    return counts


def _batches(examples: tf.data.Dataset, count: int, batch_size: int, drop_remainder: bool) -> tf.data.Dataset:
    """Batches of `count` unbatched examples with their number declared: the known size lets Keras and the LR
    schedule see where an epoch ends, which a filtered dataset no longer reports."""
    steps = count // batch_size if drop_remainder else -(-count // batch_size)
    batches = examples.batch(batch_size, drop_remainder=drop_remainder)
    return batches.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(tf.data.AUTOTUNE)


def _breed_batches(
    batches: tf.data.Dataset, species_index: int, head: str, count: int, batch_size: int, drop_remainder=False
):
    """(image, breed label of `head`) batches of the `count` examples of one species."""
    subset = species_examples(batches, species_index).map(lambda image, labels: (image, labels[head]))
    return _batches(subset, count, batch_size, drop_remainder)


def _compile(model: keras.Model, loss, learning_rate: float, epochs: int, steps_per_epoch: int) -> None:
    # Cosine decay to zero over this sub-model's own steps, as train_model does for the multi-head model.
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(1, epochs * steps_per_epoch))
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=loss,
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def train_cascade(job: TrainingJob) -> tuple[keras.Model, dict]:
    """Fit the species model on all train examples and each breed model on its species' examples, config.epochs
    each; (combined model, history with keys prefixed by the sub-model, e.g. 'cat_breed/val_loss')."""
    keras.utils.set_random_seed(job.config.seed)
    strategy = setup_strategy(job.config, job.config.distribute if job.strategy is None else job.strategy, job.log)
    with strategy_scope(strategy):
        return _train_cascade(job, strategy)


def _train_cascade(job: TrainingJob, strategy) -> tuple[keras.Model, dict]:
    config, hierarchy, image_size, log = job.config, job.hierarchy, job.image_size, job.log
    # The train batches are filtered and re-batched per sub-model, so they keep every example here; with several
    # replicas, each sub-model's batching drops its own last partial batch.
    drop = distribute.replicas(strategy) > 1
    train, validation = training_data(config, job.tfrecord_dirs, job.schema, hierarchy, image_size)
    combined, models = build_cascade(hierarchy, image_size, config)
    warm_start(combined, job.warm_start_weights, log)
    class_weights = balanced_class_weights(job.tfrecord_dirs, hierarchy) if config.class_weights else {}
    fingerprint = fingerprint_of(config, job.tfrecord_dirs, image_size)
    num_species = len(hierarchy.species)
    train_counts = _species_counts(train, num_species)
    val_counts = _species_counts(validation, num_species) if validation is not None else np.zeros(num_species, int)

    def species_labels(image, labels):
        return image, labels[SPECIES_HEAD]

    if drop:
        species_train = _batches(train.unbatch().map(species_labels), int(train_counts.sum()), config.batch_size, True)
    else:
        species_train = train.map(species_labels)
    jobs = [
        (
            SPECIES_HEAD,
            species_train,
            None if validation is None else validation.map(species_labels),
            keras.losses.SparseCategoricalCrossentropy(),
            int(species_train.cardinality()),
        )
    ]
    for i, species in enumerate(hierarchy.species):
        head = breed_head(species)
        n_train, n_val = int(train_counts[i]), int(val_counts[i])
        sub_train = _breed_batches(train, i, head, n_train, config.batch_size, drop) if n_train else None
        sub_val = _breed_batches(validation, i, head, n_val, config.batch_size) if n_val else None
        # The masked loss with no -1 labels is the class-weighted mean CE, normalised like the multi-head breed loss.
        loss = MaskedSparseCategoricalCrossentropy(class_weights.get(species))
        steps = n_train // config.batch_size if drop else -(-n_train // config.batch_size)
        jobs.append((head, sub_train, sub_val, loss, steps))

    history = {}
    for head, sub_train, sub_val, loss, steps in jobs:
        model = models[head]
        if sub_train is None:
            log(f"  {head}: no train examples of this species; left untrained")
            continue
        if not steps:  # several replicas: whole batches only
            log(f"  {head}: fewer train examples than one global batch of {config.batch_size}; left untrained")
            continue
        log(f"  {head}: {model.count_params():,} parameters, {steps} steps per epoch")
        _compile(model, loss, config.learning_rate, config.epochs, steps)
        sub_run_dir = os.path.join(job.run_dir, head) if job.run_dir else None
        sub_history = fit(
            model,
            sub_train,
            sub_val,
            config,
            lambda text, h=head: log(f"  {h} {text.strip()}"),
            sub_run_dir,
            f"{fingerprint}:{head}",
        )
        history.update({f"{head}/{key}": value for key, value in sub_history.items()})
    return combined, history
