"""TF Serving's ``TensorProto`` ⇄ numpy arrays.

Numbers are written as raw ``tensor_content``; they are read from it zero-copy, or
from the typed ``*_val`` fields other clients fill, where TF's rule holds that a single
value fills the whole shape (up to ``MAX_FILL`` elements and ``MAX_FILL_BYTES``).
``half_val`` holds float16 bit patterns.  Strings travel as ``string_val``, a list of bytes.
"""

from __future__ import annotations

import numpy as np
from google.protobuf.message import Message

from streaminfer.codecs.arrays import (
    BYTES,
    MAX_FILL,
    MAX_FILL_BYTES,
    as_bytes,
    bytes_array,
    element_count,
    element_limit,
    fitted,
    native,
    shaped,
    wrong_count,
)
from streaminfer.codecs.errors import DecodeError, EncodeError
from streaminfer.codecs.protowire import (
    MOST_READ_WHOLE,
    Buffer,
    Taken,
    held_values,
    length_delimited,
    map_entry,
    split_map_bytes,
    taken_bytes,
    taken_packed,
)
from streaminfer.codecs.raw import from_raw, raw_buffer, to_raw
from streaminfer.protos.tfserving import predict_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from streaminfer.types import Tensors

DTYPES: dict[types_pb2.DataType, np.dtype] = {
    types_pb2.DT_FLOAT: np.dtype(np.float32),
    types_pb2.DT_DOUBLE: np.dtype(np.float64),
    types_pb2.DT_HALF: np.dtype(np.float16),
    types_pb2.DT_INT8: np.dtype(np.int8),
    types_pb2.DT_INT16: np.dtype(np.int16),
    types_pb2.DT_INT32: np.dtype(np.int32),
    types_pb2.DT_INT64: np.dtype(np.int64),
    types_pb2.DT_UINT8: np.dtype(np.uint8),
    types_pb2.DT_UINT16: np.dtype(np.uint16),
    types_pb2.DT_UINT32: np.dtype(np.uint32),
    types_pb2.DT_UINT64: np.dtype(np.uint64),
    types_pb2.DT_BOOL: np.dtype(np.bool_),
    types_pb2.DT_STRING: BYTES,
}
VALUE_FIELDS = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_HALF: "half_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
}
"""The TensorProto field that carries each dtype's values when ``tensor_content`` is empty."""

_ENUMS = {dtype: enum for enum, dtype in DTYPES.items()}


def data_type(dtype: np.dtype) -> types_pb2.DataType:
    """TF Serving's ``DataType`` of an array dtype."""
    enum = _ENUMS.get(native(dtype))
    if enum is None:
        raise EncodeError(f"dtype {dtype} has no TensorFlow Serving type")
    return enum


def to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """An array as a TensorProto: numbers as ``tensor_content``, strings as ``string_val``."""
    proto = _described(array)
    if array.dtype == BYTES:
        proto.string_val.extend(map(as_bytes, array.ravel().tolist()))
    else:
        proto.tensor_content = to_raw(array)
    return proto


def _described(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A TensorProto of the array's type and shape, without its values."""
    return tensor_pb2.TensorProto(
        dtype=data_type(array.dtype),
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape]
        ),
    )


_INPUTS = predict_pb2.PredictRequest.DESCRIPTOR.fields_by_name["inputs"].number
_OUTPUTS = predict_pb2.PredictResponse.DESCRIPTOR.fields_by_name["outputs"].number
_TENSOR_FIELDS = tensor_pb2.TensorProto.DESCRIPTOR.fields_by_name
_TENSOR_CONTENT = _TENSOR_FIELDS["tensor_content"].number
_NUMBER_FIELDS = {  # read apart with tensor_content, counted before they become an array
    enum: _TENSOR_FIELDS[field].number
    for enum, field in VALUE_FIELDS.items()
    if field != "string_val"
}
_READ_APART = (_TENSOR_CONTENT, *sorted(set(_NUMBER_FIELDS.values())))


def predict_request_bytes(request: predict_pb2.PredictRequest, inputs: Tensors) -> bytes:
    """``request`` serialized with ``inputs`` added to its ``inputs`` map, each array's
    numbers copied once into the message's bytes (see ``protowire``)."""
    return _with_tensor_map(request, _INPUTS, inputs)


def predict_response_bytes(response: predict_pb2.PredictResponse, outputs: Tensors) -> bytes:
    """``response`` serialized with ``outputs`` added to its ``outputs`` map, each array's
    numbers copied once."""
    return _with_tensor_map(response, _OUTPUTS, outputs)


