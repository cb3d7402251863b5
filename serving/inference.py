"""One loaded version and what every inference method on it shares.

TF Serving runs Predict (serving/predict.py), Classify / Regress / MultiInference (serving/classify_regress.py)
and the warmup replay that precedes serving (serving/warmup.py) on a loaded version; each request is one
Session::Run of the version's SessionBundle (serving/bundle.py), through the batch scheduler when batching is on.
Here: the version, the request policy (our per-request limits, TF Serving's method name check, the metrics and
the Session::Run observer), the limit checks and util.cc's MakeModelSpec.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
from tensorflow_serving.apis import model_pb2

from serving.batching import BatchingOptions, BatchScheduler
from serving.bundle import RunObserver, SessionBundle
from serving.metrics import ServingMetrics
from serving.status import invalid

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


@dataclass(frozen=True)
class ServingLimits:
    """Per-request limits, checked before anything runs (INVALID_ARGUMENT otherwise)."""

    max_request_batch: int = 1024  # rows (dimension 0) of any input
    max_string_bytes: int = 16 * 1024 * 1024  # one tf.string element, e.g. one encoded image
    max_elements: int = 16 * 1024 * 1024  # all elements of one input tensor


@dataclass(frozen=True)
class RequestPolicy:
    """How requests are checked and measured: our limits, TF Serving's --enable_signature_method_name_check, the
    metrics, and an optional observer of every Session::Run (serving/bundle.py's RunObserver)."""

    limits: ServingLimits = ServingLimits()
    method_name_check: bool = False
    metrics: ServingMetrics = field(default_factory=ServingMetrics)  # one per server, as TF's are per process
    run_observer: RunObserver | None = None


# --- a loaded version ---------------------------------------------------------------------------------------
@dataclass
class LoadedVersion:
    version: int
    bundle: SessionBundle = field(repr=False)
    batching: BatchingOptions | None = None
    metrics: ServingMetrics = field(default_factory=ServingMetrics, repr=False)
    _batchers: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def path(self) -> str:
        return self.bundle.path

    @property
    def signature_defs(self) -> dict:
        return self.bundle.signature_defs

    def run(self, feeds: dict[str, np.ndarray], fetches: list[str]) -> list[np.ndarray]:
        """One Session::Run, through the batch scheduler when batching is on (requests with the same feed and
        fetch tensors are merged, as TF Serving's BatchingSession does per signature)."""
        if self.batching is None:
            return self.bundle.run(feeds, fetches)
        key = (tuple(sorted(feeds)), tuple(fetches))
        with self._lock:
            batcher = self._batchers.get(key)
            if batcher is None:
                batcher = BatchScheduler(
                    lambda merged: dict(zip(fetches, self.bundle.run(merged, fetches), strict=True)),
                    self.batching,
                    f"v{self.version}-batch{len(self._batchers)}",
                    metrics=self.metrics,
                )
                self._batchers[key] = batcher
        outputs = batcher.submit(feeds)
        return [outputs[name] for name in fetches]

    def unload(self) -> None:
        """Stop the batch threads; the session closes once the last request on it has finished."""
        with self._lock:
            batchers, self._batchers = list(self._batchers.values()), {}
        for batcher in batchers:
            batcher.stop()
        self.bundle.close()


# --- what every method shares --------------------------------------------------------------------------------
def check_rows(name: str, array: np.ndarray, limits: ServingLimits) -> None:
    if array.ndim and array.shape[0] > limits.max_request_batch:
        raise invalid(
            f"input '{name}': batch of {array.shape[0]} exceeds this server's limit of {limits.max_request_batch} "
            "(--max_request_batch)"
        )
    if array.dtype == object:
        for index, value in enumerate(array.flat):
            if len(value) > limits.max_string_bytes:
                raise invalid(
                    f"input '{name}': element {index} is {len(value)} bytes, over this server's limit of "
                    f"{limits.max_string_bytes} (--max_string_bytes)"
                )


def make_model_spec(spec: model_pb2.ModelSpec, name: str, signature_name: str | None, version: int | None) -> None:
    """util.cc MakeModelSpec: an empty signature name is answered as serving_default."""
    spec.Clear()
    spec.name = name
    if signature_name is not None:
        spec.signature_name = signature_name or DEFAULT_SIGNATURE
    if version is not None:
        spec.version.value = version


def join_names(names) -> str:
    return ",".join(sorted(names))


def micros_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1e6)
