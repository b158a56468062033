"""numpy ⇄ wire tensors round-trip exactly, in raw bytes and in TF's typed value fields."""

from __future__ import annotations

import numpy as np
import pytest

from streaminfer.errors import InfrastructureError, RecordError
from streaminfer.predictors.wire import (
    tf_array,
    tf_strings,
    tf_tensor,
    v2_array,
    v2_datatype,
    v2_pack_bytes,
    v2_raw,
    v2_unpack_bytes,
)
from streaminfer.protos.tfserving import tensor_pb2, types_pb2

DTYPES = ["float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8", "bool"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_tf_raw_round_trip(dtype: str) -> None:
    array = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    proto = tf_tensor(array)
    assert proto.tensor_content and not proto.float_val  # raw bytes, no per-value fields
    back = tf_array(proto)
    assert back.dtype == array.dtype and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)


def test_tf_big_endian_input_is_sent_little_endian() -> None:
    array = np.arange(4, dtype=">f4")
    np.testing.assert_array_equal(tf_array(tf_tensor(array)), array)


def test_tf_typed_value_fields_and_the_one_value_shorthand() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[0.5, 1.5])
    proto.tensor_shape.dim.add(size=2)
    np.testing.assert_array_equal(tf_array(proto), np.array([0.5, 1.5], np.float32))
    filled = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, int_val=[7])
    filled.tensor_shape.dim.add(size=3)
    np.testing.assert_array_equal(tf_array(filled), [7, 7, 7])
    half = tensor_pb2.TensorProto(dtype=types_pb2.DT_HALF)
    half.half_val.extend(np.array([1.0, -2.0], np.float16).view(np.uint16).tolist())
    half.tensor_shape.dim.add(size=2)
    np.testing.assert_array_equal(tf_array(half), np.array([1.0, -2.0], np.float16))


def test_tf_strings() -> None:
    values = [b"\xff\xd8jpeg", b"", b"png"]
    back = tf_array(tf_strings(values))
    assert back.shape == (3,) and list(back) == values


def test_unsupported_or_inconsistent_tensors() -> None:
    with pytest.raises(RecordError):
        tf_tensor(np.array([1 + 2j]))
    with pytest.raises(RecordError):
        v2_datatype(np.array([1 + 2j]))
    bad = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=b"\0" * 12)
    bad.tensor_shape.dim.add(size=2)
    with pytest.raises(InfrastructureError):
        tf_array(bad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_v2_raw_round_trip(dtype: str) -> None:
    array = (np.arange(12).reshape(3, 4) % 5).astype(dtype)
    back = v2_array(v2_datatype(array), array.shape, v2_raw(array))
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_v2_bytes_are_length_prefixed() -> None:
    values = [b"abc", b"", b"\x00\x01"]
    packed = v2_pack_bytes(values)
    assert packed[:7] == b"\x03\x00\x00\x00abc"
    assert v2_unpack_bytes(packed) == values
    assert list(v2_array("BYTES", (3,), packed)) == values
    with pytest.raises(InfrastructureError):
        v2_unpack_bytes(b"\x05\x00")
