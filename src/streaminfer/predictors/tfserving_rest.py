"""TensorFlow Serving's REST API: ``POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict``.

Images travel base64-encoded (``{"b64": ...}``) in the columnar ``inputs`` format, N per
request; tensors as JSON lists, the only encoding this API has.  A model's signatures come
from ``GET .../metadata``, which also serves as the health probe.
"""

from __future__ import annotations

from urllib.parse import quote

import numpy as np
from google.protobuf import json_format

from streaminfer.codecs.errors import DecodeError
from streaminfer.codecs.jsonvalues import to_json
from streaminfer.codecs.numbers import ascii_int
from streaminfer.codecs.tfserving_json import MODEL_VERSION_HEADER, UNNAMED, read_columns
from streaminfer.errors import InfrastructureError
from streaminfer.models.postprocess import Prediction
from streaminfer.predictors.http_transport import HttpTransport, parse_json
from streaminfer.predictors.remote import (
    TOP_K_PARAMETER,
    RemoteOptions,
    RemotePredictor,
    rank_from_classes,
)
from streaminfer.predictors.signature import ServedModel, tf_model
from streaminfer.predictors.tfserving_grpc import SIGNATURE_DEF_FIELD, signatures_of
from streaminfer.protos.tfserving import get_model_metadata_pb2
from streaminfer.types import ModelRef, Tensors


class TFServingRestPredictor(RemotePredictor):
    mode = "tfserving-rest"

    def __init__(self, target: str, options: RemoteOptions | None = None) -> None:
        super().__init__(target, options)
        self._http = HttpTransport(target, self.options)

    def close(self) -> None:
        super().close()
        self._http.close()

    def ready(self) -> bool:
        return self._model_answers()

    def _read_metadata(self, ref: ModelRef) -> ServedModel:
        answer = self._http.get_json(_path(ref, "/metadata"))
        defs = get_model_metadata_pb2.SignatureDefMap()
        try:
            json_format.ParseDict(
                answer["metadata"][SIGNATURE_DEF_FIELD], defs, ignore_unknown_fields=True
            )
        except (KeyError, TypeError, json_format.ParseError) as exc:
            raise DecodeError(f"the metadata of {ref.name!r} has no signatures: {exc}") from exc
        return tf_model(signatures_of(defs), self.options.signature_name)

    def _infer_images(
        self, ref: ModelRef, served: ServedModel, images: list[bytes], top_k: int | None
    ) -> tuple[int, list[list[Prediction]]]:
        assert served.image_input is not None
        inputs = {served.image_input: served.image_batch(images)}
        if top_k is not None:
            inputs[TOP_K_PARAMETER] = np.asarray(top_k)
        version, outputs = self._predict(ref, inputs, served.image_signature)
        return version, rank_from_classes(outputs, len(images), self.target)

    def _infer_tensors(
        self, ref: ModelRef, inputs: Tensors, output_filter: tuple[str, ...] = ()
    ) -> tuple[int, Tensors]:
        # The REST API cannot ask for some outputs: the answer has all, the caller picks.
        return self._predict(ref, inputs, None)

    def _predict(
        self, ref: ModelRef, inputs: Tensors, signature: str | None
    ) -> tuple[int, Tensors]:
        body = {
            "signature_name": signature or self.options.signature_name,
            "inputs": {name: to_json(array, b64=True) for name, array in inputs.items()},
        }
        response = self._http.post_json(_path(ref, ":predict"), body)
        answer = parse_json(response.content, self.target, tensors=True)
        if "outputs" not in answer:
            raise InfrastructureError(f"{self.target}: the answer has no 'outputs'")
        outputs = read_columns(answer["outputs"], "outputs")
        if UNNAMED in outputs:  # the one output of a model comes without its name
            outputs = {self._only_output(ref): outputs[UNNAMED]}
        # TF Serving does not say which version answered; streaminfer's server adds a header.
        served = ascii_int(response.headers.get(MODEL_VERSION_HEADER, ""))
        version = (ref.version or 0) if served is None else served
        return version, outputs

    def _only_output(self, ref: ModelRef) -> str:
        """The name of a single-output model's output, from its metadata."""
        outputs = self._metadata.get(ref).outputs
        if len(outputs) != 1:
            raise InfrastructureError(f"{self.target}: no single output in {ref.name!r}'s metadata")
        return outputs[0].name


def _path(ref: ModelRef, suffix: str) -> str:
    name = quote(ref.name, safe="")
    if ref.version is not None:
        return f"/v1/models/{name}/versions/{ref.version}{suffix}"
    if ref.label is not None:
        return f"/v1/models/{name}/labels/{quote(ref.label, safe='')}{suffix}"
    return f"/v1/models/{name}{suffix}"
