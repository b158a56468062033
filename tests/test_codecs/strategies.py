"""Arrays of every dtype the codecs carry, for the round-trip property tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from streaminfer.codecs.arrays import BYTES, bytes_array
from streaminfer.codecs.v2 import DATATYPES

NUMERIC_DTYPES = [dtype for dtype in DATATYPES.values() if dtype != BYTES]
"""Every numeric dtype both protocols carry: bool, (u)int8 to 64, float16 to 64."""

shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)
"""Any rank up to 4, zero-size dimensions included."""

full_shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)
"""Shapes that nested JSON lists spell out unambiguously: no scalars, no empty sides."""


@st.composite
def numeric_arrays(
    draw: st.DrawFn,
    dtypes: list[np.dtype] = NUMERIC_DTYPES,
    shape: st.SearchStrategy[tuple[int, ...]] = shapes,
) -> np.ndarray:
    """A numeric array of any listed dtype and shape, in either byte order."""
    dtype = draw(st.sampled_from(dtypes))
    array = draw(hnp.arrays(dtype, draw(shape)))
    if dtype.itemsize > 1 and draw(st.booleans()):
        array = array.astype(dtype.newbyteorder(">"))
    return array


@st.composite
def bytes_arrays(draw: st.DrawFn, shape: st.SearchStrategy[tuple[int, ...]] = shapes) -> np.ndarray:
    """An object array of arbitrary ``bytes`` (any length, any byte values)."""
    drawn = draw(shape)
    count = int(np.prod(drawn))
    items = draw(st.lists(st.binary(max_size=40), min_size=count, max_size=count))
    return bytes_array(items).reshape(drawn)


def arrays(shape: st.SearchStrategy[tuple[int, ...]] = shapes) -> st.SearchStrategy[np.ndarray]:
    return numeric_arrays(shape=shape) | bytes_arrays(shape)


def assert_same(back: np.ndarray, array: np.ndarray) -> None:
    """Equal dtype (up to byte order), shape and elements; zeros keep their sign.

    NaNs only need to stay NaN: JSON has no way to spell a NaN's sign or payload.
    """
    assert back.dtype == array.dtype.newbyteorder("=")
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    if array.dtype.kind == "f":
        np.testing.assert_array_equal(np.signbit(back[back == 0]), np.signbit(array[array == 0]))
