"""``streaminfer run --processes 2``: one command, two group members, exactly once across kills."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import Record
from streaminfer.net import free_port
from streaminfer.processes import ManagedProcess, child_pids
from streaminfer.stream import supervisor as supervisor_module
from streaminfer.stream.supervisor import Supervisor
from tests.support import cpu_limited_cgroup, processes_mentioning, wait_for
from tests.workers import decoded, embedded_worker, outputs, produce_keyed, tiny_record

PARTITIONS = 2


def members(supervisor: ManagedProcess) -> list[int]:
    return child_pids(supervisor.pid)


def send(settings: KafkaSettings, topic: str, start: int, count: int) -> None:
    """Records keyed by their number, so each partition gets an increasing sequence."""
    produce_keyed(
        settings, topic, [(str(i).encode(), tiny_record(i)) for i in range(start, start + count)]
    )


def assert_once_in_order(records: list[Record], count: int) -> None:
    ids = [int(doc["id"]) for doc in decoded(records)]
    assert sorted(ids) == list(range(count))  # every input once: nothing lost, nothing twice
    by_partition: dict[int, list[int]] = defaultdict(list)
    for record, i in zip(records, ids, strict=True):
        by_partition[record.partition].append(i)
    for sequence in by_partition.values():
        assert sequence == sorted(sequence)  # order per partition kept


def test_two_members_share_the_work_and_one_endpoint(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable[..., ManagedProcess],
    stream_repo: Path,
) -> None:
    inp, out = topic_factory("in", PARTITIONS), topic_factory("out", PARTITIONS)
    port = free_port()
    supervisor = embedded_worker(
        start_worker, stream_repo, inp, out, "--processes", "2", "--metrics-port", str(port)
    )
    wait_for(lambda: len(members(supervisor)) == 2, what="two members")
    # The supervisor chose the group's assignment once (a new group: incremental) for both.
    assert "0 members; partition assignment cooperative-sticky" in supervisor.log()
    chosen = b"partition.assignment.strategy=cooperative-sticky"
    wait_for(  # a member's command line is its supervisor's until it has started
        lambda: all(chosen in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    for pid in members(supervisor)),
        what="both members started with it",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, timeout=90, what="ready")
    assert supervisor.log().count("partition assignment") == 1  # the members did not ask again
    send(kafka_settings, inp, 0, 40)
    assert_once_in_order(outputs(kafka_settings, out, 40), 40)
    # Each member's lines say which it is: the index its supervisor logged it by, and its pid.
    named = dict(re.findall(r"member (\d) started \(pid (\d+)\)", supervisor.log()))
    assert sorted(named) == ["0", "1"]
    for index, pid in named.items():
        assert f"INFO member {index} (pid {pid}) streaminfer.run: worker" in supervisor.log()
    metrics = httpx.get(f"{url}/metrics").text
    consumed = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("streaminfer_records_in_total")
    ]
    assert consumed == [40.0]  # the members' counters, added up
    assert supervisor.stop() == 0  # SIGTERM drains every member


def test_exactly_once_when_a_member_and_then_the_supervisor_are_killed(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable[..., ManagedProcess],
    stream_repo: Path,
) -> None:
    inp, out = topic_factory("in", PARTITIONS), topic_factory("out", PARTITIONS)
    group = f"g-{inp}"

    def start() -> ManagedProcess:
        return embedded_worker(start_worker, stream_repo, inp, out, "--processes", "2", group=group)

    supervisor = start()
    wait_for(lambda: len(members(supervisor)) == 2, what="two members")
    send(kafka_settings, inp, 0, 30)
    outputs(kafka_settings, out, 30, timeout=90)
    victim = members(supervisor)[0]
    os.kill(victim, signal.SIGKILL)
    send(kafka_settings, inp, 30, 30)
    wait_for(
        lambda: len(members(supervisor)) == 2 and victim not in members(supervisor),
        what="the member restarted",
    )
    outputs(kafka_settings, out, 60, timeout=90)
    orphans = members(supervisor)
    supervisor.send_signal(signal.SIGKILL)
    wait_for(
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in orphans),
        what="members ending with their supervisor",
    )
    send(kafka_settings, inp, 60, 30)
    start()
    assert_once_in_order(outputs(kafka_settings, out, 90, timeout=120), 90)


def test_processes_auto_counts_the_cpu_quota_not_the_machines_cores(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable[..., ManagedProcess],
    stream_repo: Path,
) -> None:
    """A container's CPU limit is a quota, not an affinity: the process sees every core.
    With one core's quota on a two-core machine, ``auto`` runs one plain worker."""
    assert len(os.sched_getaffinity(0)) >= 2, "the machine must have two cores"
    inp, out = topic_factory("in", PARTITIONS), topic_factory("out", PARTITIONS)
    unlimited = embedded_worker(start_worker, stream_repo, inp, out, "--processes", "auto")
    wait_for(lambda: len(members(unlimited)) == 2, what="a member a core")
    assert unlimited.stop() == 0
    with cpu_limited_cgroup(cores=1) as inside:
        limited = embedded_worker(
            start_worker, stream_repo, inp, out, "--processes", "auto", prefix=inside
        )
        send(kafka_settings, inp, 0, 20)
        assert_once_in_order(outputs(kafka_settings, out, 20), 20)
        member_commands = processes_mentioning("streaminfer.cli.main")
        assert not member_commands & set(members(limited))  # no supervisor
        assert limited.stop() == 0


def test_a_member_that_dies_after_a_long_run_starts_its_backoff_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash loop backs off further each time; a death after a healthy run is not one,
    and waits only the first delay.  The member here dies at once four times, then runs
    past the healthy time before it dies again."""
    monkeypatch.setattr(supervisor_module, "_RESTART_BACKOFF_S", (0.01, 0.02, 0.03, 0.04))
    monkeypatch.setattr(supervisor_module, "_HEALTHY_S", 2.0)
    runs = tmp_path / "runs"
    member = (
        "import os, sys, time\n"  # a byte a run, appended: the test reads it meanwhile
        f"with open({str(runs)!r}, 'ab') as runs:\n"
        "    runs.write(b'.')\n"
        f"time.sleep(2.5 if os.path.getsize({str(runs)!r}) == 5 else 0)\n"
        "sys.exit(3)\n"
    )
    supervisor = Supervisor([sys.executable, "-c", member], count=1)
    caplog.set_level(logging.WARNING, logger=supervisor_module.__name__)
    running = threading.Thread(target=supervisor.run)
    running.start()
    try:
        wait_for(lambda: runs.exists() and runs.stat().st_size >= 6, what="six runs")
    finally:
        supervisor.stop()
        running.join(30)
    delays = re.findall(r"exited with 3; starting it again in ([\d.]+) s", caplog.text)
    assert delays[:5] == ["0.01", "0.02", "0.03", "0.04", "0.01"]
