"""The server's measurement hooks (used by benchmarks/serving.py): the Session::Run observer and the metrics
recording switch."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.batching import BatchingOptions
from serving.core import ModelServer
from serving.metrics import ServingMetrics
from serving.server import ServeOptions, start_server
from serving.status import ServingError
from tests.serving.tf_serving_models import half_plus_three_tf1, model_base

MODEL = "half_plus_three"  # y = 0.5·x + 3; its warmup file holds three Regress requests of one example each


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return model_base(str(tmp_path_factory.mktemp("hook-models")), MODEL, half_plus_three_tf1)


def _predict_request(xs: list[float], dtype=tf.float32) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(model_spec={"name": MODEL})
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[x] for x in xs], dtype=dtype))
    return request


def _observed_server(base: str, **options) -> tuple[ModelServer, list[tuple[int, float]]]:
    calls: list[tuple[int, float]] = []
    server = ModelServer.single(MODEL, base, run_observer=lambda *call: calls.append(call), **options)
    server.poll()
    return server, calls


def test_the_run_observer_hears_every_session_run_with_its_batch_size_and_time(base):
    server, calls = _observed_server(base)
    try:
        assert [size for size, _ in calls] == [1, 1, 1]  # the warmup replay, before the version serves
        calls.clear()
        started = time.perf_counter()
        response = server.predict(_predict_request([1.0, 2.0, 5.0]))
        elapsed = time.perf_counter() - started
        assert tf.make_ndarray(response.outputs["y"]).ravel().tolist() == [3.5, 4.0, 5.5]
        (size, seconds), *others = calls
        assert (size, others) == (3, [])
        assert 0 < seconds <= elapsed
    finally:
        server.unload_all()


def test_the_run_observer_hears_failed_runs_too(base):
    server, calls = _observed_server(base)
    try:
        calls.clear()
        with pytest.raises(ServingError, match="Expects arg\\[0\\] to be float but int32 is provided"):
            server.predict(_predict_request([1, 2], dtype=tf.int32))
        assert [size for size, _ in calls] == [2]
    finally:
        server.unload_all()


def test_with_batching_the_run_observer_hears_the_merged_padded_batch(base):
    batching = BatchingOptions(max_batch_size=4, allowed_batch_sizes=(4,), num_batch_threads=1)
    server, calls = _observed_server(base, batching=batching)
    try:
        assert [size for size, _ in calls] == [4, 4, 4]  # each one-example warmup request, padded to 4
        calls.clear()
        response = server.predict(_predict_request([1.0, 2.0, 5.0]))
        assert tf.make_ndarray(response.outputs["y"]).ravel().tolist() == [3.5, 4.0, 5.5]  # the padding is cut
        assert [size for size, _ in calls] == [4]
    finally:
        server.unload_all()


def test_metrics_with_recording_off_record_nothing_until_switched_on():
    metrics = ServingMetrics(recording=False)
    fresh = ServingMetrics().render()
    metrics.record_request(MODEL, "Predict", "GRPC", "OK", 1500)
    metrics.record_runtime(MODEL, "Predict", "TF1", 1200)
    metrics.record_load("/models/x/1", True, 10)
    metrics.record_wrapped_run()
    assert metrics.render() == fresh
    metrics.recording = True
    metrics.record_request(MODEL, "Predict", "GRPC", "OK", 1500)
    page = metrics.render()
    assert f':tensorflow:serving:request_count{{model_name="{MODEL}",status="OK"}} 1' in page.splitlines()
    assert 'API="Predict",runtime="TF1"' not in page  # the runtime recorded while off: dropped


def test_a_server_built_with_metrics_recording_off_records_nothing(base):
    quiet, counted = ServingMetrics(recording=False), ServingMetrics()
    for metrics in (quiet, counted):
        server = ModelServer.single(MODEL, base, metrics=metrics)
        server.poll()
        server.predict(_predict_request([1.0]))
        server.unload_all()
    assert quiet.render() == ServingMetrics().render()
    page = counted.render()
    labels = f'model_name="{MODEL}",API="Predict",runtime="TF1"'
    assert f":tensorflow:serving:runtime_latency_count{{{labels}}} 1" in page.splitlines()
    assert counted.render() != quiet.render()


def test_start_server_takes_the_hooks(base):
    metrics, calls = ServingMetrics(recording=False), []
    options = ServeOptions(model_name=MODEL, model_base_path=base, port=0)
    running = start_server(options=options, metrics=metrics, run_observer=lambda size, seconds: calls.append(size))
    try:
        assert running.model_server.metrics is metrics
        calls.clear()
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                _predict_request([1.0, 2.0]), timeout=30
            )
        assert np.allclose(tf.make_ndarray(response.outputs["y"]).ravel(), [3.5, 4.0])
        assert calls == [2]
        assert metrics.render() == ServingMetrics().render()
    finally:
        running.stop(grace=0)
