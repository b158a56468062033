"""The dynamic batcher's runners: batches run side by side within one batch's rows."""

from __future__ import annotations

import random
import threading

import numpy as np

from streaminfer.models.batcher import BatchingConfig, DynamicBatcher
from streaminfer.types import Tensors


def test_runners_run_batches_at_the_same_time() -> None:
    # Each run waits for the other to start: one runner would wait alone and time out.
    both_running = threading.Barrier(2, timeout=10)

    def run(inputs: Tensors) -> Tensors:
        both_running.wait()
        return inputs

    batcher = DynamicBatcher(run, BatchingConfig(runners=2, max_batch_size=2))
    try:
        # Their shapes differ, so they are never merged into one batch.
        futures = batcher.submit({"x": np.zeros((1, 2))}) + batcher.submit({"x": np.ones((1, 3))})
        results = [future.result(timeout=20) for future in futures]
    finally:
        batcher.close()
    assert [r["x"].tolist() for r in results] == [[[0.0, 0.0]], [[1.0, 1.0, 1.0]]]


class Runs:
    """A model run that takes 2 ms (long enough for other runners to start theirs), noting
    the most rows and the most batches running at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows = self._batches = self.most_rows = self.most_batches = 0

    def __call__(self, inputs: Tensors) -> Tensors:
        rows = len(inputs["x"])
        with self._lock:
            self._rows += rows
            self._batches += 1
            self.most_rows = max(self.most_rows, self._rows)
            self.most_batches = max(self.most_batches, self._batches)
        threading.Event().wait(0.002)
        with self._lock:
            self._rows -= rows
            self._batches -= 1
        return inputs


def test_batches_running_at_once_hold_one_batch_of_rows_at_most() -> None:
    runs = Runs()
    rng = random.Random(7)
    batcher = DynamicBatcher(runs, BatchingConfig(runners=3, max_batch_size=4))
    try:
        sent = [np.full((rng.randint(1, 6), rng.randint(1, 3)), i) for i in range(300)]
        futures = [batcher.submit({"x": x}) for x in sent]
        answers = [np.concatenate([f.result(timeout=30)["x"] for f in parts]) for parts in futures]
    finally:
        batcher.close()
    assert all(np.array_equal(a, x) for a, x in zip(answers, sent, strict=True))
    assert runs.most_batches >= 2  # side by side
    assert runs.most_rows <= 4  # never past one batch's rows


def test_a_slice_larger_than_a_batch_runs_alone() -> None:
    runs = Runs()
    # slice_bytes makes slices of 64 rows (8 bytes each) where a batch holds 4.
    config = BatchingConfig(runners=2, max_batch_size=4, slice_bytes=512)
    batcher = DynamicBatcher(runs, config)
    try:
        futures = [batcher.submit({"x": np.zeros((rows, 1))}) for rows in (64, 1, 64, 2)]
        for parts in futures:
            for part in parts:
                part.result(timeout=30)
    finally:
        batcher.close()
    assert runs.most_rows == 64  # alone: never beside another batch
