import json
import random

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing.util import assert_that, equal_to

from components.preprocess import make_example
from components.statistics import (
    Anomaly,
    ComputeStatistics,
    SplitStatistics,
    compute_statistics,
    format_anomalies,
    validate,
    write_report,
)
from pipeline.beam_runner import make_pipeline
from pipeline.config import ValidationConfig
from schemas import IMAGE_FORMAT, LABEL_BREED

JPEG = b"\xff\xd8 not really a jpeg \xff\xd9"  # the statistics never decode the image


def _example(hierarchy, breed: str, edit=None) -> bytes:
    b = hierarchy.by_name[breed]
    example = make_example(f"{breed}_1", b.global_index, b.species_index, b.index_in_species, JPEG, hierarchy)
    if edit:
        edit(example.features.feature)
    return example.SerializeToString()


def _items(hierarchy, split: str, counts: dict[str, int], size=(500, 375, 30_000)):
    """`counts[breed]` example items of each breed in `split`."""
    return [(split, _example(hierarchy, breed), *size) for breed, n in counts.items() for _ in range(n)]


def _kinds(anomalies):
    return sorted((a.split, a.kind, a.feature) for a in anomalies)


def _validate_train(stats, schema, hierarchy, previous=None, config=None):
    """Anomalies of the train split; the tests that build only train would otherwise see empty eval/test."""
    anomalies = validate(stats, schema, hierarchy, previous, config or ValidationConfig())
    empty = [(a.split, a.kind, a.severe) for a in anomalies if a.split != "train"]
    assert empty == [("eval", "empty_split", False), ("test", "empty_split", False)]
    return [a for a in anomalies if a.split == "train"]


def test_counts_per_species_breed_and_feature(hierarchy, schema):
    items = _items(hierarchy, "train", {"Abyssinian": 3, "beagle": 2, "pug": 1}) + _items(
        hierarchy, "eval", {"Bengal": 1}
    )
    stats = compute_statistics(items, schema, hierarchy)
    assert list(stats) == ["train", "eval", "test"]
    train = stats["train"]
    assert train["records"] == 6
    assert train["species"] == {"cat": 3, "dog": 3}
    assert len(train["breeds"]) == 37 and sum(train["breeds"].values()) == 6
    assert (train["breeds"]["Abyssinian"], train["breeds"]["beagle"], train["breeds"]["pug"]) == (3, 2, 1)
    assert train["breeds"]["Bengal"] == 0
    assert stats["eval"]["breeds"]["Bengal"] == 1 and stats["eval"]["species"] == {"cat": 1, "dog": 0}
    assert stats["test"]["records"] == 0 and stats["test"]["breeds"]["pug"] == 0
    breed = train["features"][LABEL_BREED]
    index = {name: str(hierarchy.by_name[name].global_index) for name in ("Abyssinian", "beagle", "pug")}
    assert index == {"Abyssinian": "0", "beagle": "4", "pug": "25"}
    assert (breed["present"], breed["missing"], breed["min"], breed["max"]) == (6, 0, 0, 25)
    assert breed["values"] == {"0": 3, "4": 2, "25": 1}
    assert train["features"]["label/cat_breed"]["values"] == {"-1": 3, "0": 3}
    assert train["features"][IMAGE_FORMAT]["values"] == {"jpeg": 6}
    assert train["features"]["image/encoded"]["mean_length"] == len(JPEG)
    # "Abyssinian_1.jpg" is 16 bytes, "beagle_1.jpg" 12, "pug_1.jpg" 9.
    assert train["features"]["image/filename"]["mean_length"] == (3 * 16 + 2 * 12 + 9) / 6
    assert train["bytes"] == {"total": 180_000, "mean": 30_000, "min": 30_000, "max": 30_000}
    json.dumps(stats)  # JSON-able as is


