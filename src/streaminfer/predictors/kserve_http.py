"""KServe V2 / Open Inference Protocol over HTTP: ``POST /v2/models/{m}[/versions/{v}]/infer``.

Requests are plain V2 JSON unless the server lists the binary tensor extension
(``binary_tensor_data`` in ``GET /v2``; Triton and our server do, MLServer does not), or
``v2_binary`` forces a choice.  With it, a JSON header of
``Inference-Header-Content-Length`` bytes is followed by every input's raw bytes, so
neither images nor float tensors are spelled out in JSON.  Answers are read in either
form.  A model's inputs come from ``GET /v2/models/{m}``, health from ``/v2/health/ready``.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import quote

from streaminfer.codecs.errors import DecodeError
from streaminfer.codecs.v2 import numpy_dtype
from streaminfer.codecs.v2_json import (
    HEADER_LENGTH,
    join_body,
    read_tensors,
    split_body,
    write_tensors,
)
from streaminfer.errors import StreamInferError
from streaminfer.models.postprocess import Prediction
from streaminfer.predictors.http_transport import HttpTransport
from streaminfer.predictors.remote import (
    TOP_K_PARAMETER,
    RemoteOptions,
    RemotePredictor,
    numbered_version,
    rank_from_classes,
    version_number,
)
from streaminfer.predictors.signature import (
    ServedModel,
    TensorList,
    v2_model,
    v2_model_with_image_entry,
)
from streaminfer.types import ModelRef, Tensors

BINARY_EXTENSION = "binary_tensor_data"


class KServeHttpPredictor(RemotePredictor):
    mode = "kserve-http"

    def __init__(self, target: str, options: RemoteOptions | None = None) -> None:
        super().__init__(target, options)
        self._http = HttpTransport(target, self.options)
        self._binary: bool | None = {"auto": None, "always": True, "never": False}[
            self.options.v2_binary
        ]
        self._binary_lock = threading.Lock()

    def close(self) -> None:
        super().close()
        self._http.close()

    def ready(self) -> bool:
        try:
            self._http.get("/v2/health/ready")
        except StreamInferError:
            return False
        return True

    def _read_metadata(self, ref: ModelRef) -> ServedModel:
        return v2_model_with_image_entry(ref, self._model_metadata)

    def _model_metadata(self, ref: ModelRef) -> ServedModel:
        answer = self._http.get_json(_path(ref, ""))
        try:
            inputs, outputs = _listed(answer["inputs"]), _listed(answer["outputs"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"the metadata of {ref.name!r} lists no tensors: {exc}") from exc
        return v2_model(inputs, outputs, self._config_rows(ref))

    def _config_rows(self, ref: ModelRef) -> int | None:
        """The server's limit on a request's rows, from the model configuration it serves
        (Triton's extension of the V2 API, which ours serves too; servers without it answer
        404, and state no limit)."""
        try:
            config = self._http.get_json(_path(ref, "/config"))
        except StreamInferError:
            return None
        return self._stated_limit(ref, config.get("max_batch_size"))

    def _speaks_binary(self) -> bool:
        """Whether the server lists the binary tensor extension (asked once)."""
        with self._binary_lock:
            if self._binary is None:
                extensions = self._http.get_json("/v2").get("extensions") or []
                self._binary = BINARY_EXTENSION in extensions
            return self._binary

    def _infer_images(
        self, ref: ModelRef, served: ServedModel, images: list[bytes], top_k: int | None
    ) -> tuple[int, list[list[Prediction]]]:
        assert served.image_input is not None
        parameters = {} if top_k is None else {TOP_K_PARAMETER: top_k}
        inputs = {served.image_input: served.image_batch(images)}
        ref = served.image_ref(ref)
        version, outputs = self._infer(ref, inputs, parameters)
        return version, rank_from_classes(outputs, len(images), self.target)

    def _infer_tensors(
        self, ref: ModelRef, inputs: Tensors, output_filter: tuple[str, ...] = ()
    ) -> tuple[int, Tensors]:
        return self._infer(ref, inputs, {}, output_filter)

    def _infer(
        self,
        ref: ModelRef,
        inputs: Tensors,
        parameters: dict[str, Any],
        output_filter: tuple[str, ...] = (),
    ) -> tuple[int, Tensors]:
        speaks_binary = self._speaks_binary()
        described, chunks = write_tensors(inputs, binary=speaks_binary)
        if speaks_binary:
            parameters = {**parameters, "binary_data_output": True}
        header: dict[str, Any] = {"inputs": described}
        if output_filter:
            header["outputs"] = [{"name": name} for name in output_filter]
        if parameters:
            header["parameters"] = parameters
        response = self._http.post(_path(ref, "/infer"), *join_body(header, chunks))
        answer, binary = split_body(response.content, response.headers.get(HEADER_LENGTH))
        if not isinstance(answer, dict):
            raise DecodeError("the answer is not a JSON object")
        outputs = read_tensors(answer.get("outputs"), binary, "output")
        return version_number(str(answer.get("model_version", ""))), outputs


def _path(ref: ModelRef, suffix: str) -> str:
    name = quote(ref.name, safe="")
    version = numbered_version(ref, "KServe V2")
    base = f"/v2/models/{name}/versions/{version}" if version else f"/v2/models/{name}"
    return base + suffix


def _listed(tensors: Any) -> TensorList:
    return [(t["name"], numpy_dtype(t["name"], t["datatype"]), list(t["shape"])) for t in tensors]
