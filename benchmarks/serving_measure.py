"""How the serving benchmark measures (benchmarks/serving.py drives it): latency of the SavedModel in process and
of the server over gRPC and REST, throughput windows under concurrent clients, and the cost of the metrics.

What the server does is heard through its measurement hooks, not by patching it: every Session::Run through
`run_observer` (SessionRuns), and metrics recording switched off and on through its ServingMetrics' `recording`.
CPU is accounted with benchmarks.common.CpuMeter: this process (the server, and the clients in thread mode), its
child processes (the load generator) and everything else on the machine; a repetition during which other
processes used more than --max-others cores is measured again while the --retry-seconds budget lasts.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time

from benchmarks.common import CpuMeter, log, median_run
from benchmarks.serving_load import Clients

LATENCY_BATCHES = (1, 8)
MODEL_NAME = "pets"
SIGNATURE = "serving_default"
REST_PATH = f"/v1/models/{MODEL_NAME}:predict"
SCRAPE_SECONDS = 1.0  # far more often than Prometheus' default 15 s, so the cost shows
METRICS_PAIRS = 4  # paired windows per repetition for the metrics cost
IDLE_SECONDS = 0.001  # between in-process calls for the "after idle" row: about a gRPC round trip's overhead
IDLE_ROW = "in-process, 1 ms idle between calls"


def in_process_latency(
    serve, images: list[bytes], warmup: int, requests: int, pause: float = 0.0
) -> tuple[list[float], float]:
    """Seconds per call of the signature after `warmup` calls, and the CPU seconds of the timed calls; with `pause`,
    the calls are that many seconds apart (untimed sleep), as requests arriving one by one are."""
    import tensorflow as tf

    def call():
        outputs = serve(image_bytes=tf.constant(images))
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    for _ in range(warmup):
        call()
    samples = []
    cpu = time.process_time()
    for _ in range(requests):
        if pause:
            time.sleep(pause)
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples, time.process_time() - cpu


def percentile(samples: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(reps: list[list[float]]) -> dict[str, float]:
    """Median over repetitions of each repetition's p50 and p99, in ms."""
    return {
        "p50": statistics.median(percentile(r, 50) for r in reps) * 1000,
        "p99": statistics.median(percentile(r, 99) for r in reps) * 1000,
    }


class SessionRuns:
    """The server's Session::Runs (one per formed batch when batching is on): (batch size, seconds) each, as the
    server's run_observer hook reports them (serving/bundle.py's RunObserver)."""

    def __init__(self):
        self.calls: list[tuple[int, float]] = []

    def observe(self, size: int, seconds: float) -> None:
        self.calls.append((size, seconds))  # on the server's threads: list.append is atomic under the GIL

    def reset(self) -> None:
        self.calls = []


def batching_text(args) -> str:
    """TF Serving's --batching_parameters_file, text format."""
    return (
        f"max_batch_size {{ value: {args.max_batch_size} }}\n"
        f"batch_timeout_micros {{ value: {args.batch_timeout_micros} }}\n"
        f"max_enqueued_batches {{ value: {args.max_enqueued_batches} }}\n"
        f"num_batch_threads {{ value: {args.num_batch_threads} }}\n"
    )


@contextlib.contextmanager
def running_server(base_path: str, batching_file: str | None, runs: SessionRuns, monitoring_file: str | None = None):
    """A server on free ports (gRPC and REST) whose Session::Runs `runs` hears."""
    from serving.server import ServeOptions, start_server

    options = ServeOptions(
        model_name=MODEL_NAME,
        model_base_path=base_path,
        port=0,
        rest_api_port=0,
        enable_batching=batching_file is not None,
        batching_parameters_file=batching_file,
        monitoring_config_file=monitoring_file,
    )
    server = start_server(options=options, run_observer=runs.observe)
    try:
        yield server
    finally:
        server.stop(grace=5)


@contextlib.contextmanager
def metrics_recording(server, enabled: bool):
    """The baseline of the metrics cost: with enabled=False the server's metrics record nothing for the block
    (ServingMetrics.recording; TF Serving has no such switch, `petpipe serve` has it for measuring only)."""
    metrics = server.model_server.metrics
    metrics.recording = enabled
    try:
        yield
    finally:
        metrics.recording = True


