"""The model inside the worker process: no second service, the lowest latency.

Images of a micro-batch are decoded on a thread pool (Pillow releases the GIL), each
record's failure stays that record's outcome, and all valid records of one model
version go through the model as one batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from streaminfer.errors import RecordError
from streaminfer.models.errors import InvalidInput
from streaminfer.models.pipeline import classify, preprocess_one
from streaminfer.models.registry import LoadedVersion, ModelRegistry
from streaminfer.predictors.base import (
    Outcome,
    Predictor,
    PredictRequest,
    PredictResult,
    count_wait,
    elapsed_ms,
)
from streaminfer.predictors.grouping import (
    check_kind,
    concat_rows,
    group_by,
    split_rows,
    stack_key,
    tensor_rows,
)
from streaminfer.types import Tensors

T = TypeVar("T")
_Item = tuple[int, LoadedVersion]  # a request's position in the batch, and its version
_Stackable = tuple[int, LoadedVersion, Tensors, int]  # ... its tensors and their rows


class EmbeddedPredictor(Predictor):
    mode = "embedded"

    def __init__(
        self, registry: ModelRegistry, decode_workers: int = 2, *, owns_registry: bool = False
    ) -> None:
        self.registry = registry
        self._owns_registry = owns_registry  # made for this predictor: close it with us
        self._pool = ThreadPoolExecutor(max(1, decode_workers), thread_name_prefix="decode")

    def predict(self, batch: list[PredictRequest]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(batch)
        images: list[_Item] = []
        tensors: list[_Item] = []
        resolved: dict[tuple[str, int | None, str | None], LoadedVersion] = {}
        for index, request in enumerate(batch):
            try:
                check_kind(request)
                wanted = (request.model, request.version, request.label)
                version = resolved.get(wanted)
                if version is None:  # once a batch: one lock, and one version for all its records
                    version = resolved[wanted] = self.registry.resolve(*wanted)
            except RecordError as exc:
                outcomes[index] = exc
                continue
            (images if request.image is not None else tensors).append((index, version))
        self._classify(batch, images, outcomes)
        self._run_tensors(batch, tensors, outcomes)
        assert all(o is not None for o in outcomes)
        return outcomes  # type: ignore[return-value]

    def predict_stacked(
        self, batch: list[PredictRequest], stacked: Tensors, rows: list[int]
    ) -> list[Outcome]:
        """One run on the stacked tensors; requests the stack fails (a wrong dtype or
        shape, a model of fixed batch size) go through ``predict``, each on its own."""
        first = batch[0]
        try:
            version = self.registry.resolve(first.model, first.version, first.label)
            if not version.metadata.signature.outputs_per_row:
                return self.predict(batch)
            inputs = version.model.validate(stacked)
        except RecordError:
            return self.predict(batch)
        return self._results(version, inputs, rows)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._owns_registry:
            self.registry.close()

    def _classify(
        self, batch: list[PredictRequest], items: list[_Item], outcomes: list[Outcome | None]
    ) -> None:
        decoding = [
            (index, version, self._pool.submit(_timed, preprocess_one, version, batch[index].image))
            for index, version in items
        ]
        decoded: list[tuple[int, LoadedVersion, np.ndarray, float]] = []
        started = time.perf_counter()
        for index, version, future in decoding:
            try:
                row, preprocess_ms = future.result()
            except RecordError as exc:
                outcomes[index] = exc
                continue
            decoded.append((index, version, row, preprocess_ms))
        count_wait(started)
        for group in group_by(decoded, lambda item: id(item[1])):
            version = group[0][1]
            wanted = [batch[index].top_k or version.metadata.top_k for index, *_ in group]
            rows = np.stack([row for _, _, row, _ in group])
            started = time.perf_counter()
            ranked = classify(version, rows, max(wanted))
            inference_ms = count_wait(started)
            for (index, _, _, preprocess_ms), predictions, k in zip(
                group, ranked, wanted, strict=True
            ):
                outcomes[index] = PredictResult(
                    version.name,
                    version.version,
                    self.mode,
                    predictions=predictions[:k],
                    timings_ms={"preprocess": preprocess_ms, "inference": inference_ms},
                )

    def _run_tensors(
        self, batch: list[PredictRequest], items: list[_Item], outcomes: list[Outcome | None]
    ) -> None:
        # Grouped here rather than by group_by: its key function is one more call a record.
        groups: dict[tuple[int, Hashable], list[_Stackable]] = {}
        for index, version in items:
            tensors = batch[index].tensors or {}
            rows = tensor_rows(tensors)
            if rows is None:
                outcomes[index] = InvalidInput("every input of a request needs the same batch size")
                continue
            key = (id(version), stack_key(tensors))
            groups.setdefault(key, []).append((index, version, tensors, rows))
        for group in groups.values():
            self._run_group(group, outcomes)

    def _run_group(self, group: list[_Stackable], outcomes: list[Outcome | None]) -> None:
        """One model run for records of equal names, dtypes and row shapes, checked as one
        batch: a check that passes for the batch passes for each of its records."""
        version = group[0][1]
        if len(group) > 1 and not version.metadata.signature.outputs_per_row:
            for item in group:  # outputs that cannot be cut per record: each on its own
                self._run_group([item], outcomes)
            return
        try:
            inputs = version.model.validate(concat_rows([tensors for _, _, tensors, _ in group]))
        except RecordError as exc:
            if len(group) == 1:
                outcomes[group[0][0]] = exc
                return
            for item in group:  # e.g. a model whose batch size is fixed: each on its own
                self._run_group([item], outcomes)
            return
        # Indexed, not star-unpacked: ``*_`` builds a list per record.
        results = self._results(version, inputs, [item[3] for item in group])
        for item, result in zip(group, results, strict=True):
            outcomes[item[0]] = result

    def _results(self, version: LoadedVersion, inputs: Tensors, rows: list[int]) -> list[Outcome]:
        """One run on checked inputs, cut into one result per record of ``rows[i]`` rows."""
        started = time.perf_counter()
        outputs = version.infer(inputs)
        timings = {"preprocess": 0.0, "inference": count_wait(started)}  # shared: only read
        return [
            PredictResult(
                version.name, version.version, self.mode, outputs=sliced, timings_ms=timings
            )
            for sliced in split_rows(outputs, rows)
        ]


def _timed(function: Callable[..., T], *args: object) -> tuple[T, float]:
    """``function(*args)`` and how long it took, in milliseconds."""
    started = time.perf_counter()
    result = function(*args)
    return result, elapsed_ms(started, time.perf_counter())
