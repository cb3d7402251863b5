"""What the tests of serving/json_tensor.py (tests/serving/test_json_*.py) share: a PredictRequest filled from a
JSON body for a signature of given input dtypes, TensorProtos from text, and JSON read with every number kept as its
text."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import text_format
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import predict_pb2

from serving.json_tensor import JsonError, JsonPredictRequestFormat, fill_predict_request_from_json

ROW, COLUMNAR = JsonPredictRequestFormat.ROW, JsonPredictRequestFormat.COLUMNAR
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT


def predict(body, **dtypes) -> tuple[predict_pb2.PredictRequest, JsonPredictRequestFormat]:
    """Fill a PredictRequest for a signature whose inputs have these dtypes (name=DT_...)."""
    infos = {name: meta_graph_pb2.TensorInfo(dtype=dtype) for name, dtype in dtypes.items()}
    request = predict_pb2.PredictRequest()
    return request, fill_predict_request_from_json(body, lambda signature: infos, request)


def predict_error(body, **dtypes) -> JsonError:
    with pytest.raises(JsonError) as caught:
        predict(body, **dtypes)
    return caught.value


def tensor(text: str) -> tensor_pb2.TensorProto:
    return text_format.Parse(text, tensor_pb2.TensorProto())


def as_strings(text: str):
    """JSON with every number (NaN and Infinity included) kept as its text: CompareJsonAllValuesAsStrings()."""
    return json.loads(text, parse_float=str, parse_int=str, parse_constant=str)


INT_2x3x2 = """
    dtype: DT_INT32
    tensor_shape { dim { size: 2 } dim { size: 3 } dim { size: 2 } }
    int_val: [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
"""
