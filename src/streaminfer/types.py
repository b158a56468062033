"""Types every layer shares, at the bottom of the dependency graph (it imports only numpy).

``Tensors`` is what a model takes and gives; ``ModelRef`` says which servable a request
addresses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Tensors = dict[str, np.ndarray]
"""Named arrays; the first axis of each is the batch."""


@dataclass(frozen=True)
class ModelRef:
    """Which servable a request addresses: a model and at most one of a version or a label
    (neither: the model's latest version)."""

    name: str
    version: int | None = None
    label: str | None = None
