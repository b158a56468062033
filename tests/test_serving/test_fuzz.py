"""Whatever a client sends, the server answers with a 4xx at worst: never a 5xx or a crash.

Three kinds of fuzzing: hypothesis-built bodies and messages aimed at the decoders; both
REST APIs from their OpenAPI description (``serving/openapi.yaml``) with schemathesis,
valid and invalid requests alike; and both gRPC APIs with valid messages whose bytes are
mutated (flipped, inserted, deleted, cut) by a seeded generator and sent raw.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import re
import socket
import string
import zlib
from pathlib import Path
from typing import Any

import grpc
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.generation import GenerationMode
from schemathesis.schemas import APIOperation

import streaminfer.serving
from streaminfer.codecs.arrays import bytes_array
from streaminfer.codecs.raw import to_raw
from streaminfer.codecs.tfserving import to_tensor_proto
from streaminfer.protos.health import health_pb2
from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from streaminfer.protos.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from streaminfer.protos.tfserving import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    inception_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    tensor_pb2,
    tensor_shape_pb2,
)
from tests.repository import MODEL
from tests.servers import ServerProcess

OPENAPI = Path(streaminfer.serving.__file__).parent / "openapi.yaml"

FUZZ = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
SERVER_FAULTS = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS)

scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
names = st.sampled_from(["input", "images", "image_bytes", "top_k", "x", ""])
shapes = st.lists(st.integers(-2, 300) | st.sampled_from([1 << 40, 0]), max_size=5)
v2_tensors = st.fixed_dictionaries(
    {
        "name": names,
        "shape": shapes,
        "datatype": st.sampled_from(["FP32", "BYTES", "INT8", "FP16", "BF16", ""]),
    },
    optional={
        "data": json_values,
        "parameters": st.dictionaries(st.sampled_from(["binary_data_size"]), json_values),
    },
)
bodies = (
    json_values
    | st.fixed_dictionaries({"instances": json_values}, optional={"signature_name": json_values})
    | st.fixed_dictionaries({"inputs": json_values | st.dictionaries(names, json_values)})
    | st.fixed_dictionaries(
        {"inputs": st.lists(v2_tensors, max_size=3)},
        optional={"outputs": json_values, "parameters": json_values, "id": json_values},
    )
)
path_text = st.text(alphabet=string.ascii_letters + string.digits + "/:._-", max_size=30)
paths = (
    st.sampled_from(
        [
            f"/v1/models/{MODEL}:predict",
            f"/v1/models/{MODEL}/versions/1:predict",
            f"/v1/models/{MODEL}/labels/x:predict",
            f"/v2/models/{MODEL}/infer",
            f"/v2/models/{MODEL}/versions/1/infer",
        ]
    )
    | path_text.map(lambda tail: "/v1/models/" + tail)
    | path_text.map(lambda tail: "/v2/" + tail)
)


@FUZZ
@given(path=paths, body=bodies)
def test_rest_bodies_and_paths(server: ServerProcess, path: str, body: Any) -> None:
    with server.client() as client:
        posted = client.post(path, content=json.dumps(body))
        fetched = client.get(path)
    for reply in (posted, fetched):
        assert reply.status_code < 500, (reply.status_code, reply.text)
        assert "error" in reply.json() or reply.status_code < 400


tensors = st.builds(
    tensor_pb2.TensorProto,
    dtype=st.integers(0, 25),
    tensor_shape=st.builds(
        tensor_shape_pb2.TensorShapeProto,
        dim=st.lists(
            st.builds(tensor_shape_pb2.TensorShapeProto.Dim, size=st.integers(-2, 400)), max_size=4
        ),
        unknown_rank=st.booleans(),
    ),
    tensor_content=st.binary(max_size=64),
    float_val=st.lists(st.floats(width=32, allow_nan=False), max_size=8),
    int_val=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8),
    int64_val=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4),
    bool_val=st.lists(st.booleans(), max_size=4),
    string_val=st.lists(st.binary(max_size=16), max_size=3),
    half_val=st.lists(st.integers(0, 2**31 - 1), max_size=4),
)


@FUZZ
@given(
    inputs=st.dictionaries(names, tensors, max_size=3),
    signature=st.sampled_from(["", "serving_images", "x"]),
)
def test_grpc_predict_requests(
    server: ServerProcess, inputs: dict[str, Any], signature: str
) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature
    for name, tensor in inputs.items():
        request.inputs[name].CopyFrom(tensor)
    with grpc.insecure_channel(server.grpc_target) as channel:
        try:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
        except grpc.RpcError as exc:
            assert exc.code() not in SERVER_FAULTS, exc.details()


v2_inputs = st.builds(
    v2.ModelInferRequest.InferInputTensor,
    name=names,
    datatype=st.sampled_from(["FP32", "FP16", "BYTES", "INT64", "UINT8", "BOOL", "X"]),
    shape=st.lists(st.integers(-2, 400), max_size=4),
    contents=st.builds(
        v2.InferTensorContents,
        fp32_contents=st.lists(st.floats(width=32, allow_nan=False), max_size=6),
        bytes_contents=st.lists(st.binary(max_size=12), max_size=3),
        uint_contents=st.lists(st.integers(0, 2**32 - 1), max_size=4),
        int64_contents=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4),
        bool_contents=st.lists(st.booleans(), max_size=4),
    ),
)


@FUZZ
@given(inputs=st.lists(v2_inputs, max_size=3), raw=st.lists(st.binary(max_size=64), max_size=3))
def test_grpc_model_infer_requests(
    server: ServerProcess, inputs: list[Any], raw: list[bytes]
) -> None:
    request = v2.ModelInferRequest(model_name=MODEL, inputs=inputs, raw_input_contents=raw)
    with grpc.insecure_channel(server.grpc_target) as channel:
        try:
            v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
        except grpc.RpcError as exc:
            assert exc.code() not in SERVER_FAULTS, exc.details()


def _operations() -> list[APIOperation]:
    schema = schemathesis.openapi.from_path(OPENAPI)
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("operation", _operations(), ids=lambda operation: operation.label)
def test_rest_apis_from_their_openapi_description(
    server: ServerProcess, operation: APIOperation
) -> None:
    """Valid and invalid requests of each operation; half of them name the served model
    (and its version 1)."""
    cases = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(
        GenerationMode.NEGATIVE
    )
    unimplemented = operation.label.endswith((":classify", ":regress"))  # 501 by design

    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases, served=st.booleans())
    def check(case: Any, served: bool) -> None:
        if served and case.path_parameters and "model" in case.path_parameters:
            case.path_parameters["model"] = MODEL
            if "version" in case.path_parameters:
                case.path_parameters["version"] = "1"
        reply = case.call(base_url=server.rest_url, timeout=60)
        assert reply.status_code < 500 or (unimplemented and reply.status_code == 501), (
            reply.status_code,
            reply.text[:300],
        )

    check()
    assert server.process is not None and server.process.alive()


def _tiny_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "blue").save(buffer, "JPEG")
    return buffer.getvalue()


def _valid_messages() -> dict[str, bytes]:
    """One valid serialized request of each gRPC method worth mutating."""
    jpeg = _tiny_jpeg()
    predict = predict_pb2.PredictRequest()
    predict.model_spec.name = MODEL
    predict.inputs["images"].CopyFrom(to_tensor_proto(bytes_array([jpeg])))
    fill = predict_pb2.PredictRequest()
    fill.model_spec.name = MODEL
    fill.inputs["input"].CopyFrom(
        tensor_pb2.TensorProto(
            dtype=1,  # DT_FLOAT
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in (1, 3, 224, 224)]
            ),
            float_val=[0.5],
        )
    )
    pixels = predict_pb2.PredictRequest()  # uint8, one pixel value filling the image
    pixels.model_spec.name = MODEL
    pixels.inputs["input"].CopyFrom(fill.inputs["input"])
    pixels.inputs["input"].ClearField("float_val")
    pixels.inputs["input"].dtype = 4  # DT_UINT8
    pixels.inputs["input"].int_val.append(200)
    infer = v2.ModelInferRequest(model_name=MODEL, raw_input_contents=[to_raw(bytes_array([jpeg]))])
    infer.inputs.add(name="images", datatype="BYTES", shape=[1])
    typed = v2.ModelInferRequest(model_name=MODEL)  # uint8 pixels, packed varints
    typed.inputs.add(name="input", datatype="UINT8", shape=[1, 3, 224, 224])
    typed.inputs[0].contents.uint_contents.extend(
        random.Random(5).choices(range(256), k=3 * 224 * 224)
    )
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = MODEL
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = MODEL
    return {
        "/tensorflow.serving.PredictionService/Predict": predict.SerializeToString(),
        "/tensorflow.serving.PredictionService/Predict#fill": fill.SerializeToString(),
        "/tensorflow.serving.PredictionService/GetModelMetadata": metadata.SerializeToString(),
        "/tensorflow.serving.ModelService/GetModelStatus": status.SerializeToString(),
        "/tensorflow.serving.InceptionService/Classify": inception_pb2.InceptionRequest(
            jpeg_encoded=jpeg
        ).SerializeToString(),
        "/tensorflow.serving.PredictionService/Predict#ints": pixels.SerializeToString(),
        "/inference.GRPCInferenceService/ModelInfer": infer.SerializeToString(),
        "/inference.GRPCInferenceService/ModelInfer#ints": typed.SerializeToString(),
        "/inference.GRPCInferenceService/ModelMetadata": v2.ModelMetadataRequest(
            name=MODEL, version="1"
        ).SerializeToString(),
        "/grpc.health.v1.Health/Check": health_pb2.HealthCheckRequest(
            service="inference.GRPCInferenceService"
        ).SerializeToString(),
        "/inference.GRPCInferenceService/ModelConfig": v2.ModelConfigRequest(
            name=MODEL, version="1"
        ).SerializeToString(),
        "/inference.GRPCInferenceService/ModelReady": v2.ModelReadyRequest(
            name=MODEL, version="1"
        ).SerializeToString(),
    }


def _mutated(message: bytes, rng: random.Random) -> bytes:
    """``message`` with one to four random byte edits, or cut short."""
    data = bytearray(message)
    for _ in range(rng.randint(1, 4)):
        edit, at = rng.randrange(5), rng.randrange(len(data) + 1)
        if edit == 0 and at < len(data):
            data[at] ^= 1 << rng.randrange(8)  # flip a bit
        elif edit == 1:
            data.insert(at, rng.randrange(256))
        elif edit == 2 and at < len(data):
            del data[at]
        elif edit == 3 and at < len(data):
            data[at] = rng.choice([0x00, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        else:
            del data[at:]
    return bytes(data)


MUTANTS_PER_METHOD = 60


@pytest.mark.parametrize("method", sorted(_valid_messages()))
def test_grpc_apis_with_mutated_messages(server: ServerProcess, method: str) -> None:
    rng = random.Random(f"{method}-12")  # seeded: a failure replays
    message = _valid_messages()[method]
    with grpc.insecure_channel(server.grpc_target) as channel:
        call = channel.unary_unary(method.partition("#")[0])  # raw bytes in and out
        for _ in range(MUTANTS_PER_METHOD):
            mutant = _mutated(message, rng)
            try:
                call(mutant, timeout=60)
            except grpc.RpcError as exc:
                assert exc.code() not in SERVER_FAULTS, (exc.code(), exc.details(), mutant[:80])
        call(message, timeout=60)  # the server still answers the valid message
    assert server.process is not None and server.process.alive()


# -- the HTTP envelope: framing, lengths, encodings ------------------------------------------
def _chunked(body: bytes, sizes: list[int], declared: list[str]) -> bytes:
    """``body`` in chunked framing, cut at ``sizes``; ``declared`` overrides chunks' sizes."""
    out, start = b"", 0
    for i, size in enumerate([*sizes, len(body)]):
        chunk = body[start : start + size]
        start += len(chunk)
        if chunk:
            head = declared[i] if i < len(declared) else f"{len(chunk):x}"
            out += head.encode() + b"\r\n" + chunk + b"\r\n"
    return out + b"0\r\n\r\n"


