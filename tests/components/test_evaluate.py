import json

import numpy as np
import pytest
import tensorflow as tf

from components.evaluate import evaluate_model, evaluate_outputs, metric_names, metric_value

# true breed, p(cat), cat-head peaks, dog-head peaks (the rest of a head is spread evenly over its other breeds)
CASE = [
    ("Abyssinian", 0.9, {"Abyssinian": 0.8}, {"pug": 0.5}),  # right: cat, Abyssinian; confidence 0.72
    ("Bengal", 0.7, {"Birman": 0.6, "Bengal": 0.3}, {}),  # right species, wrong breed (Bengal 2nd); 0.42
    ("beagle", 0.62, {"Bengal": 0.5}, {"beagle": 0.9}),  # wrong species: answers cat, Bengal; 0.31
    ("pug", 0.25, {}, {"pug": 0.55}),  # right: dog, pug; 0.4125
    ("Abyssinian", 0.95, {"Abyssinian": 0.9}, {}),  # right; 0.855
]


def _head(breeds, peaks):
    rest = (1.0 - sum(peaks.values())) / (len(breeds) - len(peaks))
    return [peaks.get(b.name, rest) for b in breeds]


def _case(hierarchy, rows=CASE):
    """(species_true, breed_true, outputs) with Keras output names."""
    breeds = [hierarchy.by_name[row[0]] for row in rows]
    outputs = {
        "species": np.array([[p, 1 - p] for _, p, _, _ in rows], np.float32),
        "cat_breed": np.array([_head(hierarchy.breeds_of["cat"], cat) for _, _, cat, _ in rows], np.float32),
        "dog_breed": np.array([_head(hierarchy.breeds_of["dog"], dog) for _, _, _, dog in rows], np.float32),
    }
    return np.array([b.species_index for b in breeds]), np.array([b.global_index for b in breeds]), outputs


def _index(hierarchy, name):
    return hierarchy.by_name[name].global_index


def test_accuracies_of_the_served_answer(hierarchy):
    m = evaluate_outputs(*_case(hierarchy), hierarchy)
    assert m["examples"] == 5
    assert m["species_accuracy"] == pytest.approx(4 / 5)
    assert m["breed_top1_accuracy"] == pytest.approx(3 / 5)
    assert m["breed_top5_accuracy"] == pytest.approx(4 / 5)  # Bengal is 2nd of the cat answer; beagle never
    # The head alone: the dog head is right on the beagle the answer got wrong (the species went wrong).
    assert m["breed_accuracy_given_species"] == pytest.approx({"cat": 2 / 3, "dog": 1.0})
    assert m["mean_per_class_accuracy"] == pytest.approx(0.5)  # Abyssinian 1, Bengal 0, beagle 0, pug 1
    expected = dict.fromkeys(hierarchy.breed_names)
    expected.update({"Abyssinian": 1.0, "Bengal": 0.0, "beagle": 0.0, "pug": 1.0})
    assert m["per_breed_accuracy"] == expected
    assert list(m["per_breed_accuracy"]) == hierarchy.breed_names


def test_top_k_key_follows_the_served_k(hierarchy):
    assert evaluate_outputs(*_case(hierarchy), hierarchy, top_k=3)["breed_top3_accuracy"] == pytest.approx(4 / 5)
    capped = evaluate_outputs(*_case(hierarchy), hierarchy, top_k=40)  # capped at the 12 cat breeds
    assert capped["breed_top12_accuracy"] == pytest.approx(4 / 5)
    assert "breed_top12_accuracy" in capped["by_species"]["dog"]


def test_hierarchical_precision_recall_f1(hierarchy):
    m = evaluate_outputs(*_case(hierarchy), hierarchy)
    # |pred ∩ true| = 2, 1, 0, 2, 2 of 2 labels each.
    assert m["hierarchical_precision"] == pytest.approx(7 / 10)
    assert m["hierarchical_recall"] == pytest.approx(7 / 10)
    assert m["hierarchical_f1"] == pytest.approx(7 / 10)


@pytest.mark.parametrize("row, expected", [(0, 1.0), (1, 0.5), (2, 0.0)])
def test_hierarchical_f1_of_one_example(hierarchy, row, expected):
    """Fully right 1, right species with the wrong breed 0.5, wrong species 0."""
    m = evaluate_outputs(*_case(hierarchy, [CASE[row]]), hierarchy)
    assert (m["hierarchical_precision"], m["hierarchical_recall"], m["hierarchical_f1"]) == pytest.approx(
        (expected,) * 3
    )


