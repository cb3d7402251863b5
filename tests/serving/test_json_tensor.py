"""serving/json_tensor.py against TF Serving's json_tensor_test.cc, case by case (same names, snake case), plus the
rapidjson behaviour the port reproduces: parse-error texts and offsets, number rounding, the PrettyWriter layout.

TF Serving's tests compare JSON semantically and messages by substring; here responses are also compared byte for
byte with what rapidjson's PrettyWriter writes, and messages in full where the C++ fixes them."""

from __future__ import annotations

import base64
import json
import math
import random

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2, predict_pb2, regression_pb2

from serving.json_tensor import (
    JsonError,
    JsonPredictRequestFormat,
    fill_classification_request_from_json,
    fill_predict_request_from_json,
    fill_regression_request_from_json,
    make_json_from_classification_result,
    make_json_from_regression_result,
    make_json_from_status,
    make_json_from_tensors,
)

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


def assert_tensor(actual: tensor_pb2.TensorProto, expected_text: str) -> None:
    # Text form, so NaN compares equal to NaN (as EqualsProto does).
    assert text_format.MessageToString(actual) == text_format.MessageToString(tensor(expected_text))


def as_strings(text: str):
    """JSON with every number (NaN and Infinity included) kept as its text: CompareJsonAllValuesAsStrings()."""
    return json.loads(text, parse_float=str, parse_int=str, parse_constant=str)


INT_2x3x2 = """
    dtype: DT_INT32
    tensor_shape { dim { size: 2 } dim { size: 3 } dim { size: 2 } }
    int_val: [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
"""
HELLO_WORLD_TF_SERVING = """
    dtype: DT_STRING
    tensor_shape { dim { size: 2 } dim { size: 2 } }
    string_val: ["hello", "world", "tf", "serving"]
"""


# --- FillPredictRequestFromJson ---------------------------------------------------------------------------------


def test_single_unnamed_tensor():
    request, fmt = predict('{"instances": [[1,2],[3,4],[5,6]]}', default=types_pb2.DT_INT32)
    assert fmt is ROW
    assert list(request.inputs) == ["default"]
    assert_tensor(
        request.inputs["default"],
        "dtype: DT_INT32 tensor_shape { dim { size: 3 } dim { size: 2 } } int_val: [1, 2, 3, 4, 5, 6]",
    )


def test_deeply_nested_well_formed():
    # rapidjson parses iteratively, so a 500000-deep value elsewhere in the body is no problem.
    body = '{"instances":[1], "nested":' + "[" * 500000 + "]" * 500000 + "}"
    request, fmt = predict(body, default=types_pb2.DT_INT32)
    assert fmt is ROW
    assert_tensor(request.inputs["default"], "dtype: DT_INT32 tensor_shape { dim { size: 1 } } int_val: 1")


def test_deeply_nested_malformed():
    error = predict_error('{"signature_name":' + "[" * 500000 + "]" * 500000 + "}", default=types_pb2.DT_INT32)
    assert error.code == INVALID_ARGUMENT
    # The document in the message stops at the first write that would start past 256 bytes (JsonWriterWithLimit).
    shown = '{\n    "signature_name": '
    assert error.message == (
        f"JSON Value: {shown}{'[' * (256 - len(shown))} not formatted correctly. 'signature_name' key must be a"
        " string value."
    )


def test_mixed_input_for_float_tensor():
    request, fmt = predict('{"instances": [1, 2.0, 3, 4, 5.003, 0.007, 0.0]}', default=types_pb2.DT_FLOAT)
    assert fmt is ROW
    assert_tensor(
        request.inputs["default"],
        "dtype: DT_FLOAT tensor_shape { dim { size: 7 } } float_val: [1, 2.0, 3, 4, 5.003, 0.007, 0.0]",
    )


def test_mixed_input_for_double_tensor():
    request, fmt = predict('{"instances": [1.0, 2, 3, 4, 0.662, 0, 0.0]}', default=types_pb2.DT_DOUBLE)
    assert fmt is ROW
    assert list(request.inputs["default"].double_val) == [1.0, 2, 3, 4, 0.662, 0, 0.0]
    assert request.inputs["default"].dtype == types_pb2.DT_DOUBLE


def test_float_tensor_with_precision_loss():
    # b/181409782: an integer and the same number with ".0" both become the nearest float.
    for body in ('{"instances": [1435774380]}', '{"instances": [1435774380.0]}'):
        request, fmt = predict(body, default=types_pb2.DT_FLOAT)
        assert fmt is ROW
        assert list(request.inputs["default"].float_val) == [1435774336.0]


