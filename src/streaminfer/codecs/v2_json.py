"""KServe V2 REST tensors ⇄ numpy arrays, with Triton's binary-tensor extension.

A tensor is a JSON object with ``name``, ``datatype``, ``shape`` and either its values
flattened in ``data``, or, with the extension, the parameter ``binary_data_size``: its
raw bytes then follow the JSON header, which is ``Inference-Header-Content-Length``
bytes long, in the order the tensors are listed.
"""

from __future__ import annotations

from collections.abc import Set
from typing import Any

import numpy as np

from streaminfer.codecs.arrays import element_count, shaped
from streaminfer.codecs.errors import DecodeError
from streaminfer.codecs.jsonvalues import (
    JSON,
    dumps,
    from_json,
    json_object,
    loads_tensors,
    to_json,
)
from streaminfer.codecs.numbers import ascii_int
from streaminfer.codecs.raw import from_raw, to_raw
from streaminfer.codecs.v2 import datatype, numpy_dtype
from streaminfer.types import Tensors

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_DATA_SIZE = "binary_data_size"


def split_body(body: bytes, header_length: str | None) -> tuple[JSON, bytes]:
    """The JSON header and the binary tensors after it (empty without the extension)."""
    if header_length is None:
        return loads_tensors(body), b""
    split = ascii_int(header_length)
    if split is None or split > len(body):
        raise DecodeError(
            f"{HEADER_LENGTH} {header_length[:20]!r} does not fit a {len(body)}-byte body"
        )
    return loads_tensors(body[:split]), body[split:]


def join_body(document: JSON, chunks: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """The body of ``document`` followed by ``chunks``, and the HTTP headers that describe it."""
    header = dumps(document)
    if not chunks:
        return header, {"Content-Type": "application/json"}
    return b"".join([header, *chunks]), {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def write_tensors(
    tensors: Tensors, binary: bool | Set[str]
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Tensor objects, and the raw chunks of those sent binary (``True``: all of them)."""
    described = []
    chunks: list[bytes] = []
    for name, array in tensors.items():
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": datatype(array.dtype),
            "shape": list(array.shape),
        }
        if binary is True or (not isinstance(binary, bool) and name in binary):
            chunks.append(to_raw(array))
            tensor["parameters"] = {BINARY_DATA_SIZE: len(chunks[-1])}
        else:
            tensor["data"] = to_json(np.ravel(array))
        described.append(tensor)
    return described, chunks


def read_tensors(documents: JSON, binary: bytes, kind: str) -> Tensors:
    """The arrays of a request's inputs or an answer's outputs (``kind``: "input", "output")."""
    if not isinstance(documents, list) or not documents:
        raise DecodeError(f'"{kind}s" must be a non-empty list of tensors')
    arrays: Tensors = {}
    offset = 0
    for item in documents:
        tensor = json_object(item, f"{kind}s[]")
        name, dtype_name, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
        if not isinstance(name, str) or not isinstance(dtype_name, str):
            raise DecodeError(f'every {kind} needs a string "name" and "datatype"')
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
            raise DecodeError(f'{kind} {name!r}: "shape" must be a list of integers')
        element_count(name, shape)  # before its data is read
        if name in arrays:
            raise DecodeError(f"{kind} {name!r} is given twice")
        dtype = numpy_dtype(name, dtype_name)
        size = json_object(tensor.get("parameters", {}), "parameters").get(BINARY_DATA_SIZE)
        if size is not None:
            if not _is_int(size) or size < 0 or offset + size > len(binary):
                raise DecodeError(f"{kind} {name!r}: {BINARY_DATA_SIZE} {size!r} exceeds the body")
            arrays[name] = from_raw(name, dtype, shape, binary[offset : offset + size])
            offset += size
        elif "data" in tensor:
            arrays[name] = shaped(name, from_json(name, tensor["data"], dtype).ravel(), shape)
        else:
            raise DecodeError(f'{kind} {name!r} has neither "data" nor {BINARY_DATA_SIZE}')
    if offset != len(binary):
        raise DecodeError(f"{len(binary) - offset} bytes of binary data belong to no {kind}")
    return arrays


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
