"""Client configuration: librdkafka properties pass straight through, as in kcat.

streaminfer adds only what a command must (for example ``isolation.level`` for a
read_committed consumer); everything else — TLS, SASL, timeouts — is the user's.

Every client gets :func:`~streaminfer.kafka.access.refuse_access_errors` as its error
callback, so a rejected password or an untrusted certificate ends the command.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import Field

from streaminfer.config import Settings
from streaminfer.errors import ConfigError
from streaminfer.kafka.access import refuse_access_errors
from streaminfer.kafka.tokens import with_token_provider

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
LIBRDKAFKA_LOGGER = logging.getLogger("librdkafka")


class KafkaSettings(Settings):
    """Where the cluster is and how to talk to it (``[kafka]`` in the config file)."""

    file_section = "kafka"
    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    properties: dict[str, str] = Field(default_factory=dict)

    def client_config(
        self, defaults: dict[str, Any] | None = None, /, **required: Any
    ) -> dict[str, Any]:
        """The config for one client: ``defaults`` a user property may override, then the
        user's properties, then what the command requires.

        librdkafka's own log lines go to the ``librdkafka`` Python logger, so a CLI prints
        one clear error instead of a screen of connection retries; errors no retry fixes
        raise from the client's next poll (:func:`refuse_access_errors`). An ``oauth_cb``
        property names the token provider the client gets (:mod:`~streaminfer.kafka.tokens`).
        """
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "logger": LIBRDKAFKA_LOGGER,
            "error_cb": refuse_access_errors,
            **(defaults or {}),
        }
        config.update(self.properties)
        config.update(required)
        return with_token_provider(config)


def parse_property(pair: str) -> tuple[str, str]:
    key, sep, value = pair.partition("=")
    key = key.strip()
    if not sep or not key or any(c.isspace() for c in key):
        raise ConfigError(f"malformed property {pair!r}: expected key=value, e.g. -X acks=all")
    return key, value.strip()


def read_properties_file(path: Path) -> dict[str, str]:
    """A Java-style ``.properties`` file of librdkafka settings (``#`` comments allowed)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read properties file {path}: {exc.strerror}") from exc
    pairs = (line.strip() for line in lines)
    return dict(parse_property(p) for p in pairs if p and not p.startswith(("#", "!")))


def kafka_settings(
    bootstrap_servers: str | None,
    properties: list[str] | None,
    properties_file: Path | None,
    config_file: Path | None = None,
) -> KafkaSettings:
    """Settings for a command: ``-X`` pairs override the properties file, which overrides config."""
    base = KafkaSettings.load(config_file, bootstrap_servers=bootstrap_servers)
    merged = dict(base.properties)
    if properties_file is not None:
        merged.update(read_properties_file(properties_file))
    merged.update(parse_property(p) for p in properties or [])
    if "bootstrap.servers" in merged:
        base.bootstrap_servers = merged.pop("bootstrap.servers")
    base.properties = merged
    return base
