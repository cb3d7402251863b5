"""Validation of a run's statistics: TFX's ExampleValidator inside our data stage.

validate() checks the statistics dicts of components/statistics.py (as computed, or read back from JSON) against
the schema (presence, value type, shape, domain, unknown features), the hierarchy (breeds without examples) and
the previous run's statistics (lost breeds, L-infinity drift of the breed distribution), and reports quarantined
records and empty splits. format_anomalies gives one line per anomaly; write_validation_json stores the statistics
with their anomalies.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import tensorflow as tf

from components.ingest import SPLITS, TRAIN
from components.statistics_layout import feature_domain, feature_type, is_domain, ordered_splits
from schemas import LABEL_BREED, Hierarchy

SCHEMA_VIOLATION = "schema_violation"
MISSING_FEATURE = "missing_feature"
EMPTY_SPLIT = "empty_split"
MISSING_CLASS = "missing_class"
DISTRIBUTION_DRIFT = "distribution_drift"
QUARANTINE = "quarantine"


@dataclass(frozen=True)
class Anomaly:
    kind: str  # one of the kinds above
    split: str
    feature: str  # the feature or label concerned; "" if none
    message: str  # one line a person can act on, with the numbers
    severe: bool


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _counts_text(counts: dict, limit: int = 5) -> str:
    """'a (3), b (1)', largest first, at most `limit` entries."""
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    text = ", ".join(f"{k} ({n})" for k, n in ordered[:limit])
    return text + (f", … {len(ordered) - limit} more" if len(ordered) > limit else "")


def _feature_anomalies(schema, stats: dict) -> list[tuple[str, str, str]]:
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
                    f"'{name}' holds another value type than the schema's {feature_type(feature)} "
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
        domain = feature_domain(schema, feature)
        if domain is None or not f["present"]:
            continue
        if is_domain(domain, "IntDomain") and (domain.HasField("min") or domain.HasField("max")):
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
        elif is_domain(domain, "StringDomain") and "values" in f:
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

    `config` is a components.data_config.ValidationConfig (drift_linf_threshold, severe: the kinds that stop the run).
    """
    anomalies: list[Anomaly] = []

    def report(kind: str, split: str, feature: str, message: str) -> None:
        # An empty eval/test split is legitimate (e.g. data.eval_fraction=0): reported, never fatal.
        severe = kind in config.severe and not (kind == EMPTY_SPLIT and split != TRAIN)
        anomalies.append(Anomaly(kind, split, feature, message, severe))

    for split in ordered_splits(statistics):
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
        for kind, feature, message in _feature_anomalies(schema, stats):
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


def write_validation_json(path: str, statistics: dict[str, dict], anomalies: list[Anomaly]) -> None:
    """{"statistics": ..., "anomalies": [...]} as JSON at `path` (local or any tf.io.gfile filesystem)."""
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump({"statistics": statistics, "anomalies": [asdict(a) for a in anomalies]}, f, indent=1)
