"""What `petpipe serve` costs over calling the SavedModel directly, and what server-side batching buys under load.

One run, one untrained multi-head model of the default architecture and image size (the compute per image is what
production serves), exported once with warmup requests to a temp dir, real JPEG bytes (PIL-made, noisy):

1. latency p50/p99 at batch 1 and 8 of
     in-process  tf.saved_model.load(...).signatures["serving_default"] on the same bytes (tf.constant in,
                 every output .numpy() out — what the server does around the call, minus the server)
     gRPC        the official PredictionServiceStub over one persistent channel
     REST        http.client on one keep-alive connection, row format {"instances": [{"b64": ...}]}
   and gRPC − in-process at p50 (target: ≤ 1 ms at batch 1);
2. throughput (batch-1 requests/s) at 1, 4 and 16 concurrent clients (each its own channel), with server-side
   batching off and on (TF Serving BatchingParameters written as a text-format file), and the on/off ratio
   (target: ≥ 3× at 16 clients).

The server runs in this process (start_server, ports picked by the OS); each repetition starts a fresh server with
batching off and one with it on (alternating which goes first) and measures everything once, so slow phases of a
shared machine hit every configuration. Clients run in a separate spawned process by default (--clients process),
so client-side Python does not hold the server's GIL; on a 2-core machine they still share the CPUs, which the CPU
columns show. Latency figures are medians over --reps repetitions of --requests sequential requests (after
warm-up); throughput figures medians over --reps windows of --duration seconds (after a warm-up window). The CPU
other processes use is read (psutil) during every repetition; one during which they used more than
--max-others cores is measured again while the --retry-seconds budget lasts, and what stays disturbed is flagged.
Progress goes to stderr; the table to stdout and, as markdown with machine info and notes, to --out.

    python -m benchmarks.serving [--quick] [--out benchmarks/results/serving.md] [--clients process|thread]

Modules: benchmarks/serving_load.py (the load generator), benchmarks/serving_measure.py (how each figure is
measured, through the server's measurement hooks), benchmarks/serving_report.py (rows, verdicts, markdown).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time

from benchmarks.common import CpuMeter, log, machine_info, result_row, text_table
from benchmarks.serving_load import Clients
from benchmarks.serving_measure import (
    LATENCY_BATCHES,
    MODEL_NAME,
    SIGNATURE,
    Measurements,
    SessionRuns,
    batching_text,
    measure_in_process,
    measure_metrics_cost,
    measure_server,
    metrics_cost_per_request,
    running_server,
)
from benchmarks.serving_report import ROW_HEADER, build_rows, disturbance_text, load_details, write_markdown

CONCURRENCY = (1, 4, 16)
# (requests per latency rep, latency warm-up requests, seconds per throughput window, warm-up seconds, reps)
PROFILES = {"default": (200, 30, 4.0, 1.0, 3), "quick": (40, 10, 1.0, 0.5, 3)}


def noisy_jpegs(count: int, size: int, quality: int, seed: int = 0) -> list[bytes]:
    """Distinct JPEGs: a random colour gradient with pixel noise (so they decode to different images)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, size)
    images = []
    for _ in range(count):
        low, high = rng.uniform(0, 255, (2, 3))
        gradient = low + (high - low) * ramp[None, :, None] * ramp[:, None, None]
        pixels = np.clip(gradient + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
        images.append(buffer.getvalue())
    return images


def export_default_model(base_path: str, warmup: list[bytes]) -> tuple[str, dict]:
    """An untrained multi-head model with TrainConfig's default backbone and PreprocessConfig's image size,
    exported like the pipeline does (ExportConfig's top_k, threshold, warmup requests)."""
    import keras

    from components.export import export_model
    from components.model import build_multihead_model
    from pipeline.config import ExportConfig, PreprocessConfig, TrainConfig
    from schemas import load_hierarchy

    train, export, size = TrainConfig(), ExportConfig(model_name=MODEL_NAME), PreprocessConfig().image_size
    keras.utils.set_random_seed(0)
    hierarchy = load_hierarchy()
    model = build_multihead_model(hierarchy, size, train)
    _, path = export_model(model, hierarchy, base_path, size, export, warmup_images=warmup[: export.warmup_requests])
    about = {
        "architecture": f"{train.architecture}, backbone {train.backbone} {list(train.filters)}",
        "parameters": model.count_params(),
        "image_size": size,
    }
    return path, about


def grpc_payload(images: list[bytes]) -> bytes:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    request.model_spec.signature_name = SIGNATURE
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string, shape=[len(images)]))
    return request.SerializeToString()


def rest_payload(images: list[bytes]) -> bytes:
    import base64

    instances = [{"b64": base64.b64encode(image).decode("ascii")} for image in images]
    return json.dumps({"signature_name": SIGNATURE, "instances": instances}).encode()


