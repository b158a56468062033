"""A model's desired state on the control topic, and the changes ``publish`` may make to it.

The state is whole (every deployed version with its location and digest, the labels, the
retired versions), so a compacted topic keyed by model keeps all a follower needs.
Versions are immutable: a number is never reused for other bytes.
"""

from __future__ import annotations

import datetime
import re
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from streaminfer.errors import ConfigError

DEFAULT_CONTROL_TOPIC = "streaminfer.models"  # the compacted topic of these states
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")  # a safe folder (or label) name


def check_name(name: str, what: str) -> str:
    """A model or label name must be a plain folder name: no ``/``, no ``..``."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"invalid {what} name {name!r}: use letters, digits, '.', '_', '-'")
    return name


# -- the state -----------------------------------------------------------------------------
class VersionSource(BaseModel):
    """Where a version's files are published, and the digest they must have."""

    location: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ModelState(BaseModel):
    """A model's whole desired state: deployed versions, labels, retired versions."""

    model: str
    versions: dict[int, VersionSource] = Field(default_factory=dict)
    labels: dict[str, int] = Field(default_factory=dict)
    retired: list[int] = Field(default_factory=list)
    updated_at: str
    event: Literal["deploy", "label", "retire"]
    version: int  # the version the event was about
    label: str | None = None  # the label a "label" event moved

    @field_validator("model")
    @classmethod
    def _model_name(cls, name: str) -> str:
        return check_name(name, "model")

    @field_validator("versions", "retired")
    @classmethod
    def _positive(cls, versions: dict[int, VersionSource] | list[int]) -> object:
        if any(v < 1 for v in versions):
            raise ValueError("versions must be positive integers")
        return versions

    @field_validator("labels")
    @classmethod
    def _label_names(cls, labels: dict[str, int]) -> dict[str, int]:
        for name in labels:
            check_name(name, "label")
        return labels


def _next(
    state: ModelState | None, model: str, event: str, version: int, **changes: object
) -> ModelState:
    base = state.model_dump() if state else {"model": model}
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
    try:
        return ModelState.model_validate(
            {**base, **changes, "updated_at": now, "event": event, "version": version}
        )
    except ValidationError as exc:
        raise ConfigError(f"invalid state for model {model!r}: {first_problem(exc)}") from exc


def first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(map(str, error["loc"]))
    return f"{where}: {error['msg']}" if where else error["msg"]


def _require_deployed(state: ModelState | None, model: str, version: int) -> ModelState:
    if state is not None and version in state.versions:
        return state
    if state is not None and version in state.retired:
        raise ConfigError(f"version {version} of model {model!r} was retired")
    deployed = ", ".join(map(str, sorted(state.versions))) if state else ""
    raise ConfigError(
        f"version {version} of model {model!r} is not deployed (deployed: {deployed or 'none'})"
    )


def deploy_state(
    state: ModelState | None, model: str, version: int, source: VersionSource
) -> ModelState:
    """Add a version; versions are immutable, so a number is never reused for other bytes."""
    check_name(model, "model")
    if version < 1:
        raise ConfigError(f"version must be a positive integer, got {version}")
    if state is not None and version in state.retired:
        raise ConfigError(f"version {version} of model {model!r} was retired; deploy a new one")
    known = state.versions.get(version) if state else None
    if known is not None and known.sha256 != source.sha256:
        raise ConfigError(
            f"version {version} of model {model!r} is already deployed with another digest; "
            "versions are immutable, deploy a new one"
        )
    versions = {**(state.versions if state else {}), version: source}
    return _next(state, model, "deploy", version, versions=versions, label=None)


def label_state(state: ModelState | None, model: str, label: str, version: int) -> ModelState:
    """Point a label at a deployed, non-retired version."""
    check_name(label, "label")
    state = _require_deployed(state, model, version)
    labels = {**state.labels, label: version}
    return _next(state, model, "label", version, labels=labels, label=label)


def retire_state(state: ModelState | None, model: str, version: int) -> ModelState:
    """Retire a version that no label points at: followers remove it from their repository."""
    state = _require_deployed(state, model, version)
    pointing = sorted(name for name, v in state.labels.items() if v == version)
    if pointing:
        raise ConfigError(
            f"label {pointing[0]!r} of model {model!r} points at version {version}; move it first"
        )
    versions = {v: s for v, s in state.versions.items() if v != version}
    retired = sorted({*state.retired, version})
    return _next(state, model, "retire", version, versions=versions, retired=retired, label=None)
