"""The Prometheus page of `petpipe serve` (--monitoring_config_file), scraped after a known mix of requests from
concurrent gRPC and REST clients: counts and histogram totals exact, the page parsed by prometheus_client."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import grpc
import pytest
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.server import ServeOptions, start_server
from tests.serving.server_process import free_port
from tests.serving.tf_serving_models import half_plus_two_tf1, model_base

CLIENTS = 6
GRPC_GOOD, GRPC_BAD, REST_GOOD, REST_BAD = 7, 3, 5, 2
METRICS_PATH = "/monitoring/prometheus/metrics"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return model_base(str(tmp_path_factory.mktemp("metrics-models")), "half_plus_two", half_plus_two_tf1)


def _monitoring_config(tmp_path, text: str) -> str:
    path = tmp_path / "monitoring_config.txt"
    path.write_text(text)
    return str(path)


def _serve(base: str, monitoring_config_file: str | None):
    options = ServeOptions(
        model_name="default",
        model_base_path=base,
        port=0,
        rest_api_port=0,
        monitoring_config_file=monitoring_config_file,
    )
    return start_server(options=options)


def _get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def _samples(page: str) -> dict:
    """(sample name, frozenset of labels) → value, from prometheus_client's parser."""
    samples = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def _client(server, barrier: threading.Barrier, errors: list) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    good = predict_pb2.PredictRequest(model_spec={"name": "default"})
    good.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0], [2.0]]))
    bad = predict_pb2.PredictRequest(model_spec={"name": "default", "signature_name": "nope"})
    bad.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0]]))
    rest = f"http://127.0.0.1:{server.rest_port}/v1/models/default"
    body = json.dumps({"instances": [[1.0], [2.0]]}).encode()
    barrier.wait()
    try:
        for _ in range(GRPC_GOOD):
            assert list(stub.Predict(good, timeout=30).outputs["y"].float_val) == [2.5, 3.0]
        for _ in range(GRPC_BAD):
            with pytest.raises(grpc.RpcError) as failed:
                stub.Predict(bad, timeout=30)
            assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        for _ in range(REST_GOOD):
            with urllib.request.urlopen(urllib.request.Request(f"{rest}:predict", data=body), timeout=30) as answer:
                assert json.loads(answer.read()) == {"predictions": [[2.5], [3.0]]}
        for _ in range(REST_BAD):
            with pytest.raises(urllib.error.HTTPError) as failed:
                urllib.request.urlopen(urllib.request.Request(f"{rest}/versions/99:predict", data=body), timeout=30)
            assert failed.value.code == 404
    except BaseException as exc:  # noqa: BLE001 — reported by the test thread
        errors.append(exc)
    finally:
        channel.close()


def test_metrics_count_concurrent_requests_exactly(base, tmp_path):
    config = _monitoring_config(tmp_path, f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}\n')
    server = _serve(base, config)
    try:
        barrier, errors = threading.Barrier(CLIENTS), []
        threads = [threading.Thread(target=_client, args=(server, barrier, errors)) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        status, content_type, page = _get(server.rest_port, METRICS_PATH)
    finally:
        server.stop(grace=1)
    assert status == 200 and content_type == "text/plain"
    samples = _samples(page)

    def value(name, **labels):  # prometheus_client names a counter's samples <name>_total
        key = frozenset(labels.items())
        return samples.get((name, key), samples.get((f"{name}_total", key)))

    count = ":tensorflow:serving:request_count"
    assert value(count, model_name="default", status="OK") == CLIENTS * (GRPC_GOOD + REST_GOOD)
    assert value(count, model_name="default", status="FAILED_PRECONDITION") == CLIENTS * GRPC_BAD
    assert value(count, model_name="default", status="NOT_FOUND") == CLIENTS * REST_BAD
    latency = ":tensorflow:serving:request_latency"
    for api, entrypoint, expected in (("Predict", "GRPC", GRPC_GOOD), ("predict", "REST", REST_GOOD)):
        labels = {"model_name": "default", "API": api, "entrypoint": entrypoint}
        assert value(f"{latency}_count", **labels) == CLIENTS * expected  # only OK requests are timed
        assert value(f"{latency}_bucket", **labels, le="+Inf") == CLIENTS * expected
        assert value(f"{latency}_bucket", **labels, le="10") == 0  # nobody answers in under 10 µs
        assert value(f"{latency}_sum", **labels) > 0
    runtime = {"model_name": "default", "API": "Predict", "runtime": "TF1"}
    assert value(":tensorflow:serving:runtime_latency_count", **runtime) == CLIENTS * (GRPC_GOOD + REST_GOOD)
    version_dir = f"{base}/00000123"
    loads = ":tensorflow:cc:saved_model:load_attempt_count"
    assert value(loads, model_path=version_dir, status="success") == 1
    assert value(":tensorflow:cc:saved_model:load_latency", model_path=version_dir) > 0


def test_metrics_page_only_where_the_monitoring_config_says(base, tmp_path):
    custom = _monitoring_config(tmp_path, 'prometheus_config { enable: true path: "/metrics" }\n')
    server = _serve(base, custom)
    try:
        assert _get(server.rest_port, "/metrics")[0] == 200
        assert _get(server.rest_port, METRICS_PATH)[0] == 404  # not under /v1/: the HTTP server's 404 page
    finally:
        server.stop(grace=1)
    disabled = _monitoring_config(tmp_path, "prometheus_config { enable: false }\n")
    for config in (disabled, None):
        server = _serve(base, config)
        try:
            assert _get(server.rest_port, METRICS_PATH)[0] == 404
        finally:
            server.stop(grace=1)


def test_a_malformed_monitoring_config_is_a_one_line_startup_error(base, tmp_path):
    config = _monitoring_config(tmp_path, "prometheus_config {\n  enable: maybe\n}\n")
    command = [sys.executable, "-m", "pipeline.cli", "serve", "--model_base_path", base, "--port", "0",
               "--rest_api_port", str(free_port()), "--monitoring_config_file", config]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if config in line]
    assert len(errors) == 1 and f"{config}:2" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
