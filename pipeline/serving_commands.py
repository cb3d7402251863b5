"""`petpipe serve`, `petpipe predict` and `petpipe status`: the serving side of the command line. Only the
server's and the client's modules are imported, and only when their command runs (the client needs no Keras or
Beam)."""

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

SERVE_EPILOG = """\
Examples:
  petpipe serve --model-base-path petpipe-work/serving/pets --rest-api-port 8501
  petpipe serve --model_config_file=petpipe-work/serving/models.config --enable_batching \\
      --batching_parameters_file=deploy/serving/batching_parameters.txt
  petpipe serve --model_name=half_plus_two --model_base_path=saved_model_half_plus_two_cpu --rest_api_port=8501 \\
      --monitoring_config_file=deploy/prometheus/monitoring_config.txt   # TF Serving's own examples work as is
SIGTERM (or Ctrl-C) refuses new requests, lets in-flight ones finish, then exits 0.
"""


def serve_flag(parser, *names, **kwargs) -> None:
    """A flag under its dashed name and TF Serving's underscored one (--model-base-path, --model_base_path)."""
    spellings = [*names, *("--" + n[2:].replace("-", "_") for n in names if "-" in n[2:])]
    parser.add_argument(*dict.fromkeys(spellings), **kwargs)


def true_or_false(text: str) -> bool:
    """TF Serving's boolean flags are written --flag=true / --flag=false."""
    if text.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1")


def serve(args) -> int:
    from serving.protos import ConfigFileError
    from serving.server import ServeOptions, start_server
    from serving.status import ServingError

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


def skip_tensorflows_eager_keras_import() -> None:
    """For the client commands only, before anything imports TensorFlow: TF's __init__ imports all of Keras
    (keras.src.optimizers, and with it matplotlib) eagerly, to register optimizers for SavedModel loading — 0.8 s
    of `petpipe predict`'s 4.4 s, for a process that loads no model. With TF_USE_LEGACY_KERAS it imports the
    tf_keras package instead, and skips the import when that package is absent; so the variable is set only then.
    Never set for a process that may use tf.keras (the server, the pipeline, a library user's)."""
    import importlib.util

    if "tensorflow" not in sys.modules and importlib.util.find_spec("tf_keras") is None:
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def predict(args) -> int:
    import json

    skip_tensorflows_eager_keras_import()
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
        answers += predict_images(
            args.server, batch, args.model_name, args.signature, args.timeout, tls=tls_files(args)
        )
    for path, answer in zip(paths, answers, strict=True):
        print(json.dumps(answer_dict(path, answer)) if args.json else format_answer(path, answer))
    return 0


def tls_files(args):
    from serving.client import TlsFiles

    files = (args.ca_cert, args.client_cert, args.client_key)
    return TlsFiles(*files) if any(files) else None


def client_flags(parser, timeout: float) -> None:
    parser.add_argument(
        "--server", default="127.0.0.1:8500", help="HOST:PORT for gRPC (default), or http://HOST:PORT for REST"
    )
    parser.add_argument("--model-name", default="pets")
    parser.add_argument("--timeout", type=float, default=timeout, help=f"deadline in seconds (default {timeout:g})")
    parser.add_argument("--ca-cert", help="gRPC over TLS: PEM of the CA that signed the server's certificate")
    parser.add_argument("--client-cert", help="mutual TLS: this client's certificate (PEM)")
    parser.add_argument("--client-key", help="mutual TLS: this client's private key (PEM)")


def status(args) -> int:
    skip_tensorflows_eager_keras_import()
    from serving.client import model_status

    for entry in model_status(args.server, args.model_name, args.timeout, tls=tls_files(args)):
        error = f"  {entry['error']}" if entry["error"] else ""
        print(f"{args.model_name} version {entry['version']}: {entry['state']}{error}")
    return 0


