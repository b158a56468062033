"""``oauth_cb`` providers for tests, named by ``-X oauth_cb=tests.token_providers:...``."""

from __future__ import annotations

import time
from pathlib import Path

from streaminfer.kafka.security import local_token

ASKED: list[float] = []  # when down_while_flagged was called, in this process


def down_while_flagged(config: str) -> tuple[str, float]:
    """The local broker's tokens, but raising while the file ``down_if=PATH`` names exists:
    a provider whose identity service is unreachable for a while."""
    ASKED.append(time.monotonic())
    options = dict(pair.partition("=")[::2] for pair in config.split())
    if Path(options["down_if"]).exists():
        raise ConnectionError("the identity service is unreachable")
    return local_token(config)


def expiring_in_milliseconds(config: str) -> tuple[str, float]:
    """The slip :func:`streaminfer.kafka.tokens.checked_token` catches: milliseconds."""
    token, expiry = local_token(config)
    return token, expiry * 1000


NOT_A_FUNCTION = 3
