"""Loading a version as TF Serving does: its SavedModel bundle, then the warmup replay of
`assets.extra/tf_serving_warmup_requests` through the request path before the version serves
(saved_model_warmup.cc); a failing record fails the load."""

from __future__ import annotations

import logging
import os
import time

import grpc
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from schemas.serving_layout import WARMUP_FILE
from serving.batching import BatchingOptions
from serving.bundle import load_bundle
from serving.classify_regress import run_classify, run_multi_inference, run_regress
from serving.inference import LoadedVersion, RequestPolicy, micros_since
from serving.metrics import status_string
from serving.predict import run_predict
from serving.status import ServingError, invalid

log = logging.getLogger("petpipe.serve")
MAX_WARMUP_RECORDS = 1000  # WarmupConsts::kMaxNumRecords


def load_version(
    path: str, version: int, batching: BatchingOptions | None = None, policy: RequestPolicy | None = None
) -> LoadedVersion:
    """The version's SavedModel bundle, warmed up; a failing warmup unloads it again and raises."""
    policy = policy or RequestPolicy()
    bundle = load_bundle(path, policy.run_observer)
    loaded = LoadedVersion(version, bundle, batching, policy.metrics)
    try:
        replayed = warm_up(loaded, policy)
    except BaseException:
        loaded.unload()
        raise
    if replayed:
        log.info("version %d: replayed %d warmup requests", version, replayed)
    return loaded


def warm_up(loaded: LoadedVersion, policy: RequestPolicy | None = None) -> int:
    """Replay the version's warmup file (PredictionLog records) through the request path, as TF Serving does before
    a version takes traffic; a failing record fails the load. Returns how many records were replayed."""
    policy = policy or RequestPolicy()
    path = os.path.join(loaded.path, WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return 0
    started, count = time.perf_counter(), 0
    try:
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            try:
                entry = prediction_log_pb2.PredictionLog.FromString(record)
            except Exception:  # noqa: BLE001 — protobuf's DecodeError and friends
                raise invalid(f"Failed to parse warmup record: {record!r} from {path}") from None
            _replay(loaded, entry, policy)
            count += 1
            if count > MAX_WARMUP_RECORDS:
                raise invalid(f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
    except tf.errors.DataLossError as exc:  # a damaged file is recorded; a failing request returns before that
        policy.metrics.record_warmup(loaded.path, status_string("DATA_LOSS", exc.message), micros_since(started), count)
        raise ServingError(
            grpc.StatusCode.DATA_LOSS, f"{exc.message}. Please verify your warmup data is in TFRecord format."
        ) from None
    policy.metrics.record_warmup(loaded.path, "OK", micros_since(started), count)
    return count


def _replay(loaded: LoadedVersion, entry, policy: RequestPolicy) -> None:
    kind = entry.WhichOneof("log_type")
    if kind == "predict_log":
        run_predict(loaded, entry.predict_log.request, policy)
    elif kind == "classify_log":
        run_classify(loaded, entry.classify_log.request, policy)
    elif kind == "regress_log":
        run_regress(loaded, entry.regress_log.request, policy)
    elif kind == "multi_inference_log":
        run_multi_inference(loaded, entry.multi_inference_log.request, policy)
    else:
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"Unsupported log_type for warmup: {kind}")
