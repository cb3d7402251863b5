"""TF Serving's REST JSON codec, ported from tensorflow_serving/util/json_tensor.{h,cc}.

Requests are read the way TF Serving reads them, with rapidjson 1.1.0 (`kParseIterativeFlag |
kParseNanAndInfFlag | kParseStopWhenDoneFlag`), and responses are written the way its `PrettyWriter` writes
them, so status messages and response bodies match TF Serving's byte for byte. This module is the codec's API;
the port is in serving/:

  json_request.py        request bodies → PredictRequest / ClassificationRequest / RegressionRequest
  json_tensor_values.py  JSON values → tensor values (FillTensorProto, AddValueToTensor, base64 objects)
  json_response.py       response tensors, results and statuses → JSON (MakeJsonFrom*, WriteDecimal)
  json_status.py         JsonError, the status these return
  rapidjson_reader.py    rapidjson's DOM and iterative reader (Python's json where it provably agrees)
  rapidjson_writer.py    rapidjson's PrettyWriter, and the DOM written back for error messages
  rapidjson_numbers.py   rapidjson's ParseNumber() and dtoa()

Strings keep the bytes rapidjson keeps: text is decoded with "surrogateescape", so bytes that are not UTF-8
survive into `string_val` unchanged.

Where this differs from the C++ on purpose: several named tensors are taken in name order (C++ follows a
protobuf Map's unspecified order); responses read `tensor_content` too, and a tensor with fewer values than its
shape needs is an INVALID_ARGUMENT (C++ reads past the end); bytes that are not UTF-8 in a response string or a
message become U+FFFD (C++ writes them raw).
"""

from serving.json_request import (
    JsonPredictRequestFormat,
    fill_classification_request_from_json,
    fill_predict_request_from_json,
    fill_regression_request_from_json,
)
from serving.json_response import (
    make_json_from_classification_result,
    make_json_from_regression_result,
    make_json_from_status,
    make_json_from_tensors,
)
from serving.json_status import JsonError

__all__ = [
    "JsonError",
    "JsonPredictRequestFormat",
    "fill_classification_request_from_json",
    "fill_predict_request_from_json",
    "fill_regression_request_from_json",
    "make_json_from_classification_result",
    "make_json_from_regression_result",
    "make_json_from_status",
    "make_json_from_tensors",
]
