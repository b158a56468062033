"""No request can blow up the server: bounded expansion, 4xx for every parse error, a free loop.

Hostile requests (a few bytes that declare huge tensors, more images than a model takes,
odd digits, deep nesting, random bytes for a protobuf) get 400 / INVALID_ARGUMENT, the
server's peak RSS stays under 600 MB through all of them and the largest legal requests,
and a 60 MB body held in the decoder process does not stop the server from answering
its health check.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from streaminfer.codecs.arrays import MAX_DIMS, MAX_FILL_BYTES
from streaminfer.codecs.protowire import length_delimited
from streaminfer.codecs.tfserving import to_tensor_proto
from streaminfer.models.metadata import IMAGE_MAX_BATCH, TENSOR_MAX_BATCH
from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from streaminfer.protos.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from streaminfer.protos.tfserving import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    tensor_pb2,
    types_pb2,
)
from tests.repository import MODEL
from tests.servers import ServerProcess
from tests.support import wait_for

TINY = "tiny"  # the tensor model of ``stream_repo``: x [N, 4] -> y [N, 4]
PREDICT = f"/v1/models/{MODEL}:predict"
INFER = f"/v2/models/{MODEL}/infer"
MAX_RSS_KB = 600 * 1024


@pytest.fixture(scope="module")
def limited(stream_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of its own, so that its peak RSS reflects this module's requests only."""
    log = tmp_path_factory.mktemp("limits") / "serve.log"
    with ServerProcess(stream_repo, log=log) as process:
        yield process


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    """A 640x640 photo-like JPEG: decoding and resizing it costs what a real image does."""
    pixels = np.random.default_rng(3).integers(0, 255, (640, 640, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


def _peak_rss_kb(server: ServerProcess) -> int:
    return server.status_kb("VmHWM")


def _predict(server: ServerProcess, request: predict_pb2.PredictRequest) -> grpc.RpcError:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failure:
            stub.Predict(request, timeout=60)
    return failure.value


def _infer(server: ServerProcess, request: v2.ModelInferRequest) -> grpc.RpcError:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failure:
            stub.ModelInfer(request, timeout=60)
    return failure.value


def test_one_string_filling_200_images_is_refused_before_decoding(
    limited: ServerProcess, jpeg: bytes
) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    images = request.inputs["images"]
    images.dtype = types_pb2.DT_STRING
    images.tensor_shape.dim.add(size=200)
    images.string_val.append(jpeg)
    served = limited.requests_served()
    error = _predict(limited, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {IMAGE_MAX_BATCH} rows" in error.details()
    assert "max_batch_size" in error.details()
    assert limited.requests_served() == served + 1  # answered, one request, no images run


def test_a_few_bytes_declaring_a_huge_tensor_are_refused(limited: ServerProcess) -> None:
    fill = predict_pb2.PredictRequest()
    fill.model_spec.name = TINY
    tensor = fill.inputs["x"]
    tensor.dtype = types_pb2.DT_FLOAT
    tensor.tensor_shape.dim.add(size=1)
    tensor.tensor_shape.dim.add(size=33554432)
    tensor.float_val.append(1.0)
    assert fill.ByteSize() < 40
    error = _predict(limited, fill)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than" in error.details()

    raw = v2.ModelInferRequest(model_name=TINY, raw_input_contents=[b"\0" * 4])
    raw.inputs.add(name="x", datatype="FP32", shape=[1, 33554432])
    error = _infer(limited, raw)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than" in error.details()

    declared = {"name": "x", "datatype": "FP32", "shape": [8388608, 4]}
    header = json.dumps({"inputs": [{**declared, "parameters": {"binary_data_size": 4}}]}).encode()
    with limited.client() as client:
        reply = client.post(
            f"/v2/models/{TINY}/infer",
            content=header + b"\0" * 4,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
    assert reply.status_code == 400 and "more than" in reply.json()["error"]


def test_one_long_string_filling_a_shape_is_refused(limited: ServerProcess) -> None:
    """Refused for its bytes, though its rows are within max_batch_size: one 1 MB string
    filling [4096] took a server of a string model past 22 GB."""
    fill = predict_pb2.PredictRequest()
    fill.model_spec.name = MODEL
    tensor = fill.inputs["images"]
    tensor.dtype = types_pb2.DT_STRING
    tensor.tensor_shape.dim.add(size=IMAGE_MAX_BATCH)
    tensor.string_val.append(b"a" * (MAX_FILL_BYTES // IMAGE_MAX_BATCH + 1))
    error = _predict(limited, fill)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"more than the {MAX_FILL_BYTES} bytes one value may fill" in error.details()


def test_grpc_rows_past_max_batch_size_are_refused_before_values_are_read(
    limited: ServerProcess,
) -> None:
    """One value declaring 100 images: refused for its rows, not for what reading it
    would hit (a fill past TF's limit, a count that disagrees with the shape)."""
    typed = predict_pb2.PredictRequest()
    typed.model_spec.name = MODEL
    tensor = typed.inputs["input"]
    tensor.dtype = types_pb2.DT_FLOAT
    for size in (100, 3, 224, 224):
        tensor.tensor_shape.dim.add(size=size)
    tensor.float_val.append(1.0)
    assert "at most 64 rows" in _predict(limited, typed).details()

    contents = v2.ModelInferRequest(model_name=MODEL)
    contents.inputs.add(name="input", datatype="FP32", shape=[100, 3, 224, 224])
    contents.inputs[0].contents.fp32_contents.append(1.0)
    error = _infer(limited, contents)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 64 rows" in error.details()


def test_requests_past_max_batch_size_are_400_and_the_largest_legal_ones_answer(
    limited: ServerProcess, jpeg: bytes
) -> None:
    image = {"b64": base64.b64encode(jpeg).decode()}
    with limited.client() as client:
        too_many = client.post(PREDICT, json={"instances": [image] * (IMAGE_MAX_BATCH + 1)})
        assert too_many.status_code == 400, too_many.text
        assert "max_batch_size" in too_many.json()["error"]
        full = client.post(PREDICT, json={"instances": [image] * IMAGE_MAX_BATCH})
        assert full.status_code == 200, full.text
        assert len(full.json()["predictions"]) == IMAGE_MAX_BATCH

        rows = np.ones((TENSOR_MAX_BATCH, 4), dtype=np.float32)
        tensor = f"/v1/models/{TINY}:predict"
        answer = client.post(tensor, json={"inputs": {"x": rows.tolist()}})
        assert answer.status_code == 200, answer.text
        assert np.asarray(answer.json()["outputs"]).shape == (TENSOR_MAX_BATCH, 4)
        refused = client.post(tensor, json={"inputs": {"x": [[1.0] * 4] * (TENSOR_MAX_BATCH + 1)}})
        assert refused.status_code == 400 and "max_batch_size" in refused.json()["error"]


_V2_TINY = f"/v2/models/{TINY}/infer"


def _v2_tiny(data: bytes, datatype: bytes = b"FP32", shape: bytes = b"[1, 4]") -> bytes:
    return b'{"inputs": [{"name": "x", "datatype": "%s", "shape": %s, "data": %s}]}' % (
        datatype,
        shape,
        data,
    )


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        (f"/v1/models/{TINY}:predict", b'{"instances": [["\\ud800", 2, 3, 4]]}', "surrogate"),
        (_V2_TINY, _v2_tiny(b'["\\ud800"]', b"BYTES", b"[1]"), "surrogate"),
        (_V2_TINY, b'{"id": "\\ud800", ' + _v2_tiny(b"[1, 2, 3, 4]")[1:], "surrogate"),
        (  # past 2 MB: read in the decoder process
            f"/v1/models/{TINY}:predict",
            b'{"instances": [["\\udc00", 2, 3, 4]]}' + b" " * (3 << 20),
            "surrogate",
        ),
        (f"/v1/models/{TINY}:predict", b'{"instances": [[1e400, 2, 3, 4]]}', "float64's range"),
        (_V2_TINY, _v2_tiny(b"[-1e400, 1, 2, 3]"), "float64's range"),
        (f"/v1/models/{TINY}:predict", b'{"instances": [[1%s, 2]]}' % (b"0" * 400), "float64"),
    ],
)
def test_lone_surrogates_and_numbers_past_float64_are_400(
    limited: ServerProcess, path: str, body: bytes, words: str
) -> None:
    """Both were 500 or inf: a surrogate cannot become UTF-8, nor be echoed as JSON."""
    with limited.client() as client:
        reply = client.post(path, content=body)
    assert reply.status_code == 400, reply.text
    assert words in reply.json()["error"]


def test_integers_past_64_bits_are_read_as_floats_for_a_float_model(
    limited: ServerProcess,
) -> None:
    """As 2**63 always was, and as V2's FP32 reads them: one row or 300 alike."""
    row = b"[100000000000000000000000, 2, 3, 4]"
    with limited.client() as client:
        for rows in (1, 300):
            body = b'{"instances": [%s]}' % b",".join([row] * rows)
            reply = client.post(f"/v1/models/{TINY}:predict", content=body)
            assert reply.status_code == 200, reply.text
            assert len(reply.json()["predictions"]) == rows


def _nested(value: object, depth: int) -> object:
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("path", "body", "headers", "words"),
    [
        (f"/v1/models/{MODEL}/versions/²:predict", {"instances": [1]}, {}, "integer"),
        (f"/v1/models/{MODEL}/versions/{'1' * 5000}:predict", {"instances": [1]}, {}, "integer"),
        (f"/v1/models/{MODEL}/versions/٣:predict", {"instances": [1]}, {}, "integer"),
        (f"/v2/models/{MODEL}/versions/²/infer", {"inputs": []}, {}, "positive integer"),
        (f"/v2/models/{MODEL}/versions/{'9' * 30}/ready", None, {}, "positive integer"),
        (INFER, {"inputs": []}, {"Inference-Header-Content-Length": "²"}, "Header-Content"),
        (INFER, {"inputs": []}, {"Inference-Header-Content-Length": "9" * 5000}, "Header-Content"),
        (PREDICT, {"instances": _nested("a", 70)}, {}, "dimensions"),
        (PREDICT, {"instances": _nested(1.0, 40)}, {}, "dimensions"),
        (PREDICT, {"instances": _nested(1.0, 70)}, {}, "instances"),
        (
            INFER,
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1] * 65, "data": [1]}]},
            {},
            "dimensions",
        ),
        (
            INFER,
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [0, 1 << 70], "data": []}]},
            {},
            "more than",
        ),
    ],
)
def test_parse_errors_are_400(
    limited: ServerProcess, path: str, body: object, headers: dict[str, str], words: str
) -> None:
    encoded = {name: value.encode() for name, value in headers.items()}  # UTF-8, as sent raw
    with limited.client() as client:
        if body is None:
            reply = client.get(path, headers=encoded)
        else:
            reply = client.post(path, content=json.dumps(body), headers=encoded)
    assert reply.status_code == 400, reply.text
    assert words in reply.json()["error"]


