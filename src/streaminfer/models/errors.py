"""The record errors a model raises for one request, which clients and servers import.

Their ``reason`` codes are public (dead-letter records carry them) and never renamed.
This module imports nothing heavy, so a remote client can raise and catch them without
loading a model runtime.
"""

from __future__ import annotations

from streaminfer.errors import RecordError


class ModelNotFound(RecordError):
    """No such model, version or label is being served (NOT_FOUND / 404)."""

    reason = "unknown_model"


class BadLabel(RecordError):
    """A label that names no loaded version (INVALID_ARGUMENT / 400, as TF Serving)."""

    reason = "unknown_label"


class InvalidInput(RecordError):
    """A tensor is missing, has the wrong dtype or the wrong shape for the model."""

    reason = "invalid_input"
