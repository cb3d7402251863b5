"""`petpipe infer`'s Beam job shaped for Beam's DaskRunner (`--runner=DaskRunner`): see pipeline/dask_job.py for
what Beam 2.77's DaskRunner loses (only the last sink runs, every output of a ParDo reaches every consumer,
finish_bundle's output is dropped, no metrics).

On it, RunInference cannot be used (its BatchElements emits the last batch from finish_bundle, so those images would
silently have no answer), nor WriteToText (its sink finishes in finish_bundle), nor counters. So the job is one chain
of Create → FlatMap → Map → GroupByKey → Map → GroupByKey → Map:

  inputs (image files and TFRecord files, one element each) → read on the workers (the same readers as
  components/bulk_inference.py: an unreadable file or a record without an image → an error row)
  → keyed by a shard number (crc32 of the image name) → GroupByKey: one group = one output shard
  → the group's images through the same ServingSignatureHandler in batches of --batch-size (a bad image → an error
    row, a damaged one retried alone), written as answers-SSSSS-of-NNNNN.jsonl; → the group's row counts
  → one group of all counts → the missing (empty) shards and the summary (rows, error_rows) written last, as data.

A shard's images are held in one worker's memory while it is answered.
"""

from __future__ import annotations

import json
import math
import os
import zlib

SUMMARY_FILE = ".summary.json"  # in the staging directory; read and removed by read_summary
MAX_SHARDS = 256
_IMAGE, _ERROR = "image", "error"
_MODELS: dict[str, object] = {}  # per worker process: a version's loaded SavedModel, loaded once


def num_shards(inputs, batch_size: int) -> int:
    """Output shards (= groups): about 4 batches each; a TFRecord file is counted as 256 images (unknown before)."""
    estimated = len(inputs.images) + 256 * len(inputs.tfrecords)
    return max(1, min(MAX_SHARDS, math.ceil(estimated / (4 * batch_size))))


def _read(source: tuple[str, str]):
    """(kind, path) → (_IMAGE, name, bytes) | (_ERROR, name, reason), with bulk_inference's readers."""
    import apache_beam as beam
    import tensorflow as tf

    from components.bulk_inference import _ImagesFromRecords, _ReadImageFiles

    kind, path = source
    if kind == "image":
        outputs = _ReadImageFiles().process(path)
    else:
        compression = "GZIP" if path.lower().endswith(".gz") else ""
        records = tf.data.TFRecordDataset(path, compression_type=compression).as_numpy_iterator()
        reader = _ImagesFromRecords()
        outputs = (output for record in records for output in reader.process((path, record)))
    for output in outputs:
        if isinstance(output, beam.pvalue.TaggedOutput):
            yield (_ERROR, *output.value)
        else:
            yield (_IMAGE, *output)


def _shard_key(item, shards: int):
    return zlib.crc32(item[1].encode("utf-8", "surrogateescape")) % shards, item


def answers_path(staging: str, shard: int, shards: int) -> str:
    from components.bulk_inference import ANSWERS_PREFIX, ANSWERS_SUFFIX

    return os.path.join(staging, f"{ANSWERS_PREFIX}-{shard:05d}-of-{shards:05d}{ANSWERS_SUFFIX}")


def _answer_group(element, served, batch_size: int, staging: str, shards: int) -> dict:
    """One shard: its images answered in batches by bulk_inference's handler, its errors as error rows, written;
    → its counts."""
    import tensorflow as tf

    from components import fileio
    from components.bulk_inference import ServingSignatureHandler
    from schemas.answers import answer_dict, error_answer

    handler = ServingSignatureHandler(served, batch_size)

    shard, items = element
    items = sorted(items, key=lambda item: item[1])
    images = [(name, data) for kind, name, data in items if kind == _IMAGE]
    rows = [(name, error_answer(reason, served.version)) for kind, name, reason in items if kind == _ERROR]
    if images:
        model = _MODELS.get(served.path)
        if model is None:
            model = _MODELS[served.path] = handler.load_model()
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            results = handler.run_inference([data for _, data in batch], model)
            rows += [(name, result.inference) for (name, _), result in zip(batch, results, strict=True)]
    lines = [json.dumps(answer_dict(name, answer)) + "\n" for name, answer in rows]
    tf.io.gfile.makedirs(staging)
    fileio.write_text(answers_path(staging, shard, shards), "".join(lines))
    return {"rows": len(rows), "error_rows": sum(1 for _, answer in rows if answer.error)}


def _finish(element, staging: str, shards: int) -> dict:
    """Every shard's counts: the shards that got no image written empty; the summary written last."""
    import tensorflow as tf

    from components import fileio

    _, parts = element
    tf.io.gfile.makedirs(staging)
    summary = {"rows": sum(p["rows"] for p in parts), "error_rows": sum(p["error_rows"] for p in parts)}
    for shard in range(shards):
        if not tf.io.gfile.exists(answers_path(staging, shard, shards)):
            fileio.write_text(answers_path(staging, shard, shards), "")
    fileio.write_text(os.path.join(staging, SUMMARY_FILE), json.dumps(summary))
    return summary


def build_infer_job(pipeline, inputs, served, batch_size: int, staging: str, shards: int) -> None:
    """The infer job on `pipeline` (a DaskRunner one), writing answers and SUMMARY_FILE into `staging`."""
    import apache_beam as beam

    sources = [("image", p) for p in inputs.images] + [("tfrecord", p) for p in inputs.tfrecords]
    _ = (
        pipeline
        | "Inputs" >> beam.Create(sources)
        | "Read" >> beam.FlatMap(_read)
        | "KeyByShard" >> beam.Map(_shard_key, shards)
        | "GroupByShard" >> beam.GroupByKey()
        | "AnswerShards" >> beam.Map(_answer_group, served, batch_size, staging, shards)
        | "OneKey" >> beam.Map(lambda part: (0, part))
        | "GroupAll" >> beam.GroupByKey()
        | "Finish" >> beam.Map(_finish, staging, shards)  # the last transform: the one Dask computes
    )


def spread_over_partitions(pipeline, inputs, shards: int) -> None:
    """Without --dask_npartitions (or --dask_partition_size), Beam's Create makes parts of 128 elements (one part, so
    one worker, for fewer input files): instead as many parts as shards, at least 4, at most one per input file, so
    that the reading and the answering spread over the workers."""
    from apache_beam.runners.dask.dask_runner import DaskOptions

    options = pipeline.options.view_as(DaskOptions)
    if not options.npartitions and not getattr(options, "partition_size", None):
        files = len(inputs.images) + len(inputs.tfrecords)
        options.npartitions = max(1, min(files, max(shards, 4)))


def read_summary(staging: str) -> dict[str, int]:
    """{rows, error_rows} the finish step wrote, removed from the staging directory."""
    import tensorflow as tf

    from components import fileio

    path = os.path.join(staging, SUMMARY_FILE)
    summary = json.loads(fileio.read_bytes(path))
    tf.io.gfile.remove(path)
    return summary
