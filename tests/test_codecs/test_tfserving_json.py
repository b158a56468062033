"""TF Serving's REST formats: columns round-trip by name, rows stack, one tensor goes unnamed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from streaminfer.codecs.arrays import bytes_array
from streaminfer.codecs.errors import DecodeError
from streaminfer.codecs.jsonvalues import dumps, loads, loads_tensors
from streaminfer.codecs.tfserving_json import (
    UNNAMED,
    read_columns,
    read_instances,
    tensor_json,
    write_columns,
)
from tests.test_codecs.strategies import assert_same, bytes_arrays, full_shapes, numeric_arrays

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


@st.composite
def batches(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """Named tensors sharing a batch size, as a request carries them ("*_bytes" go b64)."""
    rows = draw(st.integers(1, 3))
    names = draw(
        st.lists(
            st.text(max_size=8).filter(lambda n: n not in ("", "b64")) | st.just("image_bytes"),
            min_size=1,
            max_size=3,
            unique=True,
        )
    )
    tails = hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3)
    return {name: draw(tails.flatmap(lambda tail: _arrays((rows, *tail)))) for name in names}


def _arrays(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    return numeric_arrays(ROW_DTYPES, st.just(shape)) | bytes_arrays(st.just(shape))


ROW_DTYPES = [np.dtype(n) for n in ("bool", "int64", "float32", "float64")]


def _client_body(tensors: dict[str, np.ndarray], row_format: bool) -> bytes:
    """A request as a client using the ``json`` module writes it."""
    if row_format:
        rows = next(iter(tensors.values())).shape[0]
        document = {
            "instances": [
                {name: tensor_json(name, array[i, ...]) for name, array in tensors.items()}
                for i in range(rows)
            ]
        }
    else:
        document = {"inputs": {name: tensor_json(name, array) for name, array in tensors.items()}}
    return json.dumps(json.loads(dumps(document))).encode()


def _read(document: dict[str, object]) -> dict[str, np.ndarray]:
    if "instances" in document:
        return read_instances(document["instances"])
    return read_columns(document["inputs"], "inputs")


@given(batches(), st.booleans())
def test_requests_round_trip_and_read_as_with_the_standard_library(
    tensors: dict[str, np.ndarray], row_format: bool
) -> None:
    body = _client_body(tensors, row_format)
    slow = _read(json.loads(body))
    for read in (_read(loads(body)), _read(loads_tensors(body))):  # loads_tensors: the server's
        assert set(read) == set(slow) == set(tensors)
        for name, array in tensors.items():
            assert_same(read[name], slow[name])
            assert read[name].shape == array.shape
            np.testing.assert_array_equal(read[name], array)
