"""The KServe/Triton classification extension: an output replaced by its top-K classes.

A client asks for it per requested output (parameter ``classification``: K, which
tritonclient sends for its ``class_count`` argument).  Each row of that output becomes K
BYTES strings ``"score:index"``, or ``"score:index:label"`` when the output has class
names, best first, as Triton writes them: the raw output values (no softmax), the score
with six decimals.  A ``[N, C]`` output becomes ``[N, K]``; a ``[C]`` one ``[K]``; K is
capped at C.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from streaminfer.codecs.arrays import BYTES
from streaminfer.serving.errors import InvalidRequest
from streaminfer.types import Tensors

PARAMETER = "classification"


def classified(
    outputs: Tensors,
    counts: Mapping[str, int],
    labelled: str | None = None,
    class_names: Sequence[str] | None = None,
) -> Tensors:
    """``outputs`` with each output named in ``counts`` replaced by its top classes.

    ``class_names`` name the classes of the output ``labelled`` only.
    """
    replaced = dict(outputs)
    for name, count in counts.items():
        if name not in outputs:
            raise InvalidRequest(f"no output {name!r} to classify; outputs: {sorted(outputs)}")
        names = class_names if name == labelled else None
        replaced[name] = top_classes(name, outputs[name], count, names)
    return replaced


def top_classes(
    name: str, values: np.ndarray, count: int, class_names: Sequence[str] | None
) -> np.ndarray:
    if values.dtype.kind not in "iufb" or values.ndim == 0 or values.size == 0:
        raise InvalidRequest(
            f"output {name!r} ({values.dtype}, shape {list(values.shape)}) has no classes to rank"
        )
    rows = values.reshape(1, -1) if values.ndim == 1 else values.reshape(len(values), -1)
    k = min(count, rows.shape[1])
    best = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :k]
    result = np.empty(best.shape, dtype=BYTES)
    for r, (row, ids) in enumerate(zip(rows, best, strict=True)):
        result[r, :] = [_entry(float(row[i]), int(i), class_names) for i in ids]
    return result[0] if values.ndim == 1 else result


def _entry(score: float, index: int, class_names: Sequence[str] | None) -> bytes:
    text = f"{score:f}:{index}"
    if class_names is not None and index < len(class_names):
        text += f":{class_names[index]}"
    return text.encode()


def class_count(value: object, output: str) -> int | None:
    """The K a requested output's ``classification`` parameter asks for (None: not asked)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequest(
            f"output {output!r}: parameter {PARAMETER!r} must be a non-negative integer, "
            f"not {value!r}"
        )
    return value or None  # tritonclient's class_count=0 means "no classification"
