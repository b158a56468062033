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


def test_batches_running_at_once_hold_one_batch_of_rows_at_most() -> None:
    lock = threading.Lock()
    rows_running, batches_running, most_rows, most_batches = [0], [0], [0], [0]

    def run(inputs: Tensors) -> Tensors:
        rows = len(inputs["x"])
        with lock:
            rows_running[0] += rows
            batches_running[0] += 1
            most_rows[0] = max(most_rows[0], rows_running[0])
            most_batches[0] = max(most_batches[0], batches_running[0])
        threading.Event().wait(0.002)  # long enough for the other runners to start theirs
        with lock:
            rows_running[0] -= rows
            batches_running[0] -= 1
        return inputs

    rng = random.Random(7)
    batcher = DynamicBatcher(run, BatchingConfig(runners=3, max_batch_size=4))
    try:
        sent = [np.full((rng.randint(1, 6), rng.randint(1, 3)), i) for i in range(300)]
        futures = [batcher.submit({"x": x}) for x in sent]
        answers = [np.concatenate([f.result(timeout=30)["x"] for f in parts]) for parts in futures]
    finally:
        batcher.close()
    assert all(np.array_equal(a, x) for a, x in zip(answers, sent, strict=True))
    assert most_batches[0] >= 2  # side by side
    assert most_rows[0] <= 4  # never past one batch's rows


def test_a_slice_larger_than_a_batch_runs_alone() -> None:
    lock = threading.Lock()
    running, seen = [0], []

    def run(inputs: Tensors) -> Tensors:
        rows = len(inputs["x"])
        with lock:
            running[0] += rows
            seen.append(running[0])
        threading.Event().wait(0.002)
        with lock:
            running[0] -= rows
        return inputs

    # slice_bytes makes slices of 64 rows (8 bytes each) where a batch holds 4.
    config = BatchingConfig(runners=2, max_batch_size=4, slice_bytes=512)
    batcher = DynamicBatcher(run, config)
    try:
        futures = [batcher.submit({"x": np.zeros((rows, 1))}) for rows in (64, 1, 64, 2)]
        for parts in futures:
            for part in parts:
                part.result(timeout=30)
    finally:
        batcher.close()
    assert max(seen) == 64  # alone: never beside another batch