def test_expected_calibration_error_and_reliability_of_four_examples(hierarchy):
    m = evaluate_outputs(*_case(hierarchy, CASE[:4]), hierarchy)
    # Confidences 0.72 ✓, 0.42 ✗, 0.31 ✗, 0.4125 ✓ fall in bins 10, 6, 4, 6 (width 1/15).
    bin6 = (0.42 + 0.4125) / 2
    assert m["expected_calibration_error"] == pytest.approx(
        (abs(1 - 0.72) + 2 * abs(0.5 - bin6) + abs(0 - 0.31)) / 4, abs=1e-6
    )
    r = m["reliability"]
    assert r["bin_edges"] == pytest.approx([i / 15 for i in range(16)])
    assert r["count"] == [0, 0, 0, 0, 1, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0]
    assert r["confidence"][6] == pytest.approx(bin6, abs=1e-6)
    assert r["accuracy"][6] == 0.5
    assert (r["accuracy"][4], r["accuracy"][10]) == (0.0, 1.0)
    assert r["confidence"][0] is None and r["accuracy"][14] is None
    # max p(species) 0.9 ✓, 0.7 ✓, 0.62 ✗, 0.75 ✓: each alone in its bin.
    assert m["species_expected_calibration_error"] == pytest.approx((0.1 + 0.3 + 0.62 + 0.25) / 4, abs=1e-6)


def test_confusion_matrices(hierarchy):
    m = evaluate_outputs(*_case(hierarchy), hierarchy)
    assert m["species_confusion"] == [[3, 0], [1, 1]]  # rows true (cat, dog), columns answered
    expected = np.zeros((37, 37), int)
    for true, answered, count in [
        ("Abyssinian", "Abyssinian", 2),
        ("Bengal", "Birman", 1),
        ("beagle", "Bengal", 1),
        ("pug", "pug", 1),
    ]:
        expected[_index(hierarchy, true), _index(hierarchy, answered)] = count
    np.testing.assert_array_equal(np.array(m["breed_confusion"]), expected)


def test_by_species_slices(hierarchy):
    by_species = evaluate_outputs(*_case(hierarchy), hierarchy)["by_species"]
    assert by_species["cat"] == pytest.approx(
        {
            "examples": 3,
            "species_accuracy": 1.0,
            "breed_top1_accuracy": 2 / 3,
            "breed_top5_accuracy": 1.0,
            "mean_per_class_accuracy": 0.5,  # Abyssinian 2/2, Bengal 0/1
            "hierarchical_f1": 5 / 6,
            "expected_calibration_error": (0.28 + 0.42 + 0.145) / 3,
        },
        abs=1e-6,
    )
    assert by_species["dog"] == pytest.approx(
        {
            "examples": 2,
            "species_accuracy": 0.5,
            "breed_top1_accuracy": 0.5,
            "breed_top5_accuracy": 0.5,
            "mean_per_class_accuracy": 0.5,
            "hierarchical_f1": 0.5,
            "expected_calibration_error": (0.31 + abs(1 - 0.4125)) / 2,
        },
        abs=1e-6,
    )


def test_a_species_without_test_examples_has_null_slice_metrics(hierarchy):
    m = evaluate_outputs(*_case(hierarchy, [CASE[0]]), hierarchy)
    dog = m["by_species"]["dog"]
    assert dog["examples"] == 0
    assert {v for k, v in dog.items() if k != "examples"} == {None}
    assert m["breed_accuracy_given_species"]["dog"] is None


def test_hierarchy_consistency_under_adversarial_outputs(hierarchy):
    """The joint argmax names the other species' breed; the served answer stays within the answered species."""
    rows = [
        ("Sphynx", 0.51, {"Sphynx": 0.2}, {"pug": 1.0}),  # joint: pug 0.49 > Sphynx 0.102
        ("boxer", 0.49, {"Bengal": 1.0}, {"boxer": 0.1}),  # joint: Bengal 0.49 > boxer 0.051
    ]
    species_true, breed_true, outputs = _case(hierarchy, rows)
    joint = np.concatenate(
        [outputs["species"][:, :1] * outputs["cat_breed"], outputs["species"][:, 1:] * outputs["dog_breed"]], 1
    )
    order = [b.global_index for s in hierarchy.species for b in hierarchy.breeds_of[s]]
    assert [order[i] for i in joint.argmax(1)] == [_index(hierarchy, "pug"), _index(hierarchy, "Bengal")]
    m = evaluate_outputs(species_true, breed_true, outputs, hierarchy)
    assert m["hierarchy_consistency"] == 1.0
    assert m["breed_top1_accuracy"] == 1.0  # Sphynx and boxer, as the species heads decide


def test_signature_output_names_give_the_same_metrics(hierarchy):
    species_true, breed_true, outputs = _case(hierarchy)
    signature = {f"{name}_probs": probs for name, probs in outputs.items()}
    # What the signature also returns: answered labels as strings, the joint distribution.
    signature["species"] = np.array([b"cat"] * 5)
    signature["breed_probs"] = np.full((5, 37), 1 / 37, np.float32)
    assert evaluate_outputs(species_true, breed_true, signature, hierarchy) == evaluate_outputs(
        species_true, breed_true, outputs, hierarchy
    )


