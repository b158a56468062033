"""KServe V2 / Open Inference Protocol over gRPC: ``inference.GRPCInferenceService/ModelInfer``.

Every input travels in ``raw_input_contents`` (N encoded images as one BYTES tensor
``images`` of shape ``[N]``), so neither side builds per-value protobuf fields.  Works
against Triton, MLServer, KServe, OpenVINO Model Server and our own server.
"""

from __future__ import annotations

from streaminfer.errors import InfrastructureError
from streaminfer.models.postprocess import Prediction
from streaminfer.predictors.grpc_transport import GrpcTransport
from streaminfer.predictors.remote import (
    IMAGES_INPUT,
    TOP_K_PARAMETER,
    RemoteOptions,
    RemotePredictor,
    numbered_version,
    rank_from_classes,
    version_number,
)
from streaminfer.predictors.wire import (
    v2_array,
    v2_array_from_contents,
    v2_datatype,
    v2_pack_bytes,
    v2_raw,
)
from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from streaminfer.protos.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from streaminfer.types import ModelRef, Tensors


class KServeGrpcPredictor(RemotePredictor):
    mode = "kserve-grpc"

    def __init__(self, target: str, options: RemoteOptions | None = None) -> None:
        super().__init__(target, options)
        self._grpc = GrpcTransport(target, self.options)
        self._stub = v2_grpc.GRPCInferenceServiceStub(self._grpc.channel)

    def close(self) -> None:
        self._grpc.close()

    def _infer_images(
        self, ref: ModelRef, images: list[bytes], top_k: int | None
    ) -> tuple[int, list[list[Prediction]]]:
        request = _request_for(ref)
        request.inputs.add(name=IMAGES_INPUT, datatype="BYTES", shape=[len(images)])
        request.raw_input_contents.append(v2_pack_bytes(images))
        if top_k is not None:
            request.parameters[TOP_K_PARAMETER].int64_param = top_k
        version, outputs = self._infer(request)
        return version, rank_from_classes(outputs, len(images), self.target)

    def _infer_tensors(self, ref: ModelRef, inputs: Tensors) -> tuple[int, Tensors]:
        request = _request_for(ref)
        for name, array in inputs.items():
            request.inputs.add(name=name, datatype=v2_datatype(array), shape=array.shape)
            request.raw_input_contents.append(v2_raw(array))
        return self._infer(request)

    def _infer(self, request: v2.ModelInferRequest) -> tuple[int, Tensors]:
        response = self._grpc.call(self._stub.ModelInfer, request)
        raw = response.raw_output_contents
        if raw and len(raw) != len(response.outputs):
            raise InfrastructureError(f"{self.target}: {len(raw)} raw contents for outputs")
        outputs: Tensors = {}
        for index, output in enumerate(response.outputs):
            shape = tuple(output.shape)
            outputs[output.name] = (
                v2_array(output.datatype, shape, raw[index])
                if raw
                else v2_array_from_contents(output.datatype, shape, output.contents)
            )
        return version_number(response.model_version), outputs


def _request_for(ref: ModelRef) -> v2.ModelInferRequest:
    return v2.ModelInferRequest(
        model_name=ref.name, model_version=numbered_version(ref, "KServe V2")
    )