def test_float_tensor_that_exceeds_max_returns_inf():
    # absl::Substitute("$0", DBL_MAX) writes six digits: 1.79769e+308.
    for body, expected in (
        ('{ "instances": [1.79769e+308] }', math.inf),
        ('{ "instances": [-1.79769e+308] }', -math.inf),
    ):
        request, _ = predict(body, default=types_pb2.DT_FLOAT)
        assert list(request.inputs["default"].float_val) == [expected]


def test_float_tensor_that_exceeds_min_returns_zero():
    for body, sign in (('{ "instances": [2.22507e-308] }', 1.0), ('{ "instances": [-2.22507e-308] }', -1.0)):
        request, _ = predict(body, default=types_pb2.DT_FLOAT)
        (value,) = request.inputs["default"].float_val
        assert value == 0.0 and math.copysign(1.0, value) == sign


def test_single_unnamed_tensor_with_signature():
    body = '{"signature_name": "predict_images", "instances": [[1,2]]}'
    request, fmt = predict(body, default=types_pb2.DT_INT32)
    assert fmt is ROW
    assert request.model_spec.signature_name == "predict_images"
    assert_tensor(
        request.inputs["default"], "dtype: DT_INT32 tensor_shape { dim { size: 1 } dim { size: 2 } } int_val: [1, 2]"
    )


def test_tensor_from_non_null_terminated_buffer():
    buffer = b'{"instances": [[1,2],[3,4],[5,6]]}X'
    request, fmt = predict(memoryview(buffer)[:-1], default=types_pb2.DT_INT32)
    assert fmt is ROW
    assert_tensor(
        request.inputs["default"],
        "dtype: DT_INT32 tensor_shape { dim { size: 3 } dim { size: 2 } } int_val: [1, 2, 3, 4, 5, 6]",
    )


@pytest.mark.parametrize(
    ("body", "shape"),
    [
        ('{"instances": [ { "b64" : "aGVsbG8=" }, { "b64": "d29ybGQ=" } ]}', [2]),
        ('{"instances": [ [{ "b64" : "aGVsbG8=" }], [{ "b64": "d29ybGQ=" }] ]}', [2, 1]),
        ('{"instances": [{"default": [ [{ "b64" : "aGVsbG8=" }], [{ "b64": "d29ybGQ=" }] ]}]}', [1, 2, 1]),
    ],
    ids=["single_unnamed_tensor_base64_scalars", "single_unnamed_tensor_base64_lists", "single_named_tensor_base64"],
)
def test_base64_instances(body, shape):
    request, fmt = predict(body, default=types_pb2.DT_STRING)
    assert fmt is ROW
    (default,) = request.inputs.values()
    assert default.dtype == types_pb2.DT_STRING
    assert [dim.size for dim in default.tensor_shape.dim] == shape
    assert list(default.string_val) == [b"hello", b"world"]


def test_multiple_named_tensor():
    body = """{
      "instances": [
        {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"], "float_tensor": [1.0, NaN],
         "dbl_tensor": [NaN]},
        {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"], "float_tensor": [2.0, Infinity],
         "dbl_tensor": [2.0]}
      ]
    }"""
    request, fmt = predict(
        body,
        int_tensor=types_pb2.DT_INT32,
        str_tensor=types_pb2.DT_STRING,
        float_tensor=types_pb2.DT_FLOAT,
        dbl_tensor=types_pb2.DT_DOUBLE,
    )
    assert fmt is ROW
    assert sorted(request.inputs) == ["dbl_tensor", "float_tensor", "int_tensor", "str_tensor"]
    assert_tensor(request.inputs["int_tensor"], INT_2x3x2)
    assert_tensor(
        request.inputs["str_tensor"],
        'dtype: DT_STRING tensor_shape { dim { size: 2 } dim { size: 2 } } string_val: ["foo", "bar", "baz", "bat"]',
    )
    assert_tensor(
        request.inputs["float_tensor"],
        "dtype: DT_FLOAT tensor_shape { dim { size: 2 } dim { size: 2 } } float_val: [1.0, nan, 2.0, inf]",
    )
    assert_tensor(
        request.inputs["dbl_tensor"],
        "dtype: DT_DOUBLE tensor_shape { dim { size: 2 } dim { size: 1 } } double_val: [nan, 2.0]",
    )


