"""Response protos and statuses written as TF Serving's REST JSON, as json_tensor.cc's MakeJsonFromTensors(),
MakeJsonFromClassificationResult(), MakeJsonFromRegressionResult() and MakeJsonFromStatus() write them."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Mapping
from fractions import Fraction

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import classification_pb2, regression_pb2

from serving.json_request import JsonPredictRequestFormat
from serving.json_status import invalid, printable
from serving.rapidjson_numbers import double_bits
from serving.rapidjson_writer import PrettyWriter, quote
from serving.tensors import dtype_name

_T = types_pb2
_FLOAT32_BITS = struct.Struct("<f")


def _round_to_float32(value: float) -> float:
    return _FLOAT32_BITS.unpack(_FLOAT32_BITS.pack(value))[0]


def _parse_float32(text: str) -> float:
    """absl::SimpleAtof(): the float32 nearest the decimal text (not via a double, which can round twice)."""
    as_double = float(text)
    single = _round_to_float32(as_double)
    bits = double_bits(as_double)
    # Rounding twice can only go wrong when the double lands exactly halfway between two float32s.
    if single != as_double and (abs(as_double) < 2.0**-126 or bits & 0x1FFFFFFF == 0x10000000):
        exact = Fraction(text)
        other = float(np.nextafter(np.float32(single), np.float32(math.copysign(math.inf, as_double - single))))
        midpoint = Fraction(single) / 2 + Fraction(other) / 2
        if exact != midpoint and (exact > midpoint) == (other > single):
            single = other
    return single


def _write_decimal(value: float, is_float32: bool) -> str:
    """WriteDecimal(): absl::StrCat()'s six digits when they read back as the same number, else max_digits10;
    ".0" on whole numbers not in exponent form; NaN and [-]Infinity for the rest."""
    if math.isfinite(value):
        text = f"{value:g}"
        if (_parse_float32(text) if is_float32 else float(text)) != value:
            text = f"{value:.9g}" if is_float32 else f"{value:.17g}"
        if "." not in text and "e" not in text:
            text += ".0"
        return text
    if math.isnan(value):
        return "NaN"
    return "-Infinity" if value < 0 else "Infinity"


_NON_FINITE_NAMES = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _write_decimals(values, is_float32: bool) -> list[str]:
    """_write_decimal() over a whole tensor, with the read-back check done by numpy."""
    texts = [f"{value:g}" for value in values]
    read_back = np.array(texts, dtype=np.float64)
    if is_float32:
        as_double = read_back
        with np.errstate(over="ignore"):
            read_back = as_double.astype(np.float32).astype(np.float64)
        # Where rounding via double may be wrong (see _parse_float32), ask the exact parser.
        bits = as_double.view(np.uint64)
        unsure = (read_back != as_double) & (((bits & 0x1FFFFFFF) == 0x10000000) | (np.abs(as_double) < 2.0**-126))
        for i in np.flatnonzero(unsure):
            read_back[i] = _parse_float32(texts[i])
    spec = ".9g" if is_float32 else ".17g"
    for i in np.flatnonzero(read_back != np.asarray(values, dtype=np.float64)):
        texts[i] = format(values[i], spec)
    return [_NON_FINITE_NAMES.get(text) or (text if "." in text or "e" in text else text + ".0") for text in texts]


def _format_floats(values) -> list[str]:
    return _write_decimals(values, True)


def _format_doubles(values) -> list[str]:
    return _write_decimals(values, False)


def _format_ints(values) -> list[str]:
    return list(map(str, values))


def _format_bools(values) -> list[str]:
    return ["true" if value else "false" for value in values]


# AddSingleValueAndAdvance(): dtype -> (typed field, little-endian numpy dtype of tensor_content, formatter).
_OUTPUT_FIELDS = {
    _T.DT_FLOAT: ("float_val", "<f4", _format_floats),
    _T.DT_DOUBLE: ("double_val", "<f8", _format_doubles),
    _T.DT_INT32: ("int_val", "<i4", _format_ints),
    _T.DT_INT16: ("int_val", "<i2", _format_ints),
    _T.DT_INT8: ("int_val", "i1", _format_ints),
    _T.DT_UINT8: ("int_val", "u1", _format_ints),
    _T.DT_STRING: ("string_val", None, None),
    _T.DT_INT64: ("int64_val", "<i8", _format_ints),
    _T.DT_BOOL: ("bool_val", "?", _format_bools),
    _T.DT_UINT32: ("uint32_val", "<u4", _format_ints),
    _T.DT_UINT64: ("uint64_val", "<u8", _format_ints),
}


class _TensorLeaves:
    """A response tensor's values in order, as JSON tokens (AddSingleValueAndAdvance()'s `offset`). Values come
    from the typed field or, for tensors built with tensor_content, from that; they are rendered on first use,
    so a tensor with no values never fails on its dtype (as in C++)."""

    def __init__(self, name: str, tensor: tensor_pb2.TensorProto):
        self.name, self.tensor = name, tensor
        # IsNamedTensorBytes(): a string tensor whose name ends in "_bytes" is written base64-encoded.
        self.as_bytes = tensor.dtype == _T.DT_STRING and name.endswith("_bytes")
        self.offset = 0
        self._tokens: list[str] | None = None

    def take(self, count: int) -> list[str]:
        if count <= 0:
            return []
        if self._tokens is None:
            self._tokens = self._render()
        end = self.offset + count
        if end > len(self._tokens):
            # C++ would read past the end of the typed field here.
            raise invalid(f"Tensor name: {self.name} has {len(self._tokens)} values, fewer than its tensor_shape needs")
        tokens = self._tokens[self.offset : end]
        self.offset = end
        return tokens

    def _render(self) -> list[str]:
        tensor = self.tensor
        spec = _OUTPUT_FIELDS.get(tensor.dtype)
        if spec is None:
            raise invalid(f"Failed to write JSON value for tensor type: {dtype_name(tensor.dtype)}")
        field, content_dtype, formatter = spec
        if tensor.dtype == _T.DT_STRING:
            if self.as_bytes:
                return [base64.b64encode(value).decode("ascii") for value in tensor.string_val]
            # Bytes that are not UTF-8 become U+FFFD: C++ writes them raw, which no JSON reader accepts.
            return [quote(value.decode("utf-8", "replace")) for value in tensor.string_val]
        if tensor.tensor_content:
            item_type = np.dtype(content_dtype)
            count = len(tensor.tensor_content) // item_type.itemsize
            values = np.frombuffer(tensor.tensor_content, dtype=item_type, count=count).tolist()
        else:
            values = list(getattr(tensor, field))
        return formatter(values)


def _add_tensor_values(writer: PrettyWriter, leaves: _TensorLeaves, dims: list[int], dim: int) -> None:
    """AddTensorValues(): dimensions dims[dim:] as nested arrays; past the last one, a bare value."""
    if dim > len(dims) - 1:
        (token,) = leaves.take(1)
        if leaves.as_bytes:
            writer.base64_object(token)
        else:
            writer.raw(token)
    elif not leaves.as_bytes:
        writer.raw_arrays(leaves.take(math.prod(max(d, 0) for d in dims[dim:])), dims[dim:])
    elif dim == len(dims) - 1:
        writer.start_array()
        for token in leaves.take(dims[dim]):
            writer.base64_object(token)
        writer.end_array()
    else:
        writer.start_array()
        for _ in range(dims[dim]):
            _add_tensor_values(writer, leaves, dims, dim + 1)
        writer.end_array()


def make_json_from_tensors(outputs: Mapping[str, tensor_pb2.TensorProto], fmt: JsonPredictRequestFormat) -> str:
    """MakeJsonFromTensors(): {"predictions": [...]} (row: one entry per batch item, an object per item when
    there are several outputs) or {"outputs": ...} (columnar: the tensor, or an object of tensors). Outputs are
    written in name order (C++ follows a protobuf Map's unspecified order)."""
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    if fmt is JsonPredictRequestFormat.INVALID:
        raise invalid("Invalid request format")
    names = sorted(outputs)
    dims = {name: [dim.size for dim in outputs[name].tensor_shape.dim] for name in names}
    leaves = {name: _TensorLeaves(name, outputs[name]) for name in names}
    several = len(names) > 1
    writer = PrettyWriter()
    writer.start_object()

    if fmt is JsonPredictRequestFormat.ROW:
        # MakeRowFormatJsonFromTensors(): the first dimension is the batch, the same for every output.
        batch_size = -1
        for name in names:
            if not dims[name]:
                raise invalid(f"Tensor name: {name} has no shape information ")
            if batch_size >= 0 and batch_size != dims[name][0]:
                raise invalid(
                    f"Tensor name: {name} has inconsistent batch size: {dims[name][0]} expecting: {batch_size}"
                )
            batch_size = dims[name][0]
        writer.key("predictions")
        writer.start_array()
        for _ in range(batch_size):
            if several:
                writer.start_object()
            writer.single_line_arrays = True
            for name in names:
                if several:
                    writer.key(name)
                _add_tensor_values(writer, leaves[name], dims[name], 1)
            writer.single_line_arrays = False
            if several:
                writer.end_object()
        writer.end_array()
    else:
        # MakeColumnarFormatJsonFromTensors()
        writer.key("outputs")
        if several:
            writer.start_object()
        for name in names:
            if several:
                writer.key(name)
            _add_tensor_values(writer, leaves[name], dims[name], 0)
        if several:
            writer.end_object()

    writer.end_object()
    return writer.text()


def make_json_from_classification_result(result: classification_pb2.ClassificationResult) -> str:
    """MakeJsonFromClassificationResult(): {"results": [[["label", score], ...], ...]}, one list per example."""
    if not result.classifications:
        raise invalid("Cannot convert empty ClassificationResults to JSON")
    writer = PrettyWriter()
    writer.start_object()
    writer.key("results")
    writer.start_array()
    for classifications in result.classifications:
        writer.single_line_arrays = True
        writer.start_array()
        for element in classifications.classes:
            writer.start_array()
            writer.string(element.label)
            writer.raw(_write_decimal(element.score, True))
            writer.end_array()
        writer.end_array()
        writer.single_line_arrays = False
    writer.end_array()
    writer.end_object()
    return writer.text()


def make_json_from_regression_result(result: regression_pb2.RegressionResult) -> str:
    """MakeJsonFromRegressionResult(): {"results": [value, ...]}, one value per example."""
    if not result.regressions:
        raise invalid("Cannot convert empty RegressionResults to JSON")
    writer = PrettyWriter()
    writer.start_object()
    writer.key("results")
    writer.single_line_arrays = True
    values = [_write_decimal(regression.value, True) for regression in result.regressions]
    writer.raw_arrays(values, [len(values)])
    writer.end_object()
    return writer.text()


def make_json_from_status(code: str | grpc.StatusCode | int, message: str) -> str:
    """MakeJsonFromStatus(): {"error": "<message>"}, or "" when the status is OK."""
    if isinstance(code, grpc.StatusCode):
        ok = code is grpc.StatusCode.OK
    elif isinstance(code, int):
        ok = code == 0
    else:
        ok = code.upper() == "OK"
    if ok:
        return ""
    writer = PrettyWriter()
    writer.start_object()
    writer.key("error")
    writer.string(printable(message))
    writer.end_object()
    return writer.text()
