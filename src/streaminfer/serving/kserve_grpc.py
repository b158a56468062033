"""KServe V2's ``inference.GRPCInferenceService``: typed or raw inputs, raw outputs."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc
from google.protobuf import json_format

from streaminfer.models.errors import ModelNotFound
from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from streaminfer.protos.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from streaminfer.serving import kserve_messages as messages
from streaminfer.serving.codec import from_v2_input, to_v2_output
from streaminfer.serving.dataplane import DataPlane, InferRequest
from streaminfer.serving.errors import InvalidRequest
from streaminfer.serving.grpc_services import rpc
from streaminfer.serving.metrics import ServerMetrics

PROTOCOL = "kserve_grpc"
Context: TypeAlias = grpc.aio.ServicerContext


class InferenceService(v2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane, metrics: ServerMetrics) -> None:
        self._plane = plane
        self._metrics = metrics

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
            return v2.ModelReadyResponse(ready=self._plane.model_ready(request.name, version))
        except ModelNotFound:
            return v2.ModelReadyResponse(ready=False)

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
        version = self._plane.resolve(request.name, messages.parse_version(request.version))
        return json_format.ParseDict(
            messages.model_metadata(self._plane, version), v2.ModelMetadataResponse()
        )

    @rpc
    async def ModelInfer(
        self, request: v2.ModelInferRequest, context: Context
    ) -> v2.ModelInferResponse:
        with self._metrics.track(PROTOCOL, request.model_name) as observation:
            version = messages.parse_version(request.model_version)
            self._plane.resolve(request.model_name, version)  # NOT_FOUND before INVALID_ARGUMENT
            result = await self._plane.infer(
                InferRequest(
                    request.model_name,
                    _inputs(request),
                    version,
                    output_filter=[output.name for output in request.outputs],
                    top_k=messages.top_k_parameter(_parameters(request.parameters)),
                )
            )
            observation.version = str(result.version)
            response = v2.ModelInferResponse(
                model_name=result.model, model_version=observation.version, id=request.id
            )
            for name, array in result.outputs.items():
                tensor, raw = to_v2_output(name, array)
                response.outputs.append(tensor)
                response.raw_output_contents.append(raw)
            return response


def _inputs(request: v2.ModelInferRequest) -> dict[str, Any]:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequest(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; give one per input"
        )
    inputs = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in inputs:
            raise InvalidRequest(f"input {tensor.name!r} is given twice")
        inputs[tensor.name] = from_v2_input(tensor, raw[index] if raw else None)
    return inputs


def _parameters(parameters: Any) -> dict[str, Any]:
    return {
        key: getattr(value, value.WhichOneof("parameter_choice"))
        for key, value in parameters.items()
        if value.WhichOneof("parameter_choice")
    }


def add_services(server: grpc.aio.Server, plane: DataPlane, metrics: ServerMetrics) -> None:
    v2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(plane, metrics), server)
