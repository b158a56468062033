"""JSON text and values ⇄ numpy arrays, for both REST APIs.

JSON is parsed by orjson and numbers then become an array in one ``numpy.asarray`` call;
a request's or answer's tensors (``loads_tensors``) skip the Python numbers: simdjson reads
each nested list of numbers straight into an array.  Arrays are written by orjson straight
from their buffer, never as Python float lists.
Bodies orjson refuses or would read differently from the JSON standard library (``NaN``
and ``Infinity``, integers past 64 bits, nesting past 1024 levels, UTF-16) are read by
the standard library, so any body means what it always meant, but for what orjson
refuses for good reason and the standard library would let through: a lone surrogate
(``"\\ud800"``, a string no UTF-8 can write) and a number past float64's range
(``1e400``, which would become inf).  A body whose values would be too many Python
objects (``MAX_OBJECTS``) is refused before one is made.
Binary values travel as ``{"b64": "..."}`` (TF Serving's convention, also accepted in V2
JSON); text strings become UTF-8 ``bytes``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import reprlib
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import simdjson

from streaminfer.codecs.arrays import (
    BYTES,
    MAX_OBJECTS,
    bytes_array,
    cast_exactly,
    element_count,
)
from streaminfer.codecs.errors import DecodeError

JSON = Any

_DIGITS_AND_SEPARATORS = bytes.maketrans(b"0123456789,[:- \t\n\r", b"0" * 10 + b"s" * 8)
_LONG_INTEGER = b"s" + b"0" * 19
"""A separator then 19 digits: an integer that may not fit 64 bits, which orjson would read
as a float.  After a "." it is a fraction (Python writes 0.00012345678901234567), so mapping
digits to "0" and separators to "s" finds the integers in one pass; an exponent after "e-"
matches too, which only costs the slow path."""
_WRITE_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

_OPENERS_AND_SEPARATORS = (ord(","), ord(":"), ord("["), ord("{"))
_MADE_BEFORE_COUNTING = 4096
"""Python values the fast path of ``loads_tensors`` makes before it counts the body's."""


class TooManyValues(DecodeError):
    """A body that may hold more than ``MAX_OBJECTS`` values other than numbers in lists."""

    def __init__(self, values: int) -> None:
        super().__init__(
            f"the body holds up to {values:,} JSON values, more than the "
            f"{MAX_OBJECTS:,} a request may hold other than as rectangular lists of "
            "numbers; send large tensors of other values in binary (gRPC, or KServe V2's "
            "binary data extension)"
        )
        self.values = values

    def __reduce__(self) -> tuple[type[TooManyValues], tuple[int]]:
        return TooManyValues, (self.values,)  # the decoder process sends it to the server


def loads(body: bytes | bytearray) -> JSON:
    """A body as JSON, or DecodeError saying why it is not."""
    check_python_values(body)
    if not _may_hold_long_integers(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # maybe valid for the standard library (NaN, deep nesting, UTF-16): ask it
    try:
        text = body.decode(json.detect_encoding(body), "surrogatepass")  # as json.loads does
        _check_surrogates(text)
        return json.loads(text, parse_float=_finite_float)
    except DecodeError:
        raise
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"the body is not valid JSON: {exc}") from exc


_SURROGATE = re.compile(r"[\ud800-\udfff]|\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile(
    r"[\ud800-\udfff]"  # undecodable UTF-8, let through by "surrogatepass"
    r"|\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
    r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def _check_surrogates(text: str) -> None:
    """DecodeError if ``text`` writes a surrogate that is not half of a pair: the string
    it makes cannot become UTF-8 bytes, nor be written back by orjson."""
    if not _SURROGATE.search(text):  # the common case, without copying the text
        return
    # Once the escaped backslashes are gone, each backslash left starts an escape.
    if _LONE_SURROGATE.search(text.replace("\\\\", "")):
        raise DecodeError(
            "the body is not valid JSON: it holds a lone surrogate (one of \\ud800-\\udfff "
            "without the other half of its pair), which is no Unicode character"
        )


def _finite_float(literal: str) -> float:
    """A JSON number as the standard library reads it, refused past float64's range,
    where it would become inf (``NaN`` and ``Infinity`` are no numbers: kept)."""
    value = float(literal)
    if math.isinf(value):
        raise DecodeError(
            f"the body is not valid JSON: the number {literal[:40]} is beyond float64's range"
        )
    return value


_OPEN = ord("[")


def check_python_values(body: bytes | bytearray) -> None:
    """TooManyValues if ``body`` may hold more than ``MAX_OBJECTS`` values and keys: all but
    the lists of numbers ``loads_tensors`` reads into arrays are read as Python objects
    (60 MB of ``{"a":1}`` took 2.8 GB).  2 Mi hold 4,096 rows of 500 named features.

    Every value or key but the first follows a ``,`` ``:`` ``[`` or ``{``, so counting
    those (strings' too, which only overcounts) bounds them without reading any.  A body
    of fewer bytes than that needs no count: each value takes one byte at least.
    """
    if len(body) <= MAX_OBJECTS:
        return
    text = np.frombuffer(body, np.uint8)
    values = 1 + sum(np.count_nonzero(text == char) for char in _OPENERS_AND_SEPARATORS)
    if values > MAX_OBJECTS:
        raise TooManyValues(int(values))


def loads_orjson(body: bytes | bytearray) -> JSON:
    """A body as orjson reads it, its values counted first: ``NaN``, ``Infinity`` and
    nesting past 1024 levels refused, integers past 64 bits read as floats.  The worker
    reads every record so, whatever its size."""
    check_python_values(body)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"the body is not valid JSON: {exc}") from exc


