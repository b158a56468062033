"""The ``quix`` configuration: a real Quix Streams app (from ``.venv-quix``) on the same job.

`make test` builds ``.venv-quix`` first; only the structure of the figures is checked.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import run_cli
from tests.test_bench.cases import positive_figures, positive_spreads

QUIX_PYTHON = Path(__file__).resolve().parents[2] / ".venv-quix" / "bin" / "python"


def test_quix_app_serves_the_job_and_the_embedded_worker_is_compared_with_it(
    tmp_path: Path,
) -> None:
    out = tmp_path / "results"
    result = run_cli(
        "bench", "--workload", "tensor", "--configs", "embedded,quix",
        "--records", "20000", "--loads", "0.25", "--duration", "2",
        "--quix-python", str(QUIX_PYTHON), "--out", str(out),
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    [tensor] = json.loads((out / "results.json").read_text())["workloads"]
    configs = {c["name"]: c for c in tensor["configs"]}
    quix = configs["quix"]
    assert quix["error"] is None, quix["error"]
    assert quix["served_by"] == ["quix"] and quix["guarantee"] == "at-least-once"
    positive_spreads(quix, "throughput", "worker_cpu_s_per_1k")
    positive_figures(quix, "worker_peak_rss_mb")
    report = (out / "report.md").read_text()
    assert "| quix |" in report and "target: x quix" in report
    embedded_row = next(line for line in report.splitlines() if line.startswith("| embedded |"))
    assert "(≥ 3)" in embedded_row  # the tensor workload's target against Quix


def test_naming_quix_without_a_quix_python_is_a_one_line_error(tmp_path: Path) -> None:
    result = run_cli(
        "bench", "--configs", "quix", "--quix-python", str(tmp_path / "none"),
        "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert line.endswith(f"--quix-python {tmp_path / 'none'}: no such file"), line
