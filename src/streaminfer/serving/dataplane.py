"""The one data plane behind every door: resolve a model, run a request, describe a model.

The REST and gRPC adapters of TF Serving and KServe V2 translate their wire format into
an :class:`InferRequest` of numpy arrays and call :meth:`DataPlane.infer`; a fix made here
reaches every protocol.  Image models answer two kinds of request: their own float input
returns the model's outputs, encoded image bytes return ``classes`` and ``scores`` top-k.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from streaminfer import __version__
from streaminfer.models.metadata import Signature, TensorSpec
from streaminfer.models.model_config import ModelConfig
from streaminfer.models.pipeline import classify_async, preprocess_images
from streaminfer.models.registry import LoadedVersion, ModelRegistry
from streaminfer.serving.codec import BYTES
from streaminfer.serving.errors import DeadlineExceeded, InvalidRequest, Unavailable
from streaminfer.types import Tensors

UNNAMED = ""
"""Key of a tensor sent without a name (TF REST ``instances``): the model's only input."""

IMAGE_INPUT_NAMES = ("images", "image_bytes")
"""Names under which an image model accepts encoded images, besides its own input's name."""

DEFAULT_SIGNATURE = "serving_default"
IMAGE_SIGNATURES = ("serving_images", "predict_images")
TOP_K_INPUT = "top_k"
FALLBACK_IMAGE_MODEL = "efficientnet-lite0"


@dataclass
class InferRequest:
    """A request in wire-neutral terms; ``version`` and ``label`` are exclusive."""

    model: str
    inputs: Tensors
    version: int | None = None
    label: str | None = None
    signature: str = ""
    output_filter: list[str] = field(default_factory=list)
    top_k: int | None = None


@dataclass
class InferResult:
    model: str
    version: int
    outputs: Tensors


