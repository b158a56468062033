"""Wire tensors ⇄ numpy arrays, for every binary format the server speaks.

TF Serving's ``TensorProto``, KServe V2's typed ``contents`` and its raw bytes (gRPC
``raw_*_contents`` and the REST binary-tensor extension) all come through here.  Numeric
data that arrives as bytes becomes an array with ``numpy.frombuffer``, without a Python
list in between; only the typed ``*_val`` / ``*_contents`` fields need one.  Every check
on a client's tensor happens here, before anything is allocated from a claimed shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from streaminfer.protos.dtypes import (
    BYTES,
    LENGTH_PREFIX,
    TF_DTYPES,
    TF_VALUE_FIELDS,
    V2_CONTENT_FIELDS,
    V2_DTYPES,
)
from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from streaminfer.protos.tfserving import tensor_pb2, tensor_shape_pb2, types_pb2
from streaminfer.serving.errors import InvalidRequest

MAX_ELEMENTS = 1 << 25
"""Largest tensor a request may describe (32 Mi elements, 128 MB of float32)."""

_TF_ENUMS = {dtype: enum for enum, dtype in TF_DTYPES.items()}
_V2_NAMES = {dtype: name for name, dtype in V2_DTYPES.items()}


# -- dtypes and shapes -----------------------------------------------------------------------
def numpy_dtype(model_dtype: str) -> np.dtype:
    """The array dtype of a model.json dtype name ("float32", "string", ...)."""
    return BYTES if model_dtype == "string" else np.dtype(model_dtype)


def tf_dtype(dtype: np.dtype) -> types_pb2.DataType:
    """TF Serving's DataType enum value of an array dtype."""
    return _TF_ENUMS[dtype]


def v2_datatype(dtype: np.dtype) -> str:
    """KServe V2's datatype name ("FP32", "BYTES", ...) of an array dtype."""
    return _V2_NAMES[dtype]


def v2_numpy_dtype(name: str, datatype: str) -> np.dtype:
    try:
        return V2_DTYPES[datatype]
    except KeyError:
        known = ", ".join(V2_DTYPES)
        raise InvalidRequest(
            f"input {name!r}: datatype {datatype!r} is not supported (use one of {known})"
        ) from None


def element_count(name: str, shape: Sequence[int]) -> int:
    """Elements in ``shape``, refusing negative dimensions and absurd sizes."""
    count = 1
    for dim in shape:
        if dim < 0:
            raise InvalidRequest(f"input {name!r}: shape {list(shape)} has a negative dimension")
        count *= dim
        if count > MAX_ELEMENTS:
            raise InvalidRequest(
                f"input {name!r}: shape {list(shape)} has more than {MAX_ELEMENTS} elements"
            )
    return count