def test_single_unnamed_tensor_columnar_format():
    expected = (
        "dtype: DT_INT32 tensor_shape { dim { size: 1 } dim { size: 3 } dim { size: 2 } } int_val: [1, 2, 3, 4, 5, 6]"
    )
    # Named, and with the one input's name left out.
    for body in ('{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]]}}', '{"inputs": [[[1,2],[3,4],[5,6]]]}'):
        request, fmt = predict(body, int_tensor=types_pb2.DT_INT32)
        assert fmt is COLUMNAR
        assert list(request.inputs) == ["int_tensor"]
        assert_tensor(request.inputs["int_tensor"], expected)


def test_multiple_named_tensor_columnar_format():
    body = """{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]], "str_tensor": ["foo", "bar"],
                          "bin_tensor": { "b64" : "aGVsbG8=" }}}"""
    request, fmt = predict(
        body, int_tensor=types_pb2.DT_INT32, str_tensor=types_pb2.DT_STRING, bin_tensor=types_pb2.DT_STRING
    )
    assert fmt is COLUMNAR
    assert len(request.inputs) == 3
    assert_tensor(
        request.inputs["int_tensor"],
        "dtype: DT_INT32 tensor_shape { dim { size: 1 } dim { size: 3 } dim { size: 2 } } int_val: [1, 2, 3, 4, 5, 6]",
    )
    assert_tensor(
        request.inputs["str_tensor"], 'dtype: DT_STRING tensor_shape { dim { size: 2 } } string_val: ["foo", "bar"]'
    )
    # A scalar still has its (empty) tensor_shape set.
    assert request.inputs["bin_tensor"].HasField("tensor_shape")
    assert_tensor(request.inputs["bin_tensor"], 'dtype: DT_STRING tensor_shape {} string_val: "hello"')


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "JSON Parse error: The document is empty"),
        (
            '{"signature_name": 5, "instances": [[1,2],[3,4],[5,6,7]]}',
            'JSON Value: {\n    "signature_name": 5,\n    "instances": [[1, 2], [3, 4], [5, 6, 7]]\n} not formatted'
            " correctly. 'signature_name' key must be a string value.",
        ),
        (
            '{"instances": [[1,2],[3,4],[5,6,7]], "inputs": [[1,2],[3,4],[5,6,7]]}',
            'JSON Value: {\n    "instances": [[1, 2], [3, 4], [5, 6, 7]],\n    "inputs": [[1, 2], [3, 4], [5, 6, 7]]\n}'
            " Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ",
        ),
        (
            '{"instances": [[1,2],[3,4],[5,6,7]]}',
            "Failed to process element: 2 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor size: 2 but"
            " got: 3",
        ),
        (
            '{"instances": [[1,2],[3,4],[[5,6]]]}',
            "Failed to process element: 2 of 'instances' list. Error: INVALID_ARGUMENT: Expecting shape [2] but got:"
            " [1,2]",
        ),
        (
            '{"instances": [1, [1]]}',
            "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting shape [] but got:"
            " [1]",
        ),
        (
            '{"instances": [[1,2],["a", "b"]]}',
            "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: \"a\" Type: String"
            " is not of expected type: int32",
        ),
    ],
)
def test_single_unnamed_tensor_errors(body, message):
    error = predict_error(body, default=types_pb2.DT_INT32)
    assert error.code == INVALID_ARGUMENT
    assert error.message == message


def test_multiple_named_tensor_errors():
    dtypes = {"int_tensor": types_pb2.DT_INT32, "str_tensor": types_pb2.DT_STRING}

    def instances(*items: str) -> str:
        return '{"instances": [' + ", ".join(items) + "]}"

    first = '{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]}'
    # Different shapes across int_tensor instances.
    error = predict_error(
        instances(first, '{"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}'), **dtypes
    )
    assert error.message == (
        "Failed to process element: 1 key: int_tensor of 'instances' list. Error: INVALID_ARGUMENT: Expecting shape"
        " [3,2] but got: [1,3,2]"
    )
    # Different sizes.
    error = predict_error(
        instances(
            '{"int_tensor": [[1,2],[3,4],[5,6],[7,8]], "str_tensor": ["foo", "bar"]}',
            '{"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"]}',
        ),
        **dtypes,
    )
    assert error.message == (
        "Failed to process element: 1 key: int_tensor of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor"
        " size: 8 but got: 6"
    )
    # An object first: the rest must be objects too.
    error = predict_error(instances(first, "[1, 20, 30]", first), **dtypes)
    assert error.message == "Expecting object but got list at item 1 of input list"
    # A list first: the rest must be lists (or values) too.
    error = predict_error(instances('["baz", "bar"]', '{"str_tensor": ["baz", "bat"]}'), str_tensor=types_pb2.DT_STRING)
    assert error.message == "Expecting value/list but got object at item 1 of input list"
    assert error.code == INVALID_ARGUMENT


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


