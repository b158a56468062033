"""TF Serving's REST API: ``/v1/models/{model}[/versions/{v}|/labels/{l}][/metadata|:predict]``.

Predict takes the row format (``instances`` → ``predictions``) or the columnar one
(``inputs`` → ``outputs``); binary values are ``{"b64": "..."}``, and outputs whose
name ends in ``_bytes`` are sent that way, as TF Serving does.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from streaminfer.codecs.jsonvalues import JSON, loads
from streaminfer.codecs.numbers import ascii_int
from streaminfer.codecs.tfserving_json import (
    MODEL_VERSION_HEADER,
    read_columns,
    read_instances,
    tensor_json,
    write_columns,
)
from streaminfer.serving import tfserving_messages as messages
from streaminfer.serving.dataplane import DataPlane
from streaminfer.serving.errors import InvalidRequest, Unimplemented
from streaminfer.serving.metrics import ServerMetrics
from streaminfer.serving.responses import json_response
from streaminfer.types import Tensors

PROTOCOL = "tfserving_rest"
PREFIX = "/v1/models/"
_TARGET = re.compile(
    r"^(?P<model>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?$"
)
STATUS_PATH = re.compile(r"^/v1/models/[^/:]+(?:/(?:versions|labels)/[^/:]+)?$")
"""Model status, TF Serving's health check: open without a token."""


class _Target:
    def __init__(self, path: str) -> None:
        match = _TARGET.match(path)
        if match is None:
            raise web.HTTPNotFound(text=f"no such endpoint: {PREFIX}{path}")
        self.model: str = match["model"]
        self.label: str | None = match["label"]
        self.version: int | None = None
        if match["version"] is not None:
            self.version = ascii_int(match["version"])
            if self.version is None:
                raise InvalidRequest(f"version must be an integer, not {match['version'][:40]!r}")
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
            model = self._plane.model(target.model, target.version, target.label)
            return json_response(messages.metadata_json(model))
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
            model = self._plane.model(target.model, target.version, target.label)  # 404 first
            body = await request.read()
            inputs, row_format, signature = await self._plane.decode(_predict_request, body)
            outputs = await model.infer(inputs, signature)
            observation.version = str(model.version)
            answer = (
                {"predictions": _rows(outputs)}
                if row_format
                else {"outputs": write_columns(outputs)}
            )
            response = json_response(answer)
            # TF Serving's body does not say which version answered; this header does.
            response.headers[MODEL_VERSION_HEADER] = str(model.version)
            return response


def _predict_request(text: bytes) -> tuple[Tensors, bool, str]:
    """The inputs, whether they came in the row format, and the signature asked for.

    A large body is decoded in the data plane's decoder process, off the event loop.
    """
    body = loads(text)
    if not isinstance(body, dict):
        raise InvalidRequest('the body must be a JSON object with "instances" or "inputs"')
    if ("instances" in body) == ("inputs" in body):
        raise InvalidRequest('give exactly one of "instances" (row format) or "inputs" (columnar)')
    row_format = "instances" in body
    inputs = (
        read_instances(body["instances"]) if row_format else read_columns(body["inputs"], "inputs")
    )
    signature = body.get("signature_name", "")
    if not isinstance(signature, str):
        raise InvalidRequest('"signature_name" must be a string')
    return inputs, row_format, signature


def _rows(outputs: Tensors) -> JSON:
    """The row format of the answer: one entry per batch row (a bare value for one output)."""
    if len(outputs) == 1:
        ((name, array),) = outputs.items()
        return tensor_json(name, array)
    rows = {array.shape[0] for array in outputs.values()}
    if len(rows) != 1:
        raise InvalidRequest("outputs differ in batch size; use the columnar format (inputs)")
    columns: dict[str, Any] = {name: tensor_json(name, array) for name, array in outputs.items()}
    return [{name: column[i] for name, column in columns.items()} for i in range(rows.pop())]
