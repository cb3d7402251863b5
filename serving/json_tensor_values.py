"""JSON values read into tensor values as TF Serving's json_tensor.cc reads them (FillTensorProto(),
AddValueToTensor(), base64 objects), with its error messages, for serving/json_tensor.py."""

from __future__ import annotations

import base64
import binascii
import itertools
import re
from collections.abc import Callable
from typing import NamedTuple

import grpc
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.json_status import JsonError, invalid
from serving.rapidjson_reader import JsonObject, utf8
from serving.rapidjson_writer import debug_string
from serving.tensors import dtype_name

_T = types_pb2


def json_type(value) -> str:
    """JsonTypeString()."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, JsonObject):
        return "Object"
    if isinstance(value, list):
        return "Array"
    return "String" if isinstance(value, str) else "Number"


def format_error(value, message: str) -> JsonError:
    """FormatError()."""
    return invalid(f"JSON Value: {debug_string(value)} {message}")


def _type_error(value, dtype: int) -> JsonError:
    """TypeError()."""
    return invalid(
        f"JSON Value: {debug_string(value)} Type: {json_type(value)} is not of expected type: {dtype_name(dtype)}"
    )


def c_str(name: str) -> str:
    # json_tensor.cc copies member names with `string name = kv.name.GetString()`, which stops at a NUL.
    return name.split("\0", 1)[0]


def _int_range(low: int, high: int) -> Callable[[object], bool]:
    """rapidjson's IsInt()/IsUint()/IsInt64()/IsUint64(): an integer token within range (never a double)."""
    return lambda value: type(value) is int and low <= value <= high


_is_int32 = _int_range(-(2**31), 2**31 - 1)
_is_uint32 = _int_range(0, 2**32 - 1)
is_int64 = _int_range(-(2**63), 2**63 - 1)
_is_uint64 = _int_range(0, 2**64 - 1)


def _is_number(value) -> bool:
    return type(value) is int or type(value) is float


class _TensorField(NamedTuple):
    """How AddValueToTensor() fills one dtype."""

    name: str  # the TensorProto field
    accepts: Callable[[object], bool]  # the rapidjson Is*() check
    convert: Callable  # the Get*() conversion
    kinds: set  # Python types a whole list of leaves may be checked against at once...
    bounds: tuple[int, int] | None  # ...and integer bounds


_INT32_BOUNDS, _INT64_BOUNDS = (-(2**31), 2**31 - 1), (-(2**63), 2**63 - 1)
_TENSOR_FIELDS = {
    _T.DT_FLOAT: _TensorField("float_val", _is_number, float, {int, float}, None),
    _T.DT_DOUBLE: _TensorField("double_val", _is_number, float, {int, float}, None),
    _T.DT_INT32: _TensorField("int_val", _is_int32, int, {int}, _INT32_BOUNDS),
    _T.DT_INT16: _TensorField("int_val", _is_int32, int, {int}, _INT32_BOUNDS),
    _T.DT_INT8: _TensorField("int_val", _is_int32, int, {int}, _INT32_BOUNDS),
    _T.DT_UINT8: _TensorField("int_val", _is_int32, int, {int}, _INT32_BOUNDS),
    _T.DT_STRING: _TensorField("string_val", lambda v: isinstance(v, str), utf8, {str}, None),
    _T.DT_INT64: _TensorField("int64_val", is_int64, int, {int}, _INT64_BOUNDS),
    _T.DT_BOOL: _TensorField("bool_val", lambda v: isinstance(v, bool), bool, {bool}, None),
    _T.DT_UINT32: _TensorField("uint32_val", _is_uint32, int, {int}, (0, 2**32 - 1)),
    _T.DT_UINT64: _TensorField("uint64_val", _is_uint64, int, {int}, (0, 2**64 - 1)),
}


def is_base64_object(value) -> bool:
    """IsValBase64Object(): exactly one member, "b64", holding a string."""
    if not isinstance(value, JsonObject) or len(value.members) != 1:
        return False
    name, member = value.members[0]
    return name == "b64" and isinstance(member, str)


_BASE64_TEXT = re.compile(rb"([A-Za-z0-9+/\s]*)([=.\s]*)")


