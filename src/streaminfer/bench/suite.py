"""The whole benchmark: one broker and one model repository, every configuration in turn.

Configurations run one after another, never side by side, so each has the machine to
itself; the first worker configuration (``embedded`` unless left out) sets the
workload's reference rate (the median of its saturation runs), unless
``--reference-rate`` gives one, and every configuration's offered loads are fractions of
it, so all of them are measured at the same absolute loads.

The ceiling (``bare``) is measured before the first configuration and again after each
one (``run_order``), so its median spans the same moments of a busy machine as the
figures it is compared with.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException

from streaminfer.bench.ceiling import measure_ceiling, measure_pipeline
from streaminfer.bench.configs import BARE, FULL, MIN_RECORDS, QUICK, BenchConfig
from streaminfer.bench.measure import Spread
from streaminfer.bench.results import (
    GIVEN_REFERENCE,
    BenchResult,
    ConfigResult,
    WorkloadResult,
)
from streaminfer.bench.runner import ConfigRun
from streaminfer.bench.table import figure_text
from streaminfer.bench.workloads import Workload, default_records, open_workload
from streaminfer.cores import usable_cores
from streaminfer.errors import StreamInferError
from streaminfer.kafka.broker import LocalBroker
from streaminfer.kafka.config import KafkaSettings
from streaminfer.net import free_port
from streaminfer.processes import interrupted_by_sigterm

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchPlan:
    """What to run, and how long each measurement lasts."""

    workloads: list[str]
    configs: list[BenchConfig]
    records: dict[str, int]  # per workload: records pre-produced for the saturation run
    loads: list[float]  # offered loads, as fractions of the reference rate
    reference_rps: float | None  # the reference rate given; None: the first worker's
    duration_s: float  # of each offered load
    ceiling_s: float  # of each in-process measurement
    repeats: int  # saturation runs and latency rounds per configuration; ceiling runs at the least
    out: Path
    quix_python: Path | None = None  # an interpreter with quixstreams, for the quix config

    @classmethod
    def build(
        cls,
        workloads: list[str],
        configs: list[BenchConfig],
        out: Path,
        quick: bool = False,
        records: int | None = None,
        loads: list[float] | None = None,
        reference_rps: float | None = None,
        duration_s: float | None = None,
        ceiling_s: float | None = None,
        repeats: int | None = None,
        quix_python: Path | None = None,
    ) -> BenchPlan:
        """A plan from a preset (``quick`` or full), with any figure the user gave instead."""
        preset = QUICK if quick else FULL
        return cls(
            workloads=workloads,
            configs=configs,
            records={w: records or default_records(w) // preset.records_divisor for w in workloads},
            loads=loads or list(preset.loads),
            reference_rps=reference_rps,
            duration_s=duration_s or preset.duration_s,
            ceiling_s=ceiling_s or preset.ceiling_s,
            repeats=repeats or preset.repeats,
            out=out,
            quix_python=quix_python,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "workloads": self.workloads,
            "configs": [c.name for c in self.configs],
            "records": self.records,
            "loads": self.loads,
            "reference_rps": self.reference_rps,
            "duration_s": self.duration_s,
            "ceiling_s": self.ceiling_s,
            "repeats": self.repeats,
        }


def run_bench(
    plan: BenchPlan, kafka: KafkaSettings | None, command: str, progress: Progress
) -> BenchResult:
    """Run the plan; a configuration that fails is reported with its error, not fatal."""
    started = time.monotonic()
    result = BenchResult(
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        command=command,
        machine=machine_info(),
        settings=plan.describe(),
    )
    log_dir = plan.out / "logs"
    with interrupted_by_sigterm(), ExitStack() as stack:
        if kafka is None:
            progress("starting a Kafka broker")
            kafka = stack.enter_context(local_broker())
        repo = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="streaminfer-repo-")))
        for name in plan.workloads:
            with open_workload(name, log_dir) as workload:
                workload.export(repo)
                result.workloads.append(_run_workload(plan, workload, kafka, repo, progress))
    result.machine["load_average_end"] = os.getloadavg()[0]
    result.elapsed_s = time.monotonic() - started
    return result


@contextmanager
def local_broker() -> Iterator[KafkaSettings]:
    """A throw-away single-node Kafka on a free loopback port."""
    with tempfile.TemporaryDirectory(prefix="streaminfer-kafka-") as folder:
        broker = LocalBroker(Path(folder))
        state = broker.start(port=free_port())
        try:
            yield KafkaSettings(bootstrap_servers=state.bootstrap)
        finally:
            broker.stop()


def machine_info() -> dict[str, Any]:
    """What the figures were measured on; absolute figures mean little without it."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "usable_cores": usable_cores(),  # fewer under a CPU limit or a cpuset
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_start": os.getloadavg()[0],
    }


