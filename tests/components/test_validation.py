import json
import random

import tensorflow as tf

from components.data_config import ValidationConfig
from components.statistics import compute_statistics
from components.validation import Anomaly, format_anomalies, validate, write_validation_json
from schemas import IMAGE_FORMAT, LABEL_BREED
from tests.components.test_statistics import _all_breeds, _example, _items


def _kinds(anomalies):
    return sorted((a.split, a.kind, a.feature) for a in anomalies)


def _validate_train(stats, schema, hierarchy, previous=None, config=None):
    """Anomalies of the train split; the tests that build only train would otherwise see empty eval/test."""
    anomalies = validate(stats, schema, hierarchy, previous, config or ValidationConfig())
    empty = [(a.split, a.kind, a.severe) for a in anomalies if a.split != "train"]
    assert empty == [("eval", "empty_split", False), ("test", "empty_split", False)]
    return [a for a in anomalies if a.split == "train"]


def test_clean_statistics_have_no_anomalies(hierarchy, schema):
    items = _all_breeds(hierarchy, "train") + _all_breeds(hierarchy, "eval") + _all_breeds(hierarchy, "test")
    stats = compute_statistics(items, schema, hierarchy)
    assert validate(stats, schema, hierarchy, None, ValidationConfig()) == []
    assert validate(stats, schema, hierarchy, stats, ValidationConfig()) == []


def test_schema_violations(hierarchy, schema):
    def breed_40(f):
        f[LABEL_BREED].int64_list.value[0] = 40

    def no_format(f):
        del f[IMAGE_FORMAT]

    def png(f):
        f[IMAGE_FORMAT].bytes_list.value[0] = b"png"

    bad = [("train", _example(hierarchy, "pug", edit), 500, 375, 100) for edit in (breed_40, no_format, png, png)]
    stats = compute_statistics(_all_breeds(hierarchy) + bad, schema, hierarchy)
    assert stats["train"]["features"][IMAGE_FORMAT]["values"] == {"jpeg": 38, "png": 2}
    anomalies = _validate_train(stats, schema, hierarchy)
    assert _kinds(anomalies) == [
        ("train", "missing_feature", IMAGE_FORMAT),
        ("train", "schema_violation", IMAGE_FORMAT),
        ("train", "schema_violation", LABEL_BREED),
    ]
    assert all(a.severe for a in anomalies)
    by_kind = {(a.kind, a.feature): a.message for a in anomalies}
    assert by_kind[("schema_violation", LABEL_BREED)] == (
        "'label/breed' values outside the schema int_domain [0, 36]: 40 (1); observed range [0, 40]"
    )
    assert "missing in 1 of 41 examples" in by_kind[("missing_feature", IMAGE_FORMAT)]
    assert by_kind[("schema_violation", IMAGE_FORMAT)] == (
        "'image/format' has 2 values not in the schema string_domain ['jpeg']: png (2)"
    )


def test_wrong_type_extra_values_and_unknown_feature_are_violations(hierarchy, schema):
    def breed_as_bytes(f):
        f[LABEL_BREED].ClearField("int64_list")
        f[LABEL_BREED].bytes_list.value.append(b"pug")

    def two_species(f):
        f["label/species"].int64_list.value.append(1)

    def extra(f):
        f["image/extra"].float_list.value.append(1.0)

    bad = [("train", _example(hierarchy, "pug", edit), 500, 375, 100) for edit in (breed_as_bytes, two_species, extra)]
    stats = compute_statistics(_all_breeds(hierarchy) + bad, schema, hierarchy)
    train = stats["train"]
    assert train["features"][LABEL_BREED]["wrong_type"] == 1 and train["features"][LABEL_BREED]["missing"] == 0
    assert train["features"]["label/species"]["num_values"] == {"min": 1, "max": 2, "counts": {"1": 39, "2": 1}}
    assert train["unknown_features"] == {"image/extra": 1}
    messages = format_anomalies(_validate_train(stats, schema, hierarchy))
    assert messages == [
        "SEVERE train schema_violation: 'label/species' has 1..2 values per example; the schema shape needs 1",
        "SEVERE train schema_violation: 'label/breed' holds another value type than the schema's INT in 1 of 40 "
        "examples",
        "SEVERE train schema_violation: 'image/extra' is not in the schema but is set in 1 of 40 examples",
    ]