def _base64_unescape(text: str) -> bytes | None:
    """absl::Base64Unescape(): whitespace ignored, padding ('=' or '.') optional but if present exactly right."""
    if len(text) % 4 == 0:  # the usual canonical form (padded, no whitespace) decodes alike; the rest is checked below
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            pass
    match = _BASE64_TEXT.fullmatch(utf8(text))
    if match is None:
        return None
    data = re.sub(rb"\s", b"", match.group(1))
    left_over = len(data) % 4
    pads = len(re.sub(rb"\s", b"", match.group(2)))
    if left_over == 1 or pads not in (0, {0: 0, 2: 2, 3: 1}[left_over]):
        return None
    return base64.b64decode(data + b"=" * (-len(data) % 4))


def decode_base64_object(value) -> bytes:
    """JsonDecodeBase64Object()."""
    if not is_base64_object(value):
        raise invalid(f"JSON Value: {debug_string(value)} not formatted correctly for base64 data")
    decoded = _base64_unescape(value.members[0][1])
    if decoded is None:
        raise invalid("Unable to base64 decode")
    return decoded


def _tensor_value(value, dtype: int):
    """One leaf: a base64 object for strings, else AddValueToTensor()'s checked conversion."""
    if isinstance(value, JsonObject):
        if dtype == _T.DT_STRING:
            return decode_base64_object(value)
        raise _type_error(value, dtype)
    field = _TENSOR_FIELDS.get(dtype)
    if field is None:
        raise JsonError(
            grpc.StatusCode.UNIMPLEMENTED,
            f"Conversion of JSON Value: {debug_string(value)} to type: {dtype_name(dtype)}",
        )
    if not field.accepts(value):
        raise _type_error(value, dtype)
    return field.convert(value)


def _leaf_list(values: list, dtype: int) -> list | None:
    """The converted values of a list of plain leaves all of the dtype's kind, or None to check one by one."""
    if not values:
        return []
    field = _TENSOR_FIELDS.get(dtype)
    if field is None or not set(map(type, values)) <= field.kinds:
        return None
    if field.bounds and (min(values) < field.bounds[0] or max(values) > field.bounds[1]):
        return None
    return list(map(field.convert, values))


def dense_shape(value) -> list[int]:
    """GetDenseTensorShape(): list sizes down the chain of first elements."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def tensor_values(value, shape: list[int], dtype: int) -> list:
    """FillTensorProto(): the leaves of `value` in row-major order, checked against `shape` and converted."""
    # Fast path: flatten level by level, then check all leaves at once. Anything irregular (and base64 objects)
    # takes the walk below, which finds the first problem in document order as the C++ recursion does.
    items = [value]
    for size in shape:
        if not all(type(item) is list and len(item) == size for item in items):
            break
        items = list(itertools.chain.from_iterable(items))
    else:
        leaves = _leaf_list(items, dtype)
        if leaves is not None:
            return leaves

    rank = len(shape)
    out: list = []
    pending = [(value, 0)]
    while pending:
        item, level = pending.pop()
        if not isinstance(item, list):
            # A dense tensor's DOM has every value at the same (leaf) level, the rank.
            if level != rank:
                raise invalid(
                    f"JSON Value: {debug_string(item)} found at incorrect level: {level + 1} in the JSON DOM."
                    f" Expected at level: {rank}"
                )
            out.append(_tensor_value(item, dtype))
            continue
        if level >= rank:
            raise invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
        if len(item) != shape[level]:
            raise invalid(
                f"Encountered list at unexpected size: {len(item)} at level: {level} expected size: {shape[level]}"
            )
        pending.extend((element, level + 1) for element in reversed(item))
    return out


def set_tensor(tensor: tensor_pb2.TensorProto, dtype: int, shape: list[int], values: list) -> None:
    tensor.dtype = dtype
    tensor.tensor_shape.SetInParent()  # mutable_tensor_shape(): present even for a scalar
    for size in shape:
        tensor.tensor_shape.dim.add(size=size)
    if values:
        getattr(tensor, _TENSOR_FIELDS[dtype].name).extend(values)