# --- FillClassificationRequestFromJson / FillRegressionRequestFromJson ---------------------------------------------

REQUEST_KINDS = [
    (classification_pb2.ClassificationRequest, fill_classification_request_from_json),
    (regression_pb2.RegressionRequest, fill_regression_request_from_json),
]


@pytest.mark.parametrize(("request_class", "fill"), REQUEST_KINDS)
def test_request_no_context(request_class, fill):
    request = request_class()
    fill(
        '{"examples": [{"names": [ "foo", "bar" ], "ratings": [ 8.0, 9.0 ], "age": 20},'
        ' {"names": [ "baz" ], "ratings": 6.0}]}',
        request,
    )
    expected = text_format.Parse(
        """input { example_list {
          examples { features {
            feature { key: "names" value { bytes_list { value: ["foo", "bar"] } } }
            feature { key: "ratings" value { float_list { value: [8.0, 9.0] } } }
            feature { key: "age" value { int64_list { value: 20 } } }
          } }
          examples { features {
            feature { key: "names" value { bytes_list { value: "baz" } } }
            feature { key: "ratings" value { float_list { value: 6.0 } } }
          } }
        } }""",
        request_class(),
    )
    assert request == expected


@pytest.mark.parametrize(("request_class", "fill"), REQUEST_KINDS)
def test_request_with_context_and_signature(request_class, fill):
    request = request_class()
    fill(
        """{
          "signature_name": "custom_signture",
          "context": {"query": "pizza", "location": [ "sfo" ]},
          "examples": [
            {"names": [ "foo", "bar" ], "ratings": [ 8.0, 9.0, NaN, Infinity ], "age": 20},
            {"names": [ "baz", { "b64": "aGVsbG8=" } ], "ratings": 6.0, "intboolmix": [ 1, true, false ]},
            {"names": "bar", "ratings": -Infinity}
          ]
        }""",
        request,
    )
    expected = text_format.Parse(
        """model_spec { signature_name: "custom_signture" }
        input { example_list_with_context {
          context { features {
            feature { key: "query" value { bytes_list { value: "pizza" } } }
            feature { key: "location" value { bytes_list { value: "sfo" } } }
          } }
          examples { features {
            feature { key: "names" value { bytes_list { value: ["foo", "bar"] } } }
            feature { key: "ratings" value { float_list { value: [8.0, 9.0, nan, inf] } } }
            feature { key: "age" value { int64_list { value: 20 } } }
          } }
          examples { features {
            feature { key: "names" value { bytes_list { value: ["baz", "hello"] } } }
            feature { key: "ratings" value { float_list { value: 6.0 } } }
            feature { key: "intboolmix" value { int64_list { value: [1, 1, 0] } } }
          } }
          examples { features {
            feature { key: "names" value { bytes_list { value: "bar" } } }
            feature { key: "ratings" value { float_list { value: -inf } } }
          } }
        } }""",
        request_class(),
    )
    assert text_format.MessageToString(request) == text_format.MessageToString(expected)


@pytest.mark.parametrize(("request_class", "fill"), REQUEST_KINDS)
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            '{"signature_name": [ "hello" ], "examples": [ { "names": [ "foo", "bar" ] } ]}',
            'JSON Value: {\n    "signature_name": ["hello"],\n    "examples": [{\n            "names": ["foo", "bar"]\n'
            "        }]\n} not formatted correctly. 'signature_name' key must be a string value.",
        ),
        ('{"context": [ { "names": [ "foo", "bar" ] } ]}', "Example must be JSON object but got JSON Array"),
        (
            '{"examples": { "names": [ "foo", "bar" ] }}',
            'JSON Value: {\n    "examples": {\n        "names": ["foo", "bar"]\n    }\n}'
            " Expecting 'examples' value to be an list/array",
        ),
        ('{"examples": [ [ { "names": [ "foo", "bar" ] } ] ]}', "Example must be JSON object but got JSON Array"),
        ('{"examples": [ { "names": [ 10, null ] } ]}', "Feature: names has element with unexpected JSON type: Null"),
        (
            '{"examples": [ { "names": [ 10, 10.0 ] } ]}',
            "Unexpected element type in feature: names expecting type: int64",
        ),
        (
            '{"examples": [ { "names": [ 10, { "test": 10 } ] } ]}',
            "Feature: names has element with unexpected JSON type: Object",
        ),
        ('{"examples": [ { "names": [ [10], 20 ] } ]}', "Feature: names has element with unexpected JSON type: Array"),
        (
            '{"examples": [ { "names": [ 20, 18446744073709551603 ] } ]}',
            "Feature: names has uint64_t element. Only int64_t is supported.",
        ),
    ],
)
def test_json_errors(request_class, fill, body, message):
    with pytest.raises(JsonError) as caught:
        fill(body, request_class())
    assert caught.value.code == INVALID_ARGUMENT
    assert caught.value.message == message


