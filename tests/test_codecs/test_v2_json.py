"""V2 REST tensors: JSON ``data`` and the binary extension carry the same arrays."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaminfer.codecs.errors import DecodeError
from streaminfer.codecs.jsonvalues import JSON
from streaminfer.codecs.v2_json import (
    HEADER_LENGTH,
    join_body,
    read_tensors,
    split_body,
    write_tensors,
)
from tests.test_codecs.strategies import arrays, assert_same

tensor_maps = st.dictionaries(st.text(min_size=1, max_size=8), arrays(), min_size=1, max_size=3)


def _send(tensors: dict[str, np.ndarray], binary: bool | set[str]) -> dict[str, np.ndarray]:
    """Write ``tensors`` into a body, and read them back as the other end would."""
    described, chunks = write_tensors(tensors, binary)
    body, headers = join_body({"outputs": described}, chunks)
    document, raw = split_body(body, headers.get(HEADER_LENGTH))
    return read_tensors(document["outputs"], raw, "output")


@given(tensor_maps, st.data())
def test_json_and_binary_carry_the_same_arrays(
    tensors: dict[str, np.ndarray], data: st.DataObject
) -> None:
    some = data.draw(st.sets(st.sampled_from(sorted(tensors))))
    for binary in (True, False, some):
        back = _send(tensors, binary)
        assert list(back) == list(tensors)
        for name, array in tensors.items():
            assert_same(back[name], array)


def test_binary_bodies_say_where_the_header_ends() -> None:
    tensors = {"y": np.arange(3, dtype=np.int8), "z": np.zeros(1, np.float32)}
    described, chunks = write_tensors(tensors, {"y"})
    assert described[0] == {
        "name": "y",
        "datatype": "INT8",
        "shape": [3],
        "parameters": {"binary_data_size": 3},
    }
    assert described[1] == {"name": "z", "datatype": "FP32", "shape": [1], "data": [0.0]}
    body, headers = join_body({"outputs": described}, chunks)
    assert headers["Content-Type"] == "application/octet-stream"
    assert body[int(headers[HEADER_LENGTH]) :] == b"\x00\x01\x02"
    plain, plain_headers = join_body({"outputs": []}, [])
    assert plain == b'{"outputs":[]}' and plain_headers == {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("body", "header_length", "words"),
    [
        (b"{}", "99", "does not fit a 2-byte body"),
        (b"{}", "x", "does not fit"),
        (b"{", None, "not valid JSON"),
    ],
)
def test_bodies_that_do_not_split_are_refused(
    body: bytes, header_length: str | None, words: str
) -> None:
    with pytest.raises(DecodeError, match=words):
        split_body(body, header_length)


def _tensor(**fields: JSON) -> dict[str, JSON]:
    return {"name": "x", "datatype": "FP32", "shape": [1], **fields}


@pytest.mark.parametrize(
    ("documents", "binary", "words"),
    [
        ([], b"", '"inputs" must be a non-empty list'),
        ({"name": "x"}, b"", '"inputs" must be a non-empty list'),
        ([1], b"", '"inputs[]" must be a JSON object'),
        ([{"name": "x", "shape": [1]}], b"", 'needs a string "name" and "datatype"'),
        ([_tensor(shape=[1.5], data=[1])], b"", '"shape" must be a list of integers'),
        ([_tensor(data=[1]), _tensor(data=[1])], b"", "given twice"),
        ([_tensor(datatype="FP8", data=[1])], b"", "datatype 'FP8' is not supported"),
        ([_tensor()], b"", 'has neither "data" nor binary_data_size'),
        ([_tensor(parameters={"binary_data_size": 8})], b"1234", "exceeds the body"),
        ([_tensor(parameters={"binary_data_size": -1})], b"", "exceeds the body"),
        ([_tensor(parameters={"binary_data_size": 4})], b"12345", "1 bytes of binary data"),
        ([_tensor(shape=[2], data=[1])], b"", "1 values given, shape [2] needs 2"),
        ([_tensor(shape=[-1], data=[1])], b"", "negative dimension"),
    ],
)
def test_malformed_tensors_are_refused(documents: JSON, binary: bytes, words: str) -> None:
    with pytest.raises(DecodeError) as refused:
        read_tensors(documents, binary, "input")
    assert words in str(refused.value)
