"""Imports follow use: help and other commands do not load what only some commands need.

Each check runs the real entry point in a fresh interpreter and reads ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from streaminfer.cli.main import COMMANDS

# Heavy, and needed only to run a model, serve, talk to Kafka or benchmark.
HEAVY = ("numpy", "onnxruntime", "matplotlib", "grpc", "aiohttp", "PIL", "streaminfer.bench")
# Help is click's plain text: typer's rich panels (markdown and all) took two thirds of
# `streaminfer --help`'s time.  Rich itself loads only for a command's own tables.
RICH_HELP = ("typer.rich_utils", "markdown_it")
ONLY_TO_RUN = ("pydantic", "confluent_kafka", "streaminfer.kafka", "streaminfer.models")
_PROBE = """
import json, sys
from streaminfer.cli.main import main
sys.argv = ["streaminfer", *json.loads(sys.argv[1])]
try:
    main()
finally:
    print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def imported(*args: str) -> set[str]:
    """The modules ``streaminfer <args>`` has loaded when it exits (with code 0)."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(args)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return set(json.loads(result.stderr.splitlines()[-1]))


def loaded(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in prefixes or m.startswith(prefixes))


def test_top_level_help_loads_no_subcommand() -> None:
    modules = imported("--help")
    assert "typer" in modules  # the measurement works
    assert loaded(modules, HEAVY + ONLY_TO_RUN + RICH_HELP + ("rich",)) == []
    assert sorted(m for m in modules if m.startswith("streaminfer.cli.")) == [
        "streaminfer.cli.main",
        "streaminfer.cli.options",
    ]


SUBCOMMANDS = ["run", "serve", "topics create", "models publish deploy", "predict",
               "kafka start", "demo", "consume"]  # fmt: skip


@pytest.mark.parametrize("command", [c.split() for c in SUBCOMMANDS], ids=SUBCOMMANDS)
def test_a_subcommands_help_loads_nothing_heavy(command: list[str]) -> None:
    modules = imported(*command, "--help")
    assert f"streaminfer.cli.{COMMANDS[command[0]].module}" in modules  # it did load
    assert loaded(modules, HEAVY + RICH_HELP) == []
    assert "streaminfer.serving" not in modules and "streaminfer.stream.worker" not in modules


def test_the_bench_help_loads_only_the_bench_configurations() -> None:
    modules = imported("bench", "--help")
    assert sorted(m for m in modules if m.startswith("streaminfer.bench.")) == [
        "streaminfer.bench.configs"
    ]
    assert loaded(modules, HEAVY[:-1]) == []
