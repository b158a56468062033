"""What the worker writes for a finished record: its output, or its dead letter, sized to fit.

An output larger than its topic accepts becomes a ``too_large`` dead letter; a dead letter
larger than the DLQ topic accepts keeps its headers and has its value cut, saying so in
``streaminfer.value.truncated``.
"""

from __future__ import annotations

import dataclasses

from streaminfer.errors import RecordError
from streaminfer.kafka.records import Headers
from streaminfer.predictors.base import elapsed_ms
from streaminfer.stream.records import dead_letter_headers, output_document, to_json, trace_headers
from streaminfer.stream.work import Produced, Work

TRUNCATED_HEADER = "streaminfer.value.truncated"  # the original length of a cut DLQ value
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


def size(record: Produced) -> int:
    """A record's bytes as the producer counts them (value, key and headers)."""
    total = len(record.value or b"") + len(record.key or b"")
    for key, value in record.headers:  # a loop: a generator costs more than a header or two
        total += len(key) + len(value or b"")
    return total


def truncated(record: Produced, limit: int) -> Produced:
    """A dead letter that fits ``limit``: its value cut, and a header saying how long it was."""
    original = len(record.value or b"")
    headers: Headers = [*record.headers, (TRUNCATED_HEADER, str(original).encode())]
    room = max(0, limit - size(dataclasses.replace(record, value=b"", headers=headers)))
    value = (record.value or b"")[:room]
    return dataclasses.replace(record, value=value, headers=headers)


def dead_letter(topic: str, work: Work) -> Produced:
    """The dead letter of a failed record: its value as it came, the reason in headers."""
    assert work.error is not None
    record = work.record
    headers = dead_letter_headers(trace_headers(record.headers), work.error, record.source)
    return Produced(topic, record.key, record.value, headers, work.error)
