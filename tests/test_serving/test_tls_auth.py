"""TLS on both ports and the bearer token: health stays open, everything else needs it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from streaminfer.protos.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from streaminfer.protos.tfserving import get_model_status_pb2, model_service_pb2_grpc
from tests.repository import MODEL
from tests.servers import TOKEN, ServerProcess, secure_server_args


@pytest.fixture(scope="module")
def secured(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("tls")
    with ServerProcess(model_repo, *secure_server_args(folder), log=folder / "serve.log") as server:
        yield server


def test_rest_over_tls_needs_the_token(secured: ServerProcess) -> None:
    with secured.client() as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.get(f"/v2/models/{MODEL}/ready").status_code == 200
        assert client.get(f"/v1/models/{MODEL}").status_code == 200
        missing = client.get(f"/v1/models/{MODEL}/metadata")
        wrong = client.get("/v2", headers={"Authorization": "Bearer nope"})
        right = client.get("/v2", headers={"Authorization": f"Bearer {TOKEN}"})
        metrics = client.get("/metrics")
    assert missing.status_code == wrong.status_code == metrics.status_code == 401
    assert "Bearer" in missing.json()["error"]
    assert right.status_code == 200


def test_grpc_over_tls_needs_the_token(secured: ServerProcess) -> None:
    assert secured.ca_cert is not None
    credentials = grpc.ssl_channel_credentials(secured.ca_cert.read_bytes())
    with grpc.secure_channel(secured.grpc_target, credentials) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(v2.ServerLiveRequest()).live
        status = get_model_status_pb2.GetModelStatusRequest()
        status.model_spec.name = MODEL
        assert model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status)
        with pytest.raises(grpc.RpcError) as failure:
            stub.ServerMetadata(v2.ServerMetadataRequest())
        assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
        metadata = (("authorization", f"Bearer {TOKEN}"),)
        assert stub.ServerMetadata(v2.ServerMetadataRequest(), metadata=metadata).name


def test_plain_connections_are_refused(secured: ServerProcess) -> None:
    with grpc.insecure_channel(secured.grpc_target) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failure:
            stub.ServerLive(v2.ServerLiveRequest(), timeout=10)
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
