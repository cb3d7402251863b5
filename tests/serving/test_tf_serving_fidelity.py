"""TF Serving's own test expectations, ported: tensorflow_model_server_test.py, http_rest_api_handler_test.cc,
predict_util_test.cc, get_model_status_impl_test.cc and file_system_storage_path_source's version rules, run
against models equivalent to TF Serving's fixtures (tests/serving/tf_serving_models.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
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
from serving.core import ModelServer, ServingError
from serving.protos import ModelServerConfig
from serving.rest import RestHandler
from serving.server import ServeOptions, start_server
from tests.serving.tf_serving_models import (
    CLASSIFY,
    REGRESS,
    half_plus_three_tf1,
    half_plus_two_tf1,
    half_plus_two_tf2,
    model_base,
)

TWO_VERSIONS = "saved_model_half_plus_two_2_versions"  # http_rest_api_handler_test.cc's kTestModelName


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Base paths of the fixture models (read-only for every test)."""
    root = str(tmp_path_factory.mktemp("tf-serving-models"))
    return {
        "half_plus_two": model_base(root, "half_plus_two", half_plus_two_tf1),
        "half_plus_three": model_base(root, "half_plus_three", half_plus_three_tf1),
        "two_versions": model_base(root, "two_versions", half_plus_two_tf1, ("00000123", "00000124")),
        "tf2": model_base(root, "tf2", half_plus_two_tf2),
    }


def _config(entries: str) -> ModelServerConfig:
    return text_format.Parse(entries, ModelServerConfig())


@pytest.fixture(scope="module")
def served(models):
    """One server, as tensorflow_model_server_test.py runs them: 'default' is half_plus_two (TF1), 'tf2' the TF2
    model, and the two-version model under http_rest_api_handler_test.cc's name with a label."""
    config = _config(
        f"""model_config_list {{
          config {{ name: "default" base_path: "{models["half_plus_two"]}" model_platform: "tensorflow" }}
          config {{ name: "tf2" base_path: "{models["tf2"]}" model_platform: "tensorflow" }}
          config {{ name: "half_plus_three" base_path: "{models["half_plus_three"]}" model_platform: "tensorflow" }}
          config {{ name: "{TWO_VERSIONS}" base_path: "{models["two_versions"]}" model_platform: "tensorflow"
                    model_version_policy {{ specific {{ versions: 123 }} }}
                    version_labels {{ key: "Version_Label" value: 123 }} }}
        }}"""
    )
    path = models["half_plus_two"] + "/../models.config"
    with open(path, "w") as f:
        f.write(text_format.MessageToString(config))
    running = start_server(options=ServeOptions(model_config_file=path, port=0, rest_api_port=0))
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield running, channel
    channel.close()
    running.stop(grace=1)


def _example(x: float):
    example = tf.train.Example()
    example.features.feature["x"].float_list.value.append(x)
    return example


def _code(call):
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    raise AssertionError("the call succeeded")


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


def test_zero_padded_versions_load_from_the_directory_as_named(models):
    server = ModelServer.single(TWO_VERSIONS, models["two_versions"])
    server.poll()
    status = server.get_model_status(get_model_status_pb2.GetModelStatusRequest(model_spec={"name": TWO_VERSIONS}))
    assert [(s.version, s.state, s.status.error_code) for s in status.model_version_status] == [(124, 30, 0)]
    assert server.servable_for(TWO_VERSIONS).path.endswith("/00000124")
    server.unload_all()


# --- the REST tutorial, verbatim ----------------------------------------------------------------------------
def test_tf_serving_rest_tutorial_answers_as_tf_serving(models):
    """TF Serving's REST tutorial: `curl -d '{"instances": [1.0, 2.0, 5.0]}' -X POST
    localhost:8501/v1/models/half_plus_two:predict` answers {"predictions": [2.5, 3.0, 4.5]}."""
    running = start_server(
        options=ServeOptions(
            model_name="half_plus_two", model_base_path=models["half_plus_two"], port=0, rest_api_port=0
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
def test_get_model_status(served):
    _, channel = served
    request = get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "default"})
    result = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=5)
    assert len(result.model_version_status) == 1
    assert result.model_version_status[0].version == 123
    assert result.model_version_status[0].status.error_code == 0


