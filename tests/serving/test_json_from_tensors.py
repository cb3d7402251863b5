"""serving/json_tensor.py's MakeJsonFromTensors against TF Serving's json_tensor_test.cc, case by case (same names,
snake case), plus properties of what it writes. TF Serving's tests compare JSON semantically; here responses are also
compared byte for byte with what rapidjson's PrettyWriter writes."""

from __future__ import annotations

import base64
import json
import math
import random

import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.json_tensor import JsonError, make_json_from_tensors
from tests.serving.json_cases import COLUMNAR, INVALID_ARGUMENT, ROW, INT_2x3x2, as_strings, predict, tensor

HELLO_WORLD_TF_SERVING = """
    dtype: DT_STRING
    tensor_shape { dim { size: 2 } dim { size: 2 } }
    string_val: ["hello", "world", "tf", "serving"]
"""


# --- MakeJsonFromTensors ----------------------------------------------------------------------------------------


def test_from_json_single_tensor():
    tensors = {"int_tensor": tensor(INT_2x3x2)}
    expected = [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]]
    row = make_json_from_tensors(tensors, ROW)
    assert json.loads(row) == {"predictions": expected}
    # Each batch item is written with single-line arrays, the list around them is not.
    assert row == '{\n    "predictions": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]\n    ]\n}'
    columnar = make_json_from_tensors(tensors, COLUMNAR)
    assert json.loads(columnar) == {"outputs": expected}
    assert columnar.startswith('{\n    "outputs": [\n        [\n            [\n                1,\n                2\n')
    assert columnar.endswith("                2\n            ]\n        ]\n    ]\n}")


def test_from_json_single_scalar_tensor():
    tensors = {"int_tensor": tensor("dtype: DT_INT32 tensor_shape { dim { size: 5 } } int_val: [1, 2, 3, 4, 5]")}
    assert make_json_from_tensors(tensors, ROW) == '{\n    "predictions": [1, 2, 3, 4, 5\n    ]\n}'
    columnar = make_json_from_tensors(tensors, COLUMNAR)
    assert json.loads(columnar) == {"outputs": [1, 2, 3, 4, 5]}
    assert columnar == '{\n    "outputs": [\n        1,\n        2,\n        3,\n        4,\n        5\n    ]\n}'


def test_from_json_single_bytes_tensor():
    row = make_json_from_tensors({"str_tensor_bytes": tensor(HELLO_WORLD_TF_SERVING)}, ROW)
    assert json.loads(row) == {
        "predictions": [
            [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
            [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}],
        ]
    }
    # Objects stay multi-line inside single-line arrays.
    item = '[{\n                "b64": "%s"\n            }, {\n                "b64": "%s"\n            }]'
    expected = item % ("aGVsbG8=", "d29ybGQ=") + ", " + item % ("dGY=", "c2VydmluZw==")
    assert row == '{\n    "predictions": [' + expected + "\n    ]\n}"


def test_from_json_single_float_tensor_six_digit_precision():
    tensors = {
        "float_tensor": tensor(
            "dtype: DT_FLOAT tensor_shape { dim { size: 2 } dim { size: 3 } }"
            " float_val: [9000000, 999999, 0.50000, .0003, .00003, 555557.5]"
        )
    }
    row = make_json_from_tensors(tensors, ROW)
    assert as_strings(row) == as_strings('{"predictions": [[9e+06, 999999.0, 0.5], [0.0003, 3e-05, 555557.5]]}')
    assert row == '{\n    "predictions": [[9e+06, 999999.0, 0.5], [0.0003, 3e-05, 555557.5]\n    ]\n}'


def test_from_json_single_float_tensor_non_finite():
    tensors = {
        "float_tensor": tensor(
            "dtype: DT_FLOAT tensor_shape { dim { size: 2 } dim { size: 2 } } float_val: [nan, inf, 3, -inf]"
        )
    }
    row = make_json_from_tensors(tensors, ROW)
    assert as_strings(row) == {"predictions": [["NaN", "Infinity"], ["3.0", "-Infinity"]]}
    assert row == '{\n    "predictions": [[NaN, Infinity], [3.0, -Infinity]\n    ]\n}'


