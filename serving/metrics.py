"""TF Serving's Prometheus metrics: its names, labels and buckets, and the page its PrometheusExporter writes.

The metrics are declared as in TF Serving's servables/tensorflow/util.cc, saved_model_warmup_util.cc,
batching/batching_session.cc and batching_util.h, and TensorFlow's cc/saved_model/loader.cc. render() follows
tensorflow_serving/util/prometheus_exporter.cc byte for byte, with one difference: a newline in a label value is
written as \\n (TF Serving writes it raw, which breaks the page).
"""

from __future__ import annotations

import bisect
import re
import sys
import threading
from dataclasses import dataclass

from tensorflow.core.protobuf import error_codes_pb2

from serving.protos import MonitoringConfig, read_text_proto

PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath
CONTENT_TYPE = "text/plain"  # the only header http_server.cc's ProcessPrometheusRequest sets

# error::Code_Name gives these; gRPC's StatusCode names are the same words.
STATUS_CODE_NAMES = frozenset(error_codes_pb2.Code.keys())


def exponential_buckets(scale: float, growth_factor: float, bucket_count: int) -> tuple[float, ...]:
    """Buckets::Exponential: scale·growth_factor^i for i < bucket_count, then DBL_MAX (written as "+Inf")."""
    limits, bound = [], scale
    for _ in range(bucket_count):
        limits.append(bound)
        bound *= growth_factor  # a running product, as TF computes it, so every limit matches to the last bit
    return (*limits, sys.float_info.max)


@dataclass(frozen=True)
class MetricDef:
    """One metric as TF declares it. buckets is None for a counter (int64), else the sampler's bucket limits."""

    name: str
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] | None = None
    # TF Serving registers a function-local static metric on first use, so it is missing from the page until then.
    registered_at_start: bool = True


_LATENCY_BUCKETS = exponential_buckets(10, 1.8, 33)  # ~20 minutes
_BATCH_SIZE_BUCKETS = exponential_buckets(1, 2, 14)

LOAD_ATTEMPT_COUNT = MetricDef(
    "/tensorflow/cc/saved_model/load_attempt_count",
    "The number of times a SavedModel was successfully loaded.",
    ("model_path", "status"),
)
LOAD_LATENCY = MetricDef(
    "/tensorflow/cc/saved_model/load_latency",
    "Latency in microseconds for SavedModels that were successfully loaded.",
    ("model_path",),
)
INPUT_BATCH_SIZE = MetricDef(
    "/tensorflow/serving/batching_session/input_batch_size",
    "Tracks the batch size distribution on the inputs.",
    (),
    _BATCH_SIZE_BUCKETS,
    registered_at_start=False,
)
PADDING_SIZE = MetricDef(
    "/tensorflow/serving/batching_session/padding_size",
    "Tracks the padding size distribution on batches.",
    ("execution_batch_size",),
    _BATCH_SIZE_BUCKETS,
    registered_at_start=False,
)
PROCESSED_BATCH_SIZE = MetricDef(
    "/tensorflow/serving/batching_session/processed_batch_size",
    "Tracks the batch size distribution on processing.",
    (),
    _BATCH_SIZE_BUCKETS,
    registered_at_start=False,
)
QUEUING_LATENCY = MetricDef(
    "/tensorflow/serving/batching_session/queuing_latency",
    "Distribution of wall time spent (in microseconds) in queuing",
    ("thread_pool_name",),
    exponential_buckets(100, 1.2, 52),  # ~1 second
)
WRAPPED_RUN_COUNT = MetricDef(
    "/tensorflow/serving/batching_session/wrapped_run_count",
    "Total count of run calls on the wrapped session",
    (),
)
MODEL_WARMUP_LATENCY = MetricDef(
    "/tensorflow/serving/model_warmup_latency",
    "Distribution of wall time (in microseconds) for warming up the model.",
    ("model_path", "status"),
    _LATENCY_BUCKETS,
)
MODEL_WARMUP_RECORDS_READ = MetricDef(
    "/tensorflow/serving/model_warmup_records_read",
    "Total number of warmup records read during model warmup.",
    ("model_path", "status"),
)
REQUEST_COUNT = MetricDef(
    "/tensorflow/serving/request_count",
    "The total number of requests.",
    ("model_name", "status"),
)
REQUEST_EXAMPLE_COUNT_TOTAL = MetricDef(
    "/tensorflow/serving/request_example_count_total",
    "The total number of tensorflow.Examples.",
    ("model",),
)
REQUEST_EXAMPLE_COUNTS = MetricDef(
    "/tensorflow/serving/request_example_counts",
    "The number of tensorflow.Examples per request.",
    ("model",),
    exponential_buckets(1, 2, 15),
)
REQUEST_LATENCY = MetricDef(
    "/tensorflow/serving/request_latency",
    "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
    ("model_name", "API", "entrypoint"),
    _LATENCY_BUCKETS,
)
RUNTIME_LATENCY = MetricDef(
    "/tensorflow/serving/runtime_latency",
    "Distribution of wall time (in microseconds) for Tensorflow runtime.",
    ("model_name", "API", "runtime"),
    _LATENCY_BUCKETS,
)

