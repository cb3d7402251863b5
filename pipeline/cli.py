"""`petpipe` command line: make-data, run, serve, predict.

`petpipe run` passes every flag it does not know to Apache Beam unchanged (--runner, --direct_num_workers,
--direct_running_mode, Dataflow/Flink options, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading

from common.errors import PetpipeError

log = logging.getLogger("petpipe")

RUN_EPILOG = """\
Exit codes: 0 done (candidate blessed and pushed) or nothing to do (no new span or setting since the last
decision), 2 error (bad input, config, I/O), 3 too many records quarantined (--max-bad-fraction), 4 severe data
anomalies (see the span's validation.json), 5 candidate not blessed (nothing pushed; see the run's report),
6 locked (another run holds the work dir), 130 interrupted. Nothing is trained after 3 or 4; the served model is
never touched unless a candidate is blessed. Every run is recorded: petpipe history, petpipe lineage VERSION.

Beam options: any flag not listed above goes to Apache Beam as is. Without --runner (or with
--runner=DirectRunner) the pipeline runs locally on Beam's FnApiRunner, never downloading the Prism runner.
Examples:
  petpipe run                                   # generate the embedded data set and run everything
  petpipe run --data-dir ~/oxford-iiit-pet      # the real download, unpacked (images/, annotations/)
  petpipe run --set train.epochs=3 --set preprocess.image_size=96
  petpipe run --direct_running_mode=multi_processing --direct_num_workers=2
"""


SERVE_EPILOG = """\
Examples:
  petpipe serve --model-base-path petpipe-work/serving/pets --rest-api-port 8501
  petpipe serve --model_config_file=petpipe-work/serving/models.config --enable_batching \\
      --batching_parameters_file=deploy/serving/batching_parameters.txt
  petpipe serve --model_name=half_plus_two --model_base_path=saved_model_half_plus_two_cpu --rest_api_port=8501 \\
      --monitoring_config_file=deploy/prometheus/monitoring_config.txt   # TF Serving's own examples work as is
SIGTERM (or Ctrl-C) refuses new requests, lets in-flight ones finish, then exits 0.
"""


def _serve_flag(parser, *names, **kwargs) -> None:
    """A flag under its dashed name and TF Serving's underscored one (--model-base-path, --model_base_path)."""
    spellings = [*names, *("--" + n[2:].replace("-", "_") for n in names if "-" in n[2:])]
    parser.add_argument(*dict.fromkeys(spellings), **kwargs)


def _true_or_false(text: str) -> bool:
    """TF Serving's boolean flags are written --flag=true / --flag=false."""
    if text.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1")


class _QuietBeam(logging.Filter):
    """Drops Beam's import-time warnings (e.g. about missing GCP clients) that are logged on the root logger."""

    def filter(self, record: logging.LogRecord) -> bool:
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
    from datasources.synthetic_pets import make_dataset
    from pipeline.run import progress_logger

    counts = make_dataset(args.out, per_breed=args.per_breed, seed=args.seed, progress=progress_logger("make-data"))
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
    check_distribute(config.train.distribute)
    summary = run_pipeline(config, beam_args, force=args.force)
    if summary.outcome == "nothing to do":
        print(f"petpipe run: nothing to do: {summary.outcome_message}")
        return 0
    verdict = "done" if summary.exit_code == 0 else "done, candidate NOT blessed"
    print("\n".join(["", f"petpipe run: {verdict}"] + summary.lines()))
    return summary.exit_code


def check_distribute(distribute: str) -> None:
    """petpipe run trains in one process: with no strategy or MirroredStrategy over the local devices. Worker tasks
    of a MultiWorkerMirroredStrategy must all train together, which a whole pipeline run per task cannot do yet."""
    from components.distribute import resolve

    if resolve(distribute) == "multiworker":
        raise PetpipeError(
            f"train.distribute={distribute}: petpipe run does not coordinate worker tasks yet (every task would run "
            "the data stage and the export); call components.train.train_model(..., strategy='multiworker') in each "
            "task with TF_CONFIG set, or use train.distribute=mirrored"
        )


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


