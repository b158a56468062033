"""KServe V2 over REST (JSON and binary extension) and gRPC (typed and raw contents)."""

from __future__ import annotations

import base64
import json
import struct

import grpc
import numpy as np

from streaminfer.models.registry import LoadedVersion
from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from streaminfer.protos.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from tests.repository import MODEL
from tests.servers import ServerProcess

INFER = f"/v2/models/{MODEL}/infer"


def test_health_and_metadata(server: ServerProcess) -> None:
    with server.client() as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get(f"/v2/models/{MODEL}/ready").status_code == 200
        assert client.get(f"/v2/models/{MODEL}/versions/1/ready").status_code == 200
        assert client.get("/v2/models/nope/ready").status_code == 404
        extensions = client.get("/v2").json()["extensions"]
        metadata = client.get(f"/v2/models/{MODEL}/versions/1").json()
        images = client.get(f"/v2/models/{MODEL}.images").json()
    assert {"binary_tensor_data", "classification"} <= set(extensions)
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
    assert [t["name"] for t in metadata["outputs"]] == ["logits"]
    assert images["name"] == f"{MODEL}.images" and images["versions"] == ["1"]
    assert images["inputs"] == [{"name": "images", "datatype": "BYTES", "shape": [-1]}]
    assert [t["name"] for t in images["outputs"]] == ["classes", "scores", "class_ids"]


def test_rest_json_float_infer(
    server: ServerProcess, embedded: LoadedVersion, float_input: np.ndarray
) -> None:
    body = {
        "id": "r1",
        "inputs": [
            {
                "name": "input",
                "shape": [1, 3, 224, 224],
                "datatype": "FP32",
                "data": float_input.ravel().tolist(),
            }
        ],
    }
    with server.client() as client:
        reply = client.post(INFER, json=body)
    assert reply.status_code == 200, reply.text
    document = reply.json()
    assert document["id"] == "r1"
    assert document["model_version"] == "1"
    (output,) = document["outputs"]
    assert output["shape"] == [1, 1000]
    logits = np.array(output["data"], dtype=np.float32).reshape(1, 1000)
    assert logits.argmax() == embedded.infer({"input": float_input})["logits"].argmax()


def test_rest_binary_extension_both_ways(
    server: ServerProcess, embedded: LoadedVersion, float_input: np.ndarray
) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 3, 224, 224],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": float_input.nbytes},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    with server.client() as client:
        reply = client.post(
            INFER,
            content=header + float_input.tobytes(),
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
    assert reply.status_code == 200, reply.text
    length = int(reply.headers["Inference-Header-Content-Length"])
    document = json.loads(reply.content[:length])
    (output,) = document["outputs"]
    assert output["parameters"]["binary_data_size"] == 4000
    logits = np.frombuffer(reply.content[length:], dtype="<f4").reshape(1, 1000)
    np.testing.assert_allclose(
        logits, embedded.infer({"input": float_input})["logits"], rtol=1e-3, atol=1e-3
    )


def test_rest_json_classification_extension(
    server: ServerProcess, embedded: LoadedVersion, float_input: np.ndarray
) -> None:
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": [1, 3, 224, 224],
                "datatype": "FP32",
                "data": float_input.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "logits", "parameters": {"classification": 2}}],
    }
    with server.client() as client:
        reply = client.post(INFER, json=body)
    assert reply.status_code == 200, reply.text
    (output,) = reply.json()["outputs"]
    assert (output["datatype"], output["shape"]) == ("BYTES", [1, 2])
    best = int(embedded.infer({"input": float_input})["logits"].argmax())
    score, index, label = output["data"][0].split(":", 2)
    assert (int(index), label) == (best, embedded.class_names[best])  # type: ignore[index]
    assert float(score) >= float(output["data"][1].split(":")[0])


def test_rest_image_bytes_with_b64_and_binary(
    server: ServerProcess, sample_jpegs: dict[str, bytes], expected_labels: dict[str, str]
) -> None:
    jpeg = sample_jpegs["chelsea"]
    as_b64 = {
        "inputs": [
            {
                "name": "images",
                "shape": [1],
                "datatype": "BYTES",
                "data": [{"b64": base64.b64encode(jpeg).decode()}],
            }
        ],
        "parameters": {"top_k": 3},
    }
    framed = struct.pack("<I", len(jpeg)) + jpeg
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image_bytes",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(framed)},
                }
            ]
        }
    ).encode()
    with server.client() as client:
        first = client.post(INFER, json=as_b64)
        second = client.post(
            INFER,
            content=header + framed,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
    for reply, k in ((first, 3), (second, 5)):
        assert reply.status_code == 200, reply.text
        outputs = {o["name"]: o for o in reply.json()["outputs"]}
        assert outputs["classes"]["shape"] == [1, k]
        assert outputs["classes"]["data"][0] == expected_labels["chelsea"]
        assert len(outputs["scores"]["data"]) == k


def _stub(channel: grpc.Channel) -> v2_grpc.GRPCInferenceServiceStub:
    return v2_grpc.GRPCInferenceServiceStub(channel)


def test_grpc_health_and_metadata(channel: grpc.Channel) -> None:
    stub = _stub(channel)
    assert stub.ServerLive(v2.ServerLiveRequest()).live
    assert stub.ServerReady(v2.ServerReadyRequest()).ready
    assert stub.ModelReady(v2.ModelReadyRequest(name=MODEL)).ready
    assert not stub.ModelReady(v2.ModelReadyRequest(name="nope")).ready
    assert stub.ServerMetadata(v2.ServerMetadataRequest()).name == "streaminfer"
    metadata = stub.ModelMetadata(v2.ModelMetadataRequest(name=MODEL, version="1"))
    assert metadata.inputs[0].name == "input"
    assert list(metadata.inputs[0].shape) == [-1, 3, 224, 224]


def test_grpc_raw_and_typed_float_infer(
    channel: grpc.Channel, embedded: LoadedVersion, float_input: np.ndarray
) -> None:
    expected = embedded.infer({"input": float_input})["logits"]
    tensor = v2.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[1, 3, 224, 224]
    )
    raw = v2.ModelInferRequest(model_name=MODEL, inputs=[tensor], id="x")
    raw.raw_input_contents.append(float_input.tobytes())
    typed = v2.ModelInferRequest(model_name=MODEL, model_version="1", inputs=[tensor])
    typed.inputs[0].contents.fp32_contents.extend(float_input.ravel().tolist())
    for request in (raw, typed):
        response = _stub(channel).ModelInfer(request)
        assert response.model_version == "1"
        (output,) = response.outputs
        assert list(output.shape) == [1, 1000] and output.datatype == "FP32"
        logits = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(1, 1000)
        np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=1e-3)
    assert _stub(channel).ModelInfer(raw).id == "x"


def test_grpc_image_bytes_infer(
    channel: grpc.Channel, sample_jpegs: dict[str, bytes], expected_labels: dict[str, str]
) -> None:
    request = v2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="images", datatype="BYTES", shape=[2])
    request.inputs[0].contents.bytes_contents.extend(
        [sample_jpegs["chelsea"], sample_jpegs["coffee"]]
    )
    request.parameters["top_k"].int64_param = 1
    response = _stub(channel).ModelInfer(request)
    outputs = dict(
        zip([o.name for o in response.outputs], response.raw_output_contents, strict=True)
    )
    classes = outputs["classes"]
    labels = []
    while classes:
        (size,) = struct.unpack_from("<I", classes)
        labels.append(classes[4 : 4 + size].decode())
        classes = classes[4 + size :]
    assert labels == [expected_labels["chelsea"], expected_labels["coffee"]]
