"""KServe V2 (Open Inference Protocol) datatypes, and its gRPC tensors ⇄ numpy arrays.

A gRPC tensor is described by name, datatype and shape; its data is either the matching
entry of ``raw_input_contents`` / ``raw_output_contents`` (which we always write) or the
typed ``contents`` other peers may fill.  FP16 has no typed field and travels raw only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from streaminfer.codecs.arrays import (
    BYTES,
    bytes_array,
    element_count,
    element_limit,
    fitted,
    native,
    wrong_count,
)
from streaminfer.codecs.errors import DecodeError, EncodeError
from streaminfer.codecs.protowire import (
    MOST_READ_WHOLE,
    Buffer,
    Taken,
    held_values,
    split_tensor_data,
    taken_packed,
    with_bytes_field,
)
from streaminfer.codecs.raw import from_raw, raw_buffer
from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from streaminfer.types import Tensors

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": BYTES,
}
CONTENT_FIELDS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""The ``InferTensorContents`` field of each datatype."""

GrpcTensor: TypeAlias = (
    v2.ModelInferRequest.InferInputTensor | v2.ModelInferResponse.InferOutputTensor
)

_NAMES = {dtype: name for name, dtype in DATATYPES.items()}


def datatype(dtype: np.dtype) -> str:
    """The V2 datatype name ("FP32", "BYTES", ...) of an array dtype."""
    name = _NAMES.get(native(dtype))
    if name is None:
        raise EncodeError(f"dtype {dtype} has no KServe V2 datatype")
    return name


def numpy_dtype(name: str, datatype: str) -> np.dtype:
    """The array dtype of tensor ``name``'s V2 datatype."""
    try:
        return DATATYPES[datatype]
    except KeyError:
        known = ", ".join(DATATYPES)
        raise DecodeError(
            f"tensor {name!r}: datatype {datatype!r} is not supported (use one of {known})"
        ) from None


RAW_INPUT_CONTENTS = v2.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number
RAW_OUTPUT_CONTENTS = v2.ModelInferResponse.DESCRIPTOR.fields_by_name["raw_output_contents"].number
_INPUTS = v2.ModelInferRequest.DESCRIPTOR.fields_by_name["inputs"].number
_OUTPUTS = v2.ModelInferResponse.DESCRIPTOR.fields_by_name["outputs"].number
_NUMBER_CONTENTS = {  # read apart with the raw contents, counted before they become an array
    datatype: v2.InferTensorContents.DESCRIPTOR.fields_by_name[field].number
    for datatype, field in CONTENT_FIELDS.items()
    if field != "bytes_contents"
}
_READ_APART = sorted(set(_NUMBER_CONTENTS.values()))


def infer_request_bytes(request: v2.ModelInferRequest, inputs: Tensors) -> bytes:
    """``request`` serialized with ``inputs`` described in it and their data in
    ``raw_input_contents``, each array copied once (see ``protowire``)."""
    return with_bytes_field(request, RAW_INPUT_CONTENTS, _described(inputs, request.inputs))


def infer_response_bytes(response: v2.ModelInferResponse, outputs: Tensors) -> bytes:
    """``response`` serialized with ``outputs`` described in it and their data in
    ``raw_output_contents``, each array copied once."""
    return with_bytes_field(response, RAW_OUTPUT_CONTENTS, _described(outputs, response.outputs))


def _described(tensors: Tensors, described: RepeatedCompositeFieldContainer[Any]) -> list[Buffer]:
    """Append each array's description to ``described``; their raw data, in that order."""
    data = []
    for name, array in tensors.items():
        described.add(name=name, datatype=datatype(array.dtype), shape=array.shape)
        data.append(raw_buffer(array))
    return data


def parse_infer_request(data: bytes) -> tuple[v2.ModelInferRequest, list[Buffer], list[Taken]]:
    """A serialized ``ModelInferRequest`` without its ``raw_input_contents`` nor its inputs'
    typed number contents (``fp32_contents``, ``int64_contents``, ...), and those as views
    of ``data`` (the second a ``Taken`` an input, its numbers counted, not yet read).
    Raises protobuf's ``DecodeError`` for a malformed message."""
    return split_tensor_data(
        data, v2.ModelInferRequest, RAW_INPUT_CONTENTS, _INPUTS, _READ_APART, MOST_READ_WHOLE
    )


def parse_infer_response(data: bytes) -> tuple[v2.ModelInferResponse, list[Buffer], list[Taken]]:
    """A serialized ``ModelInferResponse`` without its ``raw_output_contents`` nor its
    outputs' typed number contents, and those as views of ``data``, as
    ``parse_infer_request`` reads a request."""
    return split_tensor_data(
        data, v2.ModelInferResponse, RAW_OUTPUT_CONTENTS, _OUTPUTS, _READ_APART
    )


def read_grpc_tensors(
    tensors: Sequence[GrpcTensor],
    raw: Sequence[Buffer],
    kind: str,
    read_apart: Sequence[Taken] = (),
) -> Tensors:
    """The arrays of a request's inputs or an answer's outputs (``kind``: "input",
    "output"); ``read_apart``: the contents ``parse_infer_request`` (or ``_response``) took
    out of each."""
    if raw and len(raw) != len(tensors):
        raise DecodeError(
            f"{len(raw)} raw_{kind}_contents for {len(tensors)} {kind}s; give one per {kind}"
        )
    arrays: Tensors = {}
    for index, tensor in enumerate(tensors):
        if tensor.name in arrays:
            raise DecodeError(f"{kind} {tensor.name!r} is given twice")
        contents = read_apart[index] if read_apart else {}
        arrays[tensor.name] = _read_grpc_tensor(tensor, raw[index] if raw else None, contents)
    return arrays


def _read_grpc_tensor(tensor: GrpcTensor, raw: Buffer | None, read_apart: Taken) -> np.ndarray:
    dtype = numpy_dtype(tensor.name, tensor.datatype)
    shape = list(tensor.shape)
    if raw is not None:
        return from_raw(tensor.name, dtype, shape, raw)
    field = CONTENT_FIELDS.get(tensor.datatype)
    if field is None:
        raise DecodeError(
            f"tensor {tensor.name!r}: {tensor.datatype} data must be sent as raw contents"
        )
    count = element_count(tensor.name, shape, element_limit(dtype))
    if dtype == BYTES:
        strings = tensor.contents.bytes_contents
        if len(strings) != count:
            raise wrong_count(tensor.name, len(strings), shape, count)
        return bytes_array(list(strings)).reshape(shape)
    number = _NUMBER_CONTENTS[tensor.datatype]
    values = taken_packed(read_apart, number) or held_values(tensor.contents, number)
    if len(values) != count:  # before they are read
        raise wrong_count(tensor.name, len(values), shape, count)
    return fitted(tensor.name, values.array(), dtype).reshape(shape)
