"""Tabular records in the worker: named features in, the model's input row out, and its
outputs back as ranked classes (classifiers) or named values (regressors).

The conversion happens in the worker, before the predictor, so one record format serves
every mode: the embedded runtime and any server get an ordinary tensor request, which
asks the server for the outputs the answer is read from (V2 ``outputs``, TF Serving
gRPC's ``output_filter``).  The worker reads each tabular model's ``model.json`` (its
features, input, outputs, classes and probabilities output) from ``--repo``, the same
folder layout the server serves; for a model served elsewhere, point ``--repo`` at a
folder whose ``model.json`` describes that server's signature (MLServer's scikit-learn
runtime: one input ``[N, features]``, outputs ``predict`` and ``predict_proba``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streaminfer.models.errors import ModelNotFound
from streaminfer.models.features import (
    BadFeatures,
    Row,
    classify_rows,
    feature_batch,
    feature_row,
    record_answer,
    record_tensors,
)
from streaminfer.models.layout import model_versions
from streaminfer.models.metadata import ModelMetadata
from streaminfer.predictors.base import PredictRequest, PredictResult
from streaminfer.predictors.grouping import split_rows


@dataclass(frozen=True)
class TabularModel:
    metadata: ModelMetadata
    class_names: list[str] | None

    def request(self, values: dict[str, object], predict: PredictRequest) -> PredictRequest:
        """The record's features as the model's one-row input tensors, asking a server for
        the outputs the answer is read from (filled into ``predict``, the record's own)."""
        predict.tensors = record_tensors(values, self.metadata)
        predict.output_filter = self.read_outputs
        return predict

    def row(self, values: dict[str, object]) -> Row:
        """A record's features checked and in declared order (``BadFeatures`` if bad)."""
        return feature_row(values, self.metadata.features or [])

    def fill(self, rows: Sequence[Row], predicts: Sequence[PredictRequest]) -> None:
        """Checked rows made one input batch, whose row ``i`` (a view) becomes the tensors
        of ``predicts[i]``: one array per batch rather than one per record."""
        batch, outputs = feature_batch(rows, self.metadata), self.read_outputs
        one_row_each = split_rows(batch, [1] * len(predicts))
        for predict, tensors in zip(predicts, one_row_each, strict=True):
            predict.tensors, predict.output_filter = tensors, outputs

    @property
    def read_outputs(self) -> tuple[str, ...]:
        """A classifier's probabilities output; a regressor's outputs, all of them."""
        if self.metadata.probabilities_output is not None:
            return (self.metadata.probabilities_output,)
        return tuple(spec.name for spec in self.metadata.signature.outputs)

    def rank_all(self, results: Sequence[PredictResult], top_ks: Sequence[int | None]) -> None:
        """A classifier's results of one row each, ranked in one go (filled into each
        ``result``, or none of them if anything is wrong); a regressor's stay as they are."""
        name = self.metadata.probabilities_output
        if name is None:
            return
        probabilities = np.concatenate([r.outputs[name] for r in results if r.outputs])
        if len(probabilities) != len(results):
            raise ValueError(f"{len(probabilities)} rows of {name!r} for {len(results)} records")
        wanted = [k or self.metadata.top_k for k in top_ks]
        ranked = classify_rows({name: probabilities}, self.metadata, self.class_names, max(wanted))
        for result, predictions, k in zip(results, ranked, wanted, strict=True):
            result.predictions, result.outputs = predictions[:k], None

    def result(self, result: PredictResult, top_k: int | None) -> PredictResult:
        """A classifier's probabilities as ranked classes (filled into ``result``, the
        record's own); a regressor's outputs as they are."""
        assert result.outputs is not None
        answer = record_answer(result.outputs, self.metadata, self.class_names, top_k)
        if isinstance(answer, list):
            result.predictions, result.outputs = answer, None
        return result


class TabularModels:
    """The tabular models of a repository, read once per model version; thread-safe."""

    def __init__(self, repo: Path | None) -> None:
        self.repo = repo
        self._cache: dict[tuple[str, int | None], TabularModel] = {}
        self._lock = threading.Lock()

    def get(self, model: str, version: int | None) -> TabularModel:
        """The model's features: of ``version``, else of its newest version."""
        with self._lock:
            found = self._cache.get((model, version))
        if found is None:
            found = self._read(model, version)
            with self._lock:
                self._cache[(model, version)] = found
        return found

    def _read(self, model: str, version: int | None) -> TabularModel:
        if self.repo is None:
            raise BadFeatures(f"a tabular record for {model!r} needs the worker's --repo")
        # The name comes from the record: only one the repository lists becomes a path, so
        # "/proc", "../x" or "a/b" are never looked at.
        if model not in _model_names(self.repo):
            raise ModelNotFound(f"model {model!r} is not in the repository")
        folder = self._version_dir(self.repo / model, version)
        metadata = ModelMetadata.read(folder)
        if not metadata.is_tabular_model:
            raise BadFeatures(f"model {model!r} declares no features: it takes no tabular records")
        return TabularModel(metadata, metadata.labels(folder))

    @staticmethod
    def _version_dir(model_dir: Path, version: int | None) -> Path:
        versions = model_versions(model_dir)
        chosen = version if version is not None else max(versions, default=None)
        if chosen is None or chosen not in versions:
            which = "no version" if chosen is None else f"no version {chosen}"
            raise ModelNotFound(f"model {model_dir.name!r} has {which} in the repository")
        return model_dir / str(chosen)


def _model_names(repo: Path) -> set[str]:
    """The repository's model folders (a writer's ``.tmp-*`` folders are none)."""
    with os.scandir(repo) as entries:
        return {e.name for e in entries if e.is_dir() and not e.name.startswith(".")}
