"""Where each version of a model is in its life, in TF Serving's ``GetModelStatus`` terms."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class VersionState(StrEnum):
    """TF Serving's ``ModelVersionStatus.State`` names."""

    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


@dataclass(frozen=True)
class VersionStatus:
    """A version's state and, when its last load failed, why."""

    version: int
    state: VersionState
    error: str = ""
