"""Per-model serving settings: the schema, and TF Serving's ``--model_config_file`` for them.

A ``ModelConfig`` says which versions of a model to serve, its labels and its batching;
models without one get the defaults.  The text-format ModelServerConfig converts into
these, and the same conversion serves the file at start-up and
``HandleReloadConfigRequest`` later, so both accept exactly the same configs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from google.protobuf import text_format
from pydantic import BaseModel, Field, ValidationError, model_validator

from streaminfer.errors import ConfigError
from streaminfer.models.batcher import BatchingConfig
from streaminfer.protos.tfserving import model_server_config_pb2 as msc


class VersionPolicy(BaseModel):
    """Which versions to serve: the latest N (default 1), all, or specific ones."""

    kind: Literal["latest", "all", "specific"] = "latest"
    num_versions: int = Field(default=1, ge=1)
    versions: list[int] = Field(default_factory=list)
    pinned: list[int] = Field(default_factory=list)  # also served: versions labels point at

    def select(self, available: list[int]) -> list[int]:
        ordered = sorted(available)
        if self.kind == "all":
            chosen = ordered
        elif self.kind == "specific":
            chosen = [v for v in ordered if v in self.versions]
        else:
            chosen = ordered[-self.num_versions :]
        return sorted({*chosen, *(v for v in ordered if v in self.pinned)})


class ModelConfig(BaseModel):
    """One model's serving settings."""

    name: str
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    labels: dict[str, int] = Field(default_factory=dict)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)

    @model_validator(mode="after")
    def _labels_are_versions(self) -> ModelConfig:
        for label, version in self.labels.items():
            if version < 1:
                raise ValueError(f"label {label!r} must point at a positive version")
        return self


def read_model_config_file(path: Path) -> msc.ModelServerConfig:
    """Parse a text-format ModelServerConfig; ConfigError names the file and the problem."""
    try:
        return text_format.Parse(path.read_text(), msc.ModelServerConfig())
    except OSError as exc:
        raise ConfigError(f"cannot read model config file {path}: {exc.strerror}") from exc
    except text_format.ParseError as exc:
        raise ConfigError(f"model config file {path}: {exc}") from exc


def model_configs(
    config: msc.ModelServerConfig,
    repo: Path,
    batching: BatchingConfig,
    model_batching: dict[str, BatchingConfig],
) -> list[ModelConfig]:
    """Registry configs for the models listed; each model's batching comes from the settings."""
    if config.WhichOneof("config") != "model_config_list":
        raise ConfigError("only model_config_list is supported, not custom_model_config")
    configs: list[ModelConfig] = []
    for entry in config.model_config_list.config:
        if not entry.name or entry.name in (".", "..") or "/" in entry.name:
            raise ConfigError(f"invalid model name {entry.name!r} in the model config")
        _check_base_path(entry, repo)
        try:
            configs.append(
                ModelConfig(
                    name=entry.name,
                    version_policy=_policy(entry),
                    labels=dict(entry.version_labels),
                    batching=model_batching.get(entry.name, batching),
                )
            )
        except ValidationError as exc:
            problems = "; ".join(e["msg"] for e in exc.errors())
            raise ConfigError(f"model {entry.name!r}: {problems}") from exc
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"a model is listed twice in the model config: {names}")
    return configs


def _check_base_path(entry: msc.ModelConfig, repo: Path) -> None:
    """The registry serves one repository; a base_path elsewhere cannot be honoured."""
    expected = (repo / entry.name).resolve()
    if entry.base_path and Path(entry.base_path).resolve() != expected:
        raise ConfigError(
            f"model {entry.name!r}: base_path {entry.base_path!r} is not {expected}; "
            "this server serves models from its --repo only"
        )


def _policy(entry: msc.ModelConfig) -> VersionPolicy:
    policy = entry.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy(kind="all")
    if choice == "specific":
        if not policy.specific.versions:
            raise ConfigError(f"model {entry.name!r}: a specific policy needs versions")
        return VersionPolicy(kind="specific", versions=list(policy.specific.versions))
    return VersionPolicy(kind="latest", num_versions=max(policy.latest.num_versions, 1))
