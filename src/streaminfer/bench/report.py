"""What a run leaves behind: ``results.json`` (every figure, and each workload's table of
ratios and targets), ``report.md`` and PNG plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from streaminfer.bench.results import (
    GIVEN_REFERENCE,
    BenchResult,
    LatencyPoint,
    WorkloadResult,
)
from streaminfer.bench.table import HEADERS, Row, build_rows, spread_text

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
# The ceiling's slowest run this far below its fastest: the machine's speed moved.
MOVED_SHARE = 0.2

METHOD = """\
## How the figures are measured

- **Saturation throughput.** The records are produced to a fresh one-partition topic
  *before* the worker starts, so it never waits for input. A `read_committed` consumer
  in the benchmark process reads every output; throughput is the records completed after
  the first output, divided by the time from the first output to the last, both taken
  from the outputs' own timestamps (when the worker wrote them), so the grouping of
  outputs into transactions does not blur a short run. Worker start-up, model loading and
  the group join are outside that window.
- **Repeated runs.** Each configuration's saturation is timed `repeats` times (see the
  settings; 3 in a full run, 2 with `--quick`): as many batches of records, after a
  tenth of a batch that warms the worker up untimed, are produced up front, and each
  batch is one run, timed on its own. A figure is the median
  of its runs, with their min-max beside it (in `results.json`, every run). A ratio is
  each run against the median of what it is compared with, so its min-max shows how far
  the runs strayed; a throughput target passes only when the lowest run meets it.
- **End-to-end latency.** A producer writes at a steady offered rate for a fixed time,
  in as many rounds one after another as saturation has runs, with librdkafka's default
  `linger.ms=5` as an event source would (a record's timestamp is taken when it is
  produced, so the linger counts as latency); it is the one that wrote the saturation
  records, so it is connected and holds its producer id before the first timed record.
  It sends every record due at once and sleeps at least 1 ms between sends, and *sent
  records/s* is the rate the slowest round reached; a latency target fails if that is
  below 95 % of the offered rate, since the load was then not what the figure claims.
  An output's latency runs from its input record's timestamp to the moment the
  `read_committed` consumer sees it, so under exactly-once it includes waiting for the
  transaction to commit. That consumer and the producer share the benchmark's process,
  which keeps what it reads in arrays and collects its garbage before each round, so
  none of its full collections (which stalled both) lands in a round. The percentiles
  are of every round's records together; *each round's p50 / p99* shows how far one
  window of a busy machine strays, and a latency target passes only when every round
  meets it, as a throughput target needs every run.
  *Written* is the part up to the output's own timestamp, when the worker wrote it
  (polling, the pipeline, the wait for a commit in flight); the rest is its
  transaction's commit and the reader. *Commits/s, mean ms* are the worker's successful
  commits over the rounds, read from its metrics (`streaminfer_commit_seconds`): how
  many a second of the rounds' sending, and how long one took on average (the Quix app
  has no such metrics). *Worst second* is the highest p99 of the records sent in any
  one second (`p99_by_second` in `results.json`): a p99 far above it came
  from the whole phase, one close to it from a spike. Offered loads are fractions of
  the reference configuration's saturation rate (normally `embedded`), or of the rate
  `--reference-rate` gives, the same absolute rates for every configuration; a load
  above 90 % of a configuration's own saturation rate is skipped, since there latency
  measures only how long the queue has been growing, and the same fraction of that
  configuration's own saturation rate is offered in its place (*of its own*), so every
  mode has a latency figure at each load: a remote mode's at half its own capacity, say,
  where half of embedded's would overload it. The latency target speaks of half of each
  configuration's own saturation: where 50 % of the reference rate comes more than a
  tenth above half of a configuration's own, half of its own is offered as well, and the
  target judged there.
- **CPU.** User + system time from `/proc/<pid>/stat` of the worker and, in remote modes,
  of the model server, read every 50 ms during saturation: the CPU used within each run's
  timed window (first output to last, by their timestamps), per 1,000 records the window
  counts. For `bare`, the benchmark's own process during the best pipeline variant.
- **Memory.** Peak resident set (`VmHWM` in `/proc/<pid>/status`) of the worker and the
  server over the whole configuration.