def test_get_model_metadata(served):
    _, channel = served
    request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec={"name": "default"})
    request.metadata_field.append("signature_def")
    result = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=5)
    assert result.model_spec.name == "default" and result.model_spec.version.value == 123
    assert list(result.metadata) == ["signature_def"]


@pytest.mark.parametrize("model", ["default", "tf2"])
def test_classify_regress_and_multi_inference_tf1_and_tf2(served, model):
    _, channel = served
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
def test_predict_answers_in_typed_fields(served, model):
    """TF Serving answers with Tensor::AsProtoField: values in float_val, never tensor_content."""
    _, channel = served
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


def test_rest_classify_regress_predict_and_status_as_tf_serving(served):
    running, _ = served
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


# --- http_rest_api_handler_test.cc (through the pure REST core) -------------------------------------------
@pytest.fixture(scope="module")
def rest(served):
    return RestHandler(served[0].model_server)


def _process(rest, method, path, body=b""):
    answer = rest.process(method, path, body)
    return answer.status, answer.body


@pytest.mark.parametrize(
    "method, path, says",
    [
        ("GET", "/v1/foo", "Malformed request"),
        ("POST", "/v1/foo", "Malformed request"),
        ("GET", "/v1/models", "Missing model name"),
        ("GET", "/v1/models/debug/model_name", "Malformed request"),
        ("POST", "/v1/models", "Malformed request"),
        ("GET", "/v1/models/foo:predict", "Malformed request"),
        ("GET", "/v1/models/foo/version/50:predict", "Malformed request"),
        ("POST", "/v1/models/foo/version/50:regress", "Malformed request"),
        ("POST", "/v1/models/foo/versions/HELLO:regress", "Malformed request"),
        ("POST", f"/v1/models/foo/versions/{2**64 - 1}:regress", "Failed to convert version"),
        ("POST", "/v1/models/foo/metadata", "Malformed request"),
        ("POST", "/v1/models/foo/label/some_label:regress", "Malformed request"),
        ("POST", "/v1/models/foo/versions/50/labels/some_label:regress", "Malformed request"),
        ("POST", "/v1/models/foo/versions/some_label:regress", "Malformed request"),
        ("PUT", "/v1/models/default:predict", "Malformed request: PUT /v1/models/default:predict"),
    ],
)
def test_unsupported_api_calls(rest, method, path, says):
    status, body = _process(rest, method, path)
    assert status == grpc.StatusCode.INVALID_ARGUMENT
    assert says in json.loads(body)["error"]


@pytest.mark.parametrize(
    "path", ["/v1/models/foo:predict", "/v1/models/foo/versions/50:predict", f"/v1/models/{TWO_VERSIONS}99:predict"]
)
def test_predict_model_name_version_errors(rest, path):
    assert _process(rest, "POST", path, b'{ "instances": [1] }')[0] == grpc.StatusCode.NOT_FOUND


def test_predict_request_errors(rest):
    path = f"/v1/models/{TWO_VERSIONS}:predict"
    cases = [
        (b"", "JSON Parse error: The document is empty"),
        (b"instances = [1, 2]", "JSON Parse error: Invalid value"),
        (b'{ "instances": ["x", "y"] }', "not of expected type: float"),
        (b'{ "signature_name": 100 }', "'signature_name' key must be a string value."),
    ]
    for body, says in cases:
        status, answer = _process(rest, "POST", path, body)
        assert status == grpc.StatusCode.INVALID_ARGUMENT and says in json.loads(answer)["error"], (body, answer)
    label = f"/v1/models/{TWO_VERSIONS}/labels/Version_Nonexistent:predict"
    status, answer = _process(rest, "POST", label, b'{ "instances": ["x", "y"] }')
    assert status == grpc.StatusCode.INVALID_ARGUMENT
    assert "Unrecognized servable version label" in json.loads(answer)["error"]


