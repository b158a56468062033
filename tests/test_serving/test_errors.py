"""Every mistake a client can make gets the right status and a message that says what to fix."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from streaminfer.codecs.arrays import bytes_array
from streaminfer.codecs.tfserving import to_tensor_proto
from streaminfer.protos.health import health_pb2, health_pb2_grpc
from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from streaminfer.protos.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from streaminfer.protos.tfserving import predict_pb2, prediction_service_pb2_grpc, types_pb2
from streaminfer.serving.errors import MAX_MESSAGE_BYTES
from tests.repository import MODEL
from tests.servers import ServerProcess

PREDICT = f"/v1/models/{MODEL}:predict"
INFER = f"/v2/models/{MODEL}/infer"
NOT_AN_IMAGE = {"b64": base64.b64encode(b"<html>no</html>").decode()}


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/v1/models/nope:predict", {"instances": [1]}, 404, "not served"),
        (f"/v1/models/{MODEL}/versions/3:predict", {"instances": [1]}, 404, "versions: 1"),
        (f"/v1/models/{MODEL}/labels/canary:predict", {"instances": [1]}, 400, "label 'canary'"),
        (PREDICT, {"instances": [[1, 2]]}, 400, "expected [N, 3, 224, 224]"),
        (PREDICT, {"inputs": {"wrong": [[1.0]]}}, 400, "missing input 'input'"),
        (PREDICT, {"instances": [NOT_AN_IMAGE]}, 400, "not a JPEG"),
        (PREDICT, {"instances": [1], "inputs": [1]}, 400, "exactly one"),
        (PREDICT, {"instances": [[1, "a"]]}, 400, "'instances'"),
        (PREDICT, {"signature_name": "x", "instances": [1]}, 400, "no signature 'x'"),
        (PREDICT, [1, 2], 400, "JSON object"),
        (
            INFER,
            {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
            400,
            "expected [N, 3, 224, 224]",
        ),
        (
            INFER,
            {"inputs": [{"name": "input", "shape": [-1], "datatype": "FP32", "data": [1]}]},
            400,
            "negative dimension",
        ),
        (
            INFER,
            {"inputs": [{"name": "input", "shape": [2], "datatype": "FP32", "data": [1]}]},
            400,
            "shape [2] needs 2",
        ),
        (
            INFER,
            {"inputs": [{"name": "input", "shape": [1 << 40], "datatype": "FP32", "data": [1]}]},
            400,
            "more than",
        ),
        (
            INFER,
            {"inputs": [{"name": "input", "shape": [1], "datatype": "FP8", "data": [1]}]},
            400,
            "not supported",
        ),
        (
            INFER,
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 3, 224, 224],
                        "datatype": "FP32",
                        "data": [0] * 150528,
                    },
                    {"name": "extra", "shape": [1], "datatype": "FP32", "data": [0]},
                ]
            },
            400,
            "unknown inputs ['extra']",
        ),
        ("/v2/models/nope/infer", {"inputs": []}, 404, "not served"),
        (f"/v2/models/{MODEL}/versions/x/infer", {"inputs": []}, 400, "positive integer"),
    ],
)
def test_rest_errors(
    server: ServerProcess, path: str, body: object, status: int, words: str
) -> None:
    with server.client() as client:
        reply = client.post(path, json=body)
    assert reply.status_code == status, reply.text
    assert words in reply.json()["error"]


def test_rest_malformed_bodies_are_400(server: ServerProcess) -> None:
    with server.client() as client:
        for body in (b"{", b"\xff\xfe", b"[" * 100_000, b""):
            reply = client.post(PREDICT, content=body)
            assert reply.status_code == 400
            assert "not valid JSON" in reply.json()["error"]
        reply = client.post(INFER, content=b"{}", headers={"Inference-Header-Content-Length": "99"})
        assert reply.status_code == 400
        assert "Inference-Header-Content-Length" in reply.json()["error"]


def test_unknown_paths_and_methods_are_json_4xx(server: ServerProcess) -> None:
    with server.client() as client:
        assert client.get("/nowhere").json()["error"]
        assert client.post(f"/v1/models/{MODEL}:explode", json={}).status_code == 404
        assert client.get(PREDICT).status_code == 405


def _predict(channel: grpc.Channel, request: predict_pb2.PredictRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as failure:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request)
    return failure.value


def test_grpc_errors(channel: grpc.Channel) -> None:
    unknown = predict_pb2.PredictRequest()
    unknown.model_spec.name = "nope"
    assert _predict(channel, unknown).code() == grpc.StatusCode.NOT_FOUND

    label = predict_pb2.PredictRequest()
    label.model_spec.name = MODEL
    label.model_spec.version_label = "stable"
    error = _predict(channel, label)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "label 'stable'" in error.details()

    mismatch = predict_pb2.PredictRequest()
    mismatch.model_spec.name = MODEL
    tensor = mismatch.inputs["input"]
    tensor.dtype = types_pb2.DT_FLOAT
    tensor.tensor_shape.dim.add(size=1)
    tensor.tensor_shape.dim.add(size=3)
    tensor.tensor_content = b"\0" * 8
    error = _predict(channel, mismatch)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "8 bytes" in error.details() and "needs 12" in error.details()

    image = predict_pb2.PredictRequest()
    image.model_spec.name = MODEL
    image.inputs["images"].CopyFrom(to_tensor_proto(bytes_array([b"GIF89a broken"])))
    error = _predict(channel, image)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

    empty = predict_pb2.PredictRequest()
    assert "model_spec.name" in _predict(channel, empty).details()


def test_grpc_v2_errors(channel: grpc.Channel) -> None:
    stub = v2_grpc.GRPCInferenceServiceStub(channel)
    request = v2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input", datatype="FP32", shape=[1, 3, 224, 224])
    request.raw_input_contents.extend([b"1234", b"5678"])
    with pytest.raises(grpc.RpcError) as failure:
        stub.ModelInfer(request)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "one per input" in failure.value.details()
    with pytest.raises(grpc.RpcError) as failure:
        stub.ModelMetadata(v2.ModelMetadataRequest(name="nope"))
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_long_name_in_an_error_is_cut_not_refused_by_the_client(
    server: ServerProcess, channel: grpc.Channel
) -> None:
    """Quoted whole, a 20 KB model name made a status past the client's 16 KB of
    metadata: it read RESOURCE_EXHAUSTED instead of NOT_FOUND."""
    name = "n" * 20_000
    calls = [
        lambda: v2_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
            v2.ModelMetadataRequest(name=name)
        ),
        lambda: prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            predict_pb2.PredictRequest(model_spec={"name": name})
        ),
        lambda: health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=name)
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as failure:
            call()
        assert failure.value.code() == grpc.StatusCode.NOT_FOUND, failure.value.details()
        assert " bytes cut] ... " in failure.value.details()
    with server.client() as client:  # a URL holds at most 8 KB, the JSON error less
        reply = client.post(f"/v2/models/{'n' * 6000}/infer", json={"inputs": []})
    assert reply.status_code == 404
    assert len(reply.json()["error"]) <= MAX_MESSAGE_BYTES


def _beyond_float32(dtype: type = np.float64) -> np.ndarray:
    """A valid input for the model but for one value no float32 holds."""
    array = np.zeros((1, 3, 224, 224), dtype)
    array[0, 1, 2, 3] = -1e300
    return array


def test_values_beyond_the_models_float32_are_400_on_every_rest_api(server: ServerProcess) -> None:
    rows = _beyond_float32().tolist()
    v2_input = {"name": "input", "shape": [1, 3, 224, 224], "data": rows}
    bodies = [
        (PREDICT, {"instances": rows}),
        (PREDICT, {"inputs": {"input": rows}}),
        (INFER, {"inputs": [{**v2_input, "datatype": "FP32"}]}),  # not the tensor it claims
        (INFER, {"inputs": [{**v2_input, "datatype": "FP64"}]}),  # not what the model takes
    ]
    with server.client() as client:
        for path, body in bodies:
            reply = client.post(path, json=body)
            assert reply.status_code == 400, reply.text
            assert "beyond float32's range" in reply.json()["error"]
        healthy = client.post(PREDICT, json={"instances": np.zeros((1, 3, 224, 224)).tolist()})
        assert healthy.status_code == 200, healthy.text


def test_values_beyond_the_models_float32_are_invalid_argument_on_grpc(
    channel: grpc.Channel,
) -> None:
    tf = predict_pb2.PredictRequest()
    tf.model_spec.name = MODEL
    tf.inputs["input"].CopyFrom(to_tensor_proto(_beyond_float32()))
    v2_request = v2.ModelInferRequest(model_name=MODEL)
    v2_request.inputs.add(name="input", datatype="FP64", shape=[1, 3, 224, 224])
    v2_request.raw_input_contents.append(_beyond_float32().tobytes())
    failures = [_predict(channel, tf)]
    with pytest.raises(grpc.RpcError) as failure:
        v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(v2_request)
    failures.append(failure.value)
    for error in failures:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "beyond float32's range" in error.details()


def test_past_the_deadline_is_504_and_deadline_exceeded(model_repo: Path, tmp_path: Path) -> None:
    jpeg = base64.b64encode(_tiny_jpeg()).decode()
    with ServerProcess(
        model_repo, "--request-timeout", "0.0001", log=tmp_path / "serve.log"
    ) as server:
        with server.client() as client:
            answer = client.post(PREDICT, json={"instances": [{"b64": jpeg}]})
        assert answer.status_code == 504 and "deadline" in answer.json()["error"]
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = MODEL
            request.inputs["images"].CopyFrom(to_tensor_proto(bytes_array([_tiny_jpeg()])))
            with pytest.raises(grpc.RpcError) as failed:
                stub.Predict(request, timeout=30)
        assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def _tiny_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, "JPEG")
    return buffer.getvalue()
