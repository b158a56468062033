"""PNG plots of one workload: throughput bars, and latency percentiles against offered load.

Figures are drawn on matplotlib's Agg canvas directly, without pyplot, so no GUI backend
or global figure state is ever involved.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from streaminfer.bench.configs import BARE, EMBEDDED, SEED_STYLE
from streaminfer.bench.results import ConfigResult, WorkloadResult
from streaminfer.bench.table import BARE_INFERENCE, Row

_COLOURS = {  # one colour per mode; at-least-once is the same colour, dashed
    BARE: "#7f7f7f",
    BARE_INFERENCE: "#c7c7c7",
    EMBEDDED: "#1f77b4",
    "tfserving-grpc": "#ff7f0e",
    "tfserving-rest": "#2ca02c",
    "kserve-grpc": "#9467bd",
    "kserve-http": "#8c564b",
    SEED_STYLE: "#d62728",
}
_OTHER_COLOUR = "#17becf"
_PERCENTILES = (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99"))


def plot_throughput(workload: WorkloadResult, rows: list[Row], path: Path) -> None:
    """Horizontal bars of records/s (the median, a whisker to the min and max of the runs),
    each labelled with its ratio to the ceiling."""
    measured = [r for r in rows if r.throughput is not None][::-1]
    spreads = [r.throughput for r in measured if r.throughput is not None]
    figure = Figure(figsize=(8, 0.5 * len(measured) + 1.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    names = [r.name for r in measured]
    rates = [s.median for s in spreads]
    whiskers = [[s.median - s.min for s in spreads], [s.max - s.median for s in spreads]]
    colours = [_COLOURS.get(r.mode, _OTHER_COLOUR) for r in measured]
    bars = axes.barh(names, rates, xerr=whiskers, color=colours, capsize=3)
    labels = [f" {r.vs_ceiling.median:.2f}x ceiling" if r.vs_ceiling else "" for r in measured]
    axes.bar_label(bars, labels=labels, fontsize=8)
    if workload.ceiling is not None:
        axes.axvline(workload.ceiling.pipeline_rps, color="black", linestyle="--", linewidth=1)
    axes.set_xlabel("records/s (saturation)")
    axes.set_title(f"{workload.name}: {workload.title}", fontsize=10)
    axes.margins(x=0.25)
    figure.savefig(path, dpi=110)


def plot_latency(workload: WorkloadResult, path: Path) -> bool:
    """p50, p95 and p99 against offered load, one line per configuration; False if none."""
    series = [c for c in workload.configs if any(p.latency for p in c.latency)]
    if not series:
        return False
    figure = Figure(figsize=(12, 4), layout="constrained")
    FigureCanvasAgg(figure)
    panels = figure.subplots(1, len(_PERCENTILES), sharey=True)
    for axes, (field, title) in zip(panels, _PERCENTILES, strict=True):
        for config in series:
            # By rate: a load taken at a mode's own rate sits below the one it replaced.
            points = sorted(
                (p for p in config.latency if p.latency is not None), key=lambda p: p.offered_rps
            )
            xs = [p.offered_rps for p in points]
            ys = [getattr(p.latency, field) for p in points]
            axes.plot(xs, ys, marker="o", label=config.name, **_line_style(config))
        axes.set_yscale("log")
        axes.set_xlabel("offered load (records/s)")
        axes.set_title(f"{title} end-to-end latency", fontsize=10)
        axes.grid(True, which="both", alpha=0.3)
    panels[0].set_ylabel("ms (input timestamp → output committed)")
    panels[-1].legend(fontsize=8)
    figure.suptitle(f"{workload.name}: latency at fixed offered loads", fontsize=11)
    figure.savefig(path, dpi=110)
    return True


def _line_style(config: ConfigResult) -> dict[str, str]:
    dashed = config.guarantee == "at-least-once" and config.mode != SEED_STYLE
    return {"color": _COLOURS.get(config.mode, _OTHER_COLOUR), "linestyle": "--" if dashed else "-"}