- **Ceiling.** `bare` runs the worker's own embedded predictor in the benchmark process:
  fetch + decode + preprocess + inference on every core (for JSON records the worker's
  own parse, and for tabular ones its features-to-row and ranking), batches of 16 (64
  and 256 too for cheap records) with 1, 2 or 4 batches in flight, and keeps the best
  shape; no Kafka. As in the worker, only downloads go to fetch threads, and the record
  values are made before the clock starts. It runs first, then again in
  that shape after every other configuration (at least `repeats` times in all), and the
  ceiling is the median of those runs: spread over the whole run, it meets the same busy
  moments as the figures it is compared with. When its slowest run is more than a fifth
  below its fastest, the workload's section says the machine's speed moved. "One
  thread, batch 1" is the same pipeline one record at a time, without the batcher (a
  lone caller has nothing to batch), as a one-message-at-a-time app runs it.
  `bare-inference` is ONNX Runtime alone on a ready tensor, batch 1, one caller: the
  model's own limit.
- **seed-style** re-creates the original demo: the worker one record at a time
  (`--batch-size 1 --max-in-flight 1`, at-least-once), a new gRPC channel and one
  blocking `tensorflow.serving.InceptionService/Classify` call per record. Being slow,
  it is timed on a fifth of the records.
- **quix** is the same job written as a Quix Streams application
  (`streaminfer.bench.quixapp`): one message at a time through a dataframe, at-least-once
  (its fastest guarantee), fetching, decoding and classifying with streaminfer's own
  embedded code, so the comparison is between the two ways of streaming. It runs under
  the interpreter of `--quix-python` (`make bench` builds `.venv-quix`).
- **Remote modes** run against `streaminfer serve` (dynamic batching on, its defaults),
  started for each configuration on free loopback ports.
- **Targets** are those of TARGETS.md. Throughput ratios apply to the `images` workload
  (they were set for EfficientNet-Lite0), except `x quix`: the embedded worker against
  Quix Streams, ≥ 1.8x on images, ≥ 3x on the tensor workload and ≥ 2x on the tabular
  one; and on the tabular and tensor workloads the embedded worker has its own floor,
  ≥ 0.85x the ceiling (issues 14 and 15). `—` means a target does not apply. Not covered
  here: the server-alone targets (`benchmarks/bench_server.py`).
- Configurations run one after another on the same broker, model repository and input
  records; a busy machine (see the load averages) makes every figure noisier.
