"""The one data plane behind every door: find a model, run a request, describe a model.

A door (TF Serving or KServe V2, REST or gRPC) asks for a model once with
``plane.model(name, version, label)`` (an unknown one is NOT_FOUND before the body is
even read), translates its wire format into numpy arrays and calls ``handle.infer``;
metadata, status and readiness come from the plane and the handle too, so no door
touches the registry and a fix made here reaches every protocol.

Image models answer two kinds of request: their own float input returns the model's
outputs, encoded image bytes return ``classes``, ``scores`` and ``class_ids`` top-k.
So that each model name describes one signature (a generic KServe V2 client reads every
listed input as required), the encoded-image entry point of model ``m`` is also served
as its own model ``m.images``: its only input is ``images``, its outputs the ranked
classes.  ``m`` itself describes its tensors only, yet still takes ``images`` (older
clients, and TF Serving's ``serving_images`` signature).

Tabular models (``features`` in ``model.json``) also take records of named values
(``predict_records``), answered per row as the worker's output records are.

With the server's ``--handler``, a REST predict request is a handler ``Record`` (its body
and headers): ``handle`` runs the handler's preprocess (else the door's usual reading),
the model, and its postprocess (else the door's usual answer).  A hook's failure is the
request's: a ``HandlerError``, answered 400 naming the exception's type.

``plane.decode`` parses a REST body: on the event loop up to ``INLINE_DECODE_BYTES``
(a few milliseconds), in the decoder process beyond (see ``serving.decoder``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from streaminfer import __version__
from streaminfer.codecs.arrays import BYTES, bytes_array
from streaminfer.codecs.tfserving_json import UNNAMED
from streaminfer.handlers import Handler, HandlerError, Record
from streaminfer.models.errors import ModelNotFound
from streaminfer.models.features import feature_batch, feature_row, record_features, tabular_value
from streaminfer.models.metadata import Signature, TensorSpec
from streaminfer.models.model_config import ModelConfig
from streaminfer.models.pipeline import classify_async, preprocess_images
from streaminfer.models.registry import LoadedVersion, ModelRegistry
from streaminfer.models.status import VersionStatus
from streaminfer.serving.classification import classified
from streaminfer.serving.decode_pool import DecodePool
from streaminfer.serving.decoder import BodyDecoder
from streaminfer.serving.errors import DeadlineExceeded, InvalidRequest, Unavailable
from streaminfer.types import Tensors

IMAGE_INPUT_NAMES = ("images", "image_bytes")
"""Names under which an image model accepts encoded images, besides its own input's name."""

DEFAULT_SIGNATURE = "serving_default"
IMAGE_SIGNATURES = ("serving_images", "predict_images")
IMAGE_ENTRY_SUFFIX = ".images"
"""``<model>.images`` is the encoded-image entry point of image model ``<model>``."""
TOP_K_INPUT = "top_k"
FALLBACK_IMAGE_MODEL = "efficientnet-lite0"

INLINE_DECODE_BYTES = 2 << 20
"""Bodies up to 2 MB decode on the event loop (tens of ms at most); larger ones in the
decoder process."""

T = TypeVar("T")


