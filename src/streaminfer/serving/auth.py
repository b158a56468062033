"""The optional bearer token that guards every endpoint except liveness and readiness."""

from __future__ import annotations

import hmac
from pathlib import Path

from streaminfer.errors import ConfigError
from streaminfer.serving.errors import Unauthenticated


class BearerAuth:
    """Checks ``Authorization: Bearer <token>`` (a REST header or gRPC metadata)."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ConfigError("the auth token is empty")
        self._expected = f"Bearer {token}".encode()

    @classmethod
    def from_file(cls, path: Path) -> BearerAuth:
        try:
            return cls(path.read_text().strip())
        except OSError as exc:
            raise ConfigError(f"cannot read auth token file {path}: {exc.strerror}") from exc

    def check(self, header: str | None) -> None:
        """Raise Unauthenticated unless ``header`` carries the token."""
        if header is None:
            raise Unauthenticated("missing 'authorization: Bearer <token>'")
        if not hmac.compare_digest(header.strip().encode(), self._expected):
            raise Unauthenticated("invalid bearer token")
