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
    """A model run that takes ``ms`` (by default 2, long enough for other runners to start
    theirs), noting the rows of each run and the most rows and batches running at once."""

    def __init__(self, ms: float = 2) -> None:
        self.ms = ms
        self.rows: list[int] = []
        self._lock = threading.Lock()
        self._rows = self._batches = self.most_rows = self.most_batches = 0

    def __call__(self, inputs: Tensors) -> Tensors:
        rows = len(inputs["x"])
        with self._lock:
            self.rows.append(rows)
            self._rows += rows
            self._batches += 1
            self.most_rows = max(self.most_rows, self._rows)
            self.most_batches = max(self.most_batches, self._batches)
        if self.ms:
            threading.Event().wait(self.ms / 1000)
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


def send(batcher: DynamicBatcher, rows: int, width: int = 4) -> None:
    sent = np.arange(rows * width, dtype=np.float32).reshape(rows, width)
    answer = batcher.infer({"x": sent}, timeout=30)["x"]
    assert np.array_equal(answer, sent)  # slices come back whole and in order


GROWING = BatchingConfig(max_batch_size=16, slice_bytes=4 << 20, slice_grow_ms=20.0)


def test_slices_of_fast_runs_grow_to_a_whole_request() -> None:
    runs = Runs(0)
    batcher = DynamicBatcher(runs, GROWING)
    try:
        send(batcher, 1024)
        assert runs.rows[:2] == [16, 16]  # a new shape starts at max_batch_size rows
        for _ in range(10):
            runs.rows.clear()
            send(batcher, 1024)
            if runs.rows == [1024]:
                break
        assert runs.rows == [1024]
        # Another shape learns on its own, from max_batch_size rows.
        runs.rows.clear()
        send(batcher, 64, width=5)
        assert runs.rows[0] == 16
    finally:
        batcher.close()


def test_slices_of_slow_runs_stay_at_max_batch_size_rows() -> None:
    runs = Runs(100)  # past four times slice_grow_ms: a model with heavy rows
    batcher = DynamicBatcher(runs, GROWING)
    try:
        for _ in range(3):
            send(batcher, 48)
    finally:
        batcher.close()
    assert runs.rows == [16] * 9


def test_grown_slices_shrink_when_runs_slow_down() -> None:
    runs = Runs(0)
    batcher = DynamicBatcher(runs, GROWING)
    try:
        while max(runs.rows, default=0) < 256:
            send(batcher, 256)
        runs.ms = 100  # the limit is 512 now; every slow run halves it
        runs.rows.clear()
        for _ in range(3):
            send(batcher, 256)
    finally:
        batcher.close()
    assert runs.rows == [256, 256, 128, 128]


def test_slices_never_pass_slice_bytes() -> None:
    runs = Runs(0)
    # 16-byte rows: 64 fit in 1,024 bytes.
    batcher = DynamicBatcher(runs, GROWING.model_copy(update={"slice_bytes": 1024}))
    try:
        for _ in range(8):
            send(batcher, 512)
    finally:
        batcher.close()
    assert max(runs.rows) == 64


def test_the_shapes_remembered_are_bounded() -> None:
    batcher = DynamicBatcher(Runs(0), GROWING)
    try:
        for width in range(1, 200):
            send(batcher, 32, width)  # two fast runs of 16 rows: each shape grows
    finally:
        batcher.close()
    assert len(batcher._slice_limits) == 64
