"""The reader's columns: which output of an input counts, and what a round selects."""

from __future__ import annotations

import math

import numpy as np

from streaminfer.bench.traffic import first_sightings


def test_each_input_counts_its_first_output_seen_within_the_range() -> None:
    # Rows as the reader appends them: offset, input timestamp (ms), emitted at, seen at.
    # Offset 3 is seen twice (an at-least-once redelivery): the first sighting counts.
    rows = np.array(
        [
            [4.0, 1_000.0, 1.5, 2.0],
            [3.0, 900.0, 1.2, 2.0],
            [2.0, math.nan, 1.1, 2.0],
            [3.0, 900.0, 2.6, 3.0],
            [9.0, 1_100.0, 2.7, 3.0],
        ]
    )
    arrivals = first_sightings(rows, first=2, end=5)
    assert arrivals.offset.tolist() == [2, 3, 4] and arrivals.offset.dtype == np.int64
    assert arrivals.seen_at.tolist() == [2.0, 2.0, 2.0]
    assert arrivals.emitted_at.tolist() == [1.1, 1.2, 1.5]
    assert math.isnan(arrivals.timestamp_ms[0])
    assert arrivals.timestamp_ms[1:].tolist() == [900, 1_000]
    assert len(arrivals) == 3


def test_nothing_seen_selects_nothing() -> None:
    assert len(first_sightings(np.empty((0, 4)), first=0, end=10)) == 0
    rows = np.array([[12.0, 1.0, 1.0, 1.0]])
    assert len(first_sightings(rows, first=0, end=12)) == 0
