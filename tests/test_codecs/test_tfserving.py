"""TensorProtos round-trip every dtype and shape, in raw content and in the typed fields."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaminfer.codecs.arrays import (
    BYTES,
    MAX_ELEMENTS,
    MAX_FILL,
    MAX_FILL_BYTES,
    MAX_OBJECTS,
    bytes_array,
)
from streaminfer.codecs.errors import DecodeError, EncodeError
from streaminfer.codecs.tfserving import (
    VALUE_FIELDS,
    data_type,
    from_tensor_proto,
    parse_predict_request,
    parse_predict_response,
    predict_request_bytes,
    predict_response_bytes,
    to_tensor_proto,
)
from streaminfer.protos.tfserving import predict_pb2, tensor_pb2, types_pb2
from tests.test_codecs.strategies import arrays, assert_same, full_shapes, shapes


@given(arrays())
def test_round_trip(array: np.ndarray) -> None:
    proto = to_tensor_proto(array)
    assert [d.size for d in proto.tensor_shape.dim] == list(array.shape)
    if array.dtype != BYTES and array.size:
        assert proto.tensor_content and not proto.float_val  # raw bytes, no per-value fields
    assert_same(from_tensor_proto("t", proto), array)


def _typed(array: np.ndarray) -> tensor_pb2.TensorProto:
    """``array`` in the typed ``*_val`` field other clients fill, as they would write it."""
    proto = tensor_pb2.TensorProto(dtype=data_type(array.dtype))
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    values = array.ravel()
    if array.dtype == np.float16:  # half_val holds the bit patterns
        values = values.view(np.uint16)
    getattr(proto, VALUE_FIELDS[proto.dtype]).extend(values.tolist())
    return proto


@given(st.dictionaries(st.text(min_size=1, max_size=6), arrays(), min_size=1, max_size=3))
def test_predict_requests_written_with_their_tensors(tensors: dict[str, np.ndarray]) -> None:
    """Written past protobuf, a request reads back through protobuf as the one it would write."""
    request = predict_pb2.PredictRequest(output_filter=["out"])
    request.model_spec.name = "m"
    wire = predict_request_bytes(request, tensors)
    for name, array in tensors.items():
        request.inputs[name].CopyFrom(to_tensor_proto(array))
    parsed = predict_pb2.PredictRequest.FromString(wire)
    assert parsed == request
    for name, array in tensors.items():
        assert_same(from_tensor_proto(name, parsed.inputs[name]), array)


@given(st.dictionaries(st.text(min_size=1, max_size=6), arrays(), min_size=1, max_size=3))
def test_predict_responses_written_with_their_tensors(tensors: dict[str, np.ndarray]) -> None:
    """An answer written past protobuf is the one protobuf writes, and reads back past it."""
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "m"
    response.model_spec.version.value = 3
    wire = predict_response_bytes(response, tensors)
    for name, array in tensors.items():
        response.outputs[name].CopyFrom(to_tensor_proto(array))
    assert predict_pb2.PredictResponse.FromString(wire) == response
    parsed, contents = parse_predict_response(wire)
    assert parsed.model_spec == response.model_spec and sorted(parsed.outputs) == sorted(tensors)
    for name, array in tensors.items():
        assert_same(from_tensor_proto(name, parsed.outputs[name], contents.get(name)), array)


@given(arrays())
def test_typed_fields_round_trip(array: np.ndarray) -> None:
    native = array.astype(array.dtype.newbyteorder("="))
    assert_same(from_tensor_proto("t", _typed(native)), native)


@given(arrays(), st.none() | shapes)
def test_typed_fields_read_apart_as_protobuf_reads_them(
    array: np.ndarray, declared: tuple[int, ...] | None
) -> None:
    """``float_val`` and ``double_val``, read apart from a request's bytes, give the array
    protobuf's reading gives, or the same refusal (a value that fills the shape, too many
    values, too few), and so does every other field left to protobuf."""
    proto = _typed(array.astype(array.dtype.newbyteorder("=")))
    if declared is not None:
        proto.tensor_shape.Clear()
        for size in declared:
            proto.tensor_shape.dim.add(size=size)
    request = predict_pb2.PredictRequest()
    request.inputs["t"].CopyFrom(proto)
    data = request.SerializeToString()
    parsed, taken = parse_predict_request(data)
    try:
        expected = from_tensor_proto("t", predict_pb2.PredictRequest.FromString(data).inputs["t"])
    except DecodeError as error:
        with pytest.raises(DecodeError, match=re.escape(str(error))):
            from_tensor_proto("t", parsed.inputs["t"], taken.get("t"))
        return
    assert_same(from_tensor_proto("t", parsed.inputs["t"], taken.get("t")), expected)


@given(arrays(shape=st.just((1,))), full_shapes)
def test_one_value_fills_the_shape(one: np.ndarray, shape: tuple[int, ...]) -> None:
    one = one.astype(one.dtype.newbyteorder("="))
    proto = _typed(one)
    proto.tensor_shape.Clear()
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    expected = np.empty(shape, dtype=one.dtype)
    expected.fill(one[0])
    assert_same(from_tensor_proto("t", proto), expected)


def test_one_string_fills_the_shape_with_its_trailing_zero_bytes() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"a\0"])
    proto.tensor_shape.dim.add(size=3)
    assert from_tensor_proto("t", proto).tolist() == [b"a\0"] * 3


@pytest.mark.parametrize("dtype", [types_pb2.DT_FLOAT, types_pb2.DT_STRING])
def test_one_value_fills_at_most_max_fill_elements(dtype: types_pb2.DataType) -> None:
    proto = tensor_pb2.TensorProto(dtype=dtype)
    getattr(proto, VALUE_FIELDS[dtype]).append(b"a" if dtype == types_pb2.DT_STRING else 1.0)
    proto.tensor_shape.dim.add(size=MAX_FILL)
    assert from_tensor_proto("t", proto).size == MAX_FILL
    proto.tensor_shape.dim.add(size=2)
    with pytest.raises(DecodeError, match=f"more than {MAX_FILL} elements"):
        from_tensor_proto("t", proto)


def test_one_string_fills_at_most_max_fill_bytes() -> None:
    """A long string filling a few elements is refused by its bytes, before any is made."""
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"a" * 1024])
    proto.tensor_shape.dim.add(size=MAX_FILL_BYTES // 1024)
    assert from_tensor_proto("t", proto).size == MAX_FILL_BYTES // 1024
    proto.string_val[0] += b"a"
    with pytest.raises(DecodeError, match=f"more than the {MAX_FILL_BYTES} bytes"):
        from_tensor_proto("t", proto)


@given(shapes)
def test_values_that_do_not_fill_the_shape_are_refused(shape: tuple[int, ...]) -> None:
    count = int(np.prod(shape))
    proto = _typed(np.zeros(count + 2, np.int32))
    proto.tensor_shape.Clear()
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    with pytest.raises(DecodeError, match=f"{count + 2} values given"):
        from_tensor_proto("t", proto)


def test_big_endian_arrays_are_sent_little_endian() -> None:
    proto = to_tensor_proto(np.array([1.5, -2.0], dtype=">f4"))
    assert proto.dtype == types_pb2.DT_FLOAT
    assert proto.tensor_content == np.array([1.5, -2.0], dtype="<f4").tobytes()


def test_strings_travel_as_string_val() -> None:
    images = [b"\xff\xd8jpeg", b"", b"png"]
    proto = to_tensor_proto(bytes_array(images))
    assert proto.dtype == types_pb2.DT_STRING and list(proto.string_val) == images
    assert from_tensor_proto("images", proto).tolist() == images


def test_a_dtype_tf_serving_lacks_cannot_be_sent() -> None:
    with pytest.raises(EncodeError, match="complex128"):
        to_tensor_proto(np.array([1 + 2j]))


@pytest.mark.parametrize(
    ("proto", "words"),
    [
        (tensor_pb2.TensorProto(dtype=types_pb2.DT_COMPLEX64), "DT_COMPLEX64 is not supported"),
        (tensor_pb2.TensorProto(dtype=999), "dtype 999 is not supported"),
        (
            tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape={"unknown_rank": True}),
            "must be known",
        ),
        (
            tensor_pb2.TensorProto(
                dtype=types_pb2.DT_FLOAT, tensor_shape={"dim": [{"size": 2}]}, tensor_content=b"1"
            ),
            "1 bytes of data",
        ),
        (
            tensor_pb2.TensorProto(
                dtype=types_pb2.DT_HALF, tensor_shape={"dim": [{"size": 1}]}, half_val=[1 << 20]
            ),
            "do not fit uint16",
        ),
        (
            tensor_pb2.TensorProto(
                dtype=types_pb2.DT_STRING, tensor_shape={"dim": [{"size": MAX_OBJECTS + 1}]}
            ),
            f"more than {MAX_OBJECTS} elements",  # a million strings are a million objects
        ),
        (
            tensor_pb2.TensorProto(
                dtype=types_pb2.DT_FLOAT, tensor_shape={"dim": [{"size": MAX_ELEMENTS}]}
            ),
            f"0 values given, shape [{MAX_ELEMENTS}] needs {MAX_ELEMENTS}",  # numbers: 16 Mi
        ),
        (
            tensor_pb2.TensorProto(
                dtype=types_pb2.DT_STRING,
                tensor_shape={"dim": [{"size": 2}]},
                string_val=[b"a", b"b", b"c"],
            ),
            "3 values given, shape [2] needs 2",
        ),
    ],
)
def test_malformed_protos_are_refused(proto: tensor_pb2.TensorProto, words: str) -> None:
    with pytest.raises(DecodeError, match="tensor 't'") as refused:
        from_tensor_proto("t", proto)
    assert words in str(refused.value)
