"""KServe V2's ``inference.GRPCInferenceService``: typed or raw inputs, raw outputs.

A requested output with the parameter ``classification``: K (tritonclient's
``class_count``) comes back as its top K classes.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc
from google.protobuf import json_format

from streaminfer.codecs.protowire import Buffer, Taken
from streaminfer.codecs.v2 import infer_response_bytes, parse_infer_request, read_grpc_tensors
from streaminfer.models.errors import ModelNotFound
from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from streaminfer.protos.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from streaminfer.serving import kserve_messages as messages
from streaminfer.serving.classification import PARAMETER as CLASSIFICATION
from streaminfer.serving.classification import class_count
from streaminfer.serving.dataplane import DataPlane
from streaminfer.serving.grpc_services import add_servicer, check_answer_size, rpc
from streaminfer.serving.metrics import ServerMetrics

PROTOCOL = "kserve_grpc"
Context: TypeAlias = grpc.aio.ServicerContext
SERVICE = "inference.GRPCInferenceService"
SERVICES = (SERVICE,)  # for the health service
# A ModelInfer request without its tensor data, and that (parse_infer_request).
InferCall: TypeAlias = tuple[v2.ModelInferRequest, list[Buffer], list[Taken]]


class InferenceService(v2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane, metrics: ServerMetrics, max_answer_bytes: int) -> None:
        self._plane = plane
        self._metrics = metrics
        self._max_answer_bytes = max_answer_bytes

    @rpc
    async def ServerLive(
        self, request: v2.ServerLiveRequest, context: Context
    ) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    @rpc
    async def ServerReady(
        self, request: v2.ServerReadyRequest, context: Context
    ) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=self._plane.ready)

    @rpc
    async def ModelReady(
        self, request: v2.ModelReadyRequest, context: Context
    ) -> v2.ModelReadyResponse:
        version = messages.parse_version(request.version)
        try:
            model = self._plane.model(request.name, version)
        except ModelNotFound:
            return v2.ModelReadyResponse(ready=False)
        return v2.ModelReadyResponse(ready=model.ready)

    @rpc
    async def ServerMetadata(
        self, request: v2.ServerMetadataRequest, context: Context
    ) -> v2.ServerMetadataResponse:
        return json_format.ParseDict(
            messages.server_metadata(self._plane), v2.ServerMetadataResponse()
        )

    @rpc
    async def ModelMetadata(
        self, request: v2.ModelMetadataRequest, context: Context
    ) -> v2.ModelMetadataResponse:
        model = self._plane.model(request.name, messages.parse_version(request.version))
        return json_format.ParseDict(
            messages.model_metadata(self._plane, model), v2.ModelMetadataResponse()
        )

    @rpc
    async def ModelConfig(
        self, request: v2.ModelConfigRequest, context: Context
    ) -> v2.ModelConfigResponse:
        model = self._plane.model(request.name, messages.parse_version(request.version))
        return json_format.ParseDict(
            {"config": messages.model_config(model)}, v2.ModelConfigResponse()
        )

    @rpc
    async def ModelInfer(self, call: InferCall, context: Context) -> bytes:
        request, raw_inputs, read_apart = call
        with self._metrics.track(PROTOCOL, request.model_name) as observation:
            version = messages.parse_version(request.model_version)
            model = self._plane.model(request.model_name, version)  # NOT_FOUND first
            model.check_declared_rows(tensor.shape for tensor in request.inputs)
            outputs = await model.infer(
                read_grpc_tensors(request.inputs, raw_inputs, "input", read_apart),
                output_filter=[output.name for output in request.outputs],
                top_k=messages.top_k_parameter(_parameters(request.parameters)),
                classification=_classification(request.outputs),
            )
            observation.version = str(model.version)
            check_answer_size(outputs, self._max_answer_bytes)
            response = v2.ModelInferResponse(
                model_name=model.name, model_version=observation.version, id=request.id
            )
            return infer_response_bytes(response, outputs)


def _classification(outputs: Any) -> dict[str, int]:
    """Each requested output's ``classification`` count, for those that ask for one."""
    counts = {
        output.name: class_count(_parameters(output.parameters).get(CLASSIFICATION), output.name)
        for output in outputs
    }
    return {name: count for name, count in counts.items() if count is not None}


def _parameters(parameters: Any) -> dict[str, Any]:
    return {
        key: getattr(value, value.WhichOneof("parameter_choice"))
        for key, value in parameters.items()
        if value.WhichOneof("parameter_choice")
    }


def add_services(
    server: grpc.aio.Server, plane: DataPlane, metrics: ServerMetrics, max_answer_bytes: int
) -> None:
    # ModelInfer reads its tensors as views of the received bytes and writes its answer's
    # once: protobuf does not copy them.
    add_servicer(
        server,
        SERVICE,
        v2_grpc.add_GRPCInferenceServiceServicer_to_server,
        InferenceService(plane, metrics, max_answer_bytes),
        {"ModelInfer": parse_infer_request},
    )
