"""Answers holding a large tensor are sent in pieces (chunked) and read as the same JSON."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from streaminfer.codecs.jsonvalues import dumps, to_json
from streaminfer.models.export.tiny import export_tiny_model
from streaminfer.models.registry import ModelRegistry
from streaminfer.serving import responses
from tests.servers import ServerProcess

ROWS = 20_000
"""The tiny model answers 4 values a row: 80,000 values, past ``STREAM_ELEMENTS``."""


async def _joined(body: object) -> bytes:
    assert not isinstance(body, bytes), "expected a streamed body"
    pieces = [piece async for piece in body]  # type: ignore[attr-defined]
    assert len(pieces) > 2
    return b"".join(pieces)


finite = st.floats(allow_nan=False, allow_infinity=False)  # non-finite arrays go whole


@given(
    hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9), elements=finite),
    st.text(),
)
def test_pieces_join_to_the_whole_text(array: np.ndarray, text: str) -> None:
    document = {"outputs": [{"name": text, "data": to_json(array)}], "small": to_json(array[:1])}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(responses, "STREAM_ELEMENTS", 2)
        patch.setattr(responses, "SLICE_ELEMENTS", 3)
        body = responses.json_body(document)
        if array.size <= 2:
            assert body == dumps(document)
        else:
            assert asyncio.run(_joined(body)) == dumps(document)
            pieces = list(responses.array_pieces(to_json(array)))
            # A piece holds a slice of values: each at most 24 characters, with its brackets.
            assert max(len(piece) for piece in pieces) <= 3 * 30 + 4


def test_large_answers_stream_over_both_rest_apis(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    config = export_tiny_model(repo, version=1) / "model.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "max_batch_size": ROWS}))
    x = np.random.default_rng(3).standard_normal((ROWS, 4)).astype(np.float32)
    registry = ModelRegistry(repo)
    registry.reload()
    tiny = registry.resolve("tiny").model
    expected = tiny.run(tiny.validate({"x": x}))["y"]
    v2_request = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [ROWS, 4]}]}
    v2_request["inputs"][0]["data"] = x.ravel().tolist()
    with (
        ServerProcess(repo, log=tmp_path / "serve.log") as server,
        server.client() as client,
    ):
        rows = client.post("/v1/models/tiny:predict", json={"instances": x.tolist()})
        v2 = client.post("/v2/models/tiny/infer", json=v2_request)
        small = client.post("/v1/models/tiny:predict", json={"instances": x[:2].tolist()})
    for reply in (rows, v2):
        assert reply.status_code == 200, reply.text
        assert reply.headers.get("transfer-encoding") == "chunked"
        assert reply.headers["content-type"].startswith("application/json")
    np.testing.assert_allclose(np.array(rows.json()["predictions"]), expected, rtol=1e-6)
    (output,) = v2.json()["outputs"]
    assert output["shape"] == [ROWS, 4]
    np.testing.assert_allclose(np.reshape(output["data"], (ROWS, 4)), expected, rtol=1e-6)
    assert small.status_code == 200 and "content-length" in small.headers  # small: one body
