"""Every figure one benchmark run produces, as plain dataclasses that serialise to JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from streaminfer.bench.measure import LatencySummary


@dataclass
class LatencyPoint:
    """End-to-end latency at one offered load, or why that load was not run."""

    load: float  # fraction of the workload's reference rate
    offered_rps: float
    records: int = 0
    latency: LatencySummary | None = None
    skipped: str | None = None


@dataclass
class ConfigResult:
    name: str
    mode: str
    guarantee: str | None
    description: str
    throughput_rps: float | None = None
    window_records: int = 0  # records timed for the throughput
    window_s: float | None = None
    worker_cpu_s_per_1k: float | None = None  # the bare pipeline's own process for "bare"
    server_cpu_s_per_1k: float | None = None
    worker_peak_rss_mb: float | None = None
    server_peak_rss_mb: float | None = None
    latency: list[LatencyPoint] = field(default_factory=list)
    served_by: list[str] = field(default_factory=list)  # "mode" of the outputs
    dead_lettered: int = 0
    error: str | None = None
    elapsed_s: float = 0.0
    load_average: float | None = None  # the machine's 1-minute load average at the end

    def latency_at(self, load: float) -> LatencySummary | None:
        for point in self.latency:
            if point.load == load:
                return point.latency
        return None


@dataclass
class CeilingResult:
    """The in-process figures, no Kafka and no worker: what the machine and model allow."""

    pipeline_rps: float  # best fetch + decode + preprocess + inference rate, every core
    pipeline_variant: str
    pipeline_one_thread_rps: float
    inference_rps: float  # bare ONNX Runtime, batch 1, one caller
    inference_batched_rps: float  # bare ONNX Runtime, batch 16, one caller
    cpu_s_per_1k: float  # of the best pipeline variant
    variants: dict[str, float] = field(default_factory=dict)  # pipeline rate of each shape
    runs: list[float] = field(default_factory=list)  # best pipeline rate of each measurement


@dataclass
class WorkloadResult:
    name: str
    model: str
    title: str
    records: int
    reference: str | None = None  # the configuration whose saturation rate loads are based on
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
