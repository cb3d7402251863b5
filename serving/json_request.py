"""REST request bodies read into TF Serving's request protos, as json_tensor.cc's FillPredictRequestFromJson(),
FillClassificationRequestFromJson() and FillRegressionRequestFromJson() read them."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping

from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2, predict_pb2, regression_pb2

from serving.json_status import JsonError, invalid, printable
from serving.json_tensor_values import (
    c_str,
    decode_base64_object,
    dense_shape,
    format_error,
    is_base64_object,
    is_int64,
    json_type,
    set_tensor,
    tensor_values,
)
from serving.rapidjson_numbers import ParseError
from serving.rapidjson_reader import MISSING, JsonObject, read_document, utf8
from serving.rapidjson_writer import debug_string


class JsonPredictRequestFormat(enum.Enum):
    """JsonPredictRequestFormat: which key held the request's tensors, and so which key answers."""

    INVALID = 0
    ROW = 1  # "instances" in, "predictions" out
    COLUMNAR = 2  # "inputs" in, "outputs" out


def _parse_json(body: str | bytes):
    """ParseJson(): the body's top-level object."""
    if isinstance(body, str):
        try:
            data = body.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            data = body.encode("utf-8", "surrogatepass")
    else:
        data = bytes(body)
    if not data:
        raise invalid("JSON Parse error: The document is empty")
    try:
        doc = read_document(data)
    except ParseError as exc:
        raise invalid(f"JSON Parse error: {exc.message} at offset: {exc.offset}") from None
    if not isinstance(doc, JsonObject):
        raise format_error(doc, "Is not object")
    return doc


def _fill_signature(doc: JsonObject, request) -> None:
    """FillSignature(): the optional "signature_name" into model_spec."""
    name = doc.find("signature_name")
    if name is MISSING:
        return
    if not isinstance(name, str):
        raise invalid(
            f"JSON Value: {debug_string(doc)} not formatted correctly. 'signature_name' key must be a string value."
        )
    request.model_spec.signature_name = printable(name)


# ---------------------------------------------------------------------------------------------------------------
# Predict requests.

TensorInfoMap = Mapping[str, meta_graph_pb2.TensorInfo]


def fill_predict_request_from_json(
    body: str | bytes,
    get_signature_inputs: Callable[[str], TensorInfoMap],
    request: predict_pb2.PredictRequest,
) -> JsonPredictRequestFormat:
    """FillPredictRequestFromJson(): fill `request.model_spec.signature_name` and `request.inputs` from a REST
    predict body, "instances" (row) or "inputs" (columnar). `get_signature_inputs(signature_name)` returns the
    signature's input TensorInfos ("" = default signature); whatever it raises propagates."""
    doc = _parse_json(body)
    _fill_signature(doc, request)
    signature_name = request.model_spec.signature_name
    infos = get_signature_inputs(signature_name)
    if not infos:
        raise invalid(f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")

    instances, inputs = doc.find("instances"), doc.find("inputs")
    if instances is not MISSING:
        if inputs is not MISSING:
            raise format_error(
                doc, "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "
            )
        if not isinstance(instances, list):
            raise format_error(doc, "Expecting 'instances' to be an list/array")
        if not instances:
            raise format_error(doc, "No values in 'instances' array")
        _fill_from_instances(instances, infos, request.inputs)
        return JsonPredictRequestFormat.ROW
    if inputs is not MISSING:
        _fill_from_inputs(inputs, infos, request.inputs)
        return JsonPredictRequestFormat.COLUMNAR
    raise invalid("Missing 'inputs' or 'instances' key")


def _is_element_object(value) -> bool:
    return isinstance(value, JsonObject) and not is_base64_object(value)


def _fill_from_instances(instances: list, infos: TensorInfoMap, tensor_map) -> None:
    """FillTensorMapFromInstancesList(): every instance one row of each named input; all rows must agree in
    shape, and the batch size becomes the first dimension."""
    if not isinstance(instances[0], JsonObject) and len(infos) > 1:
        raise invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as per"
            " tensorinfo_map"
        )
    # C++ iterates a protobuf Map (unspecified order) and a std::set (sorted); sorted names stand for both.
    input_names = sorted(infos)
    elements_are_objects = _is_element_object(instances[0])
    tensor_map.clear()
    values: dict[str, list] = {}  # the tensor values so far, per input
    sizes: dict[str, int] = {}  # values per instance, per input
    shapes: dict[str, list[int]] = {}  # shape per instance, per input

    def add_instance_item(item, name: str) -> None:
        """AddInstanceItem()."""
        if name not in infos:
            raise invalid(f"JSON object: does not have named input: {name}")
        shape = dense_shape(item)
        item_values = tensor_values(item, shape, infos[name].dtype)
        if name not in sizes:
            sizes[name], shapes[name] = len(item_values), shape
        elif sizes[name] != len(item_values):
            raise invalid(f"Expecting tensor size: {sizes[name]} but got: {len(item_values)}")
        elif shapes[name] != shape:
            raise invalid(f"Expecting shape {_shape_string(shapes[name])} but got: {_shape_string(shape)}")
        values.setdefault(name, []).extend(item_values)

    for count, element in enumerate(instances):
        if elements_are_objects:
            if not _is_element_object(element):
                raise invalid(f"Expecting object but got list at item {count} of input list")
            keys = set()
            for key, item in element.members:
                name = c_str(key)
                keys.add(name)
                try:
                    add_instance_item(item, name)
                except JsonError as exc:
                    raise invalid(
                        f"Failed to process element: {count} key: {name} of 'instances' list."
                        f" Error: {exc.status_string()}"
                    ) from None
            if keys != set(input_names):
                raise invalid(
                    f"Failed to process element: {count} of 'instances' list. JSON object:"
                    f" {debug_string(element)} keys must be equal to: {','.join(input_names)}"
                )
        else:
            if _is_element_object(element):
                raise invalid(f"Expecting value/list but got object at item {count} of input list")
            try:
                add_instance_item(element, input_names[0])
            except JsonError as exc:
                raise invalid(
                    f"Failed to process element: {count} of 'instances' list. Error: {exc.status_string()}"
                ) from None

    for name, name_values in values.items():
        set_tensor(tensor_map[name], infos[name].dtype, [len(instances), *shapes[name]], name_values)


