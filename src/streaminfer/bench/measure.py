"""The figures a benchmark reports, computed from raw observations.

Pure functions (percentiles, rates, the spread of repeated runs) plus readers of
``/proc`` for a process's CPU time and peak memory, so that a worker or server measured
from outside pays nothing for it.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles of one set of end-to-end latencies, in milliseconds."""

    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float:
    """The ``q``-th percentile (0-100), interpolated linearly between the closest ranks."""
    if len(values) == 0:
        raise ValueError("no values to take a percentile of")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def p99_by_second(
    timestamps_ms: Sequence[float] | np.ndarray, latencies_ms: Sequence[float] | np.ndarray
) -> list[float]:
    """The p99 latency of the records sent in each second of a phase, in order (by their
    timestamps, from the first): a bad percentile's seconds, a spike or the whole run."""
    stamps = np.asarray(timestamps_ms)
    seconds = (stamps - stamps.min()) // 1000
    latencies = np.asarray(latencies_ms, dtype=np.float64)
    return [float(np.percentile(latencies[seconds == second], 99)) for second in np.unique(seconds)]


def summarize_latencies(latencies_ms: Sequence[float] | np.ndarray) -> LatencySummary:
    latencies = np.asarray(latencies_ms, dtype=np.float64)
    return LatencySummary(
        count=len(latencies),
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        p99_ms=percentile(latencies, 99),
        max_ms=float(latencies.max()),
        mean_ms=float(latencies.mean()),
    )


@dataclass(frozen=True)
class Spread:
    """One figure measured several times: the median is the figure, min-max its spread."""

    median: float
    min: float
    max: float
    runs: tuple[float, ...]  # every measurement, in the order they were taken

    @classmethod
    def of(cls, runs: Sequence[float]) -> Spread:
        if not runs:
            raise ValueError("no runs to take the spread of")
        return cls(float(statistics.median(runs)), min(runs), max(runs), tuple(runs))

    def divided_by(self, base: float) -> Spread:
        """Each run as a ratio to ``base`` (e.g. the median of what it is compared with)."""
        return Spread.of([run / base for run in self.runs])


@dataclass(frozen=True)
class Window:
    """The steady part of a run: records completed between the first and last output."""

    records: int
    seconds: float
    start: float  # the first output's time (wall clock, seconds)

    @property
    def end(self) -> float:
        return self.start + self.seconds

    @property
    def rate(self) -> float:
        return self.records / self.seconds


def saturation_window(arrivals: Sequence[float] | np.ndarray) -> Window | None:
    """Time from the first output to the last, and the records completed after the first.

    Outputs carry their time in groups (of one millisecond, or of one transaction when
    timed by visibility), so the records of the first group count as the start line, not
    as work done in the window.  ``None`` when every output has the same time.
    """
    times = np.asarray(arrivals, dtype=np.float64)
    if len(times) == 0:
        return None
    first, last = float(times.min()), float(times.max())
    if last <= first:
        return None
    in_first_group = int(np.count_nonzero(times == first))
    return Window(records=len(times) - in_first_group, seconds=last - first, start=first)


def used_between(samples: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """How much of a running total (e.g. CPU seconds) was used from ``start`` to ``end``,
    given ``(time, total)`` samples in time order that span both: linear between samples."""
    times = [t for t, _ in samples]
    if not times or start < times[0] or end > times[-1]:
        raise ValueError("the samples do not span the window")
    totals = [total for _, total in samples]
    return float(np.interp(end, times, totals) - np.interp(start, times, totals))


def per_thousand(amount: float, records: int) -> float:
    """``amount`` (e.g. CPU seconds) spent per 1,000 records."""
    return amount / records * 1000


def parse_cpu_seconds(stat: str) -> float:
    """User + system CPU seconds from the text of ``/proc/<pid>/stat``.

    The command name (field 2) is in parentheses and may hold spaces, so fields are
    counted from the last ``)``: utime and stime are fields 14 and 15 of the line.
    """
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _CLOCK_TICKS


def parse_peak_rss_mb(status: str) -> float:
    """``VmHWM`` (the peak resident set size) from ``/proc/<pid>/status``, in MB."""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            kilobytes = int(line.split()[1])
            return kilobytes / 1024
    raise ValueError("no VmHWM line in the process status")


def cpu_seconds(pid: int) -> float:
    """CPU time the process has used so far (its threads included, its children not)."""
    return parse_cpu_seconds(Path(f"/proc/{pid}/stat").read_text())


def peak_rss_mb(pid: int) -> float:
    return parse_peak_rss_mb(Path(f"/proc/{pid}/status").read_text())
