"""Dead letters cut to fit their topic: value, then the record's own headers, then its key."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streaminfer.stream.outputs import (
    HEADERS_DROPPED_HEADER,
    KEY_TRUNCATED_HEADER,
    TRUNCATED_HEADER,
    dead_letter,
    size,
)
from streaminfer.stream.records import TRACE_HEADER, BadRecord, Source
from streaminfer.stream.work import InputRecord, Work

LIMIT = 4_000
OURS = ("streaminfer.error.type", "streaminfer.error.message", "streaminfer.source.offset")


def failed(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> Work:
    work = Work(InputRecord(key, value, headers, Source("in", 0, 7, None), consumed_at=0.0))
    work.error = BadRecord("not a record we understand")
    return work


def test_a_letter_that_fits_is_whole() -> None:
    letter = dead_letter("dlq", failed(b"k", b"v" * 100, [("a", b"1")]), LIMIT)
    assert letter.key == b"k" and letter.value == b"v" * 100
    assert [k for k, _ in letter.headers][:2] == ["a", TRACE_HEADER]
    assert TRUNCATED_HEADER not in dict(letter.headers)


def test_headers_too_large_go_from_the_last_once_the_value_is_cut() -> None:
    theirs = [(f"h{i}", bytes(100)) for i in range(100)]  # 10 kB of headers
    letter = dead_letter("dlq", failed(b"key", b"value", theirs), LIMIT)
    headers = dict(letter.headers)
    kept = [(k, v) for k, v in letter.headers if k.startswith("h")]
    assert 0 < len(kept) < 100 and kept == theirs[: len(kept)]
    assert headers[HEADERS_DROPPED_HEADER] == str(100 - len(kept)).encode()
    assert headers[TRUNCATED_HEADER] == b"5" and letter.value == b""
    assert letter.key == b"key" and size(letter) <= LIMIT


def test_a_key_too_large_is_cut_last() -> None:
    letter = dead_letter("dlq", failed(b"k" * 10_000, b"value", [("a", bytes(50))]), LIMIT)
    headers = dict(letter.headers)
    assert headers[KEY_TRUNCATED_HEADER] == b"10000" and headers[HEADERS_DROPPED_HEADER] == b"1"
    assert letter.key and letter.key == b"k" * len(letter.key) and size(letter) <= LIMIT


def test_a_records_own_reason_and_source_headers_are_not_read_as_the_workers() -> None:
    spoofed = [("streaminfer.error.type", b"fake_reason"), ("streaminfer.source.offset", b"999")]
    letter = dead_letter("dlq", failed(b"k", b"v", spoofed), LIMIT)
    first = {}
    for name, value in letter.headers:  # as a reader that takes a header's first occurrence
        first.setdefault(name, value)
    assert first["streaminfer.error.type"] == b"bad_record"
    assert first["streaminfer.source.offset"] == b"7"
    assert first["input.streaminfer.error.type"] == b"fake_reason"  # kept, renamed


@given(
    key=st.one_of(st.none(), st.binary(max_size=3 * LIMIT)),
    value=st.one_of(st.none(), st.binary(max_size=3 * LIMIT)),
    headers=st.lists(st.tuples(st.text(max_size=50), st.binary(max_size=LIMIT)), max_size=30),
)
def test_every_letter_fits_and_keeps_why_and_where(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
) -> None:
    letter = dead_letter("dlq", failed(key, value, headers), LIMIT)
    assert size(letter) <= LIMIT
    names = [k for k, _ in letter.headers]
    assert all(name in names for name in OURS)
    if letter.value != value:
        assert dict(letter.headers)[TRUNCATED_HEADER] == str(len(value or b"")).encode()


def test_a_long_reason_keeps_its_start_and_end_in_valid_utf8() -> None:
    """A hook's error can quote anything: cut at a byte count, it split a character."""
    work = failed(b"k", b"v", [])
    work.error = BadRecord("début " + "é" * 3000 + " \udc80 the cause")
    message = dict(dead_letter("dlq", work, 100_000).headers)["streaminfer.error.message"]
    text = message.decode()  # strict: whole characters only
    assert text.startswith("début ") and text.endswith(" \\udc80 the cause")
    assert len(message) <= 2000 and "bytes cut" in text
