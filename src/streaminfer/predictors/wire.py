"""numpy ⇄ wire tensors for the clients: TF Serving's ``TensorProto`` and KServe V2 tensors.

Numbers travel as raw little-endian bytes (``tensor_content``, ``raw_input_contents``)
made with ``tobytes`` and read with ``frombuffer``: no Python list of floats is ever
built, which is what makes a 600 KB tensor cost microseconds instead of milliseconds.
Strings (encoded images) are lists of bytes in TF and length-prefixed bytes in V2.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streaminfer.errors import InfrastructureError
from streaminfer.models.errors import InvalidInput
from streaminfer.protos.dtypes import (
    BYTES,
    LENGTH_PREFIX,
    TF_DTYPES,
    TF_VALUE_FIELDS,
    V2_CONTENT_FIELDS,
    V2_DTYPES,
)
from streaminfer.protos.tfserving import tensor_pb2, types_pb2

# Numeric dtypes by kind ("f4", "i8"...); strings travel in their own fields.
_TF_BY_KIND = {_d.str.lstrip("<>|="): code for code, _d in TF_DTYPES.items() if _d != BYTES}
_V2_BY_KIND = {_d.str.lstrip("<>|="): name for name, _d in V2_DTYPES.items() if _d != BYTES}


def _kind(array: np.ndarray) -> str:
    return array.dtype.str.lstrip("<>|=")


def _little_endian(array: np.ndarray) -> np.ndarray:
    wanted = array.dtype.newbyteorder("<")
    return np.ascontiguousarray(array, dtype=wanted)


# -- TensorFlow Serving ---------------------------------------------------------------------
def tf_tensor(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A numeric array as raw ``tensor_content``."""
    code = _TF_BY_KIND.get(_kind(array))
    if code is None:
        raise InvalidInput(f"dtype {array.dtype} cannot be sent to TensorFlow Serving")
    proto = tensor_pb2.TensorProto(dtype=code, tensor_content=_little_endian(array).tobytes())
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


def tf_strings(values: list[bytes]) -> tensor_pb2.TensorProto:
    """A ``DT_STRING`` vector ``[N]``, e.g. N encoded images."""
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=values)
    proto.tensor_shape.dim.add(size=len(values))
    return proto


def tf_array(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """A TensorProto as numpy; strings come back as an object array of bytes."""
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if proto.dtype == types_pb2.DT_STRING:
        return np.array(list(proto.string_val), dtype=object).reshape(shape)
    dtype = TF_DTYPES.get(proto.dtype)
    if dtype is None:
        raise InfrastructureError(f"the server answered with unsupported dtype {proto.dtype}")
    if proto.tensor_content:
        values = np.frombuffer(proto.tensor_content, dtype=dtype)
    else:
        listed = np.asarray(getattr(proto, TF_VALUE_FIELDS[proto.dtype]))
        if proto.dtype == types_pb2.DT_HALF:  # half_val holds the float16 bit patterns
            values = listed.astype(np.uint16).view(dtype)
        else:
            values = listed.astype(dtype)
    size = int(np.prod(shape))
    if values.size == 1 and size != 1:  # TF's shorthand: one value fills the tensor
        values = np.full(size, values[0], dtype=dtype)
    return _reshaped(values, shape)


# -- KServe V2 ------------------------------------------------------------------------------
def v2_datatype(array: np.ndarray) -> str:
    name = _V2_BY_KIND.get(_kind(array))
    if name is None:
        raise InvalidInput(f"dtype {array.dtype} cannot be sent over the V2 protocol")
    return name


def v2_raw(array: np.ndarray) -> bytes:
    """A numeric tensor's raw bytes, as ``raw_input_contents`` and binary HTTP carry them."""
    return _little_endian(array).tobytes()


def v2_pack_bytes(values: list[bytes]) -> bytes:
    """A BYTES tensor's raw form: each element prefixed by its 4-byte little-endian length."""
    return b"".join(LENGTH_PREFIX.pack(len(v)) + v for v in values)


def v2_unpack_bytes(raw: bytes) -> list[bytes]:
    values, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InfrastructureError("the server sent a truncated BYTES tensor")
        (length,) = LENGTH_PREFIX.unpack_from(raw, offset)
        offset += 4
        values.append(raw[offset : offset + length])
        offset += length
    return values


def v2_dtype(datatype: str) -> np.dtype:
    """The numpy dtype of a numeric V2 datatype in an answer."""
    dtype = V2_DTYPES.get(datatype)
    if dtype is None:
        raise InfrastructureError(f"the server answered with unsupported datatype {datatype}")
    return dtype


def v2_array(datatype: str, shape: tuple[int, ...], raw: bytes) -> np.ndarray:
    """A V2 tensor from its raw bytes."""
    if datatype == "BYTES":
        return _reshaped(np.array(v2_unpack_bytes(raw), dtype=object), shape)
    return _reshaped(np.frombuffer(raw, dtype=v2_dtype(datatype)), shape)


def v2_array_from_contents(datatype: str, shape: tuple[int, ...], contents: Any) -> np.ndarray:
    """A V2 tensor sent as typed ``contents`` (servers that don't use the raw fields)."""
    field = V2_CONTENT_FIELDS.get(datatype)
    if field is None:
        raise InfrastructureError(f"the server answered with unsupported datatype {datatype}")
    values = list(getattr(contents, field))
    if datatype == "BYTES":
        return _reshaped(np.array(values, dtype=object), shape)
    return _reshaped(np.asarray(values, dtype=v2_dtype(datatype)), shape)


def _reshaped(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    try:
        return values.reshape(shape)
    except ValueError as exc:
        raise InfrastructureError(
            f"the server sent {values.size} values for a tensor of shape {list(shape)}"
        ) from exc
