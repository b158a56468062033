"""The arrays every codec hands out, and the checks on a tensor a peer describes.

Strings and encoded images are object arrays of ``bytes`` (``BYTES``); numbers keep
their own dtype.  A peer's claimed shape is checked here before anything is allocated
from it: at most ``MAX_DIMS`` dimensions and ``MAX_ELEMENTS`` elements, and at most
``MAX_FILL`` elements and ``MAX_FILL_BYTES`` made from a single value (TF's fill rule),
the one place where a few bytes on the wire could become a large array.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from streaminfer.codecs.errors import DecodeError
from streaminfer.errors import StreamInferError

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

MAX_FILL_BYTES = MAX_FILL * 8
"""Most bytes one value may fill: what ``MAX_FILL`` of the widest number take.  A string
is as long as it likes, so its count alone does not bound it: one 64 KB ``string_val``
filling [4096] made 256 MB of answer, and a 1 MB one took the server past 22 GB."""

MAX_OBJECTS = 1 << 21
"""Most values of one tensor or body that become Python objects: a string tensor's
elements, or JSON values other than the lists of numbers read into arrays
(``jsonvalues``).  Each takes 40-80 bytes where a number takes 1-8: 15 million two-byte
``string_val`` (a 60 MB message) took the server to 5.5 GB.  2 Mi cost at most about
160 MB."""


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


def element_limit(dtype: np.dtype) -> int:
    """The most elements a peer may describe for a tensor of ``dtype``."""
    return MAX_OBJECTS if dtype == BYTES else MAX_ELEMENTS


def shaped(name: str, flat: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``flat`` reshaped to ``shape``, if it holds exactly that many elements."""
    count = element_count(name, shape)
    if flat.size != count:
        raise wrong_count(name, flat.size, shape, count)
    return flat.reshape(shape)


def wrong_count(name: str, given: int, shape: Sequence[int], count: int) -> DecodeError:
    """The error for ``given`` values where ``shape`` holds ``count``."""
    return DecodeError(f"tensor {name!r}: {given} values given, shape {list(shape)} needs {count}")


def fitted(name: str, values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A protobuf field's numbers (``values``, of the field's type: ``int32`` for TF's
    ``int_val``) as ``dtype``, refusing any that do not fit (300 for a uint8)."""
    if values.dtype == dtype:
        return values
    beyond = _beyond_range(values, dtype) if dtype.kind in "iu" else None
    if beyond is not None:
        low, high = beyond
        raise DecodeError(f"tensor {name!r}: values in [{low}, {high}] do not fit {dtype}")
    return values.astype(dtype)


def _beyond_range(array: np.ndarray, dtype: np.dtype) -> tuple[int | float, int | float] | None:
    """The lowest and highest of ``array``, if either is beyond integer ``dtype``'s range.

    As Python numbers, which compare exactly: numpy would compare 2**63 - 1 as a float,
    2**63, with a float64 array, and with a float16 one overflow."""
    if not array.size:
        return None
    info = np.iinfo(dtype)
    low, high = array.min().item(), array.max().item()
    return (low, high) if low < info.min or high > info.max else None


def cast_exactly(
    name: str,
    array: np.ndarray,
    dtype: np.dtype,
    error: type[StreamInferError],
    *,
    wanted: str = "the model takes",
) -> np.ndarray:
    """``array`` as ``dtype`` if no value changes on the way; ``error`` saying why not.

    numpy's own casts wrap integers (300 becomes 44 in a uint8), cut fractions and turn
    floats beyond the range into inf, silently.  The caller names the blame: a record's
    input (``InvalidInput``) or a request's wire data (``DecodeError``); and, in
    ``wanted``, whose ``dtype`` it is.
    """
    if array.dtype == dtype:
        return array
    have = array.dtype.kind
    if have not in "biufOUS" or dtype.kind not in "biufO":
        raise error(f"input {name!r}: no safe cast from {array.dtype} to {dtype}")
    if dtype == BYTES or have in "OUS":
        # Strings convert only to strings, and numbers never to strings.
        if dtype == BYTES and have in "OUS":
            return array.astype(BYTES)
        raise error(f"input {name!r} has {array.dtype} values, {wanted} {dtype}")
    if dtype.kind == "b":
        if have == "b" or (have in "iuf" and np.isin(array, (0, 1)).all()):
            return array.astype(dtype)
        raise error(f"input {name!r} has values other than 0 and 1 for a bool input")
    if dtype.kind in "iu":
        if have == "f" and not np.array_equal(array, np.trunc(array)):
            raise error(f"input {name!r} has fractions, {wanted} {dtype}")
        beyond = None if have == "b" else _beyond_range(array, dtype)
        if beyond is not None:
            low, high = beyond
            raise error(f"input {name!r} has values in [{low}, {high}], beyond {dtype}'s range")
        return array.astype(dtype)
    with np.errstate(over="ignore"):  # checked below, on the result: one pass, no copy
        result = array.astype(dtype)
    if not np.isfinite(result).all() and (np.isinf(result) & np.isfinite(array)).any():
        raise error(f"input {name!r} has values beyond {dtype}'s range")
    return result
