"""`petpipe serve` as a subprocess, through the official tensorflow_serving.apis stubs and plain HTTP only:
several models from a --model_config_file, version policies and labels, Classify / Regress / MultiInference,
HandleReloadConfigRequest, batching and request limits. Its start-up, TLS and shutdown:
test_process_startup_tls_shutdown.py."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import threading

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from tests.image_factory import jpeg_bytes
from tests.serving.grpc_calls import AVAILABLE, END, _code, _states
from tests.serving.server_process import serving_process, shared_and_own_fixtures
from tests.serving.toy_model import example, export_toy_model

pytestmark = pytest.mark.slow  # trains, runs Beam jobs or subprocess servers: left out of make test-fast

CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"


def _http(server, method: str, path: str, body=None):
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    connection.request(method, path, body=json.dumps(body) if body is not None else None)
    response = connection.getresponse()
    payload = json.loads(response.read())
    connection.close()
    return response.status, payload


def _models_config(root, pets_base, toy_base, toy_policy="all {}", labels=None) -> str:
    labels = labels if labels is not None else {"stable": 1, "canary": 2}
    label_text = " ".join(f'version_labels {{ key: "{k}" value: {v} }}' for k, v in labels.items())
    text = f"""model_config_list {{
      config {{ name: "pets" base_path: "{pets_base}" model_platform: "tensorflow" }}
      config {{ name: "toy" base_path: "{toy_base}" model_platform: "tensorflow"
               model_version_policy {{ {toy_policy} }} {label_text} }}
    }}"""
    path = os.path.join(root, "models.config")
    with open(path, "w") as f:
        f.write(text)
    return path


def _serving(exported_model, root):
    """pets (latest 1) and toy (all versions: 1 with scale 0.5, 2 with scale 1.0; labels stable→1, canary→2),
    batching on, a request limit of 64 rows: (server, channel, root)."""
    pets_base, toy_base = str(root / "pets"), str(root / "toy")
    shutil.copytree(exported_model[2], os.path.join(pets_base, "1"))
    export_toy_model(toy_base, 1, scale=0.5)
    export_toy_model(toy_base, 2, scale=1.0)
    config = _models_config(str(root), pets_base, toy_base)
    batching = root / "batching.txt"
    batching.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 2000 }\n")
    args = ["--model_config_file", config, "--enable_batching", "--batching_parameters_file", str(batching)]
    args += ["--max_request_batch", "64", "--file_system_poll_wait_seconds", "0.2"]
    with serving_process(args, str(root)) as server:
        server.wait_available("toy", 2)
        server.wait_available("toy", 1)
        channel = server.channel()
        yield server, channel, root
        channel.close()


# `served` for the tests that only send requests (none may reload its config or change its model directories);
# `own_served`, the same set-up in a process of the test's own, for a test that reloads the config.
served, own_served = shared_and_own_fixtures(_serving)


def _classification_request(signature: str, xs) -> classification_pb2.ClassificationRequest:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "toy"
    request.model_spec.signature_name = signature
    request.input.example_list.examples.extend(example(x) for x in xs)
    return request


def _regress(channel, xs, version=None, label=None, signature="regress_x", name="toy"):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    request.input.example_list.examples.extend(example(x) for x in xs)
    return prediction_service_pb2_grpc.PredictionServiceStub(channel).Regress(request, timeout=30)


def test_classify_regress_and_multi_inference(served):
    _, channel, _ = served
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.Classify(_classification_request("classify_x", [2.0, -1.0]), timeout=30)
    assert response.model_spec.version.value == 2 and response.model_spec.signature_name == "classify_x"
    first, second = response.result.classifications
    assert [c.label for c in first.classes] == ["negative", "positive"]
    np.testing.assert_allclose([c.score for c in first.classes], tf.nn.softmax([-2.0, 2.0]).numpy(), rtol=1e-5)
    assert second.classes[0].score > second.classes[1].score

    regression = _regress(channel, [1.0, 3.0])  # latest = version 2, scale 1.0: x + 2
    assert [r.value for r in regression.result.regressions] == [3.0, 5.0]

    with_context = regression_pb2.RegressionRequest()
    with_context.model_spec.name = "toy"
    with_context.model_spec.signature_name = "regress_x"
    with_context.input.example_list_with_context.context.CopyFrom(example(0.0, offset=10.0))
    with_context.input.example_list_with_context.examples.extend([example(1.0), example(1.0, offset=-1.0)])
    values = [r.value for r in stub.Regress(with_context, timeout=30).result.regressions]
    assert values == [13.0, 2.0]  # the context's offset applies unless the example has its own

    multi = inference_pb2.MultiInferenceRequest()
    multi.tasks.add(model_spec={"name": "toy", "signature_name": "classify_x"}, method_name=CLASSIFY)
    multi.tasks.add(model_spec={"name": "toy", "signature_name": "regress_x2"}, method_name=REGRESS)
    multi.input.example_list.examples.extend([example(3.0)])
    results = stub.MultiInference(multi, timeout=30).results
    assert [r.model_spec.signature_name for r in results] == ["classify_x", "regress_x2"]
    assert results[0].classification_result.classifications[0].classes[1].label == "positive"
    assert results[1].regression_result.regressions[0].value == 9.0


def test_classify_and_regress_errors_as_tf_serving(served):
    _, channel, _ = served
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    wrong_method = _classification_request("regress_x", [1.0])
    code, details = _code(lambda: stub.Classify(wrong_method, timeout=10))
    # TF Serving checks method names only with --enable_signature_method_name_check: the signature's outputs fail.
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(
        'Expected classification signature outputs to contain at least one of "classes" or "scores". Signature was: '
    )
    assert f'method_name: "{REGRESS}"' in details

    empty = regression_pb2.RegressionRequest()
    empty.model_spec.name = "toy"
    empty.model_spec.signature_name = "regress_x"
    assert _code(lambda: stub.Regress(empty, timeout=10)) == (grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")

    duplicate = inference_pb2.MultiInferenceRequest()
    for _ in range(2):
        duplicate.tasks.add(model_spec={"name": "toy", "signature_name": "regress_x"}, method_name=REGRESS)
    duplicate.input.example_list.examples.append(example(1.0))
    code, details = _code(lambda: stub.MultiInference(duplicate, timeout=10))
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "Duplicate evaluation of signature: regress_x")
    predict_task = inference_pb2.MultiInferenceRequest()
    predict_task.tasks.add(model_spec={"name": "toy"}, method_name="tensorflow/serving/predict")
    predict_task.input.example_list.examples.append(example(1.0))
    code, details = _code(lambda: stub.MultiInference(predict_task, timeout=10))
    assert code == grpc.StatusCode.UNIMPLEMENTED and "Unsupported signature method_name" in details


def test_versions_and_labels_select_what_answers(served):
    server, channel, _ = served
    assert _regress(channel, [2.0], version=1).result.regressions[0].value == 3.0  # 0.5·2 + 2
    assert _regress(channel, [2.0], label="stable").result.regressions[0].value == 3.0
    assert _regress(channel, [2.0], label="canary").result.regressions[0].value == 4.0
    code, details = _code(lambda: _regress(channel, [2.0], label="beta"))
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: beta")
    code, details = _code(lambda: _regress(channel, [2.0], version=3))
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(toy, 3)")

    body = {"signature_name": "regress_x", "examples": [{"x": 2.0}, {"x": 4.5}]}
    assert _http(server, "POST", "/v1/models/toy/labels/stable:regress", body) == (200, {"results": [3.0, 4.25]})
    body["examples"] = [{"x": 4}]  # a JSON integer is an int64 feature, as in TF Serving; "x" is a float feature
    status, answer = _http(server, "POST", "/v1/models/toy/labels/stable:regress", body)
    assert status == 400 and "x" in answer["error"]
    status, body = _http(server, "POST", "/v1/models/toy/versions/2:classify", {
        "signature_name": "classify_x", "examples": [{"x": 0.0}]
    })  # fmt: skip
    assert status == 200 and body["results"][0] == [["negative", 0.5], ["positive", 0.5]]
    status, body = _http(server, "GET", "/v1/models/toy/labels/canary")
    assert status == 200 and body["model_version_status"][0]["version"] == "2"
    assert body["model_version_status"][0]["state"] == "AVAILABLE"


def test_predict_and_metadata_of_the_pets_model(served):
    server, channel, _ = served
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "pets"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([jpeg_bytes(1), jpeg_bytes(2)], dtype=tf.string))
    response = stub.Predict(request, timeout=30)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["breed_probs"]).sum(axis=1), 1.0, rtol=1e-5)
    metadata_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata_request.model_spec.name = "toy"
    metadata = stub.GetModelMetadata(metadata_request, timeout=10)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(signatures)
    assert signatures.signature_def["classify_x"].method_name == CLASSIFY
    status, body = _http(server, "GET", "/v1/models/pets/metadata")
    assert status == 200 and "serving_default" in body["metadata"]["signature_def"]["signature_def"]


def test_batching_merges_concurrent_requests_without_mixing_answers(served):
    _, channel, _ = served
    results = {}

    def ask(i):
        xs = [float(i), float(i) + 0.5][: 1 + i % 2]
        results[i] = (xs, [r.value for r in _regress(channel, xs, version=1).result.regressions])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 12
    for xs, values in results.values():
        assert values == [0.5 * x + 2 for x in xs]
    nine = [float(i) for i in range(9)]  # max_batch_size is 8
    code, details = _code(lambda: _regress(channel, nine))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "Task size 9 is larger than maximum input batch size 8"


def test_request_limits(served):
    _, channel, _ = served
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "toy"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.zeros(65, np.float32)))
    code, details = _code(lambda: prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "batch of 65 exceeds this server's limit of 64" in details


def _reload(channel, config_text: str):
    config = model_server_config_pb2.ModelServerConfig()
    from google.protobuf import text_format

    text_format.Parse(config_text, config)
    request = model_management_pb2.ReloadConfigRequest(config=config)
    return model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=60)


def test_reload_config_changes_policies_labels_and_models(own_served, tmp_path):
    server, channel, root = own_served
    pets_base, toy_base = str(root / "pets"), str(root / "toy")
    with open(_models_config(str(tmp_path), pets_base, toy_base, "specific { versions: 1 }", {"stable": 1})) as f:
        only_v1 = f.read()
    assert _reload(channel, only_v1).status.error_code == 0
    assert _states(channel, "toy") == {1: AVAILABLE, 2: END}
    assert _regress(channel, [2.0]).result.regressions[0].value == 3.0  # latest loaded is now version 1
    code, details = _code(lambda: _regress(channel, [2.0], label="canary"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT

    outside = only_v1.replace(toy_base, "/etc")
    code, details = _code(lambda: _reload(channel, outside))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "outside the allowed roots" in details
    unavailable_label = only_v1.replace("value: 1 }", "value: 2 }")
    code, details = _code(lambda: _reload(channel, unavailable_label))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "not currently available" in details

    without_toy = f'model_config_list {{ config {{ name: "pets" base_path: "{pets_base}" }} }}'
    _reload(channel, without_toy)
    code, _ = _code(lambda: _regress(channel, [1.0]))
    assert code == grpc.StatusCode.NOT_FOUND
    with open(_models_config(str(tmp_path), pets_base, toy_base)) as f:
        _reload(channel, f.read())  # back to the module's config
    assert _regress(channel, [2.0], label="canary").result.regressions[0].value == 4.0


def test_rest_predict_row_and_columnar_status_and_metadata(served):
    server, channel, _ = served
    image = {"b64": base64.b64encode(jpeg_bytes(5)).decode()}
    status, row = _http(server, "POST", "/v1/models/pets:predict", {"instances": [image, image]})
    assert status == 200 and len(row["predictions"]) == 2
    first, second = row["predictions"]
    assert first["breed"] == second["breed"] and first["image_error"] == ""
    # TF Serving's REST API has no output filter: a columnar answer carries every output.
    status, columnar = _http(server, "POST", "/v1/models/pets/versions/1:predict", {"inputs": {"image_bytes": [image]}})
    assert status == 200 and set(columnar["outputs"]) == set(first)
    assert columnar["outputs"]["breed"] == [first["breed"]]
    np.testing.assert_allclose(columnar["outputs"]["breed_probs"][0], first["breed_probs"], rtol=1e-6)
    status, body = _http(server, "POST", "/v1/models/toy:predict", {"instances": [1.0, 3.0]})
    assert (status, body) == (200, {"predictions": [3.0, 5.0]})  # toy v2: y = x + 2
    status, versions = _http(server, "GET", "/v1/models/toy")
    assert status == 200 and {(v["version"], v["state"]) for v in versions["model_version_status"]} == {
        ("2", "AVAILABLE"),
        ("1", "AVAILABLE"),
    }
    status, metadata = _http(server, "GET", "/v1/models/toy/versions/1/metadata")
    assert status == 200 and metadata["model_spec"]["version"] == "1"
    assert metadata["metadata"]["signature_def"]["signature_def"]["regress_x"]["method_name"] == REGRESS