# The exporter walks a std::map keyed by metric name: the page is in name order.
METRICS = tuple(
    sorted(
        (LOAD_ATTEMPT_COUNT, LOAD_LATENCY, INPUT_BATCH_SIZE, PADDING_SIZE, PROCESSED_BATCH_SIZE, QUEUING_LATENCY,
         WRAPPED_RUN_COUNT, MODEL_WARMUP_LATENCY, MODEL_WARMUP_RECORDS_READ, REQUEST_COUNT, REQUEST_EXAMPLE_COUNT_TOTAL,
         REQUEST_EXAMPLE_COUNTS, REQUEST_LATENCY, RUNTIME_LATENCY),
        key=lambda metric: metric.name,
    )
)  # fmt: skip


def status_string(code_name: str, message: str = "") -> str:
    """absl::Status::ToString, the warmup metrics' status label: "OK", or e.g. "DATA_LOSS: corrupted record at 12"."""
    _check_code(code_name)
    return "OK" if code_name == "OK" else f"{code_name}: {message}"


def _check_code(code_name: str) -> None:
    if code_name not in STATUS_CODE_NAMES:
        raise ValueError(f"{code_name!r} is not a status code name (e.g. 'OK', 'INVALID_ARGUMENT')")


class _Histogram:
    """A sampler cell: the count per bucket and the sum, as TF's histogram::Histogram keeps them."""

    __slots__ = ("counts", "sum")

    def __init__(self, size: int):
        self.counts = [0] * size
        self.sum = 0.0

    def add(self, limits: tuple[float, ...], value: float) -> None:
        # std::upper_bound: a value equal to a limit falls in the next bucket, unlike Prometheus's `le`.
        index = min(bisect.bisect_right(limits, value), len(limits) - 1)
        self.counts[index] += 1
        self.sum += value


class ServingMetrics:
    """One server's metrics. Every record_* call and render() hold one lock, so totals are exact under threads.

    The record_* methods say where TF Serving records each metric and with what; increment() and observe() update
    any metric of the registry (by default METRICS, the ones TF Serving declares).

    `recording` switches the record_* methods off (False: they return at once, recording nothing) and on again, at
    any time — TF Serving has no such switch; it is for measuring what recording costs (benchmarks/). The page
    keeps what was recorded before.
    """

    def __init__(self, metrics: tuple[MetricDef, ...] = METRICS, recording: bool = True) -> None:
        self.recording = recording
        self._lock = threading.Lock()
        self._metrics = tuple(sorted(metrics, key=lambda metric: metric.name))
        self._cells: dict[str, dict[tuple[str, ...], int | _Histogram]] = {m.name: {} for m in self._metrics}
        self._registered = {m.name for m in self._metrics if m.registered_at_start}

    def increment(self, metric: MetricDef, labels: tuple[str, ...], step: int = 1) -> None:
        """Counter::GetCell(labels)->IncrementBy(step)."""
        with self._lock:
            self._increment(metric, labels, step)

    def observe(self, metric: MetricDef, labels: tuple[str, ...], value: float) -> None:
        """Sampler::GetCell(labels)->Add(value)."""
        with self._lock:
            self._observe(metric, labels, value)

    def _cell_map(self, metric: MetricDef, labels: tuple[str, ...], counter: bool) -> dict:
        if (metric.buckets is None) != counter:
            raise ValueError(f"{metric.name} is a {'counter' if metric.buckets is None else 'sampler'}")
        if len(labels) != len(metric.labels):
            raise ValueError(f"{metric.name} takes labels {metric.labels}, got {labels}")
        cells = self._cells[metric.name]
        self._registered.add(metric.name)
        return cells

    def _increment(self, metric: MetricDef, labels: tuple[str, ...], step: int = 1) -> None:
        if step < 0:
            raise ValueError(f"{metric.name}: a counter cannot decrease (step {step})")
        cells = self._cell_map(metric, labels, counter=True)
        cells[labels] = cells.get(labels, 0) + int(step)

    def _observe(self, metric: MetricDef, labels: tuple[str, ...], value: float) -> None:
        cells = self._cell_map(metric, labels, counter=False)
        if labels not in cells:
            cells[labels] = _Histogram(len(metric.buckets))
        cells[labels].add(metric.buckets, value)

    def record_request(self, model_name: str, api: str, entrypoint: str, status: str, latency_us: float) -> None:
        """A finished Predict/Classify/Regress call: request_count always, request_latency only when status is "OK"
        (prediction_service_impl.cc, entrypoint "GRPC"; http_server.cc, entrypoint "REST")."""
        if not self.recording:
            return
        _check_code(status)
        with self._lock:
            self._increment(REQUEST_COUNT, (model_name, status))
            if status == "OK":
                self._observe(REQUEST_LATENCY, (model_name, api, entrypoint), latency_us)

    def record_runtime(self, model_name: str, api: str, runtime: str, latency_us: float) -> None:
        """The wall time of one successful Session::Run (api "Predict"/"Classify"/"Regress", runtime "TF1")."""
        if not self.recording:
            return
        with self._lock:
            self._observe(RUNTIME_LATENCY, (model_name, api, runtime), latency_us)

    def record_examples(self, model_name: str, count: int) -> None:
        """The tensorflow.Examples of one request: one request_example_counts sample, and added to the total."""
        if not self.recording:
            return
        with self._lock:
            self._increment(REQUEST_EXAMPLE_COUNT_TOTAL, (model_name,), count)
            self._observe(REQUEST_EXAMPLE_COUNTS, (model_name,), count)

    def record_warmup(self, model_path: str, status: str, latency_us: float, records_read: int) -> None:
        """One version's warmup; status as status_string() gives it (an end-of-file read counts as "OK")."""
        if not self.recording:
            return
        _check_code(status.partition(":")[0])
        with self._lock:
            self._observe(MODEL_WARMUP_LATENCY, (model_path, status), latency_us)
            self._increment(MODEL_WARMUP_RECORDS_READ, (model_path, status), records_read)

    def record_load(self, model_path: str, succeeded: bool, latency_us: int) -> None:
        """One LoadSavedModel call: status "success" or "fail"; load_latency adds the time of either."""
        if not self.recording:
            return
        with self._lock:
            self._increment(LOAD_ATTEMPT_COUNT, (model_path, "success" if succeeded else "fail"))
            self._increment(LOAD_LATENCY, (model_path,), latency_us)

    def record_queuing(self, thread_pool_name: str, latency_us: float) -> None:
        """One task's wait in a batching queue, from enqueue to the batch being taken off it."""
        if not self.recording:
            return
        with self._lock:
            self._observe(QUEUING_LATENCY, (thread_pool_name,), latency_us)

    def record_input_batch_size(self, size: int) -> None:
        """The first dimension of one input tensor of one task entering a batching queue."""
        if not self.recording:
            return
        with self._lock:
            self._observe(INPUT_BATCH_SIZE, (), size)

    def record_processed_batch(self, size: int, padded_size: int) -> None:
        """A batch being merged: padded_size is the allowed batch size it is padded up to."""
        if not self.recording:
            return
        with self._lock:
            self._observe(PADDING_SIZE, (str(padded_size),), padded_size - size)
            self._observe(PROCESSED_BATCH_SIZE, (), padded_size)

    def record_wrapped_run(self) -> None:
        """One Session::Run of a merged batch, whatever its outcome."""
        if not self.recording:
            return
        with self._lock:
            self._increment(WRAPPED_RUN_COUNT, ())

    def render(self) -> str:
        """The page PrometheusExporter::GeneratePage writes."""
        lines: list[str] = []
        with self._lock:
            for metric in self._metrics:
                if metric.name in self._registered:
                    _write_metric(metric, self._cells[metric.name], lines)
        return "\n".join(lines) + "\n"


