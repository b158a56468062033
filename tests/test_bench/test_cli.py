"""``streaminfer bench --quick`` end to end: its own broker, server, workers and image host.

Only the structure of what it reports is checked, never how fast anything was.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from streaminfer.bench.configs import QUICK, QUICK_CONFIGS
from streaminfer.bench.results import LATENCY_LOAD
from streaminfer.bench.workloads import TabularWorkload
from streaminfer.processes import STREAMINFER, child_pids, running
from tests.support import run_cli, wait_for
from tests.test_bench.cases import positive_figures, positive_spreads


def test_quick_bench_writes_positive_figures_a_report_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = run_cli(
        "bench", "--quick", "--records", "250", "--duration", "2", "--ceiling-duration", "0.5",
        "--out", str(out), timeout=400,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"report: {out / 'report.md'}" in result.stdout.replace("\n", "")

    doc = json.loads((out / "results.json").read_text())
    assert doc["machine"]["cpus"] >= 1 and doc["elapsed_s"] > 0
    assert (doc["settings"]["duration_s"], doc["settings"]["ceiling_s"]) == (2, 0.5)
    assert 1 <= doc["machine"]["usable_cores"] <= doc["machine"]["cpus"]
    [images] = doc["workloads"]
    assert images["name"] == "images" and images["reference"] == "embedded"
    positive_figures(images, "reference_rps")
    positive_figures(images["ceiling"], "pipeline_one_thread_rps", "inference_rps", "cpu_s_per_1k")
    # The ceiling ran before each worker configuration and after the last.
    positive_spreads(images["ceiling"], "pipeline", runs=len(QUICK_CONFIGS))
    configs = {c["name"]: c for c in images["configs"]}
    assert list(configs) == list(QUICK_CONFIGS)
    assert configs["bare"]["throughput"] == images["ceiling"]["pipeline"]
    for name, config in configs.items():
        assert config["error"] is None, f"{name}: {config['error']}"
        positive_spreads(config, "throughput", "worker_cpu_s_per_1k")
        if name == "bare":
            continue
        positive_spreads(config, "throughput", runs=QUICK.repeats)
        assert len(config["windows"]) == QUICK.repeats
        assert config["served_by"] == [config["mode"]]
        positive_figures(config, "worker_peak_rss_mb")
        if name != "embedded":
            positive_spreads(config, "server_cpu_s_per_1k")
            positive_figures(config, "server_peak_rss_mb")
        for point in config["latency"]:
            assert point["skipped"] or point["records"] > 0
            if point["latency"] is not None:
                positive_figures(point["latency"], "p50_ms", "p95_ms", "p99_ms", "max_ms")
                assert point["sent_rps"] >= 0.95 * point["offered_rps"]
                # Each output was written before the reader could see it.
                assert point["written"]["p99_ms"] <= point["latency"]["p99_ms"]
                # The worker committed during the rounds, and its metrics say how long it took.
                assert point["commits_per_s"] > 0 and point["commit_ms"] > 0
                assert len(point["p99_by_second"]) >= 2
                # The load ran in rounds, each measured on its own; together they are all.
                assert len(point["rounds"]) == QUICK.repeats
                counts = [r["count"] for r in point["rounds"]]
                assert all(counts) and sum(counts) == point["latency"]["count"]
                assert point["latency"]["max_ms"] == max(r["max_ms"] for r in point["rounds"])
                assert max(point["p99_by_second"]) <= point["latency"]["max_ms"]
    assert configs["embedded"]["latency"][0]["latency"] is not None  # below its own saturation
    for name, config in configs.items():  # a load that overloads a mode: at its own rate
        if name == "bare":
            continue
        measured = [p for p in config["latency"] if p["latency"] is not None]
        assert sorted({p["load"] for p in measured}) == sorted(QUICK.loads), name
        for point in measured:
            own_rate = point["load"] * config["throughput"]["median"]
            if point["of_own"]:
                assert point["offered_rps"] == pytest.approx(own_rate), name
            elif point["load"] == LATENCY_LOAD:  # judged at its own half too, if well above
                also_own = point["offered_rps"] > 1.1 * own_rate
                assert also_own == any(p["of_own"] for p in measured), name

    rows = {row["name"]: row for row in images["table"]}
    assert list(rows) == ["bare", "bare-inference", *QUICK_CONFIGS[1:]]
    assert rows["embedded"]["vs_ceiling"]["median"] > 0
    report = (out / "report.md").read_text()
    assert all(f"| {name} |" in report for name in QUICK_CONFIGS)
    assert f"median of {QUICK.repeats} runs" in report
    for png in ("throughput-images.png", "latency-images.png"):
        with Image.open(out / png) as image:
            image.verify()


def test_tabular_bench_trains_imports_and_serves_json_flights(tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = run_cli(
        "bench", "--quick", "--workload", "tabular", "--configs", "bare,embedded",
        "--records", "6000", "--duration", "2", "--ceiling-duration", "0.5", "--repeats", "1",
        "--out", str(out),
        "--reference-rate", "1500",
        timeout=200,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr

    [tabular] = json.loads((out / "results.json").read_text())["workloads"]
    assert (tabular["name"], tabular["model"]) == ("tabular", TabularWorkload.model)
    positive_figures(tabular["ceiling"], "pipeline_one_thread_rps", "inference_rps")
    configs = {c["name"]: c for c in tabular["configs"]}
    assert list(configs) == ["bare", "embedded"]
    for name, config in configs.items():
        assert config["error"] is None, f"{name}: {config['error']}"
        positive_spreads(config, "throughput")
    assert configs["embedded"]["served_by"] == ["embedded"]
    rows = {row["name"]: row for row in tabular["table"]}
    assert rows["embedded"]["vs_ceiling"]["median"] > 0
    assert rows["embedded"]["checks"]["ceiling"]["target"] == "≥ 0.85"  # issue 14's floor
    # The load given, not embedded's saturation rate, is what the loads are fractions of.
    assert (tabular["reference"], tabular["reference_rps"]) == ("--reference-rate", 1500)
    [point] = configs["embedded"]["latency"]
    assert (point["load"], point["offered_rps"]) == (QUICK.loads[0], QUICK.loads[0] * 1500)
    assert "fractions of 1,500.0 records/s (`--reference-rate`)" in (out / "report.md").read_text()


def test_a_reference_rate_needs_one_workload() -> None:
    result = run_cli("bench", "--reference-rate", "1000", timeout=60)
    assert result.returncode == 2
    assert "--reference-rate is one workload's rate" in result.stderr


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        new = set(child_pids(todo.pop())) - found
        todo += new
        found |= new
    return found


def _is_worker(pid: int) -> bool:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    except FileNotFoundError:
        return False
    return "streaminfer.cli.main" in args and "run" in args


def test_sigterm_stops_the_bench_and_every_process_it_started(tmp_path: Path) -> None:
    """``timeout`` and a cancelled CI job send SIGTERM: the broker and the worker, each in
    its own session, must not be left running."""
    out = str(tmp_path / "results")
    bench = subprocess.Popen(
        [*STREAMINFER, "bench", "--workload", "tensor", "--configs", "embedded", "--out", out],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def started() -> set[int]:
            children = _descendants(bench.pid)
            return children if any(_is_worker(pid) for pid in children) else set()

        children = wait_for(started, timeout=180, what="the bench's worker", interval=0.2)
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=90) != -signal.SIGTERM  # it stopped itself, not the signal
        wait_for(lambda: not any(running(pid) for pid in children), what="children stopped")
    finally:
        bench.kill()
        bench.wait()
