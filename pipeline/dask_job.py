"""The data stage's Beam job shaped for Beam's DaskRunner (`--runner=DaskRunner`, the apache-beam[dask] extra).

Beam 2.77's DaskRunner (apache_beam/runners/dask/) translates only Create, ParDo, GroupByKey and Flatten, and:

* computes only the LAST transform's Dask bag (dask_runner.py:251 `dask.optimize(list(...bags.values())[-1])`): every
  other sink of a job with several sinks is silently not run;
* keeps one bag per transform, not per output (dask_runner.py:192-194 `self.bags[prev_op]`), and unwraps every
  TaggedOutput (transform_evaluator.py:62-63): every consumer of a `with_outputs` / `beam.Partition` output receives
  ALL the outputs of that ParDo, main and tagged;
* drops what a DoFn emits in finish_bundle (transform_evaluator.py:198-200 collects results before
  invoke_finish_bundle), which Beam's file sinks (iobase.WriteImpl: WriteToTFRecord, WriteToText) rely on;
* has no metrics (dask_runner.py:161-163 `metrics()` raises NotImplementedError; no MetricsContainer is set, so
  counters incremented on a worker are dropped) — while the data stage's accounting check is made of counters.

So on Dask the job below uses only Create, Map/FlatMap (one output, nothing from finish_bundle, no side inputs),
GroupByKey and Flatten, in ONE chain ending in ONE transform that depends on everything: the same component
functions (the ingest resolver, the example encoder, the statistics CombineFn) run inside it; what they count is
captured per call and carried as data; TFRecord shards and quarantine files are written by GroupByKey groups, and
the last step writes statistics.json and the counters (`COUNTERS_FILE`, read and removed by run_span_job).
"""

from __future__ import annotations

import json
import os
import types
from collections import Counter

from components.ingest import SPLITS

COUNTERS_FILE = ".counters.json"  # in the staging directory; run_span_job reads and removes it
# Outcome kinds: every element after the source is (kind, value).
ITEM, COUNTERS, IMAGE, EXAMPLE, QUARANTINED = "item", "counters", "image", "example", "quarantined"


def is_dask(pipeline) -> bool:
    return type(pipeline.runner).__name__ == "DaskRunner"


def scheduler_address(pipeline) -> str | None:
    from apache_beam.runners.dask.dask_runner import DaskOptions

    return pipeline.options.view_as(DaskOptions).address  # --dask_client_address


def close_client(pipeline) -> None:
    """Close the Dask client the DaskRunner opened for the job (it leaves it open), if it got that far."""
    result = getattr(pipeline, "result", None)
    if result is not None:
        result.client.close()


def dask_error(exc: BaseException, pipeline):
    """A ConfigError naming the scheduler, when the job failed because it could not connect to it (before the job
    started: the DaskRunner opens its client first), else None."""
    from common.errors import ConfigError

    if getattr(pipeline, "result", None) is not None or not isinstance(exc, OSError | TimeoutError):
        return None
    message = " ".join(str(exc).split())
    address = scheduler_address(pipeline)
    if address is None:
        return ConfigError(f"--runner=DaskRunner: cannot start or reach the local Dask cluster ({message})")
    return ConfigError(f"--dask_client_address={address}: cannot reach the Dask scheduler ({message})")


def counted(fn, *args, **kwargs) -> tuple[object, dict[str, int]]:
    """(what fn returns — a list if it yields; {counter name: increment} of the Beam counters it incremented)."""
    from apache_beam.metrics.execution import MetricsContainer
    from apache_beam.runners.worker import statesampler
    from apache_beam.utils.counters import CounterFactory

    previous = statesampler.get_current_tracker()
    sampler = statesampler.StateSampler("dask", CounterFactory())
    container = MetricsContainer("dask")
    statesampler.set_current_tracker(sampler)
    try:
        with sampler.scoped_state("dask", "process", metrics_container=container):
            result = fn(*args, **kwargs)
            if isinstance(result, types.GeneratorType):
                result = list(result)
    finally:
        statesampler.set_current_tracker(previous)
    counters = {key.metric.name: value for key, value in container.get_cumulative().counters.items() if value}
    return result, counters


