"""String tensors through a real server, on every door: the model sees exactly the text
sent (ONNX Runtime once saw ``"b'abc'"`` for ``abc``), the answer carries exactly the
text it gave, and bytes that are no UTF-8 are a bad request saying so."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import grpc
import pytest

from streaminfer.codecs.arrays import BYTES, bytes_array
from streaminfer.codecs.raw import from_raw
from streaminfer.codecs.tfserving import from_tensor_proto, to_tensor_proto
from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from streaminfer.protos.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from streaminfer.protos.tfserving import predict_pb2, prediction_service_pb2_grpc
from tests.servers import ServerProcess
from tests.strings import STRINGS, TEXTS, export_string_identity

PREDICT = f"/v1/models/{STRINGS}:predict"
INFER = f"/v2/models/{STRINGS}/infer"
NOT_UTF8 = b"\xff\xfeabc"


@pytest.fixture(scope="module")
def strings_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("strings")
    export_string_identity(folder / "repo")
    with ServerProcess(folder / "repo", log=folder / "serve.log") as process:
        yield process


@pytest.fixture
def strings_channel(strings_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(strings_server.grpc_target) as channel:
        yield channel


def test_tf_serving_rest_strings_come_back_exactly(strings_server: ServerProcess) -> None:
    with strings_server.client() as client:
        rows = client.post(PREDICT, json={"instances": TEXTS})
        columns = client.post(PREDICT, json={"inputs": {"s": TEXTS}})
        encoded = [{"b64": base64.b64encode(t.encode()).decode()} for t in TEXTS]
        b64 = client.post(PREDICT, json={"instances": encoded})
    assert rows.status_code == 200, rows.text
    assert rows.json()["predictions"] == TEXTS
    assert columns.json()["outputs"] == TEXTS
    assert b64.json()["predictions"] == TEXTS


def test_v2_rest_strings_come_back_exactly(strings_server: ServerProcess) -> None:
    tensor = {"name": "s", "datatype": "BYTES", "shape": [len(TEXTS)], "data": TEXTS}
    with strings_server.client() as client:
        reply = client.post(INFER, json={"inputs": [tensor]})
    assert reply.status_code == 200, reply.text
    (output,) = reply.json()["outputs"]
    assert output["datatype"] == "BYTES" and output["data"] == TEXTS


def test_grpc_strings_come_back_exactly(strings_channel: grpc.Channel) -> None:
    encoded = bytes_array([text.encode() for text in TEXTS])
    tf = predict_pb2.PredictRequest()
    tf.model_spec.name = STRINGS
    tf.inputs["s"].CopyFrom(to_tensor_proto(encoded))
    answer = prediction_service_pb2_grpc.PredictionServiceStub(strings_channel).Predict(tf)
    assert [b.decode() for b in from_tensor_proto("out", answer.outputs["out"])] == TEXTS

    request = v2.ModelInferRequest(model_name=STRINGS)
    request.inputs.add(name="s", datatype="BYTES", shape=[len(TEXTS)])
    request.inputs[0].contents.bytes_contents.extend(encoded.tolist())
    response = v2_grpc.GRPCInferenceServiceStub(strings_channel).ModelInfer(request)
    (output,) = response.outputs
    got = from_raw("out", BYTES, list(output.shape), response.raw_output_contents[0])
    assert [b.decode() for b in got] == TEXTS


def test_bytes_that_are_no_utf8_are_a_bad_request(
    strings_server: ServerProcess, strings_channel: grpc.Channel
) -> None:
    with strings_server.client() as client:
        reply = client.post(
            PREDICT, json={"instances": ["ok", {"b64": base64.b64encode(NOT_UTF8).decode()}]}
        )
    assert reply.status_code == 400
    assert "'s': element 1 is not UTF-8 text" in reply.json()["error"]

    request = v2.ModelInferRequest(model_name=STRINGS)
    request.inputs.add(name="s", datatype="BYTES", shape=[1])
    request.inputs[0].contents.bytes_contents.append(NOT_UTF8)
    with pytest.raises(grpc.RpcError) as failure:
        v2_grpc.GRPCInferenceServiceStub(strings_channel).ModelInfer(request)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not UTF-8 text" in failure.value.details()


def test_a_tensor_model_has_no_image_signature(
    strings_server: ServerProcess, strings_channel: grpc.Channel
) -> None:
    body = {"instances": TEXTS, "signature_name": "serving_images"}
    with strings_server.client() as client:
        reply = client.post(PREDICT, json=body)
    assert reply.status_code == 400
    assert "no signature 'serving_images'" in reply.json()["error"]

    request = predict_pb2.PredictRequest()
    request.model_spec.name = STRINGS
    request.model_spec.signature_name = "predict_images"
    request.inputs["s"].CopyFrom(to_tensor_proto(bytes_array([b"abc"])))
    with pytest.raises(grpc.RpcError) as failure:
        prediction_service_pb2_grpc.PredictionServiceStub(strings_channel).Predict(request)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