@pytest.mark.parametrize(("request_class", "fill"), REQUEST_KINDS)
def test_examples_key_errors(request_class, fill):
    # TF Serving says "classify" for regress requests too.
    with pytest.raises(JsonError) as caught:
        fill('{"context": {}}', request_class())
    assert caught.value.message == (
        "JSON Value: {\n    \"context\": {}\n} When method is classify, key 'examples' is expected and was not found"
    )
    with pytest.raises(JsonError) as caught:
        fill('{"examples": []}', request_class())
    assert caught.value.message == "JSON Value: {\n    \"examples\": []\n} 'examples' value is an empty array"


# --- MakeJsonFromClassificationResult / MakeJsonFromRegressionResult / MakeJsonFromStatus -------------------------


def test_json_from_classification_result():
    result = text_format.Parse(
        """classifications { classes { label: "car" score: 0.2 } classes { label: "bike" score: 0.7 }
                             classes { label: "bus" score: 0.1 } }
           classifications { classes { label: "car" score: 0.7 } classes { label: "bike" score: 0.1 }
                             classes { label: "bus" score: 0.2 } }""",
        classification_pb2.ClassificationResult(),
    )
    text = make_json_from_classification_result(result)
    assert json.loads(text) == {
        "results": [[["car", 0.2], ["bike", 0.7], ["bus", 0.1]], [["car", 0.7], ["bike", 0.1], ["bus", 0.2]]]
    }
    assert text == (
        '{\n    "results": [[["car", 0.2], ["bike", 0.7], ["bus", 0.1]], [["car", 0.7], ["bike", 0.1], ["bus", 0.2]]'
        "\n    ]\n}"
    )


def test_json_from_regression_result():
    result = text_format.Parse(
        "regressions { value: 0.2 } regressions { value: 0.9 } regressions { value: 1.0 }",
        regression_pb2.RegressionResult(),
    )
    text = make_json_from_regression_result(result)
    assert json.loads(text) == {"results": [0.2, 0.9, 1.0]}
    assert text == '{\n    "results": [0.2, 0.9, 1.0]\n}'


def test_json_from_regression_result_with_non_finite():
    result = regression_pb2.RegressionResult()
    for value in (0.2, math.inf, 1.0, -math.inf, math.nan):
        result.regressions.add(value=value)
    text = make_json_from_regression_result(result)
    assert as_strings(text) == {"results": ["0.2", "Infinity", "1.0", "-Infinity", "NaN"]}
    assert text == '{\n    "results": [0.2, Infinity, 1.0, -Infinity, NaN]\n}'


def test_json_from_result_errors():
    with pytest.raises(JsonError) as caught:
        make_json_from_classification_result(classification_pb2.ClassificationResult())
    assert (caught.value.code, caught.value.message) == (
        INVALID_ARGUMENT,
        "Cannot convert empty ClassificationResults to JSON",
    )
    with pytest.raises(JsonError) as caught:
        make_json_from_regression_result(regression_pb2.RegressionResult())
    assert caught.value.message == "Cannot convert empty RegressionResults to JSON"


@pytest.mark.parametrize("ok", ["OK", grpc.StatusCode.OK, 0])
def test_status_ok(ok):
    assert make_json_from_status(ok, "ignored") == ""


def test_status_error():
    text = make_json_from_status("INVALID_ARGUMENT", 'Bad key: "key"')
    assert json.loads(text) == {"error": 'Bad key: "key"'}
    assert text == '{\n    "error": "Bad key: \\"key\\""\n}'
    text = make_json_from_status(grpc.StatusCode.INVALID_ARGUMENT, "Bad key: 'key'")
    assert text == '{\n    "error": "Bad key: \'key\'"\n}'
    # Only quote, backslash and control characters are escaped (uppercase hex); the rest is written as is.
    assert make_json_from_status(3, "a\\b\x01\n\t/é") == '{\n    "error": "a\\\\b\\u0001\\n\\t/é"\n}'