def measure(args, clients: Clients, runs: SessionRuns, tmp: str) -> dict:
    """Every measurement, interleaved: each repetition runs the in-process calls, then a fresh server with
    batching off and one with batching on (in alternating order), so machine noise hits all of them alike."""
    import tensorflow as tf

    from pipeline.config import PreprocessConfig

    preprocess = PreprocessConfig()
    jpeg_size = args.jpeg_size or preprocess.image_size
    images = noisy_jpegs(max(max(LATENCY_BATCHES), args.max_batch_size), jpeg_size, preprocess.jpeg_quality)
    log("serving", "building and exporting the untrained default model")
    base_path = os.path.join(tmp, MODEL_NAME)
    path, about = export_default_model(base_path, images)
    about["jpeg"] = f"{jpeg_size}×{jpeg_size}, {statistics.mean(map(len, images)):.0f} bytes on average"
    batching_file = os.path.join(tmp, "batching_parameters.txt")
    with open(batching_file, "w") as f:
        f.write(batching_text(args))
    serve = tf.saved_model.load(path).signatures[SIGNATURE]
    monitoring_file = os.path.join(tmp, "monitoring_config.txt")
    with open(monitoring_file, "w") as f:
        f.write('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n')
    payloads = {b: (grpc_payload(images[:b]), rest_payload(images[:b])) for b in LATENCY_BATCHES}
    measurements, metrics_ratios = Measurements(args), []
    for rep in range(args.reps):
        log("serving", f"repetition {rep + 1}/{args.reps}: in-process calls")
        measure_in_process(serve, images, args, measurements)
        for on in (False, True) if rep % 2 == 0 else (True, False):
            started = time.perf_counter()
            with running_server(base_path, batching_file if on else None, runs) as server:
                loaded = time.perf_counter() - started
                log(
                    "serving",
                    f"repetition {rep + 1}/{args.reps}: batching {'on' if on else 'off'} (loaded in {loaded:.1f} s)",
                )
                measure_server(server, on, payloads, args, clients, runs, measurements)
        log("serving", f"repetition {rep + 1}/{args.reps}: metrics recorded and scraped / not recorded, paired windows")
        with running_server(base_path, None, runs, monitoring_file) as server:
            metrics_ratios += measure_metrics_cost(server, payloads[1][0], args, clients, runs)
    metrics = {"ratios": metrics_ratios, **metrics_cost_per_request()}
    return {"about": about, **measurements.results(), "metrics": metrics}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter windows, fewer requests (≤ 90 s)")
    parser.add_argument("--out", default="benchmarks/results/serving.md", help="markdown output file")
    parser.add_argument("--reps", type=int, help="repetitions of every measurement; medians are reported (3)")
    default, quick = PROFILES["default"], PROFILES["quick"]
    parser.add_argument(
        "--requests", type=int, help=f"timed requests per latency repetition ({default[0]}, quick {quick[0]})"
    )
    parser.add_argument(
        "--duration", type=float, help=f"seconds per throughput window ({default[2]:g}, quick {quick[2]:g})"
    )
    parser.add_argument("--warmup-seconds", type=float, help="warm-up window before each throughput window")
    parser.add_argument("--concurrency", type=_int_list, default=CONCURRENCY, help="client counts, e.g. 1,4,16")
    parser.add_argument(
        "--clients",
        choices=("process", "thread"),
        default="process",
        help="load generator in a spawned process (default) or in threads of the server's process",
    )
    parser.add_argument("--jpeg-size", type=int, help="side of the request JPEGs (default: the model's image size)")
    parser.add_argument(
        "--max-others",
        type=float,
        default=0.5,
        help="cores other processes may use during a repetition before it is measured again (default 0.5)",
    )
    parser.add_argument("--retry-seconds", type=float, help="time budget for measuring again (default 45, quick 12)")
    batching = parser.add_argument_group("batching parameters (TF Serving's BatchingParameters)")
    batching.add_argument("--max-batch-size", type=int, default=16)
    batching.add_argument("--batch-timeout-micros", type=int, default=0)
    batching.add_argument("--num-batch-threads", type=int, default=1)
    batching.add_argument("--max-enqueued-batches", type=int, default=64)
    args = parser.parse_args(argv)
    requests, warmup, duration, warmup_seconds, reps = PROFILES["quick" if args.quick else "default"]
    args.requests = args.requests or requests
    args.latency_warmup = warmup
    args.duration = args.duration or duration
    args.warmup_seconds = args.warmup_seconds if args.warmup_seconds is not None else warmup_seconds
    args.reps = args.reps or reps
    if args.retry_seconds is None:
        args.retry_seconds = 12.0 if args.quick else 45.0
    return args


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def main(argv=None) -> int:
    measure_and_report(parse_args(argv))
    return 0


def run(quick: bool) -> list[dict]:
    """For `python -m benchmarks`: the same run (quick or default profile), rows in the common form. The verdict of
    a target lives in the ratio column (e.g. "target ≤ 1 ms: holds")."""
    args = parse_args(["--quick"] if quick else [])
    rows = []
    for measurement, value, ratio in measure_and_report(args):
        holds = True if ratio.endswith(": holds") else False if "MISSED" in ratio else None
        target = ratio[ratio.index("target") :].split(":")[0] if "target" in ratio else ""
        rows.append(result_row(measurement, value, "", ratio, target, holds))
    return rows


def measure_and_report(args) -> list[tuple[str, str, str]]:
    meter = CpuMeter().start()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    log("serving", f"starting the load generator ({args.clients})")
    clients = Clients(args.clients)  # spawned first: its TF import overlaps ours
    info = machine_info("grpcio", "protobuf")
    with tempfile.TemporaryDirectory(prefix="petpipe-serving-bench-") as tmp:
        results = measure(args, clients, SessionRuns(), tmp)
    meter.stop()  # while the load generator is alive, so its CPU counts as ours
    clients.close()
    wall = meter.seconds
    info["CPU used by other processes during the run"] = f"{meter.other_cores:.2f} cores"
    rows, verdicts = build_rows(results["latency"], results["loads"], results["ceiling"], args, results["metrics"])
    print(text_table(ROW_HEADER, rows, "lrl"))
    print()
    print(load_details(results["loads"], args))
    disturbance = disturbance_text(results, args)
    print(
        f"\nwall time {wall:.0f} s; other processes used {info.get('CPU used by other processes during the run', '?')}"
    )
    print(disturbance)
    write_markdown(args, info, results, rows, verdicts, wall, disturbance)
    log("serving", f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    sys.exit(main())
