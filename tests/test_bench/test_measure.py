"""The pure figures: percentiles, the saturation window, and what /proc says."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from streaminfer.bench.measure import (
    Window,
    cpu_seconds,
    p99_by_second,
    parse_cpu_seconds,
    parse_peak_rss_mb,
    peak_rss_mb,
    per_thousand,
    percentile,
    saturation_window,
    summarize_latencies,
    used_between,
)
from streaminfer.bench.runner import CpuSampler
from tests.support import wait_for

# Sleeps, then uses 0.6 s of CPU (however long that takes on shared cores), then sleeps.
_BURNER = """
import sys, time
sys.stdin.readline()  # the go: the parent has read its baseline by then
time.sleep(0.5)
start = time.process_time()
while time.process_time() - start < 0.6:
    pass
time.sleep(60)
"""


def test_percentile_interpolates_between_ranks() -> None:
    values = [10.0, 20.0, 30.0, 40.0]
    assert percentile(values, 0) == 10.0
    assert percentile(values, 100) == 40.0
    assert percentile(values, 50) == 25.0
    assert percentile([7.0], 99) == 7.0


def test_percentile_rejects_nothing_and_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summary_of_one_to_a_hundred() -> None:
    summary = summarize_latencies([float(v) for v in range(1, 101)])
    assert summary.count == 100
    assert summary.p50_ms == pytest.approx(50.5)
    assert summary.p95_ms == pytest.approx(95.05)
    assert summary.p99_ms == pytest.approx(99.01)
    assert summary.max_ms == 100.0 and summary.mean_ms == pytest.approx(50.5)


def test_p99_by_second_takes_each_second_on_its_own() -> None:
    # Counted from the first timestamp: 1..100 ms in its second, then one slow record among
    # fast ones, then nothing for a second, then one record.
    stamps = [5_500 + i for i in range(100)] + [6_500 + i for i in range(100)] + [8_600]
    latencies = [float(v) for v in range(1, 101)] + [1.0] * 99 + [500.0] + [7.0]
    by_second = p99_by_second(stamps, latencies)
    assert by_second == pytest.approx([99.01, 5.99, 7.0])


def test_saturation_window_counts_from_the_first_visible_group() -> None:
    # A transaction of three becomes visible at t=10, then one output every 0.5 s.
    arrivals = [10.0, 10.0, 10.0, 10.5, 11.0, 11.5, 12.0]
    window = saturation_window(arrivals)
    assert window == Window(records=4, seconds=2.0, start=10.0)
    assert window.rate == 2.0 and window.end == 12.0


def test_saturation_window_needs_two_moments() -> None:
    assert saturation_window([]) is None
    assert saturation_window([5.0, 5.0]) is None


def test_used_between_interpolates_a_running_total() -> None:
    # CPU seconds read at t=0, 1 and 3: one CPU second in the first second, then 0.5 a second.
    samples = [(0.0, 10.0), (1.0, 11.0), (3.0, 12.0)]
    assert used_between(samples, 0.5, 2.0) == pytest.approx(0.5 + 0.5)
    assert used_between(samples, 0.0, 3.0) == pytest.approx(2.0)
    assert used_between(samples, 1.0, 1.0) == 0.0


def test_used_between_refuses_a_window_the_samples_do_not_span() -> None:
    samples = [(1.0, 0.0), (2.0, 1.0)]
    with pytest.raises(ValueError, match="span"):
        used_between(samples, 0.5, 2.0)
    with pytest.raises(ValueError, match="span"):
        used_between(samples, 1.0, 2.5)
    with pytest.raises(ValueError, match="span"):
        used_between([], 1.0, 2.0)


def test_per_thousand() -> None:
    assert per_thousand(2.5, 500) == 5.0


STAT = (
    "4242 (python -m streaminfer) S 1 4242 4242 0 -1 4194304 1000 0 0 0 "
    "250 50 0 0 20 0 12 0 100 200000000 5000 18446744073709551615"
)


def test_cpu_seconds_are_utime_plus_stime_even_with_spaces_in_the_name() -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    assert parse_cpu_seconds(STAT) == pytest.approx(300 / ticks)


def test_peak_rss_is_vmhwm() -> None:
    status = "Name:\tpython\nVmPeak:\t  900000 kB\nVmHWM:\t  512000 kB\nVmRSS:\t  400000 kB\n"
    assert parse_peak_rss_mb(status) == 500.0
    with pytest.raises(ValueError):
        parse_peak_rss_mb("Name:\tkthreadd\n")


def test_readers_work_on_this_process() -> None:
    sum(i * i for i in range(200_000))  # some CPU time to read back
    assert cpu_seconds(os.getpid()) > 0
    assert peak_rss_mb(os.getpid()) > 1


def test_cpu_sampler_charges_a_window_with_the_cpu_spent_within_it() -> None:
    """Sampled while a real process sleeps, burns and sleeps again: a window over its
    first sleep is charged (almost) nothing, one over the burn about 0.6 CPU seconds."""
    child = subprocess.Popen([sys.executable, "-c", _BURNER], stdin=subprocess.PIPE, text=True)
    assert child.stdin is not None
    try:
        sampler = CpuSampler(child.pid, None)
        began = time.time()
        started = cpu_seconds(child.pid)
        # The child burns only after this go, so a slow parent cannot read a baseline
        # that already holds part of the burn and then wait for CPU that never comes.
        child.stdin.write("go\n")
        child.stdin.flush()
        # Not ">= 0.6": ticks read as floats, 0.94 - 0.34 is 0.5999999999999999, and a
        # burn of exactly 60 ticks was waited for without end.
        wait_for(lambda: cpu_seconds(child.pid) - started >= 0.55, what="the child's burn")
        time.sleep(0.2)  # a few samples after the burn, so that they span it
        sampler.stop()
    finally:
        child.kill()
        child.wait()
    samples = sampler.worker
    assert samples[0][0] <= began and len(samples) >= 10
    assert used_between(samples, samples[0][0], began + 0.3) < 0.2  # start-up, then sleep
    burned = used_between(samples, samples[0][0], samples[-1][0])
    assert 0.55 <= burned <= 0.6 + 0.3
    assert sampler.server == []