def _shape_string(shape: list[int]) -> str:
    """ShapeToString(): "[3,2]"."""
    return "[" + ",".join(map(str, shape)) + "]"


def _fill_from_inputs(inputs, infos: TensorInfoMap, tensor_map) -> None:
    """FillTensorMapFromInputsMap(): one value or list for a single input, else an object keyed by input name;
    each input keeps its own shape."""
    if not isinstance(inputs, JsonObject) or is_base64_object(inputs):
        if len(infos) > 1:
            raise invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required as per"
                " tensorinfo_map"
            )
        items = {next(iter(infos)): inputs}
    else:
        items = {name: inputs.find(name) for name in sorted(infos)}  # filled in this order, as C++ iterates
    for name, item in items.items():
        if item is MISSING:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        dtype = infos[name].dtype
        shape = dense_shape(item)
        tensor = tensor_map[name]
        tensor.Clear()
        set_tensor(tensor, dtype, shape, tensor_values(item, shape, dtype))


# ---------------------------------------------------------------------------------------------------------------
# Classify and regress requests.

_FEATURE_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}


def _add_feature_value(value, name: str, feature: feature_pb2.Feature) -> None:
    """AddValueToFeature(): strings and base64 objects are bytes, doubles float, integers and bools int64."""
    if value is None or isinstance(value, list) or (isinstance(value, JsonObject) and not is_base64_object(value)):
        raise invalid(f"Feature: {name} has element with unexpected JSON type: {json_type(value)}")
    if isinstance(value, (str, JsonObject)):
        kind = "bytes_list"
    elif isinstance(value, float):
        kind = "float_list"
    else:
        kind = "int64_list"
    current = feature.WhichOneof("kind")
    if current not in (None, kind):
        raise invalid(f"Unexpected element type in feature: {name} expecting type: {_FEATURE_KIND_NAMES[current]}")
    if isinstance(value, JsonObject):
        value = decode_base64_object(value)
    elif isinstance(value, str):
        value = utf8(value)
    elif type(value) is int and not is_int64(value):
        raise invalid(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
    getattr(feature, kind).value.append(int(value) if isinstance(value, bool) else value)


def _fill_example(value, example: example_pb2.Example) -> None:
    """MakeExampleFromJsonObject(): each member a feature, its value one element or a list of them."""
    if not isinstance(value, JsonObject):
        raise invalid(f"Example must be JSON object but got JSON {json_type(value)}")
    for key, content in value.members:
        name = c_str(key)
        feature = feature_pb2.Feature()
        for element in content if isinstance(content, list) else (content,):
            _add_feature_value(element, name, feature)
        example.features.feature[name].CopyFrom(feature)


def _fill_classify_regress_request(body: str | bytes, request) -> None:
    """FillClassifyRegressRequestFromJson()."""
    doc = _parse_json(body)
    _fill_signature(doc, request)
    context = doc.find("context")
    if context is not MISSING:
        request.input.example_list_with_context.context.SetInParent()  # mutable_context(): set even if {}
        _fill_example(context, request.input.example_list_with_context.context)
    examples = doc.find("examples")
    if examples is MISSING:
        # TF Serving says "classify" for regress requests too.
        raise format_error(doc, "When method is classify, key 'examples' is expected and was not found")
    if not isinstance(examples, list):
        raise format_error(doc, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise format_error(doc, "'examples' value is an empty array")
    example_list = request.input.example_list_with_context if context is not MISSING else request.input.example_list
    for value in examples:
        _fill_example(value, example_list.examples.add())


def fill_classification_request_from_json(body: str | bytes, request: classification_pb2.ClassificationRequest) -> None:
    """FillClassificationRequestFromJson(): "signature_name", "context" and "examples" into `request`."""
    _fill_classify_regress_request(body, request)


def fill_regression_request_from_json(body: str | bytes, request: regression_pb2.RegressionRequest) -> None:
    """FillRegressionRequestFromJson(): as for classification."""
    _fill_classify_regress_request(body, request)
