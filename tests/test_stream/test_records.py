"""What the worker makes of a record's value: its kind, its fields, and what it refuses."""

from __future__ import annotations

import tracemalloc

import numpy as np
import orjson
import pytest

from streaminfer.kafka.records import UNREADABLE_HEADERS, Headers
from streaminfer.stream.records import (
    LARGE_JSON_BYTES,
    TRACE_HEADER,
    BadRecord,
    parse_value,
    plain_tensors,
    their_headers,
)


def test_a_json_record_gives_its_fields_in_any_order() -> None:
    value = b'{"inputs": {"x": [[1, 2]]}, "top_k": 2, "label": "prod", "id": "a", "model": "m"}'
    request = parse_value(value)
    assert (request.id, request.model, request.label, request.version, request.top_k) == (
        "a",
        "m",
        "prod",
        None,
        2,
    )
    assert request.tensors is not None and request.tensors["x"].tolist() == [[1, 2]]
    assert request.url is None and request.features is None


def test_a_flat_tabular_record_keeps_its_other_fields_as_features() -> None:
    request = parse_value(b'{"model": "delays", "distance": 300, "carrier": "AA", "version": 2}')
    assert (request.model, request.version) == ("delays", 2)
    assert request.features == {"distance": 300, "carrier": "AA"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b'{"version": 2, "label": "prod", "inputs": {"x": [[1]]}}', "either 'version' or 'label'"),
        (b'{"top_k": 0, "url": "http://h/x.jpg"}', "'top_k' must be at least 1"),
        (b'{"version": true, "url": "http://h/x.jpg"}', "'version' must be a int, got bool"),
        (b'{"model": 3, "inputs": {"x": [[1]]}}', "'model' must be a str, got int"),
        (b'{"url": "http://h/x.jpg", "inputs": {"x": [[1]]}}', "not several"),
        (b"[1, 2]", "unrecognised record value"),
    ],
)
def test_a_json_records_fields_are_checked(value: bytes, message: str) -> None:
    with pytest.raises(BadRecord, match=message) as refused:
        parse_value(value)
    assert refused.value.reason == "bad_record"


def test_other_kinds_of_value() -> None:
    assert parse_value(b'  {"url": "http://h/x.jpg"}\n').url == "http://h/x.jpg"
    assert parse_value(b"/data/x.jpg").url == "file:///data/x.jpg"
    assert parse_value(b"\xff\xd8\xff\xe0 a jpeg").image == b"\xff\xd8\xff\xe0 a jpeg"
    for value, reason in ((b"", "empty_record"), (b"  ", "empty_record"), (b"{bad", "bad_json")):
        with pytest.raises(BadRecord) as refused:
            parse_value(value)
        assert refused.value.reason == reason


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        (
            b'{"model": "m", "inputs": {"x": [[1, 2]], "z": [3]}}',
            ("m", None, {"x": [[1, 2]], "z": [3]}),
        ),
        (b'{"inputs": {"x": [[1.5]]}, "id": "a"}', (None, "a", {"x": [[1.5]]})),
        (b'{"inputs": {"x": [1]}, "model": null, "id": null}', (None, None, {"x": [1]})),
        (b'{"inputs": {"x": [1]}, "model": "", "id": ""}', (None, None, {"x": [1]})),
        (b'{"inputs": {"x": ["a", [[]]]}}', (None, None, {"x": ["a", [[]]]})),  # stacking judges
    ],
)
def test_a_plain_tensor_record_is_read_as_lists(value: bytes, plain: object) -> None:
    assert plain_tensors(value) == plain


@pytest.mark.parametrize(
    "value",
    [
        b'{"model": "m", "top_k": 2, "inputs": {"x": [[1]]}}',  # any field but these two
        b'{"id": "a", "version": 1, "inputs": {"x": [[1]]}}',
        b'{"id": "a", "model": "m", "inputs": {"x": [[1]]}, "note": "?"}',
        b'{"model": 3, "inputs": {"x": [[1]]}}',
        b'{"id": 3, "inputs": {"x": [[1]]}}',
        b'{"inputs": {"x": [[1]], "z": [[1], [2]]}}',  # rows of two lengths
        b'{"inputs": {"x": []}}',
        b'{"inputs": {"x": 1}}',
        b'{"inputs": {}}',
        b'{"inputs": [[1]]}',
        b'{"instances": [{"x": [1]}]}',
        b'{"inputs": {"x": [[1]]}',
        b'{"inputs": {"x": [[1]]}, "url": "http://h/x.jpg"}',
        b' {"inputs": {"x": [[1]]}}',
        b'{"model": "delays", "features": {"inputs": 3}}',  # a tabular record
        b"",
        None,
    ],
)
def test_any_other_value_is_left_to_the_parse(value: bytes | None) -> None:
    assert plain_tensors(value) is None


