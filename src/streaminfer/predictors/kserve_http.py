"""KServe V2 / Open Inference Protocol over HTTP: ``POST /v2/models/{m}[/versions/{v}]/infer``.

Requests use the binary tensor extension (Triton's, also spoken by our server): a JSON
header of ``Inference-Header-Content-Length`` bytes, then every input's raw bytes, so
neither images nor float tensors are ever spelled out in JSON.  Answers are read in
either form, binary or plain JSON.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

import numpy as np

from streaminfer.errors import InfrastructureError
from streaminfer.models.postprocess import Prediction
from streaminfer.predictors.http_transport import HttpTransport, parse_json
from streaminfer.predictors.remote import (
    IMAGES_INPUT,
    TOP_K_PARAMETER,
    RemoteOptions,
    RemotePredictor,
    numbered_version,
    rank_from_classes,
    version_number,
)
from streaminfer.predictors.wire import v2_array, v2_datatype, v2_dtype, v2_pack_bytes, v2_raw
from streaminfer.types import ModelRef, Tensors

HEADER_LENGTH = "inference-header-content-length"


class KServeHttpPredictor(RemotePredictor):
    mode = "kserve-http"

    def __init__(self, target: str, options: RemoteOptions | None = None) -> None:
        super().__init__(target, options)
        self._http = HttpTransport(target, self.options)

    def close(self) -> None:
        self._http.close()

    def _infer_images(
        self, ref: ModelRef, images: list[bytes], top_k: int | None
    ) -> tuple[int, list[list[Prediction]]]:
        inputs = [(IMAGES_INPUT, "BYTES", [len(images)], v2_pack_bytes(images))]
        parameters = {} if top_k is None else {TOP_K_PARAMETER: top_k}
        version, outputs = self._infer(ref, inputs, parameters)
        return version, rank_from_classes(outputs, len(images), self.target)

    def _infer_tensors(self, ref: ModelRef, inputs: Tensors) -> tuple[int, Tensors]:
        described = [(name, v2_datatype(a), list(a.shape), v2_raw(a)) for name, a in inputs.items()]
        return self._infer(ref, described, {})

    def _infer(
        self,
        ref: ModelRef,
        inputs: list[tuple[str, str, list[int], bytes]],
        parameters: dict[str, Any],
    ) -> tuple[int, Tensors]:
        header = {
            "inputs": [
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": shape,
                    "parameters": {"binary_data_size": len(raw)},
                }
                for name, datatype, shape, raw in inputs
            ],
            "parameters": {**parameters, "binary_data_output": True},
        }
        encoded = json.dumps(header, separators=(",", ":")).encode()
        response = self._http.post(
            _path(ref),
            b"".join([encoded, *(raw for *_, raw in inputs)]),
            {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(encoded))},
        )
        return _decode(response.content, response.headers.get(HEADER_LENGTH), self.target)


def _path(ref: ModelRef) -> str:
    name = quote(ref.name, safe="")
    version = numbered_version(ref, "KServe V2")
    return f"/v2/models/{name}/versions/{version}/infer" if version else f"/v2/models/{name}/infer"


def _decode(content: bytes, header_length: str | None, where: str) -> tuple[int, Tensors]:
    """The outputs of a V2 answer, binary extension or plain JSON."""
    split = int(header_length) if header_length else len(content)
    answer = parse_json(content[:split], where)
    binary = memoryview(content)[split:]
    outputs: Tensors = {}
    try:
        for output in answer.get("outputs") or []:
            name, datatype, shape = output["name"], output["datatype"], tuple(output["shape"])
            size = (output.get("parameters") or {}).get("binary_data_size")
            if size is not None:
                outputs[name] = v2_array(datatype, shape, bytes(binary[:size]))
                binary = binary[size:]
            else:
                outputs[name] = _from_json(datatype, shape, output["data"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InfrastructureError(f"{where}: malformed V2 answer: {exc!r}") from exc
    if not outputs:
        raise InfrastructureError(f"{where}: the answer has no outputs")
    return version_number(str(answer.get("model_version", ""))), outputs


def _from_json(datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    if datatype == "BYTES":
        values = [_text_or_b64(v) for v in _flatten(data)]
        return np.array(values, dtype=object).reshape(shape)
    return np.asarray(data, dtype=v2_dtype(datatype)).reshape(shape)


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    return [leaf for item in data for leaf in _flatten(item)]


def _text_or_b64(value: Any) -> bytes:
    if isinstance(value, dict) and "b64" in value:
        return base64.b64decode(value["b64"])
    return str(value).encode()
