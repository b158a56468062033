"""What an input record asks for, and the output and dead-letter records the worker writes.

Input values the worker understands:

* a bare URL (``http(s)://``, ``file://``, ``data:``) or an absolute file path — the seed's format;
* raw image bytes (JPEG, PNG, GIF, BMP, WebP; recognised by their magic numbers);
* JSON ``{"url": ...}`` or ``{"image_b64": ...}`` with optional ``id``, ``model``,
  ``version`` or ``label``, and ``top_k``;
* for tensor models, a TF Serving REST-style body: ``{"inputs": {name: values}}`` or
  ``{"instances": [{name: value}, ...]}`` (plus the optional fields above);
* for tabular models, ``{"features": {name: value}}`` or a flat JSON object of named
  values (plus the optional fields above).
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from streaminfer.codecs.arrays import MAX_OBJECTS
from streaminfer.codecs.errors import DecodeError
from streaminfer.codecs.jsonvalues import TooManyValues, loads_orjson, loads_tensors
from streaminfer.errors import RecordError, bounded
from streaminfer.kafka.records import UNREADABLE_HEADERS, Headers
from streaminfer.models.features import record_features
from streaminfer.predictors.base import PredictResult
from streaminfer.types import Tensors

TRACE_HEADER = "streaminfer.trace.id"
_SOURCES = ("url", "image_b64", "inputs", "instances")
_ROUTING_KINDS = {"id": str, "model": str, "label": str, "version": int, "top_k": int}
_ROUTING_FIELDS = frozenset(_ROUTING_KINDS)
_SOURCE_FIELDS = frozenset(_SOURCES)
_URL_PREFIXES = ("http://", "https://", "file://", "data:")
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
LARGE_JSON_BYTES = MAX_OBJECTS
"""JSON records larger than this are read as the server reads a REST body: 9 MB of
``[],`` took 300 MB as Python lists, 24 MB of ``{"a":1},`` 710 MB."""


class BadRecord(RecordError):
    """The record's value is not something the worker understands."""

    def __init__(self, message: str, reason: str = "bad_record") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class Request:
    """A parsed input record: where its image is, or its tensors, and what to run it on."""

    id: str | None = None
    url: str | None = None
    image: bytes | None = None
    tensors: Tensors | None = None
    features: dict[str, Any] | None = None  # a tabular record's named values
    model: str | None = None
    version: int | None = None
    label: str | None = None
    top_k: int | None = None


def parse_value(value: bytes | None) -> Request:
    """Turn a record value into a Request; raises BadRecord with a reason a user can act on."""
    if value is not None and value[:1] == b"{":  # most records: JSON (no image starts so)
        return _parse_json(value)
    if not value or not value.strip():
        raise BadRecord(
            "empty record value: expected an image URL, image bytes or JSON", "empty_record"
        )
    if value.startswith(_IMAGE_MAGIC) or (value[:4] == b"RIFF" and value[8:12] == b"WEBP"):
        return Request(image=value)
    if value.lstrip()[:1] == b"{":
        return _parse_json(value)
    text = _text(value)
    if text.startswith(_URL_PREFIXES) or text.startswith("/"):
        return Request(url=text if not text.startswith("/") else "file://" + text)
    raise BadRecord(
        f"unrecognised record value {text[:60]!r}: expected an image URL, image bytes or JSON"
    )


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise BadRecord("record value is neither a known image format nor UTF-8 text") from exc


def _document(value: bytes) -> Any:
    """A JSON record's document, as orjson reads it.  One over ``LARGE_JSON_BYTES`` is
    read by ``loads_tensors``: its lists of numbers straight into arrays, and its other
    values counted before one is made, so that it cannot make more than ``MAX_OBJECTS``;
    with orjson's reading of the rest, so that its size changes nothing else (through
    the standard library's, ``NaN`` was served as null above 2 MiB, refused below)."""
    if len(value) <= LARGE_JSON_BYTES:
        try:
            return orjson.loads(value)  # nesting past 1024 levels is an error, not a RecursionError
        except orjson.JSONDecodeError as exc:
            raise BadRecord(f"invalid JSON: {exc}", "bad_json") from exc
    try:
        return loads_tensors(value, loads_orjson)
    except TooManyValues as exc:
        raise BadRecord(
            f"the record holds up to {exc.values:,} JSON values, more than the "
            f"{MAX_OBJECTS:,} one may hold other than as rectangular lists of numbers",
            "too_many_values",
        ) from exc
    except DecodeError as exc:
        raise BadRecord(f"invalid JSON: {exc}", "bad_json") from exc


