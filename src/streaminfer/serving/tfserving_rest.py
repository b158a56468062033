"""TF Serving's REST API: ``/v1/models/{model}[/versions/{v}|/labels/{l}][/metadata|:predict]``.

Predict takes the row format (``instances`` → ``predictions``) or the columnar one
(``inputs`` → ``outputs``); binary values are ``{"b64": "..."}``, and outputs whose
name ends in ``_bytes`` are sent that way, as TF Serving does.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from aiohttp import web

from streaminfer.serving import tfserving_messages as messages
from streaminfer.serving.dataplane import UNNAMED, DataPlane, InferRequest
from streaminfer.serving.errors import InvalidRequest, Unimplemented
from streaminfer.serving.json_codec import JSON, dumps, from_json, is_binary, parse_body, to_json
from streaminfer.serving.metrics import ServerMetrics
from streaminfer.types import Tensors

PROTOCOL = "tfserving_rest"
PREFIX = "/v1/models/"
_TARGET = re.compile(
    r"^(?P<model>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?$"
)
STATUS_PATH = re.compile(r"^/v1/models/[^/:]+(?:/(?:versions|labels)/[^/:]+)?$")
"""Model status, TF Serving's health check: open without a token."""


MODEL_VERSION_HEADER = "X-Model-Version"


def json_response(document: JSON, status: int = 200) -> web.Response:
    return web.Response(body=dumps(document), status=status, content_type="application/json")


class _Target:
    def __init__(self, path: str) -> None:
        match = _TARGET.match(path)
        if match is None:
            raise web.HTTPNotFound(text=f"no such endpoint: {PREFIX}{path}")
        self.model: str = match["model"]
        self.label: str | None = match["label"]
        self.version: int | None = None
        if match["version"] is not None:
            if not match["version"].isdigit():
                raise InvalidRequest(f"version must be an integer, not {match['version']!r}")
            self.version = int(match["version"])
        self.metadata = match["metadata"] is not None
        self.verb: str | None = match["verb"]


class TFServingRest:
    def __init__(self, plane: DataPlane, metrics: ServerMetrics) -> None:
        self._plane = plane
        self._metrics = metrics

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(PREFIX + "{path:.+}", self._get),
            web.post(PREFIX + "{path:.+}", self._post),
        ]

    async def _get(self, request: web.Request) -> web.Response:
        target = _Target(request.match_info["path"])
        if target.verb is not None:
            raise web.HTTPMethodNotAllowed("GET", ["POST"])
        if target.metadata:
            version = self._plane.resolve(target.model, target.version, target.label)
            return json_response(messages.metadata_json(version))
        status = messages.model_status(self._plane, target.model, target.version, target.label)
        return json_response(messages.as_json(status))

    async def _post(self, request: web.Request) -> web.Response:
        target = _Target(request.match_info["path"])
        if target.verb in ("classify", "regress"):
            raise Unimplemented(
                f":{target.verb} works on tf.Example inputs, which this server's ONNX models do "
                "not take; use :predict"
            )
        if target.verb != "predict":
            raise web.HTTPNotFound(text=f"no such endpoint: {request.path} (use :predict)")
        with self._metrics.track(PROTOCOL, target.model) as observation:
            self._plane.resolve(target.model, target.version, target.label)  # 404 before 400
            body = parse_body(await request.read())
            if not isinstance(body, dict):
                raise InvalidRequest('the body must be a JSON object with "instances" or "inputs"')
            inputs, row_format = _inputs(body)
            signature = body.get("signature_name", "")
            if not isinstance(signature, str):
                raise InvalidRequest('"signature_name" must be a string')
            result = await self._plane.infer(
                InferRequest(
                    target.model, inputs, target.version, target.label, signature=signature
                )
            )
            observation.version = str(result.version)
            body = (
                {"predictions": _rows(result.outputs)}
                if row_format
                else {"outputs": _columns(result.outputs)}
            )
            response = json_response(body)
            # TF Serving's body does not say which version answered; this header does.
            response.headers[MODEL_VERSION_HEADER] = str(result.version)
            return response


def _inputs(body: dict[str, Any]) -> tuple[Tensors, bool]:
    """The request's tensors, and whether it used the row format."""
    if ("instances" in body) == ("inputs" in body):
        raise InvalidRequest('give exactly one of "instances" (row format) or "inputs" (columnar)')
    if "inputs" in body:
        return _named_or_single(body["inputs"]), False
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise InvalidRequest('"instances" must be a non-empty list')
    if not all(isinstance(i, dict) and not is_binary(i) for i in instances):
        return {UNNAMED: from_json("instances", instances)}, True
    names = set(instances[0])
    if any(set(i) != names for i in instances):
        raise InvalidRequest("every instance must name the same inputs")
    return {name: from_json(name, [i[name] for i in instances]) for name in names}, True


def _named_or_single(value: JSON) -> Tensors:
    if isinstance(value, dict) and not is_binary(value):
        return {str(name): from_json(str(name), item) for name, item in value.items()}
    return {UNNAMED: from_json("inputs", value)}


def _json(name: str, array: np.ndarray) -> JSON:
    return to_json(array, b64=name.endswith("_bytes"))


def _rows(outputs: Tensors) -> JSON:
    if len(outputs) == 1:
        ((name, array),) = outputs.items()
        return _json(name, array)
    rows = {array.shape[0] for array in outputs.values()}
    if len(rows) != 1:
        raise InvalidRequest("outputs differ in batch size; use the columnar format (inputs)")
    columns = {name: _json(name, array) for name, array in outputs.items()}
    return [{name: column[i] for name, column in columns.items()} for i in range(rows.pop())]


def _columns(outputs: Tensors) -> JSON:
    if len(outputs) == 1:
        ((name, array),) = outputs.items()
        return _json(name, array)
    return {name: _json(name, array) for name, array in outputs.items()}
