"""Exactly-once under many SIGKILLs at random instants: of members, of the supervisor, and
optionally of the model server and of the broker.

    .venv/bin/python benchmarks/kill_soak.py [--records 800000] [--rate 8000] [--kills 45]
        [--seed 1] [--partitions 4] [--bombs 0] [--transactional] [--mode embedded]
        [--broker-kills] [--brokers 1] [--rolling] [--pauses] [--settle 15]

Not a benchmark but a longer version of the suite's kill tests, for what a few kills at
chosen moments may miss.  Starts a local broker; writes ``--records`` tiny-model tensor
records, keyed by their number, at ``--rate`` records/s, while one ``streaminfer run
--processes 2`` (exactly-once, embedded) reads them; meanwhile, every 0.3-4 s, kills
one member (7 times in 10; its supervisor restarts it) or the supervisor with SIGKILL,
and then starts a new supervisor.  A ``read_committed`` reader collects every output and
dead letter.  Once all have arrived and ``--settle`` seconds more passed (15), it prints
what was lost, what came twice, how many output partitions are out of input order, and,
by input offset (where the writer's delivery reports put each record), which records did
not come out exactly once and what came out for an offset that holds no record; it exits
1 if any of these is not zero, or if anything was dead-lettered but unreadable batches.

With ``--bombs N``, N batches the consumer cannot read are written among the records, at
even intervals, each to one partition in turn: a zstd batch of a 150 MB record of zeros
and ``BOMB_COMPANIONS`` valid records, which inflates past librdkafka's
``receive.message.max.bytes``.  Every offset of those batches must come out as one
``unreadable_record`` dead letter.

With ``--mode`` a remote mode (``kserve-grpc``, ``tfserving-rest`` ...), the members ask
a ``streaminfer serve`` of the tiny model, and one kill in ``SERVER_EVERY`` is the
server's, restarted on its ports at once: the records it was serving are retried, never
dead-lettered, and come out once all the same.

With ``--transactional`` the input is written in transactions of 200-1,000 records, one in
``ABORTED_EVERY`` aborted, and each bomb in a transaction of its own, as many aborted: the
records of aborted transactions and the offsets the commit and abort markers take must
come out as nothing at all, and an aborted bomb's offsets as dead letters all the same.

With ``--broker-kills``, one kill in ``BROKER_EVERY`` is the broker's,
restarted at once on its data, which it recovers.  The writer is idempotent, so that its
retries write no record twice, and a transaction the restart dooms is aborted.  A
supervisor started while the broker is down stops at once, unable to reach it; the soak
starts it again, as a pod's restart policy would.

With ``--brokers 3`` the broker is a cluster of three (every topic with three replicas,
two in sync needed), and a broker's kill is one node's, the nodes in turn, restarted while
the others serve: partition leaders and the group's and transactions' coordinators move to
the others and back.  With ``--rolling`` a node is stopped with SIGTERM instead, as in an
operator's rolling restart.  Each restart waits until every replica is in sync again.

With ``--pauses``, half of the members' turns stop the member with SIGSTOP instead, for
longer than its session timeout (and sometimes than its transaction timeout), then let it
go on with SIGCONT: the zombie of a long GC pause or a starved machine.  Its group has
given its partitions to the others meanwhile, and what it commits once it wakes must be
fenced.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from streaminfer.kafka.admin import TopicAdmin
from streaminfer.kafka.cluster import LocalCluster
from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import message_headers
from streaminfer.models.export.tiny import export_tiny_model
from streaminfer.processes import (
    STREAMINFER,
    ModelServerProcess,
    child_pids,
    ended,
    interrupted_by_sigterm,
)

# A killed member's partitions move on in seconds, and its open transaction is aborted.
FAST_GROUP = ["-X", "session.timeout.ms=3000", "-X", "heartbeat.interval.ms=500",
              "-X", "transaction.timeout.ms=5000"]  # fmt: skip
MEMBER_SHARE = 0.7  # of kills: a member; the rest the supervisor, and with it every member
PAUSE_S = (3.5, 8.0)  # --pauses: past FAST_GROUP's session timeout, at times its transaction's
SETTLE_S = 15  # after the last output: long enough for a duplicate to show
BOMB_BYTES = 150 << 20  # zeros: 5 KB on the broker, past the consumer's 100 MB once inflated
BOMB_COMPANIONS = 3  # valid records in a bomb's batch, dead-lettered with it
ABORTED_EVERY = 10  # --transactional: one transaction in this many is aborted
SERVER_EVERY = 5  # a remote --mode: one kill in this many is the model server's
BROKER_EVERY = 8  # --broker-kills: one kill in this many is the broker's


def record(i: int) -> bytes:
    return orjson.dumps({"id": str(i), "model": "tiny", "inputs": {"x": [[i, 0, 0, 0]]}})


@dataclass
class Written:
    """What the input holds, by the writer's delivery reports."""

    ids: set[int] = field(default_factory=set)  # records committed to the input
    served: set[tuple[int, int]] = field(default_factory=set)  # their offsets: one output each
    unreadable: set[tuple[int, int]] = field(default_factory=set)  # bombs': one dead letter each
    aborted_bombs: int = 0  # bombs whose transaction was aborted: dead-lettered all the same


