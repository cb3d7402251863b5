"""The gRPC server, through the official tensorflow-serving-api stubs, against TF Serving's behaviour."""

import io
import os
import shutil
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.client import parse_response, predict_images
from serving.server import start_server
from tests.conftest import TEST_EXPORT
from tests.image_factory import DAMAGED_JPEG
from tests.serving.server_process import shared_and_own_fixtures


def _jpeg(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (50, 40), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def _serving(exported_model, directory):
    """(running server, channel, base path) serving a copy of the exported model as version 1."""
    base = str(directory / "pets")
    shutil.copytree(exported_model[2], os.path.join(base, "1"))
    running = start_server(base, "pets", port=0, poll_seconds=0.2)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield running, channel, base
    channel.close()
    running.stop()


# `server` for the tests that only send requests (none may change its model directory or versions); `own_server`
# for a test that adds or breaks versions.
server, own_server = shared_and_own_fixtures(_serving)


def _request(images, name="pets", signature="", version=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    return request


def _code(call):
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code(), error.value.details()


def test_predict_answers_like_tf_serving(server, hierarchy):
    _, channel, _ = server
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.Predict(_request([_jpeg((200, 0, 0)), _jpeg((0, 0, 200))]), timeout=30)
    assert response.model_spec.name == "pets"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    probs = tf.make_ndarray(response.outputs["breed_probs"])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    for answer in parse_response(response):
        assert hierarchy.by_name[answer.breed].species == answer.species  # joint top-1 is hierarchy-consistent
        assert answer.top_k[0][0] == answer.breed


def test_a_bad_image_is_a_per_item_error_not_a_failed_batch(server):
    _, channel, _ = server
    good = _jpeg((120, 30, 30))
    batch = [good, good[: len(good) // 2], b"not an image at all", b"", good]
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(_request(batch), timeout=30)
    answers = parse_response(response)
    assert [a.error.split(":")[0] for a in answers] == [
        "",
        "truncated image",
        "not a JPEG, PNG, GIF or BMP image",
        "empty, or too short to be an image",
        "",
    ]
    assert answers[0].breed == answers[4].breed and answers[0].breed_prob == pytest.approx(answers[4].breed_prob)


def test_output_filter_returns_only_the_named_outputs(server):
    _, channel, _ = server
    request = _request([_jpeg((1, 2, 3))])
    request.output_filter.extend(["species", "breed"])
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert set(response.outputs) == {"species", "breed"}


def test_errors_use_tf_serving_status_codes(server):
    _, channel, _ = server
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    code, details = _code(lambda: stub.Predict(_request([_jpeg(0)], name="cats"), timeout=10))
    assert code == grpc.StatusCode.NOT_FOUND and "Servable not found for request: Latest(cats)" in details
    code, details = _code(lambda: stub.Predict(_request([_jpeg(0)], version=99), timeout=10))
    assert code == grpc.StatusCode.NOT_FOUND and "Specific(pets, 99)" in details
    code, details = _code(lambda: stub.Predict(_request([_jpeg(0)], signature="nope"), timeout=10))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and 'Serving signature key "nope" not found.' in details
    code, details = _code(lambda: stub.Predict(_request([DAMAGED_JPEG]), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Invalid JPEG data" in details

    wrong_key = predict_pb2.PredictRequest()
    wrong_key.model_spec.name = "pets"
    wrong_key.inputs["images"].CopyFrom(tf.make_tensor_proto([b"x"]))
    code, details = _code(lambda: stub.Predict(wrong_key, timeout=10))
    # As many inputs as the signature's, but another name: saved_model::GetInputValues' message.
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details == (
        "Signature input alias: image_bytes(feed name: serving_default_image_bytes:0) not found in request and no "
        "default value provided. Inputs expected to be in the request {images}, or default input alias set: "
    )
    wrong_key.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([b"x"]))
    code, details = _code(lambda: stub.Predict(wrong_key, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Sent extra: {images}. Missing but required: {}." in details

    wrong_type = predict_pb2.PredictRequest()
    wrong_type.model_spec.name = "pets"
    wrong_type.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([1.0, 2.0]))
    code, details = _code(lambda: stub.Predict(wrong_type, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details == "Expects arg[0] to be string but float is provided"

    bad_filter = _request([_jpeg(0)])
    bad_filter.output_filter.append("colour")
    code, details = _code(lambda: stub.Predict(bad_filter, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "output tensor alias not found in signature: colour" in details


def test_metadata_lists_both_signatures(server):
    _, channel, _ = server
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "pets"
    request.metadata_field.append("signature_def")
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=10)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert set(signatures.signature_def) >= {"serving_default", "predict_examples"}
    default = signatures.signature_def["serving_default"]
    assert list(default.inputs) == ["image_bytes"]
    assert default.inputs["image_bytes"].dtype == tf.string.as_datatype_enum
    assert {"species_probs", "breed_probs", "breed", "top_k_breeds", "top_k_scores"} <= set(default.outputs)


def test_status_and_new_versions_are_picked_up(own_server, exported_model):
    running, channel, base = own_server
    status_stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "pets"
    states = {s.version: s.state for s in status_stub.GetModelStatus(request, timeout=10).model_version_status}
    assert states[1] == get_model_status_pb2.ModelVersionStatus.AVAILABLE

    shutil.copytree(exported_model[2], os.path.join(base, "_staging-x"))  # ignored: not an integer name
    os.rename(os.path.join(base, "_staging-x"), os.path.join(base, "2"))
    deadline = time.monotonic() + 30
    while running.model_server.latest_version("pets") != 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    answers = predict_images(f"127.0.0.1:{running.port}", [_jpeg((9, 9, 9))])
    assert answers[0].version == 2
    states = {s.version: s.state for s in status_stub.GetModelStatus(request, timeout=10).model_version_status}
    assert states == {
        2: get_model_status_pb2.ModelVersionStatus.AVAILABLE,
        1: get_model_status_pb2.ModelVersionStatus.END,
    }
    request.model_spec.version.value = 5
    code, details = _code(lambda: status_stub.GetModelStatus(request, timeout=10))
    assert code == grpc.StatusCode.NOT_FOUND and "Could not find version 5 of model pets" in details


def test_broken_version_is_reported_and_the_old_one_keeps_serving(own_server):
    running, channel, base = own_server
    before = running.model_server.latest_version("pets")
    broken = os.path.join(base, "50")
    os.makedirs(broken)
    with open(os.path.join(broken, "saved_model.pb"), "wb") as f:
        f.write(b"garbage")
    deadline = time.monotonic() + 30
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "pets"
    status_stub = model_service_pb2_grpc.ModelServiceStub(channel)
    while time.monotonic() < deadline:
        statuses = {s.version: s for s in status_stub.GetModelStatus(request, timeout=10).model_version_status}
        if 50 in statuses and statuses[50].status.error_message:
            break
        time.sleep(0.1)
    assert "Loading servable: {name: pets version: 50} failed" in statuses[50].status.error_message
    assert running.model_server.latest_version("pets") == before
    assert predict_images(f"127.0.0.1:{running.port}", [_jpeg((1, 1, 1))])[0].version == before
    shutil.rmtree(broken)


def test_warmup_requests_are_replayed_before_serving(small_model, hierarchy, tmp_path, caplog):
    import logging

    from components.export import export_model
    from serving.status import ServingError
    from serving.warmup import load_version, warm_up

    _, path = export_model(
        small_model, hierarchy, str(tmp_path / "pets"), 32, TEST_EXPORT, warmup_images=[_jpeg((1, 2, 3))] * 2
    )
    with caplog.at_level(logging.INFO, logger="petpipe.serve"):
        loaded = load_version(path, 1)
    assert "replayed 2 warmup requests" in caplog.text
    assert warm_up(loaded) == 2
    from tensorflow_serving.apis import prediction_log_pb2

    bad = prediction_log_pb2.PredictionLog()
    bad.predict_log.request.model_spec.signature_name = "nope"
    with tf.io.TFRecordWriter(os.path.join(path, "assets.extra", "tf_serving_warmup_requests")) as writer:
        writer.write(bad.SerializeToString())
    # A warmup request that cannot run fails the load with the request's own status: the version is never served.
    with pytest.raises(ServingError, match='Serving signature key "nope" not found.') as failed:
        load_version(path, 1)
    assert failed.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_a_half_written_version_is_retried_and_served_once_complete(exported_model, tmp_path):
    from serving.core import ModelServer
    from serving.versions import LoadRetry

    base = tmp_path / "pets"
    shutil.copytree(exported_model[2], base / "1")
    now = [1000.0]  # the retry policy's clock, advanced by the test
    retry = LoadRetry(max_num_load_retries=5, interval_seconds=60.0, clock=lambda: now[0])
    server = ModelServer.single("pets", str(base), load_retry=retry)
    server.poll()
    half = base / "2"
    half.mkdir()  # copied by hand, not atomically: the directory exists before its saved_model.pb
    server.poll()
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "pets"
    states = {s.version: s for s in server.get_model_status(request).model_version_status}
    assert states[2].state == get_model_status_pb2.ModelVersionStatus.END and states[2].status.error_message
    assert server.latest_version("pets") == 1  # never the half-written one
    shutil.rmtree(half)
    shutil.copytree(exported_model[2], half)
    server.poll()  # too soon: the retry interval has not passed
    assert server.latest_version("pets") == 1
    now[0] += 59.0
    server.poll()  # still too soon
    assert server.latest_version("pets") == 1
    now[0] += 1.0
    server.poll()
    assert server.latest_version("pets") == 2
    states = {s.version: s.state for s in server.get_model_status(request).model_version_status}
    assert states == {
        2: get_model_status_pb2.ModelVersionStatus.AVAILABLE,
        1: get_model_status_pb2.ModelVersionStatus.END,
    }
    server.unload_all()


@pytest.mark.parametrize(
    "base_path, message",
    [
        ("file:///etc/models/pets", "outside the allowed roots"),  # a URL form of a local path is still checked
        ("gs://elsewhere/pets", "outside the allowed roots"),
        ("{root}/../../etc", "outside the allowed roots"),
        ("{root}/pets\x00x", "NUL byte"),
        ("relative/pets", "must be absolute"),
    ],
)
def test_reload_cannot_point_a_model_outside_the_allowed_roots(exported_model, tmp_path, base_path, message):
    from serving.core import ModelServer
    from serving.protos import ModelServerConfig
    from serving.status import ServingError

    shutil.copytree(exported_model[2], tmp_path / "pets" / "1")
    server = ModelServer.single("pets", str(tmp_path / "pets"))
    config = ModelServerConfig()
    config.model_config_list.config.add(name="pets", base_path=base_path.format(root=tmp_path))
    with pytest.raises(ServingError, match=message) as error:
        server.reload_config(config)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ServingError, match="must set model_config_list"):
        server.reload_config(ModelServerConfig())  # an unset config would unload everything
    assert server.model_names == ["pets"]


def test_declared_shapes_are_checked_before_any_memory_is_spent(server):
    _, channel, _ = server
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    for dims, message in (([10**9], "batch of 1000000000 exceeds"), ([-5], "negative dimension")):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "pets"
        tensor = request.inputs["image_bytes"]
        tensor.dtype = tf.string.as_datatype_enum
        tensor.tensor_shape.dim.extend(tensor.tensor_shape.Dim(size=d) for d in dims)
        tensor.string_val.append(_jpeg(0))  # one value, 10^9 declared: make_ndarray would repeat it 10^9 times
        code, details = _code(lambda request=request: stub.Predict(request, timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.array([b"Bengal", b"", b"\xff\x00"], dtype=object),
        np.array([[1, -2]], dtype=np.int64),
        np.array([True, False]),
        np.zeros((0, 5), np.float32),
        np.float32(3.5),
    ],
)
def test_response_tensors_read_back_as_tf_make_tensor_proto_s(array):
    from serving.tensors import tensor_proto

    ours, tfs = tf.make_ndarray(tensor_proto(array)), tf.make_ndarray(tf.make_tensor_proto(array))
    assert ours.dtype == tfs.dtype and ours.shape == tfs.shape
    np.testing.assert_array_equal(ours, tfs)
