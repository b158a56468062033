"""Arrays as raw bytes: row-major little-endian numbers, length-prefixed strings.

This is TF's ``tensor_content``, V2's ``raw_input_contents`` / ``raw_output_contents``
and the V2 REST binary-tensor extension.  Numbers become an array with
``numpy.frombuffer``, without a Python list in between, which is what makes a 600 KB
tensor cost microseconds instead of milliseconds.  Strings are each prefixed by their
length as a 4-byte little-endian integer.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from streaminfer.codecs.arrays import (
    BYTES,
    as_bytes,
    bytes_array,
    element_count,
    element_limit,
    shaped,
)
from streaminfer.codecs.errors import DecodeError

LENGTH_PREFIX = struct.Struct("<I")


def to_raw(array: np.ndarray) -> bytes:
    """The raw form of an array (any byte order in, little-endian out)."""
    if array.dtype == BYTES:
        return b"".join(
            LENGTH_PREFIX.pack(len(item)) + item for item in map(as_bytes, array.ravel().tolist())
        )
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def raw_buffer(array: np.ndarray) -> bytes | memoryview:
    """The raw form of an array; a view of the array itself where its memory is in that form
    already (numbers, row-major, little-endian), so that a writer copies it just once."""
    little_endian = array.dtype.newbyteorder("<") == array.dtype
    if array.dtype != BYTES and array.flags.c_contiguous and little_endian:
        return array.reshape(-1).view(np.uint8).data
    return to_raw(array)


def from_raw(
    name: str, dtype: np.dtype, shape: Sequence[int], data: bytes | memoryview
) -> np.ndarray:
    """The array of ``dtype`` and ``shape`` that ``data`` holds, if it holds exactly that."""
    count = element_count(name, shape, element_limit(dtype))
    if dtype == BYTES:
        return shaped(name, bytes_array(_split_length_prefixed(name, data, count)), shape)
    needed = count * dtype.itemsize
    if len(data) != needed:
        raise DecodeError(
            f"tensor {name!r}: {len(data)} bytes of data, shape {list(shape)} of {dtype} "
            f"needs {needed}"
        )
    return np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(shape)


def _split_length_prefixed(name: str, data: bytes | memoryview, most: int) -> list[bytes]:
    """The strings ``data`` holds; DecodeError past ``most`` of them, before reading more
    (60 MB of two-byte strings would be 10 million bytes objects)."""
    items: list[bytes] = []
    offset = 0
    view = memoryview(data)
    while offset < len(data):
        if len(items) == most:
            raise DecodeError(f"tensor {name!r}: BYTES data holds more than {most} strings")
        if offset + LENGTH_PREFIX.size > len(data):
            raise DecodeError(f"tensor {name!r}: BYTES data ends inside a length prefix")
        (size,) = LENGTH_PREFIX.unpack_from(view, offset)
        offset += LENGTH_PREFIX.size
        if offset + size > len(data):
            raise DecodeError(f"tensor {name!r}: BYTES element of {size} bytes runs past the end")
        items.append(bytes(view[offset : offset + size]))
        offset += size
    return items