"""


def write_report(result: BenchResult, out: Path) -> Path:
    """Write the JSON, the plots and the Markdown report into ``out``; returns the report."""
    from streaminfer.bench.plots import plot_latency, plot_throughput  # matplotlib: only here

    out.mkdir(parents=True, exist_ok=True)
    doc = result.to_json()
    sections = []
    for workload, workload_doc in zip(result.workloads, doc["workloads"], strict=True):
        rows = build_rows(workload)
        workload_doc["table"] = [asdict(row) for row in rows]
        throughput_png = f"throughput-{workload.name}.png"
        plot_throughput(workload, rows, out / throughput_png)
        latency_png: str | None = f"latency-{workload.name}.png"
        if not plot_latency(workload, out / str(latency_png)):
            latency_png = None
        sections.append(workload_section(workload, rows, throughput_png, latency_png))
    (out / RESULTS_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    report = out / REPORT_FILE
    report.write_text("\n".join([_header(result), *sections, METHOD]))
    return report


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *(line(r) for r in rows)])


def workload_section(
    workload: WorkloadResult, rows: list[Row], throughput_png: str, latency_png: str | None
) -> str:
    parts = [f"## {workload.name}: {workload.title}\n", _workload_setup(workload)]
    parts.append(markdown_table(HEADERS, [row.cells() for row in rows]) + "\n")
    for row in rows:
        if row.error:
            parts.append(f"**{row.name}** failed:\n\n```\n{row.error}\n```\n")
    latency_rows = [
        _latency_cells(config.name, point)
        for config in workload.configs
        for point in config.latency
    ]
    if latency_rows:
        headers = ["configuration", "load", "offered records/s", "sent records/s", "records"]
        headers += ["p50 ms", "p95 ms", "p99 ms", "max ms", "each round's p50 / p99 ms"]
        headers += ["written p50 / p99 ms", "commits/s, mean ms"]
        headers += ["worst second's p99 ms"]
        parts.append("### Latency at fixed offered loads\n")
        parts.append(markdown_table(headers, latency_rows) + "\n")
    parts.append(f"![throughput]({throughput_png})\n")
    if latency_png is not None:
        parts.append(f"![latency]({latency_png})\n")
    return "\n".join(parts)


def _latency_cells(name: str, point: LatencyPoint) -> list[str]:
    sent = "—" if point.sent_rps is None else f"{point.sent_rps:,.1f}"
    load = f"{point.load:.0%}" + (" of its own" if point.of_own else "")
    cells = [name, load, f"{point.offered_rps:,.1f}", sent]
    summary = point.latency
    if summary is None:
        return [*cells, point.skipped or "—", "", "", "", "", "", "", "", ""]
    figures = (summary.p50_ms, summary.p95_ms, summary.p99_ms, summary.max_ms)
    written = (
        "—" if point.written is None else f"{point.written.p50_ms:.1f} / {point.written.p99_ms:.1f}"
    )
    commits = "—"
    if point.commits_per_s is not None:
        mean = "—" if point.commit_ms is None else f"{point.commit_ms:.1f}"
        commits = f"{point.commits_per_s:.1f}, {mean}"
    rounds = "; ".join(f"{r.p50_ms:.1f} / {r.p99_ms:.1f}" for r in point.rounds) or "—"
    worst = f"{max(point.p99_by_second):.1f}" if point.p99_by_second else "—"
    figures_text = (f"{v:.1f}" for v in figures)
    return [*cells, str(point.records), *figures_text, rounds, written, commits, worst]


def _workload_setup(workload: WorkloadResult) -> str:
    lines = [f"{workload.records:,} records per saturation run."]
    if workload.reference == GIVEN_REFERENCE:
        lines.append(
            f"Offered loads are fractions of {workload.reference_rps:,.1f} records/s "
            f"(`{GIVEN_REFERENCE}`)."
        )
    elif workload.reference_rps is not None:
        lines.append(
            f"Offered loads are fractions of `{workload.reference}`'s saturation rate "
            f"(the median of its runs), {workload.reference_rps:,.1f} records/s."
        )
    ceiling = workload.ceiling
    if ceiling is not None:
        runs = len(ceiling.pipeline.runs)
        lines.append(
            f"Ceiling (in-process pipeline, {ceiling.pipeline_variant}): "
            f"{ceiling.pipeline_rps:,.1f} records/s, the median of {runs} "
            f"run{'s' if runs > 1 else ''} ({spread_text(ceiling.pipeline, 1)}); "
            "one thread, batch 1: "
            f"{ceiling.pipeline_one_thread_rps:,.1f}; bare inference: "
            f"{ceiling.inference_rps:,.1f}/s at batch 1, "
            f"{ceiling.inference_batched_rps:,.1f}/s at batch 16."
        )
        low, high = ceiling.pipeline.min, ceiling.pipeline.max
        if high > 0 and 1 - low / high > MOVED_SHARE:
            lines.append(
                f"**The machine's speed moved during this run:** the slowest ceiling run, "
                f"taken between configurations, made {1 - low / high:.0%} less than the "
                "fastest, so figures from different moments of the run compare loosely."
            )
    return " ".join(lines) + "\n"


def _header(result: BenchResult) -> str:
    machine = result.machine
    minutes, seconds = divmod(round(result.elapsed_s), 60)
    repeats = result.settings.get("repeats", 1)
    rounds = f"{repeats} round{'s' if repeats > 1 else ''}"
    return (
        "# streaminfer bench\n\n"
        f"Run at {result.started_at}, took {minutes} min {seconds} s: `{result.command}`.\n\n"
        f"Every saturation figure is the median of {repeats} runs, its min-max in brackets, "
        f"and each offered load ran {rounds}; a target passes only if every run and every "
        "round meets it.\n\n"
        f"Machine: {machine.get('cpus')} CPUs ({machine.get('cpu_model') or 'unknown model'}), "
        f"{machine.get('usable_cores', machine.get('cpus'))} usable by the benchmark, "
        f"Python {machine.get('python')}; load average {machine.get('load_average_start'):.2f} "
        f"at the start, {machine.get('load_average_end', 0.0):.2f} at the end.\n"
    )
