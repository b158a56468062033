"""Classifying images with a server whose model takes only a float tensor.

A standard server (Triton, MLServer, TF Serving) serves a model as it was exported:
``input`` float32 ``[N, 3, 224, 224]`` → ``logits`` ``[N, 1000]``.  The worker then does
the image work itself: it decodes and preprocesses each image, sends the tensor, and
ranks the answer into the same top-k predictions (with labels) the image path gives.

How to preprocess and what the classes are called comes, in this order, from:

1. the model's ``model.json`` in ``--repo`` (``<repo>/<model>/<version>/``, the folder
   the server serves; the highest version when none is pinned);
2. the worker's flags: ``--preprocess`` (a preset of :mod:`streaminfer.images.presets`)
   with ``--input-size`` / ``--layout`` where the served shape leaves them open,
   ``--labels FILE`` and ``--output-kind logits|probabilities``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from streaminfer.errors import ConfigError, InfrastructureError
from streaminfer.images.presets import ImageOptions
from streaminfer.models.errors import InvalidInput
from streaminfer.models.metadata import METADATA_FILE, ImagePreprocess, ModelMetadata
from streaminfer.models.postprocess import Prediction, rank, top_k
from streaminfer.predictors.signature import ServedModel, without_image_input
from streaminfer.types import ModelRef, Tensors

OutputKind = Literal["logits", "probabilities"]
DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class ClientImageOptions:
    """The worker's knowledge of models it does not serve itself (all optional)."""

    repo: Path | None = None
    preprocess: ImageOptions | None = None
    labels: list[str] | None = None  # read from --labels at start-up
    output_kind: OutputKind = "logits"


@dataclass(frozen=True)
class ImagePlan:
    """How one served model classifies: its input and output, preprocessing, class names."""

    input: str
    dtype: np.dtype
    output: str
    spec: ImagePreprocess
    labels: list[str] | None
    output_kind: OutputKind
    top_k: int

    def predictions(
        self, outputs: Tensors, count: int, k: int, where: str
    ) -> list[list[Prediction]]:
        """The top ``k`` classes of each of ``count`` images."""
        scores = outputs.get(self.output)
        if scores is None:
            raise InfrastructureError(f"{where}: the answer has no {self.output!r} output")
        matrix = np.asarray(scores, dtype=np.float32).reshape(count, -1)
        if self.output_kind == "probabilities":
            return rank(matrix, k, self.labels)
        return top_k(matrix, k, self.labels)


def plan_for(ref: ModelRef, served: ServedModel, options: ClientImageOptions) -> ImagePlan:
    """The plan for a model that takes a tensor.

    Raises ``InvalidInput`` (the records asking for this model are dead-lettered with the
    reason) when the model is no image classifier or nothing says how to preprocess.
    """
    try:
        return _plan(ref, served, options)
    except ConfigError as exc:
        raise InvalidInput(str(exc)) from exc


def _plan(ref: ModelRef, served: ServedModel, options: ClientImageOptions) -> ImagePlan:
    inputs = without_image_input(served.inputs)
    if len(inputs) != 1 or not served.outputs:
        raise ConfigError(
            f"model {ref.name!r} takes {[t.name for t in inputs]} and gives "
            f"{[t.name for t in served.outputs]}: an image classifier takes one tensor "
            f"and gives at least one"
        )
    tensor = inputs[0]
    metadata, folder = _model_json(ref, options.repo)
    if metadata is not None and metadata.preprocess is not None:
        assert folder is not None
        return ImagePlan(
            input=tensor.name,
            dtype=tensor.dtype,
            output=metadata.signature.outputs[0].name,
            spec=metadata.preprocess,
            labels=metadata.labels(folder),
            output_kind=options.output_kind,
            top_k=metadata.top_k,
        )
    if options.preprocess is None:
        raise ConfigError(
            f"model {ref.name!r} takes a tensor, not encoded images: give --repo (a folder "
            f"with its model.json) or --preprocess imagenet|inception|raw"
        )
    return ImagePlan(
        input=tensor.name,
        dtype=tensor.dtype,
        output=served.outputs[0].name,
        spec=options.preprocess.resolve(None if tensor.shape is None else list(tensor.shape)),
        labels=options.labels,
        output_kind=options.output_kind,
        top_k=DEFAULT_TOP_K,
    )


def read_labels(path: Path) -> list[str]:
    """One class name per line, in class-id order."""
    try:
        return path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"--labels {path}: {exc}") from exc


def _model_json(ref: ModelRef, repo: Path | None) -> tuple[ModelMetadata | None, Path | None]:
    """The model's ``model.json`` in ``repo``, if there is one for the version asked."""
    if repo is None:
        return None, None
    folder = repo / ref.name
    if ref.version is not None:
        chosen = folder / str(ref.version)
    else:
        numbered = [p for p in folder.glob("*") if p.name.isdigit() and p.is_dir()]
        if not numbered:
            return None, None
        chosen = max(numbered, key=lambda p: int(p.name))
    if not (chosen / METADATA_FILE).is_file():
        return None, None
    return ModelMetadata.read(chosen), chosen
