"""Exactly-once under many SIGKILLs at random instants: of members, and of the supervisor.

    .venv/bin/python benchmarks/kill_soak.py [--records 800000] [--rate 8000] [--kills 45]
        [--seed 1] [--partitions 4]

Not a benchmark but a longer version of the suite's kill tests, for what a few kills at
chosen moments may miss.  Starts a local broker; writes ``--records`` tiny-model tensor
records, keyed by their number, at ``--rate`` records/s, while one ``streaminfer run
--processes 2`` (exactly-once, embedded) reads them; meanwhile, every 0.3-4 s, kills
one member (7 times in 10; its supervisor restarts it) or the supervisor with SIGKILL,
and then starts a new supervisor.  A ``read_committed`` reader collects every output.
Once all have arrived and 15 s more passed, it prints what was lost, what came twice and
how many output partitions are out of input order, and exits 1 if any is not zero.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import orjson
from confluent_kafka import Consumer, Producer

from streaminfer.bench.suite import local_broker
from streaminfer.kafka.admin import TopicAdmin
from streaminfer.kafka.config import KafkaSettings
from streaminfer.models.export.tiny import export_tiny_model
from streaminfer.processes import STREAMINFER, child_pids, interrupted_by_sigterm

# A killed member's partitions move on in seconds, and its open transaction is aborted.
FAST_GROUP = ["-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=500",
              "-X", "transaction.timeout.ms=5000"]  # fmt: skip
MEMBER_SHARE = 0.7  # of kills: a member; the rest the supervisor, and with it every member
SETTLE_S = 15  # after the last output: long enough for a duplicate to show


def record(i: int) -> bytes:
    return orjson.dumps({"id": str(i), "model": "tiny", "inputs": {"x": [[i, 0, 0, 0]]}})


def write(bootstrap: str, records: int, rate: float) -> None:
    """Every record once, keyed by its number (so a key's records share a partition)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    started = time.monotonic()
    for i in range(records):
        while True:
            try:
                producer.produce("in", record(i), str(i).encode())
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 999:
            producer.poll(0)
            time.sleep(max(0.0, (i + 1) / rate - (time.monotonic() - started)))
    producer.flush(60)


class Reader(threading.Thread):
    """Every committed output's (partition, id), in the order read."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(daemon=True)
        self.seen: list[tuple[int, int]] = []
        self.done = threading.Event()
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "soak-reader",
             "auto.offset.reset": "earliest", "isolation.level": "read_committed",
             "enable.auto.commit": False}
        )  # fmt: skip

    def run(self) -> None:
        self._consumer.subscribe(["out"])
        while not self.done.is_set():
            for message in self._consumer.consume(1000, 0.5):
                if message.error() is None:
                    document = orjson.loads(message.value())
                    self.seen.append((message.partition(), int(document["id"])))
        self._consumer.close()


def soak(args: argparse.Namespace, kafka: KafkaSettings, folder: Path) -> bool:
    bootstrap = kafka.bootstrap_servers
    admin = TopicAdmin(kafka)
    for topic in ("in", "out", "dlq"):
        admin.create(topic, partitions=args.partitions)
    export_tiny_model(folder / "repo", version=1)
    reader = Reader(bootstrap)
    reader.start()
    writer = threading.Thread(target=write, args=(bootstrap, args.records, args.rate), daemon=True)
    writer.start()
    command = [*STREAMINFER, "run", "-b", bootstrap, *FAST_GROUP, "--input", "in",
               "--output", "out", "--dlq", "dlq", "--mode", "embedded", "--repo",
               str(folder / "repo"), "--group-id", "soak", "--processes", "2"]  # fmt: skip
    env = {**os.environ, "TMPDIR": str(folder)}  # the members' folder, left by a killed one
    rng = random.Random(args.seed)
    kills: Counter[str] = Counter()
    with open(folder / "workers.log", "ab") as log:

        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)

        supervisor = start()
        for _ in range(args.kills):
            time.sleep(rng.uniform(0.3, 4.0))
            victims = child_pids(supervisor.pid)
            if victims and rng.random() < MEMBER_SHARE:
                os.kill(rng.choice(victims), signal.SIGKILL)
                kills["member"] += 1
            else:
                supervisor.kill()
                supervisor.wait()
                deadline = time.monotonic() + 30  # members end with their supervisor
                while any(Path(f"/proc/{p}").exists() for p in victims):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"members {victims} outlived their supervisor")
                    time.sleep(0.1)
                supervisor = start()
                kills["supervisor"] += 1
            print(f"{dict(kills)}; {len(reader.seen):,} outputs so far", flush=True)
        writer.join()
        deadline = time.monotonic() + 300
        while len(reader.seen) < args.records and time.monotonic() < deadline:
            time.sleep(1)
        time.sleep(SETTLE_S)
        reader.done.set()
        reader.join()
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(120)
    ids = [i for _, i in reader.seen]
    lost = args.records - len(set(ids))
    twice = len(ids) - len(set(ids))
    by_partition: defaultdict[int, list[int]] = defaultdict(list)
    for partition, i in reader.seen:
        by_partition[partition].append(i)
    disordered = sum(sequence != sorted(sequence) for sequence in by_partition.values())
    print(
        f"{args.records:,} records, kills {dict(kills)}: {len(ids):,} outputs, lost {lost}, "
        f"twice {twice}, output partitions out of order {disordered}"
    )
    return lost == twice == disordered == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=800_000)
    parser.add_argument("--rate", type=float, default=8_000, help="records/s written")
    parser.add_argument("--kills", type=int, default=45)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    with local_broker() as kafka, tempfile.TemporaryDirectory() as folder:
        held = soak(args, kafka, Path(folder))
    raise SystemExit(0 if held else 1)


if __name__ == "__main__":
    with interrupted_by_sigterm():  # a killed run stops its broker
        main()
