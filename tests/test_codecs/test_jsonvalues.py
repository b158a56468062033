"""JSON values ⇄ arrays: numbers keep their values, bytes survive as text or b64."""

from __future__ import annotations

import json
import pickle
import re
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaminfer.codecs.arrays import BYTES, MAX_OBJECTS, bytes_array
from streaminfer.codecs.errors import DecodeError
from streaminfer.codecs.jsonvalues import (
    TooManyValues,
    _may_hold_long_integers,
    check_python_values,
    dumps,
    from_json,
    json_object,
    loads,
    loads_tensors,
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
    assert json.dumps(loads(b'{"x":[NaN,-Infinity,1e308]}')) == '{"x": [NaN, -Infinity, 1e+308]}'
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
        with pytest.raises(DecodeError, match=f"beyond {dtype}'s range"):
            from_json("t", loads(body), dtype)
    read = from_json("t", loads(body))  # no dtype: float64, as numpy reads 2**63
    assert_same(read.astype(np.float32), np.array([value, 1], np.float32))
    assert loads(b"\n" + body[1:-4]) == value  # a bare one, after whitespace


def test_integers_past_float64_are_refused() -> None:
    body = f"[{10**400}, 1]".encode()
    for dtype in (None, np.dtype("float64")):
        with pytest.raises(DecodeError, match="tensor 't' has integers beyond float64's range"):
            from_json("t", loads(body), dtype)


def test_fractions_with_many_digits_stay_on_the_fast_path() -> None:
    body = b"[0.00012345678901234567, 1.2345678901234567e-05, -0.0012345678901234567]"
    assert not _may_hold_long_integers(body)
    assert loads(body) == json.loads(body)


def _plain(value: object) -> object:
    """``value`` with the arrays ``loads_tensors`` made turned back into lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


finite_floats = st.floats(allow_nan=False, allow_infinity=False)
float_lists = st.recursive(
    st.lists(finite_floats | st.integers(-(2**70), 2**70), max_size=4),
    lambda inner: st.lists(inner | finite_floats, max_size=4),
    max_leaves=30,
)
"""Nested lists of numbers, rectangular or ragged, floats first or not, lists and numbers
side by side."""
bracket_text = st.text(alphabet="[]{},:a", max_size=4)
"""Strings full of the characters the fast path counts."""
tensor_documents = st.recursive(
    json_documents | float_lists | bracket_text,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5) | bracket_text, inner)
    ),
    max_leaves=10,
)


@given(tensor_documents, st.sampled_from([None, 1]))
def test_tensor_bodies_read_as_loads_reads_them(document: object, indent: int | None) -> None:
    body = json.dumps(document, indent=indent).encode()
    assert _same_values(_plain(loads_tensors(body)), loads(body))


def _same_values(fast: Any, slow: Any) -> bool:
    """Equal, NaN equal to NaN; an array's 2.0 stands for the 2 numpy would read as 2.0."""
    if isinstance(slow, dict):
        return (
            isinstance(fast, dict)
            and list(fast) == list(slow)
            and all(_same_values(fast[key], slow[key]) for key in slow)
        )
    if isinstance(slow, list):
        return (
            isinstance(fast, list)
            and len(fast) == len(slow)
            and all(_same_values(f, s) for f, s in zip(fast, slow, strict=True))
        )
    if isinstance(slow, float) and slow != slow:
        return isinstance(fast, float) and fast != fast
    return isinstance(fast, bool) == isinstance(slow, bool) and fast == slow


@given(numeric_arrays([np.dtype("float64")], full_shapes).filter(lambda a: a.ndim and a.size))
def test_rectangular_floats_become_one_array(array: np.ndarray) -> None:
    array = np.nan_to_num(array, posinf=1.5, neginf=-1.5) + 0.5  # a float first, no NaN
    for document in ({"instances": array.tolist()}, [{"x": array.tolist(), "tag": "a e"}]):
        read = loads_tensors(json.dumps(document, indent=1).encode())
        found = read["instances"] if isinstance(read, dict) else read[0]["x"]
        assert isinstance(found, np.ndarray)
        assert_same(found, array)


@pytest.mark.parametrize(
    "body",
    [
        b"[[1.5, 2], [3], [4, 5, 6]]",  # as many numbers as a 3x2 list, in ragged rows
        b"[[1.5, 2], [3, 4, 5]]",
        b"[[1.5, 2], [3, true]]",
        b'[[1.5, 2], [3, "4"]]',
        b"[[1.5, 2], [3, [4]]]",
        b"[[1.5, [2]], [3, 4]]",  # rows of the right length, a list of one among the numbers
        b"[[1.5, []], [[2, 3], 4]]",  # as many numbers as a 2x2 list, nested unevenly
        b"[[[1.5, 2], [3, 4]], [[5], [6, 7, 8]]]",  # ragged two levels down only
        b'{"\\u005b": 0, "x": [[1.5, [2]], [3, 4]]}',  # an escaped "[" would hide that list
        b"[1.5, 123456789012345678901234567890]",
        b"[1.5, NaN]",
        b'{"x": [1.5], "x": [2.5, 3]}',
    ],
)
def test_what_the_fast_path_cannot_prove_is_read_as_before(body: bytes) -> None:
    read = loads_tensors(body)
    assert json.dumps(read) == json.dumps(loads(body))  # plain lists: json.dumps has no arrays


@pytest.mark.parametrize(
    ("body", "dtype", "words"),
    [
        (b"[1.5, 1e300]", np.dtype("float32"), "beyond float32's range"),
        (b"[1.5, 70000.0]", np.dtype("float16"), "beyond float16's range"),
        (b"[1.0, 1.5]", np.dtype("int32"), "fractions, its declared type is int32"),
        (b"[1.0, 3e9]", np.dtype("int32"), "beyond int32's range"),
        (b"[-1.0, 2.0]", np.dtype("uint8"), "beyond uint8's range"),
        (b"[0.0, 0.5]", np.dtype("bool"), "other than 0 and 1"),
        (b"[1.5]", BYTES, 'expected a string or {"b64"'),
    ],
)
def test_a_declared_type_takes_only_values_it_holds(
    body: bytes, dtype: np.dtype, words: str
) -> None:
    """Read as one float64 array (the fast path) or as lists, a value the declared type
    cannot hold is refused with the same words, never rounded, wrapped or made inf."""
    read = loads_tensors(body)
    assert isinstance(read, np.ndarray)
    with pytest.raises(DecodeError, match=re.escape(words)) as fast:
        from_json("t", read, dtype)
    with pytest.raises(DecodeError) as slow:
        from_json("t", loads(body), dtype)
    assert str(fast.value) == str(slow.value)


def test_a_declared_type_takes_the_values_it_holds() -> None:
    read = loads_tensors(b"[1.0, 3e38, -1e-50, 0.0]")
    assert_same(from_json("t", read, np.dtype("float32")), np.array([1, 3e38, -0.0, 0], np.float32))
    assert_same(from_json("t", [1, -2], np.dtype("int8")), np.array([1, -2], np.int8))
    assert_same(from_json("t", [1.0, 0.0], np.dtype("bool")), np.array([True, False]))
    for holds in ([0, 2**63 + 1], [2**64 - 1, 1.0]):  # numpy alone reads both as float64
        assert_same(from_json("t", holds, np.dtype("uint64")), np.array(holds, np.uint64))
    with pytest.raises(DecodeError, match="beyond int64's range"):
        from_json("t", [-1, 2**63 + 1], np.dtype("int64"))


def _list_of(item: bytes, count: int) -> bytes:
    return b'{"instances": [' + b",".join([item] * count) + b"]}"


@pytest.mark.parametrize("item", [b"0", b'""', b"[]", b"true"])
def test_a_list_too_long_for_simdjson_is_refused_not_overrun(item: bytes) -> None:
    """simdjson counts a list's length in 24 bits, and pysimdjson's ``as_list`` made a
    list of the count, then wrote all the elements into it: glibc aborted the process."""
    body = _list_of(item, 0xFFFFFF + 2)
    for read in (loads_tensors, loads):
        with pytest.raises(DecodeError, match="JSON values, more than the 2,097,152"):
            read(body)


@pytest.mark.parametrize("item", [b'{"a":1}', b"true", b'"ab"', b"[null]"])
def test_values_are_counted_before_they_are_read(item: bytes) -> None:
    """Just under the limit a body is read; one value more and it is refused unread."""
    per_item = 1 + item.count(b":") + item.count(b"[") + item.count(b"{")  # and a comma
    fits = (MAX_OBJECTS - 3) // per_item  # the body's object, key and list: 3 more
    read = loads_tensors(_list_of(item, fits))["instances"]
    assert len(read) == fits
    assert read[-1] == loads(item)
    too_many = _list_of(item, fits + 1)
    for read_body in (loads_tensors, loads, check_python_values):
        with pytest.raises(DecodeError, match="JSON values"):
            read_body(too_many)


@pytest.mark.parametrize(
    ("row", "dtype"),
    [
        (b"[0.5,1.5,2]", np.float64),
        (b"[0,255,7]", np.int64),  # a uint8 image's pixels, say
        (b"[1,2.5,-3]", np.float64),  # as numpy reads [1, 2.5, -3]
    ],
)
def test_lists_of_numbers_are_not_python_values(row: bytes, dtype: type) -> None:
    """3 million numbers, one array: the limit is on Python objects, which they never become."""
    read = loads_tensors(_list_of(row, 1_000_000))["instances"]
    assert isinstance(read, np.ndarray)
    assert read.dtype == dtype
    assert read.shape == (1_000_000, 3)
    assert read[-1].tolist() == json.loads(row)


def test_short_lists_of_integers_stay_lists() -> None:
    """A V2 shape is read as the list it is; 257 integers are a tensor."""
    read = loads_tensors(b'{"shape": [1, 3, 224, 224], "data": [' + b"7," * 256 + b"7]}")
    assert read["shape"] == [1, 3, 224, 224]
    assert isinstance(read["data"], np.ndarray) and read["data"].dtype == np.int64


@pytest.mark.parametrize(
    "tail",
    [
        b"9223372036854775807, -9223372036854775808",
        b"2.5",  # a float among the integers: float64
        b"9223372036854775808",  # past int64: numpy reads uint64
        b"-1, 18446744073709551615",  # both signs past int64: float64
        b"true",
        b"[1]",
    ],
)
def test_integer_tensors_read_as_numpy_reads_the_lists(tail: bytes) -> None:
    body = b"[" + b"1, " * 300 + tail + b"]"
    fast, slow = loads_tensors(body), loads(body)
    assert _same_values(_plain(fast), slow)
    if isinstance(fast, np.ndarray):
        assert fast.dtype == np.asarray(slow).dtype


def test_too_many_values_crosses_processes_whole() -> None:
    """The decoder process sends its errors to the server pickled."""
    error = pickle.loads(pickle.dumps(TooManyValues(3_000_000)))
    assert isinstance(error, TooManyValues) and error.values == 3_000_000
    assert "3,000,000 JSON values" in str(error)


@pytest.mark.parametrize(
    "body",
    [
        b'["\\ud800"]',
        b'{"id": "\\udc00", "x": [1.5, NaN]}',  # NaN: read by the standard library
        b'["\\ud83d\\ud83d\\ude00"]',  # a high half, then a pair
        b'["\\\\\\ud800", 123456789012345678901234567890]',  # an escaped backslash first
        '["\\ud800"]'.encode("utf-16"),
        b'["\xed\xa0\x80", NaN]',  # a surrogate in UTF-8, which no UTF-8 may hold
    ],
)
def test_lone_surrogates_are_refused(body: bytes) -> None:
    """A string that cannot become UTF-8 was 500 where its bytes or its echo were written."""
    for read in (loads, loads_tensors):
        with pytest.raises(DecodeError, match="lone surrogate"):
            read(body)


def test_surrogate_pairs_and_escaped_backslashes_are_text() -> None:
    body = b'["\\ud83d\\ude00", "\\\\ud800", NaN]'
    assert loads(body)[:2] == ["\U0001f600", "\\ud800"]


@pytest.mark.parametrize(
    "body", [b"[1.5, 1e400]", b'{"x": [-1e400, NaN]}', b"[1.5, 1" + b"0" * 400 + b".0]"]
)
def test_numbers_past_float64_are_refused_not_made_inf(body: bytes) -> None:
    for read in (loads, loads_tensors):
        with pytest.raises(DecodeError, match="beyond float64's range"):
            read(body)
