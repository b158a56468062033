"""The worker's settings for a model server that asks for TLS and a token."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from streaminfer.stream.settings import WorkerSettings


def test_a_ca_file_implies_tls(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert WorkerSettings(mode="kserve-grpc", server_ca_file=ca).server_tls
    assert not WorkerSettings(mode="kserve-grpc").server_tls


@pytest.mark.parametrize("content", [None, "", "\n  \n"])
def test_a_token_file_that_is_missing_or_empty_is_refused(
    tmp_path: Path, content: str | None
) -> None:
    token = tmp_path / "token"
    if content is not None:
        token.write_text(content)
    with pytest.raises(ValidationError, match=r"--server-token-file .*not a file, or empty"):
        WorkerSettings(mode="kserve-grpc", server_token_file=token)
