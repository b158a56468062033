"""JSON text and values ⇄ numpy arrays, for both REST APIs.

JSON is parsed by orjson and numbers then become an array in one ``numpy.asarray`` call;
a request's or answer's tensors (``loads_tensors``) skip the Python floats: simdjson reads
each nested list of floats straight into an array.  Arrays are written by orjson straight
from their buffer, never as Python float lists.
Bodies orjson refuses or would read differently from the JSON standard library (``NaN``
and ``Infinity``, integers past 64 bits, nesting past 1024 levels, UTF-16) are read by
the standard library, so any body means what it always meant.  Binary values travel as
``{"b64": "..."}`` (TF Serving's convention, also accepted in V2 JSON); text strings
become UTF-8 ``bytes``.
"""

from __future__ import annotations

import base64
import binascii
import json
import reprlib
from typing import Any

import numpy as np
import orjson
import simdjson

from streaminfer.codecs.arrays import BYTES, bytes_array, element_count
from streaminfer.codecs.errors import DecodeError

JSON = Any

_DIGITS_AND_SEPARATORS = bytes.maketrans(b"0123456789,[:- \t\n\r", b"0" * 10 + b"s" * 8)
_LONG_INTEGER = b"s" + b"0" * 19
"""A separator then 19 digits: an integer that may not fit 64 bits, which orjson would read
as a float.  After a "." it is a fraction (Python writes 0.00012345678901234567), so mapping
digits to "0" and separators to "s" finds the integers in one pass; an exponent after "e-"
matches too, which only costs the slow path."""
_WRITE_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def loads(body: bytes) -> JSON:
    """A body as JSON, or DecodeError saying why it is not."""
    if not _may_hold_long_integers(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # maybe valid for the standard library (NaN, deep nesting, UTF-16): ask it
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"the body is not valid JSON: {exc}") from exc


_NUMBER_TEXT = b"0123456789.eE+- \t\n\r"
"""What numbers and whitespace are written with.  Deleted from a body, they leave its
skeleton: the brackets and commas that give each array's length, then keys and other values."""


def loads_tensors(body: bytes) -> JSON:
    """``loads``, with each nested list of floats read straight into a float64 array.

    A list whose first leaf is a float is read by simdjson into one buffer, shaped by the
    lengths along its first elements.  The body's skeleton must then equal the skeleton
    those shapes imply, which proves every list rectangular.  A body read any other way
    than ``loads`` would read it (a ragged list, a string among floats, a big integer,
    ``NaN``) fails the fast path and is read by ``loads``, so it means what it always meant.
    """
    try:
        value, skeleton = _tensors_and_skeleton(simdjson.Parser().parse(body))
        if body.translate(None, _NUMBER_TEXT) == skeleton:
            return value
    except Exception:  # anything simdjson or the shapes refuse: the reference reader decides
        pass
    return loads(body)


def _tensors_and_skeleton(value: Any) -> tuple[JSON, bytes]:
    """A simdjson value as Python values, float lists as arrays, and the skeleton it implies."""
    if isinstance(value, simdjson.Object):
        keys = list(value)  # items() would convert the values to Python lists
        if len(set(keys)) != len(keys):
            raise ValueError("a key given twice: the reference reader keeps the last one")
        items = [(key, *_tensors_and_skeleton(value[key])) for key in keys]
        skeleton = b",".join(_skeleton_of(key) + b":" + inner for key, _, inner in items)
        return {key: item for key, item, _ in items}, b"{" + skeleton + b"}"
    if not isinstance(value, simdjson.Array):
        return value, _skeleton_of(value)
    shape, leaf = [], value
    while isinstance(leaf, simdjson.Array) and len(leaf):
        shape.append(len(leaf))
        leaf = leaf[0]
    if isinstance(leaf, float):
        array = np.frombuffer(value.as_buffer(of_type="d"), np.float64).reshape(shape)
        return array, _rectangle_skeleton(shape)
    if isinstance(leaf, simdjson.Object):  # rows of named values: their tensors are arrays
        items = [_tensors_and_skeleton(item) for item in value]
        return [item for item, _ in items], b"[" + b",".join(inner for _, inner in items) + b"]"
    plain = value.as_list()
    return plain, _skeleton_of(plain)


def _skeleton_of(value: JSON) -> bytes:
    return orjson.dumps(value).translate(None, _NUMBER_TEXT)


def _rectangle_skeleton(shape: list[int]) -> bytes:
    """``[,,]`` nested as a rectangular list of ``shape`` is written, numbers left out."""
    skeleton = b""
    for length in reversed(shape):
        skeleton = b"[" + (skeleton + b",") * (length - 1) + skeleton + b"]"
    return skeleton