def _with_counters(outputs, counters):
    yield from outputs
    if counters:
        yield COUNTERS, counters


def counting_flat_map(fn, **kwargs):
    """beam.FlatMap(fn) whose outputs are (ITEM, x), plus (COUNTERS, {...}) for what fn counted."""
    import apache_beam as beam

    def run(element, **kw):
        outputs, counters = counted(fn, element, **kw)
        return _with_counters([(ITEM, x) for x in outputs or ()], counters)

    return beam.FlatMap(run, **kwargs)


def _unparsable(outcome):
    """Source items that are already quarantine entries (counted as records, as IngestRecords does); counters."""
    from components.ingest import count_parse_quarantine
    from components.records import Quarantined

    kind, value = outcome
    if kind == COUNTERS:
        yield outcome
    elif isinstance(value, Quarantined):
        entry, counters = counted(count_parse_quarantine, value)
        yield from _with_counters([(QUARANTINED, entry)], counters)


def _keyed_record(outcome):
    from components.records import Quarantined

    kind, value = outcome
    if kind == ITEM and not isinstance(value, Quarantined):
        yield value.key, ("records", value)


def _resolve(element, resolve_fn):
    """(image key, [("records", r) | ("files", True)]) → IngestRecords' resolver on it: images, quarantine, counters."""
    import apache_beam as beam

    key, tagged = element
    grouped = {
        "records": [v for tag, v in tagged if tag == "records"],
        "files": [v for tag, v in tagged if tag == "files"],
    }
    outputs, counters = counted(resolve_fn.process, (key, grouped))
    results = [(QUARANTINED, o.value) if isinstance(o, beam.pvalue.TaggedOutput) else (IMAGE, o) for o in outputs]
    return _with_counters(results, counters)


def _encode_fn_class():
    import apache_beam as beam

    class EncodeOutcomes(beam.DoFn):
        """(IMAGE, LabelledImage) → EncodeExamples' encoder on it: (EXAMPLE, ...) or (QUARANTINED, ...); counters.
        Other outcomes pass through."""

        def __init__(self, encode_fn):
            self.encode_fn = encode_fn

        def setup(self):
            self.encode_fn.setup()

        def process(self, outcome):
            kind, value = outcome
            if kind != IMAGE:
                yield outcome
                return
            outputs, counters = counted(self.encode_fn.process, value)
            results = [
                (QUARANTINED, o.value) if isinstance(o, beam.pvalue.TaggedOutput) else (EXAMPLE, o) for o in outputs
            ]
            yield from _with_counters(results, counters)

    return EncodeOutcomes


def _group_key(outcome, num_shards: int) -> tuple[int, int, int]:
    """Integer keys (hash-stable across worker processes): (0, split, shard) | (1, split, 0) | (2, 0, 0)."""
    from components.preprocess import shard_key

    kind, value = outcome
    if kind == EXAMPLE:
        return 0, *shard_key(value, num_shards)
    if kind == QUARANTINED:
        return 1, SPLITS.index(value.split), 0
    return 2, 0, 0


def _write_group(element, staging: str, num_shards: int, combine_fn) -> dict:
    """One GroupByKey group: a TFRecord shard or a split's quarantine file, written; → its counters + statistics."""
    from components.preprocess import count_quarantined, quarantine_path, shard_path, write_lines, write_tfrecords

    (kind, split_index, shard), outcomes = element
    counters: Counter = Counter()
    statistics = combine_fn.create_accumulator()
    values = [value for _, value in outcomes]
    if kind == 0:
        split = SPLITS[split_index]
        write_tfrecords(shard_path(staging, split, shard, num_shards), [e.serialized for e in values])
        for e in values:
            statistics = combine_fn.add_input(statistics, (e.split, e.serialized, e.width, e.height, e.nbytes))
    elif kind == 1:
        split = SPLITS[split_index]
        write_lines(quarantine_path(staging, split), [q.to_json() for q in values])
        for q in values:
            counters.update(counted(count_quarantined, q)[1])
            statistics = combine_fn.add_input(statistics, (q.split, q.reason))
    else:
        for increments in values:
            counters.update(increments)
    return {"counters": dict(counters), "statistics": statistics}


