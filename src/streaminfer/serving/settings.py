"""The server's settings: flags > ``STREAMINFER_*`` environment > ``[server]`` in the TOML file."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, model_validator

from streaminfer.config import Settings
from streaminfer.cores import usable_cores
from streaminfer.models.batcher import SLICE_BYTES, BatchingConfig
from streaminfer.models.runtime import RuntimeOptions

_BATCHING = BatchingConfig()


class ServerSettings(Settings):
    file_section: ClassVar[str] = "server"

    repo: Path
    host: str = "127.0.0.1"
    grpc_port: int = Field(default=8500, ge=0, le=65535)  # TF Serving's ports
    rest_port: int = Field(default=8501, ge=0, le=65535)
    model_config_file: Path | None = None
    poll_interval: float = Field(default=2.0, gt=0)
    default_model: str | None = None
    # The batching defaults are BatchingConfig's, so that they are set in one place.
    batching: bool = _BATCHING.enabled
    max_batch_size: int = Field(default=_BATCHING.max_batch_size, ge=1)
    max_batch_delay_ms: float = Field(default=_BATCHING.max_batch_delay_ms, ge=0)
    max_queue: int = Field(default=_BATCHING.max_queue, ge=1)
    batch_runners: int = Field(default=_BATCHING.runners, ge=1)  # batches run at once
    intra_op_threads: int | None = Field(default=None, ge=1)  # None: see runtime_options
    split_batches: bool = False  # RuntimeOptions.split_batches
    model_batching: dict[str, BatchingConfig] = Field(default_factory=dict)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth_token_file: Path | None = None
    max_request_mb: int = Field(default=64, ge=1)
    body_memory_mb: int | None = Field(default=None, ge=1)  # None: twice max_request_mb
    body_timeout: float = Field(default=60.0, gt=0)  # seconds a body or message may take to arrive
    # gRPC calls at once: about 24 KB each before their messages arrive, so calls left idle
    # hold at most some 100 MB; four times what one model's queue takes (--max-queue).
    max_concurrent_rpcs: int = Field(default=4096, ge=1)
    # Connections open at once on each port: a REST one holds about 6 KB and a file
    # descriptor; more are closed as they are accepted (streaminfer.serving.connections).
    max_connections: int = Field(default=4096, ge=1)
    # Seconds a gRPC connection lives before its client is asked to open a new one (GOAWAY):
    # clients spread over new replicas, and a call whose answer is never read ends.
    grpc_connection_age: float = Field(default=300.0, gt=0)
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

    @model_validator(mode="after")
    def _tables_over_defaults(self) -> ServerSettings:
        # A [server.model_batching.<model>] table overrides the fields it names; the others
        # are the server's (--max-batch-size, --batch-runners ...), not BatchingConfig's.
        defaults = self.default_batching
        self.model_batching = {
            name: defaults.model_copy(
                update={field: getattr(table, field) for field in table.model_fields_set}
            )
            for name, table in self.model_batching.items()
        }
        return self

    @property
    def default_batching(self) -> BatchingConfig:
        """Batching for models without a [server.model_batching.<model>] table."""
        return BatchingConfig(
            enabled=self.batching,
            max_batch_size=self.max_batch_size,
            max_batch_delay_ms=self.max_batch_delay_ms,
            max_queue=self.max_queue,
            runners=self.batch_runners,
            # A request's small rows make slices of up to 4 MB while their runs stay under
            # 2 ms: a stream worker's 1,024 rows of a tabular model in one run, not 64.
            slice_bytes=SLICE_BYTES,
            slice_grow_ms=2.0,
        )

    @property
    def runtime_options(self) -> RuntimeOptions:
        """ONNX Runtime's threads for one model run: ``intra_op_threads`` if given; with
        several batch runners, the cores shared among them, so that the batches running at
        once never ask for more threads than there are cores; else every core (0).
        """
        threads = 0
        if self.intra_op_threads is not None:
            threads = self.intra_op_threads
        elif self.batching and self.batch_runners > 1:
            threads = max(1, usable_cores() // self.batch_runners)
        return RuntimeOptions(intra_op_threads=threads, split_batches=self.split_batches)

    @property
    def max_request_bytes(self) -> int:
        return self.max_request_mb * 1024 * 1024

    @property
    def body_memory_bytes(self) -> int:
        """Bytes of REST bodies over 1 MiB held at once: by default two of the largest
        (smaller bodies have half as much again, ``BodyBudget``)."""
        megabytes = self.body_memory_mb or 2 * self.max_request_mb
        return megabytes * 1024 * 1024
