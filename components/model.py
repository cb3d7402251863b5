"""The multi-head model: shared conv backbone → species head + one breed head per species; its masked loss;
the joint breed distribution p(breed) = p(species) · p(breed | species), and the hierarchical decoding of an
answer — both shared by evaluation and the serving signature, so what we measure is what we serve.
"""

from __future__ import annotations

import keras
import tensorflow as tf

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


def build_multihead_model(
    hierarchy: Hierarchy, image_size: int, filters: tuple[int, ...], dropout: float = 0.2
) -> keras.Model:
    """uint8-range RGB image → {'species': [N,S], '<species>_breed': [N,B_s]} softmax outputs."""
    image = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 255)(image)
    # A strided stem, then conv + pool per width: cheap enough to train in minutes on two CPU cores.
    stem, *widths = filters
    x = _conv_bn_relu(x, stem, strides=2)
    for width in widths:
        x = keras.layers.MaxPooling2D()(_conv_bn_relu(x, width))
    features = keras.layers.Dropout(dropout)(keras.layers.GlobalAveragePooling2D()(x))
    outputs = {
        SPECIES_HEAD: keras.layers.Dense(len(hierarchy.species), activation="softmax", name=SPECIES_HEAD)(features)
    }
    for species, breeds in hierarchy.breeds_of.items():
        name = breed_head(species)
        outputs[name] = keras.layers.Dense(len(breeds), activation="softmax", name=name)(features)
    return keras.Model(image, outputs, name="multihead")


@keras.saving.register_keras_serializable(package="petpipe")
class MaskedSparseCategoricalCrossentropy(keras.losses.Loss):
    """mean over {i : y_i ≠ -1} of −log p_i[y_i]; 0 when the batch has no valid label.

    A -1 label contributes exactly zero loss and zero gradient, and the head's loss is averaged over its valid
    labels only — not over the batch, which would shrink a head's loss with the share of other species.
    """

    def __init__(self, name="masked_sparse_categorical_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        y_true = tf.reshape(tf.cast(y_true, tf.int32), [-1])
        valid = y_true >= 0
        # Gather only the valid rows, so masked rows never enter the graph of the loss (no 0·inf NaN).
        per_example = keras.losses.sparse_categorical_crossentropy(
            tf.boolean_mask(y_true, valid), tf.boolean_mask(y_pred, valid)
        )
        count = tf.reduce_sum(tf.cast(valid, y_pred.dtype))
        return tf.math.divide_no_nan(tf.reduce_sum(per_example), count)


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


def compile_multihead(model: keras.Model, hierarchy: Hierarchy, learning_rate, breed_loss_weight: float):
    """Adam on species CE + breed_loss_weight × masked breed CE per head; learning_rate may be a schedule."""
    losses = {SPECIES_HEAD: keras.losses.SparseCategoricalCrossentropy()}
    weights = {SPECIES_HEAD: 1.0}
    metrics = {SPECIES_HEAD: [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]}
    for species in hierarchy.species:
        losses[breed_head(species)] = MaskedSparseCategoricalCrossentropy()
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


def hierarchical_answer(outputs: dict, hierarchy: Hierarchy, top_k: int) -> dict[str, tf.Tensor]:
    """Top-down decoding that never contradicts itself: species = argmax p(species); breed and the top-k are
    the most probable breeds *of that species* under the joint distribution (scores are joint probabilities).

    The unrestricted joint argmax can name a breed of the other species (a peaked cat-breed head under
    p(cat) = 0.49), which would answer "dog, Bengal"; this decoding cannot.
    Returns species [N], breed [N] (global index), top_k_breeds [N,k], top_k_scores [N,k], breed_probs [N,B];
    k is capped at the smallest species' breed count so the top-k never has to leave the species.
    """
    breed_probs = joint_breed_probs(outputs, hierarchy)
    species = tf.argmax(outputs[SPECIES_HEAD], axis=1, output_type=tf.int32)
    species_of_breed = tf.constant([b.species_index for b in hierarchy.breeds], tf.int32)
    in_species = tf.equal(species_of_breed[None, :], species[:, None])
    k = min(top_k, min(len(breeds) for breeds in hierarchy.breeds_of.values()))
    top_scores, top_breeds = tf.math.top_k(tf.where(in_species, breed_probs, -1.0), k=k)
    return {
        "species": species,
        "breed": top_breeds[:, 0],
        "top_k_breeds": top_breeds,
        "top_k_scores": top_scores,
        "breed_probs": breed_probs,
    }