def test_from_json_single_tensor_errors():
    with pytest.raises(JsonError) as caught:
        make_json_from_tensors({}, ROW)
    assert (caught.value.code, caught.value.message) == (INVALID_ARGUMENT, "Cannot convert empty tensor map to JSON")

    complex64 = tensor("dtype: DT_COMPLEX64 tensor_shape { dim { size: 2 } } scomplex_val: [1.0, 2.0]")
    with pytest.raises(JsonError) as caught:
        make_json_from_tensors({"tensor": complex64}, ROW)
    assert caught.value.message == "Failed to write JSON value for tensor type: complex64"

    with pytest.raises(JsonError) as caught:
        make_json_from_tensors({"tensor": tensor("dtype: DT_INT32 int_val: 1")}, ROW)
    assert caught.value.message == "Tensor name: tensor has no shape information "


def _multiple_named_tensors() -> dict:
    return {
        "int_tensor": tensor(INT_2x3x2),
        "str_tensor": tensor(
            'dtype: DT_STRING tensor_shape { dim { size: 2 } dim { size: 2 } } string_val: ["foo", "bar", "baz", "bat"]'
        ),
        "float_tensor": tensor(
            "dtype: DT_FLOAT tensor_shape { dim { size: 2 } dim { size: 1 } } float_val: [1.0, 2.0]"
        ),
        "double_scalar_tensor": tensor("dtype: DT_DOUBLE tensor_shape { dim { size: 2 } } double_val: [8.0, 9.0]"),
        "str_tensor_bytes": tensor(HELLO_WORLD_TF_SERVING),
    }


def test_from_json_multiple_named_tensors():
    row = make_json_from_tensors(_multiple_named_tensors(), ROW)
    assert json.loads(row) == {
        "predictions": [
            {
                "double_scalar_tensor": 8.0,
                "float_tensor": [1.0],
                "int_tensor": [[1, 2], [3, 4], [5, 6]],
                "str_tensor": ["foo", "bar"],
                "str_tensor_bytes": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
            },
            {
                "double_scalar_tensor": 9.0,
                "float_tensor": [2.0],
                "int_tensor": [[7, 8], [9, 0], [1, 2]],
                "str_tensor": ["baz", "bat"],
                "str_tensor_bytes": [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}],
            },
        ]
    }
    assert row.startswith(
        '{\n    "predictions": [\n        {\n            "double_scalar_tensor": 8.0,\n'
        '            "float_tensor": [1.0],\n'
        '            "int_tensor": [[1, 2], [3, 4], [5, 6]],\n            "str_tensor": ["foo", "bar"],\n'
        '            "str_tensor_bytes": [{\n                    "b64": "aGVsbG8="\n                }, {\n'
    )
    assert row.endswith('"c2VydmluZw=="\n                }]\n        }\n    ]\n}')

    columnar = make_json_from_tensors(_multiple_named_tensors(), COLUMNAR)
    assert json.loads(columnar) == {
        "outputs": {
            "double_scalar_tensor": [8.0, 9.0],
            "float_tensor": [[1.0], [2.0]],
            "int_tensor": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]],
            "str_tensor": [["foo", "bar"], ["baz", "bat"]],
            "str_tensor_bytes": [
                [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
                [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}],
            ],
        }
    }
    assert columnar.startswith('{\n    "outputs": {\n        "double_scalar_tensor": [\n            8.0,\n')


def test_from_json_multiple_named_tensors_errors():
    tensors = {
        "int_tensor": tensor(
            "dtype: DT_INT32 tensor_shape { dim { size: 2 } dim { size: 3 } } int_val: [1, 2, 3, 4, 5, 6]"
        ),
        "str_tensor": tensor(
            'dtype: DT_STRING tensor_shape { dim { size: 1 } dim { size: 3 } } string_val: ["foo", "bar", "baz"]'
        ),
    }
    with pytest.raises(JsonError) as caught:
        make_json_from_tensors(tensors, ROW)
    assert caught.value.code == INVALID_ARGUMENT
    assert caught.value.message == "Tensor name: str_tensor has inconsistent batch size: 1 expecting: 2"


def test_from_json_single_zero_batch_tensor():
    tensors = {"int_tensor": tensor("dtype: DT_INT32 tensor_shape { dim { size: 0 } dim { size: 2 } }")}
    assert make_json_from_tensors(tensors, ROW) == '{\n    "predictions": []\n}'


def test_from_json_multiple_zero_batch_tensors():
    tensors = {
        "str_tensor": tensor("dtype: DT_STRING tensor_shape { dim { size: 0 } dim { size: 1 } dim { size: 2 } }"),
        "float_tensor": tensor("dtype: DT_FLOAT tensor_shape { dim { size: 0 } dim { size: 3 } dim { size: 4 } }"),
    }
    assert make_json_from_tensors(tensors, ROW) == '{\n    "predictions": []\n}'


