"""How much this machine's speed moves on its own: read it before trusting a small A/B.

    .venv/bin/python benchmarks/machine_noise.py [--seconds 20] [--megabytes 4 16]

Two probes take turns, each timed over about 20 ms: Python arithmetic that stays in the
core's own cache, and random reads over an array of each ``--megabytes`` (the sizes of
the worker's working set, which the shared last-level cache and memory serve).  A
virtual machine shares that cache and the memory bus with its neighbours: here the
reads' p90 was a third above their p10 while the arithmetic's was 6 % above, and the
worker's saturation moved with them (docs/performance.md, "Why the embedded worker's
saturation varies").
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

READS = 3_000_000  # random reads a memory probe makes
ADDS = 400_000  # loop passes the arithmetic probe makes


def arithmetic() -> None:
    total = 0
    for i in range(ADDS):
        total += i * i % 7


def random_reads(megabytes: int, rng: np.random.Generator) -> Callable[[], None]:
    """A probe that gathers ``READS`` random items of a ``megabytes`` array (into a buffer
    made once: a new one each time would time the kernel mapping its pages)."""
    values = rng.integers(0, 1 << 30, megabytes * 2**20 // 8)
    where = rng.integers(0, len(values), READS)
    gathered = np.empty(READS, dtype=values.dtype)

    def probe() -> None:
        np.take(values, where, out=gathered)

    return probe


def timed_ms(probe: Callable[[], None]) -> float:
    started = time.perf_counter()
    probe()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--megabytes", type=int, nargs="+", default=[4, 16])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    probes = {"arithmetic (core cache)": arithmetic}
    for size in args.megabytes:
        probes[f"random reads over {size} MB"] = random_reads(size, rng)
    times: dict[str, list[float]] = {name: [] for name in probes}
    for probe in probes.values():
        probe()  # warm: the first pass faults the array's pages in
    deadline = time.monotonic() + args.seconds
    rounds = 0
    while rounds < 2 or time.monotonic() < deadline:  # deciles need two times at least
        for name, probe in probes.items():
            times[name].append(timed_ms(probe))
        rounds += 1
    # Deciles, not the extremes: a probe the scheduler preempted once says nothing here.
    print(f"{'probe':28} {'median ms':>10} {'p10-p90 ms':>14} {'p90 / p10':>10}")
    for name, taken in times.items():
        deciles = statistics.quantiles(taken, n=10)
        low, high = deciles[0], deciles[-1]
        spread = f"{low:.1f}-{high:.1f}"
        print(f"{name:28} {statistics.median(taken):10.1f} {spread:>14} {high / low:10.2f}")


if __name__ == "__main__":
    main()
