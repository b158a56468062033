"""Repeated runs: the spread of a figure, the order the ceiling runs in, targets judged at
the worst run, and how the report and results.json show all three."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streaminfer.bench.configs import CONFIGS, BenchConfig, select_configs
from streaminfer.bench.measure import Spread
from streaminfer.bench.report import RESULTS_FILE, write_report
from streaminfer.bench.suite import run_order
from streaminfer.bench.table import Row, build_rows, ceiling_check, quix_check, seed_check
from tests.test_bench.cases import bench_result, repeated_result


def test_spread_is_the_median_and_the_range_of_the_runs_in_their_order() -> None:
    odd = Spread.of([3.0, 1.0, 2.0])
    assert (odd.median, odd.min, odd.max, odd.runs) == (2.0, 1.0, 3.0, (3.0, 1.0, 2.0))
    even = Spread.of([4.0, 1.0, 2.0, 10.0])
    assert even.median == 3.0  # the mean of the middle two
    one = Spread.of([7.0])
    assert (one.median, one.min, one.max) == (7.0, 7.0, 7.0)
    with pytest.raises(ValueError):
        Spread.of([])


def test_a_ratio_divides_each_run_by_the_base() -> None:
    ratios = Spread.of([80.0, 92.0, 90.0]).divided_by(100.0)
    assert ratios.runs == pytest.approx((0.8, 0.92, 0.9))
    assert (ratios.median, ratios.min, ratios.max) == pytest.approx((0.9, 0.8, 0.92))


def names(configs: list[BenchConfig]) -> list[str]:
    return [c.name for c in configs]


def test_the_ceiling_runs_before_each_configuration_and_after_the_last() -> None:
    configs = select_configs(["bare", "embedded", "tfserving-grpc", "kserve-grpc"], quick=False)
    assert names(run_order(configs, repeats=3)) == [
        "bare", "embedded", "bare", "tfserving-grpc", "bare", "kserve-grpc", "bare",
    ]  # fmt: skip


def test_the_ceiling_runs_at_least_repeats_times() -> None:
    bare = select_configs(["bare"], quick=False)
    assert names(run_order(bare, repeats=3)) == ["bare", "bare", "bare"]
    one = select_configs(["bare", "embedded"], quick=False)
    assert names(run_order(one, repeats=3)) == ["bare", "embedded", "bare", "bare"]
    assert names(run_order(one, repeats=1)) == ["bare", "embedded", "bare"]


def test_without_the_ceiling_only_the_workers_run_once_each() -> None:
    workers = [c for c in CONFIGS if c.name in ("embedded", "quix")]
    assert names(run_order(workers, repeats=3)) == ["embedded", "quix"]


def rows() -> dict[str, Row]:
    return {row.name: row for row in build_rows(repeated_result())}


def test_ratios_are_each_run_against_the_median_of_the_base() -> None:
    table = rows()
    embedded = table["embedded"]
    assert embedded.throughput == Spread.of([92.0, 80.0, 90.0])
    assert embedded.vs_ceiling is not None
    assert embedded.vs_ceiling.runs == pytest.approx((0.92, 0.8, 0.9))  # ceiling median 100
    assert embedded.vs_seed is not None
    assert embedded.vs_seed.median == pytest.approx(3.6)  # seed-style median 25
    assert embedded.vs_seed.min == pytest.approx(3.2)
    bare = table["bare"].vs_ceiling
    assert bare is not None and (bare.median, bare.min, bare.max) == pytest.approx((1, 0.95, 1.1))


def test_a_throughput_target_passes_only_when_the_worst_run_meets_it() -> None:
    table = rows()
    embedded = table["embedded"].checks["ceiling"]
    assert embedded is not None and not embedded.passed  # median 0.90, worst run 0.80 < 0.85
    grpc = table["tfserving-grpc"].checks["ceiling"]
    assert grpc is not None and grpc.passed  # 0.78 to 0.84, all ≥ 0.75
    assert table["embedded"].verdict() == "FAIL ceiling"

    spread = Spread.of([2.9, 3.5, 4.0])  # median 3.5
    seed = seed_check("images", "embedded", spread)
    assert seed is not None and not seed.passed
    quix = quix_check("tensor", "embedded", spread)
    assert quix is not None and not quix.passed
    at_floor = ceiling_check("images", "embedded", Spread.of([0.85, 0.9]))
    assert at_floor is not None and at_floor.passed


def test_cells_show_the_median_and_the_range_of_the_runs() -> None:
    table = rows()
    assert table["embedded"].cells()[2:5] == [
        "90.0 (80.0-92.0)",
        "0.90x (0.80-0.92x)",
        "3.60x (3.20-3.68x)",
    ]
    assert table["bare"].cells()[2:4] == ["100.0 (95.0-110.0)", "1.00x (0.95-1.10x)"]
    assert table["bare-inference"].cells()[2] == "200.0"  # measured once: no range
    assert table["embedded"].cells()[-5] == "FAIL (≥ 0.85)"


def test_report_and_json_carry_the_spreads_and_the_verdicts(tmp_path: Path) -> None:
    result = bench_result()
    result.settings = {"repeats": 3}
    result.workloads = [repeated_result()]
    text = write_report(result, tmp_path).read_text()
    assert "median of 3 runs" in text
    assert "100.0 records/s, the median of 3 runs (95.0-110.0)" in text
    assert "| embedded | exactly-once | 90.0 (80.0-92.0) | 0.90x (0.80-0.92x) |" in text

    [images] = json.loads((tmp_path / RESULTS_FILE).read_text())["workloads"]
    assert images["ceiling"]["pipeline"] == {
        "median": 100.0,
        "min": 95.0,
        "max": 110.0,
        "runs": [95.0, 110.0, 100.0],
    }
    embedded = next(c for c in images["configs"] if c["name"] == "embedded")
    assert embedded["throughput"]["runs"] == [92.0, 80.0, 90.0]
    row = next(r for r in images["table"] if r["name"] == "embedded")
    assert row["vs_ceiling"]["min"] == pytest.approx(0.8)
    assert row["checks"]["ceiling"] == {"target": "≥ 0.85", "passed": False}
