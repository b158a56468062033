"""A new version replaces the old one while a client keeps sending: nothing fails."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import grpc
import numpy as np

from streaminfer.protos.tfserving import predict_pb2, prediction_service_pb2_grpc
from streaminfer.serving.codec import to_tensor_proto
from tests.servers import ServerProcess
from tests.support import wait_for
from tests.test_serving.conftest import MODEL, add_version, copy_repo


def test_new_version_takes_over_with_zero_failed_requests(
    model_repo: Path, tmp_path: Path, float_input: np.ndarray
) -> None:
    repo = copy_repo(model_repo, tmp_path / "repo")
    model_dir = repo / MODEL
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["input"].CopyFrom(to_tensor_proto(float_input))
    versions: list[int] = []
    failures: list[grpc.RpcError] = []
    stop = threading.Event()

    with ServerProcess(repo, "--poll-interval", "0.2") as server:

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
            add_version(model_dir, model_dir / "1", 2)
            wait_for(lambda: versions[-1] == 2, what="answers from version 2")
            shutil.rmtree(model_dir / "1")
            answered = len(versions)
            wait_for(lambda: len(versions) >= answered + 5, what="answers after removing 1")
        finally:
            stop.set()
            client.join()
        assert "unloaded model efficientnet-lite0 version 1" in server.log

    assert failures == []
    switch = versions.index(2)
    assert set(versions[:switch]) == {1}
    assert set(versions[switch:]) == {2}
