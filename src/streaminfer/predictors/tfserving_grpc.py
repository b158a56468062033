"""TensorFlow Serving's gRPC API: ``tensorflow.serving.PredictionService/Predict``.

N encoded images go as one ``DT_STRING`` tensor ``images`` of shape ``[N]``; tensors as
raw ``tensor_content``.  Works against TensorFlow Serving itself and our own server.
"""

from __future__ import annotations

import numpy as np

from streaminfer.codecs.arrays import bytes_array
from streaminfer.codecs.tfserving import from_tensor_proto, to_tensor_proto
from streaminfer.models.postprocess import Prediction
from streaminfer.predictors.grpc_transport import GrpcTransport
from streaminfer.predictors.remote import (
    IMAGES_INPUT,
    TOP_K_PARAMETER,
    RemoteOptions,
    RemotePredictor,
    rank_from_classes,
)
from streaminfer.protos.tfserving import predict_pb2, prediction_service_pb2_grpc
from streaminfer.types import ModelRef, Tensors


class TFServingGrpcPredictor(RemotePredictor):
    mode = "tfserving-grpc"

    def __init__(self, target: str, options: RemoteOptions | None = None) -> None:
        super().__init__(target, options)
        self._grpc = GrpcTransport(target, self.options)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._grpc.channel)

    def close(self) -> None:
        self._grpc.close()

    def _infer_images(
        self, ref: ModelRef, images: list[bytes], top_k: int | None
    ) -> tuple[int, list[list[Prediction]]]:
        request = self._request_for(ref)
        request.inputs[IMAGES_INPUT].CopyFrom(to_tensor_proto(bytes_array(images)))
        if top_k is not None:
            request.inputs[TOP_K_PARAMETER].CopyFrom(to_tensor_proto(np.asarray(top_k, np.int32)))
        version, outputs = self._predict(request)
        return version, rank_from_classes(outputs, len(images), self.target)

    def _infer_tensors(self, ref: ModelRef, inputs: Tensors) -> tuple[int, Tensors]:
        request = self._request_for(ref)
        for name, array in inputs.items():
            request.inputs[name].CopyFrom(to_tensor_proto(array))
        return self._predict(request)

    def _request_for(self, ref: ModelRef) -> predict_pb2.PredictRequest:
        request = predict_pb2.PredictRequest()
        spec = request.model_spec
        spec.name = ref.name
        spec.signature_name = self.options.signature_name
        if ref.version is not None:
            spec.version.value = ref.version
        elif ref.label is not None:
            spec.version_label = ref.label
        return request

    def _predict(self, request: predict_pb2.PredictRequest) -> tuple[int, Tensors]:
        response = self._grpc.call(self._stub.Predict, request)
        outputs = {name: from_tensor_proto(name, proto) for name, proto in response.outputs.items()}
        return response.model_spec.version.value, outputs
