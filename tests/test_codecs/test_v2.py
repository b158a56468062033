"""V2 gRPC tensors round-trip every dtype and shape, raw or typed; bad ones are refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaminfer.codecs.errors import DecodeError, EncodeError
from streaminfer.codecs.v2 import (
    CONTENT_FIELDS,
    DATATYPES,
    datatype,
    infer_request_bytes,
    infer_response_bytes,
    numpy_dtype,
    parse_infer_response,
    read_grpc_tensors,
)
from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from tests.test_codecs.strategies import arrays, assert_same

names = st.text(min_size=1, max_size=8)
tensor_maps = st.dictionaries(names, arrays(), min_size=1, max_size=3)


@given(tensor_maps)
def test_request_round_trip(tensors: dict[str, np.ndarray]) -> None:
    wired = v2.ModelInferRequest.FromString(infer_request_bytes(v2.ModelInferRequest(), tensors))
    back = read_grpc_tensors(wired.inputs, wired.raw_input_contents, "input")
    assert list(back) == list(tensors)
    for name, array in tensors.items():
        assert_same(back[name], array)


@given(tensor_maps)
def test_response_round_trip(tensors: dict[str, np.ndarray]) -> None:
    """An answer written past protobuf reads back alike through protobuf and past it."""
    wire = infer_response_bytes(v2.ModelInferResponse(model_name="m", id="7"), tensors)
    wired = v2.ModelInferResponse.FromString(wire)
    response, raw, read_apart = parse_infer_response(wire)
    assert response.model_name == wired.model_name == "m" and response.id == "7"
    through_protobuf = read_grpc_tensors(wired.outputs, wired.raw_output_contents, "output")
    past_protobuf = read_grpc_tensors(response.outputs, raw, "output", read_apart)
    assert list(through_protobuf) == list(past_protobuf) == list(tensors)
    for name, array in tensors.items():
        assert_same(through_protobuf[name], array)
        assert_same(past_protobuf[name], array)


@given(arrays().filter(lambda a: datatype(a.dtype) != "FP16"))
def test_typed_contents_round_trip(array: np.ndarray) -> None:
    """Peers that fill ``contents`` instead of the raw field are read alike (FP16: raw only)."""
    native = array.astype(array.dtype.newbyteorder("="))
    name = datatype(native.dtype)
    tensor = v2.ModelInferResponse.InferOutputTensor(name="t", datatype=name, shape=native.shape)
    getattr(tensor.contents, CONTENT_FIELDS[name]).extend(native.ravel().tolist())
    assert_same(read_grpc_tensors([tensor], [], "output")["t"], native)


def test_every_datatype_names_its_dtype_back() -> None:
    for name, dtype in DATATYPES.items():
        assert datatype(dtype) == name and numpy_dtype("t", name) == dtype
    assert datatype(np.dtype(">i8")) == "INT64"
    with pytest.raises(EncodeError, match="complex64"):
        datatype(np.dtype(np.complex64))


def _input(name: str, datatype: str, shape: list[int]) -> v2.ModelInferRequest.InferInputTensor:
    return v2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)


@pytest.mark.parametrize(
    ("tensors", "raw", "words"),
    [
        ([_input("x", "FP32", [1])], [b"1234", b"5678"], "2 raw_input_contents for 1 inputs"),
        ([_input("x", "BF16", [1])], [b"12"], "datatype 'BF16' is not supported"),
        ([_input("x", "FP16", [1])], [], "FP16 data must be sent as raw contents"),
        ([_input("x", "INT8", [1]), _input("x", "INT8", [1])], [b"1", b"2"], "given twice"),
        ([_input("x", "FP32", [2])], [b"1234"], "4 bytes of data"),
        ([_input("x", "BYTES", [1])], [b"\x09\x00\x00\x00abc"], "runs past the end"),
        ([_input("x", "BYTES", [1 << 21, 2])], [], "more than 2097152 elements"),
        ([_input("x", "FP32", [1 << 21, 2])], [], "0 values given, shape [2097152, 2]"),
    ],
)
def test_malformed_tensors_are_refused(
    tensors: list[v2.ModelInferRequest.InferInputTensor], raw: list[bytes], words: str
) -> None:
    with pytest.raises(DecodeError) as refused:
        read_grpc_tensors(tensors, raw, "input")
    assert words in str(refused.value)


def test_typed_values_that_do_not_fit_are_refused() -> None:
    tensor = _input("x", "INT8", [1])
    tensor.contents.int_contents.append(300)
    with pytest.raises(DecodeError, match="do not fit int8"):
        read_grpc_tensors([tensor], [], "input")
    strings = _input("s", "BYTES", [2])
    strings.contents.bytes_contents.append(b"one")
    with pytest.raises(DecodeError, match="1 values given"):
        read_grpc_tensors([strings], [], "input")
