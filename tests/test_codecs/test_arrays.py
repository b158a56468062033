"""The arrays the codecs hand out: string arrays of bytes, shapes checked before allocating."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaminfer.codecs.arrays import (
    BYTES,
    MAX_DIMS,
    MAX_ELEMENTS,
    as_bytes,
    bytes_array,
    cast_exactly,
    element_count,
    fitted,
    numpy_dtype,
    shaped,
)
from streaminfer.codecs.errors import DecodeError
from streaminfer.errors import StreamInferError
from tests.test_codecs.strategies import NUMERIC_DTYPES, numeric_arrays


def test_model_dtype_names() -> None:
    assert numpy_dtype("string") == BYTES
    assert numpy_dtype("float32") == np.dtype(np.float32)


def test_bytes_arrays_hold_bytes_objects_not_a_char_matrix() -> None:
    array = bytes_array([b"ab", b"", b"c\0"])
    assert array.dtype == BYTES and array.shape == (3,)
    assert array.tolist() == [b"ab", b"", b"c\0"]
    assert as_bytes("é") == "é".encode() and as_bytes(b"\xff") == b"\xff"


def test_claimed_shapes_are_checked_before_anything_is_allocated() -> None:
    assert element_count("t", []) == 1
    assert element_count("t", [2, 0, 7]) == 0
    with pytest.raises(DecodeError, match="negative dimension"):
        element_count("t", [2, -1])
    with pytest.raises(DecodeError, match=f"more than {MAX_ELEMENTS}"):
        element_count("t", [1 << 20, 1 << 20, 0])  # refused before the zero is reached
    assert shaped("t", np.arange(6), [2, 3]).shape == (2, 3)
    with pytest.raises(DecodeError, match="6 values given, shape \\[4\\] needs 4"):
        shaped("t", np.arange(6), [4])


def test_values_that_do_not_fit_the_dtype_are_refused() -> None:
    """A field's int32 numbers become a tensor's smaller integers only where each fits."""
    assert fitted("t", np.array([1, 2], np.int32), np.dtype(np.uint8)).tolist() == [1, 2]
    with pytest.raises(DecodeError, match=re.escape("values in [-1, 256] do not fit uint8")):
        fitted("t", np.array([256, 0, -1], np.int32), np.dtype(np.uint8))
    same = np.array([-(2**31)], np.int32)
    assert fitted("t", same, np.dtype(np.int32)) is same


def test_shapes_of_too_many_dimensions_are_refused_before_numpy_sees_them() -> None:
    assert element_count("t", [1] * MAX_DIMS) == 1
    with pytest.raises(DecodeError, match=f"{MAX_DIMS + 1} dimensions, more than the {MAX_DIMS}"):
        element_count("t", [1] * (MAX_DIMS + 1))


def test_an_empty_shape_with_an_absurd_dimension_is_refused() -> None:
    with pytest.raises(DecodeError, match="more than"):
        element_count("t", [0, 1 << 70])


def test_a_lower_limit_can_be_asked_for() -> None:
    assert element_count("t", [4, 4], limit=16) == 16
    with pytest.raises(DecodeError, match="more than 15 elements"):
        element_count("t", [4, 4], limit=15)


F32 = np.dtype(np.float32)


def test_values_that_fit_are_cast_exactly() -> None:
    def cast(array: np.ndarray, dtype: np.dtype) -> list[object]:
        return cast_exactly("x", array, np.dtype(dtype), DecodeError).tolist()

    assert cast(np.array([1.0, -3.0]), np.int64) == [1, -3]
    assert cast(np.array([0, 1]), np.bool_) == [False, True]
    assert cast(np.array([255]), np.uint8) == [255]
    assert cast(np.array([np.inf, -np.inf]), F32) == [np.inf, -np.inf]  # inf stays inf
    assert np.isnan(cast(np.array([np.nan]), F32)).all()  # a missing value, for trees
    assert cast(np.array([3.4028235e38]), F32) == [float(np.finfo(F32).max)]


@pytest.mark.parametrize(
    ("values", "dtype", "words"),
    [
        (np.array([1e39, np.nan]), F32, "beyond float32's range"),
        (np.array([-1e300]), F32, "beyond float32's range"),
        (np.array([70_000]), np.dtype(np.float16), "beyond float16's range"),
        (np.array([2**40]), np.dtype(np.int32), "[1099511627776, 1099511627776], beyond int32"),
        (np.array([-1]), np.dtype(np.uint64), "beyond uint64's range"),
        (np.array([0.5]), np.dtype(np.int64), "fractions"),
        (np.array([np.nan]), np.dtype(np.int64), "fractions"),
        (np.array([2]), np.dtype(np.bool_), "other than 0 and 1"),
        (np.array(["1"]), F32, "<U1 values"),
        (np.array([1j]), F32, "no safe cast"),
    ],
)
def test_a_cast_that_would_change_a_value_raises_the_callers_error(
    values: np.ndarray, dtype: np.dtype, words: str
) -> None:
    class Blame(StreamInferError):
        pass

    with pytest.raises(Blame, match=re.escape(words)):
        cast_exactly("x", values, dtype, Blame)


def _fits(value: float | int | bool, dtype: np.dtype) -> bool:
    """Whether one Python number goes into ``dtype`` as itself (a float: rounded, not inf)."""
    if dtype.kind == "b":
        return value in (0, 1)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        whole = not isinstance(value, float) or value.is_integer()
        return whole and info.min <= int(value) <= info.max
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the overflow this checks for
        narrowed = float(dtype.type(value))
    return not math.isinf(narrowed) or math.isinf(value)


@given(numeric_arrays(), st.sampled_from(NUMERIC_DTYPES))
def test_a_cast_keeps_every_value_or_is_refused(array: np.ndarray, dtype: np.dtype) -> None:
    """Refused exactly when some value does not fit; otherwise each value is itself,
    rounded to the float type at most."""
    values = array.ravel().tolist()
    try:
        cast = cast_exactly("x", array, dtype, DecodeError)
    except DecodeError:
        assert not all(_fits(value, dtype) for value in values)
        return
    assert all(_fits(value, dtype) for value in values)
    assert cast.dtype == dtype and cast.shape == array.shape
    for got, value in zip(cast.ravel().tolist(), values, strict=True):
        if dtype.kind == "f":
            want = float(dtype.type(value))
            assert got == want or (math.isnan(got) and math.isnan(want))
        else:
            assert got == value
