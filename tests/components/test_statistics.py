import json
import random

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to

from components.preprocess import make_example
from components.statistics import ComputeStatistics, SplitStatistics, compute_statistics
from components.statistics_layout import StatisticsLayout
from pipeline.beam_runner import make_pipeline
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


def _mixed_items(hierarchy):
    rng = random.Random(5)
    names = hierarchy.breed_names
    # Dyadic aspect ratios (2, 0.75, 1.25) sum exactly in any order, so merged results compare with ==.
    sizes = [(400, 200, 10), (300, 400, 20), (500, 400, 30), (640, 512, 40)]
    return [(rng.choice(["train", "eval", "test"]), _example(hierarchy, rng.choice(names)), *rng.choice(sizes))
            for _ in range(120)]  # fmt: skip


def test_merge_and_beam_round_trip_equal_one_pass(hierarchy, schema):
    two_species = _example(hierarchy, "pug", lambda f: f["label/species"].int64_list.value.append(0))
    items = [(two_species, 10, 10, 10)] + [item[1:] for item in _mixed_items(hierarchy)]
    layout = StatisticsLayout.build(schema, hierarchy)
    whole, first, second = (SplitStatistics(layout) for _ in range(3))
    for i, item in enumerate(items):
        whole.add_example(*item)
        (first if i % 3 else second).add_example(*item)
    whole.add_quarantined("too_small")
    second.add_quarantined("too_small")
    expected = whole.to_dict()
    assert expected["records"] == 121
    assert expected["features"]["label/species"]["num_values"]["counts"] == {"1": 120, "2": 1}
    assert first.merge(second).to_dict() == expected
    # Beam moves accumulators between workers through the CombineFn's accumulator coder (ComputeStatistics keeps
    # the default): halves encoded and decoded by it still merge to the same statistics.
    coder = beam.CombineFn().get_accumulator_coder()
    a, b = SplitStatistics(layout), SplitStatistics(layout)
    for i, item in enumerate(items):
        (a if i < 50 else b).add_example(*item)
    b.add_quarantined("too_small")
    restored = [coder.decode(coder.encode({"train": s}))["train"] for s in (a, b)]
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
