"""The metadata file that sits beside every model version: ``<repo>/<model>/<version>/model.json``.

It says what the model expects (its signature), how to turn an image into that input
(``preprocess``, absent for plain tensor models), which named features a tabular record
carries (``features``, in input order), where its class names are, which output holds a
classifier's per-class probabilities, how many classes to report by default, and how
many rows one request may carry (``max_batch_size``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from stat import S_ISREG
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from streaminfer.errors import ConfigError

METADATA_FILE = "model.json"
IMAGE_MAX_BATCH = 64
"""Rows one request to an image model may carry unless model.json says otherwise: 64
decoded images are 38 MB of float32 input, run in slices of the batching size."""
TENSOR_MAX_BATCH = 4096
"""Rows one request to a tensor model may carry unless model.json says otherwise."""
MAX_FILE_BYTES = 4 << 20
"""The largest model.json or labels file read: 10,000 features take about 600 kB."""

DType = Literal[
    "float32",
    "float16",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
    "string",
]


class TensorSpec(BaseModel):
    """One input or output of a model; ``-1`` in ``shape`` is a dynamic dimension."""

    name: str
    dtype: DType
    shape: list[int]


class Signature(BaseModel):
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @property
    def outputs_per_row(self) -> bool:
        """Whether every output has a dynamic first (batch) dimension, a row per input row:
        only then may requests be run as one batch and its outputs cut back per request."""
        return all(spec.shape and spec.shape[0] == -1 for spec in self.outputs)


class ImagePreprocess(BaseModel):
    """How an encoded image becomes the model's float input.

    The image is decoded to RGB, its shorter side resized to ``resize_shorter``
    (default: the crop size, i.e. no margin), center-cropped to ``size``, scaled to
    [0, 1], then normalized with ``mean`` and ``std`` per channel.
    """

    kind: Literal["image"] = "image"
    size: tuple[int, int] = (224, 224)  # height, width
    resize_shorter: int | None = None
    resample: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    layout: Literal["NCHW", "NHWC"] = "NCHW"


FeatureDType = Literal["float32", "float64", "int32", "int64", "bool"]


class Feature(BaseModel):
    """One named column of a tabular record; ``default`` fills it when a record omits it."""

    name: str = Field(min_length=1)
    dtype: FeatureDType = "float32"
    default: float | None = None


class ModelMetadata(BaseModel):
    format: Literal["onnx"] = "onnx"
    model_file: str = "model.onnx"
    signature: Signature
    preprocess: ImagePreprocess | None = None
    features: list[Feature] | None = None
    labels_file: str | None = None
    # The output of per-class probabilities [N, classes] for a tabular classifier; a
    # tabular model without it is a regressor whose outputs are reported as they are.
    probabilities_output: str | None = None
    top_k: int = Field(default=5, ge=1)
    max_batch_size: int | None = Field(default=None, ge=1)  # None: by kind, see batch_limit

    @field_validator("features", mode="before")
    @classmethod
    def _names_are_features(cls, value: object) -> object:
        """``"features": ["a", "b"]`` is short for float32 features without defaults."""
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("features")
    @classmethod
    def _unique_features(cls, value: list[Feature] | None) -> list[Feature] | None:
        names = [f.name for f in value or []]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"features listed twice: {', '.join(duplicated)}")
        return value

    @property
    def is_image_model(self) -> bool:
        return self.preprocess is not None

    @property
    def is_tabular_model(self) -> bool:
        return self.features is not None

    @property
    def batch_limit(self) -> int:
        """The most rows one request may carry: ``max_batch_size``, else a default by kind."""
        if self.max_batch_size is not None:
            return self.max_batch_size
        return IMAGE_MAX_BATCH if self.is_image_model else TENSOR_MAX_BATCH

    @classmethod
    def read(cls, version_dir: Path) -> ModelMetadata:
        path = version_dir / METADATA_FILE
        try:
            return cls.model_validate(json.loads(read_small_file(path)))
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: missing metadata file") from exc
        except (ValueError, ValidationError) as exc:
            raise ConfigError(f"{path}: invalid metadata: {exc}") from exc

    def write(self, version_dir: Path) -> None:
        (version_dir / METADATA_FILE).write_text(self.model_dump_json(indent=2) + "\n")

    def labels(self, version_dir: Path) -> list[str] | None:
        if self.labels_file is None:
            return None
        return read_small_file(version_dir / self.labels_file).decode().splitlines()


def read_small_file(path: Path) -> bytes:
    """A regular file of at most ``MAX_FILE_BYTES``; ``ConfigError`` for anything else.

    Opened without blocking and checked before it is read: a FIFO in the repository
    would hold its reader (a worker's chunk thread, for good) until someone wrote to it.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as file:
        stat = os.fstat(fd)
        if not S_ISREG(stat.st_mode):
            raise ConfigError(f"{path}: not a regular file")
        if stat.st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: {stat.st_size} bytes, more than {MAX_FILE_BYTES}")
        return file.read(MAX_FILE_BYTES + 1)
