"""KServe V2 / Open Inference Protocol over HTTP: ``POST /v2/models/{m}[/versions/{v}]/infer``.

Requests use the binary tensor extension (Triton's, also spoken by our server): a JSON
header of ``Inference-Header-Content-Length`` bytes, then every input's raw bytes, so
neither images nor float tensors are ever spelled out in JSON.  Answers are read in
either form, binary or plain JSON.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from streaminfer.codecs.arrays import bytes_array
from streaminfer.codecs.errors import DecodeError
from streaminfer.codecs.v2_json import (
    HEADER_LENGTH,
    join_body,
    read_tensors,
    split_body,
    write_tensors,
)
from streaminfer.models.postprocess import Prediction
from streaminfer.predictors.http_transport import HttpTransport
from streaminfer.predictors.remote import (
    IMAGES_INPUT,
    TOP_K_PARAMETER,
    RemoteOptions,
    RemotePredictor,
    numbered_version,
    rank_from_classes,
    version_number,
)
from streaminfer.types import ModelRef, Tensors


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
        parameters = {} if top_k is None else {TOP_K_PARAMETER: top_k}
        version, outputs = self._infer(ref, {IMAGES_INPUT: bytes_array(images)}, parameters)
        return version, rank_from_classes(outputs, len(images), self.target)

    def _infer_tensors(self, ref: ModelRef, inputs: Tensors) -> tuple[int, Tensors]:
        return self._infer(ref, inputs, {})

    def _infer(
        self, ref: ModelRef, inputs: Tensors, parameters: dict[str, Any]
    ) -> tuple[int, Tensors]:
        described, chunks = write_tensors(inputs, binary=True)
        header = {"inputs": described, "parameters": {**parameters, "binary_data_output": True}}
        response = self._http.post(_path(ref), *join_body(header, chunks))
        answer, binary = split_body(response.content, response.headers.get(HEADER_LENGTH))
        if not isinstance(answer, dict):
            raise DecodeError("the answer is not a JSON object")
        outputs = read_tensors(answer.get("outputs"), binary, "output")
        return version_number(str(answer.get("model_version", ""))), outputs


def _path(ref: ModelRef) -> str:
    name = quote(ref.name, safe="")
    version = numbered_version(ref, "KServe V2")
    return f"/v2/models/{name}/versions/{version}/infer" if version else f"/v2/models/{name}/infer"