class _Gate:
    """Admits requests while the server accepts them, and holds each to the deadline."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.accepting = True

    async def run(self, work: Coroutine[Any, Any, T], admitted: bool) -> T:
        if not admitted:
            work.close()
            raise Unavailable("the server is shutting down")
        try:
            return await asyncio.wait_for(work, self.timeout)
        except TimeoutError as exc:
            raise DeadlineExceeded(
                f"the request took longer than the server's {self.timeout:g} s deadline"
            ) from exc


class DataPlane:
    def __init__(
        self,
        registry: ModelRegistry,
        default_model: str | None = None,
        decode_threads: int = 4,
        request_timeout: float = 30.0,
        handler: Handler | None = None,
    ) -> None:
        self.server_name = "streaminfer"
        self.server_version = __version__
        self._registry = registry
        self._default_model = default_model
        self._decode_pool = DecodePool(decode_threads)
        self._body_decoder = BodyDecoder()
        self._gate = _Gate(request_timeout)
        self.handler = handler

    # -- health ------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._gate.accepting

    def stop_accepting(self) -> None:
        """From now on new inference requests get UNAVAILABLE; those in flight finish,
        including one whose body is still being read."""
        self._gate.accepting = False

    @property
    def decoder_bodies(self) -> int:
        """Large request bodies in the decoder process or waiting for it."""
        return self._body_decoder.bodies

    def close(self) -> None:
        self._decode_pool.shutdown(wait=True)
        self._body_decoder.close()

    async def decode(self, parse: Callable[..., T], body: bytes | bytearray, *args: Any) -> T:
        """``parse(body, *args)``: here for a small body, in the decoder process for a large one.

        ``parse`` must be a module-level function (it is sent to the decoder by name).
        """
        if len(body) <= INLINE_DECODE_BYTES:
            return parse(body, *args)
        return await self._body_decoder.decode(parse, body, *args)

    # -- models ------------------------------------------------------------------------------
    def model(self, name: str, version: int | None = None, label: str | None = None) -> ModelHandle:
        """The version to serve: the one named, the one a label points at, or the latest.

        Raises NOT_FOUND for a model or version not served, INVALID_ARGUMENT for a label
        that points at none.
        """
        base, image_entry = self._entry(name)
        loaded = self._registry.resolve(base, version, label)
        if image_entry and not loaded.metadata.is_image_model:
            raise ModelNotFound(f"model {name!r} is not served: {base!r} takes no images")
        return ModelHandle(loaded, self._gate, self._decode_pool, image_entry, self.handler)

    def _entry(self, name: str) -> tuple[str, bool]:
        """The repository model a name serves, and whether it is its image entry point."""
        if name.endswith(IMAGE_ENTRY_SUFFIX) and name not in self._registry.models():
            return name.removesuffix(IMAGE_ENTRY_SUFFIX), True
        return name, False

    def default_image_model(self) -> str:
        """The model the legacy Inception API classifies with."""
        if self._default_model:
            return self._default_model
        images = {v.name for v in self._registry if v.metadata.is_image_model}
        return images.pop() if len(images) == 1 else FALLBACK_IMAGE_MODEL

    def versions(self, name: str) -> list[int]:
        """The versions of ``name`` being served, oldest first."""
        return self._registry.versions(self._entry(name)[0])

    def status(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> list[VersionStatus]:
        """Every version's state (failed and unloaded ones too), or that of the one named."""
        name = self._entry(name)[0]
        statuses = self._registry.status(name)
        if label is not None:
            version = self._registry.resolve(name, label=label).version
        if version is None:
            return statuses
        named = [s for s in statuses if s.version == version]
        if not named:
            self._registry.resolve(name, version)  # raises NOT_FOUND listing the served versions
        return named

    async def set_configs(self, configs: list[ModelConfig]) -> None:
        """Serve exactly the configured models (TF Serving's HandleReloadConfigRequest)."""
        await asyncio.to_thread(self._registry.set_configs, configs, True)