def test_grpc_parse_errors_are_invalid_argument(limited: ServerProcess) -> None:
    contents = [(types_pb2.DT_FLOAT, "tensor_content", b"\0" * 4),
                (types_pb2.DT_STRING, "string_val", [b"x"])]  # fmt: skip
    for dtype, field, value in contents:
        deep = predict_pb2.PredictRequest()
        deep.model_spec.name = MODEL
        tensor = deep.inputs["input"]
        tensor.dtype = dtype
        tensor.tensor_shape.dim.extend([tensor.tensor_shape.Dim(size=1)] * 65)  # numpy: 64 at most
        if isinstance(value, bytes):
            setattr(tensor, field, value)
        else:
            getattr(tensor, field).extend(value)
        error = _predict(limited, deep)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"more than the {MAX_DIMS} allowed" in error.details()

    with grpc.insecure_channel(limited.grpc_target) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failure:
            stub.ModelReady(v2.ModelReadyRequest(name=MODEL, version="²"), timeout=30)
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    request = v2.ModelInferRequest(model_name=MODEL, raw_input_contents=[b"\0" * 4])
    request.inputs.add(name="input", datatype="FP32", shape=[1] * 65)
    error = _infer(limited, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "dimensions" in error.details()


@pytest.mark.parametrize(
    "method",
    [
        "/tensorflow.serving.PredictionService/Predict",
        "/tensorflow.serving.ModelService/GetModelStatus",
        "/inference.GRPCInferenceService/ModelInfer",
        "/inference.GRPCInferenceService/ModelMetadata",
    ],
)
def test_bytes_that_are_no_protobuf_are_invalid_argument(
    limited: ServerProcess, method: str
) -> None:
    with grpc.insecure_channel(limited.grpc_target) as channel:
        call = channel.unary_unary(method)  # no serializers: raw bytes both ways
        for garbage in (b"\xff\xff\xff\xff\xff", b"\x0a\xff\x01", b"\x0a" * 50):
            with pytest.raises(grpc.RpcError) as failure:
                call(garbage, timeout=30)
            assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT, garbage
            assert "not a valid protobuf" in failure.value.details()


def _float_images_request(images: int = 44) -> bytes:
    """A valid TF Serving row-format request of ``images`` images as float lists (44: about
    60 MB)."""
    rng = np.random.default_rng(5)
    row = "[" + ",".join(f"{v:.6f}" for v in rng.random(224)) + "]"
    channel = "[" + ",".join([row] * 224) + "]"
    image = "[" + ",".join([channel] * 3) + "]"
    return ('{"instances":[' + ",".join([image] * images) + "]}").encode()


@pytest.mark.parametrize(
    ("item", "count"),
    [
        (b"0", 0xFFFFFF + 2),  # past what simdjson can count: it wrote past pysimdjson's list
        (b'""', 0xFFFFFF + 2),  # and the decoder process died of the corrupted heap
        (b'{"a":1}', 5_000_000),  # 40 MB: 1.8 GB of Python objects, in the decoder process
    ],
)
def test_json_of_too_many_values_is_refused_by_the_same_decoder(
    limited: ServerProcess, item: bytes, count: int
) -> None:
    """A body whose values would be millions of Python objects is 400 naming the limit,
    counted before they are read, and the decoder process lives on to read the next body."""
    with limited.client() as client:  # a body over 2 MB: the decoder process is started
        assert client.post(PREDICT, content=_float_images_request(images=2)).status_code == 200
        decoder = limited.decoder_pid()
        body = b'{"instances": [' + b",".join([item] * count) + b"]}"
        reply = client.post(f"/v1/models/{TINY}:predict", content=body, timeout=120)
        assert reply.status_code == 400, reply.text
        assert "JSON values, more than the 2,097,152 a request may hold" in reply.json()["error"]
        assert client.post(PREDICT, content=_float_images_request(images=2)).status_code == 200
    assert limited.decoder_pid() == decoder


def _decoder_bodies(server: ServerProcess) -> float:
    return server.gauge("streaminfer_server_decoder_bodies")


def test_health_answers_while_the_decoder_holds_a_60_mb_body(limited: ServerProcess) -> None:
    """The decoder process is stopped before a 60 MB body reaches it, so the decode lasts
    as long as the test wants: meanwhile the event loop answers health checks and scrapes,
    and once the decoder runs again the request is answered."""
    with limited.client() as client:  # a body over 2 MB: the decoder process is started
        assert client.post(PREDICT, content=_float_images_request(images=2)).status_code == 200
    decoder = limited.decoder_pid()
    body = _float_images_request()
    answer: dict[str, int] = {}

    def post() -> None:
        with limited.client() as client:
            answer["status"] = client.post(PREDICT, content=body).status_code

    sender = threading.Thread(target=post)
    os.kill(decoder, signal.SIGSTOP)
    try:
        sender.start()
        wait_for(lambda: _decoder_bodies(limited) == 1, what="the body to reach the decoder")
        with limited.client() as client:
            for _ in range(20):
                assert client.get("/v2/health/live").json() == {"live": True}
        assert sender.is_alive()
        assert _decoder_bodies(limited) == 1
    finally:
        os.kill(decoder, signal.SIGCONT)
    sender.join()
    assert answer["status"] == 200
    assert _decoder_bodies(limited) == 0


def _b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def _blank_png(side: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (side, side), "white").save(buffer, "PNG")
    return buffer.getvalue()


def _typed_float_request(rows: int) -> predict_pb2.PredictRequest:
    """A Predict of ``rows`` images as ``float_val``, written as protobuf's packed field
    (tag 5, wire type 2) from raw bytes, without a Python float per value."""
    values = np.random.default_rng(9).random(rows * 3 * 224 * 224, dtype=np.float32).tobytes()
    length, size = bytearray(), len(values)
    while size > 0x7F:
        length.append(size & 0x7F | 0x80)
        size >>= 7
    length.append(size)
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    for dim in (rows, 3, 224, 224):
        tensor.tensor_shape.dim.add(size=dim)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["input"].ParseFromString(
        tensor.SerializeToString() + bytes([5 << 3 | 2]) + bytes(length) + values
    )
    assert len(request.inputs["input"].float_val) == rows * 3 * 224 * 224
    return request


def test_a_max_batch_size_past_the_models_own_stays_within_memory(
    stream_repo: Path, tmp_path: Path, jpeg: bytes
) -> None:
    """``--max-batch-size 4096`` made the server warm EfficientNet-Lite0 up on 4,096
    images (24 GB) and merge that many: the kernel killed it before it answered once.
    A merged batch now holds at most the rows one request may (64 images: a run of
    them takes about 850 MB, four such requests at once about 1.2 GB)."""
    image = {"b64": base64.b64encode(jpeg).decode()}
    args = ("--max-batch-size", "4096", "--max-batch-delay-ms", "200")
    with ServerProcess(stream_repo, *args, log=tmp_path / "serve.log") as server:
        with server.client() as client, ThreadPoolExecutor(4) as pool:
            full = [{"instances": [image] * IMAGE_MAX_BATCH}] * 4  # merged, once: 256 images
            answers = list(pool.map(lambda body: client.post(PREDICT, json=body), full))
        assert [a.status_code for a in answers] == [200] * 4
        assert all(len(a.json()["predictions"]) == IMAGE_MAX_BATCH for a in answers)
        peak = _peak_rss_kb(server)
        assert peak < 2 * 1024 * 1024, f"peak RSS {peak // 1024} MB"


def test_millions_of_repeated_values_are_refused_within_memory(
    stream_repo: Path, tmp_path: Path
) -> None:
    """4 million two-byte strings (a 16 MB message) over TF's ``string_val``, V2's
    ``bytes_contents`` and V2's raw BYTES, as more rows than the model takes, as one row
    of more strings than a tensor may hold, and (raw) for a shape of one; and 4 million
    empty V2 ``outputs``, TF ``output_filter`` or ``metadata_field`` names, more fields
    than a request has.
    Before, the TF message was walked field by field (15 million strings took 54 s and
    5 GB), string tensors were read before their rows were counted, raw strings were all
    split before they were counted, and the outputs were read by protobuf and answered
    (3 million took the server past 1 GB)."""
    strings = 4_000_000
    with ServerProcess(stream_repo, log=tmp_path / "serve.log") as server:
        before_kb = server.status_kb("VmRSS")
        for shape, words in (([strings], "rows per request"), ([1, strings], "elements")):
            tf = predict_pb2.PredictRequest()
            tf.model_spec.name = TINY
            tf.inputs["x"].dtype = types_pb2.DT_STRING
            for size in shape:
                tf.inputs["x"].tensor_shape.dim.add(size=size)
            tf.inputs["x"].string_val.extend([b"xy"] * strings)
            typed = v2.ModelInferRequest(model_name=TINY)
            typed.inputs.add(name="x", datatype="BYTES", shape=shape)
            typed.inputs[0].contents.bytes_contents.extend([b"xy"] * strings)
            raw = v2.ModelInferRequest(
                model_name=TINY, raw_input_contents=[b"\2\0\0\0xy" * strings]
            )
            raw.inputs.add(name="x", datatype="BYTES", shape=shape)
            for error in (_predict(server, tf), _infer(server, typed), _infer(server, raw)):
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
                assert words in error.details()
        one = v2.ModelInferRequest(model_name=TINY, raw_input_contents=[b"\2\0\0\0xy" * strings])
        one.inputs.add(name="x", datatype="BYTES", shape=[1])
        error = _infer(server, one)  # split until one string too many, not into 4 million
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert "more than 1 strings" in error.details()
        outputs = v2.ModelInferRequest(model_name=TINY)
        outputs.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        outputs.inputs[0].contents.fp32_contents.extend([1.0] * 4)
        for _ in range(strings):
            outputs.outputs.add()
        named = predict_pb2.PredictRequest()
        named.model_spec.name = TINY
        named.inputs["x"].CopyFrom(to_tensor_proto(np.ones((1, 4), np.float32)))
        named.output_filter.extend(["y"] * strings)
        metadata = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec={"name": TINY}, metadata_field=["signature_def"] * strings
        )
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            with pytest.raises(grpc.RpcError) as failure:
                stub.GetModelMetadata(metadata, timeout=60)
        for error in (_infer(server, outputs), _predict(server, named), failure.value):
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
            assert "refused unread: more than 1024 fields" in error.details()
        grown_mb = (_peak_rss_kb(server) - before_kb) // 1024
        assert grown_mb < 400, f"the server grew by {grown_mb} MB"


