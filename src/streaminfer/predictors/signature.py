"""What a model server says a model takes and gives, and tensors made to fit it.

The protocol clients read a model's metadata (TF Serving ``GetModelMetadata`` / REST
``metadata``, KServe V2 model metadata) into a :class:`ServedModel`.  It tells the remote
predictor whether the model takes encoded images itself (an ``images`` or
``image_bytes`` string input, as our server offers) or only a tensor, and what dtype and
shape each input has.

:func:`conform` casts a record's tensors to the declared dtypes: JSON gives INT64 and
FP64, and servers such as Triton refuse a dtype that is not the model's.  A cast that
would change a value (a string for a number, an integer out of range, a fraction for an
integer input, a float beyond float32) is the record's fault: ``InvalidInput``.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from streaminfer.codecs.arrays import BYTES, bytes_array, cast_exactly
from streaminfer.models.errors import InvalidInput, ModelNotFound
from streaminfer.types import ModelRef, Tensors

ENCODED_IMAGE_INPUTS = ("images", "image_bytes")  # string inputs that take encoded images
METADATA_TTL_S = 30.0  # "the latest version" may change: read its metadata again after this


@dataclass(frozen=True)
class ServedTensor:
    name: str
    dtype: np.dtype  # BYTES for strings
    shape: tuple[int, ...] | None  # -1: any size; None: not even the rank is known


@dataclass(frozen=True)
class ServedModel:
    """One signature of a served model (TF Serving: the one requests go to)."""

    inputs: tuple[ServedTensor, ...]
    outputs: tuple[ServedTensor, ...]
    # Where encoded images go, when the model takes them: the input's name, and (TF
    # Serving) the signature that has it, which may not be the tensor signature.
    image_input: str | None = None
    image_signature: str | None = None
    # (KServe V2) the model name that takes them, when it is not this one: our server
    # serves an image model's encoded-image entry point as ``<model>.images``.
    image_model: str | None = None
    # The most rows a request may carry, when the server says (Triton: ``max_batch_size``).
    max_rows: int | None = None

    @property
    def takes_images(self) -> bool:
        return self.image_input is not None

    def image_ref(self, ref: ModelRef) -> ModelRef:
        """Where encoded images for ``ref`` go."""
        return ref if self.image_model is None else dataclasses.replace(ref, name=self.image_model)

    def image_batch(self, images: list[bytes]) -> np.ndarray:
        """Encoded images as the image input takes them: ``[N]``, or ``[N, 1]`` (Triton's
        models declare one string per row so)."""
        array = bytes_array(images)
        for tensor in self.inputs:
            if tensor.name == self.image_input and tensor.shape is not None:
                return array.reshape(len(images), *[1] * (len(tensor.shape) - 1))
        return array


def encoded_image_input(inputs: tuple[ServedTensor, ...]) -> str | None:
    """The name of the input that takes encoded images, if the model has one."""
    for tensor in inputs:
        if tensor.name in ENCODED_IMAGE_INPUTS and tensor.dtype == BYTES:
            return tensor.name
    return None


def without_image_input(tensors: tuple[ServedTensor, ...]) -> tuple[ServedTensor, ...]:
    """The model's tensor inputs (a server may list its encoded-image input beside them)."""
    return tuple(t for t in tensors if encoded_image_input((t,)) is None)


TensorList = list[tuple[str, np.dtype, list[int] | None]]  # name, dtype, shape as listed


def v2_model(inputs: TensorList, outputs: TensorList, max_rows: int | None = None) -> ServedModel:
    """A KServe V2 model's metadata (one signature, images listed among its inputs)."""
    served_inputs = _tensors(inputs)
    return ServedModel(
        served_inputs, _tensors(outputs), encoded_image_input(served_inputs), max_rows=max_rows
    )


IMAGE_ENTRY_SUFFIX = ".images"


def v2_model_with_image_entry(
    ref: ModelRef, read: Callable[[ModelRef], ServedModel]
) -> ServedModel:
    """A V2 model's metadata (``read``), with the encoded-image entry point our server
    serves beside it as ``<model>.images`` when the model takes no images itself."""
    served = read(ref)
    if served.takes_images:
        return served
    entry_ref = dataclasses.replace(ref, name=ref.name + IMAGE_ENTRY_SUFFIX)
    try:
        entry = read(entry_ref)
    except ModelNotFound:
        return served
    if not entry.takes_images:
        return served
    return dataclasses.replace(served, image_input=entry.image_input, image_model=entry_ref.name)


def tf_model(signatures: dict[str, tuple[TensorList, TensorList]], chosen: str) -> ServedModel:
    """A TF Serving model's metadata: the ``chosen`` signature (``--signature-name``); images
    go to the first signature that takes them, if the chosen one does not."""
    if chosen not in signatures:
        raise InvalidInput(f"the model has no signature {chosen!r}; it has {sorted(signatures)}")
    inputs, outputs = signatures[chosen]
    served = ServedModel(_tensors(inputs), _tensors(outputs))
    for name in (chosen, *sorted(signatures)):
        image_input = encoded_image_input(_tensors(signatures[name][0]))
        if image_input is not None:
            return dataclasses.replace(served, image_input=image_input, image_signature=name)
    return served


def _tensors(listed: TensorList) -> tuple[ServedTensor, ...]:
    return tuple(
        ServedTensor(name, dtype, None if shape is None else tuple(shape))
        for name, dtype, shape in listed
    )


def conform(inputs: Tensors, model: ServedModel) -> Tensors:
    """``inputs`` cast to the model's dtypes and checked against its shapes (as they are,
    if the server lists no inputs: MLServer does so for models whose settings name none)."""
    declared = {t.name: t for t in without_image_input(model.inputs)}
    if not declared:
        return inputs
    unknown = sorted(set(inputs) - set(declared))
    if unknown:
        raise InvalidInput(f"unknown inputs {unknown}; the model takes {sorted(declared)}")
    missing = sorted(set(declared) - set(inputs))
    if missing:
        raise InvalidInput(f"missing inputs {missing}; the model takes {sorted(declared)}")
    return {name: _fit(np.asarray(array), declared[name]) for name, array in inputs.items()}


def _fit(array: np.ndarray, spec: ServedTensor) -> np.ndarray:
    if spec.shape is not None and (
        len(spec.shape) != array.ndim
        or any(want not in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True))
    ):
        raise InvalidInput(
            f"input {spec.name!r} has shape {list(array.shape)}, the model takes {list(spec.shape)}"
        )
    return cast_exactly(spec.name, array, spec.dtype, InvalidInput)


class MetadataCache:
    """What each model reference's metadata said, read once per ``ttl_s`` per reference.

    A pinned version never changes; the latest version or a label may, hence the expiry.
    """

    def __init__(
        self,
        read: Callable[[ModelRef], ServedModel],
        ttl_s: float = METADATA_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._known: dict[ModelRef, tuple[float, ServedModel]] = {}

    def get(self, ref: ModelRef) -> ServedModel:
        now = self._clock()
        with self._lock:
            found = self._known.get(ref)
        if found is not None and (ref.version is not None or now - found[0] < self._ttl_s):
            return found[1]
        model = self._read(ref)  # outside the lock: a slow server must not block other models
        with self._lock:
            self._known[ref] = (now, model)
        return model
