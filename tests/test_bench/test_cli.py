"""``streaminfer bench --quick`` end to end: its own broker, server, workers and image host.

Only the structure of what it reports is checked, never how fast anything was.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from streaminfer.bench.configs import QUICK_CONFIGS
from tests.support import run_cli
from tests.test_bench.cases import positive_figures


def test_quick_bench_writes_positive_figures_a_report_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = run_cli(
        "bench", "--quick", "--records", "250", "--duration", "3", "--out", str(out), timeout=400
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"report: {out / 'report.md'}" in result.stdout.replace("\n", "")

    doc = json.loads((out / "results.json").read_text())
    assert doc["machine"]["cpus"] >= 1 and doc["elapsed_s"] > 0
    [images] = doc["workloads"]
    assert images["name"] == "images" and images["reference"] == "embedded"
    positive_figures(images, "reference_rps")
    positive_figures(
        images["ceiling"],
        "pipeline_rps",
        "pipeline_one_thread_rps",
        "inference_rps",
        "cpu_s_per_1k",
    )
    configs = {c["name"]: c for c in images["configs"]}
    assert list(configs) == list(QUICK_CONFIGS)
    for name, config in configs.items():
        assert config["error"] is None, f"{name}: {config['error']}"
        positive_figures(config, "throughput_rps", "worker_cpu_s_per_1k")
        if name == "bare":
            continue
        assert config["served_by"] == [config["mode"]]
        positive_figures(config, "worker_peak_rss_mb")
        if name != "embedded":
            positive_figures(config, "server_cpu_s_per_1k", "server_peak_rss_mb")
        for point in config["latency"]:
            assert point["skipped"] or point["records"] > 0
            if point["latency"] is not None:
                positive_figures(point["latency"], "p50_ms", "p95_ms", "p99_ms", "max_ms")
    assert configs["embedded"]["latency"][0]["latency"] is not None  # below its own saturation

    report = (out / "report.md").read_text()
    assert all(f"| {name} |" in report for name in QUICK_CONFIGS)
    for png in ("throughput-images.png", "latency-images.png"):
        with Image.open(out / png) as image:
            image.verify()
