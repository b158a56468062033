"""TLS on both ports and the bearer token: health stays open, everything else needs it."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from streaminfer.protos.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from streaminfer.protos.tfserving import get_model_status_pb2, model_service_pb2_grpc
from tests.test_serving.conftest import MODEL
from tests.test_serving.server_process import ServerProcess

TOKEN = "s3cret-token"


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture(scope="module")
def secured(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(folder)
    token = folder / "token"
    token.write_text(TOKEN + "\n")
    args = ["--tls-cert", str(cert), "--tls-key", str(key), "--auth-token-file", str(token)]
    with ServerProcess(model_repo, *args, ca_cert=cert) as server:
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
    with grpc.secure_channel(secured.grpc_address, credentials) as channel:
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
    with grpc.insecure_channel(secured.grpc_address) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failure:
            stub.ServerLive(v2.ServerLiveRequest(), timeout=10)
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