@contextlib.contextmanager
def scraping(url: str | None, every: float):
    """A Prometheus stand-in: GET the metrics page every `every` seconds (nothing when url is None)."""
    import urllib.request

    stop, pages = threading.Event(), []

    def loop():
        while not stop.wait(every):
            with urllib.request.urlopen(url, timeout=10) as answer:
                pages.append(len(answer.read()))

    thread = threading.Thread(target=loop, daemon=True) if url else None
    if thread:
        thread.start()
    try:
        yield pages
    finally:
        stop.set()
        if thread:
            thread.join()


def metrics_cost_per_request(requests: int = 20000) -> dict[str, float]:
    """What one Predict adds to the server's work for the metrics (µs): the three records TF Serving makes (request
    count + latency, runtime latency), timed directly; and one page render with those cells (ms)."""
    from serving.metrics import ServingMetrics

    metrics = ServingMetrics()
    started = time.perf_counter()
    for i in range(requests):
        metrics.record_request(MODEL_NAME, "Predict", "GRPC", "OK", 1000 + i % 3000)
        metrics.record_runtime(MODEL_NAME, "Predict", "TF1", 800 + i % 3000)
    record_us = (time.perf_counter() - started) / requests * 1e6
    started = time.perf_counter()
    for _ in range(50):
        metrics.render()
    return {"record_us": record_us, "render_ms": (time.perf_counter() - started) / 50 * 1000}


def load_window(clients: Clients, runs: SessionRuns, target: str, payload: bytes, threads: int, seconds: float):
    """One throughput window: QPS, latencies under load, server/client/other CPU, the batches the server formed."""
    marks = {}

    def opened():
        runs.reset()
        marks["meter"] = CpuMeter().start()

    result = clients.load(opened, target=target, payload=payload, threads=threads, duration=seconds)
    # This process: the server (and the clients in thread mode); its children: the load generator process.
    meter = marks["meter"].stop()
    calls = list(runs.calls)
    if result["errors"]:
        raise SystemExit(f"{threads} clients: {result['errors']} failed requests, e.g. {result['first_error']}")
    requests = result["requests"]
    return {
        "qps": requests / result["seconds"],
        "p50": percentile(result["latencies"], 50) * 1000,
        "p99": percentile(result["latencies"], 99) * 1000,
        "mean_batch": sum(size for size, _ in calls) / len(calls) if calls else float("nan"),
        "tf_ms": 1000 * statistics.median(s for _, s in calls) if calls else float("nan"),
        "server_cpu_ms": 1000 * meter.own_cpu / requests,
        "client_cpu_ms": 1000 * result["client_cpu"] / requests if clients.mode == "process" else float("nan"),
        "our_cores": meter.our_cores,
        "other_cores": meter.other_cores,
    }


class Measurements:
    """Raw repetitions as they come: latency samples per (where, batch), throughput windows per (batching, clients),
    the signature's own wall and CPU cost per image at batch 1 and N — each with the CPU other processes used
    meanwhile. A repetition during which others used more than --max-others cores is run again (the least
    disturbed attempt is kept) while the --retry-seconds budget lasts."""

    def __init__(self, args):
        self.args = args
        self.retry_left = args.retry_seconds
        self.retried = 0
        self.samples: dict[tuple, list[list[float]]] = {}
        self.windows: dict[tuple, list[dict]] = {}
        self.others: dict[tuple, list[float]] = {}
        self.ceiling: dict[str, list[float]] = {}

    def least_disturbed(self, key: tuple, run):
        """run() → (value, cores other processes used meanwhile); returns the value."""
        attempts = []
        while True:
            started = time.perf_counter()
            attempts.append(run())
            others = attempts[-1][1]
            if not others > self.args.max_others or self.retry_left <= 0:  # nan (unknown) counts as quiet
                break
            self.retry_left -= time.perf_counter() - started
            self.retried += 1
            log("serving", f"  {key}: other processes used {others:.2f} cores; measuring again")
        value, others = min(attempts, key=lambda a: a[1] if a[1] == a[1] else 0.0)
        self.others.setdefault(key, []).append(others)
        return value

    def latency(self, key: tuple, run) -> None:
        """run() → (samples, other cores)."""
        self.samples.setdefault(key, []).append(self.least_disturbed(key, run))

    def window(self, key: tuple, run) -> None:
        """run() → a load_window dict."""
        window = self.least_disturbed(key, lambda: (w := run(), w["other_cores"]))
        self.windows.setdefault(key, []).append(window)

    def results(self) -> dict:
        return {
            "latency": {key: summarize(reps) for key, reps in self.samples.items()},
            "loads": {key: median_run(windows, "qps") for key, windows in self.windows.items()},
            "ceiling": {key: statistics.median(values) for key, values in self.ceiling.items()},
            "others": self.others,
            "retried": self.retried,
        }


