"""TF Serving's own test expectations, ported: tensorflow_model_server_test.py, the REST tutorial and
file_system_storage_path_source's version rules, run against models equivalent to TF Serving's fixtures
(tests/serving/tf_serving_models.py; the server of them: conftest.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request

import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from schemas.serving_layout import parse_version, version_dirs
from serving.core import ModelServer
from serving.server import ServeOptions, start_server
from tests.serving.conftest import TWO_VERSIONS, _example
from tests.serving.tf_serving_models import CLASSIFY, REGRESS


# --- version discovery (FileSystemStoragePathSource) -------------------------------------------------------
@pytest.mark.parametrize(
    "name, version",
    [
        ("00000123", 123),
        ("123", 123),
        ("0", 0),
        (" 7\t", 7),  # absl::SimpleAtoi skips ASCII whitespace
        ("+5", 5),
        ("-3", -3),  # a sign parses too
        ("9223372036854775807", 2**63 - 1),
        ("9223372036854775808", None),  # past int64
        ("1.5", None),
        ("v2", None),
        ("12abc", None),
        ("0x10", None),
        ("", None),
        ("_staging-1f2e", None),
    ],
)
def test_version_directory_names_parse_as_absl_simple_atoi(name, version):
    assert parse_version(name) == version


def test_two_names_for_one_version_resolve_to_the_later_name_in_sorted_order(caplog):
    assert version_dirs(["0123", "123", "abc", "00000124/", "_staging-x"]) == {123: "123", 124: "00000124"}
    assert "Duplicate version directories detected. Version 123 will be loaded from 123, 0123" in caplog.text


def test_zero_padded_versions_load_from_the_directory_as_named(tf_serving_models):
    server = ModelServer.single(TWO_VERSIONS, tf_serving_models["two_versions"])
    server.poll()
    status = server.get_model_status(get_model_status_pb2.GetModelStatusRequest(model_spec={"name": TWO_VERSIONS}))
    assert [(s.version, s.state, s.status.error_code) for s in status.model_version_status] == [(124, 30, 0)]
    assert server.servable_for(TWO_VERSIONS).path.endswith("/00000124")
    server.unload_all()


# --- the REST tutorial, verbatim ----------------------------------------------------------------------------
def test_tf_serving_rest_tutorial_answers_as_tf_serving(tf_serving_models):
    """TF Serving's REST tutorial: `curl -d '{"instances": [1.0, 2.0, 5.0]}' -X POST
    localhost:8501/v1/models/half_plus_two:predict` answers {"predictions": [2.5, 3.0, 4.5]}."""
    running = start_server(
        options=ServeOptions(
            model_name="half_plus_two", model_base_path=tf_serving_models["half_plus_two"], port=0, rest_api_port=0
        )
    )
    try:
        url = f"http://localhost:{running.rest_port}/v1/models/half_plus_two:predict"
        body = b'{"instances": [1.0, 2.0, 5.0]}'
        if shutil.which("curl"):
            answer = subprocess.run(
                ["curl", "-s", "-d", body.decode(), "-X", "POST", url], capture_output=True, check=True
            )
            text = answer.stdout.decode()
        else:  # the same request curl sends
            request = urllib.request.Request(url, data=body, method="POST")
            text = urllib.request.urlopen(request, timeout=30).read().decode()
        assert json.loads(text) == {"predictions": [2.5, 3.0, 4.5]}
    finally:
        running.stop(grace=1)


# --- tensorflow_model_server_test.py ------------------------------------------------------------------------
def test_get_model_status(tf_serving_server):
    _, channel = tf_serving_server
    request = get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "default"})
    result = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=5)
    assert len(result.model_version_status) == 1
    assert result.model_version_status[0].version == 123
    assert result.model_version_status[0].status.error_code == 0


def test_get_model_metadata(tf_serving_server):
    _, channel = tf_serving_server
    request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec={"name": "default"})
    request.metadata_field.append("signature_def")
    result = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=5)
    assert result.model_spec.name == "default" and result.model_spec.version.value == 123
    assert list(result.metadata) == ["signature_def"]


@pytest.mark.parametrize("model", ["default", "tf2"])
def test_classify_regress_and_multi_inference_tf1_and_tf2(tf_serving_server, model):
    _, channel = tf_serving_server
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    classify = classification_pb2.ClassificationRequest(model_spec={"name": model, "signature_name": "classify_x_to_y"})
    classify.input.example_list.examples.append(_example(2.0))
    result = stub.Classify(classify, timeout=5)
    assert len(result.result.classifications) == 1 and len(result.result.classifications[0].classes) == 1
    assert result.result.classifications[0].classes[0].score == 3.0
    assert (result.model_spec.name, result.model_spec.signature_name, result.model_spec.version.value) == (
        model,
        "classify_x_to_y",
        123,
    )

    regress = regression_pb2.RegressionRequest(model_spec={"name": model, "signature_name": "regress_x_to_y"})
    regress.input.example_list.examples.append(_example(2.0))
    result = stub.Regress(regress, timeout=5)
    assert [r.value for r in result.result.regressions] == [3.0]
    assert result.model_spec.signature_name == "regress_x_to_y" and result.model_spec.version.value == 123

    multi = inference_pb2.MultiInferenceRequest()
    multi.tasks.add(model_spec={"name": model, "signature_name": "regress_x_to_y"}, method_name=REGRESS)
    multi.tasks.add(model_spec={"name": model, "signature_name": "classify_x_to_y"}, method_name=CLASSIFY)
    multi.input.example_list.examples.append(_example(2.0))
    result = stub.MultiInference(multi, timeout=5)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for task, answer in zip(multi.tasks, result.results, strict=True):
        assert answer.model_spec.signature_name == task.model_spec.signature_name
        assert answer.model_spec.version.value == 123


@pytest.mark.parametrize("model", ["default", "tf2"])
def test_predict_answers_in_typed_fields(tf_serving_server, model):
    """TF Serving answers with Tensor::AsProtoField: values in float_val, never tensor_content."""
    _, channel = tf_serving_server
    request = predict_pb2.PredictRequest(model_spec={"name": model})
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 2.0, 5.0]))  # shape [3], not the signature's [-1,1]
    result = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=5)
    y = result.outputs["y"]
    assert list(y.float_val) == [2.5, 3.0, 4.5] and y.tensor_content == b""
    assert [d.size for d in y.tensor_shape.dim] == [3] and y.dtype == tf.float32.as_datatype_enum
    assert (result.model_spec.name, result.model_spec.signature_name, result.model_spec.version.value) == (
        model,
        "serving_default",
        123,
    )


def test_rest_classify_regress_predict_and_status_as_tf_serving(tf_serving_server):
    running, _ = tf_serving_server
    base = f"http://127.0.0.1:{running.rest_port}/v1/models/default"

    def call(url, body=None):
        data = json.dumps(body).encode() if body is not None else None
        return json.loads(urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10).read())

    assert call(f"{base}:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}) == {
        "results": [[["", 3.0]]]
    }
    assert call(f"{base}:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}) == {"results": [3.0]}
    assert call(f"{base}:predict", {"instances": [2.0, 3.0, 4.0]}) == {"predictions": [3.0, 3.5, 4.0]}
    assert call(f"{base}:predict", {"inputs": [2.0, 3.0, 4.0]}) == {"outputs": [3.0, 3.5, 4.0]}
    assert call(base) == {
        "model_version_status": [
            {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
