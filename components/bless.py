"""The blessing gate: may a trained candidate replace the served model? (TFX's Evaluator blessing.)

Rules, in order:
1. Every absolute lower bound (`bless.lower_bounds`, "metric>=value") must hold for the candidate.
2. With a served model (the latest version in the serving directory), every `bless.no_regression` metric must
   not drop by more than `bless.max_regression` — both models evaluated on the *same* test data.
3. The first model (nothing served yet) is judged by the absolute bounds alone.
4. A served model that exists but cannot be loaded or evaluated fails the gate (fail closed): a candidate is
   never blessed without the comparison it was owed. The reason says what happened; fix or remove the broken
   version (or point export.serving_dir elsewhere) and run again.

Pure core: bless, check_metric_names. Only blessed candidates are exported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from common.errors import ConfigError
from components.bless_config import BlessConfig, parse_lower_bound


@dataclass(frozen=True)
class Check:
    metric: str
    kind: str  # "lower_bound" | "no_regression"
    value: float
    threshold: float
    baseline: float | None
    passed: bool


@dataclass
class Blessing:
    blessed: bool
    reason: str
    checks: list[Check] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"blessed": self.blessed, "reason": self.reason, "checks": [asdict(c) for c in self.checks]}


def check_metric_names(config: BlessConfig, known: list[str]) -> None:
    """ConfigError naming every gate metric the evaluator does not produce (checked before training)."""
    names = [parse_lower_bound(b)[0] for b in config.lower_bounds] + list(config.no_regression)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(
            f"bless: unknown metric(s) {', '.join(repr(n) for n in unknown)}; known: {', '.join(sorted(known))}"
        )


def bless(
    candidate: dict,
    baseline: dict | None,
    config: BlessConfig,
    metric_value,
    baseline_error: str | None = None,
) -> Blessing:
    """Decide with the rules above. `metric_value(metrics, name)` reads a (dotted) metric."""
    checks = []
    for bound in config.lower_bounds:
        name, threshold = parse_lower_bound(bound)
        value = metric_value(candidate, name)
        checks.append(Check(name, "lower_bound", value, threshold, None, value >= threshold))
    if baseline_error:
        return Blessing(False, f"the served model could not be evaluated ({baseline_error}); not blessing", checks)
    if baseline is not None:
        for name in config.no_regression:
            value, before = metric_value(candidate, name), metric_value(baseline, name)
            threshold = before - config.max_regression
            checks.append(Check(name, "no_regression", value, threshold, before, value >= threshold))
    failed = [c for c in checks if not c.passed]
    if failed:
        worst = failed[0]
        detail = f"{worst.metric} {worst.value:.4f} < {worst.threshold:.4f}" + (
            f" (served model {worst.baseline:.4f} − {config.max_regression})" if worst.kind == "no_regression" else ""
        )
        return Blessing(False, f"{len(failed)} of {len(checks)} checks failed: {detail}", checks)
    if baseline is None:
        return Blessing(True, "first model: judged by the absolute thresholds alone, all met", checks)
    return Blessing(True, f"all {len(checks)} checks passed against the served model", checks)


def evaluate_served(version_path: str, test_files: list[str], hierarchy, top_k: int, uncertainty_threshold: float):
    """The served SavedModel's metrics on the same test TFRecords, through its `predict_examples` signature."""
    import numpy as np
    import tensorflow as tf

    from components.evaluate import evaluate_outputs
    from components.export import EXAMPLES_SIGNATURE
    from schemas import LABEL_BREED, LABEL_SPECIES

    predict = tf.saved_model.load(version_path).signatures[EXAMPLES_SIGNATURE]
    spec = {LABEL_SPECIES: tf.io.FixedLenFeature([], tf.int64), LABEL_BREED: tf.io.FixedLenFeature([], tf.int64)}
    species, breeds, outputs = [], [], {}
    for batch in tf.data.TFRecordDataset(test_files, compression_type="GZIP").batch(256):
        labels = tf.io.parse_example(batch, spec)
        species.append(labels[LABEL_SPECIES].numpy())
        breeds.append(labels[LABEL_BREED].numpy())
        for name, value in predict(examples=batch).items():
            outputs.setdefault(name, []).append(value.numpy())
    # the per-head probabilities; the joint "breed_probs" is derived from them again
    probs = {n: np.concatenate(p) for n, p in outputs.items() if n == "species_probs" or n.endswith("_breed_probs")}
    return evaluate_outputs(
        np.concatenate(species), np.concatenate(breeds), probs, hierarchy, top_k, uncertainty_threshold
    )
