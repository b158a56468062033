"""What the worker writes for a finished record: its output, or its dead letter, sized to fit.

An output larger than its topic accepts becomes a ``too_large`` dead letter.  A dead letter
larger than the DLQ topic accepts is cut to fit (``fitted``): its value first, then, if the
record's own headers alone are too large, as many of them as must go, then its key.
Headers of ours say what was cut, and the reason and source headers always stay.
"""

from __future__ import annotations

import dataclasses
import itertools

from streaminfer.errors import RecordError
from streaminfer.kafka.records import Headers
from streaminfer.predictors.base import elapsed_ms
from streaminfer.stream.records import (
    dead_letter_headers,
    output_document,
    their_headers,
    to_json,
    trace_headers,
)
from streaminfer.stream.work import Produced, Work

TRUNCATED_HEADER = "streaminfer.value.truncated"  # the original length of a cut DLQ value
HEADERS_DROPPED_HEADER = "streaminfer.headers.dropped"  # how many of the record's own went
KEY_TRUNCATED_HEADER = "streaminfer.key.truncated"  # the original length of a cut key
# librdkafka and the broker count a record's framing too: keep this much below their limit.
RECORD_OVERHEAD_BYTES = 512


class TooLarge(RecordError):
    """The record's output is larger than its topic accepts."""

    reason = "too_large"


def output(topic: str, work: Work, now: float) -> Produced:
    """The output record of a served record (its value is the README's output format, or
    what the handler's postprocess made); ``now``: ``time.monotonic()``, for its total."""
    result = work.result
    assert result is not None
    record = work.record
    if work.value is not None:
        return Produced(topic, record.key, work.value, trace_headers(record.headers))
    timings = {
        "fetch": work.fetch_ms,
        **result.timings_ms,
        "total": elapsed_ms(record.consumed_at, now),
    }
    document = output_document(work.request, record.source, result, timings, work.route)
    value = to_json(document)
    return Produced(topic, record.key, value, trace_headers(record.headers))


HEADER_OVERHEAD_BYTES = 10
"""A header's framing in a record: its key's and value's lengths, varints of 5 bytes at
most.  A record of 1,500 headers has more framing than ``RECORD_OVERHEAD_BYTES``."""


def size(record: Produced) -> int:
    """A record's bytes as the producer counts them (value, key and headers)."""
    total = len(record.value or b"") + len(record.key or b"")
    for key, value in record.headers:  # a loop: a generator costs more than a header or two
        total += len(key) + len(value or b"") + HEADER_OVERHEAD_BYTES
    return total


def fitted(letter: Produced, theirs: int, limit: int) -> Produced:
    """``letter``, whose first ``theirs`` headers are the record's own, cut to ``limit``:
    its value, then the record's headers from the last, then its key, as far as each must
    go.  A record's headers or key may fill a topic that takes larger records than the
    dead-letter topic: writing it whole stopped the worker (MSG_SIZE_TOO_LARGE)."""
    key, value = letter.key or b"", letter.value or b""
    own, ours = letter.headers[:theirs], letter.headers[theirs:]
    ours = [*ours, (TRUNCATED_HEADER, str(len(value)).encode())]

    def room(key: bytes, headers: Headers) -> int:
        return limit - size(dataclasses.replace(letter, key=key, value=b"", headers=headers))

    left = room(key, [*own, *ours])
    if left >= 0:
        return dataclasses.replace(letter, value=value[:left], headers=[*own, *ours])
    ours = [*ours, (HEADERS_DROPPED_HEADER, str(len(own)).encode())]  # its longest count
    left = room(key, ours)
    sizes = itertools.accumulate(
        size(dataclasses.replace(letter, key=b"", value=b"", headers=[header])) for header in own
    )
    kept = sum(1 for total in sizes if total <= left) if left > 0 else 0
    ours[-1] = (HEADERS_DROPPED_HEADER, str(len(own) - kept).encode())
    if left >= 0:
        return dataclasses.replace(letter, value=b"", headers=[*own[:kept], *ours])
    ours = [*ours, (KEY_TRUNCATED_HEADER, str(len(key)).encode())]
    left = max(0, room(b"", ours))
    return dataclasses.replace(letter, key=key[:left], value=b"", headers=ours)


def dead_letter(topic: str, work: Work, limit: int) -> Produced:
    """The dead letter of a failed record: its key, value and headers as they came, and
    why and where it failed in headers of ours; cut to fit ``limit`` if it must be."""
    assert work.error is not None
    record = work.record
    theirs = their_headers(record.headers)
    trace = trace_headers(theirs)[len(theirs) :]  # the trace id header, if theirs had none
    ours = dead_letter_headers(trace, work.error, record.source)
    letter = Produced(topic, record.key, record.value, [*theirs, *ours], work.error)
    return letter if size(letter) <= limit else fitted(letter, len(theirs), limit)
