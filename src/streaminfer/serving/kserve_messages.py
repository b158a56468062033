"""KServe V2 documents shared by its REST and gRPC doors: metadata, versions, parameters."""

from __future__ import annotations

from typing import Any

from streaminfer.codecs.arrays import numpy_dtype
from streaminfer.codecs.numbers import ascii_int
from streaminfer.codecs.v2 import datatype
from streaminfer.models.metadata import TensorSpec
from streaminfer.serving.dataplane import (
    DEFAULT_SIGNATURE,
    IMAGE_SIGNATURES,
    DataPlane,
    ModelHandle,
)
from streaminfer.serving.errors import InvalidRequest

PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data"]
TOP_K_PARAMETER = "top_k"


def server_metadata(plane: DataPlane) -> dict[str, Any]:
    return {"name": plane.server_name, "version": plane.server_version, "extensions": EXTENSIONS}


def model_metadata(plane: DataPlane, model: ModelHandle) -> dict[str, Any]:
    """The model's tensors; an image model lists its ``images`` input and ranked outputs too."""
    found = model.signatures()
    chosen = [found[DEFAULT_SIGNATURE]]
    if IMAGE_SIGNATURES[0] in found:
        chosen.append(found[IMAGE_SIGNATURES[0]])
    return {
        "name": model.name,
        "versions": [str(v) for v in plane.versions(model.name)],
        "platform": PLATFORM,
        "inputs": [_tensor(spec) for sig in chosen for spec in sig.inputs],
        "outputs": [_tensor(spec) for sig in chosen for spec in sig.outputs],
    }


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "datatype": datatype(numpy_dtype(spec.dtype)),
        "shape": list(spec.shape),
    }


def parse_version(text: str) -> int | None:
    """A V2 model version ("" for the latest) as the registry's integer."""
    if not text:
        return None
    version = ascii_int(text)
    if not version:
        raise InvalidRequest(f"model version must be a positive integer, not {text[:40]!r}")
    return version


def top_k_parameter(parameters: dict[str, Any]) -> int | None:
    """The request's ``top_k`` parameter, for image models."""
    value = parameters.get(TOP_K_PARAMETER)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"parameter 'top_k' must be an integer, not {value!r}")
    return value
