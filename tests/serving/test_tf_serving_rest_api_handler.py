"""TF Serving's http_rest_api_handler_test.cc, ported: its expectations run through the pure REST core (RestHandler) of
a server of models equivalent to TF Serving's fixtures (tests/serving/tf_serving_models.py; the server: conftest.py)."""

from __future__ import annotations

import json

import grpc
import pytest

from serving.rest import RestHandler
from tests.serving.conftest import TWO_VERSIONS
from tests.serving.tf_serving_models import CLASSIFY, REGRESS


# --- http_rest_api_handler_test.cc (through the pure REST core) -------------------------------------------
@pytest.fixture(scope="module")
def rest(tf_serving_server):
    return RestHandler(tf_serving_server[0].model_server)


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
