"""Turning a micro-batch of records into as few model runs as possible, and back.

Records that can share one model run (same model and version, images with images,
tensors of the same shape with each other) are grouped, their tensors are stacked
along the batch axis, and the outputs are cut back into one slice per record.  The
embedded predictor and every remote client share these helpers.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np

from streaminfer.models.errors import InvalidInput
from streaminfer.predictors.base import PredictRequest
from streaminfer.types import Tensors

T = TypeVar("T")


def group_by(items: Iterable[T], key: Callable[[T], Hashable]) -> list[list[T]]:
    """Items with equal keys together, groups and members in first-seen order."""
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return list(groups.values())


def check_kind(request: PredictRequest) -> None:
    """A request carries an image or tensors, never both or neither."""
    if (request.image is None) == (request.tensors is None):
        raise InvalidInput("a request needs exactly one of an image or tensors")
    if request.tensors is not None and not request.tensors:
        raise InvalidInput("a tensor request needs at least one tensor")


def tensor_rows(tensors: Tensors) -> int | None:
    """The shared batch size of a record's tensors; None if they cannot be stacked with others."""
    if len(tensors) == 1:  # most records: no set to build
        (array,) = tensors.values()
        return array.shape[0] if array.ndim else None
    rows = {a.shape[0] if a.ndim else None for a in tensors.values()}
    if len(rows) != 1:
        return None
    return rows.pop()


def stack_key(tensors: Tensors) -> Hashable:
    """Records with equal keys can be concatenated along axis 0.  A dtype is its own key
    (equal dtypes hash alike): its ``.str`` costs a string per record."""
    if len(tensors) == 1:  # most records: the same key, without a generator to sort
        ((name, array),) = tensors.items()
        return ((name, array.shape[1:], array.dtype),)
    return tuple(sorted((name, a.shape[1:], a.dtype) for name, a in tensors.items()))


def concat_rows(parts: Sequence[Tensors]) -> Tensors:
    """Stack several records' tensors (equal ``stack_key``) into one batch."""
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def split_rows(outputs: Tensors, rows: Sequence[int]) -> list[Tensors]:
    """Cut batched outputs back into one slice per record, ``rows[i]`` rows each; one
    record's outputs whole (a model's that are not a row per input row stay as they are)."""
    if len(rows) == 1:
        return [outputs]
    sliced, start = [], 0
    if len(outputs) == 1:  # most models: a comprehension per record cost twice the slice
        ((name, value),) = outputs.items()
        for count in rows:
            sliced.append({name: value[start : start + count]})
            start += count
        return sliced
    for count in rows:
        sliced.append({name: value[start : start + count] for name, value in outputs.items()})
        start += count
    return sliced


def chunks(
    indices: Sequence[int], weigh: Callable[[int], tuple[int, int]], max_rows: int, max_bytes: int
) -> Iterator[list[int]]:
    """Split a group so each chunk stays within ``max_rows`` rows and ``max_bytes`` bytes.

    ``weigh(i)`` gives record ``i``'s ``(rows, bytes)``.  A record over a limit on its
    own travels alone; the receiving side decides what to do with it.
    """
    chunk: list[int] = []
    rows = size = 0
    for index in indices:
        item_rows, item_bytes = weigh(index)
        if chunk and (rows + item_rows > max_rows or size + item_bytes > max_bytes):
            yield chunk
            chunk, rows, size = [], 0, 0
        chunk.append(index)
        rows += item_rows
        size += item_bytes
    if chunk:
        yield chunk