# --- rapidjson behaviour beyond json_tensor_test.cc ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # GetParseError_En() texts; offsets are byte offsets into the body (a UTF-8 BOM counts).
        ("   ", "JSON Parse error: The document is empty. at offset: 3"),
        ("{", "JSON Parse error: Missing a name for object member. at offset: 1"),
        ('{"a":1,}', "JSON Parse error: Missing a name for object member. at offset: 7"),
        ('{"a" 1}', "JSON Parse error: Missing a colon after a name of object member. at offset: 5"),
        ('{"a":1 "b":2}', "JSON Parse error: Missing a comma or '}' after an object member. at offset: 7"),
        ("[1 2]", "JSON Parse error: Missing a comma or ']' after an array element. at offset: 3"),
        ('{"a":}', "JSON Parse error: Invalid value. at offset: 5"),
        ('{"a":[1,]}', "JSON Parse error: Invalid value. at offset: 8"),
        ('{"a":tru}', "JSON Parse error: Invalid value. at offset: 8"),
        ('{"a":"\\x"}', "JSON Parse error: Invalid escape character in string. at offset: 6"),
        ('{"a":"x\ny"}', "JSON Parse error: Invalid escape character in string. at offset: 7"),
        ('{"a":"\\u12G4"}', "JSON Parse error: Incorrect hex digit after \\u escape in string. at offset: 6"),
        ('{"a":"\\ud800"}', "JSON Parse error: The surrogate pair in string is invalid. at offset: 6"),
        ('{"a":"abc', "JSON Parse error: Missing a closing quotation mark in string. at offset: 9"),
        ('{"a":1e400}', "JSON Parse error: Number too big to be stored in double. at offset: 5"),
        ('{"a":1.}', "JSON Parse error: Miss fraction part in number. at offset: 7"),
        ('{"a":1e}', "JSON Parse error: Miss exponent in number. at offset: 7"),
        (b"\xef\xbb\xbf  {", "JSON Parse error: Missing a name for object member. at offset: 6"),
        ("[1]", "JSON Value: [1] Is not object"),
        # A NaN stops the debug writer, which refuses non-finite numbers.
        ("NaN", "JSON Value:  Is not object"),
    ],
)
def test_parse_errors_are_rapidjsons(body, message):
    error = predict_error(body, x=types_pb2.DT_INT32)
    assert (error.code, error.message) == (INVALID_ARGUMENT, message)


def test_parse_stops_after_the_document_and_keeps_duplicate_keys():
    # kParseStopWhenDoneFlag: anything after the top-level object is never read. FindMember() takes the first
    # of duplicate keys.
    body = '{"signature_name": "first", "signature_name": "second", "instances": [7]} and then {garbage'
    seen = []
    request = predict_pb2.PredictRequest()
    fmt = fill_predict_request_from_json(
        body, lambda name: seen.append(name) or {"x": meta_graph_pb2.TensorInfo(dtype=types_pb2.DT_INT64)}, request
    )
    assert (fmt, seen, request.model_spec.signature_name) == (ROW, ["first"], "first")
    assert list(request.inputs["x"].int64_val) == [7]


def test_numbers_are_rounded_as_rapidjson_rounds_them():
    # Without kParseFullPrecisionFlag rapidjson divides the 17-digit significand by 10^17 after rounding it to a
    # double, one unit in the last place away from the correctly rounded 0.6604876475938242.
    request, _ = predict('{"instances": [0.66048764759382421, 0.5, 1e-5]}', x=types_pb2.DT_DOUBLE)
    assert list(request.inputs["x"].double_val) == [0.6604876475938243, 0.5, 1e-5]
    assert float("0.66048764759382421") == 0.6604876475938242


