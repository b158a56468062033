"""TLS with a private CA and bearer tokens, against a real server that demands both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streaminfer.errors import InfrastructureError, RecordError
from streaminfer.predictors import RemoteOptions
from streaminfer.predictors.factory import REMOTE
from tests.servers import TOKEN, ServerProcess, secure_server_args
from tests.test_predictors.cases import assert_classified, image_batch


@pytest.fixture(scope="module")
def secure_server(
    model_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Path]]:
    folder = tmp_path_factory.mktemp("tls")
    process = ServerProcess(model_repo, *secure_server_args(folder), log=folder / "serve.log")
    process.start()
    assert process.ca_cert is not None
    yield process, process.ca_cert
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
