"""The status of a failure is that of its most specific class, whatever the table's order."""

from __future__ import annotations

import asyncio

import pytest

from streaminfer.codecs.errors import DecodeError, EncodeError
from streaminfer.errors import ConfigError, InfrastructureError, RecordError, bounded
from streaminfer.models.batcher import Overloaded
from streaminfer.models.errors import BadLabel, ModelNotFound
from streaminfer.serving.errors import (
    MAX_MESSAGE_BYTES,
    STATUS_BY_TYPE,
    DeadlineExceeded,
    InvalidRequest,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    describe,
    status_of,
)


class _NotFoundHere(ModelNotFound):
    """A subclass the table does not name: it inherits its parent's status."""


class _BothKinds(Overloaded, RecordError):
    """Its MRO reaches Overloaded before RecordError."""


FAILURES: list[tuple[BaseException, int]] = [
    (ModelNotFound("x"), 404),
    (_NotFoundHere("x"), 404),
    (BadLabel("x"), 400),
    (InvalidRequest("x"), 400),
    (DecodeError("x"), 400),
    (ConfigError("x"), 400),
    (Unimplemented("x"), 501),
    (Unauthenticated("x"), 401),
    (Overloaded("x"), 429),
    (_BothKinds("x"), 429),
    (DeadlineExceeded("x"), 504),
    (Unavailable("x"), 503),
    (InfrastructureError("x"), 503),
    (asyncio.CancelledError(), 499),
    (EncodeError("x"), 500),  # a model output the protocol cannot carry: the server's fault
    (KeyError("x"), 500),
]


@pytest.mark.parametrize(("failure", "http"), FAILURES)
def test_each_failure_gets_its_status(failure: BaseException, http: int) -> None:
    assert status_of(failure).http == http


@pytest.mark.parametrize(("failure", "http"), FAILURES)
def test_the_order_of_the_table_does_not_matter(failure: BaseException, http: int) -> None:
    general_first = dict(reversed(list(STATUS_BY_TYPE.items())))
    order = list(general_first)
    assert order.index(RecordError) < order.index(ModelNotFound)  # parents listed first
    assert order.index(InfrastructureError) < order.index(Overloaded)
    assert status_of(failure, general_first).http == http


def test_unforeseen_failures_do_not_leak_their_message() -> None:
    status, message = describe(KeyError("secret"))
    assert status.http == 500 and "secret" not in message and "KeyError" in message
    status, message = describe(ModelNotFound("model 'x' is not served"))
    assert (status.code.name, message) == ("NOT_FOUND", "model 'x' is not served")


@pytest.mark.parametrize("quoted", ["n" * 20_000, "é☃" * 5_000, "\ud800" * 3_000])
def test_a_message_quoting_the_client_is_cut_to_a_bound(quoted: str) -> None:
    """Its start and end stay: what failed, and why."""
    status, message = describe(ModelNotFound(f"model {quoted!r} is not served (models: a, b)"))
    assert status.code.name == "NOT_FOUND"
    encoded = message.encode()  # a lone surrogate (no UTF-8 holds it) comes escaped
    assert len(encoded) <= MAX_MESSAGE_BYTES
    assert message.startswith("model '") and message.endswith("is not served (models: a, b)")
    assert " bytes cut] ... " in message


def test_a_short_message_is_left_whole() -> None:
    message = "x" * MAX_MESSAGE_BYTES
    assert bounded(message, MAX_MESSAGE_BYTES) == message
    assert bounded("\ud800", MAX_MESSAGE_BYTES) == "\\ud800"
