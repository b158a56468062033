"""``benchmarks/bench_decoder.py`` for a few bodies: a row per tree and round, with
positive figures, the baseline's code run from the path it was given."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_decoder.py"
ROW = re.compile(
    r"^round (?P<round>\d) (?P<tree>this tree|baseline) *: wall +(?P<wall>[\d.]+) ms, "
    r"server's side +(?P<ours>[\d.]+) ms CPU, decoder +(?P<theirs>[\d.]+) ms CPU a body$"
)


def test_each_tree_reports_its_cost_a_body_in_turns() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--bodies", "16", "--concurrency", "2", "--rounds", "2",
         "--baseline", str(ROOT / "src")],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    rows = [ROW.match(line) for line in done.stdout.splitlines()]
    assert all(rows), done.stdout
    assert [(row["round"], row["tree"]) for row in rows if row] == [
        ("1", "this tree"), ("1", "baseline"), ("2", "this tree"), ("2", "baseline"),
    ]  # fmt: skip
    for row in rows:
        assert row is not None
        assert float(row["wall"]) > 0 and float(row["theirs"]) > 0
