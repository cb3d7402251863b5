"""serving/json_tensor.py's FillClassificationRequestFromJson / FillRegressionRequestFromJson,
MakeJsonFromClassificationResult / MakeJsonFromRegressionResult and MakeJsonFromStatus against TF Serving's
json_tensor_test.cc, case by case (same names, snake case). Responses are compared byte for byte with what
rapidjson's PrettyWriter writes, and messages in full where the C++ fixes them."""

from __future__ import annotations

import json
import math

import grpc
import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import classification_pb2, regression_pb2

from serving.json_tensor import (
    JsonError,
    fill_classification_request_from_json,
    fill_regression_request_from_json,
    make_json_from_classification_result,
    make_json_from_regression_result,
    make_json_from_status,
)
from tests.serving.json_cases import INVALID_ARGUMENT, as_strings

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