def _field(number: int, wire_type: int, value: bytes = b"") -> bytes:
    """One field as protobuf writes it (``number`` below 16); ``value`` after its length
    if length-delimited."""
    if wire_type == 2:
        return b"".join(length_delimited(number, [value]))
    return bytes([number << 3 | wire_type]) + value


def test_compact_values_are_refused_within_memory(stream_repo: Path, tmp_path: Path) -> None:
    """57 MiB of the smallest values a field can hold, in messages gRPC lets through:
    packed one-byte integers (TF ``int64_val`` and ``int_val``, V2 ``int64_contents``),
    which protobuf made 4 to 8 bytes each of before anything counted them (the server grew
    by 1,057 MB); and empty strings or integers written a field each, which only protobuf
    reads (57 MB of empty strings took it past 1 GB).  The first are counted before they
    are read, the others refused unread past 16 MiB, and the server serves on."""
    values = 57 * 2**20
    ones = b"\x01" * values
    dims = _field(2, 2, _field(1, 0, b"\x01")) + _field(2, 2, _field(1, 0, b"\x04"))
    shape = _field(2, 2, dims)  # a TensorProto's tensor_shape: [1, 4]

    def predict(tensor: bytes) -> bytes:  # model_spec "tiny", inputs {"x": tensor}
        entry = _field(1, 2, b"x") + _field(2, 2, tensor)
        return _field(1, 2, _field(1, 2, TINY.encode())) + _field(2, 2, entry)

    int64s = _field(1, 0, bytes([types_pb2.DT_INT64])) + shape
    int32s = _field(1, 0, bytes([types_pb2.DT_INT32])) + shape
    strings = _field(1, 0, bytes([types_pb2.DT_STRING])) + shape
    described = v2.ModelInferRequest.InferInputTensor(name="x", datatype="INT64", shape=[1, 4])
    v2_input = described.SerializeToString() + _field(5, 2, _field(3, 2, ones))  # int64_contents
    infer = v2.ModelInferRequest(model_name=TINY).SerializeToString() + _field(5, 2, v2_input)
    predict_method = "/tensorflow.serving.PredictionService/Predict"
    cases = [
        (predict_method, predict(int64s + _field(10, 2, ones)), "values given"),
        (predict_method, predict(int32s + _field(7, 2, ones)), "values given"),
        (predict_method, predict(strings + _field(8, 2) * (values // 2)), "cannot be taken apart"),
        (predict_method, predict(int64s + _field(10, 0, b"\x01") * (values // 2)), "16 MiB only"),
        ("/inference.GRPCInferenceService/ModelInfer", infer, "values given"),
    ]
    with (
        ServerProcess(stream_repo, log=tmp_path / "serve.log") as server,
        grpc.insecure_channel(server.grpc_target) as channel,
    ):
        before_kb = server.status_kb("VmRSS")
        for method, request, words in cases:
            error = _refused(channel.unary_unary(method), request)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
            assert words in error.details(), error.details()
        grown_mb = (_peak_rss_kb(server) - before_kb) // 1024
        assert grown_mb < 300, f"the server grew by {grown_mb} MB"
        good = predict_pb2.PredictRequest()
        good.model_spec.name = TINY
        good.inputs["x"].CopyFrom(to_tensor_proto(np.ones((1, 4), np.float32)))
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        assert stub.Predict(good, timeout=60).outputs["y"].tensor_shape.dim[1].size == 4


def _settles_near(server: ServerProcess, before_kb: int, door: str) -> None:
    """The server's RSS comes back within 100 MB of ``before_kb`` in a few seconds, idle:
    no collection runs then, so memory held in a cycle would stay (a busy machine may
    still be finishing the last answer when it is read at once)."""

    def grown_kb() -> int:
        return server.status_kb("VmRSS") - before_kb

    try:
        wait_for(lambda: grown_kb() < 100 * 1024, timeout=5, what=f"{door} memory back")
    except AssertionError:
        raise AssertionError(f"{door}: the server grew by {grown_kb() // 1024} MB") from None


def test_refused_large_requests_are_freed_at_once(stream_repo: Path, tmp_path: Path) -> None:
    """Five 40 MB REST bodies, then five 60 MB gRPC messages, refused one after another,
    leave the server where it was.  Each refusal's error held the request in a cycle;
    now the request goes with the answer, not when Python's cycle collector next runs
    (before, the server grew by about 80 MB a REST body, and 60 a gRPC message).  Twelve
    60 MB messages at once leave it there too: the small blocks gRPC read them in stayed
    in the heaps (300 to 700 MB of them) until the heaps were trimmed after each, and
    so did twelve that do not parse (refused unread: past 16 MiB, a message that cannot
    be taken apart is not handed to protobuf)."""
    body = b'{"instances": [' + b"1.5," * (10 * 2**20) + b"1.5]}"
    with (
        ServerProcess(stream_repo, log=tmp_path / "serve.log") as server,
        server.client() as client,
    ):
        before = server.status_kb("VmRSS")
        for _ in range(5):
            answer = client.post(
                PREDICT, content=body, headers={"content-type": "application/json"}
            )
            assert answer.status_code == 400, answer.text
        _settles_near(server, before, "REST")
        message = _typed_float_request(100)
        before = server.status_kb("VmRSS")
        for _ in range(5):
            assert "at most 64 rows" in _predict(server, message).details()
        _settles_near(server, before, "gRPC")
        with ThreadPoolExecutor(12) as pool:  # gRPC reads each in small blocks, then frees them
            errors = list(pool.map(lambda _: _predict(server, message), range(12)))
        assert all("at most 64 rows" in error.details() for error in errors)
        _settles_near(server, before, "gRPC, twelve at once")
        with grpc.insecure_channel(server.grpc_target) as channel, ThreadPoolExecutor(12) as pool:
            call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
            errors = list(pool.map(lambda _: _refused(call, b"\xff" * 60 * 2**20), range(12)))
        assert all("not a valid message of this method" in error.details() for error in errors)
        _settles_near(server, before, "gRPC, twelve at once that do not parse")


def _refused(call: grpc.UnaryUnaryMultiCallable, request: bytes) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as failure:
        call(request, timeout=60)
    return failure.value


def test_peak_rss_stays_under_600_mb(limited: ServerProcess, jpeg: bytes) -> None:
    """After the hostile and largest legal requests above, one more of each here, six
    31-megapixel PNGs of 100 KB each (the largest a PNG may be, 94 MB apiece once decoded),
    20-megapixel ones with transparency (twice the memory a pixel, so each decodes
    alone), a 31-megapixel one with transparency and a 49-megapixel one (refused: PNGs
    decode only at full size, and those would hold more than 160 MB) and 60 MB of gRPC
    ``float_val`` for 100 rows (a list of Python floats would be 480 MB; the rows it
    declares are refused before its values become an array)."""
    image = {"b64": base64.b64encode(jpeg).decode()}
    largest = {"b64": base64.b64encode(_blank_png(5600)).decode()}
    transparent = [_b64(_blank_png(4472, mode)) for mode in ("RGBA", "LA")]
    too_large = {"b64": base64.b64encode(_blank_png(7000)).decode()}
    with limited.client() as client:
        assert client.post(PREDICT, json={"instances": [image] * IMAGE_MAX_BATCH}).is_success
        assert client.post(PREDICT, content=_float_images_request()).is_success
        assert client.post(PREDICT, json={"instances": [largest] * 6}).is_success
        assert client.post(PREDICT, json={"instances": transparent * 3}).is_success
        for refused_image in (too_large, _b64(_blank_png(5600, "RGBA"))):
            refused = client.post(PREDICT, json={"instances": [refused_image]})
            assert refused.status_code == 400 and "more than 160 MB" in refused.text
    error = _predict(limited, _typed_float_request(100))
    assert "at most 64 rows" in error.details()  # from its shape, before reading its values
    peak = _peak_rss_kb(limited)
    assert peak < MAX_RSS_KB, f"peak RSS {peak // 1024} MB"
    assert limited.process is not None and limited.process.alive()


def test_grpc_calls_past_the_limit_are_refused_unread(stream_repo: Path, tmp_path: Path) -> None:
    """With ``--max-concurrent-rpcs 2``, eight 19 MB requests of 32 images at once: the
    calls past two are refused RESOURCE_EXHAUSTED before gRPC reads their messages, the
    others are answered, and the server takes calls again once they are."""
    images = np.random.default_rng(3).random((32, 3, 224, 224), dtype=np.float32)
    request = v2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input", datatype="FP32", shape=list(images.shape))
    request.raw_input_contents.append(images.tobytes())
    args = ("--max-concurrent-rpcs", "2")
    with ServerProcess(stream_repo, *args, log=tmp_path / "serve.log") as server:

        def infer(_: int) -> grpc.StatusCode:
            with grpc.insecure_channel(server.grpc_target) as channel:
                try:
                    v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=120)
                except grpc.RpcError as error:
                    assert "Concurrent RPC limit" in error.details(), error.details()
                    return error.code()
            return grpc.StatusCode.OK

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(infer, range(8)))
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes
        assert infer(0) == grpc.StatusCode.OK
