"""Every figure one benchmark run produces, as plain dataclasses that serialise to JSON.

A figure measured more than once is a ``Spread``: its median (the figure), its min-max,
and every run in order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from streaminfer.bench.measure import LatencySummary, Spread, Window

GIVEN_REFERENCE = "--reference-rate"  # WorkloadResult.reference: the user gave the rate
LATENCY_LOAD = 0.5  # exactly-once latency is judged at half the saturation load


@dataclass
class LatencyPoint:
    """End-to-end latency at one offered load, or why that load was not run.  The load is
    offered in rounds, one after another: the figures are of all their records together,
    and ``rounds`` holds each round's own, which a latency target must meet every one of."""

    load: float  # fraction of the workload's reference rate; with of_own, of the config's
    offered_rps: float
    records: int = 0
    latency: LatencySummary | None = None
    # Input timestamp to the output's own (when the worker wrote it): the worker's share;
    # the rest is the wait for its transaction to commit, and the reader's.
    written: LatencySummary | None = None
    p99_by_second: list[float] = field(default_factory=list)  # measure.p99_by_second
    sent_rps: float | None = None  # the slowest round's sending rate: offered_rps, if reached
    skipped: str | None = None
    rounds: list[LatencySummary] = field(default_factory=list)
    # The same fraction of the configuration's own saturation rate: offered in place of the
    # reference rate's load when that overloaded it, so every mode gets a latency figure,
    # and beside it at LATENCY_LOAD when that came well above the fraction of its own.
    of_own: bool = False
    # The worker's successful commits over the rounds (None for a worker without metrics).
    commits_per_s: float | None = None
    commit_ms: float | None = None  # the mean time one took


@dataclass
class ConfigResult:
    name: str
    mode: str
    guarantee: str | None
    description: str
    throughput: Spread | None = None  # records/s of each saturation run
    windows: list[Window] = field(default_factory=list)  # what each saturation run timed
    worker_cpu_s_per_1k: Spread | None = None  # the bare pipeline's own process for "bare"
    server_cpu_s_per_1k: Spread | None = None
    worker_peak_rss_mb: float | None = None
    server_peak_rss_mb: float | None = None
    latency: list[LatencyPoint] = field(default_factory=list)
    served_by: list[str] = field(default_factory=list)  # "mode" of the outputs
    dead_lettered: int = 0
    error: str | None = None
    elapsed_s: float = 0.0
    load_average: float | None = None  # the machine's 1-minute load average at the end

    @property
    def throughput_rps(self) -> float | None:
        """The saturation rate: the median of the runs."""
        return None if self.throughput is None else self.throughput.median

    def latency_at(self, load: float) -> LatencyPoint | None:
        """The point at ``load``: measured at that fraction of its own rate if it was, else
        at the reference rate, else the skipped one."""
        points = [point for point in self.latency if point.load == load]
        measured = sorted((p for p in points if p.latency is not None), key=lambda p: not p.of_own)
        return next(iter(measured or points), None)


@dataclass
class CeilingResult:
    """The in-process figures, no Kafka and no worker: what the machine and model allow."""

    # Fetch + decode + preprocess + inference, every core, in the best shape of concurrency:
    # the first measurement tries each shape, the later ones (between the configurations)
    # run the best one again; the median of them all is the ceiling.
    pipeline: Spread
    pipeline_variant: str
    pipeline_batch: int  # records per batch in the best shape
    pipeline_lanes: int  # batches in flight in the best shape
    pipeline_one_thread_rps: float
    inference_rps: float  # bare ONNX Runtime, batch 1, one caller
    inference_batched_rps: float  # bare ONNX Runtime, batch 16, one caller
    cpu_s_per_1k: float  # of the best pipeline variant
    variants: dict[str, float] = field(default_factory=dict)  # pipeline rate of each shape

    @property
    def pipeline_rps(self) -> float:
        return self.pipeline.median

    def add_run(self, rate: float) -> None:
        """Another measurement of the best shape."""
        self.pipeline = Spread.of([*self.pipeline.runs, rate])


@dataclass
class WorkloadResult:
    name: str
    model: str
    title: str
    records: int
    reference: str | None = None  # whose saturation rate loads are fractions of; or GIVEN_REFERENCE
    reference_rps: float | None = None
    ceiling: CeilingResult | None = None
    configs: list[ConfigResult] = field(default_factory=list)

    def config(self, name: str) -> ConfigResult | None:
        return next((c for c in self.configs if c.name == name), None)


@dataclass
class BenchResult:
    started_at: str
    command: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    elapsed_s: float = 0.0
    workloads: list[WorkloadResult] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
