"""KServe V2 (Open Inference Protocol) over REST, with Triton's binary-tensor extension.

With the extension, the body is a JSON header of ``Inference-Header-Content-Length``
bytes followed by raw tensors; an input or output marks its share with the parameter
``binary_data_size``.  Outputs are binary when asked per output (``binary_data``) or
for all (``binary_data_output``), as tritonclient does by default.  A requested output
with the parameter ``classification``: K comes back as its top K classes.  A large body
is decoded in the data plane's decoder process, so it never holds up the event loop.
"""

from __future__ import annotations

from collections.abc import Set
from typing import Any

from aiohttp import web

from streaminfer.codecs.jsonvalues import json_object
from streaminfer.codecs.v2_json import (
    HEADER_LENGTH,
    join_body,
    read_tensors,
    split_body,
    write_tensors,
)
from streaminfer.handlers import Record
from streaminfer.serving import kserve_messages as messages
from streaminfer.serving.classification import PARAMETER as CLASSIFICATION
from streaminfer.serving.classification import class_count
from streaminfer.serving.dataplane import DataPlane, ModelHandle, request_record
from streaminfer.serving.errors import InvalidRequest, Unavailable
from streaminfer.serving.metrics import ServerMetrics
from streaminfer.serving.request_body import read_body
from streaminfer.serving.responses import json_response
from streaminfer.types import Tensors

PROTOCOL = "kserve_rest"
MODEL = "/v2/models/{model}"
VERSION = "/v2/models/{model}/versions/{version}"


class KServeRest:
    def __init__(self, plane: DataPlane, metrics: ServerMetrics) -> None:
        self._plane = plane
        self._metrics = metrics

    def routes(self) -> list[web.RouteDef]:
        routes = [
            web.get("/v2/health/live", self._live),
            web.get("/v2/health/ready", self._ready),
            web.get("/v2", self._server_metadata),
        ]
        for base in (MODEL, VERSION):
            routes += [
                web.get(base, self._model_metadata),
                web.get(base + "/ready", self._model_ready),
                web.get(base + "/config", self._model_config),
                web.post(base + "/infer", self._infer),
            ]
        return routes

    async def _live(self, request: web.Request) -> web.Response:
        return json_response({"live": True})

    async def _ready(self, request: web.Request) -> web.Response:
        if not self._plane.ready:
            raise Unavailable("the server is shutting down")
        return json_response({"ready": True})

    async def _server_metadata(self, request: web.Request) -> web.Response:
        return json_response(messages.server_metadata(self._plane))

    async def _model_metadata(self, request: web.Request) -> web.Response:
        model = self._plane.model(*_target(request))
        return json_response(messages.model_metadata(self._plane, model))

    async def _model_config(self, request: web.Request) -> web.Response:
        model = self._plane.model(*_target(request))
        return json_response(messages.model_config(model))

    async def _model_ready(self, request: web.Request) -> web.Response:
        model = self._plane.model(*_target(request))
        if not model.ready:
            raise Unavailable(f"model {model.name!r} is not ready: the server is shutting down")
        return json_response({"name": model.name, "ready": True})

    async def _infer(self, request: web.Request) -> web.Response:
        name, version = _target(request)
        with self._metrics.track(PROTOCOL, name) as observation:
            model = self._plane.model(name, version)  # an unknown model is 404 whatever the body
            body = await read_body(request)
            length = request.headers.get(HEADER_LENGTH)
            if self._plane.handler is None:
                document, inputs = await self._plane.decode(_decode, body, length)
                response = await _infer(model, document, inputs)
            else:
                response = await _handled(model, request_record(body, request.headers), length)
            observation.version = str(model.version)
            return response


def _document(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    document, binary = split_body(body, header_length)
    if not isinstance(document, dict):
        raise InvalidRequest('the body must be a JSON object with "inputs"')
    return document, binary


async def _infer(model: ModelHandle, document: dict[str, Any], inputs: Tensors) -> web.Response:
    parameters = json_object(document.get("parameters", {}), "parameters")
    wanted, binary_outputs, classes = _requested_outputs(document, parameters)
    outputs = await model.infer(
        inputs,
        output_filter=wanted,
        top_k=messages.top_k_parameter(parameters),
        classification=classes,
    )
    return _reply(model, document, outputs, binary_outputs)


async def _handled(model: ModelHandle, record: Record, header_length: str | None) -> web.Response:
    """The request through the server's handler; the usual format where it has no hook."""
    document: dict[str, Any] = {}

    def read(body: bytes) -> Tensors:
        nonlocal document
        document, binary = _document(body, header_length)
        return read_tensors(document.get("inputs"), binary, "input")

    answer = await model.handle(record, read)
    if isinstance(answer, bytes):
        return web.Response(body=answer, content_type="application/json")
    return _reply(model, document, answer, False)


def _reply(
    model: ModelHandle, document: dict[str, Any], outputs: Tensors, binary: bool | Set[str]
) -> web.Response:
    reply: dict[str, Any] = {"model_name": model.name, "model_version": str(model.version)}
    if isinstance(document.get("id"), str):
        reply["id"] = document["id"]
    reply["outputs"], chunks = write_tensors(outputs, binary)
    if not chunks:
        return json_response(reply)
    body, headers = join_body(reply, chunks)
    return web.Response(body=body, headers=headers)


def _decode(body: bytes, header_length: str | None) -> tuple[dict[str, Any], Tensors]:
    """The request's JSON document, without its inputs, and the input arrays (sent to
    the decoder process by name for a large body)."""
    document, binary = _document(body, header_length)
    inputs = read_tensors(document.pop("inputs", None), binary, "input")
    return document, inputs


def _target(request: web.Request) -> tuple[str, int | None]:
    return request.match_info["model"], messages.parse_version(
        request.match_info.get("version", "")
    )


def _requested_outputs(
    document: dict[str, Any], parameters: dict[str, Any]
) -> tuple[list[str], bool | Set[str], dict[str, int]]:
    """Names of the outputs asked for, which are binary (True: all of them), and the
    number of classes asked for each output to classify."""
    value = document.get("outputs", [])
    if not isinstance(value, list):
        raise InvalidRequest('"outputs" must be a list')
    names: list[str] = []
    binary: set[str] = set()
    classes: dict[str, int] = {}
    for item in value:
        output = json_object(item, "outputs[]")
        name = output.get("name")
        if not isinstance(name, str):
            raise InvalidRequest('every requested output needs a string "name"')
        names.append(name)
        asked = json_object(output.get("parameters", {}), "parameters")
        if asked.get("binary_data") is True:
            binary.add(name)
        count = class_count(asked.get(CLASSIFICATION), name)
        if count is not None:
            classes[name] = count
    return names, parameters.get("binary_data_output") is True or binary, classes
