"""TF Serving's REST formats: columns round-trip by name, rows stack, one tensor goes unnamed."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaminfer.codecs.arrays import bytes_array
from streaminfer.codecs.errors import DecodeError
from streaminfer.codecs.jsonvalues import dumps, loads
from streaminfer.codecs.tfserving_json import (
    UNNAMED,
    read_columns,
    read_instances,
    tensor_json,
    write_columns,
)
from tests.test_codecs.strategies import bytes_arrays, full_shapes, numeric_arrays

# JSON numbers carry no dtype: these come back as the same values in numpy's default types.
plain_arrays = numeric_arrays(
    [np.dtype(n) for n in ("bool", "int32", "int64", "float32", "float64")], full_shapes
) | bytes_arrays(full_shapes)


@given(st.dictionaries(st.text(max_size=8).filter(bool), plain_arrays, min_size=1, max_size=3))
def test_columns_round_trip(tensors: dict[str, np.ndarray]) -> None:
    back = read_columns(loads(dumps(write_columns(tensors))), "outputs")
    if len(tensors) == 1:  # TF Serving answers a single output without its name
        assert list(back) == [UNNAMED]
        back = {next(iter(tensors)): back[UNNAMED]}
    assert set(back) == set(tensors)
    for name, array in tensors.items():
        assert back[name].shape == array.shape
        np.testing.assert_array_equal(back[name], array)


def test_bytes_outputs_named_so_go_b64() -> None:
    images = bytes_array([b"cat"])
    assert tensor_json("image_bytes", images) == [{"b64": "Y2F0"}]
    assert tensor_json("classes", images) == ["cat"]


def test_instances_stack_into_tensors() -> None:
    rows = read_instances([{"a": [1, 2], "b": "x"}, {"a": [3, 4], "b": {"b64": "eQ=="}}])
    np.testing.assert_array_equal(rows["a"], [[1, 2], [3, 4]])
    assert rows["b"].tolist() == [b"x", b"y"]
    bare = read_instances([[1.0, 2.0], [3.0, 4.0]])
    assert list(bare) == [UNNAMED] and bare[UNNAMED].shape == (2, 2)
    images = read_instances([{"b64": "eQ=="}])
    assert images[UNNAMED].tolist() == [b"y"]


@pytest.mark.parametrize(
    ("instances", "words"),
    [
        ([], "non-empty list"),
        ({"a": 1}, "non-empty list"),
        ([{"a": 1}, {"b": 1}], "every instance must name the same inputs"),
        ([[1, 2], [3]], "not a rectangular array"),
    ],
)
def test_malformed_instances_are_refused(instances: object, words: str) -> None:
    with pytest.raises(DecodeError, match=words):
        read_instances(instances)