class DataPlane:
    def __init__(
        self,
        registry: ModelRegistry,
        default_model: str | None = None,
        decode_threads: int = 4,
        request_timeout: float = 30.0,
    ) -> None:
        self.request_timeout = request_timeout
        self.registry = registry
        self.server_name = "streaminfer"
        self.server_version = __version__
        self._default_model = default_model
        self._decode_pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="image-decode")
        self._accepting = True

    # -- health ------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._accepting

    def stop_accepting(self) -> None:
        """From now on inference requests get UNAVAILABLE; those in flight finish."""
        self._accepting = False

    def close(self) -> None:
        self._decode_pool.shutdown(wait=True)

    def model_ready(self, name: str, version: int | None = None, label: str | None = None) -> bool:
        self.registry.resolve(name, version, label)  # raises for unknown models and versions
        return self._accepting

    def resolve(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> LoadedVersion:
        return self.registry.resolve(name, version, label)

    def default_image_model(self) -> str:
        """The model the legacy Inception API classifies with."""
        if self._default_model:
            return self._default_model
        images = {v.name for v in self.registry if v.metadata.is_image_model}
        return images.pop() if len(images) == 1 else FALLBACK_IMAGE_MODEL

    # -- inference ---------------------------------------------------------------------------
    async def infer(self, request: InferRequest) -> InferResult:
        """Run one request within the server's deadline (504 / DEADLINE_EXCEEDED past it)."""
        try:
            return await asyncio.wait_for(self._infer(request), self.request_timeout)
        except TimeoutError as exc:
            raise DeadlineExceeded(
                f"the request took longer than the server's {self.request_timeout:g} s deadline"
            ) from exc

    async def _infer(self, request: InferRequest) -> InferResult:
        """Float tensors through the model, image bytes through classify."""
        if not self._accepting:
            raise Unavailable("the server is shutting down")
        version = self.registry.resolve(request.model, request.version, request.label)
        inputs = dict(request.inputs)
        top_k = _pop_top_k(inputs, request.top_k)
        images = self._image_input(version, inputs, request.signature)
        if images is not None:
            outputs = await self._classify(version, images, top_k)
        else:
            outputs = await version.infer_async(_named(version, inputs))
        return InferResult(version.name, version.version, _filtered(outputs, request.output_filter))

    async def classify(
        self, images: list[bytes], top_k: int | None = None, model: str | None = None
    ) -> InferResult:
        """Classify encoded images with an image model (the default one if none is named)."""
        if not self._accepting:
            raise Unavailable("the server is shutting down")
        version = self.registry.resolve(model or self.default_image_model())
        array = np.empty(len(images), dtype=BYTES)
        array[:] = images
        outputs = await self._classify(version, array, top_k)
        return InferResult(version.name, version.version, outputs)

    def _image_input(
        self, version: LoadedVersion, inputs: Tensors, signature: str
    ) -> np.ndarray | None:
        """The encoded images of a request, or None when it carries the model's own tensors."""
        wants_images = signature in IMAGE_SIGNATURES
        if signature and not wants_images and signature != DEFAULT_SIGNATURE:
            names = ", ".join(signatures(version))
            raise InvalidRequest(
                f"model {version.name!r} has no signature {signature!r} (signatures: {names})"
            )
        if not version.metadata.is_image_model:
            return None
        own = version.metadata.signature.inputs[0].name
        for name in (*IMAGE_INPUT_NAMES, own, UNNAMED):
            if name in inputs and inputs[name].dtype == BYTES:
                images = inputs.pop(name)
                if inputs:
                    raise InvalidRequest(
                        f"unexpected inputs {sorted(inputs)} beside the images input {name!r}"
                    )
                if images.ndim != 1:
                    raise InvalidRequest(
                        f"input {name!r}: encoded images must have shape [N], "
                        f"not {list(images.shape)}"
                    )
                return images
        if wants_images:
            raise InvalidRequest(
                f"signature {signature!r} takes encoded images as a string/BYTES tensor "
                f"of shape [N] named 'images'"
            )
        return None

    async def _classify(
        self, version: LoadedVersion, images: np.ndarray, top_k: int | None
    ) -> Tensors:
        encoded: list[bytes] = images.tolist()
        batch = await asyncio.to_thread(preprocess_images, version, encoded, self._decode_pool)
        ranked = await classify_async(version, batch, top_k)
        classes = np.empty((len(ranked), len(ranked[0]) if ranked else 0), dtype=BYTES)
        for row, predictions in enumerate(ranked):
            classes[row, :] = [p.label.encode() for p in predictions]
        scores = np.array([[p.score for p in row] for row in ranked], dtype=np.float32)
        class_ids = np.array([[p.class_id for p in row] for row in ranked], dtype=np.int64)
        return {
            "classes": classes,
            "scores": scores.reshape(classes.shape),
            "class_ids": class_ids.reshape(classes.shape),
        }

    # -- management --------------------------------------------------------------------------
    async def set_configs(self, configs: list[ModelConfig]) -> None:
        """Serve exactly the configured models (TF Serving's HandleReloadConfigRequest)."""
        await asyncio.to_thread(self.registry.set_configs, configs, True)


def signatures(version: LoadedVersion) -> dict[str, Signature]:
    """The signatures a version answers: its own tensors, and for image models the image one."""
    found = {DEFAULT_SIGNATURE: version.metadata.signature}
    if version.metadata.is_image_model:
        k = version.metadata.top_k
        image = Signature(
            inputs=[TensorSpec(name=IMAGE_INPUT_NAMES[0], dtype="string", shape=[-1])],
            outputs=[
                TensorSpec(name="classes", dtype="string", shape=[-1, k]),
                TensorSpec(name="scores", dtype="float32", shape=[-1, k]),
                TensorSpec(name="class_ids", dtype="int64", shape=[-1, k]),
            ],
        )
        found.update(dict.fromkeys(IMAGE_SIGNATURES, image))
    return found


def _pop_top_k(inputs: Tensors, given: int | None) -> int | None:
    """``top_k`` from the request's parameters or a ``top_k`` input tensor (TF Serving)."""
    if TOP_K_INPUT in inputs:
        value = inputs.pop(TOP_K_INPUT)
        if value.size != 1 or value.dtype.kind not in "iu":
            raise InvalidRequest("input 'top_k' must be a single integer")
        given = int(value.ravel()[0])
    if given is not None and given < 1:
        raise InvalidRequest(f"top_k must be at least 1, not {given}")
    return given


def _named(version: LoadedVersion, inputs: Tensors) -> Tensors:
    """Give an unnamed tensor the model's only input name, and check the batch is sane."""
    if UNNAMED in inputs:
        specs = version.metadata.signature.inputs
        if len(specs) != 1 or len(inputs) != 1:
            names = [s.name for s in specs]
            raise InvalidRequest(f"model {version.name!r} takes inputs {names}; name each one")
        inputs = {specs[0].name: inputs[UNNAMED]}
    rows = {array.shape[0] if array.ndim else None for array in inputs.values()}
    if None in rows or 0 in rows:
        raise InvalidRequest("every input needs a batch dimension with at least one row")
    if len(rows) > 1:
        raise InvalidRequest(f"inputs disagree on the batch size: {sorted(rows)}")  # type: ignore[type-var]
    return inputs


def _filtered(outputs: Tensors, wanted: list[str]) -> Tensors:
    if not wanted:
        return outputs
    unknown = sorted(set(wanted) - set(outputs))
    if unknown:
        raise InvalidRequest(f"unknown outputs {unknown}; the request produces {sorted(outputs)}")
    return {name: outputs[name] for name in wanted}