def test_missing_class_in_train_names_the_breeds(hierarchy, schema):
    counts = dict.fromkeys(hierarchy.breed_names, 2)
    del counts["pug"], counts["Bombay"]
    stats = compute_statistics(_items(hierarchy, "train", counts), schema, hierarchy)
    anomalies = _validate_train(stats, schema, hierarchy)
    assert anomalies == [
        Anomaly("missing_class", "train", LABEL_BREED, "no examples of 2 breeds of 37: 'Bombay', 'pug'", True)
    ]


def test_lost_breed_flags_missing_class_and_drift(hierarchy, schema):
    previous = compute_statistics(_all_breeds(hierarchy, n=40), schema, hierarchy)
    counts = dict.fromkeys(hierarchy.breed_names, 40)
    del counts["pug"]
    current = compute_statistics(_items(hierarchy, "train", counts), schema, hierarchy)
    anomalies = _validate_train(current, schema, hierarchy, previous)
    assert format_anomalies(anomalies) == [
        "SEVERE train missing_class: no examples of breed 'pug' (previous run: 40)",
        # pug's share drops by 1/37 = 0.0270; each other breed's grows by only 1/36 - 1/37 = 0.00075.
        "WARNING train distribution_drift: breed distribution moved by L-infinity distance 0.0270 (threshold 0.02) "
        "since the previous run; largest change: 'pug' 2.70% → 0.00% (40 → 0 examples)",
    ]


def test_no_drift_for_two_samples_of_one_distribution(hierarchy, schema):
    rng = random.Random(11)
    samples = [
        compute_statistics(
            _items(hierarchy, "train", {b: 100 + rng.randint(-3, 3) for b in hierarchy.breed_names}), schema, hierarchy
        )
        for _ in range(2)
    ]
    assert _validate_train(samples[1], schema, hierarchy, samples[0]) == []
    # The same pair is flagged once the threshold is below the noise: the check is live, not vacuous.
    strict = _validate_train(samples[1], schema, hierarchy, samples[0], ValidationConfig(drift_linf_threshold=1e-4))
    assert [a.kind for a in strict] == ["distribution_drift"] and not strict[0].severe


def test_quarantine_and_empty_splits(hierarchy, schema):
    quarantined = [("train", "not_an_image")] * 2 + [
        ("train", "too_small"),
        ("eval", "empty_file"),
        ("?", "malformed_line"),
    ]
    stats = compute_statistics(_all_breeds(hierarchy, "test"), schema, hierarchy, quarantined)
    assert stats["train"]["quarantined"] == {"not_an_image": 2, "too_small": 1}
    anomalies = validate(stats, schema, hierarchy, None, ValidationConfig())
    assert [(a.split, a.kind, a.severe) for a in anomalies] == [
        ("train", "empty_split", True),
        ("train", "quarantine", False),
        ("eval", "empty_split", False),
        ("eval", "quarantine", False),
        ("?", "quarantine", False),  # a split of its own for records whose split is unknown: no empty_split
    ]
    assert anomalies[0].message == "no examples written (3 quarantined)"
    assert anomalies[1].message == "3 records quarantined: not_an_image (2), too_small (1)"
    relaxed = validate(stats, schema, hierarchy, None, ValidationConfig(severe=()))
    assert not any(a.severe for a in relaxed)


def test_write_validation_json(hierarchy, schema, tmp_path):
    stats = compute_statistics(_items(hierarchy, "train", {"pug": 1}), schema, hierarchy)
    anomalies = validate(stats, schema, hierarchy, None, ValidationConfig())
    path = tmp_path / "statistics.json"
    write_validation_json(str(path), stats, anomalies)
    report = json.loads(path.read_text())
    assert report["statistics"] == stats
    assert report["anomalies"][0]["kind"] == "missing_class" and report["anomalies"][0]["severe"] is True
    assert [Anomaly(**a) for a in report["anomalies"]] == anomalies
    assert tf.io.gfile.exists(str(path))