def measure_in_process(serve, images: list[bytes], args, into: Measurements) -> None:
    """The signature in this process at batch 1 and 8 (latency), and its cost per image at batch 1 and N."""

    def run(batch_images: list[bytes], warmup: int, requests: int, pause: float = 0.0):
        meter = CpuMeter().start()
        samples, cpu = in_process_latency(serve, batch_images, warmup, requests, pause)
        return (samples, cpu), meter.stop().other_cores

    costs = {}  # batch → (wall seconds per image, CPU seconds per image)
    for batch in LATENCY_BATCHES:
        key = ("in-process", batch)
        samples, cpu = into.least_disturbed(key, lambda b=batch: run(images[:b], args.latency_warmup, args.requests))
        into.samples.setdefault(key, []).append(samples)
        costs[batch] = (statistics.median(samples) / batch, cpu / (batch * len(samples)))
    key = (IDLE_ROW, 1)
    samples, _ = into.least_disturbed(key, lambda: run(images[:1], args.latency_warmup, args.requests, IDLE_SECONDS))
    into.samples.setdefault(key, []).append(samples)
    many = images[: args.max_batch_size]
    samples, cpu = into.least_disturbed(("in-process", len(many)), lambda: run(many, 3, args.requests // 8 + 5))
    costs["N"] = (statistics.median(samples) / len(many), cpu / (len(many) * len(samples)))
    for name, batch in (("batch1", 1), ("batchN", "N")):
        into.ceiling.setdefault(f"{name}_ips", []).append(1 / costs[batch][0])
        into.ceiling.setdefault(f"{name}_cpu_ms", []).append(1000 * costs[batch][1])


def measure_server(server, on: bool, payloads: dict, args, clients: Clients, runs: SessionRuns, into: Measurements):
    """On a started server: sequential latency (gRPC and REST with batching off, gRPC batch 1 with it on), then a
    throughput window per client count."""
    target = f"127.0.0.1:{server.port}"
    common = dict(warmup=args.latency_warmup, requests=args.requests)

    def latency_run(batch: int, **command):
        meter = CpuMeter().start()
        result = clients.latency(batch=batch, **common, **command)
        return result["samples"], meter.stop().other_cores

    for batch in (1,) if on else LATENCY_BATCHES:
        grpc_bytes, rest_bytes = payloads[batch]
        into.latency(
            ("gRPC, batching on" if on else "gRPC", batch),
            lambda batch=batch, payload=grpc_bytes: latency_run(batch, protocol="grpc", target=target, payload=payload),
        )
        if not on:
            into.latency(
                ("REST", batch),
                lambda batch=batch, payload=rest_bytes: latency_run(
                    batch, protocol="rest", port=server.rest_port, path=REST_PATH, payload=payload
                ),
            )
    one = payloads[1][0]
    for threads in args.concurrency:
        log("serving", f"  {threads} clients, batching {'on' if on else 'off'}")

        def window(threads=threads):
            if args.warmup_seconds > 0:
                clients.load(lambda: None, target=target, payload=one, threads=threads, duration=args.warmup_seconds)
            return load_window(clients, runs, target, one, threads, args.duration)

        into.window((on, threads), window)


def measure_metrics_cost(server, payload: bytes, args, clients: Clients, runs: SessionRuns) -> list[float]:
    """QPS with the metrics recorded and the page scraped every SCRAPE_SECONDS over QPS with nothing recorded, at
    the top client count: METRICS_PAIRS pairs of adjacent windows on one server (alternating which goes first), so
    the slow drift of a shared machine cancels within a pair. Returns the pairs' ratios."""
    target, threads = f"127.0.0.1:{server.port}", max(args.concurrency)
    url = f"http://127.0.0.1:{server.rest_port}/monitoring/prometheus/metrics"
    if args.warmup_seconds > 0:
        clients.load(lambda: None, target=target, payload=payload, threads=threads, duration=args.warmup_seconds)
    ratios = []
    for pair in range(METRICS_PAIRS):
        qps = {}
        for on in (True, False) if pair % 2 == 0 else (False, True):
            with metrics_recording(server, on), scraping(url if on else None, SCRAPE_SECONDS):
                qps[on] = load_window(clients, runs, target, payload, threads, args.duration)["qps"]
        ratios.append(qps[True] / qps[False])
    return ratios
