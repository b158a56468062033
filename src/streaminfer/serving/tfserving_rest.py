"""TF Serving's REST API: ``/v1/models/{model}[/versions/{v}|/labels/{l}][/metadata|:predict]``.

Predict takes the row format (``instances`` → ``predictions``) or the columnar one
(``inputs`` → ``outputs``); binary values are ``{"b64": "..."}``, and outputs whose
name ends in ``_bytes`` are sent that way, as TF Serving does.
"""

from __future__ import annotations

import re

import numpy as np
from aiohttp import web

from streaminfer.codecs.arrays import cast_exactly
from streaminfer.codecs.jsonvalues import JSON, loads, loads_tensors
from streaminfer.codecs.numbers import ascii_int
from streaminfer.codecs.tfserving_json import (
    MODEL_VERSION_HEADER,
    read_columns,
    read_instances,
    tensor_json,
    write_columns,
)
from streaminfer.handlers import Record
from streaminfer.models.errors import InvalidInput
from streaminfer.serving import tfserving_messages as messages
from streaminfer.serving.dataplane import DataPlane, ModelHandle, request_record
from streaminfer.serving.errors import InvalidRequest, Unimplemented
from streaminfer.serving.metrics import ServerMetrics
from streaminfer.serving.request_body import read_body
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
            self._plane.model(target.model, target.version, target.label)  # 404 before 501
            raise Unimplemented(
                f":{target.verb} works on tf.Example inputs, which this server's ONNX models do "
                "not take; use :predict"
            )
        if target.verb != "predict":
            raise web.HTTPNotFound(text=f"no such endpoint: {request.path} (use :predict)")
        with self._metrics.track(PROTOCOL, target.model) as observation:
            model = self._plane.model(target.model, target.version, target.label)  # 404 first
            body = await read_body(request)
            if self._plane.handler is not None:
                response = await _handled(model, request_record(body, request.headers))
            else:
                response = await _predict(self._plane, model, body)
            observation.version = str(model.version)
            # TF Serving's body does not say which version answered; this header does.
            response.headers[MODEL_VERSION_HEADER] = str(model.version)
            return response


async def _predict(plane: DataPlane, model: ModelHandle, text: bytes | bytearray) -> web.Response:
    """Tensors in either format; for a tabular model also records of named values.

    A large body is decoded in the data plane's decoder process, off the event loop;
    a tabular model's body on the loop, as its records are read there.
    """
    if not model.tabular:
        read = await plane.decode(_read_predict_request, text, model.takes_float32_only)
        inputs, row_format, signature = read
        return json_response(_answer(await model.infer(inputs, signature), row_format))
    body = loads(text)
    if isinstance(body, dict) and model.takes_records(body.get("instances")):
        instances = body["instances"]
        assert isinstance(instances, list)  # takes_records checked it
        return json_response({"predictions": await model.predict_records(instances)})
    inputs, row_format, signature = _predict_request(body)
    return json_response(_answer(await model.infer(inputs, signature), row_format))


def _read_predict_request(text: bytes, float32_only: bool) -> tuple[Tensors, bool, str]:
    """``_predict_request`` of a body (sent to the decoder process by name).

    JSON floats are read as float64; for a model whose inputs are all float32 they are
    cast here, as its input check would cast them (refusing a value float32 cannot
    hold), so half the bytes come back.
    """
    inputs, row_format, signature = _predict_request(loads_tensors(text))
    if float32_only:
        inputs = {
            name: cast_exactly(name, array, np.dtype(np.float32), InvalidInput)
            if array.dtype == np.float64
            else array
            for name, array in inputs.items()
        }
    return inputs, row_format, signature


async def _handled(model: ModelHandle, record: Record) -> web.Response:
    """The request through the server's handler; the usual format where it has no hook."""
    row_format = True

    def read(body: bytes) -> Tensors:
        nonlocal row_format
        inputs, row_format, _ = _predict_request(loads_tensors(body))
        return inputs

    answer = await model.handle(record, read)
    if isinstance(answer, bytes):
        return web.Response(body=answer, content_type="application/json")
    return json_response(_answer(answer, row_format))


def _answer(outputs: Tensors, row_format: bool) -> JSON:
    return {"predictions": _rows(outputs)} if row_format else {"outputs": write_columns(outputs)}


def _predict_request(body: JSON) -> tuple[Tensors, bool, str]:
    """The inputs, whether they came in the row format, and the signature asked for."""
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
    return [
        {name: tensor_json(name, array[i, ...]) for name, array in outputs.items()}
        for i in range(rows.pop())
    ]
