"""The JSON responses both REST APIs answer with, errors included (``{"error": ...}``).

An answer holding a large tensor is not written as one body: its arrays past
``STREAM_ELEMENTS`` values are encoded a slice at a time while the response is sent
(chunked), so the server never holds a large answer's whole text, only one slice's.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
from aiohttp import web

from streaminfer.codecs.jsonvalues import JSON, dumps

STREAM_ELEMENTS = 1 << 16
"""Arrays with more values than this (about 1 MB of JSON) are encoded while they are sent."""
SLICE_ELEMENTS = 1 << 14
"""About how many values each piece of a streamed array holds."""


def json_response(document: JSON, status: int = 200) -> web.Response:
    return web.Response(body=json_body(document), status=status, content_type="application/json")


def json_body(document: JSON) -> bytes | AsyncIterator[bytes]:
    """``dumps(document)``, or the same text as pieces when it holds a large array."""
    marker = f"streaminfer-{secrets.token_hex(8)}-"
    large: list[np.ndarray] = []
    skeleton = dumps(_set_aside(document, marker, large))
    if not large:
        return skeleton
    # Each large array stands in the skeleton as the string "<marker><index>".
    texts = skeleton.split(f'"{marker}'.encode())
    ends = [text.index(b'"') for text in texts[1:]]
    between = [texts[0]] + [text[end + 1 :] for text, end in zip(texts[1:], ends, strict=True)]
    order = [int(text[:end]) for text, end in zip(texts[1:], ends, strict=True)]
    return _pieces(between, [large[index] for index in order])


def _set_aside(value: Any, marker: str, large: list[np.ndarray]) -> Any:
    """``value`` with each large array replaced by its marker string."""
    if isinstance(value, np.ndarray) and value.ndim and value.size > STREAM_ELEMENTS:
        large.append(value)
        return f"{marker}{len(large) - 1}"
    if isinstance(value, dict):
        return {key: _set_aside(item, marker, large) for key, item in value.items()}
    if isinstance(value, list):
        return [_set_aside(item, marker, large) for item in value]
    return value


async def _pieces(between: list[bytes], arrays: list[np.ndarray]) -> AsyncIterator[bytes]:
    for text, array in zip(between, arrays, strict=False):
        yield text
        for piece in array_pieces(array):
            yield piece
    yield between[-1]


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