def test_bad_inputs_are_rejected(hierarchy):
    species_true, breed_true, outputs = _case(hierarchy)
    with pytest.raises(ValueError, match="dog_breed"):
        evaluate_outputs(species_true, breed_true, {k: v for k, v in outputs.items() if k != "dog_breed"}, hierarchy)
    with pytest.raises(ValueError, match="shape"):
        evaluate_outputs(species_true[:4], breed_true[:4], outputs, hierarchy)
    with pytest.raises(ValueError, match="contradict"):
        evaluate_outputs(1 - species_true, breed_true, outputs, hierarchy)
    with pytest.raises(ValueError, match="no examples"):
        evaluate_outputs(species_true[:0], breed_true[:0], outputs, hierarchy)


def test_uncertain_species_widens_the_top_k_but_not_the_answer(hierarchy):
    """Below the threshold the top-k range over every species; the answer and its confidence stay in-species."""
    # p(cat) = 0.51 < 0.6: top-k = pug (joint 0.49), Sphynx (0.102), ...; the answer is still cat, Sphynx.
    rows = [("pug", 0.51, {"Sphynx": 0.2}, {"pug": 1.0}), ("Sphynx", 0.51, {"Sphynx": 0.2}, {"pug": 1.0})]
    case = _case(hierarchy, rows)
    sure, unsure = evaluate_outputs(*case, hierarchy), evaluate_outputs(*case, hierarchy, uncertainty_threshold=0.6)
    assert sure["breed_top5_accuracy"] == 0.5  # pug is outside the cat top-5
    assert unsure["breed_top5_accuracy"] == 1.0
    for m in (sure, unsure):
        assert m["breed_top1_accuracy"] == 0.5 and m["hierarchy_consistency"] == 1.0
        # confidence 0.51 · 0.2 = 0.102 for both answers (one wrong, one right), not the top-k's first 0.49
        assert m["expected_calibration_error"] == pytest.approx(abs(0.5 - 0.102), abs=1e-6)
        assert m["reliability"]["count"][1] == 2


def test_metric_names_and_values(hierarchy):
    m = evaluate_outputs(*_case(hierarchy), hierarchy)
    names = metric_names(m)
    for name in [
        "examples",
        "species_accuracy",
        "breed_top5_accuracy",
        "hierarchical_f1",
        "by_species.cat.breed_top1_accuracy",
        "breed_accuracy_given_species.dog",
        "per_breed_accuracy.pug",
    ]:
        assert name in names
    assert "per_breed_accuracy.Bombay" not in names  # no test example: null, skipped
    assert not [n for n in names if n.startswith(("reliability", "species_confusion", "breed_confusion"))]
    assert metric_value(m, "by_species.cat.breed_top1_accuracy") == pytest.approx(2 / 3)
    assert metric_value(m, "breed_accuracy_given_species.dog") == 1.0
    assert metric_value(m, "examples") == 5.0
    with pytest.raises(ValueError, match=r"unknown metric 'species_acc'; known: .*species_accuracy"):
        metric_value(m, "species_acc")
    with pytest.raises(ValueError, match="no value"):
        metric_value(m, "per_breed_accuracy.Bombay")


def test_metrics_are_json_serialisable(hierarchy):
    m = evaluate_outputs(*_case(hierarchy), hierarchy)
    assert json.loads(json.dumps(m, allow_nan=False)) == m


def test_evaluate_model_equals_evaluate_outputs_of_its_outputs(small_model, hierarchy):
    breeds = [hierarchy.breeds[g] for g in (0, 5, 7, 25, 32, 36)]  # both species, two batches
    images = tf.random.stateless_uniform((len(breeds), 32, 32, 3), seed=(1, 2), maxval=255.0)
    labels = {
        "species": tf.constant([b.species_index for b in breeds]),
        "cat_breed": tf.constant([b.index_in_species if b.species == "cat" else -1 for b in breeds]),
        "dog_breed": tf.constant([b.index_in_species if b.species == "dog" else -1 for b in breeds]),
        "breed": tf.constant([b.global_index for b in breeds]),
    }
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    m = evaluate_model(small_model, dataset, hierarchy, top_k=3)

    batches = [small_model(x, training=False) for x, _ in dataset]
    outputs = {name: np.concatenate([b[name].numpy() for b in batches]) for name in batches[0]}
    assert m == evaluate_outputs(labels["species"].numpy(), labels["breed"].numpy(), outputs, hierarchy, top_k=3)
    assert m["examples"] == 6 and m["hierarchy_consistency"] == 1.0
    json.dumps(m, allow_nan=False)
    with pytest.raises(ValueError, match="empty"):
        evaluate_model(small_model, dataset.take(0), hierarchy)
