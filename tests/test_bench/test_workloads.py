"""The workloads' records, read by the worker's own parser, and how the ceiling runs them."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from streaminfer.bench.ceiling import Values, measure_pipeline
from streaminfer.bench.workloads import ImagesWorkload, TabularWorkload, TensorWorkload
from streaminfer.flights import FEATURES
from streaminfer.predictors.base import Outcome, Predictor, PredictRequest
from streaminfer.stream.records import parse_value


def test_tabular_records_alternate_nested_and_flat_forms_of_whole_number_flights() -> None:
    workload = TabularWorkload()
    nested, flat = workload.record(0), workload.record(1)
    assert b'"features"' in nested and b'"features"' not in flat
    for value in (nested, flat):
        request = parse_value(value)
        assert request.model == TabularWorkload.model
        assert request.features is not None and sorted(request.features) == sorted(FEATURES)
        assert all(isinstance(v, int) for v in request.features.values())
    assert workload.record(TabularWorkload.FLIGHTS) == nested  # a cycle of distinct flights


def test_tensor_records_are_read_by_the_workers_own_parser() -> None:
    request = TensorWorkload().request(TensorWorkload().record(103))
    assert request.model == TensorWorkload.model and request.tensors is not None
    np.testing.assert_array_equal(request.tensors["x"], [[3, 1, 2, 3]])


def test_the_ceiling_hands_only_downloads_to_fetch_threads_and_makes_records_untimed(
    tmp_path: Path,
) -> None:
    """A thread hop per record doubled a tensor record's cost: the worker makes none, so
    the ceiling, the best a worker could do, must not either; nor make its records, which
    a worker gets ready-made."""
    threads: dict[bool, set[str]] = {False: set(), True: set()}
    made = 0

    class Watched(TensorWorkload):
        def record(self, index: int) -> bytes:
            nonlocal made
            made += 1
            return super().record(index)

        def request(self, value: bytes) -> PredictRequest:
            threads[self.downloads].add(threading.current_thread().name)
            return super().request(value)

        def predict(self, predictor: Predictor, values: list[bytes]) -> list[Outcome]:
            threads[self.downloads].add(threading.current_thread().name)
            return super().predict(predictor, values)

    workload = Watched()
    workload.export(tmp_path)
    for downloads in (False, True):
        workload.downloads = downloads
        assert measure_pipeline(workload, tmp_path, (16, 1), seconds=0.2) > 0
    assert threads[False] and not any(n.startswith("bench-fetch") for n in threads[False])
    assert threads[True] and all(n.startswith("bench-fetch") for n in threads[True])
    assert made == 2 * Values.MADE  # made up front, however many were served
    assert ImagesWorkload.downloads and not TabularWorkload.downloads
