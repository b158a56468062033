"""``streaminfer run --processes N``: exactly-once tensor throughput of 1 and 2 members.

    .venv/bin/python benchmarks/bench_processes.py [--records 800000] [--processes 1,2]
        [--rounds 3]

Starts a throw-away broker, writes the tiny tensor model's records to a two-partition
topic up front, then for each member count starts one ``streaminfer run`` (embedded,
exactly-once) on a fresh group and output topic, waits until the group has committed every
input, and only then reads the outputs (a reader running alongside would take the
members' cores), timing them by their own timestamps, so start-up is not counted.  Two
figures per run:

- **all**: every output, first to last;
- **steady**: the outputs committed once the group holds every member, each with its
  partitions (watched with the admin API).  The local broker rebalances a new group at
  once (``group.initial.rebalance.delay.ms=0``, where a production broker waits 3 s for
  more members), so the member that starts first holds every partition until the other
  joins; "all" counts that time as the run's, "steady" is what a running group does.

The member counts take turns for ``--rounds`` rounds, so a drifting machine (or a broker
still warming up) weighs on each alike; each figure is the median with its min-max, and
each ratio is taken within a round.  The broker shares the cores: its CPU per 1,000
records is reported beside each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from confluent_kafka import Consumer, ConsumerGroupState, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from streaminfer.kafka.admin import TopicAdmin
from streaminfer.kafka.broker import LocalBroker
from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import consume, produce
from streaminfer.models.export.tiny import export_tiny_model
from streaminfer.net import free_port
from streaminfer.processes import STREAMINFER, ManagedProcess, interrupted_by_sigterm

PARTITIONS = 2


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class GroupWatch:
    """The time (ms since the epoch) a consumer group first holds ``members`` members,
    each with at least one partition assigned; polled in a thread of its own."""

    def __init__(self, kafka: KafkaSettings, group: str, members: int) -> None:
        self.joined_ms: float | None = None
        self._kafka, self._group, self._members = kafka, group, members
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        admin = AdminClient(self._kafka.client_config())  # this thread's own client
        while not self._stop.wait(0.05):
            (future,) = admin.describe_consumer_groups([self._group]).values()
            try:
                group = future.result()
            except KafkaException:
                continue  # not created yet
            assigned = [m for m in group.members if m.assignment.topic_partitions]
            if group.state == ConsumerGroupState.STABLE and len(assigned) == self._members:
                self.joined_ms = time.time() * 1000
                return

    def wait_committed(self, topic: str, records: int, timeout: float = 120) -> None:
        """Until the group's committed offsets on ``topic`` add up to ``records``."""
        # A consumer that never subscribes reads the group's offsets without joining it.
        reader = Consumer(self._kafka.client_config(**{"group.id": self._group}))
        try:
            partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    committed = reader.committed(partitions, timeout=10)
                except KafkaException:
                    committed = []  # the group's coordinator is not ready yet
                if sum(max(tp.offset, 0) for tp in committed) >= records:
                    return
                time.sleep(0.1)
        finally:
            reader.close()
        raise SystemExit(f"the group did not commit {records} records in {timeout:g} s")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def run_once(
    kafka: KafkaSettings, broker_pid: int, repo: Path, inp: str, records: int, members: int
) -> tuple[float, float, float]:
    """Records/s of all committed outputs and of those once every member held its
    partitions, and broker CPU seconds per 1,000 records."""
    out = f"out-{members}-{time.monotonic_ns()}"
    group = f"g-{out}"
    TopicAdmin(kafka).create(out, partitions=PARTITIONS)
    command = [
        *STREAMINFER, "run", "-b", kafka.bootstrap_servers, "--input", inp, "--output", out,
        "--mode", "embedded", "--repo", str(repo), "--model", "tiny",
        "--group-id", group, "--processes", str(members),
    ]  # fmt: skip
    broker_before = cpu_seconds(broker_pid)
    watch = GroupWatch(kafka, group, members)
    try:
        with ManagedProcess(f"{members} member(s)", command, repo.parent / f"{out}.log"):
            watch.wait_committed(inp, records)
    finally:
        watch.close()
    # Read once the members are done: a reader running alongside would take their cores.
    # Each output's timestamp is the time its member produced it.
    stamps = [r.timestamp_ms or 0 for r in consume(kafka, out, True, records, timeout=30)]
    broker_cpu = cpu_seconds(broker_pid) - broker_before
    if len(stamps) < records:
        raise SystemExit(f"only {len(stamps)} of {records} outputs with {members} member(s)")
    if watch.joined_ms is None:
        raise SystemExit(f"the group never held {members} member(s) with partitions")
    last = max(stamps)
    steady = [stamp for stamp in stamps if stamp >= watch.joined_ms]
    if last - watch.joined_ms < 1000:
        raise SystemExit("under a second of outputs once every member joined: use more --records")
    everything = records / ((last - min(stamps)) / 1000)
    return everything, len(steady) / ((last - watch.joined_ms) / 1000), broker_cpu / records * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=800_000)
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
            rates: dict[str, dict[int, list[float]]] = {
                figure: {members: [] for members in counts} for figure in ("all", "steady")
            }
            for round_ in range(1, args.rounds + 1):
                for members in counts:
                    everything, steady, broker_cpu = run_once(
                        kafka, pid, root / "repo", inp, args.records, members
                    )
                    rates["all"][members].append(everything)
                    rates["steady"][members].append(steady)
                    print(
                        f"round {round_}, --processes {members}: all {everything:,.0f} "
                        f"records/s, steady {steady:,.0f}; "
                        f"broker {broker_cpu:.3f} CPU s per 1k records",
                        flush=True,
                    )
            for figure, by_members in rates.items():
                for members, seen in by_members.items():
                    print(
                        f"{figure:6} --processes {members}: {statistics.median(seen):,.0f} "
                        f"records/s ({min(seen):,.0f}-{max(seen):,.0f})"
                    )
                    if 1 in by_members and members != 1:
                        ratios = [a / b for a, b in zip(seen, by_members[1], strict=True)]
                        print(
                            f"{figure:6} --processes {members} / 1: "
                            f"{statistics.median(ratios):.2f}x "
                            f"({min(ratios):.2f}-{max(ratios):.2f}, within each round)"
                        )
        finally:
            broker.stop()


if __name__ == "__main__":
    with interrupted_by_sigterm():  # a killed run stops the processes it started
        main()
