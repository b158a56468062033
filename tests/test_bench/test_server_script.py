"""``benchmarks/bench_server.py``'s figures over rounds (pure logic; the script itself
drives real servers and is run by hand)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_server.py"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_server", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_spread_is_the_median_and_the_range(script: ModuleType) -> None:
    assert script.spread([3.0, 1.0, 2.0], 1) == "2.0 (1.0-3.0)"
    assert script.spread([1.234], 2) == "1.23"


def test_ours_against_mlserver_is_taken_round_by_round(
    script: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    figure = script.Figure
    figures = {
        ("ours batch=on", "v2-rest-json float", 16): [figure(100, 120), figure(60, 120)],
        ("ours batch=on", "v2-grpc float", 16): [figure(90, 120), figure(90, 120)],
        ("ours batch=on", "v2-grpc jpeg", 16): [figure(80, 120), figure(80, 120)],
        (script.MLSERVER_NAME, "v2-rest-json float", 16): [figure(50, 120), figure(40, 120)],
        (script.MLSERVER_NAME, "v2-grpc float", 16): [figure(30, 120), figure(45, 120)],
    }
    script.print_comparison(figures)
    compared = {
        " ".join(ours.split()[2:]): " ".join(theirs.split())
        for ours, theirs in (
            line.split(" vs MLServer ")
            for line in capsys.readouterr().out.splitlines()
            if " vs " in line
        )
    }
    assert compared == {
        # Round by round: 100/50 and 60/40, not the medians' 80/45 (1.78).
        "v2-rest-json float 16": "v2-rest-json float 1.75 (1.50-2.00)",
        "v2-grpc float 16": "v2-grpc float 2.50 (2.00-3.00)",
    }  # and no images: MLServer gets none
