"""``serve --control-topic``: a published version takes over while a client keeps sending."""

from __future__ import annotations

import shutil
import threading
import uuid
from pathlib import Path

import grpc
import numpy as np

from streaminfer.models.export.tiny import export_tiny_model
from streaminfer.protos.tfserving import predict_pb2, prediction_service_pb2_grpc
from streaminfer.serving.codec import to_tensor_proto
from tests.servers import ServerProcess
from tests.support import run_cli, wait_for

MODEL = "tiny"


def test_published_version_takes_over_with_zero_failed_requests(
    bootstrap: str, tmp_path: Path
) -> None:
    staging = export_tiny_model(tmp_path / "staging", 1).parent
    archive = shutil.make_archive(str(tmp_path / "v2"), "gztar", staging / "1")
    topic = f"models-{uuid.uuid4().hex[:10]}"
    kafka = ["-b", bootstrap, "--control-topic", topic]

    def publish(version: str, location: str) -> None:
        result = run_cli("models", "publish", "deploy", MODEL, version, "--from", location, *kafka)
        assert result.returncode == 0, result.stderr

    publish("1", str(staging / "1"))  # before the server starts: it applies it before ready
    repo = tmp_path / "repo"
    repo.mkdir()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["x"].CopyFrom(to_tensor_proto(np.ones((1, 4), dtype=np.float32)))
    versions: list[int] = []
    failures: list[grpc.RpcError] = []
    stop = threading.Event()

    with ServerProcess(repo, *kafka) as server:

        def send_continuously() -> None:
            with grpc.insecure_channel(server.grpc_target) as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                while not stop.is_set():
                    try:
                        versions.append(stub.Predict(request, timeout=30).model_spec.version.value)
                    except grpc.RpcError as exc:
                        failures.append(exc)

        client = threading.Thread(target=send_continuously)
        client.start()
        try:
            wait_for(lambda: len(versions) >= 3, what="the first answers")
            publish("2", archive)
            wait_for(lambda: versions[-1] == 2, what="answers from version 2")
        finally:
            stop.set()
            client.join()
        assert "installed model tiny version 2" in server.log

    assert failures == []
    assert versions[0] == 1
    switch = versions.index(2)
    assert set(versions[:switch]) == {1}
    assert set(versions[switch:]) == {2}
