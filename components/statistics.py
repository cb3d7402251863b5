"""Statistics and validation of the written examples: TFX's StatisticsGen + ExampleValidator inside our Beam job.

Pure core: SplitStatistics (a mergeable accumulator over one split), compute_statistics, validate,
format_anomalies, write_report. Beam shell: ComputeStatistics, a CombineFn around SplitStatistics.

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
import json
import math
from dataclasses import asdict, dataclass

import apache_beam as beam
import tensorflow as tf

from components.ingest import SPLITS, TRAIN
from schemas import LABEL_BREED, LABEL_SPECIES, Hierarchy, breed_feature

NUM_QUANTILES = 10  # deciles: 11 points from min to max
ASPECT_RESOLUTION = 1000  # aspect ratios are counted rounded to 1/1000

SCHEMA_VIOLATION = "schema_violation"
MISSING_FEATURE = "missing_feature"
EMPTY_SPLIT = "empty_split"
MISSING_CLASS = "missing_class"
DISTRIBUTION_DRIFT = "distribution_drift"
QUARANTINE = "quarantine"

_INT, _FLOAT, _BYTES = "INT", "FLOAT", "BYTES"
_LIST_OF = {_INT: "int64_list", _FLOAT: "float_list", _BYTES: "bytes_list"}  # tf.train.Feature's oneof fields
_Example = tf.train.Example  # the generated protobuf class: FromString is pure (upb) protobuf, no TF op


@dataclass(frozen=True)
class Anomaly:
    kind: str  # one of the kinds above
    split: str
    feature: str  # the feature or label concerned; "" if none
    message: str  # one line a person can act on, with the numbers
    severe: bool


# ---------------------------------------------------------------------------------------------- schema access


def _domain(schema, feature):
    """The feature's IntDomain / StringDomain / FloatDomain (inline or referenced by name), or None."""
    which = feature.WhichOneof("domain_info")
    if which in ("int_domain", "string_domain", "float_domain"):
        return getattr(feature, which)
    if which == "domain":
        for domain in itertools.chain(schema.string_domain, schema.int_domain, schema.float_domain):
            if domain.name == feature.domain:
                return domain
    return None


def _is(domain, proto_name: str) -> bool:
    return domain is not None and domain.DESCRIPTOR.name == proto_name


def _type_name(schema_feature) -> str:
    from tensorflow_metadata.proto.v0 import schema_pb2

    return schema_pb2.FeatureType.Name(schema_feature.type)


@dataclass(frozen=True)
class _FeatureSpec:
    name: str
    kind: str  # INT | FLOAT | BYTES
    count_values: bool  # keep {value: count}: categorical INT, or BYTES with a string domain