json_body = st.sampled_from([b'{"instances": [[1, 2, 3, 4]]}', b"{}", b"", b"\x00\xff garbage"])
envelopes = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["POST", "PUT", "GET"]),
        "path": st.sampled_from([f"/v1/models/{MODEL}:predict", f"/v2/models/{MODEL}/infer"]),
        "body": json_body,
        "encoding": st.sampled_from(["", "gzip", "deflate", "br", "zstd", "gzip, gzip", "x"]),
        "compress": st.booleans(),
        "framing": st.sampled_from(["length", "chunked", "both", "none", "te-junk"]),
        "length": st.sampled_from(["right", "short", "long", "-1", "1e3", "99999999999999999999"]),
        "chunks": st.lists(st.integers(0, 40), max_size=4),
        "declared": st.lists(st.sampled_from(["zz", "-1", "ffffffffffffffff", "3;x=y", ""])),
        "extra": st.lists(
            st.tuples(
                st.text(string.ascii_letters + "-", min_size=1, max_size=20),
                st.text(string.printable.strip(), max_size=60),
            ),
            max_size=5,
        ),
        "expect": st.booleans(),
    }
)


def _request(e: dict[str, Any]) -> bytes:
    """The raw bytes of a request built from envelope ``e``."""
    body = e["body"]
    if e["compress"] and e["encoding"] in ("gzip", "deflate"):
        body = gzip.compress(body) if e["encoding"] == "gzip" else zlib.compress(body)
    head = [f"{e['method']} {e['path']} HTTP/1.1", "Host: x", "Content-Type: application/json"]
    if e["encoding"]:
        head.append(f"Content-Encoding: {e['encoding']}")
    if e["expect"]:
        head.append("Expect: 100-continue")
    lengths = {"right": len(body), "short": max(0, len(body) - 3), "long": len(body) + 5}
    length = str(lengths.get(e["length"], e["length"]))
    if e["framing"] in ("length", "both"):
        head.append(f"Content-Length: {length}")
    if e["framing"] in ("chunked", "both"):
        head.append("Transfer-Encoding: chunked")
        body = _chunked(body, e["chunks"], e["declared"])
    if e["framing"] == "te-junk":
        head.append("Transfer-Encoding: gzip, identity")
    head += [f"{name}: {value}" for name, value in e["extra"]]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _status(request: bytes, server: ServerProcess) -> int | None:
    """The status the server answers ``request`` with; None if it closed without one."""
    host, port = server.rest_target.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=20) as connection:
        connection.sendall(request)
        connection.shutdown(socket.SHUT_WR)  # no more is coming: a short body ends here
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    statuses = re.findall(rb"^HTTP/1\.[01] (\d{3})", answer, re.MULTILINE)
    final = [int(s) for s in statuses if not s.startswith(b"1")]
    return final[0] if final else None


@FUZZ
@given(envelope=envelopes)
def test_rest_envelopes(server: ServerProcess, envelope: dict[str, Any]) -> None:
    """Malformed framing, lengths and encodings are answered below 500 (or the connection
    is closed), and none of them puts a traceback in the server's log."""
    logged = len(server.log)
    status = _status(_request(envelope), server)
    assert status is None or status < 500, (status, _request(envelope)[:300])
    assert "Traceback" not in server.log[logged:], server.log[logged:][-3000:]