class ModelHandle:
    """One served version of a model, found once per request: run it, describe it.

    ``image_entry``: the handle serves ``<model>.images``, which takes encoded images only.
    """

    def __init__(
        self,
        loaded: LoadedVersion,
        gate: _Gate,
        decode_pool: DecodePool,
        image_entry: bool = False,
        handler: Handler | None = None,
    ) -> None:
        self.name = loaded.name + IMAGE_ENTRY_SUFFIX if image_entry else loaded.name
        self.version = loaded.version
        self._loaded = loaded
        self._gate = gate
        # A request is admitted when its model is looked up, as it arrives, not when its
        # body has been read: a stop during a large upload still serves it.
        self._admitted = gate.accepting
        self._decode_pool = decode_pool
        self._image_entry = image_entry
        self._handler = handler

    @property
    def ready(self) -> bool:
        return self._gate.accepting

    @property
    def batch_limit(self) -> int:
        """The most rows one request may carry (``max_batch_size`` in model.json)."""
        return self._loaded.metadata.batch_limit

    def signatures(self) -> dict[str, Signature]:
        """The signatures this version answers, the default one first.

        An image model answers its own tensors (default) and images; its image entry
        point answers images only.
        """
        if not self._loaded.metadata.is_image_model:
            return {DEFAULT_SIGNATURE: self._loaded.metadata.signature}
        k = self._loaded.metadata.top_k
        image = Signature(
            inputs=[TensorSpec(name=IMAGE_INPUT_NAMES[0], dtype="string", shape=[-1])],
            outputs=[
                TensorSpec(name="classes", dtype="string", shape=[-1, k]),
                TensorSpec(name="scores", dtype="float32", shape=[-1, k]),
                TensorSpec(name="class_ids", dtype="int64", shape=[-1, k]),
            ],
        )
        default = image if self._image_entry else self._loaded.metadata.signature
        return {DEFAULT_SIGNATURE: default, **dict.fromkeys(IMAGE_SIGNATURES, image)}

    async def infer(
        self,
        inputs: Tensors,
        signature: str = "",
        output_filter: Sequence[str] = (),
        top_k: int | None = None,
        classification: Mapping[str, int] | None = None,
    ) -> Tensors:
        """Float tensors through the model, image bytes through classify.

        ``top_k`` may also come as a ``top_k`` input (TF Serving); ``output_filter``
        keeps only the outputs named; ``classification`` replaces each output it names
        (they must be in ``output_filter``) by its top classes as strings (the KServe
        classification extension).
        """
        outputs = await self._gate.run(
            self._infer(dict(inputs), signature, output_filter, top_k), self._admitted
        )
        if not classification:
            return outputs
        labels = self._loaded.class_names
        return classified(outputs, classification, self._labelled_output(), labels)

    def _labelled_output(self) -> str | None:
        """The output whose columns are the model's classes (named by its labels file)."""
        metadata = self._loaded.metadata
        if self._image_entry:
            return None
        if metadata.probabilities_output:
            return metadata.probabilities_output
        return metadata.signature.outputs[0].name if metadata.is_image_model else None

    async def classify(self, images: list[bytes], top_k: int | None = None) -> Tensors:
        """``classes``, ``scores`` and ``class_ids`` of encoded images, top ``top_k`` each."""
        return await self._gate.run(self._classify(bytes_array(images), top_k), self._admitted)

    @property
    def takes_float32_only(self) -> bool:
        """Whether every input of the model's own tensors is float32."""
        return all(spec.dtype == "float32" for spec in self._loaded.metadata.signature.inputs)

    @property
    def tabular(self) -> bool:
        """Whether the model takes records of named feature values (``features``)."""
        return self._loaded.metadata.is_tabular_model

    def takes_records(self, instances: object) -> bool:
        """Whether rows of a request are a tabular model's records of named feature values
        (objects), rather than its own input tensors by name."""
        metadata = self._loaded.metadata
        if not metadata.is_tabular_model or not isinstance(instances, list) or not instances:
            return False
        own = {spec.name for spec in metadata.signature.inputs}
        return all(isinstance(row, dict) and set(row) != own for row in instances)

    async def predict_records(self, records: Sequence[object]) -> list[dict[str, object]]:
        """Records of named feature values through the model as one batch, each answered
        ``{"predictions": [...]}`` (classifiers) or ``{"outputs": {...}}`` (regressors).
        A bad record fails the request with ``BadFeatures`` naming the feature."""
        metadata = self._loaded.metadata
        features = metadata.features or []
        # Before a row is built: 150,000 records once took the server 300 MB past a limit
        # of 4,096 rows and held its event loop for 2.3 s.
        self._check_batch(len(records))
        rows = [feature_row(record_features(r), features) for r in records]
        outputs = await self._gate.run(
            self._loaded.infer_async(feature_batch(rows, metadata)), self._admitted
        )
        return tabular_value(outputs, metadata, self._loaded.class_names)

    async def handle(self, record: Record, read: Callable[[bytes], Tensors]) -> Tensors | bytes:
        """A request through the server's handler: its inputs from ``preprocess`` (else
        ``read`` of the body), then the model; the answer's body from ``postprocess``, else
        the outputs for the door to answer as usual."""
        handler = self._handler
        assert handler is not None  # doors call this only when the server has one
        if handler.preprocesses:
            (given,) = await asyncio.to_thread(handler.preprocess, [record])
            if isinstance(given, HandlerError):
                raise given
            if isinstance(given, bytes):
                outputs = await self.classify([given])
            else:
                outputs = await self.infer(given)
        else:
            outputs = await self.infer(read(record.value or b""))
        if not handler.postprocesses:
            return outputs
        (value,) = await asyncio.to_thread(handler.postprocess, [dict(outputs)], [record])
        if isinstance(value, HandlerError):
            raise value
        return value

    async def _infer(
        self, inputs: Tensors, signature: str, output_filter: Sequence[str], top_k: int | None
    ) -> Tensors:
        top_k = _pop_top_k(inputs, top_k)
        images = self._image_input(inputs, signature)
        if images is not None:
            outputs = await self._classify(images, top_k)
        else:
            outputs = await self._loaded.infer_async(self._named(inputs))
        return _filtered(outputs, output_filter)

    def _image_input(self, inputs: Tensors, signature: str) -> np.ndarray | None:
        """The encoded images of a request, or None when it carries the model's own tensors."""
        if signature:  # named: one the model lists (a tensor model has no image signatures)
            signatures = self.signatures()  # built only here: it makes a Signature of each
            if signature not in signatures:
                names = ", ".join(signatures)
                raise InvalidRequest(
                    f"model {self.name!r} has no signature {signature!r} (signatures: {names})"
                )
        metadata = self._loaded.metadata
        if not metadata.is_image_model:
            return None
        wants_images = self._image_entry or signature in IMAGE_SIGNATURES
        own = metadata.signature.inputs[0].name
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
                self._check_batch(len(images))
                return images
        if wants_images:
            entry = f"model {self.name!r}" if self._image_entry else f"signature {signature!r}"
            raise InvalidRequest(
                f"{entry} takes encoded images as a string/BYTES tensor of shape [N] named 'images'"
            )
        return None

    async def _classify(self, images: np.ndarray, top_k: int | None) -> Tensors:
        encoded: list[bytes] = images.tolist()
        batch = await asyncio.to_thread(preprocess_images, self._loaded, encoded, self._decode_pool)
        ranked = await classify_async(self._loaded, batch, top_k)
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

    def _named(self, inputs: Tensors) -> Tensors:
        """Give an unnamed tensor the model's only input name, and check the batch is sane."""
        if UNNAMED in inputs:
            specs = self._loaded.metadata.signature.inputs
            if len(specs) != 1 or len(inputs) != 1:
                names = [s.name for s in specs]
                raise InvalidRequest(f"model {self.name!r} takes inputs {names}; name each one")
            inputs = {specs[0].name: inputs[UNNAMED]}
        rows = {array.shape[0] if array.ndim else None for array in inputs.values()}
        if None in rows or 0 in rows:
            raise InvalidRequest("every input needs a batch dimension with at least one row")
        if len(rows) > 1:
            raise InvalidRequest(f"inputs disagree on the batch size: {sorted(rows)}")  # type: ignore[type-var]
        for count in rows:  # none (no inputs, refused later) or one
            self._check_batch(count or 0)
        return inputs

    def check_declared_rows(self, shapes: Iterable[Sequence[int]]) -> None:
        """Refuse tensors whose declared shapes hold more rows than ``infer`` would take,
        before their values are read (60 MB of gRPC ``float_val`` would become another
        60 MB array only to be refused, 60 MB of ``string_val`` 5 GB of Python bytes)."""
        for shape in shapes:
            if len(shape):
                self._check_batch(shape[0])

    def _check_batch(self, rows: int) -> None:
        """Refuse a request of more rows than the model's ``max_batch_size`` before running it."""
        limit = self.batch_limit
        if rows > limit:
            raise InvalidRequest(
                f"model {self.name!r} takes at most {limit} rows per request "
                f"(max_batch_size in model.json), not {rows}"
            )


def request_record(
    body: bytes | bytearray, headers: Mapping[str, str] | Iterable[tuple[str, str]]
) -> Record:
    """A REST request as a handler sees it: its body (as ``bytes``, like a Kafka record's
    value), and its headers (names lower-case)."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return Record(None, bytes(body), [(name.lower(), value.encode()) for name, value in pairs])


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


def _filtered(outputs: Tensors, wanted: Sequence[str]) -> Tensors:
    if not wanted:
        return outputs
    unknown = sorted(set(wanted) - set(outputs))
    if unknown:
        raise InvalidRequest(f"unknown outputs {unknown}; the request produces {sorted(outputs)}")
    return {name: outputs[name] for name in wanted}
