"""A record on its way through the worker, and the isolation that keeps it to itself.

``InputRecord`` is a consumed record without Kafka client types; ``Work`` is the same
record in progress, each pipeline step filling in its part (in place: a step assigns its
fields only once it has succeeded, and a copy per step and record would cost more than
a small model's inference); ``Produced`` is what the worker writes for it.  ``isolated``
runs one step on one record so that whatever the step raises stays with that record: a
``RecordError`` with its own reason, anything else as ``internal_error`` naming the
exception's type.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from streaminfer.errors import RecordError
from streaminfer.kafka.records import Headers
from streaminfer.predictors.base import PredictRequest, PredictResult
from streaminfer.stream.records import Request, Source

log = logging.getLogger(__name__)

T = TypeVar("T")


class InternalError(RecordError):
    """Handling one record raised something unexpected; the record is dead-lettered for it."""

    reason = "internal_error"

    def __init__(self, step: str, exc: BaseException) -> None:
        super().__init__(f"{step} failed with {type(exc).__name__}: {_describe(exc)}")
        self.exception_type = type(exc).__name__


@dataclass(slots=True)
class InputRecord:
    """One consumed record, as the pipeline needs it: no Kafka client types."""

    key: bytes | None
    value: bytes | None
    headers: Headers
    source: Source
    consumed_at: float  # time.monotonic() when polled
    unreadable: RecordError | None = None  # the consumer could not read it (UnreadableBatches)

    @property
    def routing_key(self) -> bytes:
        """The key a route hashes: the record key, else its place in the log."""
        return self.key or f"{self.source.partition}:{self.source.offset}".encode()


@dataclass(slots=True)
class Work:
    """A record in progress: each step fills in its part and returns it."""

    record: InputRecord
    request: Request | None = None  # parsed
    predict: PredictRequest | None = None  # what it runs on (after routing)
    route: str | None = None  # the route's target name, when a route chose it
    result: PredictResult | None = None
    error: RecordError | None = None
    fetch_ms: float = 0.0
    value: bytes | None = None  # the output value a handler's postprocess made


@dataclass(slots=True)
class Produced:
    """A record to write: the output, or the dead letter, of one input record."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    error: RecordError | None = None  # set for a dead letter


Step = tuple[str, Callable[[Work], object]]  # a pipeline step, named for error messages


def isolated(work: Work, *steps: Step) -> Work:
    """Run steps on one record in order until one fails; whatever a step raises stays
    with that record."""
    for name, step in steps:
        if work.error is not None:
            break
        try:
            step(work)
        except Exception as exc:  # isolation: this record's failure alone
            work.error = record_error(name, work, exc)
    return work


def attempt(step: str, work: Work, fn: Callable[[], T]) -> T | RecordError:
    try:
        return fn()
    except Exception as exc:  # isolation: this record's failure alone
        return record_error(step, work, exc)


def record_error(step: str, work: Work, exc: Exception) -> RecordError:
    """What ``step`` raising ``exc`` for this record means for it: a ``RecordError`` is its
    own reason; anything else is an ``internal_error`` naming the exception's type."""
    if isinstance(exc, RecordError):
        return exc
    # One line per record (hostile input may come in floods); the traceback for debugging.
    log.warning("record %s: %s raised %s", where(work), step, type(exc).__name__)
    log.debug("record %s: %s raised", where(work), step, exc_info=True)
    return InternalError(step, exc)


def where(work: Work) -> str:
    source = work.record.source
    return f"{source.topic}[{source.partition}]@{source.offset}"


def _describe(exc: BaseException) -> str:
    """An exception's message, bounded: some (RecursionError, huge ints) have vast ones."""
    text = str(exc)
    return text if len(text) <= 300 else text[:300] + "…"
