"""Runs one configuration on one workload: fresh topics, a worker process, the measurements.

A run has three parts on the same worker:

1. **Saturation.**  A tenth of ``records`` to warm the worker up, then ``records`` inputs
   for each of ``repeats`` runs, are produced before the worker starts, so it is never
   short of work; each run is the next ``records`` of them.  A run's throughput is timed
   from the first output the worker wrote to the last, by the outputs' own timestamps,
   once a read_committed reader has seen them all (start-up, model loading and the
   first batches are outside every window; so is the grouping of outputs by commits).
   CPU time of the worker and of the model server is sampled from ``/proc`` on a
   thread meanwhile, and the CPU spent within a run's window is divided by the
   records the window counts.
2. **Latency.**  For each offered load, a paced producer writes at that steady rate for
   a fixed time; each output's latency is its input's timestamp to the moment the
   reader saw it.  Loads beyond 90 % of this configuration's own saturation rate are
   skipped: there the latency only measures how long the queue has been growing.
   The worker's commits over the load's rounds are read from its own metrics: how
   many a second and how long each took, the part of exactly-once latency after an
   output is written.
3. **Memory.**  The peak resident set (``VmHWM``) of the worker and the server.
"""

from __future__ import annotations

import gc
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from streaminfer.bench.configs import EMBEDDED, QUIX, BenchConfig
from streaminfer.bench.measure import (
    Spread,
    cpu_seconds,
    p99_by_second,
    peak_rss_mb,
    per_thousand,
    saturation_window,
    summarize_latencies,
    used_between,
)
from streaminfer.bench.results import LATENCY_LOAD, ConfigResult, LatencyPoint
from streaminfer.bench.traffic import Arrivals, InputProducer, OutputCollector
from streaminfer.bench.workloads import Workload
from streaminfer.errors import InfrastructureError
from streaminfer.kafka.admin import TopicAdmin
from streaminfer.kafka.config import KafkaSettings
from streaminfer.net import free_port
from streaminfer.processes import STREAMINFER, ManagedProcess, ModelServerProcess

FIRST_OUTPUT_TIMEOUT_S = 120.0  # a worker starting: model load, group join, first batch
STALL_TIMEOUT_S = 60.0  # outputs flowing, then none for this long: the run has failed
OVERLOAD = 0.9  # offered loads above this fraction of saturation are not latency-measured
# At the load the latency target is judged at, a rate more than this much above the same
# fraction of a configuration's own saturation is offered that fraction of its own as well.
JUDGED_MARGIN = 1.1
WARM_UP_SHARE = 0.1  # of a run's records, done before the first run: threads, first commit
CPU_SAMPLE_S = 0.05  # how often the worker's and the server's CPU time is read in saturation


@dataclass(frozen=True)
class Topics:
    input: str
    output: str
    dead_letter: str

    @classmethod
    def fresh(cls, workload: str, config: str) -> Topics:
        stem = f"bench-{workload}-{config}-{uuid.uuid4().hex[:8]}"
        return cls(f"{stem}.in", f"{stem}.out", f"{stem}.dlq")

    def all(self) -> list[str]:
        return [self.input, self.output, self.dead_letter]


class CpuSampler:
    """CPU seconds used so far by the worker and the server, sampled every ``CPU_SAMPLE_S``
    on a thread, so that a window of output timestamps is charged the CPU spent within it.

    Marks taken as outputs became visible charged a run with the wrong work: a saturated
    worker commits every half second, so by the time the warm-up's last output was
    visible, up to half a second of the run's records were already done, their CPU
    before the mark.  A 1 s run was charged half its CPU: 6 ms per 1,000 tensor records
    against the 17 its worker used.
    """

    def __init__(self, worker: int, server: int | None) -> None:
        self._pids = (worker, server)
        self.worker: list[tuple[float, float]] = []  # (wall clock, CPU seconds)
        self.server: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="bench-cpu", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(CPU_SAMPLE_S):
            self._sample()

    def _sample(self) -> None:
        worker, server = self._pids
        now = time.time()
        try:
            self.worker.append((now, cpu_seconds(worker)))
            if server is not None:
                self.server.append((now, cpu_seconds(server)))
        except OSError:  # a process that died: the wait for its outputs says so
            self._stop.set()


def judged_at_its_own(load: float, rate: float, saturation: float) -> bool:
    """Whether ``rate``, offered as ``load``, is the judged load and well above that share
    of the configuration's own ``saturation``: it is then offered that share as well."""
    return load == LATENCY_LOAD and rate > JUDGED_MARGIN * load * saturation


