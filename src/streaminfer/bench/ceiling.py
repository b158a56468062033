"""The ceiling: the workload run in one process with no Kafka, so every ratio has a top.

Two figures matter.  Bare inference (ONNX Runtime on a ready tensor) is the model's own
limit.  The in-process pipeline (for images fetch + decode + preprocess + inference,
every core busy; for tensor records the worker's JSON parse, its stacking and inference;
for tabular records its parse, features to row, inference and ranking) is the best a
worker could ever do on this machine: TARGETS.md's "best in-process pipeline rate".  Like
the worker, it hands only downloads to fetch threads: a thread hop per tensor record
once doubled its cost and halved this ceiling.  It runs the very predictor the worker's
embedded mode builds, in a few shapes (batch sizes, as the worker's micro-batches grow
for cheap records, and batches in flight), and keeps the best; between the
configurations, the best shape runs again (``measure_pipeline``), so the ceiling is a
median of runs spread over the whole benchmark rather than one moment of it.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from streaminfer.bench.measure import Spread, cpu_seconds, per_thousand
from streaminfer.bench.results import CeilingResult
from streaminfer.bench.workloads import Workload
from streaminfer.errors import InfrastructureError
from streaminfer.models.batcher import WORKER_BATCHING, BatchingConfig
from streaminfer.models.pipeline import image_input_name, preprocess_one
from streaminfer.models.registry import LoadedVersion, ModelRegistry
from streaminfer.predictors import Predictor, PredictRequest, PredictResult, create_predictor
from streaminfer.predictors.base import Outcome
from streaminfer.stream.worker import settle_collector
from streaminfer.types import Tensors

BATCH = 16  # the worker's default --batch-size
FETCH_THREADS = 8  # the worker's default fetch threads
LANES = (1, 2, 4)  # batches in flight at once; the worker's default --max-in-flight is 4
Shape = tuple[int, int]  # records per batch, batches in flight


def measure_ceiling(workload: Workload, repo: Path, seconds: float) -> CeilingResult:
    """Bare inference and the in-process pipeline in every shape, each timed for ``seconds``."""
    registry = ModelRegistry(repo, default_batching=WORKER_BATCHING)
    registry.reload()
    predictor = create_predictor("embedded", registry=registry)
    try:
        version = registry.resolve(workload.model)
        sample = workload.request(workload.record(0))
        one, batch = model_input(version, sample, 1), model_input(version, sample, BATCH)
        inference, _ = _timed_rate(lambda: _run(version, one), seconds)
        batched, _ = _timed_rate(lambda: _run(version, batch), seconds)
        records = Values(workload)
        single = _one_thread_rate(workload, repo, records, seconds)
        variants = {
            shape: _pipeline_rate(workload, predictor, records, shape, seconds)
            for shape in itertools.product(workload.ceiling_batches, LANES)
        }
    finally:
        predictor.close()
        registry.close()
    best = max(variants, key=lambda shape: variants[shape][0])
    return CeilingResult(
        pipeline=Spread.of([variants[best][0]]),
        pipeline_variant=_variant(best),
        pipeline_batch=best[0],
        pipeline_lanes=best[1],
        pipeline_one_thread_rps=single,
        inference_rps=inference,
        inference_batched_rps=batched,
        cpu_s_per_1k=variants[best][1],
        variants={_variant(shape): rate for shape, (rate, _) in variants.items()},
    )


def measure_pipeline(workload: Workload, repo: Path, shape: Shape, seconds: float) -> float:
    """The in-process pipeline's rate in one shape: a ceiling run between configurations."""
    registry = ModelRegistry(repo, default_batching=WORKER_BATCHING)
    registry.reload()
    predictor = create_predictor("embedded", registry=registry)
    try:
        rate, _ = _pipeline_rate(workload, predictor, Values(workload), shape, seconds)
        return rate
    finally:
        predictor.close()
        registry.close()