def run_order(configs: Sequence[BenchConfig], repeats: int) -> list[BenchConfig]:
    """The configurations in the order they run: with ``bare`` among them, a ceiling run
    before the first worker configuration and after each one, and at least ``repeats``
    ceiling runs (the extra ones last)."""
    workers = [c for c in configs if c.mode != BARE]
    bare = next((c for c in configs if c.mode == BARE), None)
    if bare is None:
        return workers
    order = [bare]
    for config in workers:
        order += [config, bare]
    return order + [bare] * (repeats - order.count(bare))


def _run_workload(
    plan: BenchPlan, workload: Workload, kafka: KafkaSettings, repo: Path, progress: Progress
) -> WorkloadResult:
    result = WorkloadResult(
        workload.name, workload.model, workload.title, plan.records[workload.name]
    )
    if plan.reference_rps is not None:
        result.reference, result.reference_rps = GIVEN_REFERENCE, plan.reference_rps
    configs = [c for c in plan.configs if c.applies_to(workload.name)]
    for config in run_order(configs, plan.repeats):
        bare = result.config(BARE)
        if bare is not None and config.mode == BARE:
            if bare.error is None:
                progress(f"{workload.name} / {BARE}: the ceiling again, in its best shape")
                _measure_again(plan, workload, repo, bare, result)
                progress(_summary(bare))
            continue
        progress(f"{workload.name} / {config.name}: {config.description}")
        started = time.monotonic()
        if config.mode == BARE:
            outcome = _run_bare(plan, config, workload, repo, result)
        else:
            outcome = _run_worker(plan, config, workload, kafka, repo, result)
        outcome.elapsed_s = time.monotonic() - started
        outcome.load_average = os.getloadavg()[0]
        result.configs.append(outcome)
        progress(_summary(outcome))
    return result


def _run_bare(
    plan: BenchPlan, config: BenchConfig, workload: Workload, repo: Path, into: WorkloadResult
) -> ConfigResult:
    """The first ceiling run: every figure, every shape of concurrency."""
    outcome = ConfigResult(config.name, config.mode, config.guarantee, config.description)
    try:
        into.ceiling = measure_ceiling(workload, repo, plan.ceiling_s)
    except StreamInferError as exc:
        outcome.error = str(exc)
        return outcome
    outcome.throughput = into.ceiling.pipeline
    outcome.worker_cpu_s_per_1k = Spread.of([into.ceiling.cpu_s_per_1k])
    return outcome


def _measure_again(
    plan: BenchPlan, workload: Workload, repo: Path, bare: ConfigResult, into: WorkloadResult
) -> None:
    """A later ceiling run, in the shape the first one found best."""
    assert into.ceiling is not None
    started = time.monotonic()
    try:
        best = (into.ceiling.pipeline_batch, into.ceiling.pipeline_lanes)
        rate = measure_pipeline(workload, repo, best, plan.ceiling_s)
    except StreamInferError as exc:
        bare.error = str(exc)
        return
    finally:
        bare.elapsed_s += time.monotonic() - started
    into.ceiling.add_run(rate)
    bare.throughput = into.ceiling.pipeline


def _run_worker(
    plan: BenchPlan,
    config: BenchConfig,
    workload: Workload,
    kafka: KafkaSettings,
    repo: Path,
    into: WorkloadResult,
) -> ConfigResult:
    run = ConfigRun(config, workload, kafka, repo, plan.out / "logs", plan.quix_python)
    try:
        with run:
            records = max(MIN_RECORDS, round(into.records * config.records_share))
            run.saturate(records, plan.repeats)
            if into.reference_rps is None:
                into.reference, into.reference_rps = config.name, run.result.throughput_rps
            assert into.reference_rps is not None
            for load in plan.loads:
                run.offer(load, load * into.reference_rps, plan.duration_s, plan.repeats)
            run.finish()
    except (StreamInferError, KafkaException) as exc:
        run.result.error = str(exc)
    return run.result


def _summary(outcome: ConfigResult) -> str:
    if outcome.error is not None:
        return f"  failed: {outcome.error.splitlines()[0]}"
    spread = outcome.throughput
    rate = "-" if spread is None else f"{figure_text(spread, 1)} records/s"
    points = [
        f"{p.load:.0%}{' of its own' if p.of_own else ''}: "
        f"p50 {p.latency.p50_ms:.0f} ms, p99 {p.latency.p99_ms:.0f} ms"
        for p in outcome.latency
        if p.latency is not None
    ]
    return "  " + "; ".join([rate, *points]) + f" ({outcome.elapsed_s:.0f}s)"
