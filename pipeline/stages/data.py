"""The data stage: one Beam job per span — source → ingest → preprocess → TFRecords + quarantine + statistics —
then the checks that decide whether the span may be trained on:

* every record accounted for: written + quarantined == distinct records, per split (else a bug: error);
* quarantined / records ≤ data.max_bad_fraction (else DataThresholdError, after the quarantine is written);
* statistics validated against the schema and the previous successful span (severe anomalies: ValidationError).

Spans: an input directory holding `span-<N>/` subdirectories (TFX's {SPAN} convention) is ingested span by span
(`data.spans`: latest | all | N | N-M); any other input is span 0. Output: `<tfrecord_root>/span-<N>/`;
successful spans are recorded in `<work_dir>/spans.json`, which is what the trainer reads.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict

from common.errors import ConfigError, DataError, DataThresholdError, ValidationError
from components import fileio
from pipeline.config import DataConfig, PipelineConfig, to_dict
from pipeline.spans import (
    SpanResult,
    available_spans,
    forget_span,
    load_spans,
    read_json,
    record_span,
    select_spans,
)
from pipeline.store import Tracker
from schemas import SPLITS, Hierarchy, write_schema

log = logging.getLogger("petpipe")
GENERATED_MARKER = ".petpipe-generated.json"
BASELINE_STATISTICS = "baseline_statistics.json"


# --- make-data ---------------------------------------------------------------------------------------------------
def ensure_data(
    config: DataConfig, work_dir: str, hierarchy: Hierarchy, before_computing: Callable[[], None] = lambda: None
) -> str | None:
    """The data to ingest: the configured directory (None for TFDS), or the embedded data set, generated once
    (`before_computing` is called first: checks that must fail before minutes of work)."""
    if config.data_dir or config.source != "oxford":
        return config.data_dir
    from datasources.synthetic_pets import write_synthetic_pets

    data_dir = os.path.join(work_dir, "data")
    wanted = {"per_breed": config.per_breed, "seed": config.seed, "breeds": hierarchy.breed_names}
    if config.image_style != "small":  # absent for the default: markers written before the key existed still match
        wanted["image_style"] = config.image_style
    marker = os.path.join(data_dir, GENERATED_MARKER)
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == wanted:
                log.info("make-data: reusing the generated data set in %s", data_dir)
                return data_dir
    before_computing()
    shutil.rmtree(data_dir, ignore_errors=True)
    log.info("make-data: generating %d %s images per breed into %s", config.per_breed, config.image_style, data_dir)
    counts = write_synthetic_pets(
        data_dir,
        config.per_breed,
        config.seed,
        hierarchy=hierarchy,
        progress=progress_logger("make-data"),
        style=config.image_style,
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


# --- the Beam job ----------------------------------------------------------------------------------------------
def _folder_records(root: str):
    """Class-folder records; files that are not images at <species>/<breed>/ depth are counted as ignored."""
    from components.ingest import count
    from components.sources import ClassFolders

    folders = ClassFolders(root)
    yield from folders
    for path, why in folders.skipped:
        log.info("ignored %s: %s", path, why)
    count("ignored_files", len(folders.skipped))


def _read_source(pipeline, data: DataConfig, data_dir: str | None, flat_map=None):
    """(PCollection of SourceRecord | Quarantined, PCollection of existing image keys or None). `flat_map` replaces
    beam.FlatMap for the reading steps (the Dask job's counting_flat_map)."""
    import apache_beam as beam

    from components import ingest, sources

    flat_map = flat_map or beam.FlatMap

    if data.source == "oxford":
        annotation_paths = ingest.check_layout(data_dir)
        images_dir = os.path.join(data_dir, "images")
        parsed = (
            pipeline
            | "AnnotationFiles" >> beam.Create(annotation_paths)
            | "ParseAnnotations"
            >> flat_map(ingest.read_oxford_annotations, images_dir=images_dir, eval_fraction=data.eval_fraction)
        )
        listing = pipeline | "ListImages" >> beam.Create(ingest.image_stems(images_dir))
        return parsed, listing
    if data.source == "folders":
        if not fileio.isdir(data_dir):
            raise DataError(f"{data_dir}: class-folder root not found (expected <species>/<breed>/*.jpg)")
        return pipeline | "Root" >> beam.Create([data_dir]) | "ListFolders" >> flat_map(_folder_records), None
    if data.source == "csv":
        manifest = os.path.join(data_dir, "manifest.csv") if fileio.isdir(data_dir) else data_dir
        if not fileio.isfile(manifest):
            raise DataError(f"{manifest}: CSV manifest not found (columns path,species,breed)")
        return pipeline | "Manifest" >> beam.Create([manifest]) | "ReadManifest" >> flat_map(
            sources.read_csv_manifest
        ), None
    if data.source == "tfds":
        return pipeline | "TfdsSplits" >> beam.Create(list(data.tfds_splits)) | "ReadTfds" >> flat_map(
            lambda split: sources.read_tfds(data.tfds_name, data.tfds_data_dir, split)
        ), None
    raise ConfigError(f"unknown data.source {data.source!r}")


def _write_json(value, path: str) -> None:
    fileio.write_text(path, json.dumps(value, indent=1))  # runs on a Beam worker: gfile reaches gs:// from there


def run_span_job(
    config: PipelineConfig, data_dir: str | None, span: int, hierarchy: Hierarchy, schema, beam_args, on_result=None
) -> SpanResult:
    """Ingest + preprocess + statistics for one span into `<tfrecord_root>/span-<span>/`; checks the invariant.
    `on_result`, if given, is called with the finished job's PipelineResult (a measurement hook: its monitoring
    metrics hold every transform's execution time; benchmarks/preprocess_jobs.py reads them)."""
    import apache_beam as beam

    from components.ingest import QUARANTINE, IngestRecords
    from components.preprocess import EncodeExamples, WriteQuarantine, WriteSplits
    from components.statistics import ComputeStatistics
    from pipeline import dask_job
    from pipeline.beam_runner import make_pipeline, user_error

    data, pre = config.data, config.preprocess
    out_dir = fileio.absolute(os.path.join(config.tfrecord_root, f"span-{span}"))  # spans.json: usable from any cwd
    staging = out_dir + ".staging"
    fileio.rmtree(staging, ignore_errors=True)
    pipeline = make_pipeline(beam_args)
    runner = type(pipeline.runner).__name__
    log.info("ingest+preprocess: span %d from %s (Beam %s)", span, data_dir or data.source, runner)
    test_fraction = data.test_fraction if data.source in ("folders", "csv") else 0.0
    on_dask = dask_job.is_dask(pipeline)
    try:
        with pipeline:
            if on_dask:  # shaped for what Beam's DaskRunner runs correctly: see pipeline/dask_job.py
                _dask_span_job(pipeline, config, data_dir, hierarchy, schema, staging, test_fraction)
            else:
                parsed, listing = _read_source(pipeline, data, data_dir)
                ingested = parsed | "Ingest" >> IngestRecords(hierarchy, data.eval_fraction, test_fraction, listing)
                encoded = ingested["images"] | "Preprocess" >> EncodeExamples(
                    pre.image_size, pre.jpeg_quality, hierarchy, data.min_image_side, data.max_image_pixels
                )
                _ = encoded["examples"] | "WriteTFRecords" >> WriteSplits(staging, pre.num_shards)
                quarantine = (
                    (ingested[QUARANTINE], encoded[QUARANTINE])
                    | "AllQuarantine" >> beam.Flatten()
                    | "WriteQuarantine" >> WriteQuarantine(staging)
                )
                quarantine_items = quarantine | "QuarantineItems" >> beam.Map(lambda q: (q.split, q.reason))
                _ = (
                    encoded["examples"]
                    | "StatItems" >> beam.Map(lambda e: (e.split, e.serialized, e.width, e.height, e.nbytes))
                    | "Statistics" >> ComputeStatistics(schema, hierarchy, quarantined=quarantine_items)
                    | "WriteStatistics" >> beam.Map(_write_json, os.path.join(staging, "statistics.json"))
                )
    except Exception as exc:
        fileio.rmtree(staging, ignore_errors=True)
        if on_dask:
            dask_job.close_client(pipeline)
        error = user_error(exc) or (dask_job.dask_error(exc, pipeline) if on_dask else None)
        if error is None:
            raise
        raise error from None

    if on_result is not None:
        on_result(pipeline.result)
    counters: dict[str, int] = {}
    if on_dask:  # the DaskRunner has no metrics: the job wrote its counters
        dask_job.close_client(pipeline)
        counters = dask_job.read_counters(staging)
    else:
        for counter in pipeline.result.metrics().query()["counters"]:  # the same name may count in several steps
            counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + counter.committed
    result = SpanResult(
        span=span,
        tfrecord_dir=out_dir,
        records={s: int(counters.get(f"records_{s}", 0)) for s in SPLITS},
        written={s: int(counters.get(f"written_{s}", 0)) for s in SPLITS},
        quarantined={s: int(counters.get(f"quarantined_{s}", 0)) for s in SPLITS},
        reasons={k[len("reason_") :]: int(v) for k, v in counters.items() if k.startswith("reason_")},
        unannotated_images=int(counters.get("unannotated_images", 0)),
        ignored_files=int(counters.get("ignored_files", 0)),
        duplicate_lines=int(counters.get("duplicate_lines", 0)),
    )
    write_schema(schema, os.path.join(staging, "schema.pbtxt"))
    fileio.rmtree(out_dir, ignore_errors=True)
    # Atomic on a local disk; on an object store a directory rename copies object by object — spans.json, which
    # only lists a span after this and its checks, is what makes the span visible to training either way.
    if fileio.is_remote(out_dir):
        import tensorflow as tf

        tf.io.gfile.rename(staging, out_dir)
    else:
        os.rename(staging, out_dir)
    check_accounting(result)
    return result


def _dask_span_job(pipeline, config: PipelineConfig, data_dir, hierarchy: Hierarchy, schema, staging, test_fraction):
    """The span job in the shape Beam's DaskRunner runs correctly (one chain, one sink): pipeline/dask_job.py."""
    from components.ingest import ResolveFn
    from components.preprocess import EncodeExampleFn
    from components.statistics import StatisticsCombineFn
    from components.statistics_layout import StatisticsLayout
    from pipeline import dask_job

    data, pre = config.data, config.preprocess
    parsed, listing = _read_source(pipeline, data, data_dir, flat_map=dask_job.counting_flat_map)
    resolve_fn = ResolveFn(hierarchy, data.eval_fraction, test_fraction, listing is not None)
    encode_fn = EncodeExampleFn(pre.image_size, pre.jpeg_quality, hierarchy, data.min_image_side, data.max_image_pixels)
    combine_fn = StatisticsCombineFn(StatisticsLayout.build(schema, hierarchy))
    dask_job.build_span_job(pipeline, parsed, listing, resolve_fn, encode_fn, combine_fn, staging, pre.num_shards)


def check_accounting(result: SpanResult) -> None:
    """written + quarantined == records for every split, or the pipeline lost (or invented) data."""
    for split in SPLITS:
        written, quarantined, records = result.written[split], result.quarantined[split], result.records[split]
        if written + quarantined != records:
            raise DataError(
                f"span {result.span} {split}: {written} written + {quarantined} quarantined != {records} records — "
                "records were lost; this is a petpipe bug, please report it with the data set"
            )


def validate_span(config: PipelineConfig, result: SpanResult, hierarchy: Hierarchy, schema) -> tuple[list[str], list]:
    """Validate the span's statistics against the schema and the previous successful span; write the report."""
    from components.validation import format_anomalies, validate, write_validation_json

    statistics = read_json(os.path.join(result.tfrecord_dir, "statistics.json"))
    baseline_path = os.path.join(config.work_dir, BASELINE_STATISTICS)
    previous = read_json(baseline_path) if fileio.isfile(baseline_path) else None
    anomalies = validate(statistics, schema, hierarchy, previous, config.validation)
    write_validation_json(os.path.join(result.tfrecord_dir, "validation.json"), statistics, anomalies)
    return format_anomalies(anomalies), anomalies


def ingest_config_hash(config: PipelineConfig, hierarchy: Hierarchy) -> str:
    """What decides a span's outputs besides its input files (which span to pick and where the data live do not)."""
    from pipeline import fingerprint

    data = {k: v for k, v in to_dict(config.data).items() if k not in ("spans", "data_dir", "tfds_data_dir")}
    sections = {"data": data, "preprocess": to_dict(config.preprocess), "validation": to_dict(config.validation)}
    return fingerprint.of_value({**sections, "hierarchy": hierarchy.breed_names, "species": list(hierarchy.species)})


def ingest_spans(
    config: PipelineConfig,
    data_dir: str | None,
    hierarchy: Hierarchy,
    schema,
    beam_args,
    tracker: Tracker | None = None,
    before_computing: Callable[[], None] = lambda: None,
) -> list[SpanResult]:
    """Run the data stage for every selected span; each must pass its checks before it is recorded. A span whose
    input files and settings match a completed execution in the run store is reused, not recomputed
    (`before_computing` is called before the first span that is not)."""
    from pipeline import fingerprint

    tracker = tracker or Tracker()
    spans = available_spans(data_dir) if data_dir and config.data.source != "tfds" else []
    if not spans and config.data.spans != "latest":
        raise ConfigError(f"data.spans={config.data.spans}: {data_dir or 'the input'} has no span-<N> subdirectories")
    selected = select_spans(spans, config.data.spans) if spans else [0]
    config_hash = ingest_config_hash(config, hierarchy)
    results = []
    for span in selected:
        span_input = os.path.join(data_dir, f"span-{span}") if spans else data_dir
        source = span_input or f"tfds:{config.data.tfds_name}:{','.join(config.data.tfds_splits)}"
        input_fingerprint = fingerprint.of_tree(span_input) if span_input else fingerprint.of_value(source)
        key = fingerprint.of_value([span, input_fingerprint, config_hash])
        input_artifact = tracker.artifact("span_input", source, fingerprint=input_fingerprint, span=span)
        inputs = {"span": span, "source": source, "fingerprint": input_fingerprint}
        with tracker.execution("ingest", key, inputs, config_hash, [input_artifact]) as execution:
            result = _reused_span(tracker.completed("ingest", key), execution, config)
            if result is None:
                before_computing()
                result = _ingest_span(config, span, span_input, hierarchy, schema, beam_args)
                output_fingerprint = fingerprint.of_tree(result.tfrecord_dir, with_times=False)
                execution.outputs = {"span_result": asdict(result), "fingerprint": output_fingerprint}
            execution.outputs["summary"] = (
                f"span {span}: " + ", ".join(f"{s} {result.written[s]}" for s in SPLITS)
                + f", quarantined {sum(result.quarantined.values())}"
                + (" (reused)" if execution.reused else "")
            )  # fmt: skip
            execution.output_artifacts.append(
                tracker.artifact(
                    "span_tfrecords",
                    result.tfrecord_dir,
                    fingerprint=execution.outputs["fingerprint"],
                    span=span,
                    record_counts=result.written,
                )
            )
        results.append(result)
    return results


def _reused_span(previous, execution, config: PipelineConfig) -> SpanResult | None:
    """The SpanResult of a completed execution with the same key, if its TFRecords are still there, unchanged."""
    from pipeline import fingerprint

    if previous is None:
        return None
    outputs = execution.reuse(previous)
    result = SpanResult(**outputs["span_result"])
    if fingerprint.of_tree(result.tfrecord_dir, with_times=False) != outputs["fingerprint"]:
        log.warning("ingest: span %d: %s changed since it was written; computing it again", result.span,
                    result.tfrecord_dir)  # fmt: skip
        execution.status, execution.reused, execution.outputs = "complete", None, {}
        return None
    log.info("ingest: span %d unchanged since run store execution %d; reusing %s", result.span, previous["id"],
             result.tfrecord_dir)  # fmt: skip
    if result.span not in load_spans(config.work_dir):
        record_span(config.work_dir, result, config.data.source)
    return result


def _ingest_span(config: PipelineConfig, span: int, span_input, hierarchy: Hierarchy, schema, beam_args) -> SpanResult:
    forget_span(config.work_dir, span)
    result = run_span_job(config, span_input, span, hierarchy, schema, beam_args)
    quarantine_dir = os.path.join(result.tfrecord_dir, "quarantine")
    if result.bad_fraction > config.data.max_bad_fraction:
        raise DataThresholdError(
            f"span {span}: {sum(result.quarantined.values())} of {sum(result.records.values())} records "
            f"({result.bad_fraction:.1%}) quarantined, above data.max_bad_fraction "
            f"{config.data.max_bad_fraction:.1%}; see {quarantine_dir}/*.jsonl"
        )
    result.anomalies, anomalies = validate_span(config, result, hierarchy, schema)
    for line in result.anomalies:
        log.warning("validation: span %d: %s", span, line)
    severe = [a for a in anomalies if a.severe]
    if severe:
        raise ValidationError(
            f"span {span}: {len(severe)} severe anomalies, not training on it: {severe[0].message}"
            f" (all in {os.path.join(result.tfrecord_dir, 'validation.json')})"
        )
    fileio.write_bytes(
        os.path.join(config.work_dir, BASELINE_STATISTICS),
        fileio.read_bytes(os.path.join(result.tfrecord_dir, "statistics.json")),
    )
    record_span(config.work_dir, result, config.data.source)
    return result
