"""Ratios to the ceiling and to seed-style, and the TARGETS.md checks, on made-up figures."""

from __future__ import annotations

import pytest

from streaminfer.bench.configs import CONFIGS, QUICK_CONFIGS, select_configs
from streaminfer.bench.measure import Spread
from streaminfer.bench.report import markdown_table
from streaminfer.bench.results import LatencyPoint
from streaminfer.bench.runner import judged_at_its_own
from streaminfer.bench.table import (
    HEADERS,
    SHORT_HEADERS,
    Check,
    Row,
    build_rows,
    ceiling_check,
    latency_check,
    memory_check,
    quix_check,
    ratio,
)
from streaminfer.errors import ConfigError
from tests.test_bench.cases import images_result, latency


def rows_by_name() -> dict[str, Row]:
    return {row.name: row for row in build_rows(images_result())}


def test_rows_keep_the_run_order_with_bare_inference_after_the_ceiling() -> None:
    names = [row.name for row in build_rows(images_result())]
    assert names == [
        "bare",
        "bare-inference",
        "embedded",
        "tfserving-grpc",
        "kserve-http",
        "seed-style",
        "kserve-grpc",
    ]


def test_ratios_to_the_ceiling_and_to_seed_style() -> None:
    medians = {
        name: (
            row.vs_ceiling.median if row.vs_ceiling else None,
            row.vs_seed.median if row.vs_seed else None,
        )
        for name, row in rows_by_name().items()
    }
    assert medians["bare"][0] == 1.0
    assert medians["bare-inference"][0] == 2.0
    assert medians["embedded"] == pytest.approx((0.9, 4.5))
    assert medians["seed-style"][1] == 1.0
    five = Spread.of([5.0])
    assert ratio(None, 10.0) is None and ratio(five, None) is None and ratio(five, 0.0) is None


def test_checks_follow_the_targets() -> None:
    rows = rows_by_name()
    embedded = rows["embedded"].checks
    assert embedded["ceiling"] is not None and embedded["ceiling"].passed  # 0.90 >= 0.85
    assert embedded["seed"] is not None and embedded["seed"].passed  # 4.5 >= 3
    assert embedded["latency"] is not None and embedded["latency"].passed  # 50 / 200 ms
    assert embedded["memory"] is not None and not embedded["memory"].passed  # 520 > 500 MB
    grpc = rows["tfserving-grpc"].checks
    assert grpc["ceiling"] is not None and not grpc["ceiling"].passed  # 0.70 < 0.75
    assert grpc["latency"] is not None and not grpc["latency"].passed  # p99 400 > 300
    assert grpc["memory"] is not None and grpc["memory"].passed  # 300 / 450 MB
    rest = rows["kserve-http"].checks
    assert rest["ceiling"] is not None and rest["ceiling"].passed  # 0.65 >= 0.6
    assert rest["latency"] is None  # at-least-once: the latency target is for exactly-once
    seed = rows["seed-style"].checks
    assert seed["seed"] is None and seed["ceiling"] is None
    assert rows["bare"].checks["memory"] is None
    assert rows["kserve-grpc"].checks == {}


def test_throughput_targets_apply_to_images_and_to_embedded_on_tabular_and_tensor() -> None:
    assert ceiling_check("tensor", "embedded", Spread.of([0.84, 0.93])) == Check("≥ 0.85", False)
    assert ceiling_check("tensor", "embedded", Spread.of([0.89, 0.94])) == Check("≥ 0.85", True)
    assert ceiling_check("tensor", "tfserving-grpc", Spread.of([0.2])) is None
    assert ceiling_check("tabular", "embedded", Spread.of([0.85])) == Check("≥ 0.85", True)
    assert ceiling_check("tabular", "embedded", Spread.of([0.84, 0.9])) == Check("≥ 0.85", False)
    assert ceiling_check("tabular", "tfserving-grpc", Spread.of([0.1])) is None
    assert ceiling_check("images", "seed-style", Spread.of([0.1])) is None
    check = ceiling_check("images", "tfserving-rest", Spread.of([0.61]))
    assert check is not None and check.passed and check.target == "≥ 0.6"


def test_latency_and_memory_limits_are_inclusive() -> None:
    at_limit = latency_check("exactly-once", LatencyPoint(0.5, 100.0, 1000, latency(100.0, 300.0)))
    assert at_limit is not None and at_limit.passed
    assert latency_check("exactly-once", None) is None
    assert latency_check("exactly-once", LatencyPoint(0.5, 100.0, skipped="overloaded")) is None


def test_a_latency_target_needs_every_round_within_it() -> None:
    """All rounds together are within the limits, but one round alone is not."""
    together = latency(60.0, 280.0)
    point = LatencyPoint(0.5, 100.0, 2000, together, rounds=[latency(40.0, 200.0), together])
    check = latency_check("exactly-once", point)
    assert check is not None and check.passed
    point.rounds.append(latency(90.0, 320.0))
    check = latency_check("exactly-once", point)
    assert check is not None and not check.passed
    point.rounds[-1] = latency(101.0, 250.0)
    check = latency_check("exactly-once", point)
    assert check is not None and not check.passed