def _serve(args) -> int:
    from serving.core import ServingError
    from serving.protos import ConfigFileError
    from serving.server import ServeOptions, start_server

    if args.model_base_path and not os.path.isdir(args.model_base_path) and "://" not in args.model_base_path:
        raise PetpipeError(f"{args.model_base_path}: model base path not found (expected <version>/saved_model.pb)")
    # Every serve flag is named after its ServeOptions field (TF Serving's own flag names).
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServeOptions)}
    values["rest_api_port"] = args.rest_api_port or None  # 0 = off, as TF Serving's --rest_api_port
    values["allowed_base_path_roots"] = tuple(args.allowed_base_path_roots or ())
    options = ServeOptions(**values)
    try:
        server = start_server(options=options)
    except (ConfigFileError, ServingError) as exc:
        raise PetpipeError(str(exc)) from None
    names = ", ".join(server.model_server.model_names)
    log.info("gRPC on %s:%d%s, models: %s", args.host, server.port, " (TLS)" if args.ssl_config_file else "", names)
    if server.rest_port:
        log.info("REST on http://%s:%d/v1/models/<name>", args.host, server.rest_port)
    stop_requested = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.set())
    try:
        while not stop_requested.wait(0.5):  # a timed wait, so signals are handled promptly
            pass
        log.info("SIGTERM: draining in-flight requests (up to %.0f s), then stopping", args.drain_seconds)
    except KeyboardInterrupt:
        log.info("interrupted: draining in-flight requests, then stopping")
    server.stop()
    log.info("stopped")
    return 0


def _predict(args) -> int:
    import json

    from serving.client import answer_dict, expand_image_paths, format_answer, predict_images

    paths = expand_image_paths(args.images)
    images = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                images.append(f.read())
        except OSError as exc:
            raise PetpipeError(f"{path}: cannot read image: {exc.strerror}") from None
    answers = []
    for start in range(0, len(images), args.batch_size):  # bounded requests, whatever the number of files
        batch = images[start : start + args.batch_size]
        answers += predict_images(args.server, batch, args.model_name, args.signature, args.timeout, tls=_tls(args))
    for path, answer in zip(paths, answers, strict=True):
        print(json.dumps(answer_dict(path, answer)) if args.json else format_answer(path, answer))
    return 0


def _tls(args):
    from serving.client import TlsFiles

    files = (args.ca_cert, args.client_cert, args.client_key)
    return TlsFiles(*files) if any(files) else None


def _client_flags(parser, timeout: float) -> None:
    parser.add_argument(
        "--server", default="127.0.0.1:8500", help="HOST:PORT for gRPC (default), or http://HOST:PORT for REST"
    )
    parser.add_argument("--model-name", default="pets")
    parser.add_argument("--timeout", type=float, default=timeout, help=f"deadline in seconds (default {timeout:g})")
    parser.add_argument("--ca-cert", help="gRPC over TLS: PEM of the CA that signed the server's certificate")
    parser.add_argument("--client-cert", help="mutual TLS: this client's certificate (PEM)")
    parser.add_argument("--client-key", help="mutual TLS: this client's private key (PEM)")


def _status(args) -> int:
    from serving.client import model_status

    for entry in model_status(args.server, args.model_name, args.timeout, tls=_tls(args)):
        error = f"  {entry['error']}" if entry["error"] else ""
        print(f"{args.model_name} version {entry['version']}: {entry['state']}{error}")
    return 0


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
    _add_serve(commands)
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
    run.add_argument("--config", help="TOML config file (sections data, preprocess, train, export)")
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


