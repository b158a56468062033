"""Encoded images in, top-k classes out: the one image path that the server and embedded
predictor share, so both decode, preprocess and rank exactly alike."""

from __future__ import annotations

from concurrent.futures import Executor

import numpy as np

from streaminfer.images import preprocess_image
from streaminfer.models.errors import InvalidInput
from streaminfer.models.postprocess import Prediction, top_k
from streaminfer.models.registry import LoadedVersion
from streaminfer.types import Tensors


def preprocess_one(version: LoadedVersion, data: bytes) -> np.ndarray:
    """One encoded image → the model's input row; raises a RecordError if it can't be."""
    spec = version.metadata.preprocess
    if spec is None:
        raise InvalidInput(
            f"model {version.name!r} takes tensors, not images (it has no preprocess section)"
        )
    return preprocess_image(data, spec)


def preprocess_images(
    version: LoadedVersion, images: list[bytes], pool: Executor | None = None
) -> np.ndarray:
    """A batch ``[N, ...]`` of model inputs; decoding runs on ``pool`` when given."""
    if not images:
        raise InvalidInput("no images in the request")
    if pool is None or len(images) == 1:
        rows = [preprocess_one(version, data) for data in images]
    else:
        rows = list(pool.map(lambda data: preprocess_one(version, data), images))
    return np.stack(rows)


def image_input_name(version: LoadedVersion) -> str:
    return version.metadata.signature.inputs[0].name


def classify(version: LoadedVersion, batch: np.ndarray, k: int | None) -> list[list[Prediction]]:
    """Run a preprocessed batch and rank the first output (the logits)."""
    return rank(version, version.infer({image_input_name(version): batch}), k)


async def classify_async(
    version: LoadedVersion, batch: np.ndarray, k: int | None
) -> list[list[Prediction]]:
    return rank(version, await version.infer_async({image_input_name(version): batch}), k)


def rank(version: LoadedVersion, outputs: Tensors, k: int | None) -> list[list[Prediction]]:
    """Top-k of the model's first output (its logits), with the model's class names."""
    logits = outputs[version.metadata.signature.outputs[0].name]
    return top_k(logits, k or version.metadata.top_k, version.class_names)
