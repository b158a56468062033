"""The arrays every codec hands out, and the checks on a tensor a peer describes.

Strings and encoded images are object arrays of ``bytes`` (``BYTES``); numbers keep
their own dtype.  A peer's claimed shape is checked here before anything is allocated
from it: at most ``MAX_DIMS`` dimensions and ``MAX_ELEMENTS`` elements, and at most
``MAX_FILL`` elements made from a single value (TF's fill rule), the one place where a
few bytes on the wire could become a large array.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from streaminfer.codecs.errors import DecodeError

BYTES = np.dtype(object)
"""Strings and encoded images are object arrays of ``bytes``."""

"""Named arrays: a request's inputs or an answer's outputs."""

MAX_DIMS = 32
"""Most dimensions a tensor may have (numpy's own limit is 64, TensorFlow's 254)."""

MAX_ELEMENTS = 1 << 24
"""Largest tensor a peer may describe: 16 Mi elements, 64 MB of float32 (the default
request size limit), 128 MB at most for 8-byte types."""

MAX_FILL = 1 << 20
"""Largest tensor one value may fill (TF's rule): 1 Mi elements, 8 MB at most."""


def numpy_dtype(model_dtype: str) -> np.dtype:
    """The array dtype of a model.json dtype name ("float32", "string", ...)."""
    return BYTES if model_dtype == "string" else np.dtype(model_dtype)


def native(dtype: np.dtype) -> np.dtype:
    """``dtype`` in this machine's byte order, as the dtype tables are keyed."""
    return dtype.newbyteorder("=")


def bytes_array(items: Sequence[bytes]) -> np.ndarray:
    """A 1-D object array of ``bytes`` (``np.array`` would try to make a char matrix)."""
    array = np.empty(len(items), dtype=BYTES)
    array[:] = items
    return array


def as_bytes(item: object) -> bytes:
    """One element of a string array as bytes (models may answer with ``str``)."""
    return item.encode() if isinstance(item, str) else bytes(item)  # type: ignore[call-overload]


def element_count(name: str, shape: Sequence[int], limit: int = MAX_ELEMENTS) -> int:
    """Elements in ``shape``, refusing too many dimensions, negative ones and absurd sizes."""
    if len(shape) > MAX_DIMS:
        raise DecodeError(
            f"tensor {name!r}: {len(shape)} dimensions, more than the {MAX_DIMS} allowed"
        )
    count = 1
    for dim in shape:
        if dim < 0:
            raise DecodeError(f"tensor {name!r}: shape {list(shape)} has a negative dimension")
        count *= dim
        if count > limit or dim > limit:  # [0, 2**70] has no elements, yet no numpy shape
            raise DecodeError(
                f"tensor {name!r}: shape {list(shape)} has more than {limit} elements"
            )
    return count


def shaped(name: str, flat: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``flat`` reshaped to ``shape``, if it holds exactly that many elements."""
    count = element_count(name, shape)
    if flat.size != count:
        raise DecodeError(
            f"tensor {name!r}: {flat.size} values given, shape {list(shape)} needs {count}"
        )
    return flat.reshape(shape)


def from_values(name: str, values: Sequence[object], dtype: np.dtype) -> np.ndarray:
    """A flat array of ``dtype`` from a list of numbers, refusing values that do not fit.

    Read one value at a time: ``np.array`` would first copy a protobuf's repeated field
    into a list, 32 bytes a value (60 MB of ``float_val`` took the server past 1 GB).
    """
    try:
        return np.fromiter(values, dtype=dtype, count=len(values))
    except (OverflowError, ValueError, TypeError) as exc:
        raise DecodeError(f"tensor {name!r}: values do not fit {dtype}: {exc}") from exc