@pytest.mark.parametrize(
    ("dtype", "body", "field", "values"),
    [
        (types_pb2.DT_INT64, "[-9223372036854775808, 9223372036854775807]", "int64_val", [-(2**63), 2**63 - 1]),
        (types_pb2.DT_UINT64, "[0, 18446744073709551615]", "uint64_val", [0, 2**64 - 1]),
        (types_pb2.DT_UINT32, "[0, 4294967295]", "uint32_val", [0, 2**32 - 1]),
        # IsInt() is the only check, so an int8 takes any int32 (as TF Serving's does).
        (types_pb2.DT_INT8, "[-1, 300]", "int_val", [-1, 300]),
        (types_pb2.DT_BOOL, "[true, false]", "bool_val", [True, False]),
        (types_pb2.DT_FLOAT, "[NaN, Infinity, -Infinity, Inf, -Inf]", "float_val", None),
    ],
)
def test_dtype_conversions(dtype, body, field, values):
    request, _ = predict('{"inputs": ' + body + "}", x=dtype)
    actual = list(getattr(request.inputs["x"], field))
    if values is None:
        assert math.isnan(actual[0]) and actual[1:] == [math.inf, -math.inf, math.inf, -math.inf]
    else:
        assert actual == values


@pytest.mark.parametrize(
    ("dtype", "body", "message"),
    [
        (types_pb2.DT_INT32, "[2147483648]", "JSON Value: 2147483648 Type: Number is not of expected type: int32"),
        (types_pb2.DT_INT64, "[1.0]", "JSON Value: 1.0 Type: Number is not of expected type: int64"),
        (types_pb2.DT_UINT64, "[-1]", "JSON Value: -1 Type: Number is not of expected type: uint64"),
        (types_pb2.DT_BOOL, "[1]", "JSON Value: 1 Type: Number is not of expected type: bool"),
        (types_pb2.DT_FLOAT, '["1"]', 'JSON Value: "1" Type: String is not of expected type: float'),
        (types_pb2.DT_FLOAT, "[null]", "JSON Value: null Type: Null is not of expected type: float"),
        (types_pb2.DT_INT32, '[{"b64": "AA=="}]', 'JSON Value: {\n    "b64": "AA=="\n} Type: Object is not of expected'
         " type: int32"),
        (types_pb2.DT_STRING, '[{"b64": 1}]', 'JSON Value: {\n    "b64": 1\n} not formatted correctly for base64 data'),
        (types_pb2.DT_STRING, '[{"b64": "A"}]', "Unable to base64 decode"),
        # The level printed is one more than the depth the value was found at; the expected level is not.
        (types_pb2.DT_INT32, "[[1], 2]", "JSON Value: 2 found at incorrect level: 2 in the JSON DOM. Expected at"
         " level: 2"),
        (types_pb2.DT_INT32, "[1, [2]]", "Encountered list at unexpected level: 1 expected < 1"),
        (types_pb2.DT_INT32, "[[1, 2], [3]]", "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
    ],
)  # fmt: skip
def test_columnar_value_errors(dtype, body, message):
    error = predict_error('{"inputs": ' + body + "}", x=dtype)
    assert (error.code, error.message) == (INVALID_ARGUMENT, message)


def test_unsupported_input_dtype_is_unimplemented():
    error = predict_error('{"inputs": [1.5]}', x=types_pb2.DT_HALF)
    assert (error.code, error.message) == (grpc.StatusCode.UNIMPLEMENTED, "Conversion of JSON Value: 1.5 to type: half")
    # In the row format the element error is wrapped, with its status text, into an INVALID_ARGUMENT.
    error = predict_error('{"instances": [1.5]}', x=types_pb2.DT_HALF)
    assert (error.code, error.message) == (
        INVALID_ARGUMENT,
        "Failed to process element: 0 of 'instances' list. Error: UNIMPLEMENTED: Conversion of JSON Value: 1.5 to"
        " type: half",
    )


def test_base64_is_decoded_as_absl_does():
    # Whitespace is skipped, padding is optional, but padding that is present must be right.
    body = '{"inputs": [{"b64": "aGVs bG8"}, {"b64": "aGVsbG8="}, {"b64": " d29y\\nbGQ= "}]}'
    request, _ = predict(body, x=types_pb2.DT_STRING)
    assert list(request.inputs["x"].string_val) == [b"hello", b"hello", b"world"]
    assert (
        predict_error('{"inputs": [{"b64": "aGVsbG8=="}]}', x=types_pb2.DT_STRING).message == "Unable to base64 decode"
    )
    assert predict_error('{"inputs": [{"b64": "aGV*"}]}', x=types_pb2.DT_STRING).message == "Unable to base64 decode"


def test_strings_keep_their_bytes():
    # rapidjson does not validate UTF-8: bytes pass into string_val unchanged; escapes are decoded.
    body = b'{"inputs": ["caf\xc3\xa9", "\xff\xfe", "\\u00e9\\ud83d\\ude00\\u0000"]}'
    request, _ = predict(body, x=types_pb2.DT_STRING)
    assert list(request.inputs["x"].string_val) == [b"caf\xc3\xa9", b"\xff\xfe", "é😀\0".encode()]


def test_instances_errors():
    dtypes = {"a": types_pb2.DT_INT32, "b": types_pb2.DT_INT32}
    assert predict_error('{"instances": [1, 2]}', **dtypes).message == (
        "instances is a plain list, but expecting list of objects as multiple input tensors required as per"
        " tensorinfo_map"
    )
    assert predict_error('{"instances": [{"a": 1, "c": 2}]}', **dtypes).message == (
        "Failed to process element: 0 key: c of 'instances' list. Error: INVALID_ARGUMENT: JSON object: does not have"
        " named input: c"
    )
    assert predict_error('{"instances": [{"a": 1}]}', **dtypes).message == (
        "Failed to process element: 0 of 'instances' list. JSON object: {\n    \"a\": 1\n} keys must be equal to: a,b"
    )
    assert predict_error('{"instances": 5}', **dtypes).message == (
        "JSON Value: {\n    \"instances\": 5\n} Expecting 'instances' to be an list/array"
    )
    assert predict_error('{"instances": []}', **dtypes).message == (
        "JSON Value: {\n    \"instances\": []\n} No values in 'instances' array"
    )
    assert predict_error('{"inputs": [1]}', **dtypes).message == (
        "inputs is a plain value/list, but expecting an object as multiple input tensors required as per tensorinfo_map"
    )
    assert predict_error('{"inputs": {"a": 1}}', **dtypes).message == "Missing named input: b in 'inputs' object."
    assert predict_error('{"other": 1}', **dtypes).message == "Missing 'inputs' or 'instances' key"


def test_signature_lookup():
    class UnknownSignature(Exception):
        pass

    def lookup(name):
        raise UnknownSignature(name)

    # Whatever the caller's lookup raises goes through untouched.
    with pytest.raises(UnknownSignature, match="^serving_default$"):
        fill_predict_request_from_json(
            '{"signature_name": "serving_default", "instances": [1]}', lookup, predict_pb2.PredictRequest()
        )
    with pytest.raises(JsonError) as caught:
        fill_predict_request_from_json('{"instances": [1]}', lambda name: {}, predict_pb2.PredictRequest())
    assert caught.value.message == "Failed to get input map for signature: DEFAULT"


def test_response_values_from_tensor_content():
    # tf.make_tensor_proto() puts numbers in tensor_content; they are written as if from the typed fields.
    values = np.array([[0.5, 1.0 / 3.0], [-2.0, 1e-7]], dtype=np.float32)
    packed = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=values.tobytes())
    typed = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=values.ravel().tolist())
    for proto in (packed, typed):
        for size in values.shape:
            proto.tensor_shape.dim.add(size=size)
    assert make_json_from_tensors({"y": packed}, ROW) == make_json_from_tensors({"y": typed}, ROW)
    assert make_json_from_tensors({"y": packed}, ROW) == (
        '{\n    "predictions": [[0.5, 0.333333343], [-2.0, 1e-07]\n    ]\n}'
    )