def shaped(name: str, flat: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``flat`` reshaped to ``shape``, if it holds exactly that many elements."""
    count = element_count(name, shape)
    if flat.size != count:
        raise InvalidRequest(
            f"input {name!r}: {flat.size} values given, shape {list(shape)} needs {count}"
        )
    return flat.reshape(shape)


def bytes_array(items: Sequence[bytes]) -> np.ndarray:
    """A 1-D object array of ``bytes`` (``np.array`` would try to make a char matrix)."""
    array = np.empty(len(items), dtype=BYTES)
    array[:] = items
    return array


def _as_bytes(item: object) -> bytes:
    return item.encode() if isinstance(item, str) else bytes(item)  # type: ignore[call-overload]


def _from_values(name: str, values: Sequence[object], dtype: np.dtype) -> np.ndarray:
    try:
        return np.array(values, dtype=dtype)
    except (OverflowError, ValueError, TypeError) as exc:
        raise InvalidRequest(f"input {name!r}: values do not fit {dtype}: {exc}") from exc


# -- raw bytes (V2 gRPC raw contents, V2 REST binary extension) ------------------------------
def from_raw(name: str, dtype: np.dtype, shape: Sequence[int], data: bytes) -> np.ndarray:
    """Row-major little-endian bytes (length-prefixed elements for BYTES) as an array."""
    count = element_count(name, shape)
    if dtype == BYTES:
        return shaped(name, bytes_array(_split_length_prefixed(name, data)), shape)
    needed = count * dtype.itemsize
    if len(data) != needed:
        raise InvalidRequest(
            f"input {name!r}: {len(data)} bytes of data, shape {list(shape)} of {dtype} "
            f"needs {needed}"
        )
    return np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(shape)


def to_raw(array: np.ndarray) -> bytes:
    """The inverse of :func:`from_raw`."""
    if array.dtype == BYTES:
        return b"".join(
            LENGTH_PREFIX.pack(len(item)) + item for item in map(_as_bytes, array.ravel().tolist())
        )
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _split_length_prefixed(name: str, data: bytes) -> list[bytes]:
    items, offset = [], 0
    view = memoryview(data)
    while offset < len(data):
        if offset + 4 > len(data):
            raise InvalidRequest(f"input {name!r}: BYTES data ends inside a length prefix")
        (size,) = LENGTH_PREFIX.unpack_from(view, offset)
        offset += 4
        if offset + size > len(data):
            raise InvalidRequest(f"input {name!r}: BYTES element of {size} bytes runs past the end")
        items.append(bytes(view[offset : offset + size]))
        offset += size
    return items


# -- TF Serving TensorProto ------------------------------------------------------------------
def from_tensor_proto(name: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    """A TF Serving tensor as an array: ``tensor_content`` zero-copy, else the typed values."""
    dtype = TF_DTYPES.get(proto.dtype)
    if dtype is None:
        label = (
            types_pb2.DataType.Name(proto.dtype)
            if proto.dtype in types_pb2.DataType.values()
            else str(proto.dtype)
        )
        raise InvalidRequest(f"input {name!r}: dtype {label} is not supported")
    if proto.tensor_shape.unknown_rank:
        raise InvalidRequest(f"input {name!r}: the tensor's shape must be known")
    shape = [d.size for d in proto.tensor_shape.dim]
    if dtype == BYTES:
        return _fill(name, bytes_array(list(proto.string_val)), shape)
    if proto.tensor_content:
        return from_raw(name, dtype, shape, proto.tensor_content)
    values = getattr(proto, TF_VALUE_FIELDS[proto.dtype])
    if proto.dtype == types_pb2.DT_HALF:  # half_val holds the float16 bit patterns
        return _fill(name, _from_values(name, values, np.dtype(np.uint16)).view(np.float16), shape)
    return _fill(name, _from_values(name, values, dtype), shape)


def _fill(name: str, flat: np.ndarray, shape: list[int]) -> np.ndarray:
    """TF's rule: a single value fills the whole shape; otherwise the counts must agree."""
    count = element_count(name, shape)
    if flat.size == 1 and count > 1:
        return np.full(shape, flat[0], dtype=flat.dtype)
    return shaped(name, flat, shape)


def to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """An array as a TF Serving tensor; numbers travel as ``tensor_content`` bytes."""
    proto = tensor_pb2.TensorProto(
        dtype=tf_dtype(array.dtype),
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape]
        ),
    )
    if array.dtype == BYTES:
        proto.string_val.extend(_as_bytes(item) for item in array.ravel().tolist())
    else:
        proto.tensor_content = to_raw(array)
    return proto


# -- KServe V2 gRPC ---------------------------------------------------------------------------
def from_v2_input(tensor: v2.ModelInferRequest.InferInputTensor, raw: bytes | None) -> np.ndarray:
    """A V2 gRPC input as an array, from its raw bytes when given, else its typed contents."""
    dtype = v2_numpy_dtype(tensor.name, tensor.datatype)
    shape = list(tensor.shape)
    if raw is not None:
        return from_raw(tensor.name, dtype, shape, raw)
    field = V2_CONTENT_FIELDS.get(tensor.datatype)
    if field is None:
        raise InvalidRequest(
            f"input {tensor.name!r}: {tensor.datatype} data must be sent as raw_input_contents"
        )
    values = getattr(tensor.contents, field)
    if dtype == BYTES:
        return shaped(tensor.name, bytes_array(list(values)), shape)
    return shaped(tensor.name, _from_values(tensor.name, values, dtype), shape)


def to_v2_output(
    name: str, array: np.ndarray
) -> tuple[v2.ModelInferResponse.InferOutputTensor, bytes]:
    """A V2 gRPC output description and its raw bytes (for ``raw_output_contents``)."""
    tensor = v2.ModelInferResponse.InferOutputTensor(
        name=name, datatype=v2_datatype(array.dtype), shape=list(array.shape)
    )
    return tensor, to_raw(array)
