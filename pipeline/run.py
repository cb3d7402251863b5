"""Wires the stages: (make-data) → ingest → preprocess → train → evaluate → export → smoke query over gRPC.

Each stage function takes the config section it needs and returns what the next one uses; `run_pipeline`
only calls them in order and collects the summary.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field

from common.errors import EXIT_NOT_BLESSED, PetpipeError
from components.ingest import SPLITS
from pipeline.config import DataConfig, PipelineConfig, to_dict
from schemas import IMAGE_ENCODED, IMAGE_FILENAME, LABEL_BREED, Hierarchy, load_hierarchy, schema_for

log = logging.getLogger("petpipe")
GENERATED_MARKER = ".petpipe-generated.json"


@dataclass
class RunSummary:
    data_dir: str = ""
    spans: list = field(default_factory=list)  # SpanResult per span ingested by this run
    trained_on: list[str] = field(default_factory=list)
    run_dir: str = ""
    metrics: dict = field(default_factory=dict)
    baseline_metrics: dict | None = None
    baseline_version: int | None = None
    blessing: dict = field(default_factory=dict)
    report: str = ""
    model_config: str = ""
    version: int | None = None
    version_path: str = ""
    answers: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    run_id: int | None = None  # in the run store
    outcome: str = ""  # pushed | not blessed | nothing to do
    exit_code: int = 0
    outcome_message: str = ""

    @property
    def counts(self) -> dict[str, int]:
        """Records written per split by this run's spans."""
        return {split: sum(r.written[split] for r in self.spans) for split in SPLITS}

    def lines(self) -> list[str]:
        out = [f"run:      {self.run_id} in the run store ({self.outcome}: {self.outcome_message})"]
        out.append(f"data:     {self.data_dir}")
        for r in self.spans:
            accounted = ", ".join(
                f"{split} {r.written[split]} + {r.quarantined[split]} = {r.records[split]}" for split in SPLITS
            )
            out.append(f"span {r.span}:   written + quarantined = records: {accounted}")
            if r.reasons:
                reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(r.reasons.items()))
                out.append(f"          quarantined ({reasons}): {r.tfrecord_dir}/quarantine/")
            if r.unannotated_images or r.ignored_files or r.duplicate_lines:
                out.append(
                    f"          ignored: {r.unannotated_images} images without annotation, {r.ignored_files} "
                    f"non-image files, {r.duplicate_lines} duplicate annotation lines (counted once)"
                )
            out.extend(f"          anomaly: {line}" for line in r.anomalies)
        out.append("records:  " + ", ".join(f"{split} {n}" for split, n in self.counts.items()))
        if self.metrics:
            top_k = next(
                k for k in self.metrics if k.startswith("breed_top") and k != "breed_top1_accuracy" and "_accuracy" in k
            )
            out.append(
                f"test:     species accuracy {self.metrics['species_accuracy']:.3f}, breed top-1 accuracy "
                f"{self.metrics['breed_top1_accuracy']:.3f}, {top_k.replace('_', ' ')} {self.metrics[top_k]:.3f} "
                f"({self.metrics['examples']} images)"
            )
        if self.blessing:
            verdict = "BLESSED" if self.blessing["blessed"] else "NOT BLESSED (nothing exported)"
            out.append(f"gate:     {verdict}: {self.blessing['reason']}")
        if self.report:
            out.append(f"report:   {self.report}")
        if self.version is not None:
            out.append(
                f"exported: version {self.version} at {self.version_path} (TF Serving config {self.model_config})"
            )
        out.extend(f"gRPC:     {answer}" for answer in self.answers)
        out.append("seconds:  " + ", ".join(f"{stage} {s:.1f}" for stage, s in self.seconds.items()))
        return out


