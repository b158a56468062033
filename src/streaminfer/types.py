"""Types every layer shares, at the bottom of the dependency graph (it imports only numpy).

``Tensors`` is what a model takes and gives, cut into slices of rows and joined again by
``row_slices`` and ``joined_rows``; ``ModelRef`` says which servable a request addresses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Tensors = dict[str, np.ndarray]
"""Named arrays; the first axis of each is the batch."""


def row_slices(inputs: Tensors, rows: int) -> list[Tensors]:
    """``inputs`` cut along the batch axis into slices of at most ``rows`` rows."""
    sizes = {array.shape[0] if array.ndim else 0 for array in inputs.values()}
    if len(sizes) != 1 or (total := sizes.pop()) <= rows:
        return [inputs]  # one piece; a mismatch or a scalar is refused when it is queued
    return [
        {name: array[start : start + rows] for name, array in inputs.items()}
        for start in range(0, total, rows)
    ]


def joined_rows(parts: list[Tensors]) -> Tensors:
    """Slices of one batch, in order, joined along the batch axis."""
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


@dataclass(frozen=True)
class ModelRef:
    """Which servable a request addresses: a model and at most one of a version or a label
    (neither: the model's latest version)."""

    name: str
    version: int | None = None
    label: str | None = None