@dataclass(frozen=True)
class _Layout:
    """What an accumulator needs from the schema and the hierarchy: plain tuples, cheap to pickle for Beam."""

    features: tuple[_FeatureSpec, ...]
    species: tuple[str, ...]
    breeds: tuple[str, ...]

    @classmethod
    def build(cls, schema, hierarchy: Hierarchy) -> _Layout:
        labels = {LABEL_SPECIES, LABEL_BREED, *(breed_feature(s) for s in hierarchy.species)}
        specs = []
        for feature in schema.feature:
            kind = _type_name(feature)
            domain = _domain(schema, feature)
            if kind == _INT:
                # Label counts give the species/breed tables, so labels are counted even if not marked categorical.
                categorical = feature.name in labels or (_is(domain, "IntDomain") and domain.is_categorical)
                specs.append(_FeatureSpec(feature.name, _INT, categorical))
            elif kind == _BYTES:
                specs.append(_FeatureSpec(feature.name, _BYTES, _is(domain, "StringDomain")))
            else:
                specs.append(_FeatureSpec(feature.name, _FLOAT, False))
        return cls(tuple(specs), tuple(hierarchy.species), tuple(hierarchy.breed_names))


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
        elif kind == _BYTES:
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
    """Mergeable statistics of one split: add_example / add_quarantined, merge, to_dict / from_dict."""

    def __init__(self, schema, hierarchy: Hierarchy):
        self._init(_Layout.build(schema, hierarchy))

    @classmethod
    def _empty(cls, layout: _Layout) -> SplitStatistics:
        stats = cls.__new__(cls)
        stats._init(layout)
        return stats

    def _init(self, layout: _Layout) -> None:
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
            elif kind == _BYTES:
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
        """JSON-able statistics of the split; also the state from_dict() restores."""
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
                "sum": self._aspect_sum,  # kept so that from_dict can merge exactly
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

    def _feature_dict(self, spec: _FeatureSpec, acc: _FeatureAcc) -> dict:
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
            if spec.kind == _INT:
                out["min"] = min(acc.values) if acc.values else None
                out["max"] = max(acc.values) if acc.values else None
                out["values"] = {str(v): acc.values[v] for v in sorted(acc.values)}
            else:
                decoded = {v.decode("utf-8", "surrogateescape"): n for v, n in acc.values.items()}
                out["values"] = dict(sorted(decoded.items()))
        elif spec.kind == _BYTES:
            out["mean_length"] = acc.length_total / acc.value_total if acc.value_total else None
            out["length_total"] = acc.length_total
            out["value_total"] = acc.value_total
        else:
            out["min"], out["max"] = _finite(acc.min), _finite(acc.max)
        return out

    @classmethod
    def from_dict(cls, d: dict, schema, hierarchy: Hierarchy) -> SplitStatistics:
        """The accumulator back from to_dict() (same schema and hierarchy), ready to merge more into."""
        stats = cls(schema, hierarchy)
        stats.records = d["records"]
        stats.quarantined = dict(d["quarantined"])
        stats._unknown = dict(d.get("unknown_features", {}))
        stats._widths = {int(k): n for k, n in d["image_width"]["counts"].items()}
        stats._heights = {int(k): n for k, n in d["image_height"]["counts"].items()}
        aspect = d["aspect_ratio"]
        stats._aspects = {round(float(k) * ASPECT_RESOLUTION): n for k, n in aspect["counts"].items()}
        stats._aspect_sum = aspect["sum"]
        stats._aspect_min = math.inf if aspect["min"] is None else aspect["min"]
        stats._aspect_max = -math.inf if aspect["max"] is None else aspect["max"]
        size = d["bytes"]
        stats._bytes_total = size["total"]
        stats._bytes_min = math.inf if size["min"] is None else size["min"]
        stats._bytes_max = -math.inf if size["max"] is None else size["max"]
        for spec, acc in stats._features:
            f = d["features"][spec.name]
            acc.missing, acc.wrong_type = f["missing"], f["wrong_type"]
            acc.num_values = {int(k): c for k, c in f["num_values"]["counts"].items() if k != "1"}
            if acc.values is not None:
                to_key = int if spec.kind == _INT else lambda s: s.encode("utf-8", "surrogateescape")
                acc.values = {to_key(k): n for k, n in f["values"].items()}
            elif spec.kind == _BYTES:
                acc.length_total, acc.value_total = f["length_total"], f["value_total"]
            else:
                acc.min = math.inf if f["min"] is None else f["min"]
                acc.max = -math.inf if f["max"] is None else f["max"]
        return stats


def _ordered_splits(names) -> list[str]:
    """The known splits first (always present, so that an empty one is visible), then any other, sorted."""
    return list(SPLITS) + sorted(set(names) - set(SPLITS))


def compute_statistics(items, schema, hierarchy: Hierarchy, quarantined=()) -> dict[str, dict]:
    """(split, serialized, width, height, nbytes) items and (split, reason) quarantine entries → {split: stats}."""
    layout = _Layout.build(schema, hierarchy)
    by_split: dict[str, SplitStatistics] = {}
    for split, serialized, width, height, nbytes in items:
        if split not in by_split:
            by_split[split] = SplitStatistics._empty(layout)
        by_split[split].add_example(serialized, width, height, nbytes)
    for split, reason in quarantined:
        if split not in by_split:
            by_split[split] = SplitStatistics._empty(layout)
        by_split[split].add_quarantined(reason)
    return {s: (by_split.get(s) or SplitStatistics._empty(layout)).to_dict() for s in _ordered_splits(by_split)}


# ---------------------------------------------------------------------------------------------- validation


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _counts_text(counts: dict, limit: int = 5) -> str:
    """'a (3), b (1)', largest first, at most `limit` entries."""
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    text = ", ".join(f"{k} ({n})" for k, n in ordered[:limit])
    return text + (f", … {len(ordered) - limit} more" if len(ordered) > limit else "")