def test_a_latency_measured_below_the_offered_load_fails() -> None:
    """Figures within the limits, but the producer sent 90 of the 100 records/s offered."""
    short = LatencyPoint(0.5, 100.0, 1000, latency(10.0, 20.0), sent_rps=90.0)
    check = latency_check("exactly-once", short)
    assert check is not None and not check.passed
    assert check.target == "p50 ≤ 100, p99 ≤ 300; 90 of 100 records/s sent"
    reached = LatencyPoint(0.5, 100.0, 1000, latency(10.0, 20.0), sent_rps=95.0)
    check = latency_check("exactly-once", reached)
    assert check is not None and check.passed
    check = memory_check(500.0, 600.0)
    assert check is not None and check.passed
    check = memory_check(100.0, 601.0)
    assert check is not None and not check.passed
    assert memory_check(None, None) is None


def test_cells_and_verdicts() -> None:
    rows = rows_by_name()
    embedded = rows["embedded"]
    assert len(embedded.cells()) == len(HEADERS)
    assert len(embedded.short_cells()) == len(SHORT_HEADERS)
    assert embedded.cells()[2:6] == ["90.0", "0.90x", "4.50x", "—"]  # no quix run here
    assert embedded.cells()[6] == "50 / 125 / 200 (worst round 50 / 200)"  # all rounds; worst
    assert embedded.verdict() == "FAIL memory"
    assert rows["kserve-http"].verdict() == "pass"
    assert rows["bare"].verdict() == "—"
    assert rows["kserve-grpc"].cells()[2] == "failed"
    assert rows["tfserving-grpc"].cells()[7] == "10.000 + 12.000"
    assert rows["tfserving-grpc"].cells()[8] == "300 / 450"


def test_a_load_that_overloaded_a_mode_reads_at_its_own_rate_and_says_so() -> None:
    workload = images_result()
    grpc = workload.config("tfserving-grpc")
    assert grpc is not None
    skipped = LatencyPoint(0.5, 100.0, skipped="overloaded")
    own = LatencyPoint(0.5, 35.0, 500, latency(150.0, 400.0), of_own=True)
    grpc.latency = [skipped, own]
    assert grpc.latency_at(0.5) is own
    row = next(r for r in build_rows(workload) if r.name == "tfserving-grpc")
    assert row.cells()[6] == "150 / 275 / 400 at 35/s, 50% of its own"
    assert row.short_cells()[6] == "150 / 400 at 35/s, 50% of its own"
    assert row.checks["latency"] == Check("p50 ≤ 100, p99 ≤ 300", False)  # judged there too
    # Measured at the reference rate, well above half its own: judged at half its own.
    common = LatencyPoint(0.5, 100.0, 500, latency(90.0, 250.0))
    grpc.latency = [common, own]
    assert grpc.latency_at(0.5) is own
    grpc.latency = [common]
    assert grpc.latency_at(0.5) is common
    grpc.latency = [skipped]
    assert grpc.latency_at(0.5) is skipped
    row = next(r for r in build_rows(workload) if r.name == "tfserving-grpc")
    assert row.cells()[6] == "—" and row.checks["latency"] is None


def test_only_the_judged_load_well_above_half_its_own_is_offered_half_its_own_too() -> None:
    assert judged_at_its_own(0.5, 35_000, 60_000)  # 58 % of its own
    assert not judged_at_its_own(0.5, 32_000, 60_000)  # 53 %: near enough
    assert not judged_at_its_own(0.25, 35_000, 60_000)  # not the judged load


def test_quix_targets_apply_to_embedded_per_workload() -> None:
    assert quix_check("images", "embedded", Spread.of([1.8])) == Check("≥ 1.8", True)
    assert quix_check("images", "embedded", Spread.of([1.79])) == Check("≥ 1.8", False)
    assert quix_check("tensor", "embedded", Spread.of([2.9])) == Check("≥ 3", False)
    assert quix_check("tabular", "embedded", Spread.of([2.0])) == Check("≥ 2", True)
    assert quix_check("tabular", "embedded", Spread.of([1.9, 2.5])) == Check("≥ 2", False)
    assert quix_check("images", "kserve-grpc", Spread.of([5.0])) is None
    assert quix_check("images", "embedded", None) is None


def test_markdown_table_escapes_pipes() -> None:
    text = markdown_table(["a", "b"], [["1|2", "3"]])
    assert text.splitlines() == ["| a | b |", "| --- | --- |", "| 1\\|2 | 3 |"]


def test_config_selection() -> None:
    assert [c.name for c in select_configs(None, quick=True)] == list(QUICK_CONFIGS)
    tabular = select_configs(None, quick=True, workloads=["tabular"])
    assert [c.name for c in tabular] == ["bare", "embedded", "embedded-alo", "quix"]
    assert all(c.applies_to("tabular") for c in tabular)
    assert not any(c.applies_to("tabular") for c in CONFIGS if c.remote)  # embedded only
    assert [c.name for c in select_configs(None, quick=False)] == [c.name for c in CONFIGS]
    chosen = select_configs(["seed-style", "embedded"], quick=False)
    assert [c.name for c in chosen] == ["embedded", "seed-style"]  # canonical order
    with pytest.raises(ConfigError, match="nope"):
        select_configs(["embedded", "nope"], quick=False)
