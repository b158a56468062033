"""KServe V2 documents shared by its REST and gRPC doors: metadata, versions, parameters."""

from __future__ import annotations

from typing import Any

from streaminfer.codecs.arrays import numpy_dtype
from streaminfer.codecs.numbers import ascii_int
from streaminfer.codecs.v2 import datatype
from streaminfer.models.metadata import TensorSpec
from streaminfer.serving import classification
from streaminfer.serving.dataplane import DEFAULT_SIGNATURE, DataPlane, ModelHandle
from streaminfer.serving.errors import InvalidRequest

PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data", classification.PARAMETER]
TOP_K_PARAMETER = "top_k"


def server_metadata(plane: DataPlane) -> dict[str, Any]:
    return {"name": plane.server_name, "version": plane.server_version, "extensions": EXTENSIONS}


def model_metadata(plane: DataPlane, model: ModelHandle) -> dict[str, Any]:
    """One signature, every input of which is required: the model's own tensors, or for
    ``<model>.images`` its encoded images and ranked classes."""
    signature = model.signatures()[DEFAULT_SIGNATURE]
    return {
        "name": model.name,
        "versions": [str(v) for v in plane.versions(model.name)],
        "platform": PLATFORM,
        "inputs": [_tensor(spec) for spec in signature.inputs],
        "outputs": [_tensor(spec) for spec in signature.outputs],
    }


def model_config(model: ModelHandle) -> dict[str, Any]:
    """Triton's model configuration (its extension of V2) as far as it describes this
    model: ``max_batch_size`` is the most rows a request may carry, and every tensor's
    ``dims`` leave out that first dimension, as Triton's do for a model that batches."""
    signature = model.signatures()[DEFAULT_SIGNATURE]
    return {
        "name": model.name,
        "platform": PLATFORM,
        "max_batch_size": model.batch_limit,
        "input": [_configured(spec) for spec in signature.inputs],
        "output": [_configured(spec) for spec in signature.outputs],
    }


def _configured(spec: TensorSpec) -> dict[str, Any]:
    v2_type = datatype(numpy_dtype(spec.dtype))
    return {
        "name": spec.name,
        "data_type": "TYPE_STRING" if v2_type == "BYTES" else f"TYPE_{v2_type}",
        "dims": list(spec.shape[1:]),
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