def test_predict_regress_classify_through_versions_and_labels(rest):
    model = f"/v1/models/{TWO_VERSIONS}"
    cases = [
        (f"{model}:predict", {"instances": [[1.0, 2.0], [3.0, 4.0]]}, {"predictions": [[2.5, 3.0], [3.5, 4.0]]}),
        (f"{model}/versions/123:predict", {"instances": [1.0, 2.0]}, {"predictions": [2.5, 3.0]}),
        (f"{model}/labels/Version_Label:predict", {"instances": [1.0, 2.0]}, {"predictions": [2.5, 3.0]}),
        (
            f"{model}/versions/123:predict",
            {"signature_name": "serving_default", "instances": [3.0, 4.0]},
            {"predictions": [3.5, 4.0]},
        ),
        (
            f"{model}/versions/123:predict",
            {"signature_name": "serving_default", "inputs": [3.0, 4.0]},
            {"outputs": [3.5, 4.0]},
        ),
        (f"{model}:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}, {"results": [42]}),
        (
            f"{model}/labels/Version_Label:regress",
            {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]},
            {"results": [42]},
        ),
        (
            f"{model}:classify",
            {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}]},
            {"results": [[["", 12]]]},
        ),
        (
            f"{model}/labels/Version_Label:classify",
            {"signature_name": "classify_x_to_y", "examples": [{"x": 10.0}]},
            {"results": [[["", 7]]]},
        ),
    ]
    for path, body, expected in cases:
        status, answer = _process(rest, "POST", path, json.dumps(body).encode())
        assert status == grpc.StatusCode.OK and json.loads(answer) == expected, (path, answer)


def test_get_status_and_metadata(rest):
    expected = {
        "model_version_status": [
            {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    for path in (f"/v1/models/{TWO_VERSIONS}", f"/v1/models/{TWO_VERSIONS}/versions/123"):
        status, answer = _process(rest, "GET", path)
        assert status == grpc.StatusCode.OK and json.loads(answer) == expected
    status, answer = _process(rest, "GET", f"/v1/models/{TWO_VERSIONS}/metadata")
    metadata = json.loads(answer)
    assert metadata["model_spec"] == {"name": TWO_VERSIONS, "signature_name": "", "version": "123"}
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    rows = [-1, 1]
    assert {name: s["method_name"] for name, s in signatures.items()} == {
        "serving_default": "tensorflow/serving/predict",
        "classify_x_to_y": CLASSIFY,
        "classify_x2_to_y3": CLASSIFY,
        "regress_x_to_y": REGRESS,
        "regress_x_to_y2": REGRESS,
        "regress_x2_to_y3": REGRESS,
    }
    # Every field is printed, default-valued ones included, as in saved_model_half_plus_two_2_versions_metadata.json.
    assert signatures["serving_default"] == {
        "inputs": {"x": {"dtype": "DT_FLOAT", "tensor_shape": _shape(rows), "name": "x:0"}},
        "outputs": {"y": {"dtype": "DT_FLOAT", "tensor_shape": _shape(rows), "name": "y:0"}},
        "method_name": "tensorflow/serving/predict",
        "defaults": {},
    }
    assert signatures["classify_x_to_y"]["inputs"]["inputs"] == {
        "dtype": "DT_STRING",
        "tensor_shape": _shape([-1]),
        "name": "tf_example:0",
    }


def _shape(dims):
    return {"dim": [{"size": str(d), "name": ""} for d in dims], "unknown_rank": False}


# --- predict_util_test.cc and get_model_status_impl_test.cc (through the core) ------------------------------
def _predict_request(inputs: dict, model="default", output_filter=()):
    request = predict_pb2.PredictRequest(model_spec={"name": model, "version": {"value": 123}})
    for name, proto in inputs.items():
        request.inputs[name].CopyFrom(proto)
    request.output_filter.extend(output_filter)
    return request


def _raises(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(ServingError) as failed:
        call()
    return failed.value.code, failed.value.message


def test_predict_input_and_output_errors_as_predict_util(served):
    core = served[0].model_server
    bool_tensor = tf.make_tensor_proto([True])
    assert _raises(lambda: core.predict(_predict_request({"x": bool_tensor}))) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Expects arg[0] to be float but bool is provided",
    )
    string_tensor = tf.make_tensor_proto([b"any_value"])
    code, message = _raises(lambda: core.predict(_predict_request({"x": string_tensor}, output_filter=["y"])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "to be float but string is provided" in message
    two = tf.make_tensor_proto([2.0])
    code, message = _raises(lambda: core.predict(_predict_request({"x": two}, output_filter=["output_filter"])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message == "output tensor alias not found in signature: output_filter Outputs expected to be in the set {y}."
    assert list(core.predict(_predict_request({"x": two}, output_filter=["y"])).outputs) == ["y"]
    assert _raises(lambda: core.predict(_predict_request({"x": two}, output_filter=["y", "y"]))) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "duplicate output tensor alias: y",
    )
    code, message = _raises(lambda: core.predict(_predict_request({})))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Missing but required: {x}" in message
    code, message = _raises(lambda: core.predict(_predict_request({"x": two, "extra": two})))
    assert "input size does not match signature: 2!=1 len({extra,x}) != len({x}). Sent extra: {extra}." in message
    broken = tensor_with_short_content = tf.make_tensor_proto(np.zeros(4, np.float32))
    tensor_with_short_content.tensor_content = b"\0\0"
    assert _raises(lambda: core.predict(_predict_request({"x": broken}))) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "tensor parsing error: x",
    )
    # A graph that cannot take a tensor answers with TensorFlow's own status: y = a·x + b on a [2,3] x works.
    grid = core.predict(_predict_request({"x": tf.make_tensor_proto(np.ones((2, 3), np.float32))}))
    assert list(grid.outputs["y"].float_val) == [2.5] * 6


def test_get_model_status_as_get_model_status_impl(served):
    core = served[0].model_server
    assert _raises(lambda: core.get_model_status(get_model_status_pb2.GetModelStatusRequest())) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Missing ModelSpec",
    )
    request = get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "abcd"})
    assert _raises(lambda: core.get_model_status(request)) == (
        grpc.StatusCode.NOT_FOUND,
        "Could not find any versions of model abcd",
    )
    request = get_model_status_pb2.GetModelStatusRequest(model_spec={"name": TWO_VERSIONS, "version": {"value": 999}})
    assert _raises(lambda: core.get_model_status(request)) == (
        grpc.StatusCode.NOT_FOUND,
        f"Could not find version 999 of model {TWO_VERSIONS}",
    )


def test_a_request_without_a_model_spec_is_refused_as_tf_serving_refuses_it(served):
    core = served[0].model_server
    for call, request in (
        (core.predict, predict_pb2.PredictRequest()),
        (core.classify, classification_pb2.ClassificationRequest()),
        (core.regress, regression_pb2.RegressionRequest()),
        (core.get_model_metadata, get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])),
    ):
        assert _raises(lambda c=call, r=request: c(r)) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    empty_name = predict_pb2.PredictRequest(model_spec={"signature_name": "serving_default"})
    assert _raises(lambda: core.predict(empty_name)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "ModelSpec has no name specified.",
    )
    no_tasks = inference_pb2.MultiInferenceRequest()
    assert _raises(lambda: core.multi_inference(no_tasks)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "ModelSpec has no name specified.",
    )


