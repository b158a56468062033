"""KServe V2 (Open Inference Protocol) over REST, with Triton's binary-tensor extension.

With the extension, the body is a JSON header of ``Inference-Header-Content-Length``
bytes followed by raw tensors; an input or output marks its share with the parameter
``binary_data_size``.  Outputs are binary when asked per output (``binary_data``) or
for all (``binary_data_output``), as tritonclient does by default.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from aiohttp import web

from streaminfer.serving import kserve_messages as messages
from streaminfer.serving.codec import from_raw, shaped, to_raw, v2_datatype, v2_numpy_dtype
from streaminfer.serving.dataplane import DataPlane, InferRequest
from streaminfer.serving.errors import InvalidRequest, Unavailable
from streaminfer.serving.json_codec import JSON, dumps, from_json, parse_body, to_json
from streaminfer.serving.metrics import ServerMetrics
from streaminfer.serving.tfserving_rest import json_response
from streaminfer.types import Tensors

PROTOCOL = "kserve_rest"
HEADER_LENGTH = "Inference-Header-Content-Length"
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
        version = self._plane.resolve(*_target(request))
        return json_response(messages.model_metadata(self._plane, version))

    async def _model_ready(self, request: web.Request) -> web.Response:
        name, version = _target(request)
        if not self._plane.model_ready(name, version):
            raise Unavailable(f"model {name!r} is not ready: the server is shutting down")
        return json_response({"name": name, "ready": True})

    async def _infer(self, request: web.Request) -> web.Response:
        name, version = _target(request)
        with self._metrics.track(PROTOCOL, name) as observation:
            self._plane.resolve(name, version)  # an unknown model is 404 whatever the body
            document, binary = _split_body(request, await request.read())
            if not isinstance(document, dict):
                raise InvalidRequest('the body must be a JSON object with "inputs"')
            parameters = _object(document.get("parameters", {}), "parameters")
            wanted, binary_outputs = _requested_outputs(document, parameters)
            result = await self._plane.infer(
                InferRequest(
                    name,
                    _inputs(document.get("inputs"), binary),
                    version,
                    output_filter=wanted,
                    top_k=messages.top_k_parameter(parameters),
                )
            )
            observation.version = str(result.version)
            reply: dict[str, Any] = {
                "model_name": result.model,
                "model_version": observation.version,
            }
            if isinstance(document.get("id"), str):
                reply["id"] = document["id"]
            return _response(reply, result.outputs, binary_outputs)


def _target(request: web.Request) -> tuple[str, int | None]:
    return request.match_info["model"], messages.parse_version(
        request.match_info.get("version", "")
    )


def _split_body(request: web.Request, body: bytes) -> tuple[JSON, bytes]:
    """The JSON header and the binary tensors after it (empty without the extension)."""
    length = request.headers.get(HEADER_LENGTH)
    if length is None:
        return parse_body(body), b""
    if not length.isdigit() or int(length) > len(body):
        raise InvalidRequest(
            f"{HEADER_LENGTH} {length[:20]!r} does not fit a {len(body)}-byte body"
        )
    return parse_body(body[: int(length)]), body[int(length) :]


def _object(value: JSON, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(f'"{what}" must be a JSON object')
    return value


def _inputs(value: JSON, binary: bytes) -> Tensors:
    if not isinstance(value, list) or not value:
        raise InvalidRequest('"inputs" must be a non-empty list of tensors')
    inputs: Tensors = {}
    offset = 0
    for item in value:
        tensor = _object(item, "inputs[]")
        name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise InvalidRequest('every input needs a string "name" and "datatype"')
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
            raise InvalidRequest(f'input {name!r}: "shape" must be a list of integers')
        if name in inputs:
            raise InvalidRequest(f"input {name!r} is given twice")
        dtype = v2_numpy_dtype(name, datatype)
        size = _object(tensor.get("parameters", {}), "parameters").get("binary_data_size")
        if size is not None:
            if not _is_int(size) or size < 0 or offset + size > len(binary):
                raise InvalidRequest(f"input {name!r}: binary_data_size {size!r} exceeds the body")
            inputs[name] = from_raw(name, dtype, shape, binary[offset : offset + size])
            offset += size
        elif "data" in tensor:
            inputs[name] = shaped(name, from_json(name, tensor["data"], dtype).ravel(), shape)
        else:
            raise InvalidRequest(f'input {name!r} has neither "data" nor binary_data_size')
    if offset != len(binary):
        raise InvalidRequest(f"{len(binary) - offset} bytes of binary data belong to no input")
    return inputs


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _requested_outputs(
    document: dict[str, Any], parameters: dict[str, Any]
) -> tuple[list[str], set[str] | bool]:
    """Names of the outputs asked for, and which are binary (True: all of them)."""
    value = document.get("outputs", [])
    if not isinstance(value, list):
        raise InvalidRequest('"outputs" must be a list')
    names: list[str] = []
    binary: set[str] = set()
    for item in value:
        output = _object(item, "outputs[]")
        name = output.get("name")
        if not isinstance(name, str):
            raise InvalidRequest('every requested output needs a string "name"')
        names.append(name)
        if _object(output.get("parameters", {}), "parameters").get("binary_data") is True:
            binary.add(name)
    return names, parameters.get("binary_data_output") is True or binary


def _response(reply: dict[str, Any], outputs: Tensors, binary: set[str] | bool) -> web.Response:
    chunks: list[bytes] = []
    described = []
    for name, array in outputs.items():
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": v2_datatype(array.dtype),
            "shape": list(array.shape),
        }
        if binary is True or (isinstance(binary, set) and name in binary):
            chunks.append(to_raw(array))
            tensor["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            tensor["data"] = to_json(np.ravel(array))
        described.append(tensor)
    reply["outputs"] = described
    header = dumps(reply)
    if not chunks:
        return web.Response(body=header, content_type="application/json")
    return web.Response(
        body=b"".join([header, *chunks]),
        content_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )
