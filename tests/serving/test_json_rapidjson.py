"""The rapidjson behaviour serving/json_tensor.py reproduces beyond TF Serving's json_tensor_test.cc: parse-error
texts and offsets, number rounding, dtype conversions and their messages, base64 and string bytes, and what it writes
from tensor_content."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import predict_pb2

from serving.json_tensor import (
    JsonError,
    JsonPredictRequestFormat,
    fill_predict_request_from_json,
    make_json_from_tensors,
)
from tests.serving.json_cases import COLUMNAR, INVALID_ARGUMENT, ROW, predict, predict_error, tensor

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
