"""The orchestrator: (make-data) → ingest → preprocess → train → evaluate → export → smoke query over gRPC.

Each stage (pipeline/stages/) takes its config section(s) and input artifacts and returns an output artifact;
this module only sequences them under the pipeline lock, decides what is reused or has nothing to do (the run
store's decisions), and records the run.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time

from common.errors import EXIT_NOT_BLESSED
from pipeline.config import PipelineConfig, to_dict
from pipeline.summary import RunSummary
from schemas import load_hierarchy, schema_for

log = logging.getLogger("petpipe")


def run_pipeline(
    config: PipelineConfig, beam_args: list[str] | None = None, force: bool = False, coordinator=None
) -> RunSummary:
    """One run under the pipeline lock, recorded in the run store. `force` retrains even when nothing changed.
    `coordinator` (pipeline/workers.py): this is a multi-worker run's chief, which tells the workers its decision."""
    from pipeline import fingerprint
    from pipeline.lock import LOCK_FILE, PipelineLock
    from pipeline.store import RunStore, Tracker

    os.makedirs(config.work_dir, exist_ok=True)
    with PipelineLock(os.path.join(config.work_dir, LOCK_FILE)) as lock:
        if stale := lock.stale_holder():
            log.warning("lock: %s", stale)
        store = RunStore(config.run_store_path)
        try:
            if abandoned := store.close_abandoned_runs():
                log.warning("run store: run(s) %s ended without finishing; their completed steps are reused", abandoned)
            summary = RunSummary(run_id=store.start_run(fingerprint.of_value(to_dict(config))))
            try:
                _run_stages(config, beam_args, summary, Tracker(store, summary.run_id), force, coordinator)
            except BaseException as exc:
                code = getattr(exc, "exit_code", 2 if isinstance(exc, Exception) else 130)
                store.finish_run(summary.run_id, type(exc).__name__, code, f"{exc}"[:500])
                raise
            store.finish_run(summary.run_id, summary.outcome, summary.exit_code, summary.outcome_message)
            return summary
        finally:
            store.close()


