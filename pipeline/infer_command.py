"""`petpipe infer`: batch inference over files with an exported version, as a Beam job (components/bulk_inference.py);
this module only checks the arguments, runs the job on make_pipeline's runner and commits its output."""

from __future__ import annotations

import argparse
import logging

from common.errors import PetpipeError

log = logging.getLogger("petpipe")

INFER_EPILOG = """\
Output: DIR/answers-SSSSS-of-NNNNN.jsonl, one JSON object per image with the fields of `petpipe predict --json`
(image, species, species_probs, breed, breed_prob, top_k, species_uncertain, version, error), in no particular
order, and DIR/_SUCCESS (a JSON summary) once every shard is complete. The job writes into a hidden staging
directory beside DIR and renames it into place at the end, so a failed or interrupted job leaves no DIR (on
gs:// and other object stores, which cannot rename a directory, wait for _SUCCESS instead).
A bad image (empty, not an image, truncated, undecodable) or an unreadable file is a row whose "error" says why;
it does not fail the job.

Beam options: any flag not listed above goes to Apache Beam as is. Without --runner (or with
--runner=DirectRunner) the job runs locally on Beam's FnApiRunner. On --runner=DaskRunner
(--dask_client_address=tcp://HOST:8786) it runs in a shape of its own (no RunInference: one group of images per
output shard, answered in batches of --batch-size on a worker); give the workers the same view of the files.
Examples:
  petpipe infer --model petpipe-work/serving/pets --input photos/ --output answers/
  petpipe infer --model petpipe-work/serving/pets/3 --input 'photos/**/*.jpg' --output answers/ --overwrite
  petpipe infer --model petpipe-work/serving/pets --input petpipe-work/tfrecords/span-0/test --output test-answers/ \\
      --direct_running_mode=multi_processing --direct_num_workers=2
"""


def add_infer_command(commands) -> None:
    infer = commands.add_parser(
        "infer",
        help="batch inference: answer every image of a directory, glob or TFRecords with a Beam job",
        description="Run an exported model version over many images with Apache Beam's RunInference and write "
        "one JSON answer per image (TFX's BulkInferrer).",
        epilog=INFER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    infer.add_argument(
        "--model",
        required=True,
        metavar="PATH",
        help="a model base path (SERVING_DIR/pets: its latest version, as TF Serving picks it) or one version "
        "(SERVING_DIR/pets/VERSION)",
    )
    infer.add_argument(
        "--input",
        required=True,
        action="append",
        metavar="PATH",
        help="a directory of images (or, when it holds none, of TFRecord files, searched below it), a glob, an "
        "image file, or TFRecord files (*.tfrecord[.gz]: tf.train.Example with image/encoded, named by "
        "image/filename, as the data stage writes them); repeat for more",
    )
    infer.add_argument("--output", required=True, metavar="DIR", help="directory for the answers (must be new or "
                       "empty unless --overwrite)")  # fmt: skip
    infer.add_argument("--overwrite", action="store_true", help="replace DIR's previous answers when the job succeeds")
    infer.add_argument("--batch-size", type=int, default=32, help="most images per model call (default 32); Beam "
                       "batches adaptively up to it")  # fmt: skip


def infer(args, beam_args: list[str]) -> int:
    from components import fileio
    from components.bulk_inference import (
        METRICS_NAMESPACE,
        InferAnswers,
        WriteAnswers,
        check_output,
        commit_output,
        resolve_inputs,
        resolve_version,
        staging_dir,
    )
    from pipeline import dask_infer, dask_job
    from pipeline.beam_runner import make_pipeline, user_error

    if args.batch_size < 1:
        raise PetpipeError(f"--batch-size must be at least 1, got {args.batch_size}")
    served = resolve_version(args.model)
    inputs = resolve_inputs(args.input)
    output = fileio.absolute(args.output)
    check_output(output, args.overwrite)
    staging = staging_dir(output)
    pipeline = make_pipeline(beam_args)
    log.info(
        "infer: %d image files, %d TFRecord files with %s (version %d) on Beam %s",
        len(inputs.images), len(inputs.tfrecords), served.path, served.version, type(pipeline.runner).__name__,
    )  # fmt: skip
    on_dask = dask_job.is_dask(pipeline)
    try:
        with pipeline:
            if on_dask:  # RunInference, WriteToText and counters are lost there: see pipeline/dask_infer.py
                shards = dask_infer.num_shards(inputs, args.batch_size)
                dask_infer.spread_over_partitions(pipeline, inputs, shards)
                dask_infer.build_infer_job(pipeline, inputs, served, args.batch_size, staging, shards)
            else:
                infer = pipeline | "Infer" >> InferAnswers(inputs, served, args.batch_size)
                _ = infer | "Write" >> WriteAnswers(staging)
    except BaseException as exc:  # also Ctrl-C: nothing half-written stays behind
        fileio.rmtree(staging, ignore_errors=True)
        if on_dask:
            dask_job.close_client(pipeline)
        error = user_error(exc) if isinstance(exc, Exception) else None
        if error is None and on_dask and isinstance(exc, Exception):
            error = dask_job.dask_error(exc, pipeline)
        if error is None:
            raise
        raise error from None
    counters = {"rows": 0, "error_rows": 0}
    if on_dask:  # no metrics there: the job's last step wrote the counts
        dask_job.close_client(pipeline)
        counters.update(dask_infer.read_summary(staging))
    else:
        for counter in pipeline.result.metrics().query(_namespace_filter(METRICS_NAMESPACE))["counters"]:
            counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + counter.committed
    summary = {"model": served.path, "version": served.version, "inputs": list(args.input), **counters}
    commit_output(staging, output, summary)
    print(f"petpipe infer: {counters['rows']} answers ({counters['error_rows']} errors) in {output}")
    return 0


def _namespace_filter(namespace: str):
    from apache_beam.metrics.metric import MetricsFilter

    return MetricsFilter().with_namespace(namespace)
