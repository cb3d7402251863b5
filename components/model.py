"""The multi-head model: shared conv backbone → species head + one breed head per species; its masked loss;
the joint breed distribution p(breed) = p(species) · p(breed | species), and the hierarchical decoding of an
answer — both shared by evaluation and the serving signature, so what we measure is what we serve.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from components.train_config import BACKBONES, TrainConfig
from schemas import Hierarchy

SPECIES_HEAD = "species"


def breed_head(species: str) -> str:
    """Output name of a species' breed head, e.g. 'cat_breed'."""
    return f"{species}_breed"


def _conv_bn_relu(x, width: int, strides: int = 1):
    x = keras.layers.Conv2D(width, 3, strides=strides, padding="same", use_bias=False)(x)
    # momentum 0.9: with a few dozen steps per epoch the default 0.99 leaves eval-time statistics stale.
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    return keras.layers.ReLU()(x)


def augmentation(seed: int = 0) -> keras.Sequential:
    """Flip, shift (a crop that keeps the size) and colour jitter; Keras runs these only when training=True,
    so the exported serving graph passes images through untouched."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomTranslation(0.06, 0.06, fill_mode="constant", seed=seed),
            keras.layers.RandomBrightness(0.08, value_range=(0, 255), seed=seed),
            keras.layers.RandomContrast(0.1, seed=seed),
        ],
        name="augmentation",
    )


def build_backbone(
    image_size: int,
    filters: tuple[int, ...],
    backbone: str = "simple",
    weights_path: str | None = None,
    name="backbone",
) -> keras.Model:
    """uint8-range RGB image [H,W,3] → feature vector. `simple`: a strided conv stem, then conv + max-pool per
    width (trains in minutes on two CPU cores). `mobilenet_v3_small`: keras.applications, weights loaded from a
    local .weights.h5 file when given (never downloaded)."""
    image = keras.Input(shape=(image_size, image_size, 3), name="image")
    if backbone == "simple":
        x = keras.layers.Rescaling(1.0 / 255)(image)
        stem, *widths = filters
        x = _conv_bn_relu(x, stem, strides=2)
        for width in widths:
            x = keras.layers.MaxPooling2D()(_conv_bn_relu(x, width))
        model = keras.Model(image, keras.layers.GlobalAveragePooling2D()(x), name=name)
    elif backbone == "mobilenet_v3_small":
        base = keras.applications.MobileNetV3Small(
            input_shape=(image_size, image_size, 3), include_top=False, weights=None, include_preprocessing=True
        )
        model = keras.Model(image, keras.layers.GlobalAveragePooling2D()(base(image)), name=name)
    else:
        raise ValueError(f"unknown backbone {backbone!r}; known: {', '.join(BACKBONES)}")
    if weights_path:
        try:
            model.load_weights(weights_path)
        except Exception as exc:
            raise ValueError(f"{weights_path}: cannot load {backbone} backbone weights: {exc}") from None
    return model


def with_augmentation(model: keras.Model, image_size: int, seed: int = 0) -> keras.Model:
    """A training-only wrapper: augmentation → `model` (sharing its weights). The model itself, which is
    evaluated and exported, stays free of random layers — Keras applies them whenever `training` is not
    passed as False."""
    image = keras.Input(shape=(image_size, image_size, 3), name="image")
    return keras.Model(image, model(augmentation(seed)(image)), name=model.name)


def build_multihead_model(hierarchy: Hierarchy, image_size: int, config: TrainConfig) -> keras.Model:
    """uint8-range RGB image → {'species': [N,S], '<species>_breed': [N,B_s]} softmax outputs, one backbone
    (config.filters, backbone, backbone_weights, dropout)."""
    image = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = build_backbone(image_size, config.filters, config.backbone, config.backbone_weights)(image)
    features = keras.layers.Dropout(config.dropout)(x)
    outputs = {
        SPECIES_HEAD: keras.layers.Dense(len(hierarchy.species), activation="softmax", name=SPECIES_HEAD)(features)
    }
    for species, breeds in hierarchy.breeds_of.items():
        name = breed_head(species)
        outputs[name] = keras.layers.Dense(len(breeds), activation="softmax", name=name)(features)
    return keras.Model(image, outputs, name="multihead")


@keras.saving.register_keras_serializable(package="petpipe")
class MaskedSparseCategoricalCrossentropy(keras.losses.Loss):
    """Σ_{i: y_i ≠ -1} w[y_i]·(−log p_i[y_i]) / Σ_{i: y_i ≠ -1} w[y_i]; 0 when the batch has no valid label.

    A -1 label contributes exactly zero loss and zero gradient, and the head's loss is averaged over its valid
    labels only — not over the batch, which would shrink a head's loss with the share of other species.
    `class_weights` (w, default all 1) re-weights imbalanced breeds.

    Under a tf.distribute strategy with N > 1 replicas, each replica sees 1/N of the global batch and the
    replicas' gradients are summed. Keras divides its own losses by N for that, but leaves a loss that is
    already a scalar (this one) alone — so here the denominator is summed over all replicas instead: each
    replica returns Σ_local w·CE / Σ_global w, and the replicas' losses add up to exactly the weighted mean over
    the global batch, however the valid labels are spread over the replicas.
    """

    def __init__(self, class_weights=None, name="masked_sparse_categorical_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]

    def call(self, y_true, y_pred):
        y_true = tf.reshape(tf.cast(y_true, tf.int32), [-1])
        valid = y_true >= 0
        labels = tf.boolean_mask(y_true, valid)
        # Gather only the valid rows, so masked rows never enter the graph of the loss (no 0·inf NaN).
        per_example = keras.losses.sparse_categorical_crossentropy(labels, tf.boolean_mask(y_pred, valid))
        if self.class_weights is None:
            weights = tf.ones_like(per_example)
        else:
            weights = tf.gather(tf.constant(self.class_weights, per_example.dtype), labels)
        total_weight = tf.reduce_sum(weights)
        replica = tf.distribute.get_replica_context()  # None in cross-replica context (e.g. Keras's symbolic build)
        if replica is not None and replica.num_replicas_in_sync > 1:
            total_weight = replica.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(total_weight))
        return tf.math.divide_no_nan(tf.reduce_sum(weights * per_example), total_weight)

    def get_config(self):
        return {**super().get_config(), "class_weights": self.class_weights}


@keras.saving.register_keras_serializable(package="petpipe")
class MaskedSparseCategoricalAccuracy(keras.metrics.Metric):
    """Accuracy over the examples whose label is not -1."""

    def __init__(self, name="accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.correct = self.add_weight(name="correct", initializer="zeros")
        self.count = self.add_weight(name="count", initializer="zeros")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = tf.reshape(tf.cast(y_true, tf.int64), [-1])
        valid = y_true >= 0
        hits = tf.logical_and(valid, tf.equal(y_true, tf.argmax(y_pred, axis=-1)))
        self.correct.assign_add(tf.reduce_sum(tf.cast(hits, "float32")))
        self.count.assign_add(tf.reduce_sum(tf.cast(valid, "float32")))

    def result(self):
        return tf.math.divide_no_nan(self.correct, self.count)


def compile_multihead(
    model: keras.Model, hierarchy: Hierarchy, learning_rate, breed_loss_weight: float, class_weights=None
):
    """Adam on species CE + breed_loss_weight × masked breed CE per head; learning_rate may be a schedule;
    class_weights: {species: per-breed weights} or None."""
    losses = {SPECIES_HEAD: keras.losses.SparseCategoricalCrossentropy()}
    weights = {SPECIES_HEAD: 1.0}
    metrics = {SPECIES_HEAD: [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]}
    for species in hierarchy.species:
        losses[breed_head(species)] = MaskedSparseCategoricalCrossentropy((class_weights or {}).get(species))
        weights[breed_head(species)] = breed_loss_weight
        metrics[breed_head(species)] = [MaskedSparseCategoricalAccuracy()]
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=losses, loss_weights=weights, metrics=metrics)


def breed_order(hierarchy: Hierarchy) -> list[int]:
    """Permutation from species-major breed order (cat breeds, then dog breeds) to global CLASS-ID order."""
    species_major = [b.global_index for s in hierarchy.species for b in hierarchy.breeds_of[s]]
    return [species_major.index(g) for g in range(len(hierarchy.breeds))]


def joint_breed_probs(outputs: dict, hierarchy: Hierarchy) -> tf.Tensor:
    """[N, 37] in global order: column g = p(species of g) · p(g | that species). Rows sum to 1."""
    species_probs = outputs[SPECIES_HEAD]
    parts = [species_probs[:, i : i + 1] * outputs[breed_head(species)] for i, species in enumerate(hierarchy.species)]
    return tf.gather(tf.concat(parts, axis=1), breed_order(hierarchy), axis=1)


def hierarchical_answer(
    outputs: dict, hierarchy: Hierarchy, top_k: int, uncertainty_threshold: float = 0.0
) -> dict[str, tf.Tensor]:
    """Top-down decoding that never contradicts itself: species = argmax p(species); breed = the most probable
    breed *of that species* under the joint distribution.

    The unrestricted joint argmax can name a breed of the other species (a peaked cat-breed head under
    p(cat) = 0.49), which would answer "dog, Bengal"; this decoding cannot. top_k_breeds are that species'
    most probable breeds too — unless the top species probability is below `uncertainty_threshold`: then
    `species_uncertain` is true and the top-k are drawn from all species (the seed's point: an unsure detector
    still yields good candidates from both). Scores are joint probabilities.
    Returns species [N], species_uncertain [N], breed [N] (global index), top_k_breeds [N,k], top_k_scores
    [N,k], breed_probs [N,B]; k is capped at the smallest species' breed count.
    """
    breed_probs = joint_breed_probs(outputs, hierarchy)
    species_probs = outputs[SPECIES_HEAD]
    species = tf.argmax(species_probs, axis=1, output_type=tf.int32)
    uncertain = tf.reduce_max(species_probs, axis=1) < uncertainty_threshold
    species_of_breed = tf.constant([b.species_index for b in hierarchy.breeds], tf.int32)
    in_species = tf.equal(species_of_breed[None, :], species[:, None])
    k = min(top_k, min(len(breeds) for breeds in hierarchy.breeds_of.values()))
    _, best_in_species = tf.math.top_k(tf.where(in_species, breed_probs, -1.0), k=1)
    candidates = tf.logical_or(in_species, uncertain[:, None])
    top_scores, top_breeds = tf.math.top_k(tf.where(candidates, breed_probs, -1.0), k=k)
    return {
        "species": species,
        "species_uncertain": uncertain,
        "breed": best_in_species[:, 0],
        "top_k_breeds": top_breeds,
        "top_k_scores": top_scores,
        "breed_probs": breed_probs,
    }