def loads_tensors(
    body: bytes | bytearray, reference: Callable[[bytes | bytearray], JSON] = loads
) -> JSON:
    """``reference`` (``loads``, or ``loads_orjson``), with each nested list of numbers
    read straight into an array: float64, or int64 for more than ``_PLAIN_INTEGERS``
    integers only (as numpy reads them).

    A list whose first leaf is a number is read by simdjson into one buffer (it refuses
    strings, booleans, null and objects among the numbers, but flattens nested lists),
    shaped by the lengths along its first elements.  Every list above the numbers is
    checked to have its length in that shape; and the body must hold exactly as many
    ``[`` as the document read has lists, so no list hides among the numbers.  (Without
    a backslash in the body, the ``[`` inside strings are those the document's strings
    hold.)  That proves every such list rectangular.  A body read any other way than
    ``reference`` would read it (a ragged list, a string among floats, a big integer,
    ``NaN``) fails the fast path and is read by ``reference``, so it means what it
    always meant.
    """
    try:
        if b"\\" not in body:
            value, lists = _FastReader(body).read(simdjson.Parser().parse(body))
            if np.count_nonzero(np.frombuffer(body, np.uint8) == _OPEN) == lists:
                return value
    except DecodeError:
        raise
    except Exception:  # anything simdjson or the shapes refuse: the reference reader decides
        pass
    return reference(body)


_PLAIN_INTEGERS = 256
"""Lists of at most this many integers stay Python lists: a V2 shape is one, and the
reference reader's lists are what such fields are read as.  Longer ones are tensors."""

_SATURATED = 0xFFFFFF
"""simdjson counts a list's or object's elements in 24 bits: past this, its length is
wrong, and pysimdjson's ``as_list`` writes past the list it made for them."""


class _FastReader:
    """simdjson's document of a body as Python values, lists of numbers as arrays.

    Before it makes more than a few thousand Python values, the body's are counted
    (``check_python_values``), which bounds every list's length too.
    """

    def __init__(self, body: bytes | bytearray) -> None:
        self._body = body
        self._made = 0

    def _making(self, values: int) -> None:
        before, self._made = self._made, self._made + values
        if before <= _MADE_BEFORE_COUNTING < self._made:
            check_python_values(self._body)

    def read(self, value: Any) -> tuple[JSON, int]:
        """The value, and the ``[`` its text has."""
        if isinstance(value, simdjson.Object):
            keys = list(value)  # items() would convert the values to Python lists
            if len(set(keys)) != len(keys):
                raise ValueError("a key given twice: the reference reader keeps the last one")
            self._making(1 + len(keys))
            items = [(key, *self.read(value[key])) for key in keys]
            lists = sum(key.count("[") + inner for key, _, inner in items)
            return {key: item for key, item, _ in items}, lists
        if not isinstance(value, simdjson.Array):
            self._making(1)
            return value, value.count("[") if isinstance(value, str) else 0
        shape, leaf = [], value
        while isinstance(leaf, simdjson.Array) and len(leaf):
            shape.append(len(leaf))
            leaf = leaf[0]
        if _SATURATED in shape:
            raise ValueError("a list too long for simdjson to count")
        if type(leaf) is float or (type(leaf) is int and math.prod(shape) > _PLAIN_INTEGERS):
            _check_lengths(value, shape)
            array = _numbers(value, integers=type(leaf) is int).reshape(shape)
            return array, int(np.cumprod(shape[:-1]).sum()) + 1
        if isinstance(leaf, simdjson.Object):  # rows of named values: their tensors are arrays
            self._making(1)
            items = [self.read(item) for item in value]
            return [item for item, _ in items], 1 + sum(inner for _, inner in items)
        if len(self._body) > MAX_OBJECTS:  # else no list in it can pass either bound
            self._making(len(value.mini))  # at most a value a byte
        plain = value.as_list()  # safe: no list in the body is near _SATURATED
        return plain, orjson.dumps(plain).count(b"[")


