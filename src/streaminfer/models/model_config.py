"""Per-model serving settings: the schema, and TF Serving's ``--model_config_file`` for them.

A ``ModelConfig`` says which versions of a model to serve, its labels and its batching;
models without one get the defaults.  The text-format ModelServerConfig converts into
these, and the same conversion serves the file at start-up and
``HandleReloadConfigRequest`` later, so both accept exactly the same configs.

A config that cannot be served is refused whole, with the reason (INVALID_ARGUMENT over
gRPC): a name or ``base_path`` that is no path in the repository, a version that is not
positive, and a specific version or a label's version that the repository does not hold
or the policy does not serve (``specific: [-1]`` once left the model unserved).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from google.protobuf import text_format
from pydantic import BaseModel, Field, ValidationError, model_validator

from streaminfer.errors import ConfigError
from streaminfer.models.batcher import BatchingConfig
from streaminfer.models.layout import model_versions
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
        name = entry.name
        # A NUL reached Path.resolve, whose ValueError was answered INTERNAL.
        if not name or name in (".", "..") or "/" in name or not name.isprintable():
            raise ConfigError(f"invalid model name {name!r} in the model config")
        _check_base_path(entry, repo)
        try:
            model = ModelConfig(
                name=name,
                version_policy=_policy(entry),
                labels=dict(entry.version_labels),
                batching=model_batching.get(name, batching),
            )
        except ValidationError as exc:
            problems = "; ".join(e["msg"] for e in exc.errors())
            raise ConfigError(f"model {name!r}: {problems}") from exc
        _check_servable(model, repo)
        configs.append(model)
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"a model is listed twice in the model config: {names}")
    return configs


def _check_base_path(entry: msc.ModelConfig, repo: Path) -> None:
    """The registry serves one repository; a base_path elsewhere cannot be honoured."""
    if not entry.base_path:
        return
    if "\0" in entry.base_path:
        raise ConfigError(f"model {entry.name!r}: base_path {entry.base_path!r} holds a NUL")
    try:
        expected = (repo / entry.name).resolve()
        given = Path(entry.base_path).resolve()
    except (OSError, RuntimeError) as exc:  # a symbolic link loop, say
        raise ConfigError(f"model {entry.name!r}: base_path {entry.base_path!r}: {exc}") from exc
    if given != expected:
        raise ConfigError(
            f"model {entry.name!r}: base_path {entry.base_path!r} is not {expected}; "
            "this server serves models from its --repo only"
        )


def _check_servable(config: ModelConfig, repo: Path) -> None:
    """Every specific version, and every label's version, is in the repository and served."""
    available = model_versions(repo / config.name)
    held = ", ".join(map(str, available)) or "none"
    policy = config.version_policy
    missing = [v for v in policy.versions if v not in available]
    if policy.kind == "specific" and missing:
        raise ConfigError(
            f"model {config.name!r}: versions {missing} are not in the repository "
            f"(versions there: {held})"
        )
    served = policy.select(available)
    for label, version in config.labels.items():
        if version not in served:
            where = "served" if version in available else "in the repository"
            raise ConfigError(
                f"model {config.name!r}: label {label!r} points at version {version}, which "
                f"is not {where} (versions served: {', '.join(map(str, served)) or 'none'})"
            )


def _policy(entry: msc.ModelConfig) -> VersionPolicy:
    policy = entry.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy(kind="all")
    if choice == "specific":
        if not policy.specific.versions:
            raise ConfigError(f"model {entry.name!r}: a specific policy needs versions")
        if min(policy.specific.versions) < 1:
            raise ConfigError(
                f"model {entry.name!r}: specific versions must be positive, "
                f"not {list(policy.specific.versions)}"
            )
        return VersionPolicy(kind="specific", versions=list(policy.specific.versions))
    return VersionPolicy(kind="latest", num_versions=max(policy.latest.num_versions, 1))
