"""The tabular workload's records: the worker's own parser reads both forms alike."""

from __future__ import annotations

from streaminfer.bench.workloads import TabularWorkload
from streaminfer.flights import FEATURES
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