def _add_serve(commands) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve models over TF Serving's gRPC and REST APIs",
        description="A stand-in for tensorflow_model_server on the same directories, config files and APIs. "
        "TF Serving's own flag spellings (--model_base_path, --rest_api_port, ...) are accepted too.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _serve_flag(serve, "--model-base-path", help="directory holding <version>/ SavedModels (one model)")
    _serve_flag(serve, "--model-name", default="pets", help="name of that model in requests (default pets)")
    _serve_flag(serve, "--model-config-file", help="TF Serving ModelServerConfig text proto: several models, "
                "version policies, labels (instead of --model-base-path)")  # fmt: skip
    _serve_flag(serve, "--model-config-file-poll-wait-seconds", type=float, default=0.0,
                help="re-read the config file this often and apply changes (default 0: read once)")  # fmt: skip
    _serve_flag(serve, "--file-system-poll-wait-seconds", "--poll-seconds", type=float, default=1.0,
                help="how often to look for new versions (default 1)")  # fmt: skip
    _serve_flag(serve, "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, local only)")
    _serve_flag(serve, "--port", type=int, default=8500, help="gRPC port (default 8500, as TF Serving; 0 = any)")
    _serve_flag(serve, "--rest-api-port", type=int, default=0, help="REST port (TF Serving uses 8501); 0 = no REST")
    _serve_flag(serve, "--enable-batching", nargs="?", const=True, default=False, type=_true_or_false,
                metavar="true|false", help="server-side dynamic batching (default off)")  # fmt: skip
    _serve_flag(serve, "--batching-parameters-file", help="TF Serving BatchingParameters text proto")
    _serve_flag(serve, "--ssl-config-file", help="TF Serving SSLConfig text proto: TLS, mutual TLS with "
                "client_verify")  # fmt: skip
    _serve_flag(serve, "--max-message-bytes", type=int, default=64 << 20, help="largest gRPC message / REST body "
                "(default 64 MiB)")  # fmt: skip
    _serve_flag(serve, "--max-request-batch", type=int, default=1024, help="most rows per request (default 1024)")
    _serve_flag(serve, "--max-string-bytes", type=int, default=16 << 20, help="largest string element, e.g. one "
                "image (default 16 MiB)")  # fmt: skip
    _serve_flag(serve, "--allowed-base-path-roots", nargs="+", metavar="DIR", help="directories a config reload "
                "may point models into (default: the parents of the starting base paths)")  # fmt: skip
    _serve_flag(serve, "--max-num-load-retries", type=int, default=5, help="retries of a version that failed to "
                "load, e.g. half-written (default 5)")  # fmt: skip
    _serve_flag(serve, "--load-retry-interval-micros", type=int, default=60_000_000, help="between those retries "
                "(default one minute)")  # fmt: skip
    _serve_flag(serve, "--grpc-max-threads", type=int, default=16, help="gRPC worker threads (default 16)")
    _serve_flag(serve, "--drain-seconds", type=float, default=30.0, help="on SIGTERM, how long in-flight requests "
                "may take to finish (default 30)")  # fmt: skip
    _serve_flag(serve, "--enable-signature-method-name-check", nargs="?", const=True, default=False,
                type=_true_or_false, metavar="true|false", help="refuse Classify/Regress on signatures whose "
                "method_name is not theirs, as TF Serving's flag of that name (default off)")  # fmt: skip
    _serve_flag(serve, "--monitoring-config-file", help="TF Serving MonitoringConfig text proto: with "
                "prometheus_config { enable: true }, the Prometheus page on the REST port (default path "
                "/monitoring/prometheus/metrics)")  # fmt: skip

    predict = commands.add_parser("predict", help="ask a TF Serving (or petpipe serve) server about images")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files, directories or globs")
    predict.add_argument("--json", action="store_true", help="one JSON object per image instead of text")
    predict.add_argument("--batch-size", type=int, default=32, help="images per Predict request (default 32)")
    predict.add_argument("--signature", default="serving_default")
    _client_flags(predict, timeout=30.0)

    status = commands.add_parser("status", help="versions and states of a model on a running server")
    _client_flags(status, timeout=10.0)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command not in ("run", "schedule"):
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
            return _serve(args)
        if args.command == "status":
            return _status(args)
        return _predict(args)
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