class ConfigRun:
    """One configuration's worker (and server), measured phase by phase; fills ``result``."""

    def __init__(
        self,
        config: BenchConfig,
        workload: Workload,
        kafka: KafkaSettings,
        repo: Path,
        log_dir: Path,
        quix_python: Path | None = None,
    ) -> None:
        self.config = config
        self.workload = workload
        self.kafka = kafka
        self.repo = repo
        self.log_dir = log_dir
        self.quix_python = quix_python
        self.result = ConfigResult(config.name, config.mode, config.guarantee, config.description)
        self.topics = Topics.fresh(workload.name, config.name)
        self._admin = TopicAdmin(kafka)
        self._stack = ExitStack()
        self._collector: OutputCollector | None = None
        self._worker: ManagedProcess | None = None
        self._metrics_port: int | None = None  # the worker's, for its commits (not Quix's)
        self._server: ModelServerProcess | None = None
        self._inputs = InputProducer(kafka, self.topics.input, workload.record)

    def __enter__(self) -> Self:
        for topic in self.topics.all():
            self._admin.create(topic, partitions=1)
        self._stack.callback(self._delete_topics)
        self._collector = OutputCollector(self.kafka, self.topics.output, self.topics.dead_letter)
        self._stack.callback(self._collector.close)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stack.close()

    # -- phases ------------------------------------------------------------------------------
    def saturate(self, records: int, repeats: int) -> None:
        """Pre-produce ``records`` for each of ``repeats`` runs, start the worker, and time
        each run's outputs from first to last."""
        warm_up = max(1, round(records * WARM_UP_SHARE))
        self._inputs.send_all(warm_up + records * repeats)
        stem = f"{self.workload.name}-{self.config.name}"
        if self.config.remote:
            self._server = ModelServerProcess(self.repo, self.log_dir / f"{stem}-server.log")
            self._stack.enter_context(self._server)
        self._worker = self._start_worker(self.log_dir / f"{stem}-worker.log")
        self._stack.enter_context(self._worker)
        server = self._server.pid if self._server is not None else None
        cpu = CpuSampler(self._worker.pid, server)
        ends = [warm_up + run * records for run in range(repeats + 1)]
        try:
            for count in ends:
                self._wait_for(count)
        finally:
            cpu.stop()
        rates, worker_cpu, server_cpu = [], [], []
        for run in range(repeats):
            arrivals = self._outputs(ends[run], ends[run + 1])
            window = saturation_window(arrivals.emitted_at)
            if window is None:
                raise InfrastructureError(
                    "every output of a run arrived at once: raise --records to time them"
                )
            self.result.windows.append(window)
            rates.append(window.rate)
            used = used_between(cpu.worker, window.start, window.end)
            worker_cpu.append(per_thousand(used, window.records))
            if server is not None:
                used = used_between(cpu.server, window.start, window.end)
                server_cpu.append(per_thousand(used, window.records))
        self.result.throughput = Spread.of(rates)
        self.result.worker_cpu_s_per_1k = Spread.of(worker_cpu)
        if server_cpu:
            self.result.server_cpu_s_per_1k = Spread.of(server_cpu)

    def offer(self, load: float, rate: float, duration_s: float, rounds: int) -> None:
        """Produce at ``rate`` records/s for ``duration_s``, ``rounds`` times in a row; record
        the latency percentiles of each round and of all of them.  A rate this configuration
        cannot take is skipped, and ``load`` of its own saturation rate offered instead; at
        the judged load, a rate well above ``load`` of its own is followed by that too, since
        the target speaks of each configuration's own saturation."""
        saturation = self.result.throughput_rps or 0.0
        point = LatencyPoint(load=load, offered_rps=rate)
        self.result.latency.append(point)
        if rate > OVERLOAD * saturation:
            point.skipped = (
                f"overloaded: {rate:.1f}/s offered, saturation {saturation:.1f}/s "
                f"(latency is measured up to {OVERLOAD:.0%} of it)"
            )
            if load > OVERLOAD:
                return
        else:
            self._measure(point, duration_s, rounds)
            if not judged_at_its_own(load, rate, saturation):
                return
        own = LatencyPoint(load=load, offered_rps=load * saturation, of_own=True)
        self.result.latency.append(own)
        self._measure(own, duration_s, rounds)

    def _measure(self, point: LatencyPoint, duration_s: float, rounds: int) -> None:
        rate = point.offered_rps
        sent_rates: list[float] = []
        latencies: list[np.ndarray] = []
        written: list[np.ndarray] = []
        commits_before, sending_s = self._commits(), 0.0
        for _ in range(rounds):
            _settle_garbage()
            first = self._inputs.sent
            records, seconds = self._inputs.send_paced(rate, duration_s)
            point.records += records
            sent_rates.append(records / seconds)
            sending_s += seconds
            self._wait_for(self._inputs.sent)
            arrivals = self._outputs(first, self._inputs.sent)
            stamped = ~np.isnan(arrivals.timestamp_ms)
            if not stamped.any():
                raise InfrastructureError("no output carried its input's timestamp")
            sent = arrivals.timestamp_ms[stamped]
            these = arrivals.seen_at[stamped] * 1000 - sent
            point.rounds.append(summarize_latencies(these))
            point.p99_by_second += p99_by_second(sent, these)
            latencies.append(these)
            written.append(arrivals.emitted_at[stamped] * 1000 - sent)
        point.sent_rps = min(sent_rates)
        point.latency = summarize_latencies(np.concatenate(latencies))
        point.written = summarize_latencies(np.concatenate(written))
        commits_after = self._commits()
        if commits_before is not None and commits_after is not None:
            count = commits_after[0] - commits_before[0]
            # Over the time records were sent: between rounds, with none coming, the worker
            # has nothing to commit once it has caught up.
            point.commits_per_s = count / sending_s
            if count:
                point.commit_ms = (commits_after[1] - commits_before[1]) / count * 1000

    def _commits(self) -> tuple[float, float] | None:
        """The worker's successful commits so far and the seconds they took, from its
        metrics endpoint; None for a worker without one."""
        if self._metrics_port is None:
            return None
        text = httpx.get(f"http://127.0.0.1:{self._metrics_port}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            if family.name == "streaminfer_commit_seconds":
                samples = {sample.name: sample.value for sample in family.samples}
                return samples[f"{family.name}_count"], samples[f"{family.name}_sum"]
        raise InfrastructureError("the worker's metrics have no streaminfer_commit_seconds")

    def finish(self) -> None:
        """Peak memory, who served the outputs, and whether that is who should have."""
        assert self._worker is not None and self._collector is not None
        self.result.worker_peak_rss_mb = peak_rss_mb(self._worker.pid)
        if self._server is not None:
            self.result.server_peak_rss_mb = peak_rss_mb(self._server.pid)
        self.result.dead_lettered = self._collector.dead_lettered
        self.result.served_by = self._collector.modes
        if self.result.served_by != [self.config.mode]:
            raise InfrastructureError(
                f"outputs were served by {', '.join(self.result.served_by) or 'nobody'}, "
                f"not by {self.config.mode}: the worker does not run this mode"
            )

    # -- helpers -----------------------------------------------------------------------------
    def _start_worker(self, log_path: Path) -> ManagedProcess:
        """``streaminfer run`` in this configuration's mode, or the Quix Streams app."""
        config, topics = self.config, self.topics
        assert config.guarantee is not None
        args = ["-b", self.kafka.bootstrap_servers]
        for key, value in self.kafka.properties.items():
            args += ["-X", f"{key}={value}"]
        args += [
            "--input", topics.input,
            "--output", topics.output,
            "--group-id", f"bench-{config.name}-{uuid.uuid4().hex[:8]}",
            "--processing-guarantee", config.guarantee,
            *self.workload.worker_args,
            *config.worker_args,
        ]  # fmt: skip
        if config.mode == QUIX:
            assert self.quix_python is not None  # the command leaves quix out without one
            quixapp = [str(self.quix_python), "-m", "streaminfer.bench.quixapp"]
            command = [*quixapp, *args, "--repo", str(self.repo)]
            return ManagedProcess("Quix Streams app", command, log_path)
        self._metrics_port = free_port()
        args += ["--dlq", topics.dead_letter, "--mode", config.mode]
        args += ["--metrics-port", str(self._metrics_port)]
        if config.mode == EMBEDDED:
            args += ["--repo", str(self.repo)]
        else:
            assert self._server is not None
            args += ["--server", self._server.address(config.rest)]
        return ManagedProcess("worker", [*STREAMINFER, "run", *args], log_path)

    def _wait_for(self, count: int) -> None:
        assert self._collector is not None and self._worker is not None
        worker = self._worker
        try:
            self._collector.wait_for(count, worker.alive, FIRST_OUTPUT_TIMEOUT_S, STALL_TIMEOUT_S)
        except InfrastructureError as exc:
            raise worker.failure(str(exc)) from exc

    def _outputs(self, first: int, end: int) -> Arrivals:
        assert self._collector is not None
        return self._collector.arrivals(first, end)

    def _delete_topics(self) -> None:
        for topic in self.topics.all():
            self._admin.delete(topic)


def _settle_garbage() -> None:
    """Collect the bench's garbage now and leave what survives out of later collections.

    The bench's process shares the worker's cores and paces its inputs: a full collection
    in the middle of a latency round (tens of ms over every module and object it has
    made) stalls the reader and the producer, and shows as the worker's latency.
    """
    gc.collect()
    gc.freeze()
