"""``benchmarks/kill_soak.py``: its verdict on what came out (pure logic), and a short run of
the whole script against real parts (its longer runs are made by hand)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kill_soak.py"
UNREADABLE = b"unreadable_record"
# Past the workers' transaction.timeout.ms (5 s): a transaction still open by then is
# aborted, so no duplicate can show later.
SETTLE = "6"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kill_soak", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def written(script: ModuleType) -> Any:
    """Partition 0: records 0 and 1 at offsets 0 and 1, a commit marker at 2, a bomb's
    batch at 3-4; partition 1: record 2 at offset 0."""
    return script.Written(
        ids={0, 1, 2}, served={(0, 0), (0, 1), (1, 0)}, unreadable={(0, 3), (0, 4)}
    )


def read(
    script: ModuleType,
    outputs: list[tuple[int, int, tuple[int, int]]] | None = None,
    letters: list[tuple[tuple[int, int], bytes]] | None = None,
) -> Any:
    """Outputs as (output partition, id, input offset), each at its output partition's next
    offset; dead letters as (input offset, reason)."""
    if outputs is None:
        outputs = [(0, 0, (0, 0)), (0, 1, (0, 1)), (1, 2, (1, 0))]
    if letters is None:
        letters = [((0, 3), UNREADABLE), ((0, 4), UNREADABLE)]
    next_offset: Counter[int] = Counter()
    seen = []
    for partition, i, _ in outputs:
        seen.append((partition, next_offset[partition], i))
        next_offset[partition] += 1
    return script.Read(
        seen=seen,
        outputs=Counter(at for _, _, at in outputs),
        letters=Counter(at for at, _ in letters),
        reasons=Counter(reason for _, reason in letters),
    )


def test_every_record_once_and_every_unreadable_offset_dead_lettered_holds(
    script: ModuleType,
) -> None:
    held, verdict = script.judge(written(script), read(script))
    assert held, verdict
    assert "lost 0, twice 0" in verdict and "0 missed" in verdict


@pytest.mark.parametrize(
    ("outputs", "letters", "says"),
    [
        ([(0, 0, (0, 0)), (1, 2, (1, 0))], None, "lost 1"),
        (
            [(0, 0, (0, 0)), (0, 1, (0, 1)), (0, 1, (0, 1)), (1, 2, (1, 0))],
            None,
            "twice 1",
        ),
        ([(0, 1, (0, 1)), (0, 0, (0, 0)), (1, 2, (1, 0))], None, "out of order 1"),
        (None, [((0, 3), UNREADABLE)], "1 missed"),
        (None, [((0, 3), UNREADABLE), ((0, 4), UNREADABLE), ((0, 4), UNREADABLE)], "1 more"),
        (
            [(0, 0, (0, 0)), (0, 1, (0, 1)), (0, 7, (0, 2)), (1, 2, (1, 0))],
            None,
            "1 for an offset that holds no record",
        ),
        (None, [((0, 3), UNREADABLE), ((0, 4), b"bad_record")], "bad_record"),
    ],
    ids=[
        "lost",
        "twice",
        "out-of-order",
        "dead-letter-missing",
        "dead-letter-twice",
        "output-for-a-marker",
        "other-dead-letter",
    ],
)
def test_any_departure_fails(
    script: ModuleType,
    outputs: list[tuple[int, int, tuple[int, int]]] | None,
    letters: list[tuple[tuple[int, int], bytes]] | None,
    says: str,
) -> None:
    held, verdict = script.judge(written(script), read(script, outputs, letters))
    assert not held
    assert says in verdict, verdict


def test_a_record_twice_is_named_with_both_places_it_came_out(script: ModuleType) -> None:
    outputs = [(0, 0, (0, 0)), (0, 1, (0, 1)), (0, 1, (0, 1)), (1, 2, (1, 0))]
    held, verdict = script.judge(written(script), read(script, outputs))
    assert not held
    assert "records twice at (output partition, offset): 1: [(0, 1), (0, 2)]" in verdict


@pytest.mark.timeout(600)
def test_a_short_soak_of_every_kind_holds() -> None:
    """The whole script, briefly: its own broker, transactional input with an unreadable
    batch, members asking a model server, and six kills, the seed's first of the server
    and its fourth of the broker, and among the members' turns pauses past their session
    timeout (zombies).  It exits 0 only if its verdict holds."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--records", "4000", "--rate", "2000", "--kills", "6",
         "--bombs", "1", "--transactional", "--mode", "kserve-grpc", "--broker-kills",
         "--pauses", "--seed", "13", "--settle", SETTLE],
        capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    verdict = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-2000:]
    assert done.returncode == 0, done.stdout[-12_000:]  # on failure, the members' events too
    assert "'server': 1" in verdict and "'broker': 1" in verdict and "'pause'" in verdict, verdict
    assert "lost 0, twice 0" in verdict and "{b'unreadable_record': 4}" in verdict, verdict


@pytest.mark.timeout(600)
def test_a_rolling_restart_of_a_three_broker_cluster_holds() -> None:
    """Three brokers, every topic on all three, two in sync needed: the seed's first, third
    and sixth kills restart a node each (SIGTERM, in turn: a whole rolling restart), among
    kills of members and of the supervisor, while transactional input is written."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--records", "30000", "--rate", "1000", "--kills", "6",
         "--transactional", "--brokers", "3", "--rolling", "--broker-kills", "--seed", "61",
         "--settle", SETTLE],
        capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    verdict = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-2000:]
    assert done.returncode == 0, done.stdout[-12_000:]  # on failure, the members' events too
    assert "'broker': 3" in verdict and "lost 0, twice 0" in verdict, verdict
