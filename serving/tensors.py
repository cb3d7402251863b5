"""TensorProto ↔ numpy as TF Serving converts them: requests through Tensor::FromProto, responses through
Tensor::AsProtoField (the typed value fields — float_val, int64_val, string_val, ... — never tensor_content)."""

from __future__ import annotations

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.python.framework import tensor_util

from serving.status import invalid

_T = types_pb2
# dtype → (TensorProto field, how a numpy array becomes that field's values)
_FIELDS = {
    _T.DT_FLOAT: ("float_val", None),
    _T.DT_DOUBLE: ("double_val", None),
    _T.DT_INT32: ("int_val", None),
    _T.DT_INT16: ("int_val", None),
    _T.DT_INT8: ("int_val", None),
    _T.DT_UINT8: ("int_val", None),
    _T.DT_UINT16: ("int_val", None),
    _T.DT_QINT8: ("int_val", None),
    _T.DT_QUINT8: ("int_val", None),
    _T.DT_QINT16: ("int_val", None),
    _T.DT_QUINT16: ("int_val", None),
    _T.DT_QINT32: ("int_val", None),
    _T.DT_INT64: ("int64_val", None),
    _T.DT_UINT32: ("uint32_val", None),
    _T.DT_UINT64: ("uint64_val", None),
    _T.DT_BOOL: ("bool_val", None),
    # 16-bit floats travel as their bit patterns in half_val; complex numbers as interleaved (real, imaginary).
    _T.DT_HALF: ("half_val", lambda a: a.view(np.uint16)),
    _T.DT_BFLOAT16: ("half_val", lambda a: a.view(np.uint16)),
    _T.DT_COMPLEX64: ("scomplex_val", lambda a: a.view(np.float32)),
    _T.DT_COMPLEX128: ("dcomplex_val", lambda a: a.view(np.float64)),
}
_DATATYPES: dict = {}


def datatype_of(array: np.ndarray) -> int:
    dtype = array.dtype
    datatype = _DATATYPES.get(dtype)
    if datatype is None:
        from tensorflow.python.framework import dtypes

        datatype = _DATATYPES[dtype] = dtypes.as_dtype(dtype).as_datatype_enum
    return datatype


def tensor_proto(array) -> tensor_pb2.TensorProto:
    """numpy → TensorProto with the values in the dtype's typed field, as Tensor::AsProtoField writes it."""
    array = np.asarray(array)
    proto = tensor_pb2.TensorProto()
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in array.shape)
    if array.dtype == object or array.dtype.kind in "SU":
        proto.dtype = _T.DT_STRING
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in array.flat)
        return proto
    proto.dtype = datatype_of(array)
    field, view = _FIELDS.get(proto.dtype, (None, None))
    if field is None:
        raise invalid(f"cannot serialize a tensor of {dtype_name(proto.dtype)} into a response")
    flat = np.ascontiguousarray(array).reshape(-1)
    getattr(proto, field).extend((view(flat) if view else flat).tolist())
    return proto


def ndarray(alias: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    """TensorProto → numpy (Tensor::FromProto); a proto that does not parse is TF Serving's
    "tensor parsing error: <alias>"."""
    try:
        return tensor_util.MakeNdarray(proto)
    except Exception:  # noqa: BLE001 — any failure to parse is the client's malformed tensor
        raise invalid(f"tensor parsing error: {alias}") from None


def dtype_name(datatype: int) -> str:
    """TF's DataTypeString(), as TF Serving's messages print dtypes: "float", "int64", "string", ..., "float_ref"."""
    if datatype > 100:
        return dtype_name(datatype - 100) + "_ref"
    if datatype == _T.DT_INVALID:
        return "INVALID"
    if datatype not in _T.DataType.values():
        return f"unknown dtype enum ({datatype})"
    return _T.DataType.Name(datatype)[3:].lower()