def _numbers(lists: Any, integers: bool) -> np.ndarray:
    """A simdjson list of numbers, flattened, as numpy reads the same Python numbers:
    int64 if they are all integers in its range, else float64 (simdjson refuses any
    other value; integers past int64's range, which numpy reads otherwise, refuse the
    integer reading and the reference reader decides)."""
    if integers:
        try:
            return np.frombuffer(lists.as_buffer(of_type="i"), np.int64)
        except TypeError:  # a float among the integers (or a value that is no number)
            pass
    return np.frombuffer(lists.as_buffer(of_type="d"), np.float64)


def _check_lengths(lists: Any, shape: list[int]) -> None:
    """Every list above the numbers has the length ``shape`` gives its level.  (A number
    has no length; a string or object in a list's place is refused by ``as_buffer``.)"""
    if len(shape) > 1 and set(map(len, lists)) != {shape[1]}:
        raise ValueError("a ragged list")
    if len(shape) > 2:
        for inner in lists:
            _check_lengths(inner, shape[1:])


def _may_hold_long_integers(body: bytes | bytearray) -> bool:
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

    numpy infers the type; ``dtype`` (V2 declares it) is then reached by a cast that
    changes no value, else DecodeError: a request that writes 1e300 or 1.5 as FP32 or
    INT32 holds data that is not the tensor it claims.  Without ``dtype``, the model's
    input check makes the same cast.  (An integer past 2**53 in a list that also holds
    floats, or past 64 bits, is read as a float64, as every JSON reader that has only
    doubles reads it.)
    """
    leaf = value
    while isinstance(leaf, list) and leaf:
        leaf = leaf[0]
    if isinstance(leaf, str | dict) or dtype == BYTES:
        return _bytes_from_json(name, value.tolist() if isinstance(value, np.ndarray) else value)
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise DecodeError(f"tensor {name!r}: not a rectangular array of numbers ({exc})") from exc
    if array.dtype == BYTES and _all_ints(array):
        array = _past_64_bits(name, array, dtype)
    if array.dtype.kind not in "biuf":
        raise DecodeError(f"tensor {name!r}: expected numbers, booleans, strings or b64 values")
    element_count(name, array.shape)  # the same bounds as a declared shape
    if dtype is None:
        return array
    if dtype.kind in "iu" and array.dtype.kind == "f" and isinstance(value, list):
        # numpy reads integers of both signs past 2**63 as float64: read them again,
        # exactly.  (It would also cut fractions, and the float64 reading still has them.)
        try:
            exact = np.asarray(value, dtype=dtype)
        except (OverflowError, ValueError):
            exact = None
        if exact is not None and np.array_equal(exact, array):
            return exact
    return cast_exactly(name, array, dtype, DecodeError, wanted="its declared type is")


def _all_ints(array: np.ndarray) -> bool:
    return all(type(item) is int for item in array.flat)


def _past_64_bits(name: str, integers: np.ndarray, dtype: np.dtype | None) -> np.ndarray:
    """Integers past 64 bits as float64, rounded, as numpy reads those from 2**63 to 2**64
    and as the fast path and orjson read them all; a dtype's cast then judges them."""
    try:
        floats = integers.astype(np.float64)
    except OverflowError as exc:
        raise DecodeError(f"tensor {name!r} has integers beyond float64's range") from exc
    if dtype is None or dtype.kind != "f":
        # -2**63 - 1 rounds to -2**63, which an int64 takes: keep it beyond, to be refused.
        rounded_in = (floats == -(2.0**63)) & (integers < -(2**63))
        floats[rounded_in] = np.nextafter(-(2.0**63), -np.inf)
    return floats


def _bytes_from_json(name: str, value: JSON) -> np.ndarray:
    shape: list[int] = []
    level = value
    while isinstance(level, list):
        shape.append(len(level))
        if not level:
            break
        level = level[0]
    element_count(name, shape, MAX_OBJECTS)
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
