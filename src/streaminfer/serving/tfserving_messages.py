"""TF Serving's model status and metadata messages, built once for its gRPC and REST doors.

Everything they say comes from the data plane: a model handle's signatures, the
plane's version statuses.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from streaminfer.codecs.arrays import numpy_dtype
from streaminfer.codecs.tfserving import data_type
from streaminfer.models.metadata import TensorSpec
from streaminfer.models.status import VersionState, VersionStatus
from streaminfer.protos.tfserving import (
    error_codes_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    meta_graph_pb2,
    model_pb2,
    status_pb2,
    tensor_shape_pb2,
)
from streaminfer.serving.dataplane import DataPlane, ModelHandle
from streaminfer.serving.errors import InvalidRequest

PREDICT_METHOD = "tensorflow/serving/predict"
SIGNATURE_DEF_FIELD = "signature_def"
_STATES = {
    VersionState.LOADING: get_model_status_pb2.ModelVersionStatus.LOADING,
    VersionState.AVAILABLE: get_model_status_pb2.ModelVersionStatus.AVAILABLE,
    VersionState.UNLOADING: get_model_status_pb2.ModelVersionStatus.UNLOADING,
    VersionState.END: get_model_status_pb2.ModelVersionStatus.END,
}


def spec_target(spec: model_pb2.ModelSpec) -> tuple[str, int | None, str | None]:
    """(model, version, label) that a ModelSpec names."""
    if not spec.name:
        raise InvalidRequest("model_spec.name is required")
    choice = spec.WhichOneof("version_choice")
    version = spec.version.value if choice == "version" else None
    label = spec.version_label if choice == "version_label" else None
    return spec.name, version, label


def answered_spec(name: str, version: int, signature: str = "") -> model_pb2.ModelSpec:
    """The ModelSpec of the version that answered a request."""
    # The wrapper as a dict: ModelSpec's Int64Value is streaminfer's own (protos/pool.py).
    return model_pb2.ModelSpec(name=name, version={"value": version}, signature_name=signature)


def model_status(
    plane: DataPlane, name: str, version: int | None, label: str | None
) -> get_model_status_pb2.GetModelStatusResponse:
    """Every version's state, or the one version named by number or label."""
    return get_model_status_pb2.GetModelStatusResponse(
        model_version_status=[_version_status(s) for s in plane.status(name, version, label)]
    )


def _version_status(status: VersionStatus) -> get_model_status_pb2.ModelVersionStatus:
    code = error_codes_pb2.UNKNOWN if status.error else error_codes_pb2.OK
    return get_model_status_pb2.ModelVersionStatus(
        version=status.version,
        state=_STATES[status.state],
        status=status_pb2.StatusProto(error_code=code, error_message=status.error),
    )


def signature_defs(model: ModelHandle) -> get_model_metadata_pb2.SignatureDefMap:
    defs = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in model.signatures().items():
        entry = defs.signature_def[name]
        entry.method_name = PREDICT_METHOD
        for spec in signature.inputs:
            entry.inputs[spec.name].CopyFrom(_tensor_info(spec))
        for spec in signature.outputs:
            entry.outputs[spec.name].CopyFrom(_tensor_info(spec))
    return defs


def _tensor_info(spec: TensorSpec) -> meta_graph_pb2.TensorInfo:
    return meta_graph_pb2.TensorInfo(
        name=spec.name,
        dtype=data_type(numpy_dtype(spec.dtype)),
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in spec.shape]
        ),
    )


def check_metadata_fields(fields: list[str]) -> None:
    unknown = sorted(set(fields) - {SIGNATURE_DEF_FIELD})
    if unknown:
        raise InvalidRequest(f"metadata fields {unknown} are not supported; ask for signature_def")


def metadata_response(model: ModelHandle) -> get_model_metadata_pb2.GetModelMetadataResponse:
    response = get_model_metadata_pb2.GetModelMetadataResponse(
        model_spec=answered_spec(model.name, model.version)
    )
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_defs(model))
    return response


def as_json(message: Any) -> dict[str, Any]:
    """A message as TF Serving's REST API shows it (proto field names, defaults included)."""
    result: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return result


def metadata_json(model: ModelHandle) -> dict[str, Any]:
    """TF Serving's REST metadata: the SignatureDefMap unpacked, not as an Any."""
    return {
        "model_spec": as_json(answered_spec(model.name, model.version)),
        "metadata": {SIGNATURE_DEF_FIELD: as_json(signature_defs(model))},
    }
