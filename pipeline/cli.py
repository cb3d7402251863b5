"""`petpipe` command line: make-data, run, serve, predict.

`petpipe run` passes every flag it does not know to Apache Beam unchanged (--runner, --direct_num_workers,
--direct_running_mode, Dataflow/Flink options, ...).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from common.errors import PetpipeError
from pipeline import infer_command, serving_commands

log = logging.getLogger("petpipe")

RUN_EPILOG = """\
Exit codes: 0 done (candidate blessed and pushed) or nothing to do (no new span or setting since the last
decision), 2 error (bad input, config, I/O), 3 too many records quarantined (--max-bad-fraction), 4 severe data
anomalies (see the span's validation.json), 5 candidate not blessed (nothing pushed; see the run's report),
6 locked (another run holds the work dir), 130 interrupted. Nothing is trained after 3 or 4; the served model is
never touched unless a candidate is blessed. Every run is recorded: petpipe history, petpipe lineage VERSION.

Beam options: any flag not listed above goes to Apache Beam as is. Without --runner (or with
--runner=DirectRunner) the pipeline runs locally on Beam's FnApiRunner, never downloading the Prism runner.

Multi-worker training (--set train.distribute=multiworker): run the same command on every task of the TF_CONFIG
cluster with one shared --work-dir; the chief runs the pipeline, the others train with it. Every wait (the cluster
gathering, the chief's decision) gives up after PETPIPE_MULTIWORKER_TIMEOUT seconds (default 1800). docs/scale-out.md.

Examples:
  petpipe run                                   # generate the embedded data set and run everything
  petpipe run --data-dir ~/oxford-iiit-pet      # the real download, unpacked (images/, annotations/)
  petpipe run --set train.epochs=3 --set preprocess.image_size=96
  petpipe run --direct_running_mode=multi_processing --direct_num_workers=2
"""


class _QuietBeam(logging.Filter):
    """Drops Beam's import-time warnings (e.g. about missing GCP clients) that are logged on the root logger, and
    the traceback a portable job service relays when the job fails: the run reports that failure itself (a one-line
    error, or the exception with the same text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        relayed_failure = "Traceback (most recent call last)" in record.getMessage()
        if relayed_failure and record.pathname.endswith("portable_runner.py"):
            return False
        return record.levelno >= logging.ERROR or "apache_beam" not in record.pathname


class JsonLines(logging.Formatter):
    """One JSON object per record: time (ISO 8601, UTC), level, logger, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        import datetime
        import json

        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _setup_logging(verbose: bool, log_format: str = "text") -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    if log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonLines())
    if verbose:
        return
    for handler in logging.getLogger().handlers:
        handler.addFilter(_QuietBeam())
    # Beam, TF and absl are chatty at INFO; our own stage logs carry the progress.
    for noisy in ("apache_beam", "absl", "tensorflow", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Beam logs a failing element's traceback here before re-raising the error, which we report in one line.
    logging.getLogger("apache_beam.runners.common").setLevel(logging.CRITICAL)


def _make_data(args) -> int:
    from datasources.synthetic_pets import write_synthetic_pets
    from pipeline.stages.data import progress_logger

    counts = write_synthetic_pets(
        args.out,
        per_breed=args.per_breed,
        seed=args.seed,
        progress=progress_logger("make-data"),
        style="photo" if args.photo else "small",
        processes=args.processes,
    )
    print(f"wrote {counts['trainval']} trainval and {counts['test']} test images to {args.out}")
    return 0


def run_config(args):
    from pipeline.config import load_config

    flags = {
        "data.source": args.source,
        "data.data_dir": args.data_dir,
        "data.tfds_data_dir": args.tfds_data_dir,
        "data.spans": args.spans,
        "data.max_bad_fraction": args.max_bad_fraction,
        "data.hierarchy": args.hierarchy,
        "work_dir": args.work_dir,
        "export.serving_dir": args.serving_dir,
    }
    # Dedicated flags win over --set, which wins over the config file.
    overrides = list(args.set) + [f"{key}={value}" for key, value in flags.items() if value is not None]
    return load_config(args.config, overrides)


def _run(args, beam_args: list[str]) -> int:
    from pipeline.run import run_pipeline

    config = run_config(args)
    role = multiworker_role(config.train.distribute)
    if role is None:
        summary = run_pipeline(config, beam_args, force=args.force)
    else:
        from components.distribute import make_strategy
        from pipeline import workers

        with workers.joining_the_cluster(role, workers.timeout_seconds()):
            # Before TensorFlow runs anything; waits (bounded) for every task to start.
            make_strategy("multiworker", register_timeout_seconds=workers.timeout_seconds())
        with workers.one_line_training_errors(role):
            if not role.is_chief:
                return workers.run_worker(config, role)
            coordinator = workers.Coordinator(config, role)
            with coordinator.telling_failures():
                summary = run_pipeline(config, beam_args, force=args.force, coordinator=coordinator)
    if summary.outcome == "nothing to do":
        print(f"petpipe run: nothing to do: {summary.outcome_message}")
        return 0
    verdict = "done" if summary.exit_code == 0 else "done, candidate NOT blessed"
    print("\n".join(["", f"petpipe run: {verdict}"] + summary.lines()))
    return summary.exit_code


def multiworker_role(distribute: str):
    """This task's pipeline/workers.Role when train.distribute resolves to multiworker (TF_CONFIG checked first:
    a bad one is a ConfigError naming the field), else None: one process trains (none or mirrored)."""
    from pipeline import workers

    tf_config = os.environ.get("TF_CONFIG", "")
    if distribute not in ("multiworker", "auto") or (distribute == "auto" and not tf_config.strip()):
        return None
    role = workers.role_from_tf_config(tf_config)
    tasks = sum(len(addresses) for addresses in role.cluster.values())
    return role if distribute == "multiworker" or tasks > 1 else None  # auto: as components.distribute.resolve


def _schedule(args, beam_args: list[str]) -> int:
    """A foreground loop: run, sleep until the next slot, run again. Each run's outcome is logged; errors do not
    stop the loop (the next slot tries again), except configuration errors, which would fail every time."""
    import time

    from common.errors import ConfigError

    every = parse_duration(args.every)
    config = run_config(args)  # a bad config fails now, not at the first slot
    log.info("schedule: petpipe run every %s on %s (Ctrl-C to stop)", args.every, config.work_dir)
    runs = 0
    while True:
        started = time.monotonic()
        try:
            code = _run(args, beam_args)
        except ConfigError:
            raise
        except PetpipeError as exc:
            log.error("schedule: run failed (exit %d): %s", exc.exit_code, exc)
            code = exc.exit_code
        runs += 1
        log.info("schedule: run %d ended with exit code %d", runs, code)
        if args.max_runs and runs >= args.max_runs:
            return 0
        time.sleep(max(0.0, every - (time.monotonic() - started)))


def parse_duration(text: str) -> float:
    """'90s', '15m', '24h', '1d' or plain seconds → seconds."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise PetpipeError(f"--every {text!r}: expected a positive duration like 90s, 15m, 24h or 1d")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def _history(args) -> int:
    from pipeline.store import RunStore, format_history

    store = _open_store(args, RunStore)
    print(format_history(store, args.limit))
    return 0


def _lineage(args) -> int:
    from pipeline.store import RunStore, format_lineage

    config = run_config(args)
    store = _open_store(args, RunStore)
    text = format_lineage(store, args.version, config.model_base_path)
    if not text:
        raise PetpipeError(f"version {args.version}: not pushed by any run recorded in {store.path}")
    print(text)
    return 0


def _open_store(args, store_class):
    path = run_config(args).run_store_path
    if not os.path.exists(path):
        raise PetpipeError(f"{path}: no run store yet (petpipe run creates it)")
    return store_class(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="petpipe", description="Train and serve a species → breed pet classifier (Beam + TensorFlow)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    _log_format_flag(parser, "text")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    make_data = commands.add_parser(
        "make-data", help="write the embedded synthetic data set in the Oxford-IIIT Pet raw layout"
    )
    make_data.add_argument("--out", required=True, help="output directory (images/, annotations/)")
    make_data.add_argument("--per-breed", type=int, default=60, help="images per breed (default 60; 37 breeds)")
    make_data.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files")
    make_data.add_argument(
        "--photo",
        action="store_true",
        help="photo-scale images like the real Oxford-IIIT Pet: long side 300-500 px, 20-100 KB JPEGs (median about"
        " 45 KB) with fur texture, background clutter and sensor noise, same breed cues; costly to decode, as real"
        " photos are (default: small images of about 150 px; `petpipe run` takes --set data.image_style=photo)",
    )
    make_data.add_argument(
        "--processes",
        type=int,
        default=None,
        help="worker processes that render images (default: all cores from 300 images up, else 1); the files are"
        " the same whatever the number",
    )

    run = commands.add_parser(
        "run",
        help="run the whole pipeline: data → ingest → preprocess → train → evaluate → export → gRPC smoke query",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _run_flags(run)
    _log_format_flag(run, argparse.SUPPRESS)
    run.add_argument("--force", action="store_true", help="train, evaluate and maybe push even if nothing changed")
    schedule = commands.add_parser(
        "schedule",
        help="run the pipeline every --every, in the foreground (for machines without cron or a scheduler)",
        epilog="Takes every `petpipe run` flag; Beam flags pass through. Exit codes of each run are logged.",
    )
    schedule.add_argument("--every", required=True, help="interval between run starts: 90s, 15m, 24h, 1d")
    schedule.add_argument("--max-runs", type=int, default=0, help="stop after this many runs (default: never)")
    _run_flags(schedule)
    _log_format_flag(schedule, argparse.SUPPRESS)
    schedule.set_defaults(force=False)
    history = commands.add_parser("history", help="the runs recorded in the run store, with their steps")
    _store_flags(history)
    history.add_argument("--limit", type=int, default=20, help="most recent runs to show (default 20)")
    lineage = commands.add_parser(
        "lineage", help="where a pushed version came from: span → TFRecords → model → blessing → push"
    )
    lineage.add_argument("version", type=int, help="model version number in the serving directory")
    _store_flags(lineage)
    serving_commands.add_serving_commands(commands)
    infer_command.add_infer_command(commands)
    return parser


def _log_format_flag(parser, default) -> None:
    """Before or after the command: `petpipe --log-format json run` and `petpipe run --log-format json`."""
    parser.add_argument(
        "--log-format", choices=["text", "json"], default=default, help="json: one JSON object per line, for collectors"
    )


def _store_flags(parser) -> None:
    """Enough of `run`'s flags to find the run store and the serving directory."""
    parser.add_argument("--config", help="TOML config file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. store_path=")
    parser.add_argument("--work-dir", help="the pipeline root (default petpipe-work)")
    parser.add_argument("--serving-dir", help="TF Serving model root (default <work-dir>/serving)")
    parser.set_defaults(
        source=None, data_dir=None, tfds_data_dir=None, spans=None, max_bad_fraction=None, hierarchy=None
    )


def _run_flags(run) -> None:
    run.add_argument("--config", help="TOML config file (sections data, validation, preprocess, train, bless, export)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.epochs=3")
    run.add_argument(
        "--source",
        choices=["oxford", "folders", "csv", "tfds"],
        help="input kind: oxford (raw Oxford-IIIT Pet layout, default), folders (<root>/<species>/<breed>/*.jpg), "
        "csv (manifest with columns path,species,breed), tfds (a prepared TFDS data set)",
    )
    run.add_argument(
        "--data-dir",
        help="input: a directory (oxford, folders), a manifest file (csv), or an input base with span-<N>/ "
        "subdirectories; default: generate the embedded data set",
    )
    run.add_argument("--tfds-data-dir", help="TFDS data_dir where oxford_iiit_pet is prepared (with --source tfds)")
    run.add_argument("--spans", help="with span-<N>/ inputs: latest (default), all, N or N-M")
    run.add_argument(
        "--max-bad-fraction",
        type=float,
        help="fail (exit 3) when more than this share of records is quarantined (default 0.05)",
    )
    run.add_argument("--hierarchy", help="label hierarchy JSON (default: schemas/hierarchy.json, Oxford-IIIT Pet)")
    run.add_argument("--work-dir", help="where data, TFRecords and metrics go (default petpipe-work)")
    run.add_argument("--serving-dir", help="TF Serving model root (default <work-dir>/serving)")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command not in ("run", "schedule", "infer"):  # these pass Beam flags on
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    _setup_logging(args.verbose, args.log_format)
    if args.command in ("run", "schedule") and threading.current_thread() is threading.main_thread():
        # Schedulers stop jobs with SIGTERM: end like Ctrl-C, so the run is recorded as interrupted (exit 130).
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        if args.command == "make-data":
            return _make_data(args)
        if args.command == "run":
            return _run(args, unknown)
        if args.command == "schedule":
            return _schedule(args, unknown)
        if args.command == "history":
            return _history(args)
        if args.command == "lineage":
            return _lineage(args)
        if args.command == "serve":
            return serving_commands.serve(args)
        if args.command == "status":
            return serving_commands.status(args)
        if args.command == "infer":
            return infer_command.infer(args, unknown)
        return serving_commands.predict(args)
    except PetpipeError as exc:
        print(f"petpipe: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # disk full, permissions, a vanished mount: say which file, not a traceback
        print(f"petpipe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("petpipe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