def _write_metric(metric: MetricDef, cells: dict, lines: list[str]) -> None:
    name = prometheus_name(metric.name)
    lines.append(f"# TYPE {name} {'counter' if metric.buckets is None else 'histogram'}")
    label_names = [_label_name(label) for label in metric.labels]
    for values, cell in sorted(cells.items()):  # cells live in a std::map keyed by the label values
        labels = ",".join(f'{label}="{_label_value(value)}"' for label, value in zip(label_names, values, strict=True))
        if metric.buckets is None:
            lines.append(f"{name}{{{labels}}} {cell}")
            continue
        bucket_prefix = f"{name}_bucket{{{labels}{',' if labels else ''}"
        cumulative = 0
        for index, count in enumerate(cell.counts):
            cumulative += count
            limit = "+Inf" if index == len(cell.counts) - 1 else _number(metric.buckets[index])
            lines.append(f'{bucket_prefix}le="{limit}"}} {cumulative}')
        lines.append(f"{name}_sum{{{labels}}} {_number(cell.sum)}")
        lines.append(f"{name}_count{{{labels}}} {cumulative}")


def prometheus_name(name: str) -> str:
    """GetPrometheusMetricName: '/tensorflow/serving/request_count' → ':tensorflow:serving:request_count'."""
    name = re.sub(r"[^a-zA-Z0-9_]", ":", name)
    return f"_{name}" if name[:1].isdigit() else name


def _label_name(name: str) -> str:
    name = re.sub(r"[^a-zA-Z0-9]", "_", name)
    return f"_{name}" if name[:1].isdigit() else name


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    # absl::StrCat(double) writes six significant digits, as %.6g: 188.9568 → "188.957", 1234567 → "1.23457e+06".
    return f"{value:.6g}"


def read_monitoring_config(path: str) -> tuple[bool, str]:
    """(enabled, metrics path) from a MonitoringConfig text proto; an empty path is PROMETHEUS_PATH, as in
    http_server.cc. A file that cannot be read or parsed raises ConfigFileError naming it (and the line)."""
    prometheus = read_text_proto(path, MonitoringConfig).prometheus_config
    return prometheus.enable, prometheus.path or PROMETHEUS_PATH
