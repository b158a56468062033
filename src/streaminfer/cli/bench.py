"""``streaminfer bench``: one workload through every way of serving it, side by side."""

from __future__ import annotations

import shlex
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from streaminfer.bench.configs import (
    CONFIGS,
    FULL,
    QUICK,
    QUICK_CONFIGS,
    QUICK_CONFIGS_BY_WORKLOAD,
    QUIX,
    BenchConfig,
    select_configs,
)
from streaminfer.cli.options import KafkaOptions, kafka_options
from streaminfer.errors import ConfigError
from streaminfer.extras import require

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from streaminfer.bench.results import BenchResult

_CONFIG_NAMES = ", ".join(c.name for c in CONFIGS)
DEFAULT_QUIX_PYTHON = Path(".venv-quix/bin/python")  # what `make bench` builds
# The benchmark's optional dependencies (the `bench` extra), checked before a run starts:
# its plots, and the sample photos of the images workload.  The tabular workload trains
# and imports a scikit-learn model: the `sklearn` extra.
_EXTRA_MODULES = ("matplotlib", "skimage")
_TABULAR_MODULES = ("sklearn", "skl2onnx", "pandas", "joblib")


@kafka_options
def bench(
    workload: Annotated[
        str | None,
        typer.Option(help="images | tensor | tabular | all (default: all; images with --quick)."),
    ] = None,
    configs: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated configurations (default: all; with --quick: "
            f"{','.join(QUICK_CONFIGS)}; for tabular "
            f"{','.join(QUICK_CONFIGS_BY_WORKLOAD['tabular'])}). "
            f"Known: {_CONFIG_NAMES}."
        ),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(
            help=f"A short run: a fifth of the records, one load ({QUICK.loads[0]:.0%}), "
            f"{QUICK.duration_s:g} s per load, fewer configurations."
        ),
    ] = False,
    records: Annotated[
        int | None,
        typer.Option(
            min=10,
            help="Records per saturation run "
            "(default: images 1000, tensor 200000, tabular 60000; seed-style 1/5).",
        ),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(min=1.0, help=f"Seconds per offered load (default: {FULL.duration_s:g})."),
    ] = None,
    ceiling_duration: Annotated[
        float | None,
        typer.Option(
            min=0.5,
            help="Seconds per in-process ceiling measurement, each shape and each run between "
            f"configurations (default: {FULL.ceiling_s:g}; {QUICK.ceiling_s:g} with --quick).",
        ),
    ] = None,
    loads: Annotated[
        str | None,
        typer.Option(
            help="Offered loads as fractions of embedded's saturation rate "
            f"(default: {','.join(f'{x:g}' for x in FULL.loads)})."
        ),
    ] = None,
    reference_rate: Annotated[
        float | None,
        typer.Option(
            min=1.0,
            help="Records/s the offered loads are fractions of, in place of the first "
            "configuration's saturation rate: the same loads from run to run (one workload).",
        ),
    ] = None,
    repeats: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Saturation runs, and rounds at each offered load, per configuration; the "
            "ceiling runs between configurations and at least as often "
            f"(default: {FULL.repeats}; {QUICK.repeats} with --quick).",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default: bench-results/<timestamp>).")
    ] = None,
    quix_python: Annotated[
        Path | None,
        typer.Option(
            help="A Python with quixstreams, for the quix configuration "
            f"(default: {DEFAULT_QUIX_PYTHON} if present; without one, quix is left out)."
        ),
    ] = None,
    *,
    kafka: KafkaOptions,
) -> None:
    """Starts a throw-away Kafka broker unless --bootstrap-servers names one."""
    chosen = _workloads(workload, quick)
    _check_extras(chosen)
    if reference_rate is not None and len(chosen) > 1:
        raise ConfigError("--reference-rate is one workload's rate: give --workload too")
    from rich.console import Console

    from streaminfer.bench.report import write_report
    from streaminfer.bench.suite import BenchPlan, run_bench

    console = Console()
    named = _split(configs)
    python = _quix_python(quix_python)
    selected = _without_quix(select_configs(named, quick, chosen), python, named, console)
    plan = BenchPlan.build(
        workloads=chosen,
        configs=selected,
        out=out or Path("bench-results") / datetime.now().strftime("%Y%m%d-%H%M%S"),
        quick=quick,
        records=records,
        loads=_loads(loads),
        reference_rps=reference_rate,
        duration_s=duration,
        ceiling_s=ceiling_duration,
        repeats=repeats,
        quix_python=python,
    )
    given = kafka.settings() if kafka.bootstrap_servers else None
    if given is not None:
        from streaminfer.kafka.admin import TopicAdmin

        TopicAdmin(given).check()  # a bad login or certificate: one line, before any run
    command = "streaminfer " + shlex.join(sys.argv[1:])
    result = run_bench(plan, given, command, lambda line: console.print(line, highlight=False))
    report = write_report(result, plan.out)
    for table in _tables(result):
        console.print(table)
    minutes, seconds = divmod(round(result.elapsed_s), 60)
    console.print(f"took {minutes} min {seconds} s; report: {report}", highlight=False)
    if any(c.error for w in result.workloads for c in w.configs):
        raise typer.Exit(1)


def _check_extras(workloads: list[str]) -> None:
    for module in _EXTRA_MODULES:
        require(module, "bench")
    if "tabular" in workloads:
        for module in _TABULAR_MODULES:
            require(module, "sklearn")


def _quix_python(given: Path | None) -> Path | None:
    if given is None:
        return DEFAULT_QUIX_PYTHON.absolute() if DEFAULT_QUIX_PYTHON.exists() else None
    if not given.exists():
        raise ConfigError(f"--quix-python {given}: no such file")
    return given.absolute()


def _without_quix(
    configs: list[BenchConfig], python: Path | None, named: list[str] | None, console: Console
) -> list[BenchConfig]:
    """Leave quix out of a default run when no Python with quixstreams is at hand."""
    if python is not None or all(c.name != QUIX for c in configs):
        return configs
    if named is not None:
        raise ConfigError(
            f"the {QUIX} configuration needs a Python with quixstreams: `make bench` builds "
            f"{DEFAULT_QUIX_PYTHON}, or pass --quix-python"
        )
    console.print(f"leaving out {QUIX}: no {DEFAULT_QUIX_PYTHON} (`make bench` builds it)")
    return [c for c in configs if c.name != QUIX]


def _split(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _workloads(choice: str | None, quick: bool) -> list[str]:
    from streaminfer.bench.workloads import WORKLOADS

    name = choice or ("images" if quick else "all")
    if name == "all":
        return list(WORKLOADS)
    if name not in WORKLOADS:
        raise ConfigError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}, all")
    return [name]


def _loads(text: str | None) -> list[float] | None:
    parts = _split(text)
    if parts is None:
        return None
    try:
        values = [float(part) for part in parts]
    except ValueError as exc:
        raise ConfigError(f"--loads takes fractions like 0.25,0.5: {exc}") from exc
    if any(v <= 0 for v in values):
        raise ConfigError("--loads must be positive fractions of the saturation rate")
    return values


def _tables(result: BenchResult) -> list[Table]:
    from rich.table import Table

    from streaminfer.bench.table import SHORT_HEADERS, build_rows

    tables = []
    for workload in result.workloads:
        table = Table(title=f"{workload.name}: {workload.title}", title_justify="left")
        for header in SHORT_HEADERS:
            table.add_column(header, overflow="fold")
        for row in build_rows(workload):
            table.add_row(*row.short_cells(), style="red" if row.error else None)
        tables.append(table)
    return tables
