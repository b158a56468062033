"""``benchmarks/machine_noise.py`` run for a second: a row per probe, with deciles in order."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "machine_noise.py"
ROW = re.compile(
    r"^(?P<name>.+?)\s+(?P<median>[\d.]+)\s+(?P<low>[\d.]+)-(?P<high>[\d.]+)\s+(?P<ratio>[\d.]+)$"
)


def test_each_probe_reports_its_median_and_deciles() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--seconds", "1", "--megabytes", "1", "2"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    rows = [ROW.match(line) for line in done.stdout.splitlines()[1:]]
    assert [row["name"] for row in rows if row] == [
        "arithmetic (core cache)",
        "random reads over 1 MB",
        "random reads over 2 MB",
    ]
    for row in rows:
        assert row is not None
        low, median, high = float(row["low"]), float(row["median"]), float(row["high"])
        assert 0 < low <= median <= high
        assert float(row["ratio"]) >= 1.0