def _with_tensor_map(message: Message, map_number: int, tensors: Tensors) -> bytes:
    parts: list[Buffer] = [message.SerializeToString()]
    for name, array in tensors.items():
        tensor: list[Buffer]
        if array.dtype == BYTES:
            tensor = [to_tensor_proto(array).SerializeToString()]
        else:
            content = length_delimited(_TENSOR_CONTENT, [raw_buffer(array)])
            tensor = [_described(array).SerializeToString(), *content]
        parts += length_delimited(map_number, map_entry(name, tensor))
    return b"".join(parts)


def parse_predict_request(data: bytes) -> tuple[predict_pb2.PredictRequest, dict[str, Taken]]:
    """A serialized ``PredictRequest`` without its inputs' ``tensor_content`` and typed
    number fields (``float_val``, ``int_val``, ...), and those, as views of ``data`` (the
    numbers counted, not yet read), by input name. Raises protobuf's ``DecodeError`` for a
    malformed one."""
    return split_map_bytes(data, predict_pb2.PredictRequest, _INPUTS, _READ_APART, MOST_READ_WHOLE)


def parse_predict_response(data: bytes) -> tuple[predict_pb2.PredictResponse, dict[str, Taken]]:
    """A serialized ``PredictResponse`` without its outputs' ``tensor_content`` and typed
    number fields, and those, as views of ``data``, by output name (as
    ``parse_predict_request`` reads a request)."""
    return split_map_bytes(data, predict_pb2.PredictResponse, _OUTPUTS, _READ_APART)


def from_tensor_proto(
    name: str, proto: tensor_pb2.TensorProto, read_apart: Taken | None = None
) -> np.ndarray:
    """The array a TensorProto holds, in whichever field it was sent; ``read_apart``: the
    fields ``parse_predict_request`` (or ``_response``) took out of it."""
    dtype = DTYPES.get(proto.dtype)
    if dtype is None:
        label = (
            types_pb2.DataType.Name(proto.dtype)
            if proto.dtype in types_pb2.DataType.values()
            else str(proto.dtype)
        )
        raise DecodeError(f"tensor {name!r}: dtype {label} is not supported")
    if proto.tensor_shape.unknown_rank:
        raise DecodeError(f"tensor {name!r}: the tensor's shape must be known")
    shape = [d.size for d in proto.tensor_shape.dim]
    count = element_count(name, shape, element_limit(dtype))  # before any value is read
    read_apart = read_apart or {}
    content = taken_bytes(read_apart, _TENSOR_CONTENT)
    content = proto.tensor_content if content is None else content
    if len(content) and dtype != BYTES:
        return from_raw(name, dtype, shape, content)
    if dtype == BYTES:
        strings = proto.string_val
        if len(strings) > max(count, 1):
            raise wrong_count(name, len(strings), shape, count)
        return _fill(name, bytes_array(list(strings)), shape)
    number = _NUMBER_FIELDS[proto.dtype]
    values = taken_packed(read_apart, number) or held_values(proto, number)
    if len(values) > max(count, 1):  # more than the shape holds (or one fills): unread
        raise wrong_count(name, len(values), shape, count)
    if proto.dtype == types_pb2.DT_HALF:  # half_val holds the bit patterns, as int32
        flat = fitted(name, values.array(), np.dtype(np.uint16)).view(np.float16)
    else:
        flat = fitted(name, values.array(), dtype)
    return _fill(name, flat, shape)


def _fill(name: str, flat: np.ndarray, shape: list[int]) -> np.ndarray:
    """TF's rule: a single value fills the whole shape, up to ``MAX_FILL`` elements and
    ``MAX_FILL_BYTES``; otherwise the counts must agree."""
    count = element_count(name, shape)
    if flat.size == 1 and count > 1:
        element_count(name, shape, MAX_FILL)
        # A string fills with references to one object, but the model and the answer copy it.
        size = len(flat[0]) if flat.dtype == BYTES else flat.itemsize
        if count * size > MAX_FILL_BYTES:
            raise DecodeError(
                f"tensor {name!r}: one value of {size} bytes filling {count} elements makes "
                f"more than the {MAX_FILL_BYTES} bytes one value may fill"
            )
        filled = np.empty(shape, dtype=flat.dtype)
        filled.fill(flat[0])  # np.full would pass bytes through numpy's "S" type: b"a\0" -> b"a"
        return filled
    return shaped(name, flat, shape)
