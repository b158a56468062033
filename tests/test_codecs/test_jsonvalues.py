"""JSON values ⇄ arrays: numbers keep their values, bytes survive as text or b64."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaminfer.codecs.arrays import BYTES, bytes_array
from streaminfer.codecs.errors import DecodeError
from streaminfer.codecs.jsonvalues import (
    _may_hold_long_integers,
    dumps,
    from_json,
    json_object,
    loads,
    to_json,
)
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


json_documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)
"""Any JSON document the standard library writes: NaN, infinities, huge integers included."""


@given(json_documents)
def test_bodies_read_as_the_standard_library_reads_them(document: object) -> None:
    body = json.dumps(document).encode()
    # json.dumps spells NaN as NaN, so equal text means equal values, NaNs included.
    assert json.dumps(loads(body)) == json.dumps(json.loads(body))


@given(numeric_arrays())
def test_arrays_write_the_values_tolist_writes(array: np.ndarray) -> None:
    assert json.dumps(loads(dumps(to_json(array)))) == json.dumps(array.tolist())


def test_what_orjson_alone_would_get_wrong() -> None:
    assert dumps(to_json(np.array([np.nan, np.inf, -np.inf, 1.5], np.float32))) == (
        b"[NaN,Infinity,-Infinity,1.5]"
    )
    assert json.dumps(loads(b'{"x":[NaN,-Infinity,1e400]}')) == '{"x": [NaN, -Infinity, Infinity]}'
    assert loads('{"x":"é"}'.encode("utf-16")) == {"x": "é"}


def test_float32_values_are_written_exactly() -> None:
    array = np.array([0.1, 1e-8], np.float32)
    assert dumps(to_json(array)) == orjson.dumps(array.tolist())
    assert loads(dumps(to_json(array))) == array.tolist()


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 2**70, 123456789012345678901234567890])
def test_integers_past_64_bits_keep_their_old_meaning(value: int) -> None:
    body = f"[{value}, 1]".encode()
    for dtype in (np.dtype("float32"), np.dtype("float64")):
        assert_same(from_json("t", loads(body), dtype), np.array([value, 1], dtype))
    for dtype in (np.dtype("int64"), np.dtype("uint64")):
        with pytest.raises(DecodeError, match="tensor 't'"):
            from_json("t", loads(body), dtype)
    with pytest.raises(DecodeError, match="expected numbers"):  # no dtype: not a number array
        from_json("t", loads(body))
    assert loads(b"\n" + body[1:-4]) == value  # a bare one, after whitespace


def test_fractions_with_many_digits_stay_on_the_fast_path() -> None:
    body = b"[0.00012345678901234567, 1.2345678901234567e-05, -0.0012345678901234567]"
    assert not _may_hold_long_integers(body)
    assert loads(body) == json.loads(body)
