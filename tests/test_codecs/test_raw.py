"""Raw bytes round-trip every dtype and shape exactly, and malformed bytes are refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaminfer.codecs.arrays import BYTES, MAX_ELEMENTS, MAX_OBJECTS, bytes_array
from streaminfer.codecs.errors import DecodeError
from streaminfer.codecs.raw import from_raw, to_raw
from tests.test_codecs.strategies import arrays, assert_same


@given(arrays())
def test_round_trip(array: np.ndarray) -> None:
    raw = to_raw(array)
    back = from_raw("t", array.dtype.newbyteorder("="), array.shape, raw)
    assert_same(back, array)
    assert to_raw(back) == raw  # bit for bit, NaN payloads included


@given(st.lists(st.binary(max_size=300), max_size=6))
def test_bytes_are_length_prefixed_little_endian(items: list[bytes]) -> None:
    raw = to_raw(bytes_array(items))
    expected = b"".join(len(item).to_bytes(4, "little") + item for item in items)
    assert raw == expected


def test_numbers_travel_little_endian() -> None:
    assert to_raw(np.array([1, 256], dtype=">u2")) == b"\x01\x00\x00\x01"
    assert to_raw(np.array([[1, 2], [3, 4]], dtype=np.int8).T) == b"\x01\x03\x02\x04"


def test_strings_from_a_model_become_utf8() -> None:
    texts = np.array(["tabby", "é"], dtype=object)
    assert from_raw("t", BYTES, [2], to_raw(texts)).tolist() == [b"tabby", "é".encode()]


@pytest.mark.parametrize(
    ("dtype", "shape", "data", "words"),
    [
        (np.dtype(np.float32), [2], b"\0" * 7, "7 bytes of data, shape [2] of float32 needs 8"),
        (np.dtype(np.int8), [-1], b"", "negative dimension"),
        (np.dtype(np.int8), [MAX_ELEMENTS, 2], b"", "more than"),
        (BYTES, [MAX_OBJECTS + 1], b"", f"more than {MAX_OBJECTS} elements"),  # each an object
        (BYTES, [1], b"\x05\x00", "ends inside a length prefix"),
        (BYTES, [1], b"\x05\x00\x00\x00abc", "runs past the end"),
        (BYTES, [2], b"\x01\x00\x00\x00a", "1 values given, shape [2] needs 2"),
        (BYTES, [1], b"\x01\x00\x00\x00a" * 2, "more than 1 strings"),
    ],
)
def test_malformed_data_is_refused(
    dtype: np.dtype, shape: list[int], data: bytes, words: str
) -> None:
    with pytest.raises(DecodeError, match="tensor 't'") as refused:
        from_raw("t", dtype, shape, data)
    assert words in str(refused.value)
