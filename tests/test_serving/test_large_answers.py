"""Answers holding a large tensor are sent in pieces (chunked) and read as the same JSON."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper

from streaminfer.codecs.jsonvalues import dumps, to_json
from streaminfer.codecs.tfserving import from_tensor_proto, to_tensor_proto
from streaminfer.models.export.tiny import export_tiny_model
from streaminfer.models.metadata import ModelMetadata, Signature, TensorSpec
from streaminfer.models.registry import ModelRegistry
from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from streaminfer.protos.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from streaminfer.protos.tfserving import predict_pb2, prediction_service_pb2_grpc
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


def _export_widening(repo: Path) -> None:
    """``widen`` version 1: bytes ``x`` [N, 1024] in, the same as float64 out, 8 times
    as large, so that an answer can pass the message limit its request is within."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.DOUBLE)],
        "widen",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", 1024])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N", 1024])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    metadata = ModelMetadata(
        signature=Signature(
            inputs=[TensorSpec(name="x", dtype="uint8", shape=[-1, 1024])],
            outputs=[TensorSpec(name="y", dtype="float64", shape=[-1, 1024])],
        ),
        max_batch_size=1 << 16,
    )
    version = repo / "widen" / "1"
    version.mkdir(parents=True)
    onnx.save(model, str(version / metadata.model_file))
    metadata.write(version)


def test_grpc_answers_past_the_message_limit_are_refused_before_they_are_built(
    tmp_path: Path,
) -> None:
    """2 MB of bytes in, 16 MB of float64 out, past a 4 MB limit: gRPC refused such an
    answer only once it had been built (a 128 MB one took a server to 1.16 GB).  It is now
    refused from the outputs' size, saying which limit, in gRPC's words for it (by which a
    worker dead-letters the record), and the server answers on."""
    repo = tmp_path / "repo"
    _export_widening(repo)
    x = np.random.default_rng(5).integers(0, 255, (2048, 1024), dtype=np.uint8)
    tf = predict_pb2.PredictRequest()
    tf.model_spec.name = "widen"
    tf.inputs["x"].CopyFrom(to_tensor_proto(x))
    v2_request = v2.ModelInferRequest(model_name="widen")
    v2_request.inputs.add(name="x", datatype="UINT8", shape=list(x.shape))
    v2_request.raw_input_contents.append(x.tobytes())
    with (
        ServerProcess(repo, "--max-request-mb", "4", log=tmp_path / "serve.log") as server,
        grpc.insecure_channel(server.grpc_target) as channel,
    ):
        calls = [
            lambda: prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(tf),
            lambda: v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(v2_request),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = refused.value.details()
            assert "larger than max (16777216 bytes of outputs" in details, details
            assert "--max-request-mb" in details
        tf.inputs["x"].CopyFrom(to_tensor_proto(x[:8]))
        answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(tf)
        np.testing.assert_array_equal(from_tensor_proto("y", answer.outputs["y"]), x[:8])