@dataclass
class Read:
    """What came out: outputs' (partition, offset, id) in the order read, and the input
    offset, (partition, offset), of each output and dead letter, with the dead letters'
    reasons.  A message the reader's consumer hands out again at a place already read is
    not in the topic twice: it is counted in ``reread`` only."""

    seen: list[tuple[int, int, int]] = field(default_factory=list)
    outputs: Counter[tuple[int, int]] = field(default_factory=Counter)
    letters: Counter[tuple[int, int]] = field(default_factory=Counter)
    reasons: Counter[bytes] = field(default_factory=Counter)
    places: set[tuple[str, int, int]] = field(default_factory=set)  # (topic, partition, offset)
    reread: int = 0


class Writer(threading.Thread):
    """Writes every record once, keyed by its number (so a key's records share a
    partition), and ``bombs`` unreadable batches among them at even intervals; keeps where
    each landed.  With ``transactional``, in transactions of a few hundred records, one
    in ``ABORTED_EVERY`` aborted: their records, and the markers, must come out nowhere."""

    def __init__(self, bootstrap: str, args: argparse.Namespace) -> None:
        super().__init__(daemon=True)
        self.args = args
        self.written = Written()
        self.failed: BaseException | None = None
        self._landed: list[tuple[int, int, int]] = []  # (partition, offset, id) not yet settled
        self._rng = random.Random(args.seed)
        # Idempotent, so that a retry through a broker's restart writes no record twice.
        config: dict[str, str | int | bool] = {
            "bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True
        }  # fmt: skip
        # One batch a flush: the long linger holds a bomb and its companions together.
        bomb_config = {**config, "compression.type": "zstd", "message.max.bytes": 10**9,
                       "batch.size": 10**9, "linger.ms": 5000}  # fmt: skip
        if args.transactional:
            config["transactional.id"] = "soak-writer"
            bomb_config["transactional.id"] = "soak-bomber"
        self._producer, self._bomber = Producer(config), Producer(bomb_config)
        if args.transactional:
            self._producer.init_transactions(60)
            self._bomber.init_transactions(60)

    def run(self) -> None:
        try:
            self._write()
        except BaseException as exc:  # the soak reports it rather than judging half an input
            self.failed = exc

    def _write(self) -> None:
        args, producer = self.args, self._producer
        every = args.records // (args.bombs + 1) if args.bombs else 0
        left_in_transaction = 0
        started = time.monotonic()
        for i in range(args.records):
            if args.transactional and left_in_transaction == 0:
                producer.begin_transaction()
                left_in_transaction = self._rng.randint(200, 1000)
            while True:
                try:
                    producer.produce("in", record(i), str(i).encode(), on_delivery=self._landed_at)
                    break
                except BufferError:
                    producer.poll(0.05)
            left_in_transaction -= 1
            if args.transactional and left_in_transaction == 0:
                self._end_transaction(producer, aborted=self._rng.randrange(ABORTED_EVERY) == 0)
            if every and i % every == every - 1 and i // every < args.bombs:
                self._bomb((i // every) % args.partitions)
            if i % 1000 == 999:
                producer.poll(0)
                time.sleep(max(0.0, (i + 1) / args.rate - (time.monotonic() - started)))
        if args.transactional and left_in_transaction > 0:
            self._end_transaction(producer, aborted=False)
        flush(producer)
        self._settle(aborted=False)

    def _bomb(self, partition: int) -> None:
        """A 150 MB record of zeros and its companions in one zstd batch; in a transaction,
        one in ``ABORTED_EVERY`` aborted (a broker's restart may abort others).  An aborted
        unreadable batch is dead-lettered too: librdkafka fails on it before it would
        drop it as aborted."""
        if self.args.transactional:
            self._bomber.begin_transaction()
        for value in [bytes(BOMB_BYTES), *(record(-1) for _ in range(BOMB_COMPANIONS))]:
            self._bomber.produce("in", value, partition=partition, on_delivery=self._bombed_at)
        if self.args.transactional:
            commit = self._rng.randrange(ABORTED_EVERY) != 0
            if not finish_transaction(self._bomber, commit=commit):
                self.written.aborted_bombs += 1
        else:
            flush(self._bomber)

    def _end_transaction(self, producer: Producer, aborted: bool) -> None:
        self._settle(aborted=not finish_transaction(producer, commit=not aborted))

    def _settle(self, aborted: bool) -> None:
        if not aborted:
            for partition, offset, i in self._landed:
                self.written.served.add((partition, offset))
                self.written.ids.add(i)
        self._landed.clear()

    def _landed_at(self, error: KafkaError | None, message: Message) -> None:
        if error is None:  # else not written (a transaction failing on a broker's restart)
            key = message.key()
            assert key is not None
            self._landed.append((*placed(message), int(key)))

    def _bombed_at(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self.written.unreadable.add(placed(message))


def placed(message: Message) -> tuple[int, int]:
    """A delivered or consumed message's (partition, offset)."""
    partition, offset = message.partition(), message.offset()
    assert partition is not None and offset is not None
    return partition, offset


def flush(producer: Producer) -> None:
    """Every delivery report in, however long a broker's restart takes."""
    while producer.flush(60):
        pass


def finish_transaction(producer: Producer, commit: bool) -> bool:
    """Commit or abort the open transaction, through a broker's restart; whether it was
    committed (one a restart has doomed is aborted)."""
    flush(producer)  # every delivery report in, before the outcome
    while True:
        try:
            if commit:
                producer.commit_transaction(60)
            else:
                producer.abort_transaction(60)
            return commit
        except KafkaException as exc:
            error = exc.args[0]
            if error.txn_requires_abort():
                commit = False
            elif not error.retriable():
                raise


class Reader(threading.Thread):
    """Reads every committed output and dead letter into ``read``."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(daemon=True)
        self.read = Read()
        self.done = threading.Event()
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "soak-reader",
             "auto.offset.reset": "earliest", "isolation.level": "read_committed",
             "enable.auto.commit": False}
        )  # fmt: skip

    def run(self) -> None:
        self._consumer.subscribe(["out", "dlq"])
        while not self.done.is_set():
            for message in self._consumer.consume(1000, 0.5):
                if message.error() is not None:
                    continue
                place = (cast(str, message.topic()), *placed(message))
                if place in self.read.places:
                    self.read.reread += 1
                    continue
                self.read.places.add(place)
                if message.topic() == "out":
                    document = orjson.loads(message.value() or b"")
                    self.read.seen.append((*placed(message), int(document["id"])))
                    source = document["source"]
                    self.read.outputs[(source["partition"], source["offset"])] += 1
                else:  # a dead letter's headers are ours, their values bytes
                    headers = cast(dict[str, bytes], dict(message_headers(message)))
                    at = (int(headers["streaminfer.source.partition"]),
                          int(headers["streaminfer.source.offset"]))  # fmt: skip
                    self.read.letters[at] += 1
                    self.read.reasons[headers["streaminfer.error.type"]] += 1
        self._consumer.close()


class Fleet:
    """The processes the soak kills, each with SIGKILL and replaced at once where it was:
    the supervisor (its members end with it), one member (its supervisor restarts it),
    a remote mode's model server, and the broker."""

    def __init__(
        self,
        args: argparse.Namespace,
        cluster: LocalCluster,
        bootstrap: str,
        folder: Path,
        log: IO[bytes],
    ) -> None:
        self._cluster, self._folder, self._log = cluster, folder, log
        self._broker_kills, self._rolling = args.broker_kills, args.rolling
        self._pauses = args.pauses
        self._paused: dict[int, threading.Timer] = {}  # stopped members: their SIGCONT
        self._next_node = 0
        # Its own stream, drawn once a kill: which kills are the server's and the broker's
        # is the seed's alone, whatever the timing (``kill_one``).
        self._infrastructure = random.Random(args.seed + 1)
        self._command = [*STREAMINFER, "run", "-b", bootstrap, *FAST_GROUP,
                         "--input", "in", "--output", "out", "--dlq", "dlq", "--mode",
                         args.mode, "--repo", str(folder / "repo"), "--group-id", "soak",
                         "--processes", "2"]  # fmt: skip
        self.server: ModelServerProcess | None = None
        if args.mode != "embedded":
            self.server = ModelServerProcess(folder / "repo", folder / "server.log")
            rest = args.mode.endswith(("-rest", "-http"))
            self._command += ["--server", self.server.address(rest=rest)]
        try:
            self.supervisor = self._start_supervisor()
        except BaseException:
            if self.server is not None:
                self.server.stop()
            raise

    def _start_supervisor(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "TMPDIR": str(self._folder)}  # the members', left by a killed one
        return subprocess.Popen(self._command, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def kill_one(self, rng: random.Random) -> str:
        """Kill one and start its replacement: the server or the broker as the seed has
        it, else a member or the supervisor, chosen with ``rng``."""
        roll = self._infrastructure.random()
        if self.server is not None and roll < 1 / SERVER_EVERY:
            self._note("SIGKILL to the model server")
            self.server.send_signal(signal.SIGKILL)
            self.server.wait()
            ports = (self.server.grpc_port, self.server.rest_port)
            self.server = ModelServerProcess(
                self._folder / "repo", self._folder / "server.log", ports=ports
            )
            return "server"
        if self._broker_kills and roll >= 1 - 1 / BROKER_EVERY:
            # Node by node, as an operator restarts them; on its port and its data.
            self._note(f"restarting broker node {self._next_node + 1}")
            self._cluster.restart(self._next_node, graceful=self._rolling)
            self._next_node = (self._next_node + 1) % len(self._cluster.brokers)
            return "broker"
        members = self._members()
        if rng.random() < MEMBER_SHARE:
            member = members[int(rng.random() * len(members))]  # one draw, however many
            if self._pauses and rng.random() < 0.5:
                seconds = rng.uniform(*PAUSE_S)
                self._note(f"SIGSTOP to member pid {member} for {seconds:.1f} s")
                self._pause(member, seconds)
                return "pause"
            self._note(f"SIGKILL to member pid {member}")
            os.kill(member, signal.SIGKILL)
            return "member"
        self._note(f"SIGKILL to the supervisor, pid {self.supervisor.pid}")
        self.supervisor.kill()
        self.supervisor.wait()
        # Members end with their supervisor: the kernel sends each SIGTERM, and a paused
        # one drains once it goes on.
        gone(*members, timeout=PAUSE_S[1] + 45)
        self.supervisor = self._start_supervisor()
        return "supervisor"

    def _members(self) -> list[int]:
        """The supervisor's members, once it has one: which kind each kill is stays the
        seed's alone, however long a supervisor takes to start them."""
        deadline = time.monotonic() + 120
        while not (members := child_pids(self.supervisor.pid)):
            if time.monotonic() > deadline:
                raise RuntimeError("the supervisor has started no member in 120 s")
            self.restart_ended()
            time.sleep(0.05)
        return members

    def restart_ended(self) -> None:
        """Start the supervisor again if it has ended, as a pod's restart policy would:
        one started while the broker restarts stops at once, unable to reach it."""
        if self.supervisor.poll() is not None:
            self._note(f"the supervisor ended with {self.supervisor.returncode}; starting it again")
            time.sleep(1)
            self.supervisor = self._start_supervisor()

    def _note(self, what: str) -> None:
        """A line in the members' log, in its format, so the two read as one story."""
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        self._log.write(f"{stamp},{int(now % 1 * 1000):03d} SOAK {what}\n".encode())
        self._log.flush()

    def _pause(self, member: int, seconds: float) -> None:
        """SIGSTOP ``member`` now and SIGCONT it ``seconds`` later (a member paused
        already: from now on)."""
        if (waking := self._paused.pop(member, None)) is not None:
            waking.cancel()
        os.kill(member, signal.SIGSTOP)
        self._paused[member] = threading.Timer(seconds, self._wake, (member,))
        self._paused[member].start()

    def _wake(self, member: int) -> None:
        self._paused.pop(member, None)
        with contextlib.suppress(ProcessLookupError):  # killed while stopped
            os.kill(member, signal.SIGCONT)
            self._note(f"SIGCONT to member pid {member}")

    def stop(self) -> None:
        """SIGTERM: the members drain and commit (a paused one woken first)."""
        for member, waking in list(self._paused.items()):
            waking.cancel()
            self._wake(member)
        self.supervisor.send_signal(signal.SIGTERM)
        self.supervisor.wait(120)
        if self.server is not None:
            self.server.stop()


def gone(*pids: int, timeout: float) -> None:
    """Wait until none of ``pids`` runs."""
    if not ended(*pids, timeout=timeout):
        raise RuntimeError(f"processes {pids} outlived their supervisor by {timeout:g} s")


def soak(args: argparse.Namespace, cluster: LocalCluster, bootstrap: str, folder: Path) -> bool:
    admin = TopicAdmin(KafkaSettings(bootstrap_servers=bootstrap))
    for topic in ("in", "out", "dlq"):
        admin.create(topic, partitions=args.partitions)
    export_tiny_model(folder / "repo", version=1)
    reader = Reader(bootstrap)
    reader.start()
    writer = Writer(bootstrap, args)
    writer.start()
    rng = random.Random(args.seed)
    kills: Counter[str] = Counter()
    with open(folder / "workers.log", "ab") as log:
        fleet = Fleet(args, cluster, bootstrap, folder, log)
        try:
            for _ in range(args.kills):
                time.sleep(rng.uniform(0.3, 4.0))
                kills[fleet.kill_one(rng)] += 1
                print(f"{dict(kills)}; {len(reader.read.seen):,} outputs so far", flush=True)
            writer.join()
            deadline = time.monotonic() + 300
            while len(reader.read.seen) < len(writer.written.ids) and time.monotonic() < deadline:
                fleet.restart_ended()
                time.sleep(1)
            time.sleep(args.settle)
            reader.done.set()
            reader.join()
        finally:
            fleet.stop()
    if writer.failed is not None:
        print(f"the writer failed: {writer.failed!r}")
        return False
    held, verdict = judge(writer.written, reader.read)
    if not held:  # what the members did, for a failure that a rerun may not repeat
        print(*_group_events(folder / "workers.log")[-100:], sep="\n")
    print(f"{args.records:,} records written, kills {dict(kills)}: {verdict}")
    return held


def _group_events(log: Path) -> list[str]:
    """The members' lines about partitions, transactions and errors, and the soak's own
    about what it killed, in order."""
    wanted = re.compile(r"assigned|revoked|lost|abort|fenc|commit|WARNING|ERROR|SOAK")
    lines = log.read_text(errors="replace").splitlines()
    return [line for line in lines if wanted.search(line)]


def judge(written: Written, read: Read) -> tuple[bool, str]:
    """Whether exactly-once held, and the counts that say so: no record lost or twice, every
    output partition in input order; by input offset, each record's output and each of the
    bombs' offsets' dead letter once, nothing for an offset that is neither (a transaction
    marker, an aborted record); and no dead letter but unreadable batches'."""
    ids = [i for _, _, i in read.seen]
    lost = len(written.ids - set(ids))
    twice = len(ids) - len(set(ids))
    by_partition: defaultdict[int, list[int]] = defaultdict(list)
    for partition, _, i in read.seen:
        by_partition[partition].append(i)
    disordered = sum(sequence != sorted(sequence) for sequence in by_partition.values())
    missed = len(written.served - set(read.outputs)) + len(written.unreadable - set(read.letters))
    repeated = sum(n > 1 for n in (*read.outputs.values(), *read.letters.values()))
    stray = len(set(read.outputs) - written.served) + len(set(read.letters) - written.unreadable)
    reasons = dict(read.reasons)
    verdict = (
        f"{len(written.ids):,} records committed to the input, {len(ids):,} outputs, lost "
        f"{lost}, twice {twice}, output partitions out of order {disordered}; by input offset: "
        f"{missed} missed, {repeated} more than once, {stray} for an offset that holds no "
        f"record; dead letters {reasons} for the {len(written.unreadable)} offsets of "
        f"unreadable batches ({written.aborted_bombs} of the batches aborted); "
        f"{read.reread} read again by the reader at an offset it had read"
    )
    if twice:
        verdict += f"; records twice at (output partition, offset): {_twice_at(read)}"
    held = lost == twice == disordered == missed == repeated == stray == 0
    return held and set(reasons) <= {b"unreadable_record"}, verdict


def _twice_at(read: Read, most: int = 10) -> str:
    """The first records that came out twice, each with where its outputs are."""
    places: defaultdict[int, list[tuple[int, int]]] = defaultdict(list)
    for partition, offset, i in read.seen:
        places[i].append((partition, offset))
    twice = [f"{i}: {at}" for i, at in places.items() if len(at) > 1]
    return ", ".join(twice[:most])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=800_000)
    parser.add_argument("--rate", type=float, default=8_000, help="records/s written")
    parser.add_argument("--kills", type=int, default=45)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--bombs", type=int, default=0, help="unreadable batches among them")
    parser.add_argument(
        "--transactional", action="store_true", help="write in transactions, some aborted"
    )
    parser.add_argument("--mode", default="embedded", help="the members' --mode")
    parser.add_argument("--broker-kills", action="store_true", help="kill the broker too")
    parser.add_argument("--brokers", type=int, default=1, help="nodes of the cluster")
    parser.add_argument(
        "--settle", type=float, default=SETTLE_S, help="seconds to wait after the last output"
    )
    parser.add_argument(
        "--rolling", action="store_true", help="a broker's turn is a SIGTERM, not a SIGKILL"
    )
    parser.add_argument(
        "--pauses", action="store_true", help="half the members' turns: SIGSTOP, then SIGCONT"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cluster = LocalCluster(Path(folder) / "kafka", args.brokers)
        try:
            held = soak(args, cluster, cluster.start(), Path(folder))
        finally:
            cluster.stop()
    raise SystemExit(0 if held else 1)


if __name__ == "__main__":
    with interrupted_by_sigterm():  # a killed run stops its broker
        main()