def test_size_summaries_are_exact(hierarchy, schema):
    rng = random.Random(3)
    sizes = [(rng.randint(100, 900), rng.randint(100, 900), rng.randint(1_000, 90_000)) for _ in range(301)]
    serialized = _example(hierarchy, "boxer")
    stats = compute_statistics([("train", serialized, *s) for s in sizes], schema, hierarchy)["train"]
    widths, heights, nbytes = (np.array(column) for column in zip(*sizes, strict=True))
    for key, values in (("image_width", widths), ("image_height", heights)):
        summary = stats[key]
        assert (summary["min"], summary["max"]) == (values.min(), values.max())
        assert summary["mean"] == pytest.approx(values.mean())
        assert summary["quantiles"] == pytest.approx(np.quantile(values, np.linspace(0, 1, 11)))
    ratios = widths / heights
    aspect = stats["aspect_ratio"]
    assert (aspect["min"], aspect["max"]) == pytest.approx((ratios.min(), ratios.max()))
    assert aspect["mean"] == pytest.approx(ratios.mean())
    assert aspect["quantiles"] == pytest.approx(
        np.quantile(ratios, np.linspace(0, 1, 11)), abs=5e-4 + 1e-12
    )  # ratios are counted rounded to 0.001
    assert stats["bytes"] == {"total": nbytes.sum(), "mean": pytest.approx(nbytes.mean()), "min": nbytes.min(),
                              "max": nbytes.max()}  # fmt: skip


def _all_breeds(hierarchy, split="train", n=1):
    return _items(hierarchy, split, dict.fromkeys(hierarchy.breed_names, n))


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


def _mixed_items(hierarchy):
    rng = random.Random(5)
    names = hierarchy.breed_names
    # Dyadic aspect ratios (2, 0.75, 1.25) sum exactly in any order, so merged results compare with ==.
    sizes = [(400, 200, 10), (300, 400, 20), (500, 400, 30), (640, 512, 40)]
    return [(rng.choice(["train", "eval", "test"]), _example(hierarchy, rng.choice(names)), *rng.choice(sizes))
            for _ in range(120)]  # fmt: skip


def test_merge_and_round_trip_equal_one_pass(hierarchy, schema):
    two_species = _example(hierarchy, "pug", lambda f: f["label/species"].int64_list.value.append(0))
    items = [(two_species, 10, 10, 10)] + [item[1:] for item in _mixed_items(hierarchy)]
    whole, first, second = (SplitStatistics(schema, hierarchy) for _ in range(3))
    for i, item in enumerate(items):
        whole.add_example(*item)
        (first if i % 3 else second).add_example(*item)
    whole.add_quarantined("too_small")
    second.add_quarantined("too_small")
    expected = whole.to_dict()
    assert expected["records"] == 121
    assert expected["features"]["label/species"]["num_values"]["counts"] == {"1": 120, "2": 1}
    assert first.merge(second).to_dict() == expected
    # from_dict restores a mergeable accumulator: halves stored as JSON merge to the same statistics.
    a, b = SplitStatistics(schema, hierarchy), SplitStatistics(schema, hierarchy)
    for i, item in enumerate(items):
        (a if i < 50 else b).add_example(*item)
    b.add_quarantined("too_small")
    restored = [SplitStatistics.from_dict(json.loads(json.dumps(s.to_dict())), schema, hierarchy) for s in (a, b)]
    assert restored[0].merge(restored[1]).to_dict() == expected


def test_beam_transform_matches_compute_statistics(hierarchy, schema):
    items = _mixed_items(hierarchy)
    quarantined = [("train", "not_an_image"), ("eval", "too_small"), ("trainval", "missing_file")]
    expected = compute_statistics(items, schema, hierarchy, quarantined)
    assert list(expected) == ["train", "eval", "test", "trainval"]
    with make_pipeline([]) as p:
        bad = p | "Quarantine" >> beam.Create(quarantined)
        out = p | beam.Create(items) | ComputeStatistics(schema, hierarchy, quarantined=bad)
        assert_that(out, equal_to([expected]))


def test_beam_transform_without_input_gives_empty_splits(hierarchy, schema):
    with make_pipeline([]) as p:
        out = p | beam.Create([]) | ComputeStatistics(schema, hierarchy)
        assert_that(out, equal_to([compute_statistics([], schema, hierarchy)]))


def test_write_report(hierarchy, schema, tmp_path):
    stats = compute_statistics(_items(hierarchy, "train", {"pug": 1}), schema, hierarchy)
    anomalies = validate(stats, schema, hierarchy, None, ValidationConfig())
    path = tmp_path / "statistics.json"
    write_report(str(path), stats, anomalies)
    report = json.loads(path.read_text())
    assert report["statistics"] == stats
    assert report["anomalies"][0]["kind"] == "missing_class" and report["anomalies"][0]["severe"] is True
    assert [Anomaly(**a) for a in report["anomalies"]] == anomalies
    assert tf.io.gfile.exists(str(path))
