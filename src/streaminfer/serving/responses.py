"""The JSON responses both REST APIs answer with, errors included (``{"error": ...}``).

An answer holding a large tensor is not written as one body: its arrays past
``STREAM_ELEMENTS`` values are encoded a slice at a time while the response is sent
(chunked), so the server never holds a large answer's whole text, only one slice's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
from aiohttp import web

from streaminfer.codecs.jsonvalues import JSON, dumps

STREAM_ELEMENTS = 1 << 16
"""Arrays with more values than this (about 1 MB of JSON) are encoded while they are sent."""
SLICE_ELEMENTS = 1 << 14
"""About how many values each piece of a streamed array holds."""
_ARRAY_BYTES = web.ResponseKey("array_bytes", int)


def json_response(document: JSON, status: int = 200) -> web.Response:
    response = web.Response(
        body=json_body(document), status=status, content_type="application/json"
    )
    if not isinstance(response.body, bytes):  # streamed: its arrays live until it is sent
        response[_ARRAY_BYTES] = _array_bytes(document)
    return response


def answer_bytes(response: web.StreamResponse) -> int:
    """The bytes ``response`` holds until it is written: its body, or for a streamed one
    the arrays it encodes as it goes."""
    if _ARRAY_BYTES in response:
        return response[_ARRAY_BYTES]
    body = response.body if isinstance(response, web.Response) else None
    return len(body) if isinstance(body, (bytes, bytearray)) else 0


def json_body(document: JSON) -> bytes | AsyncIterator[bytes]:
    """``dumps(document)``, or the same text as pieces when it holds a large array."""
    if not _holds_large(document):
        return dumps(document)
    return _streamed(document)


def _array_bytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_array_bytes(item) for item in value.values())
    if isinstance(value, list):
        return sum(_array_bytes(item) for item in value)
    return 0


def _holds_large(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim > 0 and value.size > STREAM_ELEMENTS
    if isinstance(value, dict):
        return any(_holds_large(item) for item in value.values())
    if isinstance(value, list):
        return any(_holds_large(item) for item in value)
    return False


async def _streamed(document: JSON) -> AsyncIterator[bytes]:
    for piece in _pieces(document):
        yield piece


def _pieces(value: Any) -> Iterator[bytes]:
    """``dumps(value)`` in pieces: what holds a large array is written item by item."""
    if not _holds_large(value):
        yield dumps(value)
    elif isinstance(value, np.ndarray):
        yield from array_pieces(value)
    elif isinstance(value, dict):
        for index, (key, item) in enumerate(value.items()):
            yield (b"," if index else b"{") + dumps(key) + b":"
            yield from _pieces(item)
        yield b"}"
    else:
        for index, item in enumerate(value):
            yield b"," if index else b"["
            yield from _pieces(item)
        yield b"]"


def array_pieces(array: np.ndarray) -> Iterator[bytes]:
    """``dumps(array)`` in pieces of about ``SLICE_ELEMENTS`` values, rows kept whole."""
    if array.ndim == 0 or array.size <= SLICE_ELEMENTS:
        yield dumps(array)
        return
    row = array.size // array.shape[0]
    if row > SLICE_ELEMENTS:  # one row is too much already: write each row in pieces
        for index in range(array.shape[0]):
            yield b"," if index else b"["
            yield from array_pieces(array[index])
        yield b"]"
        return
    step = SLICE_ELEMENTS // row
    for start in range(0, array.shape[0], step):
        text = dumps(array[start : start + step])  # "[r0,r1,...]": the brackets go
        yield (b"," if start else b"[") + text[1:-1]
    yield b"]"