def test_from_json_multiple_zero_batch_tensors_errors():
    tensors = {
        "int_tensor": tensor("dtype: DT_INT32 tensor_shape { dim { size: 0 } dim { size: 2 } }"),
        "str_tensor": tensor(
            'dtype: DT_STRING tensor_shape { dim { size: 1 } dim { size: 2 } } string_val: ["foo", "bar"]'
        ),
    }
    with pytest.raises(JsonError) as caught:
        make_json_from_tensors(tensors, ROW)
    assert caught.value.message == "Tensor name: str_tensor has inconsistent batch size: 1 expecting: 0"


# --- Properties ---------------------------------------------------------------------------------------------------


def _random_string(rnd: random.Random) -> bytes:
    return "".join(rnd.choice('ab"\\\n\x01é😀 ') for _ in range(rnd.randint(0, 5))).encode()


DTYPES = {
    types_pb2.DT_FLOAT: ("float_val", lambda rnd: float(np.float32(rnd.uniform(-1e6, 1e6) * rnd.random()))),
    # Short decimals: rapidjson reads some 17-digit numbers one unit in the last place off (see
    # test_numbers_are_rounded_as_rapidjson_rounds_them in test_json_rapidjson.py).
    types_pb2.DT_DOUBLE: ("double_val", lambda rnd: round(rnd.uniform(-1e3, 1e3), rnd.randint(0, 6))),
    types_pb2.DT_INT32: ("int_val", lambda rnd: rnd.randint(-(2**31), 2**31 - 1)),
    types_pb2.DT_INT64: ("int64_val", lambda rnd: rnd.randint(-(2**63), 2**63 - 1)),
    types_pb2.DT_UINT64: ("uint64_val", lambda rnd: rnd.randint(0, 2**64 - 1)),
    types_pb2.DT_BOOL: ("bool_val", lambda rnd: rnd.random() < 0.5),
    types_pb2.DT_STRING: ("string_val", _random_string),
}


def _random_outputs(rnd: random.Random, batch: int) -> dict:
    outputs = {}
    for index in range(rnd.randint(1, 3)):
        dtype = rnd.choice(list(DTYPES))
        field, make = DTYPES[dtype]
        name = f"out{index}" + ("_bytes" if dtype == types_pb2.DT_STRING and rnd.random() < 0.5 else "")
        # Nothing after a 0: "[[], []]" cannot say how deep the empty lists would have gone.
        shape = [batch] + [rnd.randint(1, 3) for _ in range(rnd.randint(0, 2))] + [0] * (rnd.random() < 0.1)
        proto = tensor_pb2.TensorProto(dtype=dtype)
        for size in shape:
            proto.tensor_shape.dim.add(size=size)
        getattr(proto, field).extend(make(rnd) for _ in range(math.prod(shape)))
        outputs[name] = proto
    return outputs


def test_responses_parse_back_to_the_same_tensors():
    """What make_json_from_tensors writes is JSON, and read back as a request ("predictions" as "instances",
    "outputs" as "inputs") it gives the tensors it was written from."""
    rnd = random.Random(20240607)
    for _ in range(300):
        outputs = _random_outputs(rnd, batch=rnd.randint(1, 3))
        dtypes = {name: proto.dtype for name, proto in outputs.items()}
        for fmt, key in ((ROW, "instances"), (COLUMNAR, "inputs")):
            text = make_json_from_tensors(outputs, fmt)
            document = json.loads(text)  # Python's json accepts the NaN/Infinity rapidjson writes, too
            assert list(document) == ["predictions" if fmt is ROW else "outputs"]
            body = json.dumps({key: next(iter(document.values()))})
            request, read_fmt = predict(body, **dtypes)
            assert read_fmt is fmt
            for name, proto in outputs.items():
                assert text_format.MessageToString(request.inputs[name]) == text_format.MessageToString(proto), name


def test_bytes_outputs_are_base64_objects():
    rnd = random.Random(7)
    values = [bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 9))) for _ in range(6)]
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=values)
    proto.tensor_shape.dim.add(size=6)
    document = json.loads(make_json_from_tensors({"image_bytes": proto}, COLUMNAR))
    assert [base64.b64decode(item["b64"]) for item in document["outputs"]] == values
