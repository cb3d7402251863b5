"""TF Serving's predict_util_test.cc and get_model_status_impl_test.cc, ported, plus its method-name check and warmup
replay: run through the core (ModelServer) on models equivalent to TF Serving's fixtures
(tests/serving/tf_serving_models.py; the server of them: conftest.py)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
)

from serving.core import ModelServer
from serving.status import ServingError
from tests.serving.conftest import TWO_VERSIONS, _example
from tests.serving.tf_serving_models import CLASSIFY


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


def test_predict_input_and_output_errors_as_predict_util(tf_serving_server):
    core = tf_serving_server[0].model_server
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


def test_get_model_status_as_get_model_status_impl(tf_serving_server):
    core = tf_serving_server[0].model_server
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


def test_a_request_without_a_model_spec_is_refused_as_tf_serving_refuses_it(tf_serving_server):
    core = tf_serving_server[0].model_server
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


def test_method_names_are_checked_only_with_the_flag(tf_serving_models):
    """--enable_signature_method_name_check: off by default (a predict-method signature serves Classify), on it
    refuses with TF Serving's message."""
    request = classification_pb2.ClassificationRequest(model_spec={"name": "tf2", "signature_name": "classify_x_to_y"})
    request.input.example_list.examples.append(_example(2.0))
    for check in (False, True):
        server = ModelServer.single("tf2", tf_serving_models["tf2"], method_name_check=check)
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


def test_warmup_file_is_replayed_through_the_request_path(tf_serving_models, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="petpipe.serve"):
        server = ModelServer.single("half_plus_three", tf_serving_models["half_plus_three"])
        server.poll()
    assert "version 123: replayed 3 warmup requests" in caplog.text
    page = server.metrics.render()
    assert (
        f':tensorflow:serving:model_warmup_records_read{{model_path="{tf_serving_models["half_plus_three"]}/00000123",'
        in page
    )
    assert 'status="OK"} 3' in page
    server.unload_all()