def _finish(element, staging: str, num_shards: int, combine_fn) -> str:
    """All groups' results: the missing (empty) shards and quarantine files, statistics.json, the counters."""
    import tensorflow as tf

    from components.preprocess import quarantine_path, shard_path, write_lines, write_tfrecords

    _, parts = element
    counters: Counter = Counter()
    for part in parts:
        counters.update(part["counters"])
    statistics = combine_fn.merge_accumulators(
        [combine_fn.create_accumulator()] + [part["statistics"] for part in parts]
    )
    for split in SPLITS:  # Beam's sinks write every shard and an empty quarantine file for a split without entries
        for shard in range(num_shards):
            if not tf.io.gfile.exists(shard_path(staging, split, shard, num_shards)):
                write_tfrecords(shard_path(staging, split, shard, num_shards), [])
        if not tf.io.gfile.exists(quarantine_path(staging, split)):
            write_lines(quarantine_path(staging, split), [])
    _write_json(combine_fn.extract_output(statistics), os.path.join(staging, "statistics.json"))
    _write_json(dict(counters), os.path.join(staging, COUNTERS_FILE))
    return staging


def _write_json(value, path: str) -> None:
    import tensorflow as tf

    from components import fileio

    tf.io.gfile.makedirs(os.path.dirname(path))
    fileio.write_text(path, json.dumps(value, indent=1))


def build_span_job(pipeline, parsed, listing, resolve_fn, encode_fn, combine_fn, staging: str, num_shards: int):
    """The data stage on `pipeline` (a DaskRunner one): `parsed` is the source's PCollection of (ITEM, record or
    entry) | (COUNTERS, {...}) (see counting_flat_map); `listing` the existing image keys or None."""
    import apache_beam as beam

    records = parsed | "KeyRecords" >> beam.FlatMap(_keyed_record)
    if listing is not None:
        files = listing | "KeyFiles" >> beam.Map(lambda key: (key, ("files", True)))
        records = (records, files) | "RecordsAndFiles" >> beam.Flatten()
    resolved = (
        records
        | "GroupByImage" >> beam.GroupByKey()
        | "Resolve" >> beam.FlatMap(_resolve, resolve_fn)
        | "Encode" >> beam.ParDo(_encode_fn_class()(encode_fn))
    )
    unparsable = parsed | "Unparsable" >> beam.FlatMap(_unparsable)
    return (
        (resolved, unparsable)
        | "AllOutcomes" >> beam.Flatten()
        | "KeyByFile" >> beam.Map(lambda outcome: (_group_key(outcome, num_shards), outcome))
        | "GroupByFile" >> beam.GroupByKey()
        | "WriteFiles" >> beam.Map(_write_group, staging, num_shards, combine_fn)
        | "OneKey" >> beam.Map(lambda part: (0, part))
        | "GroupAll" >> beam.GroupByKey()
        | "Finish" >> beam.Map(_finish, staging, num_shards, combine_fn)  # the last transform: Dask computes it
    )


def read_counters(staging: str) -> dict[str, int]:
    """The job's counters (the finish step wrote them), removed from the staging directory."""
    import tensorflow as tf

    from components import fileio

    path = os.path.join(staging, COUNTERS_FILE)
    counters = json.loads(fileio.read_bytes(path))
    tf.io.gfile.remove(path)
    return counters
