"""KServe V2 / Open Inference Protocol over gRPC: ``inference.GRPCInferenceService/ModelInfer``.

Every input travels in ``raw_input_contents`` (N encoded images as one BYTES tensor
``images`` of shape ``[N]``), so neither side builds per-value protobuf fields.  A
model's inputs come from ``ModelMetadata``, health from ``ServerReady``.  Works against
Triton, MLServer, KServe, OpenVINO Model Server and our own server.
"""

from __future__ import annotations

from collections.abc import Sequence

from streaminfer.codecs.v2 import (
    infer_request_bytes,
    numpy_dtype,
    parse_infer_response,
    read_grpc_tensors,
)
from streaminfer.errors import StreamInferError
from streaminfer.models.postprocess import Prediction
from streaminfer.predictors.grpc_transport import GrpcTransport
from streaminfer.predictors.remote import (
    TOP_K_PARAMETER,
    RemoteOptions,
    RemotePredictor,
    numbered_version,
    rank_from_classes,
    version_number,
)
from streaminfer.predictors.signature import (
    ServedModel,
    TensorList,
    v2_model,
    v2_model_with_image_entry,
)
from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from streaminfer.protos.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from streaminfer.types import ModelRef, Tensors

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


class KServeGrpcPredictor(RemotePredictor):
    mode = "kserve-grpc"

    def __init__(self, target: str, options: RemoteOptions | None = None) -> None:
        super().__init__(target, options)
        self._grpc = GrpcTransport(target, self.options)
        self._stub = v2_grpc.GRPCInferenceServiceStub(self._grpc.channel)
        # Requests go serialized already, their tensors written once (infer_request_bytes);
        # answers' tensors are read as views of the received bytes (parse_infer_response).
        self._model_infer = self._grpc.channel.unary_unary(
            MODEL_INFER, response_deserializer=parse_infer_response
        )

    def close(self) -> None:
        super().close()
        self._grpc.close()

    def ready(self) -> bool:
        try:
            return self._grpc.call(self._stub.ServerReady, v2.ServerReadyRequest()).ready
        except StreamInferError:
            return False

    def _read_metadata(self, ref: ModelRef) -> ServedModel:
        return v2_model_with_image_entry(ref, self._model_metadata)

    def _model_metadata(self, ref: ModelRef) -> ServedModel:
        request = v2.ModelMetadataRequest(name=ref.name, version=numbered_version(ref, "KServe V2"))
        answer = self._grpc.call(self._stub.ModelMetadata, request)
        return v2_model(_listed(answer.inputs), _listed(answer.outputs), self._config_rows(ref))

    def _config_rows(self, ref: ModelRef) -> int | None:
        """The server's limit on a request's rows, from the model configuration it serves
        (Triton's extension of the V2 API, which ours serves too; servers without it answer
        UNIMPLEMENTED, and state no limit)."""
        request = v2.ModelConfigRequest(name=ref.name, version=numbered_version(ref, "KServe V2"))
        try:
            answer = self._grpc.call(self._stub.ModelConfig, request)
        except StreamInferError:
            return None
        return self._stated_limit(ref, answer.config.max_batch_size)

    def _infer_images(
        self, ref: ModelRef, served: ServedModel, images: list[bytes], top_k: int | None
    ) -> tuple[int, list[list[Prediction]]]:
        assert served.image_input is not None
        ref = served.image_ref(ref)
        request = _request_for(ref)
        if top_k is not None:
            request.parameters[TOP_K_PARAMETER].int64_param = top_k
        version, outputs = self._infer(request, {served.image_input: served.image_batch(images)})
        return version, rank_from_classes(outputs, len(images), self.target)

    def _infer_tensors(
        self, ref: ModelRef, inputs: Tensors, output_filter: tuple[str, ...] = ()
    ) -> tuple[int, Tensors]:
        request = _request_for(ref)
        for name in output_filter:
            request.outputs.add(name=name)
        return self._infer(request, inputs)

    def _infer(self, request: v2.ModelInferRequest, inputs: Tensors) -> tuple[int, Tensors]:
        call = self._grpc.call(self._model_infer, infer_request_bytes(request, inputs))
        response, raw, read_apart = call
        outputs = read_grpc_tensors(response.outputs, raw, "output", read_apart)
        return version_number(response.model_version), outputs


def _request_for(ref: ModelRef) -> v2.ModelInferRequest:
    return v2.ModelInferRequest(
        model_name=ref.name, model_version=numbered_version(ref, "KServe V2")
    )


def _listed(tensors: Sequence[v2.ModelMetadataResponse.TensorMetadata]) -> TensorList:
    return [(t.name, numpy_dtype(t.name, t.datatype), list(t.shape)) for t in tensors]
