"""A hand-made workload result with round figures, for the table and report tests."""

from __future__ import annotations

from typing import Any

from streaminfer.bench.measure import LatencySummary, Spread
from streaminfer.bench.results import (
    BenchResult,
    CeilingResult,
    ConfigResult,
    LatencyPoint,
    WorkloadResult,
)


def latency(p50: float, p99: float) -> LatencySummary:
    return LatencySummary(
        count=100, p50_ms=p50, p95_ms=(p50 + p99) / 2, p99_ms=p99, max_ms=p99 + 1, mean_ms=p50
    )


def config(
    name: str,
    mode: str,
    guarantee: str | None,
    rate: float,
    p50: float = 50.0,
    p99: float = 200.0,
    worker_rss: float | None = 300.0,
    server_rss: float | None = None,
    runs: list[float] | None = None,
) -> ConfigResult:
    """A configuration whose saturation runs were ``runs`` (default: one run at ``rate``)."""
    throughput = Spread.of(runs or [rate])
    result = ConfigResult(name, mode, guarantee, f"{name} for tests", throughput=throughput)
    if guarantee is not None:
        result.worker_cpu_s_per_1k = Spread.of([10.0])
        result.worker_peak_rss_mb = worker_rss
        result.server_peak_rss_mb = server_rss
        if server_rss is not None:
            result.server_cpu_s_per_1k = Spread.of([12.0])
        result.latency = [
            LatencyPoint(0.25, rate / 4, 100, latency(p50 / 2, p99 / 2)),
            LatencyPoint(
                0.5,
                rate / 2,
                200,
                latency(p50, p99),
                latency(p50 / 5, p99 / 5),
                [p99 / 2, p99],
                rounds=[latency(p50, p99 / 2), latency(p50, p99)],
                commits_per_s=9.5,
                commit_ms=31.0,
            ),
            LatencyPoint(0.75, rate * 0.75, 0, None, skipped="overloaded"),
        ]
    return result


def images_result() -> WorkloadResult:
    """Ceiling 100/s; embedded 90/s (passes); gRPC 70/s (fails 0.75); seed 20/s."""
    ceiling = CeilingResult(
        pipeline=Spread.of([100.0]),
        pipeline_variant="batch 16 x 2 in flight",
        pipeline_batch=16,
        pipeline_lanes=2,
        pipeline_one_thread_rps=50.0,
        inference_rps=200.0,
        inference_batched_rps=250.0,
        cpu_s_per_1k=9.0,
    )
    workload = WorkloadResult(
        "images", "efficientnet-lite0", "images for tests", 1000, "embedded", 90.0, ceiling
    )
    bare = ConfigResult("bare", "bare", None, "ceiling", throughput=ceiling.pipeline)
    workload.configs = [
        bare,
        config("embedded", "embedded", "exactly-once", 90.0, worker_rss=520.0),
        config(
            "tfserving-grpc", "tfserving-grpc", "exactly-once", 70.0, p99=400.0, server_rss=450.0
        ),
        config("kserve-http", "kserve-http", "at-least-once", 65.0, server_rss=450.0),
        config("seed-style", "seed-style", "at-least-once", 20.0),
        ConfigResult("kserve-grpc", "kserve-grpc", "exactly-once", "broken", error="worker exited"),
    ]
    return workload


def repeated_result() -> WorkloadResult:
    """Runs whose medians pass the targets, with a spread that does not always.

    Ceiling runs 95, 100, 110 (median 100); embedded 80, 90, 92 (0.80-0.92x: the median
    passes 0.85, the worst run does not); tfserving-grpc 78, 80, 84 (every run ≥ 0.75);
    seed-style 20, 25, 30 (median 25).
    """
    ceiling = CeilingResult(
        pipeline=Spread.of([95.0, 110.0, 100.0]),
        pipeline_variant="batch 16 x 1 in flight",
        pipeline_batch=16,
        pipeline_lanes=1,
        pipeline_one_thread_rps=50.0,
        inference_rps=200.0,
        inference_batched_rps=250.0,
        cpu_s_per_1k=9.0,
    )
    workload = WorkloadResult(
        "images", "efficientnet-lite0", "images for tests", 1000, "embedded", 90.0, ceiling
    )
    workload.configs = [
        ConfigResult("bare", "bare", None, "ceiling", throughput=ceiling.pipeline),
        config("embedded", "embedded", "exactly-once", 90.0, runs=[92.0, 80.0, 90.0]),
        config("tfserving-grpc", "tfserving-grpc", "exactly-once", 80.0, runs=[84.0, 78.0, 80.0]),
        config("seed-style", "seed-style", "at-least-once", 25.0, runs=[20.0, 25.0, 30.0]),
    ]
    return workload


def bench_result() -> BenchResult:
    return BenchResult(
        started_at="2026-01-01T00:00:00+00:00",
        command="streaminfer bench --quick",
        machine={
            "cpus": 2,
            "cpu_model": "test",
            "python": "3.11",
            "load_average_start": 0.5,
            "load_average_end": 0.7,
        },
        settings={"quick": True, "repeats": 2},
        elapsed_s=75.0,
        workloads=[images_result()],
    )


def positive_figures(doc: dict[str, Any], *names: str) -> None:
    """Each named figure of ``doc`` (a results.json object) is a positive float."""
    for name in names:
        assert isinstance(doc[name], float) and doc[name] > 0, f"{doc.get('name')}: {name}"


def positive_spreads(doc: dict[str, Any], *names: str, runs: int | None = None) -> None:
    """Each named figure of ``doc`` is a spread of positive runs (``runs`` of them, if
    given) whose median lies within its min-max."""
    for name in names:
        spread = doc[name]
        assert spread is not None, f"{doc.get('name')}: no {name}"
        assert runs is None or len(spread["runs"]) == runs, f"{doc.get('name')}: {name}"
        positive_figures(spread, "median", "min", "max")
        assert spread["min"] <= spread["median"] <= spread["max"]
        assert spread["min"] == min(spread["runs"]) and spread["max"] == max(spread["runs"])