def _feature_anomalies(schema, split: str, stats: dict) -> list[tuple[str, str, str]]:
    """(kind, feature, message) for presence, type, shape and domain violations of one non-empty split."""
    n = stats["records"]
    out = []
    for feature in schema.feature:
        name = feature.name
        f = stats["features"].get(name)
        if f is None:
            out.append((MISSING_FEATURE, name, f"'{name}' is not in the statistics (computed with another schema?)"))
            continue
        if feature.HasField("presence"):
            min_fraction, min_count = feature.presence.min_fraction, feature.presence.min_count
            if (f["missing"] and f["present"] / n < min_fraction) or f["present"] < min_count:
                out.append(
                    (
                        MISSING_FEATURE,
                        name,
                        f"'{name}' missing in {f['missing']} of {n} examples (schema requires presence "
                        f"fraction ≥ {min_fraction:g} and count ≥ {min_count})",
                    )
                )
        if f["wrong_type"]:
            out.append(
                (
                    SCHEMA_VIOLATION,
                    name,
                    f"'{name}' holds another value type than the schema's {_type_name(feature)} "
                    f"in {f['wrong_type']} of {n} examples",
                )
            )
        if feature.HasField("shape") and f["present"]:
            expected = math.prod(d.size for d in feature.shape.dim)
            low, high = f["num_values"]["min"], f["num_values"]["max"]
            if (low, high) != (expected, expected):
                out.append(
                    (
                        SCHEMA_VIOLATION,
                        name,
                        f"'{name}' has {low}..{high} values per example; the schema shape needs {expected}",
                    )
                )
        domain = _domain(schema, feature)
        if domain is None or not f["present"]:
            continue
        if _is(domain, "IntDomain") and (domain.HasField("min") or domain.HasField("max")):
            low = domain.min if domain.HasField("min") else -math.inf
            high = domain.max if domain.HasField("max") else math.inf
            if f["min"] is not None and (f["min"] < low or f["max"] > high):
                outside = {k: c for k, c in f.get("values", {}).items() if not low <= int(k) <= high}
                detail = f": {_counts_text(outside)}" if outside else ""
                out.append(
                    (
                        SCHEMA_VIOLATION,
                        name,
                        f"'{name}' values outside the schema int_domain [{domain.min}, {domain.max}]{detail}; "
                        f"observed range [{f['min']}, {f['max']}]",
                    )
                )
        elif _is(domain, "StringDomain") and "values" in f:
            allowed = set(domain.value)
            unexpected = {v: c for v, c in f["values"].items() if v not in allowed}
            if unexpected:
                out.append(
                    (
                        SCHEMA_VIOLATION,
                        name,
                        f"'{name}' has {_plural(sum(unexpected.values()), 'value')} not in the schema string_domain "
                        f"{sorted(allowed)}: {_counts_text(unexpected)}",
                    )
                )
    for name, count in stats.get("unknown_features", {}).items():
        out.append((SCHEMA_VIOLATION, name, f"'{name}' is not in the schema but is set in {count} of {n} examples"))
    return out


def _breed_distribution(breeds: dict[str, int]) -> dict[str, float]:
    total = sum(breeds.values())
    return {b: n / total for b, n in breeds.items()} if total else {}


def validate(
    statistics: dict[str, dict], schema, hierarchy: Hierarchy, previous: dict[str, dict] | None, config
) -> list[Anomaly]:
    """Anomalies of this run's statistics against the schema, the hierarchy and the previous run's statistics.

    `config` is a pipeline.config.ValidationConfig (drift_linf_threshold, severe: the kinds that stop the run).
    """
    anomalies: list[Anomaly] = []

    def report(kind: str, split: str, feature: str, message: str) -> None:
        # An empty eval/test split is legitimate (e.g. data.eval_fraction=0): reported, never fatal.
        severe = kind in config.severe and not (kind == EMPTY_SPLIT and split != TRAIN)
        anomalies.append(Anomaly(kind, split, feature, message, severe))

    for split in _ordered_splits(statistics):
        stats = statistics.get(split) or {"records": 0, "quarantined": {}}
        if stats["records"] == 0 and split not in SPLITS:
            # A split outside SPLITS without examples only carries quarantine counts.
            _report_quarantine(report, split, stats)
            continue
        n = stats["records"]
        if n == 0:
            quarantined = sum(stats["quarantined"].values())
            report(EMPTY_SPLIT, split, "", f"no examples written ({quarantined} quarantined)")
            _report_quarantine(report, split, stats)
            continue
        for kind, feature, message in _feature_anomalies(schema, split, stats):
            report(kind, split, feature, message)

        breeds = stats["breeds"]
        before = (previous or {}).get(split)
        before_breeds = before["breeds"] if before and before.get("records") else {}
        lost = [b for b, count in before_breeds.items() if count and not breeds.get(b)]
        for breed in lost:
            report(
                MISSING_CLASS,
                split,
                LABEL_BREED,
                f"no examples of breed '{breed}' (previous run: {before_breeds[breed]})",
            )
        if split == TRAIN:
            absent = [b for b in hierarchy.breed_names if not breeds.get(b) and b not in lost]
            if absent:
                names = ", ".join(f"'{b}'" for b in absent)
                report(
                    MISSING_CLASS,
                    split,
                    LABEL_BREED,
                    f"no examples of {_plural(len(absent), 'breed')} of {len(hierarchy.breeds)}: {names}",
                )
        if before_breeds:
            _report_drift(report, split, before_breeds, breeds, config.drift_linf_threshold)
        _report_quarantine(report, split, stats)
    return anomalies


