"""Grouping and splitting a micro-batch: pure functions, checked directly."""

from __future__ import annotations

import numpy as np
import pytest

from streaminfer.errors import RecordError
from streaminfer.predictors.base import PredictRequest
from streaminfer.predictors.grouping import (
    check_kind,
    chunks,
    concat_rows,
    group_by,
    split_rows,
    stack_key,
    tensor_rows,
)


def test_group_by_keeps_first_seen_order() -> None:
    assert group_by([3, 1, 4, 1, 5, 9, 2, 6], lambda n: n % 3) == [[3, 9, 6], [1, 4, 1], [5, 2]]


def test_chunks_respect_rows_and_bytes_and_let_a_giant_travel_alone() -> None:
    weights = {0: (1, 10), 1: (1, 10), 2: (1, 10), 3: (1, 500), 4: (2, 10), 5: (1, 10)}
    got = list(chunks(list(weights), weights.__getitem__, max_rows=3, max_bytes=100))
    assert got == [[0, 1, 2], [3], [4, 5]]
    assert list(chunks([], weights.__getitem__, 3, 100)) == []


@pytest.mark.parametrize("names", [("x",), ("x", "y")])
def test_concat_and_split_are_inverse(names: tuple[str, ...]) -> None:
    parts = [{name: np.full((n, 2), n, np.float32) for name in names} for n in (1, 3, 2)]
    joined = concat_rows(parts)
    assert all(joined[name].shape == (6, 2) for name in names)
    back = split_rows(joined, [1, 3, 2])
    for part, piece in zip(parts, back, strict=True):
        assert list(piece) == list(names)
        for name in names:
            np.testing.assert_array_equal(part[name], piece[name])


def test_stackability() -> None:
    a = {"x": np.zeros((1, 4), np.float32)}
    b = {"x": np.zeros((5, 4), np.float32)}
    c = {"x": np.zeros((1, 4), np.float64)}
    assert stack_key(a) == stack_key(b) != stack_key(c)
    assert tensor_rows(b) == 5
    assert tensor_rows({"x": np.zeros(()), "y": np.zeros((1,))}) is None
    assert tensor_rows({"x": np.zeros((1, 2)), "y": np.zeros((2,))}) is None
    assert tensor_rows({"x": np.zeros(())}) is None  # a scalar has no rows to stack
    assert tensor_rows({"x": np.zeros((3, 2)), "y": np.zeros((3,))}) == 3
    assert stack_key({"y": np.zeros((1, 4), np.float32)}) != stack_key(a)  # names count
    two = {"x": np.zeros((1, 4), np.float32), "y": np.zeros((1, 2))}
    assert stack_key(two) == stack_key(dict(reversed(two.items()))) != stack_key(a)


@pytest.mark.parametrize(
    "request_",
    [
        PredictRequest(model="m"),
        PredictRequest(model="m", image=b"x", tensors={"a": np.zeros(1)}),
        PredictRequest(model="m", tensors={}),
    ],
)
def test_a_request_carries_exactly_one_kind_of_input(request_: PredictRequest) -> None:
    with pytest.raises(RecordError):
        check_kind(request_)
