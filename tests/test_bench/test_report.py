"""The files a run leaves: JSON of every figure, a Markdown report, PNGs that open."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from streaminfer.bench.report import RESULTS_FILE, workload_section, write_report
from streaminfer.bench.results import Spread
from tests.test_bench.cases import bench_result, repeated_result


def test_report_json_markdown_and_plots(tmp_path: Path) -> None:
    report = write_report(bench_result(), tmp_path)

    doc = json.loads((tmp_path / RESULTS_FILE).read_text())
    images = doc["workloads"][0]
    assert images["ceiling"]["pipeline"]["median"] == 100.0
    assert images["configs"][1]["latency"][1]["latency"]["p99_ms"] == 200.0

    text = report.read_text()
    assert "| embedded | exactly-once | 90.0 | 0.90x | 4.50x |" in text
    assert "**kserve-grpc** failed:\n\n```\nworker exited\n```" in text
    assert "overloaded" in text  # the skipped load is listed with its reason
    # At 50 %: offered and sent rates (this one not measured), records, p50 / p95 / p99 /
    # max of both rounds, each round's p50 / p99, the worker's share, its commits (a second,
    # and the mean time one took) and the worst second's p99.
    row = (
        "| 200 | 50.0 | 125.0 | 200.0 | 201.0 | 50.0 / 100.0; 50.0 / 200.0 | 10.0 / 40.0 "
        "| 9.5, 31.0 | 200.0 |"
    )
    assert "| embedded | 50% | 45.0 | — " + row in text
    assert "each offered load ran 2 rounds; a target passes only if every run and" in text
    assert "![throughput](throughput-images.png)" in text
    assert "![latency](latency-images.png)" in text
    for png in ("throughput-images.png", "latency-images.png"):
        with Image.open(tmp_path / png) as image:
            image.verify()


def test_a_ceiling_that_moved_by_more_than_a_fifth_is_flagged() -> None:
    workload = repeated_result()  # ceiling runs 95-110: within a fifth
    assert "speed moved" not in workload_section(workload, [], "t.png", None)
    assert workload.ceiling is not None
    workload.ceiling.pipeline = Spread.of([104_595.0, 171_214.0, 205_781.0])
    text = workload_section(workload, [], "t.png", None)
    assert "the slowest ceiling run, taken between configurations, made 49% less" in text