def test_a_large_json_record_reads_its_numbers_into_the_arrays_a_small_one_gives() -> None:
    rows = [[i * 0.25, i, -i, 1e-3] for i in range(120_000)]
    small = orjson.dumps({"inputs": {"x": rows[:2]}, "model": "tiny"})
    large = orjson.dumps({"inputs": {"x": rows}, "model": "tiny"})
    assert len(small) <= LARGE_JSON_BYTES < len(large)
    assert plain_tensors(small) is not None and plain_tensors(large) is None  # read once
    tensors = parse_value(large).tensors
    assert tensors is not None
    np.testing.assert_array_equal(tensors["x"], np.asarray(rows))
    assert tensors["x"].dtype == np.float64
    integers = orjson.dumps({"instances": [{"t": list(range(i, i + 300))} for i in range(2500)]})
    assert len(integers) > LARGE_JSON_BYTES
    tensors = parse_value(integers).tensors
    assert tensors is not None and tensors["t"].dtype == np.int64
    assert tensors["t"].shape == (2500, 300) and tensors["t"][2499, 299] == 2798


@pytest.mark.parametrize("item", [b"[],", b'{"a":1},', b'"",'])
def test_a_large_json_record_of_too_many_values_is_refused_before_they_are_made(
    item: bytes,
) -> None:
    """9 MB of ``[],`` took 300 MB as Python lists, 24 MB of ``{"a":1},`` 710 MB."""
    value = b'{"inputs":{"x":[' + item * 3_000_000 + b"0]}}"
    tracemalloc.start()
    try:
        with pytest.raises(BadRecord, match="more than the 2,097,152") as caught:
            parse_value(value)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.reason == "too_many_values"
    assert peak < 20 * len(value), f"{peak:,} bytes for a {len(value):,}-byte record"


def _sized(record: bytes, large: bool) -> bytes:
    """``record``, padded with whitespace past ``LARGE_JSON_BYTES`` when ``large``."""
    return record[:-1] + b" " * (LARGE_JSON_BYTES if large else 0) + b"}"


@pytest.mark.parametrize("large", [False, True])
@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_a_json_record_that_is_no_json_is_refused_at_any_size(number: bytes, large: bool) -> None:
    """Above 2 MiB the standard library read these as numbers, and the model answered nulls."""
    value = _sized(b'{"model": "tiny", "inputs": {"x": [[%s, 1, 2, 3]]}}' % number, large)
    with pytest.raises(BadRecord, match="invalid JSON") as caught:
        parse_value(value)
    assert caught.value.reason == "bad_json"


@pytest.mark.parametrize("large", [False, True])
def test_integers_past_64_bits_are_floats_at_any_size(large: bool) -> None:
    value = _sized(b'{"model": "tiny", "inputs": {"x": [[1%s, 1, 2, 3]]}}' % (b"0" * 29), large)
    tensors = parse_value(value).tensors
    assert tensors is not None
    np.testing.assert_array_equal(tensors["x"], [[1e29, 1, 2, 3]])


def test_a_records_headers_in_the_workers_namespace_are_renamed_in_its_dead_letter() -> None:
    headers: Headers = [
        ("streaminfer.error.type", b"fake_reason"),
        ("trace", b"1"),
        ("streaminfer.source.offset", b"999999"),
        (TRACE_HEADER, b"abc"),
        (UNREADABLE_HEADERS, b"a header name is not UTF-8"),
    ]
    assert their_headers(headers) == [
        ("input.streaminfer.error.type", b"fake_reason"),
        ("trace", b"1"),
        ("input.streaminfer.source.offset", b"999999"),
        (TRACE_HEADER, b"abc"),  # the trace goes on
        (UNREADABLE_HEADERS, b"a header name is not UTF-8"),  # said by the worker's consumer
    ]
    assert their_headers(None) == their_headers([]) == []