def test_method_names_are_checked_only_with_the_flag(models):
    """--enable_signature_method_name_check: off by default (a predict-method signature serves Classify), on it
    refuses with TF Serving's message."""
    request = classification_pb2.ClassificationRequest(model_spec={"name": "tf2", "signature_name": "classify_x_to_y"})
    request.input.example_list.examples.append(_example(2.0))
    for check in (False, True):
        server = ModelServer.single("tf2", models["tf2"], method_name_check=check)
        server.poll()
        try:
            if not check:  # tf.saved_model.save writes every signature as tensorflow/serving/predict
                assert server.classify(request).result.classifications[0].classes[0].score == 3.0
            else:
                assert _raises(lambda s=server: s.classify(request)) == (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Expected classification signature method_name to be {CLASSIFY}. Was: tensorflow/serving/predict",
                )
        finally:
            server.unload_all()


def test_warmup_file_is_replayed_through_the_request_path(models, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="petpipe.serve"):
        server = ModelServer.single("half_plus_three", models["half_plus_three"])
        server.poll()
    assert "version 123: replayed 3 warmup requests" in caplog.text
    page = server.metrics.render()
    assert f':tensorflow:serving:model_warmup_records_read{{model_path="{models["half_plus_three"]}/00000123",' in page
    assert 'status="OK"} 3' in page
    server.unload_all()