def _run_stages(config: PipelineConfig, beam_args, summary: RunSummary, tracker, force: bool, coordinator) -> None:
    from pipeline.spans import span_window
    from pipeline.stages import data, evaluate, export, smoke, train

    hierarchy = load_hierarchy(config.data.hierarchy) if config.data.hierarchy else load_hierarchy()
    schema = schema_for(hierarchy)

    def timed(stage: str, fn, *args):
        start, imported = time.monotonic(), summary.seconds.get("imports", 0.0)
        log.info("%s: start", stage)
        result = fn(*args)
        # The imports, when this stage was the first to compute something, are their own entry.
        summary.seconds[stage] = time.monotonic() - start - (summary.seconds.get("imports", 0.0) - imported)
        return result

    @functools.cache
    def check_gate_settings() -> None:
        """Before the first computed work (generating data, a span's Beam job, training), not before a run that
        only finds it has nothing to do: TensorFlow and Beam are imported here, timed as a stage of their own
        ("imports") rather than inside the stage that first needs them; then the gate's metric names are checked."""
        start = time.monotonic()
        import apache_beam  # noqa: F401
        import tensorflow  # noqa: F401

        summary.seconds["imports"] = time.monotonic() - start
        evaluate.check_gate_settings(config, hierarchy)

    export.check_serving_dir(config.model_base_path)
    summary.data_dir = timed("make-data", data.ensure_data, config.data, config.work_dir, hierarchy,
                             check_gate_settings)  # fmt: skip
    summary.spans = timed("ingest+preprocess", data.ingest_spans, config, summary.data_dir, hierarchy, schema,
                          beam_args, tracker, check_gate_settings)  # fmt: skip
    for span in summary.spans:
        log.info("span %d: written %s, quarantined %s", span.span, span.written, span.quarantined)

    summary.trained_on = span_window(config.work_dir, config.train.span_window)
    window = window_artifacts(summary.trained_on, tracker)
    decision_key = decision_key_of(config, hierarchy, [digest for _, digest in window])
    if not force and (reason := nothing_to_do(config, tracker, decision_key)):
        summary.outcome, summary.exit_code, summary.outcome_message = "nothing to do", 0, reason
        log.info("nothing to do: %s", reason)
        if coordinator:
            coordinator.stop(reason)
        return
    check_gate_settings()
    summary.run_dir = os.path.join(config.work_dir, "runs", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(summary.run_dir, exist_ok=True)
    if coordinator:
        coordinator.train(summary.trained_on, train.warm_start_weights(config))
    trained = timed("train", train.run_train_stage, config, summary.trained_on, schema, hierarchy, tracker,
                    decision_key, [artifact for artifact, _ in window], coordinator is not None)  # fmt: skip
    inputs = {"model": trained.artifact, "trained_on": summary.trained_on}
    with tracker.execution("evaluate", decision_key, inputs, decision_key, [trained.artifact]) as execution:
        evaluation = timed("evaluate", evaluate.run_evaluate_stage, config, trained.model, trained.history,
                           summary.trained_on, summary.run_dir, hierarchy, schema)  # fmt: skip
        summary.record_evaluation(evaluation)
        blessing = tracker.artifact(
            "blessing", evaluation.metrics_path, metrics={"blessed": evaluation.blessed, **_headline(summary.metrics)}
        )
        verdict = "BLESSED" if evaluation.blessed else "NOT BLESSED"
        execution.outputs = {"blessed": evaluation.blessed, "baseline_version": evaluation.baseline_version,
                             "summary": f"{verdict}: {evaluation.blessing['reason']}"}  # fmt: skip
        execution.output_artifacts.append(blessing)
    if not evaluation.blessed:
        summary.outcome, summary.exit_code = "not blessed", EXIT_NOT_BLESSED
        summary.outcome_message = evaluation.blessing["reason"]
        return
    # One pass over the test split picks both the warmup requests and the smoke queries.
    wanted = max(smoke.SMOKE_QUERIES, config.export.warmup_requests)
    samples = smoke.sample_test_images(summary.trained_on[-1], hierarchy, wanted)
    warmup = [image for _, _, image in samples[: config.export.warmup_requests]]
    model_fingerprint = tracker.store.artifact(trained.artifact).fingerprint if tracker.store else None
    with tracker.execution("export", decision_key, inputs, decision_key, [trained.artifact, blessing]) as execution:
        pushed = timed("export", export.run_export_stage, config, trained.model, hierarchy, warmup,
                       summary.export_metadata(model_fingerprint))  # fmt: skip
        summary.version, summary.version_path, summary.model_config = pushed.version, pushed.path, pushed.model_config
        execution.outputs = {"version": pushed.version, "summary": f"version {pushed.version} pushed"}
        execution.output_artifacts.append(
            tracker.artifact("pushed_version", pushed.path, fingerprint=model_fingerprint)
        )
    summary.outcome, summary.exit_code, summary.outcome_message = "pushed", 0, f"version {pushed.version}"
    summary.answers = timed("smoke-query", smoke.run_smoke_query, config.model_base_path, config.export.model_name,
                            samples[: smoke.SMOKE_QUERIES], hierarchy)  # fmt: skip


def _headline(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("species_accuracy", "breed_top1_accuracy") if k in metrics}


def window_artifacts(tfrecord_dirs: list[str], tracker) -> list[tuple[int | None, str]]:
    """(artifact id, fingerprint) of each span's TFRecords in the training window."""
    from pipeline import fingerprint

    out = []
    for directory in tfrecord_dirs:
        digest = fingerprint.of_tree(directory, with_times=False)
        out.append((tracker.artifact("span_tfrecords", directory, fingerprint=digest), digest))
    return out


def decision_key_of(config: PipelineConfig, hierarchy, window_fingerprints: list[str]) -> str:
    """Identifies the decision a run makes: these spans' TFRecords, trained, gated and exported with these
    settings. Where the data and outputs live does not count."""
    from pipeline import fingerprint

    export = {k: v for k, v in to_dict(config.export).items() if k != "serving_dir"}
    settings = {"train": to_dict(config.train), "export": export, "bless": to_dict(config.bless)}
    settings["image_size"] = config.preprocess.image_size
    return fingerprint.of_value([window_fingerprints, settings, hierarchy.breed_names])


def nothing_to_do(config: PipelineConfig, tracker, decision_key: str) -> str | None:
    """Why this run can stop now (the same decision was taken, and what it led to still holds), or None."""
    from components.serving_versions import existing_versions

    decided = tracker.completed("evaluate", decision_key)
    if decided is None:
        return None
    outputs = json.loads(decided["outputs"])
    served = existing_versions(config.model_base_path)
    latest = served[-1] if served else None
    if outputs["blessed"]:
        pushed = tracker.completed("export", decision_key)
        version = json.loads(pushed["outputs"])["version"] if pushed else None
        if version is None or version != latest:
            return None  # never pushed (killed before), or another version has been pushed since
        return f"no new data or settings since run {decided['run_id']}; version {version} is serving"
    if outputs["baseline_version"] != latest:
        return None  # the served model changed: the candidate may compare differently now
    return (
        f"no new data or settings since run {decided['run_id']}, whose candidate was not blessed; "
        f"version {latest} keeps serving"
    )