def _may_hold_long_integers(body: bytes) -> bool:
    shapes = body.translate(_DIGITS_AND_SEPARATORS)
    return shapes.startswith(_LONG_INTEGER[1:]) or _LONG_INTEGER in shapes


def dumps(document: JSON) -> bytes:
    """Compact JSON; arrays from ``to_json`` are written from their buffers."""
    return orjson.dumps(document, option=_WRITE_OPTIONS)


def json_object(value: JSON, what: str) -> dict[str, Any]:
    """``value`` if it is a JSON object; ``what`` names it in the error."""
    if not isinstance(value, dict):
        raise DecodeError(f'"{what}" must be a JSON object')
    return value


def is_binary(value: JSON) -> bool:
    """True for TF Serving's binary value ``{"b64": "..."}``."""
    return isinstance(value, dict) and list(value) == ["b64"]


def from_json(name: str, value: JSON, dtype: np.dtype | None = None) -> np.ndarray:
    """A JSON scalar or nested list as an array: numbers, booleans, strings or b64 values
    (or an array ``loads_tensors`` already read).

    ``dtype`` fixes the type (V2 declares it); without it numpy infers one, and the
    model's input check casts it where that loses nothing.
    """
    if isinstance(value, np.ndarray) and dtype is not None and dtype.kind != "f":
        # Cast to another type as from JSON's lists.  (An integer past 2**53 in a list that
        # starts with a float was already rounded to a float64, as numpy does without a type.)
        value = value.tolist()
    leaf = value
    while isinstance(leaf, list) and leaf:
        leaf = leaf[0]
    if isinstance(leaf, str | dict) or dtype == BYTES:
        return _bytes_from_json(name, value)
    try:
        array = np.asarray(value, dtype=dtype)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise DecodeError(f"tensor {name!r}: not a rectangular array of numbers ({exc})") from exc
    if array.dtype.kind not in "biuf":
        raise DecodeError(f"tensor {name!r}: expected numbers, booleans, strings or b64 values")
    element_count(name, array.shape)  # the same bounds as a declared shape
    return array


def _bytes_from_json(name: str, value: JSON) -> np.ndarray:
    shape: list[int] = []
    level = value
    while isinstance(level, list):
        shape.append(len(level))
        if not level:
            break
        level = level[0]
    element_count(name, shape)
    items: list[bytes] = []
    _collect(name, value, shape, items)
    return bytes_array(items).reshape(shape)


def _collect(name: str, value: JSON, shape: list[int], items: list[bytes]) -> None:
    if not shape:
        items.append(_item_bytes(name, value))
        return
    if not isinstance(value, list) or len(value) != shape[0]:
        raise DecodeError(f"tensor {name!r}: the nested lists are not rectangular")
    for element in value:
        _collect(name, element, shape[1:], items)


def _item_bytes(name: str, value: JSON) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if is_binary(value) and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DecodeError(f"tensor {name!r}: invalid base64 ({exc})") from exc
    raise DecodeError(
        f'tensor {name!r}: expected a string or {{"b64": "..."}}, got {reprlib.repr(value)[:60]}'
    )


def to_json(array: np.ndarray, b64: bool = False) -> JSON:
    """An array as a value ``dumps`` writes as nested JSON lists.

    Numbers stay an array (floats widened to float64, so every value reads back exactly
    as the ``tolist()`` of old did); non-finite floats are pre-written by the standard
    library as ``NaN`` / ``Infinity``, which orjson would turn into ``null``.  Bytes become
    text, or ``{"b64"}`` when asked or not UTF-8.
    """
    if array.dtype == BYTES:
        flat = [_item_json(item, b64) for item in array.ravel().tolist()]
        return _nest(flat, list(array.shape))
    if array.dtype.kind == "f":
        array = array.astype(np.float64, copy=False)
        if not np.isfinite(array).all():
            return orjson.Fragment(json.dumps(array.tolist(), separators=(",", ":")))
    elif array.dtype.kind not in "biu":
        return array.tolist()
    if array.ndim == 0:
        return array.item()
    return np.ascontiguousarray(array, array.dtype.newbyteorder("="))


def _item_json(item: bytes | str, b64: bool) -> JSON:
    if isinstance(item, str):
        return item
    if not b64:
        try:
            return item.decode()
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(item).decode()}


def _nest(flat: list[JSON], shape: list[int]) -> JSON:
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]
