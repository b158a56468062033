"""TLS with a private CA and bearer tokens, against a real server that demands both."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from streaminfer.errors import InfrastructureError, RecordError
from streaminfer.predictors import RemoteOptions
from streaminfer.predictors.factory import REMOTE
from tests.test_predictors.cases import assert_classified, image_batch
from tests.test_predictors.conftest import ServerProcess

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def secure_server(
    model_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key, token = folder / "cert.pem", folder / "key.pem", folder / "token"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    token.write_text(TOKEN + "\n")
    process = ServerProcess(
        model_repo,
        folder / "serve.log",
        *("--tls-cert", str(cert), "--tls-key", str(key), "--auth-token-file", str(token)),
    )
    process.start()
    yield process, cert
    process.stop()


@pytest.mark.parametrize("mode", list(REMOTE))
def test_tls_and_token(
    mode: str, secure_server: tuple[ServerProcess, Path], sample_jpegs: dict
) -> None:
    server, cert = secure_server
    good = RemoteOptions(timeout_s=20.0, tls=True, ca_file=cert, token=TOKEN)
    predictor = REMOTE[mode](server.target(mode), good)
    try:
        assert_classified(predictor.predict(image_batch(sample_jpegs)), mode)
    finally:
        predictor.close()
    for wrong in (
        RemoteOptions(timeout_s=20.0, tls=True, ca_file=cert),  # no token
        RemoteOptions(timeout_s=20.0, token=TOKEN),  # plain text to a TLS port
    ):
        predictor = REMOTE[mode](server.target(mode), wrong)
        try:
            with pytest.raises(InfrastructureError) as raised:  # a setup fault, not a record's
                predictor.predict(image_batch(sample_jpegs))
            assert not isinstance(raised.value, RecordError)
        finally:
            predictor.close()
