"""JSON values ⇄ arrays: numbers keep their values, bytes survive as text or b64."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaminfer.codecs.arrays import BYTES, bytes_array
from streaminfer.codecs.errors import DecodeError
from streaminfer.codecs.jsonvalues import dumps, from_json, json_object, loads, to_json
from tests.test_codecs.strategies import (
    NUMERIC_DTYPES,
    assert_same,
    bytes_arrays,
    full_shapes,
    numeric_arrays,
)


def _through_json(value: object) -> object:
    return loads(dumps(value))


@given(numeric_arrays(shape=full_shapes))
def test_numbers_round_trip_with_their_dtype(array: np.ndarray) -> None:
    dtype = array.dtype.newbyteorder("=")
    back = from_json("t", _through_json(to_json(array)), dtype)
    assert_same(back, array)


@given(bytes_arrays(full_shapes), st.booleans())
def test_bytes_round_trip_as_text_or_b64(array: np.ndarray, b64: bool) -> None:
    value = _through_json(to_json(array, b64=b64))
    assert_same(from_json("t", value), array)
    assert_same(from_json("t", value, BYTES), array)


def test_binary_goes_b64_and_text_stays_text() -> None:
    assert to_json(bytes_array([b"cat", b"\xff\xd8"])) == ["cat", {"b64": "/9g="}]
    assert to_json(bytes_array([b"cat"]), b64=True) == [{"b64": "Y2F0"}]


@pytest.mark.parametrize("dtype", NUMERIC_DTYPES)
def test_numbers_without_a_declared_dtype_keep_their_values(dtype: np.dtype) -> None:
    array = np.arange(6).reshape(2, 3).astype(dtype)
    np.testing.assert_array_equal(from_json("t", _through_json(to_json(array))), array)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ([[1, 2], [3]], "not a rectangular array"),
        ([["a", "b"], ["c"]], "not rectangular"),
        ([1, "a"], "expected numbers"),
        (None, "expected numbers"),
        ([{"b64": "!!"}], "invalid base64"),
        (["a", 1], 'expected a string or {"b64"'),
    ],
)
def test_values_that_are_no_tensor_are_refused(value: object, words: str) -> None:
    with pytest.raises(DecodeError, match="tensor 't'") as refused:
        from_json("t", value)
    assert words in str(refused.value)


def test_bodies_and_objects() -> None:
    assert loads(b'{"a":[1,2.5]}') == {"a": [1, 2.5]}
    assert dumps({"a": [1, "b"]}) == b'{"a":[1,"b"]}'
    for body in (b"{", b"\xff", b"[" * 100_000, b""):
        with pytest.raises(DecodeError, match="not valid JSON"):
            loads(body)
    assert json_object({"k": 1}, "x") == {"k": 1}
    with pytest.raises(DecodeError, match='"parameters" must be a JSON object'):
        json_object([1], "parameters")
