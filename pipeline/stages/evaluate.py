"""The evaluate stage: the candidate and the served model scored on the same test data, the blessing gate applied
(components/bless.py), metrics.json and the HTML report written to the run directory. Output: an Evaluation."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

from pipeline.config import PipelineConfig
from schemas import Hierarchy

log = logging.getLogger("petpipe")


@dataclass
class Evaluation:
    metrics: dict  # the candidate's, on the training window's test splits
    baseline_metrics: dict | None  # the served model's on the same data; None: nothing served (or it failed)
    baseline_version: int | None
    blessing: dict  # components.bless.Blessing.to_dict()
    metrics_path: str
    report: str  # the HTML report's path

    @property
    def blessed(self) -> bool:
        return self.blessing["blessed"]


def known_metric_names(hierarchy: Hierarchy, top_k: int) -> list[str]:
    """The metric names the evaluator produces (from evaluating one uniform example per breed), for checking the
    gate's settings before any work is done."""
    import numpy as np

    from components.evaluate import evaluate_outputs, metric_names

    n, species = len(hierarchy.breeds), len(hierarchy.species)
    outputs = {"species": np.full((n, species), 1 / species)}
    for name, breeds in hierarchy.breeds_of.items():
        outputs[f"{name}_breed"] = np.full((n, len(breeds)), 1 / len(breeds))
    species_true = np.array([b.species_index for b in hierarchy.breeds])
    return metric_names(evaluate_outputs(species_true, np.arange(n), outputs, hierarchy, top_k))


def check_gate_settings(config: PipelineConfig, hierarchy: Hierarchy) -> None:
    """The gate's metric names exist (raises ConfigError): checked before hours of work."""
    from components.bless import check_metric_names

    check_metric_names(config.bless, known_metric_names(hierarchy, config.export.top_k))


def run_evaluate_stage(
    config: PipelineConfig, model, history: dict, trained_on: list[str], run_dir: str, hierarchy: Hierarchy, schema
) -> Evaluation:
    """Score the candidate and the served model on the same test data, apply the gate, write metrics + report."""
    from components import fileio
    from components.bless import bless, evaluate_served
    from components.evaluate import evaluate_model, metric_value
    from components.preprocess import split_pattern
    from components.report import write_run_report
    from components.serving_versions import existing_versions
    from components.train import labelled_batches, tfrecord_files

    top_k, threshold = config.export.top_k, config.export.species_uncertainty_threshold
    patterns = [split_pattern(d, "test") for d in trained_on]
    test = labelled_batches(patterns, schema, hierarchy, config.preprocess.image_size, 256, False, keep_breed=True)
    metrics = evaluate_model(model, test, hierarchy, top_k, threshold)
    baseline, baseline_version, baseline_error = None, None, None
    if served := existing_versions(config.model_base_path):
        path = os.path.join(config.model_base_path, str(served[-1]))
        try:
            baseline = evaluate_served(path, tfrecord_files(patterns), hierarchy, top_k, threshold)
            baseline_version = served[-1]
        except Exception as exc:  # any failure to load or run it: the gate fails closed (components/bless.py)
            baseline_error = f"version {served[-1]} at {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            log.error("evaluate: %s", baseline_error)
    blessing = bless(metrics, baseline, config.bless, metric_value, baseline_error)
    metrics_path = os.path.join(run_dir, "metrics.json")
    everything = {"test": metrics, "baseline": baseline, "blessing": blessing.to_dict(), "history": history}
    fileio.write_text(metrics_path, json.dumps(everything, indent=1))
    extra = {
        "architecture": config.train.architecture,
        "trained on": ", ".join(trained_on),
        "served model compared": baseline_version or "none (first model)",
        "epochs run": len(history.get("loss", [])) or "see history",
    }
    report = write_run_report(
        os.path.join(run_dir, "report"),
        title=f"petpipe run {os.path.basename(run_dir)}",
        metrics=metrics,
        history=history,
        hierarchy=hierarchy,
        baseline_metrics=baseline,
        blessing=blessing.to_dict(),
        extra=extra,
    )
    log.info("evaluate: %s — %s; report %s", "BLESSED" if blessing.blessed else "NOT BLESSED", blessing.reason, report)
    return Evaluation(metrics, baseline, baseline_version, blessing.to_dict(), metrics_path, report)
