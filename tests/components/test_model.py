import numpy as np
import pytest
import tensorflow as tf

from components.model import (
    MaskedSparseCategoricalAccuracy,
    MaskedSparseCategoricalCrossentropy,
    breed_order,
    hierarchical_answer,
    joint_breed_probs,
)


def _softmax(logits):
    return tf.nn.softmax(tf.constant(logits, tf.float32))


def test_masked_loss_equals_plain_sparse_crossentropy_over_valid_labels():
    probs = _softmax([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [1.0, 1.0, 1.0], [-2.0, 4.0, 0.0]])
    labels = tf.constant([0, -1, 2, 1])
    loss = MaskedSparseCategoricalCrossentropy()(labels, probs)
    p = probs.numpy()
    expected = -np.mean([np.log(p[0, 0]), np.log(p[2, 2]), np.log(p[3, 1])])  # mean over the 3 valid rows
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    plain = tf.keras.losses.sparse_categorical_crossentropy(tf.constant([0, 2, 1]), tf.gather(probs, [0, 2, 3]))
    assert float(loss) == pytest.approx(float(tf.reduce_mean(plain)), rel=1e-6)


def test_masked_label_gives_zero_loss_and_zero_gradient():
    logits = tf.Variable([[2.0, -1.0, 0.3], [0.5, 0.5, 3.0]])
    loss_fn = MaskedSparseCategoricalCrossentropy()
    with tf.GradientTape() as tape:
        loss = loss_fn(tf.constant([-1, 2]), tf.nn.softmax(logits))
    grad = tape.gradient(loss, logits).numpy()
    np.testing.assert_array_equal(grad[0], np.zeros(3))  # the -1 row: exactly zero
    assert np.abs(grad[1]).sum() > 0.01  # the valid row still learns

    with tf.GradientTape() as tape:
        all_masked = loss_fn(tf.constant([-1, -1]), tf.nn.softmax(logits))
    assert float(all_masked) == 0.0
    np.testing.assert_array_equal(tape.gradient(all_masked, logits).numpy(), np.zeros((2, 3)))


def test_masked_loss_is_not_diluted_by_other_species():
    """A head's loss must not shrink because more of the batch belongs to the other species."""
    probs = _softmax([[1.0, 0.0]] * 8)
    one_valid = MaskedSparseCategoricalCrossentropy()(tf.constant([0] + [-1] * 7), probs)
    all_valid = MaskedSparseCategoricalCrossentropy()(tf.constant([0] * 8), probs)
    assert float(one_valid) == pytest.approx(float(all_valid), rel=1e-6)


def test_masked_accuracy_ignores_minus_one():
    metric = MaskedSparseCategoricalAccuracy()
    metric.update_state(tf.constant([0, -1, 1, -1]), _softmax([[3.0, 0.0], [3.0, 0.0], [3.0, 0.0], [0.0, 3.0]]))
    assert float(metric.result()) == pytest.approx(0.5)  # 1 of the 2 labelled rows is right


def test_joint_breed_probs_is_global_order_and_sums_to_one(hierarchy):
    rng = np.random.default_rng(0)
    outputs = {"species": _softmax(rng.normal(size=(4, 2)))}
    for species, breeds in hierarchy.breeds_of.items():
        outputs[f"{species}_breed"] = _softmax(rng.normal(size=(4, len(breeds))))
    joint = joint_breed_probs(outputs, hierarchy).numpy()
    assert joint.shape == (4, 37)
    np.testing.assert_allclose(joint.sum(axis=1), 1.0, rtol=1e-5)
    beagle = hierarchy.by_name["beagle"]  # a dog, CLASS-ID 5
    expected = outputs["species"][:, 1] * outputs["dog_breed"][:, beagle.index_in_species]
    np.testing.assert_allclose(joint[:, beagle.global_index], expected.numpy(), rtol=1e-6)
    assert sorted(breed_order(hierarchy)) == list(range(37))


def test_answer_never_names_a_breed_of_the_other_species(hierarchy):
    """p(cat)=0.45 with a peaked cat-breed head: the joint argmax is a cat breed, but the answer is a dog."""
    cat_breeds = np.full((1, 12), 0.01)
    cat_breeds[0, 3] = 0.89  # Bombay
    outputs = {
        "species": tf.constant([[0.45, 0.55]]),
        "cat_breed": tf.constant(cat_breeds, tf.float32),
        "dog_breed": tf.constant(np.full((1, 25), 1 / 25), tf.float32),
    }
    joint = joint_breed_probs(outputs, hierarchy).numpy()
    assert hierarchy.breeds[int(joint.argmax())].name == "Bombay"
    answer = {k: v.numpy() for k, v in hierarchical_answer(outputs, hierarchy, top_k=5).items()}
    assert answer["species"][0] == 1
    assert hierarchy.breeds[answer["breed"][0]].species == "dog"
    assert all(hierarchy.breeds[b].species == "dog" for b in answer["top_k_breeds"][0])
    np.testing.assert_allclose(answer["top_k_scores"][0], 0.55 / 25, rtol=1e-5)
    assert answer["top_k_breeds"].shape == (1, 5)
    assert hierarchical_answer(outputs, hierarchy, top_k=50)["top_k_breeds"].shape == (1, 12)  # capped