def test_response_errors_beyond_the_cpp():
    short = tensor("dtype: DT_INT32 tensor_shape { dim { size: 3 } } int_val: [1, 2]")
    with pytest.raises(JsonError) as caught:
        make_json_from_tensors({"y": short}, ROW)
    assert caught.value.message == "Tensor name: y has 2 values, fewer than its tensor_shape needs"
    with pytest.raises(JsonError) as caught:
        make_json_from_tensors({"y": short}, JsonPredictRequestFormat.INVALID)
    assert caught.value.message == "Invalid request format"
    # A scalar is fine in the columnar format.
    scalar = tensor("dtype: DT_STRING string_val: 'a\"b'")
    assert make_json_from_tensors({"y": scalar}, COLUMNAR) == '{\n    "outputs": "a\\"b"\n}'


# --- Properties ---------------------------------------------------------------------------------------------------


def _random_string(rnd: random.Random) -> bytes:
    return "".join(rnd.choice('ab"\\\n\x01é😀 ') for _ in range(rnd.randint(0, 5))).encode()


DTYPES = {
    types_pb2.DT_FLOAT: ("float_val", lambda rnd: float(np.float32(rnd.uniform(-1e6, 1e6) * rnd.random()))),
    # Short decimals: rapidjson reads some 17-digit numbers one unit in the last place off (see above).
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
