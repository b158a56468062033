"""TF Serving's gRPC services: PredictionService, ModelService and the legacy InceptionService."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import grpc

from streaminfer.codecs.protowire import Taken
from streaminfer.codecs.tfserving import (
    from_tensor_proto,
    parse_predict_request,
    predict_response_bytes,
)
from streaminfer.models.model_config import ModelConfig
from streaminfer.protos.tfserving import (
    error_codes_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inception_pb2,
    inception_pb2_grpc,
    inference_pb2,
    model_management_pb2,
    model_server_config_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)
from streaminfer.serving import tfserving_messages as messages
from streaminfer.serving.dataplane import DEFAULT_SIGNATURE, DataPlane
from streaminfer.serving.errors import Unimplemented
from streaminfer.serving.grpc_services import add_servicer, check_answer_size, rpc
from streaminfer.serving.metrics import ServerMetrics

PROTOCOL = "tfserving_grpc"
LEGACY_PROTOCOL = "inception_grpc"
LEGACY_TOP_K = 5
Context: TypeAlias = grpc.aio.ServicerContext
SERVICES = (  # what add_services serves, by the names the health service answers for
    "tensorflow.serving.PredictionService",
    "tensorflow.serving.ModelService",
    "tensorflow.serving.InceptionService",
)
# A Predict request without the tensor data read apart, and that by input (parse_predict_request).
PredictCall: TypeAlias = tuple[predict_pb2.PredictRequest, dict[str, Taken]]
ConfigConverter = Callable[[model_server_config_pb2.ModelServerConfig], list[ModelConfig]]


def _unimplemented(method: str) -> Unimplemented:
    return Unimplemented(
        f"{method} works on tf.Example inputs, which this server's ONNX models do not take; "
        "use Predict"
    )


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, plane: DataPlane, metrics: ServerMetrics, max_answer_bytes: int) -> None:
        self._plane = plane
        self._metrics = metrics
        self._max_answer_bytes = max_answer_bytes

    @rpc
    async def Predict(self, call: PredictCall, context: Context) -> bytes:
        request, contents = call
        name, version, label = messages.spec_target(request.model_spec)
        with self._metrics.track(PROTOCOL, name) as observation:
            model = self._plane.model(name, version, label)  # NOT_FOUND before INVALID_ARGUMENT
            signature = request.model_spec.signature_name
            model.check_declared_rows(
                [d.size for d in tensor.tensor_shape.dim] for tensor in request.inputs.values()
            )
            outputs = await model.infer(
                {
                    key: from_tensor_proto(key, tensor, contents.get(key))
                    for key, tensor in request.inputs.items()
                },
                signature,
                output_filter=list(request.output_filter),
            )
            observation.version = str(model.version)
            check_answer_size(outputs, self._max_answer_bytes)
            response = predict_pb2.PredictResponse(
                model_spec=messages.answered_spec(
                    model.name, model.version, signature or DEFAULT_SIGNATURE
                )
            )
            return predict_response_bytes(response, outputs)

    @rpc
    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: Context
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        messages.check_metadata_fields(list(request.metadata_field))
        model = self._plane.model(*messages.spec_target(request.model_spec))
        return messages.metadata_response(model)

    @rpc
    async def Classify(
        self, request: inference_pb2.ClassificationRequest, context: Context
    ) -> inference_pb2.ClassificationResponse:
        self._plane.model(*messages.spec_target(request.model_spec))  # NOT_FOUND first
        raise _unimplemented("Classify")

    @rpc
    async def Regress(
        self, request: inference_pb2.RegressionRequest, context: Context
    ) -> inference_pb2.RegressionResponse:
        self._plane.model(*messages.spec_target(request.model_spec))  # NOT_FOUND first
        raise _unimplemented("Regress")

    @rpc
    async def MultiInference(
        self, request: inference_pb2.MultiInferenceRequest, context: Context
    ) -> inference_pb2.MultiInferenceResponse:
        raise _unimplemented("MultiInference")


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, plane: DataPlane, to_configs: ConfigConverter) -> None:
        self._plane = plane
        self._to_configs = to_configs

    @rpc
    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: Context
    ) -> get_model_status_pb2.GetModelStatusResponse:
        return messages.model_status(self._plane, *messages.spec_target(request.model_spec))

    @rpc
    async def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: Context
    ) -> model_management_pb2.ReloadConfigResponse:
        await self._plane.set_configs(self._to_configs(request.config))
        return model_management_pb2.ReloadConfigResponse(
            status=status_pb2.StatusProto(error_code=error_codes_pb2.OK)
        )


class InceptionService(inception_pb2_grpc.InceptionServiceServicer):
    """The seed's Java demo API: one JPEG in, the default image model's top 5 out."""

    def __init__(self, plane: DataPlane, metrics: ServerMetrics) -> None:
        self._plane = plane
        self._metrics = metrics

    @rpc
    async def Classify(
        self, request: inception_pb2.InceptionRequest, context: Context
    ) -> inception_pb2.InceptionResponse:
        name = self._plane.default_image_model()
        with self._metrics.track(LEGACY_PROTOCOL, name) as observation:
            model = self._plane.model(name)
            outputs = await model.classify([request.jpeg_encoded], LEGACY_TOP_K)
            observation.version = str(model.version)
            return inception_pb2.InceptionResponse(
                scores=outputs["scores"][0].tolist(),
                classes=[label.decode() for label in outputs["classes"][0]],
            )


def add_services(
    server: grpc.aio.Server,
    plane: DataPlane,
    metrics: ServerMetrics,
    to_configs: ConfigConverter,
    max_answer_bytes: int,
) -> None:
    # Predict reads its tensor_content as views of the received bytes and writes its
    # answer's once: protobuf does not copy them.
    add_servicer(
        server,
        SERVICES[0],
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server,
        PredictionService(plane, metrics, max_answer_bytes),
        {"Predict": parse_predict_request},
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelService(plane, to_configs), server
    )
    inception_pb2_grpc.add_InceptionServiceServicer_to_server(
        InceptionService(plane, metrics), server
    )
