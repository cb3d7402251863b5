"""serving/client.py builds and reads TensorProtos with the protos and numpy alone: the same protos and arrays as
TensorFlow's tf.make_tensor_proto / tf.make_ndarray."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

from common.errors import PetpipeError
from serving import client


def test_the_predict_request_holds_what_tf_make_tensor_proto_gives(monkeypatch):
    images = [b"\xff\xd8first", b"", b"third\x00"]
    sent = []

    class Stub:
        def __init__(self, channel):
            pass

        def Predict(self, request, timeout):  # noqa: N802 (gRPC's naming)
            sent.append(request)
            raise RuntimeError("sent")  # not an RpcError: call_with_retries passes it on

    monkeypatch.setattr(client.prediction_service_pb2_grpc, "PredictionServiceStub", Stub)
    with pytest.raises(RuntimeError, match="sent"):
        client.predict_images("127.0.0.1:9", images, model_name="pets", signature_name="serving_default")
    expected = predict_pb2.PredictRequest()
    expected.model_spec.name, expected.model_spec.signature_name = "pets", "serving_default"
    expected.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string, shape=[len(images)]))
    assert sent[0].SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


@pytest.mark.parametrize(
    "values, dtype",
    [
        ([[0.25, 0.75], [1.0, 0.0]], tf.float32),
        ([[1.5], [-2.0]], tf.float64),
        ([3, 1, 4], tf.int32),
        ([2**40, -7], tf.int64),
        ([True, False, True], tf.bool),
        ([[b"cat", b"dog"], [b"", b"\xff"]], tf.string),
    ],
)
def test_ndarray_reads_typed_fields_and_tensor_content_as_tf_make_ndarray(values, dtype):
    content = tf.make_tensor_proto(values, dtype=dtype)  # numbers in tensor_content
    typed = tensor_pb2.TensorProto()  # numbers in the typed field, as TF Serving answers (AsProtoField)
    typed.CopyFrom(content)
    if content.tensor_content:
        typed.ClearField("tensor_content")
        field = {tf.float32: "float_val", tf.float64: "double_val", tf.int32: "int_val", tf.int64: "int64_val",
                 tf.bool: "bool_val"}[dtype]  # fmt: skip
        getattr(typed, field).extend(np.asarray(values).ravel().tolist())
    for proto in (content, typed):
        expected, actual = tf.make_ndarray(proto), client.ndarray(proto)
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        assert actual.tolist() == expected.tolist()


def test_ndarray_pads_a_short_typed_field_with_its_last_value_as_tf_does():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0, 2.0])
    proto.tensor_shape.dim.add(size=2)
    proto.tensor_shape.dim.add(size=2)
    assert client.ndarray(proto).tolist() == tf.make_ndarray(proto).tolist() == [[1.0, 2.0], [2.0, 2.0]]
    empty = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
    empty.tensor_shape.dim.add(size=2)
    assert client.ndarray(empty).tolist() == tf.make_ndarray(empty).tolist() == ["", ""]


def test_ndarray_refuses_a_dtype_the_client_does_not_read():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_HALF, half_val=[0])
    with pytest.raises(PetpipeError, match="a tensor of DT_HALF, which this client does not read"):
        client.ndarray(proto)