def _parse_json(value: bytes) -> Request:
    doc = _document(value)
    if not isinstance(doc, dict):
        raise BadRecord("JSON record must be an object")
    request, sources = Request(), []
    for key in doc:  # the record's own fields: most have two or three, so look at those
        if key in _ROUTING_KINDS:
            setattr(request, key, _optional(doc, key, _ROUTING_KINDS[key]))
        elif key in _SOURCE_FIELDS:
            sources.append(key)
    if request.version is not None and request.label is not None:
        raise BadRecord("give either 'version' or 'label', not both")
    if request.top_k is not None and request.top_k < 1:
        raise BadRecord("'top_k' must be at least 1")
    if len(sources) > 1:
        raise BadRecord(f"JSON record needs one of {', '.join(map(repr, _SOURCES))}, not several")
    if not sources:  # a tabular record: its "features" object, else its other fields
        request.features = dict(record_features(doc, ignore=_ROUTING_FIELDS))
        return request
    source = sources[0]
    if source == "url":
        request.url = _optional(doc, "url", str)
    elif source == "image_b64":
        try:
            request.image = base64.b64decode(_optional(doc, "image_b64", str) or "", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRecord("'image_b64' is not valid base64") from exc
    else:
        request.tensors = _tensors(doc[source], columnar=source == "inputs")
    return request


Plain = tuple[str | None, str | None, dict[str, list[Any]]]  # model, id, inputs


def plain_tensors(value: bytes | None) -> Plain | None:
    """The model, id and inputs of the commonest tensor record, ``{"inputs": {name: [row,
    ...]}}`` with at most a ``"model"`` and an ``"id"`` beside it, its rows still JSON
    lists; None for any other value, which ``parse_value`` then reads, and judges, on
    its own (a large one too: ``_document``).  Never raises."""
    if value is None or value[:1] != b"{" or len(value) > LARGE_JSON_BYTES:
        return None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    inputs = doc.get("inputs")
    if type(inputs) is not dict or not inputs or len(doc) != 1 + ("model" in doc) + ("id" in doc):
        return None
    model, record_id = doc.get("model"), doc.get("id")
    if model is not None and type(model) is not str:
        return None
    if record_id is not None and type(record_id) is not str:
        return None
    rows = None
    for values in inputs.values():  # lists of one non-zero length: the record's rows
        if type(values) is not list or not values or rows not in (None, len(values)):
            return None
        rows = len(values)
    return model or None, record_id or None, inputs


def _optional(doc: dict[str, Any], key: str, kind: type) -> Any:
    value = doc.get(key)
    if value is None:
        return None
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise BadRecord(f"'{key}' must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _tensors(body: Any, columnar: bool) -> Tensors:
    """TF Serving REST bodies: columnar ``{name: values}``, or rows ``[{name: value}, ...]``."""
    if columnar:
        if not isinstance(body, dict) or not body:
            raise BadRecord("'inputs' must be an object of named tensors")
        columns = body
    else:
        if not isinstance(body, list) or not body or not all(isinstance(r, dict) for r in body):
            raise BadRecord("'instances' must be a non-empty list of objects of named values")
        names = set(body[0])
        if any(set(row) != names for row in body):
            raise BadRecord("every instance must have the same input names")
        columns = {name: [row[name] for row in body] for name in names}
    return {name: numbers(name, values) for name, values in columns.items()}


def numbers(name: str, values: Any) -> np.ndarray:
    """An input's JSON values as an array; BadRecord if they are ragged or not numbers."""
    try:
        array = np.asarray(values)
    except ValueError as exc:
        raise BadRecord(f"input {name!r} is a ragged list: {exc}") from exc
    if array.dtype.kind in "OUSV":  # objects, text, bytes, void
        raise BadRecord(f"input {name!r} must hold numbers")
    return array


def trace_headers(headers: Headers | None) -> Headers:
    """The input's headers, plus a trace id if it had none."""
    if not headers:  # most records: no list to search (a generator costs 0.5 µs a record)
        return [(TRACE_HEADER, new_trace_id())]
    kept = list(headers)
    if any(k == TRACE_HEADER for k, _ in kept):
        return kept
    return [*kept, (TRACE_HEADER, new_trace_id())]


TRACE_IDS_AT_ONCE = 256
_trace_ids: Iterator[bytes] = iter(())


def new_trace_id() -> bytes:
    """128 random bits in hex, like a UUID4's: the next of a few hundred made at once.

    One ``os.urandom`` and one hexlify serve 256 records: 3,700 instructions a record
    fewer than a ``randbytes`` and a hexlify each (0.28-0.39 against 0.36-0.54 µs a call,
    timed alone).  Chunk threads share the pool: a list iterator hands each item out
    once under the GIL, and two threads that both find it empty each make their own, so
    no id is given twice.
    """
    global _trace_ids
    try:
        return next(_trace_ids)
    except StopIteration:
        hexed = binascii.hexlify(os.urandom(16 * TRACE_IDS_AT_ONCE))
        ids = iter([hexed[i : i + 32] for i in range(0, len(hexed), 32)])
        _trace_ids = ids
        return next(ids)


@dataclass(slots=True)
class Source:
    topic: str
    partition: int
    offset: int
    timestamp: int | None


def result_fields(result: PredictResult, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """Who served a record and what it answered (the model, mode and predictions or
    outputs), added to ``fields`` if given."""
    fields = {} if fields is None else fields
    fields["model"] = {"name": result.model, "version": result.version}
    fields["mode"] = result.mode
    if result.predictions is not None:
        fields["predictions"] = [p.as_dict() for p in result.predictions]
    if result.outputs is not None:
        fields["outputs"] = result.outputs  # arrays: to_json writes them without Python lists
    return fields


def to_json(document: dict[str, Any]) -> bytes:
    """A document as compact JSON; numpy arrays written natively, non-finite floats as null."""
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY, default=_numpy_fallback)


def _numpy_fallback(value: Any) -> Any:
    """What orjson cannot write natively: strided or exotic arrays, numpy scalars."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def output_document(
    request: Request | None,
    source: Source,
    result: PredictResult,
    timings_ms: dict[str, float],
    route: str | None = None,
) -> dict[str, Any]:
    """The output record's value (as a dict): the README documents this format."""
    doc: dict[str, Any] = {
        "id": (
            request.id
            if request is not None and request.id
            else f"{source.topic}-{source.partition}-{source.offset}"
        ),
        "source": {
            "topic": source.topic,
            "partition": source.partition,
            "offset": source.offset,
            "timestamp": source.timestamp,
        },
    }
    result_fields(result, doc)
    if route is not None:
        doc["route"] = route
    doc["timings_ms"] = timings_ms  # each cut to the µs by elapsed_ms, where it was measured
    return doc


_OURS = "streaminfer."  # the worker's namespace: its dead letters' headers are all in it
_PASSED_ON = frozenset({TRACE_HEADER, UNREADABLE_HEADERS})  # a record's own, or said of it


def their_headers(headers: Headers | None) -> Headers:
    """A record's headers as its dead letter keeps them: any in the worker's namespace but
    the trace id renamed ``input.<name>``, so that a reader of the first
    ``streaminfer.error.type`` or ``streaminfer.source.offset`` finds the worker's, not
    ones the record brought (a record replayed from a DLQ keeps its first failure's)."""
    if not headers:
        return []
    return [
        ("input." + k if k.startswith(_OURS) and k not in _PASSED_ON else k, v) for k, v in headers
    ]


# UTF-8 bytes of a dead letter's reason: its start and end, where the cause usually is.
MAX_ERROR_MESSAGE = 2000


def dead_letter_headers(headers: Headers, error: RecordError, source: Source) -> Headers:
    """The original headers plus why and where the record failed."""
    return [
        *headers,
        ("streaminfer.error.type", _header_text(error.reason)),
        ("streaminfer.error.message", bounded(str(error), MAX_ERROR_MESSAGE).encode()),
        ("streaminfer.source.topic", source.topic.encode()),
        ("streaminfer.source.partition", str(source.partition).encode()),
        ("streaminfer.source.offset", str(source.offset).encode()),
        ("streaminfer.failed.at", str(int(time.time() * 1000)).encode()),
    ]


def _header_text(text: str) -> bytes:
    """UTF-8 that always encodes: a message may quote lone surrogates from hostile input."""
    return text.encode("utf-8", "backslashreplace")
