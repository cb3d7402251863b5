"""serving/json_tensor.py's FillPredictRequestFromJson against TF Serving's json_tensor_test.cc, case by case (same
names, snake case). TF Serving's tests compare messages by substring; here they are compared in full where the C++
fixes them. The rest of json_tensor_test.cc: test_json_from_tensors.py and test_json_classify_regress.py; the
rapidjson behaviour beyond it: test_json_rapidjson.py."""

from __future__ import annotations

import math

import pytest
from google.protobuf import text_format
from tensorflow.core.framework import tensor_pb2, types_pb2

from tests.serving.json_cases import COLUMNAR, INVALID_ARGUMENT, ROW, INT_2x3x2, predict, predict_error, tensor


def assert_tensor(actual: tensor_pb2.TensorProto, expected_text: str) -> None:
    # Text form, so NaN compares equal to NaN (as EqualsProto does).
    assert text_format.MessageToString(actual) == text_format.MessageToString(tensor(expected_text))


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