def add_serving_commands(commands) -> None:
    """The serve, predict and status subcommands."""
    serve = commands.add_parser(
        "serve",
        help="serve models over TF Serving's gRPC and REST APIs",
        description="A stand-in for tensorflow_model_server on the same directories, config files and APIs. "
        "TF Serving's own flag spellings (--model_base_path, --rest_api_port, ...) are accepted too.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve_flag(serve, "--model-base-path", help="directory holding <version>/ SavedModels (one model)")
    serve_flag(serve, "--model-name", default="pets", help="name of that model in requests (default pets)")
    serve_flag(serve, "--model-config-file", help="TF Serving ModelServerConfig text proto: several models, "
                "version policies, labels (instead of --model-base-path)")  # fmt: skip
    serve_flag(serve, "--model-config-file-poll-wait-seconds", type=float, default=0.0,
                help="re-read the config file this often and apply changes (default 0: read once)")  # fmt: skip
    serve_flag(serve, "--file-system-poll-wait-seconds", "--poll-seconds", type=float, default=1.0,
                help="how often to look for new versions (default 1)")  # fmt: skip
    serve_flag(serve, "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, local only)")
    serve_flag(serve, "--port", type=int, default=8500, help="gRPC port (default 8500, as TF Serving; 0 = any)")
    serve_flag(serve, "--rest-api-port", type=int, default=0, help="REST port (TF Serving uses 8501); 0 = no REST")
    serve_flag(serve, "--enable-batching", nargs="?", const=True, default=False, type=true_or_false,
                metavar="true|false", help="server-side dynamic batching (default off)")  # fmt: skip
    serve_flag(serve, "--batching-parameters-file", help="TF Serving BatchingParameters text proto")
    serve_flag(serve, "--ssl-config-file", help="TF Serving SSLConfig text proto: TLS, mutual TLS with "
                "client_verify")  # fmt: skip
    serve_flag(serve, "--max-message-bytes", type=int, default=64 << 20, help="largest gRPC message / REST body "
                "(default 64 MiB)")  # fmt: skip
    serve_flag(serve, "--max-request-batch", type=int, default=1024, help="most rows per request (default 1024)")
    serve_flag(serve, "--max-string-bytes", type=int, default=16 << 20, help="largest string element, e.g. one "
                "image (default 16 MiB)")  # fmt: skip
    serve_flag(serve, "--allowed-base-path-roots", nargs="+", metavar="DIR", help="directories a config reload "
                "may point models into (default: the parents of the starting base paths)")  # fmt: skip
    serve_flag(serve, "--max-num-load-retries", type=int, default=5, help="retries of a version that failed to "
                "load, e.g. half-written (default 5)")  # fmt: skip
    serve_flag(serve, "--load-retry-interval-micros", type=int, default=60_000_000, help="between those retries "
                "(default one minute)")  # fmt: skip
    serve_flag(serve, "--grpc-max-threads", type=int, default=16, help="gRPC worker threads (default 16)")
    serve_flag(serve, "--drain-seconds", type=float, default=30.0, help="on SIGTERM, how long in-flight requests "
                "may take to finish (default 30)")  # fmt: skip
    serve_flag(serve, "--enable-signature-method-name-check", nargs="?", const=True, default=False,
                type=true_or_false, metavar="true|false", help="refuse Classify/Regress on signatures whose "
                "method_name is not theirs, as TF Serving's flag of that name (default off)")  # fmt: skip
    serve_flag(serve, "--monitoring-config-file", help="TF Serving MonitoringConfig text proto: with "
                "prometheus_config { enable: true }, the Prometheus page on the REST port (default path "
                "/monitoring/prometheus/metrics)")  # fmt: skip

    predict = commands.add_parser("predict", help="ask a TF Serving (or petpipe serve) server about images")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files, directories or globs")
    predict.add_argument("--json", action="store_true", help="one JSON object per image instead of text")
    predict.add_argument("--batch-size", type=int, default=32, help="images per Predict request (default 32)")
    predict.add_argument("--signature", default="serving_default")
    client_flags(predict, timeout=30.0)

    status = commands.add_parser("status", help="versions and states of a model on a running server")
    client_flags(status, timeout=10.0)
