"""TensorFlow Serving's gRPC API: ``tensorflow.serving.PredictionService/Predict``.

N encoded images go as one ``DT_STRING`` tensor ``images`` of shape ``[N]``; tensors as
raw ``tensor_content``.  A model's signatures come from ``GetModelMetadata``, which also
serves as the health probe (TF Serving has no server-wide one).  Works against
TensorFlow Serving itself and our own server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from streaminfer.codecs.errors import DecodeError
from streaminfer.codecs.tfserving import (
    DTYPES,
    from_tensor_proto,
    parse_predict_response,
    predict_request_bytes,
)
from streaminfer.models.postprocess import Prediction
from streaminfer.predictors.grpc_transport import GrpcTransport
from streaminfer.predictors.remote import (
    TOP_K_PARAMETER,
    RemoteOptions,
    RemotePredictor,
    rank_from_classes,
)
from streaminfer.predictors.signature import ServedModel, TensorList, tf_model
from streaminfer.protos.tfserving import (
    get_model_metadata_pb2,
    meta_graph_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from streaminfer.types import ModelRef, Tensors

PREDICT = "/tensorflow.serving.PredictionService/Predict"


class TFServingGrpcPredictor(RemotePredictor):
    mode = "tfserving-grpc"

    def __init__(self, target: str, options: RemoteOptions | None = None) -> None:
        super().__init__(target, options)
        self._grpc = GrpcTransport(target, self.options)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._grpc.channel)
        # Requests go serialized already, their tensors written once (predict_request_bytes);
        # answers' tensor_content is read as views of the received bytes.
        self._predict_call = self._grpc.channel.unary_unary(
            PREDICT, response_deserializer=parse_predict_response
        )

    def close(self) -> None:
        super().close()
        self._grpc.close()

    def ready(self) -> bool:
        return self._model_answers()

    def _read_metadata(self, ref: ModelRef) -> ServedModel:
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=[SIGNATURE_DEF_FIELD]
        )
        self._spec(ref, request.model_spec)
        answer = self._grpc.call(self._stub.GetModelMetadata, request)
        defs = get_model_metadata_pb2.SignatureDefMap()
        if SIGNATURE_DEF_FIELD not in answer.metadata or not answer.metadata[
            SIGNATURE_DEF_FIELD
        ].Unpack(defs):
            raise DecodeError("the metadata has no SignatureDefMap")
        return tf_model(signatures_of(defs), self.options.signature_name)

    def _infer_images(
        self, ref: ModelRef, served: ServedModel, images: list[bytes], top_k: int | None
    ) -> tuple[int, list[list[Prediction]]]:
        assert served.image_input is not None
        request = self._request_for(ref, served.image_signature)
        inputs = {served.image_input: served.image_batch(images)}
        if top_k is not None:
            inputs[TOP_K_PARAMETER] = np.asarray(top_k, np.int32)
        version, outputs = self._predict(request, inputs)
        return version, rank_from_classes(outputs, len(images), self.target)

    def _infer_tensors(
        self, ref: ModelRef, inputs: Tensors, output_filter: tuple[str, ...] = ()
    ) -> tuple[int, Tensors]:
        request = self._request_for(ref)
        request.output_filter.extend(output_filter)
        return self._predict(request, inputs)

    def _request_for(
        self, ref: ModelRef, signature: str | None = None
    ) -> predict_pb2.PredictRequest:
        request = predict_pb2.PredictRequest()
        self._spec(ref, request.model_spec)
        request.model_spec.signature_name = signature or self.options.signature_name
        return request

    @staticmethod
    def _spec(ref: ModelRef, spec: Any) -> None:
        spec.name = ref.name
        if ref.version is not None:
            spec.version.value = ref.version
        elif ref.label is not None:
            spec.version_label = ref.label

    def _predict(self, request: predict_pb2.PredictRequest, inputs: Tensors) -> tuple[int, Tensors]:
        response, contents = self._grpc.call(
            self._predict_call, predict_request_bytes(request, inputs)
        )
        outputs = {
            name: from_tensor_proto(name, proto, contents.get(name))
            for name, proto in response.outputs.items()
        }
        return response.model_spec.version.value, outputs


SIGNATURE_DEF_FIELD = "signature_def"


Signatures = dict[str, tuple[TensorList, TensorList]]


def signatures_of(defs: get_model_metadata_pb2.SignatureDefMap) -> Signatures:
    """Each signature's inputs and outputs (TF Serving's metadata, gRPC or REST)."""
    return {
        name: (_listed(signature.inputs), _listed(signature.outputs))
        for name, signature in defs.signature_def.items()
    }


def _listed(tensors: Mapping[str, meta_graph_pb2.TensorInfo]) -> TensorList:
    listed: TensorList = []
    for name, info in tensors.items():
        dtype = DTYPES.get(info.dtype)
        if dtype is None:
            raise DecodeError(f"tensor {name!r}: dtype {info.dtype} is not supported")
        shape = info.tensor_shape
        listed.append((name, dtype, None if shape.unknown_rank else [d.size for d in shape.dim]))
    return listed