def _report_drift(report, split: str, before: dict[str, int], now: dict[str, int], threshold: float) -> None:
    p, q = _breed_distribution(before), _breed_distribution(now)
    if not p or not q:
        return
    changes = {b: q.get(b, 0.0) - p.get(b, 0.0) for b in dict.fromkeys([*p, *q])}
    breed = max(changes, key=lambda b: abs(changes[b]))
    distance = abs(changes[breed])
    if distance > threshold:
        report(
            DISTRIBUTION_DRIFT,
            split,
            LABEL_BREED,
            f"breed distribution moved by L-infinity distance {distance:.4f} (threshold {threshold:g}) since the "
            f"previous run; largest change: '{breed}' {p.get(breed, 0.0):.2%} → {q.get(breed, 0.0):.2%} "
            f"({before.get(breed, 0)} → {now.get(breed, 0)} examples)",
        )


def _report_quarantine(report, split: str, stats: dict) -> None:
    quarantined = stats["quarantined"]
    total = sum(quarantined.values())
    if total:
        report(QUARANTINE, split, "", f"{_plural(total, 'record')} quarantined: {_counts_text(quarantined, 20)}")


def format_anomalies(anomalies: list[Anomaly]) -> list[str]:
    """One line per anomaly, e.g. "SEVERE train missing_class: no examples of breed 'pug' (previous run: 40)"."""
    return [f"{'SEVERE' if a.severe else 'WARNING'} {a.split} {a.kind}: {a.message}" for a in anomalies]


def write_report(path: str, statistics: dict[str, dict], anomalies: list[Anomaly]) -> None:
    """{"statistics": ..., "anomalies": [...]} as JSON at `path` (local or any tf.io.gfile filesystem)."""
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump({"statistics": statistics, "anomalies": [asdict(a) for a in anomalies]}, f, indent=1)


# ---------------------------------------------------------------------------------------------- Beam shell


class _StatisticsCombineFn(beam.CombineFn):
    """Accumulator {split: SplitStatistics}; inputs are example 5-tuples or (split, reason) quarantine pairs."""

    def __init__(self, layout: _Layout):
        self._layout = layout

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, item):
        split = item[0]
        stats = accumulator.get(split)
        if stats is None:
            stats = accumulator[split] = SplitStatistics._empty(self._layout)
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
                    merged[split] = SplitStatistics._empty(self._layout)
                merged[split].merge(stats)
        return merged

    def extract_output(self, accumulator):
        return {
            s: (accumulator.get(s) or SplitStatistics._empty(self._layout)).to_dict()
            for s in _ordered_splits(accumulator)
        }


class ComputeStatistics(beam.PTransform):
    """(split, serialized, width, height, nbytes) [+ (split, reason) quarantine] → ONE {split: stats dict}."""

    def __init__(self, schema, hierarchy: Hierarchy, quarantined: beam.PCollection | None = None):
        super().__init__()
        self._layout = _Layout.build(schema, hierarchy)
        self._quarantined = quarantined

    def expand(self, examples):
        inputs = examples
        if self._quarantined is not None:
            inputs = (examples, self._quarantined) | "WithQuarantine" >> beam.Flatten()
        return inputs | "Combine" >> beam.CombineGlobally(_StatisticsCombineFn(self._layout))
