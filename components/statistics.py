"""Statistics of the written examples: TFX's StatisticsGen inside our Beam job.

Pure core: SplitStatistics (a mergeable accumulator over one split) and compute_statistics. Beam shell:
ComputeStatistics, a CombineFn around SplitStatistics. Their checks are in components/validation.py.

Examples are parsed with the protobuf class (`tf.train.Example.FromString`), never with TF ops, and no image
bytes are kept: per example the accumulator updates a few counters and dicts.

Numeric summaries are exact and bounded in memory: image width and height are kept as {value: count}
(at most one entry per distinct pixel size), the aspect ratio as {ratio rounded to 0.001: count} with its
min, max and mean exact. Quantiles are computed from these counts (NUM_QUANTILES + 1 points, 0 % … 100 %,
linear interpolation between order statistics like numpy's default), so they are exact for width and height
and exact to ±0.0005 for the aspect ratio, whatever the number of records.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import defaultdict

import apache_beam as beam
import tensorflow as tf

from components.statistics_layout import BYTES, FLOAT, INT, FeatureSpec, StatisticsLayout, ordered_splits
from schemas import LABEL_BREED, LABEL_SPECIES, Hierarchy

NUM_QUANTILES = 10  # deciles: 11 points from min to max
ASPECT_RESOLUTION = 1000  # aspect ratios are counted rounded to 1/1000

_LIST_OF = {INT: "int64_list", FLOAT: "float_list", BYTES: "bytes_list"}  # tf.train.Feature's oneof fields
_Example = tf.train.Example  # the generated protobuf class: FromString is pure (upb) protobuf, no TF op


# ---------------------------------------------------------------------------------------------- accumulator


class _FeatureAcc:
    """Running statistics of one schema feature. 'Present' means at least one value (an empty list is missing).

    Only rare events (missing, not one value) are counted per feature: present = records - missing, and the
    examples with exactly one value are present - sum(num_values), which keeps the common path short.
    """

    __slots__ = ("missing", "wrong_type", "num_values", "min", "max", "values", "length_total", "value_total")

    def __init__(self, count_values: bool):
        self.missing = 0
        self.wrong_type = 0  # the key holds values of another type than the schema's (counted as present)
        self.num_values: dict[int, int] = {}  # values per example → examples, for counts other than 1
        self.min = math.inf  # numeric features without value counts
        self.max = -math.inf
        self.values: dict | None = {} if count_values else None
        self.length_total = 0  # BYTES without value counts: summed byte lengths ...
        self.value_total = 0  # ... over this many values

    def merge(self, other: _FeatureAcc) -> None:
        self.missing += other.missing
        self.wrong_type += other.wrong_type
        _add_counts(self.num_values, other.num_values)
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        if self.values is not None:
            _add_counts(self.values, other.values)
        self.length_total += other.length_total
        self.value_total += other.value_total

    def add_many(self, kind: str, values) -> None:
        """The uncommon path: an example with several values."""
        n = len(values)
        self.num_values[n] = self.num_values.get(n, 0) + 1
        values = list(values)
        if self.values is not None:
            for v in values:
                self.values[v] = self.values.get(v, 0) + 1
        elif kind == BYTES:
            self.value_total += n
            self.length_total += sum(map(len, values))
        else:
            self.min, self.max = min(self.min, *values), max(self.max, *values)


def _add_counts(into: dict, other: dict) -> None:
    for key, n in other.items():
        into[key] = into.get(key, 0) + n


def _finite(x):
    return None if x in (math.inf, -math.inf) else x


def _quantiles(counts: dict, total: int, scale: float = 1.0) -> list[float]:
    """NUM_QUANTILES + 1 quantiles of the multiset {value: count} (numpy 'linear' method)."""
    if total == 0:
        return []
    values = sorted(counts)
    cumulative = list(itertools.accumulate(counts[v] for v in values))

    def at(rank: int):  # the value of 0-based order statistic `rank`
        return values[bisect.bisect_right(cumulative, rank)]

    out = []
    for i in range(NUM_QUANTILES + 1):
        position = i * (total - 1) / NUM_QUANTILES
        low = math.floor(position)
        a, b = at(low), at(min(low + 1, total - 1))
        out.append((a + (b - a) * (position - low)) / scale)
    return out


def _size_summary(counts: dict[int, int], total: int) -> dict:
    return {
        "min": min(counts) if counts else None,
        "max": max(counts) if counts else None,
        "mean": sum(v * n for v, n in counts.items()) / total if total else None,
        "quantiles": _quantiles(counts, total),
        "counts": {str(v): counts[v] for v in sorted(counts)},
    }


class SplitStatistics:
    """Mergeable statistics of one split: add_example / add_quarantined, merge, to_dict.

    `layout` is StatisticsLayout.build(schema, hierarchy), built once and shared by every split's accumulator.
    """

    def __init__(self, layout: StatisticsLayout):
        self._layout = layout
        self._features = [(spec, _FeatureAcc(spec.count_values)) for spec in layout.features]
        # Flat tuples: add_example unpacks them instead of reading attributes per feature.
        self._hot = [(spec.name, spec.kind, _LIST_OF[spec.kind], acc) for spec, acc in self._features]
        self._known = frozenset(spec.name for spec in layout.features)
        self.records = 0
        self.quarantined: dict[str, int] = {}
        self._unknown: dict[str, int] = {}  # feature keys the schema does not have
        self._widths: dict[int, int] = {}
        self._heights: dict[int, int] = {}
        self._aspects: dict[int, int] = {}  # round(width / height * ASPECT_RESOLUTION) → count
        self._aspect_sum = 0.0
        self._aspect_min = math.inf
        self._aspect_max = -math.inf
        self._bytes_total = 0
        self._bytes_min = math.inf
        self._bytes_max = -math.inf

    def add_example(self, serialized_example: bytes, width: int, height: int, nbytes: int) -> None:
        """One written example; width, height and nbytes describe the ORIGINAL image."""
        features = _Example.FromString(serialized_example).features.feature
        get = features.get  # .get, not [], which would insert an empty entry into the map
        found = 0
        for name, kind, list_field, acc in self._hot:
            feature = get(name)
            if feature is None:
                acc.missing += 1
                continue
            found += 1
            values = getattr(feature, list_field).value
            n = len(values)
            if n != 1:
                if n:
                    acc.add_many(kind, values)
                elif feature.WhichOneof("kind") in (None, list_field):  # an empty list: no value
                    acc.missing += 1
                else:
                    acc.wrong_type += 1
                continue
            # Indexing, not iterating: iterating a upb repeated field costs ~0.5 us per value.
            v = values[0]
            counts = acc.values
            if counts is not None:
                counts[v] = counts.get(v, 0) + 1
            elif kind == BYTES:
                acc.length_total += len(v)
                acc.value_total += 1
            else:
                if v < acc.min:
                    acc.min = v
                if v > acc.max:
                    acc.max = v
        if len(features) > found:
            for name in features:
                if name not in self._known:
                    self._unknown[name] = self._unknown.get(name, 0) + 1
        self.records += 1
        self._widths[width] = self._widths.get(width, 0) + 1
        self._heights[height] = self._heights.get(height, 0) + 1
        if height > 0:
            ratio = width / height
            key = round(ratio * ASPECT_RESOLUTION)
            self._aspects[key] = self._aspects.get(key, 0) + 1
            self._aspect_sum += ratio
            if ratio < self._aspect_min:
                self._aspect_min = ratio
            if ratio > self._aspect_max:
                self._aspect_max = ratio
        self._bytes_total += nbytes
        if nbytes < self._bytes_min:
            self._bytes_min = nbytes
        if nbytes > self._bytes_max:
            self._bytes_max = nbytes

    def add_quarantined(self, reason: str) -> None:
        self.quarantined[reason] = self.quarantined.get(reason, 0) + 1

    def merge(self, other: SplitStatistics) -> SplitStatistics:
        """Adds `other` into self (same schema and hierarchy); returns self."""
        if other._layout != self._layout:
            raise ValueError("cannot merge statistics computed with a different schema or hierarchy")
        for (_, acc), (_, other_acc) in zip(self._features, other._features, strict=True):
            acc.merge(other_acc)
        self.records += other.records
        for mine, theirs in (
            (self.quarantined, other.quarantined),
            (self._unknown, other._unknown),
            (self._widths, other._widths),
            (self._heights, other._heights),
            (self._aspects, other._aspects),
        ):
            _add_counts(mine, theirs)
        self._aspect_sum += other._aspect_sum
        self._aspect_min = min(self._aspect_min, other._aspect_min)
        self._aspect_max = max(self._aspect_max, other._aspect_max)
        self._bytes_total += other._bytes_total
        self._bytes_min = min(self._bytes_min, other._bytes_min)
        self._bytes_max = max(self._bytes_max, other._bytes_max)
        return self

    def to_dict(self) -> dict:
        """JSON-able statistics of the split."""
        n = self.records
        feature_stats = {spec.name: self._feature_dict(spec, acc) for spec, acc in self._features}
        species_counts = feature_stats.get(LABEL_SPECIES, {}).get("values", {})
        breed_counts = feature_stats.get(LABEL_BREED, {}).get("values", {})
        aspect_total = sum(self._aspects.values())
        return {
            "records": n,
            "quarantined": dict(sorted(self.quarantined.items())),
            "species": {s: species_counts.get(str(i), 0) for i, s in enumerate(self._layout.species)},
            "breeds": {b: breed_counts.get(str(i), 0) for i, b in enumerate(self._layout.breeds)},
            "image_width": _size_summary(self._widths, n),
            "image_height": _size_summary(self._heights, n),
            "aspect_ratio": {
                "min": _finite(self._aspect_min),
                "max": _finite(self._aspect_max),
                "mean": self._aspect_sum / aspect_total if aspect_total else None,
                "quantiles": _quantiles(self._aspects, aspect_total, ASPECT_RESOLUTION),
                "sum": self._aspect_sum,  # exact, unlike mean × count: lets a reader combine splits exactly
                "counts": {f"{k / ASPECT_RESOLUTION:.3f}": self._aspects[k] for k in sorted(self._aspects)},
            },
            "bytes": {
                "total": self._bytes_total,
                "mean": self._bytes_total / n if n else None,
                "min": _finite(self._bytes_min),
                "max": _finite(self._bytes_max),
            },
            "features": feature_stats,
            "unknown_features": dict(sorted(self._unknown.items())),
        }

    def _feature_dict(self, spec: FeatureSpec, acc: _FeatureAcc) -> dict:
        present = self.records - acc.missing
        num_values = dict(acc.num_values)
        if present - acc.wrong_type - sum(num_values.values()):
            num_values[1] = present - acc.wrong_type - sum(num_values.values())
        out = {
            "type": spec.kind,
            "present": present,
            "missing": acc.missing,
            "wrong_type": acc.wrong_type,
            "num_values": {
                "min": min(num_values, default=None),
                "max": max(num_values, default=None),
                "counts": {str(k): num_values[k] for k in sorted(num_values)},
            },
        }
        if acc.values is not None:
            if spec.kind == INT:
                out["min"] = min(acc.values) if acc.values else None
                out["max"] = max(acc.values) if acc.values else None
                out["values"] = {str(v): acc.values[v] for v in sorted(acc.values)}
            else:
                decoded = {v.decode("utf-8", "surrogateescape"): n for v, n in acc.values.items()}
                out["values"] = dict(sorted(decoded.items()))
        elif spec.kind == BYTES:
            out["mean_length"] = acc.length_total / acc.value_total if acc.value_total else None
            out["length_total"] = acc.length_total
            out["value_total"] = acc.value_total
        else:
            out["min"], out["max"] = _finite(acc.min), _finite(acc.max)
        return out


def compute_statistics(items, schema, hierarchy: Hierarchy, quarantined=()) -> dict[str, dict]:
    """(split, serialized, width, height, nbytes) items and (split, reason) quarantine entries → {split: stats}."""
    layout = StatisticsLayout.build(schema, hierarchy)
    by_split: dict[str, SplitStatistics] = defaultdict(lambda: SplitStatistics(layout))
    for split, serialized, width, height, nbytes in items:
        by_split[split].add_example(serialized, width, height, nbytes)
    for split, reason in quarantined:
        by_split[split].add_quarantined(reason)
    return _statistics_dicts(by_split, layout)


def _statistics_dicts(by_split: dict[str, SplitStatistics], layout: StatisticsLayout) -> dict[str, dict]:
    """{split: to_dict()} in split order, the known splits included even without any input."""
    return {s: (by_split.get(s) or SplitStatistics(layout)).to_dict() for s in ordered_splits(by_split)}


# ---------------------------------------------------------------------------------------------- Beam shell


class StatisticsCombineFn(beam.CombineFn):
    """Accumulator {split: SplitStatistics}; inputs are example 5-tuples or (split, reason) quarantine pairs."""

    def __init__(self, layout: StatisticsLayout):
        self._layout = layout

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, item):
        split = item[0]
        stats = accumulator.get(split)
        if stats is None:
            stats = accumulator[split] = SplitStatistics(self._layout)
        if len(item) == 2:
            stats.add_quarantined(item[1])
        else:
            stats.add_example(item[1], item[2], item[3], item[4])
        return accumulator

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for accumulator in accumulators:
            for split, stats in accumulator.items():
                if split not in merged:  # a fresh one: accumulators other than the first must stay unchanged
                    merged[split] = SplitStatistics(self._layout)
                merged[split].merge(stats)
        return merged

    def extract_output(self, accumulator):
        return _statistics_dicts(accumulator, self._layout)


class ComputeStatistics(beam.PTransform):
    """(split, serialized, width, height, nbytes) [+ (split, reason) quarantine] → ONE {split: stats dict}."""

    def __init__(self, schema, hierarchy: Hierarchy, quarantined: beam.PCollection | None = None):
        super().__init__()
        self._layout = StatisticsLayout.build(schema, hierarchy)
        self._quarantined = quarantined

    def expand(self, examples):
        inputs = examples
        if self._quarantined is not None:
            inputs = (examples, self._quarantined) | "WithQuarantine" >> beam.Flatten()
        return inputs | "Combine" >> beam.CombineGlobally(StatisticsCombineFn(self._layout))
