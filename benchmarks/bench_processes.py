"""``streaminfer run --processes N``: exactly-once tensor throughput of 1 and 2 members.

    .venv/bin/python benchmarks/bench_processes.py [--records 40000] [--processes 1,2]
        [--rounds 3]

Starts a throw-away broker, writes the tiny tensor model's records to a two-partition
topic up front, then for each member count starts one ``streaminfer run`` (embedded,
exactly-once) on a fresh group and output topic and times the committed outputs by their
own timestamps (first to last), so start-up is not counted.  The member counts take turns
for ``--rounds`` rounds, so a drifting machine (or a broker still warming up) weighs on
each alike; each figure is the median with its min-max, and each ratio is taken within a
round.  The broker shares the cores: its CPU per 1,000 records is reported beside each
figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from streaminfer.kafka.admin import TopicAdmin
from streaminfer.kafka.broker import LocalBroker
from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import consume, produce
from streaminfer.models.export.tiny import export_tiny_model
from streaminfer.net import free_port
from streaminfer.processes import STREAMINFER, ManagedProcess

PARTITIONS = 2


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(
    kafka: KafkaSettings, broker_pid: int, repo: Path, inp: str, records: int, members: int
) -> tuple[float, float]:
    """Records/s of committed outputs, and broker CPU seconds per 1,000 records."""
    out = f"out-{members}-{time.monotonic_ns()}"
    TopicAdmin(kafka).create(out, partitions=PARTITIONS)
    command = [
        *STREAMINFER, "run", "-b", kafka.bootstrap_servers, "--input", inp, "--output", out,
        "--mode", "embedded", "--repo", str(repo), "--model", "tiny",
        "--group-id", f"g-{out}", "--processes", str(members),
    ]  # fmt: skip
    broker_before = cpu_seconds(broker_pid)
    with ManagedProcess(f"{members} member(s)", command, repo.parent / f"{out}.log"):
        stamps = [r.timestamp_ms or 0 for r in consume(kafka, out, True, records, timeout=120)]
    broker_cpu = cpu_seconds(broker_pid) - broker_before
    if len(stamps) < records:
        raise SystemExit(f"only {len(stamps)} of {records} outputs with {members} member(s)")
    elapsed = (max(stamps) - min(stamps)) / 1000
    return records / elapsed, broker_cpu / records * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=40_000)
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        broker = LocalBroker(root / "kafka")
        state = broker.start(port=free_port())
        try:
            pid = (broker.state() or state).pid
            assert pid is not None
            kafka = KafkaSettings(bootstrap_servers=state.bootstrap)
            export_tiny_model(root / "repo", version=1)
            inp = "tensors"
            TopicAdmin(kafka).create(inp, partitions=PARTITIONS)
            values = [
                json.dumps({"model": "tiny", "inputs": {"x": [[i % 97, 1, 2, 3]]}}).encode()
                for i in range(args.records)
            ]
            produce(kafka, inp, values)
            print(f"{args.records} records, {PARTITIONS} partitions, {os.cpu_count()} cores")
            counts = [int(n) for n in args.processes.split(",")]
            rates: dict[int, list[float]] = {members: [] for members in counts}
            for round_ in range(1, args.rounds + 1):
                for members in counts:
                    rate, broker_cpu = run_once(
                        kafka, pid, root / "repo", inp, args.records, members
                    )
                    rates[members].append(rate)
                    print(
                        f"round {round_}, --processes {members}: {rate:,.0f} records/s, "
                        f"broker {broker_cpu:.3f} CPU s per 1k records",
                        flush=True,
                    )
            for members, seen in rates.items():
                print(
                    f"--processes {members}: {statistics.median(seen):,.0f} records/s "
                    f"({min(seen):,.0f}-{max(seen):,.0f})"
                )
                if 1 in rates and members != 1:
                    ratios = [many / one for many, one in zip(seen, rates[1], strict=True)]
                    print(
                        f"--processes {members} / 1: {statistics.median(ratios):.2f}x "
                        f"({min(ratios):.2f}-{max(ratios):.2f}, within each round)"
                    )
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
