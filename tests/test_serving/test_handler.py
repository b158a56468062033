"""``serve --handler``: REST predict requests through a user's hooks, in the data plane.

The CSV handler (tests/handler_examples.py) reads a request body ``id,x0,x1,x2,x3`` as the
tiny model's input and answers its own JSON, over both REST protocols; a hook that raises
fails the request with 400 naming the exception's type.  A postprocess-only handler keeps
each protocol's usual request format.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from streaminfer.codecs.tfserving import from_tensor_proto, to_tensor_proto
from streaminfer.models.export.tiny import export_tiny_model, tiny_reference
from streaminfer.protos.tfserving import predict_pb2, prediction_service_pb2_grpc
from tests.servers import ServerProcess

PREDICT = ("/v1/models/tiny:predict", "/v2/models/tiny/infer", "/v2/models/tiny/versions/1/infer")


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("tiny-repo")
    export_tiny_model(repo, version=1)
    return repo


@pytest.fixture(scope="module")
def csv_server(
    tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("csv-server") / "serve.log"
    handler = "tests.handler_examples:CsvHandler"
    with ServerProcess(tiny_repo, "--handler", handler, log=log) as server:
        yield server


@pytest.mark.parametrize("path", PREDICT)
def test_the_handler_reads_the_body_and_writes_the_answer(
    csv_server: ServerProcess, path: str
) -> None:
    with csv_server.client() as client:
        response = client.post(path, content=b"r7,1,2,3,4", headers={"Content-Type": "text/csv"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    answer = response.json()
    assert answer["id"] == "r7" and answer["offset"] is None
    np.testing.assert_allclose(answer["y"], tiny_reference(np.array([[1.0, 2, 3, 4]]))[0])


@pytest.mark.parametrize(
    ("body", "exception"), [(b"r1,1,x,3,4", "ValueError"), (b"boom,1,2,3,4", "KeyError")]
)
@pytest.mark.parametrize("path", PREDICT[:2])
def test_a_hook_that_raises_is_a_bad_request(
    csv_server: ServerProcess, path: str, body: bytes, exception: str
) -> None:
    with csv_server.client() as client:
        response = client.post(path, content=body)
        assert response.status_code == 400
        assert f"raised {exception}" in response.json()["error"]
        assert client.post(path, content=b"ok,0,0,0,0").status_code == 200  # still serving


def test_grpc_requests_are_not_handled(csv_server: ServerProcess) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    x = np.array([[1, 2, 3, 4]], dtype=np.float32)
    request.inputs["x"].CopyFrom(to_tensor_proto(x))
    with grpc.insecure_channel(csv_server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        answer = stub.Predict(request, timeout=30)
    np.testing.assert_allclose(from_tensor_proto("y", answer.outputs["y"]), tiny_reference(x))


def test_a_postprocess_only_handler_keeps_the_protocols_requests(
    tiny_repo: Path, tmp_path: Path
) -> None:
    want = tiny_reference(np.array([[1.0, 0, 0, 0]]))[0]
    text = "y=" + ",".join(f"{v:g}" for v in want)
    v2 = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 0, 0, 0]}]}
    handler = "tests.handler_examples:Relabel"
    server = ServerProcess(tiny_repo, "--handler", handler, log=tmp_path / "serve.log")
    with server, server.client() as client:
        tf = client.post(PREDICT[0], json={"instances": [{"x": [1, 0, 0, 0]}]})
        kserve = client.post(PREDICT[1], json=v2)
        malformed = client.post(PREDICT[0], json={"instances": []})
    assert tf.status_code == 200 and tf.content == text.encode()
    assert kserve.status_code == 200 and kserve.content == text.encode()
    assert malformed.status_code == 400  # the usual reading's errors are the usual ones
