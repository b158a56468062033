"""The server's settings: flags > ``STREAMINFER_*`` environment > ``[server]`` in the TOML file."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, model_validator

from streaminfer.config import Settings
from streaminfer.models.batcher import BatchingConfig


class ServerSettings(Settings):
    file_section: ClassVar[str] = "server"

    repo: Path
    host: str = "127.0.0.1"
    grpc_port: int = Field(default=8500, ge=0, le=65535)  # TF Serving's ports
    rest_port: int = Field(default=8501, ge=0, le=65535)
    model_config_file: Path | None = None
    poll_interval: float = Field(default=2.0, gt=0)
    default_model: str | None = None
    batching: bool = True
    max_batch_size: int = Field(default=16, ge=1)
    max_batch_delay_ms: float = Field(default=2.0, ge=0)
    max_queue: int = Field(default=1024, ge=1)
    model_batching: dict[str, BatchingConfig] = Field(default_factory=dict)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth_token_file: Path | None = None
    max_request_mb: int = Field(default=64, ge=1)
    shutdown_grace: float = Field(default=10.0, ge=0)
    decode_threads: int = Field(default=4, ge=1)
    request_timeout: float = Field(default=30.0, gt=0)  # seconds; past it: 504
    control_topic: str | None = None  # follow model deployments published to this topic
    handler: str | None = None  # package.module:Class with preprocess/postprocess hooks
    control_timeout: float = Field(default=60.0, gt=0)  # to apply it before serving

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        return self

    @property
    def default_batching(self) -> BatchingConfig:
        """Batching for models without a [server.model_batching.<model>] table."""
        return BatchingConfig(
            enabled=self.batching,
            max_batch_size=self.max_batch_size,
            max_batch_delay_ms=self.max_batch_delay_ms,
            max_queue=self.max_queue,
        )

    @property
    def max_request_bytes(self) -> int:
        return self.max_request_mb * 1024 * 1024
