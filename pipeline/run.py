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

from pipeline.config import DataConfig, PipelineConfig, PreprocessConfig, to_dict
from pipeline.errors import DataError
from schemas import Hierarchy, load_hierarchy, load_schema

log = logging.getLogger("petpipe")
GENERATED_MARKER = ".petpipe-generated.json"


@dataclass
class RunSummary:
    data_dir: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    version: int | None = None
    version_path: str = ""
    answers: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"data:     {self.data_dir}"]
        out.append("records:  " + ", ".join(f"{split} {n}" for split, n in self.counts.items()))
        if self.metrics:
            top_k = next(k for k in self.metrics if k.startswith("breed_top") and k != "breed_top1_accuracy")
            out.append(
                f"test:     species accuracy {self.metrics['species_accuracy']:.3f}, breed top-1 accuracy "
                f"{self.metrics['breed_top1_accuracy']:.3f}, {top_k.replace('_', ' ')} {self.metrics[top_k]:.3f} "
                f"({self.metrics['examples']} images)"
            )
        if self.version is not None:
            out.append(f"exported: version {self.version} at {self.version_path}")
        out.extend(f"gRPC:     {answer}" for answer in self.answers)
        out.append("seconds:  " + ", ".join(f"{stage} {s:.1f}" for stage, s in self.seconds.items()))
        return out


def ensure_data(config: DataConfig, work_dir: str) -> str:
    """The data directory to ingest: the configured one, or the embedded data set generated once under work_dir."""
    if config.data_dir:
        return config.data_dir
    from datasources.synthetic_pets import make_dataset

    data_dir = os.path.join(work_dir, "data")
    wanted = {"per_breed": config.per_breed, "seed": config.seed}
    marker = os.path.join(data_dir, GENERATED_MARKER)
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == wanted:
                log.info("make-data: reusing the generated data set in %s", data_dir)
                return data_dir
    shutil.rmtree(data_dir, ignore_errors=True)
    log.info("make-data: generating %d images per breed into %s", config.per_breed, data_dir)
    counts = make_dataset(data_dir, per_breed=config.per_breed, seed=config.seed, progress=progress_logger("make-data"))
    with open(marker, "w") as f:
        json.dump(wanted, f)
    log.info("make-data: %s", counts)
    return data_dir


def progress_logger(stage: str, every: int = 500):
    def report(done: int, total: int) -> None:
        if done % every == 0 or done == total:
            log.info("%s: %d/%d", stage, done, total)

    return report


def ingest_and_preprocess(
    data_dir: str, data: DataConfig, preprocess: PreprocessConfig, tfrecord_dir: str, hierarchy: Hierarchy, beam_args
) -> dict[str, int]:
    """One Beam job: ingest (annotations + image bytes, split) → preprocess (Examples) → TFRecords per split.

    Output goes to a sibling staging directory first and replaces `tfrecord_dir` only when the job succeeded,
    so stale shards of an earlier run are never mixed with new ones.
    """
    import apache_beam as beam

    from components.ingest import SPLITS, ReadPetImages, check_layout
    from components.preprocess import WritePetExamples
    from pipeline.beam_runner import make_pipeline, user_error

    annotation_paths = check_layout(data_dir)
    staging = tfrecord_dir.rstrip("/") + ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    pipeline = make_pipeline(beam_args)
    log.info("ingest+preprocess: Beam %s on %s", type(pipeline.runner).__name__, data_dir)
    try:
        with pipeline:
            _ = (
                pipeline
                | "AnnotationFiles" >> beam.Create(annotation_paths)
                | "Ingest" >> ReadPetImages(data_dir, hierarchy, data.eval_fraction)
                | "Preprocess"
                >> WritePetExamples(
                    staging, preprocess.image_size, preprocess.jpeg_quality, preprocess.num_shards, hierarchy
                )
            )
    except Exception as exc:
        shutil.rmtree(staging, ignore_errors=True)
        error = user_error(exc)
        if error is None:
            raise
        raise error from None
    result = pipeline.result
    counters = result.metrics().query(beam.metrics.MetricsFilter().with_namespace("preprocess"))["counters"]
    written = {c.key.metric.name: c.committed for c in counters}
    counts = {split: int(written.get(f"written_{split}", 0)) for split in SPLITS}
    shutil.rmtree(tfrecord_dir, ignore_errors=True)
    os.rename(staging, tfrecord_dir)
    if counts["train"] == 0:
        raise DataError(f"{data_dir}: no training records were written (is annotations/trainval.txt empty?)")
    log.info("ingest+preprocess: wrote %s", counts)
    return counts


def smoke_query(model_base_path: str, model_name: str, data_dir: str, hierarchy: Hierarchy, how_many: int = 3):
    """Start the gRPC server on a free local port, Predict a few test images through the official stubs."""
    from components.ingest import image_path, parse_annotation_text
    from serving.client import format_answer, predict_images
    from serving.server import start_server

    test_file = os.path.join(data_dir, "annotations", "test.txt")
    with open(test_file, encoding="utf-8-sig") as f:
        records = parse_annotation_text(f.read(), test_file, hierarchy)
    picked = records[:: max(1, len(records) // how_many)][:how_many]
    server = start_server(model_base_path, model_name, host="127.0.0.1", port=0)
    try:
        images = []
        for record in picked:
            with open(image_path(data_dir, record), "rb") as f:
                images.append(f.read())
        answers = predict_images(f"127.0.0.1:{server.port}", images, model_name=model_name)
    finally:
        server.stop()
    return [
        format_answer(f"{r.image}.jpg (true {hierarchy.breeds[r.breed].name})", a)
        for r, a in zip(picked, answers, strict=True)
    ]


def run_pipeline(config: PipelineConfig, beam_args: list[str] | None = None) -> RunSummary:
    summary = RunSummary()
    hierarchy = load_hierarchy()
    schema = load_schema()
    os.makedirs(config.work_dir, exist_ok=True)

    def timed(stage: str, fn, *args, **kwargs):
        start = time.monotonic()
        log.info("%s: start", stage)
        result = fn(*args, **kwargs)
        summary.seconds[stage] = time.monotonic() - start
        return result

    summary.data_dir = timed("make-data", ensure_data, config.data, config.work_dir)
    summary.counts = timed(
        "ingest+preprocess",
        ingest_and_preprocess,
        summary.data_dir,
        config.data,
        config.preprocess,
        config.tfrecord_dir,
        hierarchy,
        beam_args,
    )

    from components.evaluate import evaluate_model
    from components.export import export_model
    from components.preprocess import split_pattern
    from components.train import make_dataset, train_model

    size = config.preprocess.image_size
    model, history = timed("train", train_model, config.train, config.tfrecord_dir, schema, hierarchy, size, log.info)
    test = make_dataset(
        split_pattern(config.tfrecord_dir, "test"), schema, hierarchy, size, 256, training=False, keep_breed=True
    )
    summary.metrics = timed("evaluate", evaluate_model, model, test, hierarchy, config.export.top_k)
    with open(os.path.join(config.work_dir, "metrics.json"), "w") as f:
        json.dump({"test": summary.metrics, "history": history}, f, indent=2)
    metadata = {"config": to_dict(config), "counts": summary.counts, "test_metrics": summary.metrics}
    summary.version, summary.version_path = timed(
        "export", export_model, model, hierarchy, config.model_base_path, size, config.export.top_k, metadata
    )
    summary.answers = timed(
        "smoke-query", smoke_query, config.model_base_path, config.export.model_name, summary.data_dir, hierarchy
    )
    return summary
