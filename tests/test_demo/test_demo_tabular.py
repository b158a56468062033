"""`streaminfer demo --tabular`: a scikit-learn model trained, imported and fed JSON flights."""

from __future__ import annotations

import os
import re
from pathlib import Path

from streaminfer.demo_tabular import SHOWN_PER_STATUS
from tests.support import processes_mentioning, run_cli


def test_the_tabular_demo_agrees_with_scikit_learn_and_cleans_up(tmp_path: Path) -> None:
    result = run_cli(
        "demo", "--tabular", "--home", str(tmp_path), "--timeout", "120",
        timeout=300, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    cell = r"\s+│\s+"
    columns = [r"(flight-\d+)", r"-?\d+", r"\d+", r"(embedded|tfserving-rest)", r"(\w+) \d+%"]
    row = cell.join([*columns, r"(\w+)"])
    rows = re.findall(row, result.stdout)
    assert len(rows) == 2 * 3 * SHOWN_PER_STATUS, result.stdout
    assert all(predicted == expected for _, _, predicted, expected in rows), result.stdout
    assert {predicted for *_, predicted, _ in rows} == {"on_time", "late", "very_late"}
    assert re.search(r"no-carrier.+bad_features.+missing feature 'carrier'", result.stdout)
    assert not processes_mentioning(str(tmp_path)), "demo processes still running"


def test_without_scikit_learn_the_demo_names_the_extra(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked" / "sklearn"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('scikit-learn is not installed')\n")
    path = os.pathsep.join([str(blocked.parent), os.environ.get("PYTHONPATH", "")])
    result = run_cli(
        "demo", "--tabular", "--home", str(tmp_path / "home"),
        env={**os.environ, "PYTHONPATH": path},
    )  # fmt: skip
    assert result.returncode == 2
    assert "pip install 'streaminfer[sklearn]'" in result.stderr
    assert not (tmp_path / "home" / "demo-kafka").exists(), "nothing starts without the extra"