def ensure_data(config: DataConfig, work_dir: str, hierarchy: Hierarchy) -> str | None:
    """The data to ingest: the configured directory (None for TFDS), or the embedded data set, generated once."""
    if config.data_dir or config.source != "oxford":
        return config.data_dir
    from datasources.synthetic_pets import make_dataset

    data_dir = os.path.join(work_dir, "data")
    wanted = {"per_breed": config.per_breed, "seed": config.seed, "breeds": hierarchy.breed_names}
    marker = os.path.join(data_dir, GENERATED_MARKER)
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == wanted:
                log.info("make-data: reusing the generated data set in %s", data_dir)
                return data_dir
    shutil.rmtree(data_dir, ignore_errors=True)
    log.info("make-data: generating %d images per breed into %s", config.per_breed, data_dir)
    counts = make_dataset(
        data_dir, config.per_breed, config.seed, hierarchy=hierarchy, progress=progress_logger("make-data")
    )
    with open(marker, "w") as f:
        json.dump(wanted, f)
    log.info("make-data: %s", counts)
    return data_dir


def progress_logger(stage: str, every: int = 500):
    def report(done: int, total: int) -> None:
        if done % every == 0 or done == total:
            log.info("%s: %d/%d", stage, done, total)

    return report


def sample_test_images(tfrecord_dir: str, hierarchy: Hierarchy, how_many: int) -> list[tuple[str, str, bytes]]:
    """(file name, true breed, stored JPEG) of `how_many` test images spread over the breeds."""
    import tensorflow as tf

    from components.preprocess import split_pattern

    files = sorted(tf.io.gfile.glob(split_pattern(tfrecord_dir, "test")))
    tests = []
    for serialized in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        feature = tf.train.Example.FromString(serialized.numpy()).features.feature
        tests.append(
            (
                feature[IMAGE_FILENAME].bytes_list.value[0].decode(),
                hierarchy.breeds[feature[LABEL_BREED].int64_list.value[0]].name,
                feature[IMAGE_ENCODED].bytes_list.value[0],
            )
        )
    tests.sort()  # by file name, i.e. by breed: evenly spaced picks show different breeds
    return tests[:: max(1, len(tests) // max(1, how_many))][:how_many]


SMOKE_QUERIES = 3


def smoke_query(model_base_path: str, model_name: str, picked: list[tuple[str, str, bytes]], hierarchy: Hierarchy):
    """Start the gRPC server on a free local port, Predict the picked test images through the official stubs.

    The images are the test split's stored JPEGs (sample_test_images), so any source (files, TFDS) works.
    """
    from serving.client import format_answer, predict_images
    from serving.server import start_server

    if not picked:
        return []
    server = start_server(model_base_path, model_name, host="127.0.0.1", port=0)
    try:
        answers = predict_images(
            f"127.0.0.1:{server.port}", [image for _, _, image in picked], model_name, species_names=hierarchy.species
        )
    finally:
        server.stop()
    return [format_answer(f"{name} (true {breed})", a) for (name, breed, _), a in zip(picked, answers, strict=True)]


def run_pipeline(config: PipelineConfig, beam_args: list[str] | None = None, force: bool = False) -> RunSummary:
    """One run under the pipeline lock, recorded in the run store. `force` retrains even when nothing changed."""
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
                _run_stages(config, beam_args, summary, Tracker(store, summary.run_id), force)
            except BaseException as exc:
                code = getattr(exc, "exit_code", 2 if isinstance(exc, Exception) else 130)
                store.finish_run(summary.run_id, type(exc).__name__, code, f"{exc}"[:500])
                raise
            store.finish_run(summary.run_id, summary.outcome, summary.exit_code, summary.outcome_message)
            return summary
        finally:
            store.close()


def _run_stages(config: PipelineConfig, beam_args, summary: RunSummary, tracker, force: bool) -> None:
    from components.bless import check_metric_names
    from pipeline.data_stage import ingest_spans, span_window

    hierarchy = load_hierarchy(config.data.hierarchy) if config.data.hierarchy else load_hierarchy()
    schema = schema_for(hierarchy)

    def timed(stage: str, fn, *args, **kwargs):
        start = time.monotonic()
        log.info("%s: start", stage)
        result = fn(*args, **kwargs)
        summary.seconds[stage] = time.monotonic() - start
        return result

    check_metric_names(config.bless, known_metric_names(hierarchy, config.export.top_k))  # before hours of work
    check_serving_dir(config.model_base_path)
    summary.data_dir = timed("make-data", ensure_data, config.data, config.work_dir, hierarchy)
    summary.spans = timed(
        "ingest+preprocess", ingest_spans, config, summary.data_dir, hierarchy, schema, beam_args, tracker
    )
    for span in summary.spans:
        log.info("span %d: written %s, quarantined %s", span.span, span.written, span.quarantined)

    summary.trained_on = span_window(config.work_dir, config.train.span_window)
    window = window_artifacts(summary.trained_on, tracker)
    decision_key = decision_key_of(config, hierarchy, [fp for _, fp in window])
    if not force and (reason := nothing_to_do(config, tracker, decision_key)):
        summary.outcome, summary.exit_code, summary.outcome_message = "nothing to do", 0, reason
        log.info("nothing to do: %s", reason)
        return
    summary.run_dir = os.path.join(config.work_dir, "runs", time.strftime("%Y%m%d-%H%M%S"))
    _makedirs(summary.run_dir)
    candidate, history, model_artifact = timed(
        "train", tracked_train_stage, config, summary.trained_on, schema, hierarchy, tracker, decision_key, window
    )
    inputs = {"model": model_artifact, "trained_on": summary.trained_on}
    with tracker.execution("evaluate", decision_key, inputs, decision_key, [model_artifact]) as execution:
        timed("evaluate", evaluate_stage, config, candidate, history, summary, hierarchy, schema)
        blessing = tracker.artifact(
            "blessing",
            os.path.join(summary.run_dir, "metrics.json"),
            metrics={"blessed": summary.blessing["blessed"], **_headline(summary.metrics)},
        )
        execution.outputs = {
            "blessed": summary.blessing["blessed"],
            "baseline_version": summary.baseline_version,
            "summary": ("BLESSED" if summary.blessing["blessed"] else "NOT BLESSED")
            + f": {summary.blessing['reason']}",
        }
        execution.output_artifacts.append(blessing)
    if not summary.blessing["blessed"]:
        summary.outcome, summary.exit_code = "not blessed", EXIT_NOT_BLESSED
        summary.outcome_message = summary.blessing["reason"]
        return
    # One pass over the test split picks both the warmup requests and the smoke queries.
    samples = sample_test_images(summary.trained_on[-1], hierarchy, max(SMOKE_QUERIES, config.export.warmup_requests))
    warmup = [image for _, _, image in samples[: config.export.warmup_requests]]
    model_fingerprint = tracker.store.artifact(model_artifact).fingerprint if tracker.store else None
    with tracker.execution("export", decision_key, inputs, decision_key, [model_artifact, blessing]) as execution:
        try:
            timed("export", export_stage, config, candidate, summary, hierarchy, warmup, model_fingerprint)
        except OSError as exc:  # disk full, permissions, a vanished mount: the served versions were not touched
            raise PetpipeError(
                f"export to {config.model_base_path} failed: {exc}; nothing was pushed and the served model is "
                "untouched; the next run retries (reusing the trained model)"
            ) from None
        execution.outputs = {"version": summary.version, "summary": f"version {summary.version} pushed"}
        execution.output_artifacts.append(
            tracker.artifact("pushed_version", summary.version_path, fingerprint=model_fingerprint)
        )
    summary.outcome, summary.exit_code = "pushed", 0
    summary.outcome_message = f"version {summary.version}"
    summary.answers = timed(
        "smoke-query", smoke_query, config.model_base_path, config.export.model_name, samples[:SMOKE_QUERIES], hierarchy
    )


def _headline(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("species_accuracy", "breed_top1_accuracy") if k in metrics}


def _makedirs(path: str) -> None:
    import tensorflow as tf

    tf.io.gfile.makedirs(path)


def _exists(path: str) -> bool:
    import tensorflow as tf

    return tf.io.gfile.exists(path)


def window_artifacts(tfrecord_dirs: list[str], tracker) -> list[tuple[int | None, str]]:
    """(artifact id, fingerprint) of each span's TFRecords in the training window."""
    from pipeline import fingerprint

    out = []
    for directory in tfrecord_dirs:
        digest = fingerprint.of_tree(directory, with_times=False)
        out.append((tracker.artifact("span_tfrecords", directory, fingerprint=digest), digest))
    return out


def decision_key_of(config: PipelineConfig, hierarchy: Hierarchy, window_fingerprints: list[str]) -> str:
    """Identifies the decision a run makes: these spans' TFRecords, trained, gated and exported with these
    settings. Where the data and outputs live does not count."""
    from pipeline import fingerprint

    export = {k: v for k, v in to_dict(config.export).items() if k != "serving_dir"}
    settings = {"train": to_dict(config.train), "export": export, "bless": to_dict(config.bless)}
    settings["image_size"] = config.preprocess.image_size
    return fingerprint.of_value([window_fingerprints, settings, hierarchy.breed_names])


def nothing_to_do(config: PipelineConfig, tracker, decision_key: str) -> str | None:
    """Why this run can stop now (the same decision was taken, and what it led to still holds), or None."""
    from components.export import existing_versions

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


def tracked_train_stage(config: PipelineConfig, tfrecord_dirs, schema, hierarchy, tracker, decision_key, window):
    """train_stage, recorded; a completed training with the same key (decision + warm-start weights) is reused:
    its saved weights are loaded instead of training again. Returns (model, history, model artifact id)."""
    from pipeline import fingerprint

    warm = blessed_weights_path(config)
    warm = warm if config.train.warm_start and _exists(warm) else None
    key = fingerprint.of_value([decision_key, fingerprint.of_file(warm) if warm else None])
    saved = os.path.join(config.work_dir, "train", config.train.architecture, "trained", f"{key[:20]}.weights.h5")
    inputs = {"spans": tfrecord_dirs, "warm_start": warm}
    with tracker.execution("train", key, inputs, decision_key, [a for a, _ in window]) as execution:
        previous = tracker.completed("train", key)
        if previous is not None and os.path.exists(saved):
            outputs = execution.reuse(previous)
            if fingerprint.of_file(saved) == outputs["fingerprint"]:
                log.info("train: reusing the model trained by run %d (%s)", previous["run_id"], saved)
                model = build_model(config, hierarchy)
                model.load_weights(saved)
                execution.output_artifacts.append(tracker.artifact("model", saved, fingerprint=outputs["fingerprint"]))
                return model, outputs["history"], execution.output_artifacts[-1]
            execution.status, execution.reused = "complete", None
        model, history = train_stage(config, tfrecord_dirs, schema, hierarchy)
        os.makedirs(os.path.dirname(saved), exist_ok=True)
        staging = saved.replace(".weights.h5", ".partial.weights.h5")  # Keras insists on the suffix
        model.save_weights(staging)
        os.replace(staging, saved)  # a killed run never leaves a half-written model under the final name
        digest = fingerprint.of_file(saved)
        epochs = len(next(iter(history.values()), []))
        history = {k: [float(x) for x in v] for k, v in history.items()}
        execution.outputs = {"weights": saved, "fingerprint": digest, "history": history,
                             "summary": f"{epochs} epochs on {len(tfrecord_dirs)} span(s)"}  # fmt: skip
        execution.output_artifacts.append(tracker.artifact("model", saved, fingerprint=digest))
        return model, history, execution.output_artifacts[-1]


def check_serving_dir(model_base_path: str) -> None:
    """Fail before any work when the serving directory cannot be written: a scheduled run should not train for an
    hour to find out."""
    import tensorflow as tf

    try:
        tf.io.gfile.makedirs(model_base_path)
    except (tf.errors.OpError, OSError) as exc:
        raise PetpipeError(
            f"{model_base_path}: cannot create the model directory: {getattr(exc, 'message', exc)}"
        ) from None
    if "://" not in model_base_path and not os.access(model_base_path, os.W_OK):
        raise PetpipeError(f"{model_base_path}: the model directory is not writable by this user")


def remove_stale_staging(model_base_path: str) -> list[str]:
    """Staging directories of exports that never finished (TF Serving ignores them; they only take space)."""
    import tensorflow as tf

    from components.export import STAGING_PREFIX

    if not tf.io.gfile.isdir(model_base_path):
        return []
    stale = [n.rstrip("/") for n in tf.io.gfile.listdir(model_base_path) if n.startswith(STAGING_PREFIX)]
    for name in stale:
        tf.io.gfile.rmtree(os.path.join(model_base_path, name))
    return stale


def version_of_model(model_base_path: str, model_fingerprint: str) -> int | None:
    """The version whose export metadata names this model fingerprint, if any."""
    import tensorflow as tf

    from components.export import existing_versions

    for version in reversed(existing_versions(model_base_path)):
        path = os.path.join(model_base_path, str(version), "assets.extra", "petpipe.json")
        try:
            with tf.io.gfile.GFile(path) as f:
                if json.load(f).get("model_fingerprint") == model_fingerprint:
                    return version
        except (tf.errors.OpError, ValueError):
            continue  # no metadata (exported by something else) or unreadable: not ours
    return None


def build_model(config: PipelineConfig, hierarchy: Hierarchy):
    """An untrained model of the configured architecture (to load saved weights into)."""
    train = config.train
    if train.architecture == "cascade":
        from components.cascade import build_cascade

        return build_cascade(hierarchy, config.preprocess.image_size, train.filters, train.dropout, train.backbone,
                             train.backbone_weights, train.augment, train.seed)[0]  # fmt: skip
    from components.model import build_multihead_model

    return build_multihead_model(
        hierarchy, config.preprocess.image_size, train.filters, train.dropout, train.backbone, train.backbone_weights
    )


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


def blessed_weights_path(config: PipelineConfig) -> str:
    return os.path.join(config.work_dir, "blessed", f"{config.train.architecture}.weights.h5")


def train_stage(config: PipelineConfig, tfrecord_dirs: list[str], schema, hierarchy: Hierarchy):
    """Train the configured architecture; checkpoints live in work_dir/train/<architecture> so that a re-run
    after a crash resumes there, and TensorBoard logs beside them."""
    if config.train.architecture == "cascade":
        from components.cascade import train_cascade as train_fn
    else:
        from components.train import train_model as train_fn
    warm = blessed_weights_path(config)
    warm = warm if config.train.warm_start and _exists(warm) else None
    train_dir = os.path.join(config.work_dir, "train", config.train.architecture)
    log.info("train: %s, TensorBoard logs in %s", config.train.architecture, os.path.join(train_dir, "tensorboard"))
    return train_fn(
        config.train,
        tfrecord_dirs,
        schema,
        hierarchy,
        config.preprocess.image_size,
        log.info,
        train_dir,
        warm,
        strategy=config.train.distribute,
    )


def evaluate_stage(config: PipelineConfig, model, history, summary: RunSummary, hierarchy: Hierarchy, schema):
    """Score the candidate and the served model on the same test data, apply the gate, write metrics + report."""
    from components.bless import bless, evaluate_served
    from components.evaluate import evaluate_model, metric_value
    from components.export import existing_versions
    from components.preprocess import split_pattern
    from components.report import write_report
    from components.train import make_dataset, tfrecord_files

    top_k, threshold = config.export.top_k, config.export.species_uncertainty_threshold
    size = config.preprocess.image_size
    patterns = [split_pattern(d, "test") for d in summary.trained_on]
    test = make_dataset(patterns, schema, hierarchy, size, 256, False, keep_breed=True)
    summary.metrics = evaluate_model(model, test, hierarchy, top_k, threshold)
    baseline, baseline_error, served = None, None, existing_versions(config.model_base_path)
    if served:
        path = os.path.join(config.model_base_path, str(served[-1]))
        try:
            baseline = evaluate_served(path, tfrecord_files(patterns), hierarchy, top_k, threshold)
            summary.baseline_version = served[-1]
        except Exception as exc:  # any failure to load or run it: the gate fails closed (components/bless.py)
            baseline_error = f"version {served[-1]} at {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            log.error("evaluate: %s", baseline_error)
    blessing = bless(summary.metrics, baseline, config.bless, metric_value, baseline_error)
    summary.blessing = blessing.to_dict()
    summary.baseline_metrics = baseline
    from components import fileio

    metrics = {"test": summary.metrics, "baseline": baseline, "blessing": summary.blessing, "history": history}
    fileio.write_text(os.path.join(summary.run_dir, "metrics.json"), json.dumps(metrics, indent=1))
    extra = {
        "architecture": config.train.architecture,
        "trained on": ", ".join(summary.trained_on),
        "served model compared": summary.baseline_version or "none (first model)",
        "epochs run": len(history.get("loss", [])) or "see history",
    }
    summary.report = write_report(
        os.path.join(summary.run_dir, "report"),
        title=f"petpipe run {os.path.basename(summary.run_dir)}",
        metrics=summary.metrics,
        history=history,
        hierarchy=hierarchy,
        baseline_metrics=baseline,
        blessing=summary.blessing,
        extra=extra,
    )
    log.info(
        "evaluate: %s — %s; report %s",
        "BLESSED" if blessing.blessed else "NOT BLESSED",
        blessing.reason,
        summary.report,
    )


def export_stage(
    config: PipelineConfig,
    model,
    summary: RunSummary,
    hierarchy: Hierarchy,
    warmup: list[bytes],
    model_fingerprint: str | None = None,
) -> None:
    """Export the blessed candidate with warmup requests, register it in models.config, apply retention, and
    keep its weights for the next run's warm start. Idempotent: a version already holding this model (a run
    killed after its export) is not exported again."""
    from components.export import apply_retention, export_model, write_model_config

    removed = remove_stale_staging(config.model_base_path)  # we hold the pipeline lock: nobody else is exporting
    if removed:
        log.info("export: removed %d staging directories left by an interrupted export", len(removed))

    metadata = {
        "config": to_dict(config),
        "trained_on": summary.trained_on,
        "counts": summary.counts,
        "test_metrics": {k: v for k, v in summary.metrics.items() if not isinstance(v, (dict, list))},
        "blessing": summary.blessing,
        "run_dir": summary.run_dir,
        "model_fingerprint": model_fingerprint,
    }
    existing = version_of_model(config.model_base_path, model_fingerprint) if model_fingerprint else None
    if existing is not None:
        log.info("export: version %d already holds this model (an earlier run exported it); not exporting again",
                 existing)  # fmt: skip
        summary.version, summary.version_path = existing, os.path.join(config.model_base_path, str(existing))
    else:
        summary.version, summary.version_path = export_model(
            model,
            hierarchy,
            config.model_base_path,
            config.preprocess.image_size,
            config.export.top_k,
            metadata,
            config.export.species_uncertainty_threshold,
            warmup,
            config.export.model_name,
        )
    summary.model_config = write_model_config(config.serving_dir, config.export.model_name, config.model_base_path)
    deleted = apply_retention(
        config.serving_dir, config.export.model_name, config.model_base_path, config.export.keep_versions
    )
    if deleted:
        log.info("export: retention (keep %d) removed versions %s", config.export.keep_versions, deleted)
    weights = blessed_weights_path(config)
    os.makedirs(os.path.dirname(weights), exist_ok=True)
    model.save_weights(weights)  # the next run warm-starts from the model being served
