"""TensorFlow Serving's REST API: ``POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict``.

Images travel base64-encoded (``{"b64": ...}``) in the columnar ``inputs`` format, N per
request; tensors as JSON lists, the only encoding this API has.
"""

from __future__ import annotations

import base64
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
    rank_from_classes,
)
from streaminfer.types import ModelRef, Tensors


class TFServingRestPredictor(RemotePredictor):
    mode = "tfserving-rest"

    def __init__(self, target: str, options: RemoteOptions | None = None) -> None:
        super().__init__(target, options)
        self._http = HttpTransport(target, self.options)
        self._output_names: dict[tuple[ModelRef, str], str] = {}

    def close(self) -> None:
        self._http.close()

    def _infer_images(
        self, ref: ModelRef, images: list[bytes], top_k: int | None
    ) -> tuple[int, list[list[Prediction]]]:
        inputs: dict[str, Any] = {
            IMAGES_INPUT: [{"b64": base64.b64encode(image).decode()} for image in images]
        }
        if top_k is not None:
            inputs[TOP_K_PARAMETER] = top_k
        version, outputs = self._predict(ref, inputs)
        return version, rank_from_classes(outputs, len(images), self.target)

    def _infer_tensors(self, ref: ModelRef, inputs: Tensors) -> tuple[int, Tensors]:
        return self._predict(ref, {name: a.tolist() for name, a in inputs.items()})

    def _predict(self, ref: ModelRef, inputs: dict[str, Any]) -> tuple[int, Tensors]:
        body = {"signature_name": self.options.signature_name, "inputs": inputs}
        response = self._http.post_json(_path(ref, ":predict"), body)
        answer = parse_json(response.content, self.target)
        outputs = answer.get("outputs")
        if outputs is None:
            raise InfrastructureError(f"{self.target}: the answer has no 'outputs'")
        if not isinstance(outputs, dict):  # the one output of a model comes without its name
            outputs = {self._only_output(ref): outputs}
        # TF Serving does not say which version answered; streaminfer's server adds a header.
        served = response.headers.get("x-model-version", "")
        version = int(served) if served.isdigit() else ref.version or 0
        return version, {name: np.asarray(value) for name, value in outputs.items()}

    def _only_output(self, ref: ModelRef) -> str:
        """The name of a single-output model's output, from its metadata (looked up once)."""
        key = (ref, self.options.signature_name)
        if key not in self._output_names:
            answer = self._http.get_json(_path(ref, "/metadata"))
            try:
                signatures = answer["metadata"]["signature_def"]["signature_def"]
                (name,) = signatures[self.options.signature_name]["outputs"]
            except (KeyError, TypeError, ValueError) as exc:
                raise InfrastructureError(
                    f"{self.target}: no single output in {ref.name!r}'s metadata"
                ) from exc
            self._output_names[key] = name
        return self._output_names[key]


def _path(ref: ModelRef, suffix: str) -> str:
    name = quote(ref.name, safe="")
    if ref.version is not None:
        return f"/v1/models/{name}/versions/{ref.version}{suffix}"
    if ref.label is not None:
        return f"/v1/models/{name}/labels/{quote(ref.label, safe='')}{suffix}"
    return f"/v1/models/{name}{suffix}"