class Values:
    """The workload's record values, made before the clock starts (a worker gets them
    ready-made from Kafka; making a JSON record took a fifth of a tensor record's time),
    then handed out in turn."""

    MADE = 2000  # the workloads cycle through fewer distinct records than this

    def __init__(self, workload: Workload) -> None:
        self._values = [workload.record(index) for index in range(self.MADE)]
        self._next = itertools.count()

    def take(self, count: int) -> list[bytes]:
        return [self._values[next(self._next) % self.MADE] for _ in range(count)]


def _variant(shape: Shape) -> str:
    return f"batch {shape[0]} x {shape[1]} in flight"


def _pipeline_rate(
    workload: Workload,
    predictor: Predictor,
    records: Values,
    shape: Shape,
    seconds: float,
) -> tuple[float, float]:
    """Batches of ``shape[0]`` records, ``shape[1]`` of them in flight: records/s and CPU s
    per 1,000 records.  As in the worker, downloads go to its number of fetch threads and
    other records are parsed where they are."""
    size, lanes = shape
    with ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="bench-fetch") as fetches:

        def one_batch() -> int:
            values = records.take(size)
            if workload.downloads:
                return _served(
                    workload, predictor.predict(list(fetches.map(workload.request, values)))
                )
            return _served(workload, workload.predict(predictor, values))

        return _timed_rate(one_batch, seconds, lanes)


def _one_thread_rate(workload: Workload, repo: Path, records: Values, seconds: float) -> float:
    """One record at a time on one thread, as a one-message-at-a-time app does it; without
    a batcher, whose delay would be all it added for a lone caller."""
    registry = ModelRegistry(repo, default_batching=BatchingConfig(enabled=False))
    registry.reload()
    predictor = create_predictor("embedded", registry=registry, decode_workers=1)
    try:
        rate, _ = _timed_rate(
            lambda: _served(workload, workload.predict(predictor, records.take(1))),
            seconds,
        )
        return rate
    finally:
        predictor.close()
        registry.close()


def model_input(version: LoadedVersion, sample: PredictRequest, rows: int) -> Tensors:
    """``rows`` copies of a sample request as the model's checked input tensors."""
    if sample.image is not None:
        row = preprocess_one(version, sample.image)
        return version.model.validate({image_input_name(version): np.stack([row] * rows)})
    assert sample.tensors is not None
    repeated = {name: np.repeat(array, rows, axis=0) for name, array in sample.tensors.items()}
    return version.model.validate(repeated)


def _run(version: LoadedVersion, inputs: Tensors) -> int:
    outputs = version.model.run(inputs)
    return len(next(iter(outputs.values())))


def _served(workload: Workload, outcomes: list[Outcome]) -> int:
    """Make of each result what the worker does, and insist that every record was served:
    a failing ceiling would flatter."""
    failed = [o for o in outcomes if not isinstance(o, PredictResult)]
    if failed:
        raise InfrastructureError(f"the in-process pipeline failed a record: {failed[0]}")
    for outcome in outcomes:
        if isinstance(outcome, PredictResult):
            workload.answer(outcome)
    return len(outcomes)


def _timed_rate(work: Callable[[], int], seconds: float, lanes: int = 1) -> tuple[float, float]:
    """Records per second and CPU seconds per 1,000 records of ``lanes`` threads calling
    ``work`` (which returns records done) for ``seconds``, after one warm-up call.  The
    collector is set as the worker sets it, so the ratio to the ceiling measures the
    streaming, not a setting."""
    settle_collector()
    work()
    done = [0] * lanes
    started, cpu_started = time.perf_counter(), cpu_seconds(os.getpid())
    deadline = started + seconds

    def lane(index: int) -> None:
        while time.perf_counter() < deadline:
            done[index] += work()

    threads = [threading.Thread(target=lane, args=(i,)) for i in range(lanes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed, cpu = time.perf_counter() - started, cpu_seconds(os.getpid()) - cpu_started
    return sum(done) / elapsed, per_thousand(cpu, sum(done))
