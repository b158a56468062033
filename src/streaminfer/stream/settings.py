"""The worker's settings, named after what they do (as Kafka Streams names its own)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from streaminfer.config import Settings

# seed-style: the original demo's one-channel-per-record call, kept as a benchmark baseline.
Mode = Literal[
    "embedded", "tfserving-grpc", "tfserving-rest", "kserve-grpc", "kserve-http", "seed-style"
]


class WorkerSettings(Settings):
    """``[worker]`` in the config file; ``STREAMINFER_<FIELD>`` in the environment."""

    file_section = "worker"

    input: str = "ImageInputTopic"
    output: str = "ImageOutputTopic"
    dlq: str | None = None  # default: "<input>.dlq"
    group_id: str = "streaminfer"
    model: str = "efficientnet-lite0"
    version: int | None = Field(default=None, ge=1)
    label: str | None = None
    mode: Mode = "embedded"
    repo: Path | None = None
    model_config_file: Path | None = None  # versions and labels, TF Serving's text format
    control_topic: str | None = None  # follow model deployments published to this topic
    server: str | None = None  # host:port of the model server in remote modes
    # TLS to it (the system's trusted roots unless a CA file is given, which implies TLS),
    # and a file holding the bearer token each request carries.
    server_tls: bool = False
    server_ca_file: Path | None = None
    server_token_file: Path | None = None
    processing_guarantee: Literal["exactly-once", "at-least-once"] = "exactly-once"
    batch_size: int = Field(default=16, ge=1)
    max_in_flight: int = Field(default=4, ge=1)
    commit_interval_ms: int = Field(default=100, ge=1)
    top_k: int | None = Field(default=None, ge=1)
    fallback: Literal["embedded"] | None = None
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 in a pod, for probes and Prometheus
    request_timeout_s: float = Field(default=10.0, gt=0)
    max_answer_mb: int = Field(default=64, ge=1)  # a model server's answer, refused past it
    # Rows one request to a model server carries at most; fewer for a model whose server
    # refused more (learned, see predictors.remote).
    request_rows: int = Field(default=1024, ge=1)
    decode_threads: int = Field(default=2, ge=1)
    fetch_threads: int = Field(default=8, ge=1)
    allow_networks: list[str] = Field(default_factory=list)  # image hosts past the SSRF guard
    allow_files: list[Path] = Field(default_factory=list)  # folders file:// records may read
    handler: str | None = None  # package.module:Class with preprocess/postprocess hooks
    route: str | None = None  # weighted split, e.g. "stable=90,canary=10"
    shadow: str | None = None  # a version or label that also predicts, for comparison
    shadow_sample: float = Field(default=1.0, gt=0, le=1)
    shadow_topic: str | None = None  # default: "<output>.shadow"
    create_topics: bool = True  # create output and dead-letter topics if missing
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    # An exactly-once commit that has not returned in this long is stuck inside librdkafka
    # (its own calls time out after 30 s each): the worker exits, to be restarted.
    commit_stuck_s: float = Field(default=120.0, gt=0)
    # Images to a remote model: "auto" sends the bytes if the server's metadata lists an
    # encoded-image input, else preprocesses here; "bytes" / "tensor" force a path.
    remote_images: Literal["auto", "bytes", "tensor"] = "auto"
    # How to preprocess for a server's tensor model when --repo has no model.json for it.
    preprocess: Literal["imagenet", "inception", "raw"] | None = None
    input_size: str | None = None  # N or HxW, where the model's shape leaves it open
    layout: Literal["NCHW", "NHWC"] | None = None
    labels: Path | None = None  # class names, one per line
    output_kind: Literal["logits", "probabilities"] = "logits"
    v2_binary: Literal["auto", "always", "never"] = "auto"  # kserve-http binary tensors
    # Group members under one supervisor; "auto": one per usable core.
    processes: Annotated[int, Field(ge=1)] | Literal["auto"] = 1

    @model_validator(mode="after")
    def _consistent(self) -> WorkerSettings:
        if self.version is not None and self.label is not None:
            raise ValueError("give --version or --label, not both")
        if self.mode == "embedded" and self.repo is None:
            raise ValueError("--mode embedded needs --repo (the model repository)")
        if self.mode != "embedded" and self.server is None:
            from streaminfer.predictors.factory import default_server  # light `--help`

            self.server = default_server(self.mode)
        if self.route and (self.version is not None or self.label is not None):
            raise ValueError("--route chooses the version itself: drop --version / --label")
        in_process = self.mode == "embedded" or self.fallback == "embedded"
        if self.control_topic and not in_process:
            raise ValueError("--control-topic needs --mode embedded or --fallback embedded")
        if self.fallback == "embedded" and self.repo is None:
            raise ValueError("--fallback embedded needs --repo (the model repository)")
        if self.input_size is not None:
            from streaminfer.images.presets import parse_size  # light `--help`

            parse_size(self.input_size)
        if self.server_ca_file is not None:
            self.server_tls = True
        for flag, path in (
            ("--server-ca-file", self.server_ca_file),
            ("--server-token-file", self.server_token_file),
        ):
            if path is not None and not (path.is_file() and path.read_text().strip()):
                raise ValueError(f"{flag} {path}: not a file, or empty")
        if self.labels is not None and not self.labels.is_file():
            raise ValueError(f"--labels {self.labels}: not a file")
        for folder in self.allow_files:
            if not folder.is_dir():
                raise ValueError(f"--allow-files {folder}: not a folder")
        return self

    @property
    def dead_letter_topic(self) -> str:
        return self.dlq or f"{self.input}.dlq"

    @property
    def shadow_output_topic(self) -> str:
        return self.shadow_topic or f"{self.output}.shadow"

    @property
    def exactly_once(self) -> bool:
        return self.processing_guarantee == "exactly-once"
