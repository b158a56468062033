"""Where a saturated worker's time goes: wall and CPU per record of each stage of its loop.

    .venv/bin/python benchmarks/worker_stages.py [--records 300000] [--rounds 3]
        [--tree OTHER_SRC ...]

Starts a local broker, writes ``--records`` tensor records up front, and lets one
embedded exactly-once worker (the tiny model) drain them; the worker runs with its loop's
stages wrapped in timers (``--inner``), and reports records/s from its 20,000th output
to its last, and for each stage the wall time and the thread's CPU time per record;
last, the whole process's CPU per record (every thread's: librdkafka's too).
Wall beyond CPU on the loop's thread is time it waited: for a chunk (the pipeline
threads are the bottleneck), or for the GIL after a call that let go of it (the loop
is).  ``--tree`` adds source trees (their ``src``, e.g. a ``git worktree`` of an older
commit) to compare; rounds take turns between trees so a drifting machine moves all.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

STAGES = {  # (module, class, method): what the worker's loop and its chunk threads do
    ("stream.worker", "Worker", "_fill"): "poll and hand out chunks",
    ("stream.worker", "Worker", "_emit_finished"): "write finished chunks",
    ("stream.checkpoint", "Checkpoint", "write"): "  of which produce",
    ("stream.worker", "Worker", "_account"): "  of which metrics",
    ("stream.worker", "Worker", "_advance_commit"): "commits",
    # One lane of embedded work runs on the loop's thread: then inside the first stage.
    ("stream.worker", "Worker", "_process"): "a chunk, on its thread",
}
PROCESS = "the whole process"  # all its threads, from the 20,000th output to the last
FIRST_COUNTED = 20_000  # outputs before the rate is timed: start-up and the group join


def instrument() -> None:
    """In the worker: time each stage, and print the figures as JSON when it exits."""
    import importlib

    wall: collections.defaultdict[str, float] = collections.defaultdict(float)
    cpu: collections.defaultdict[str, float] = collections.defaultdict(float)
    written: list[tuple[float, int, float]] = []  # when, outputs so far, process CPU

    def timed(name: str, method: Any) -> Any:
        def stage(*args: Any, **kwargs: Any) -> Any:
            started, cpu_started = time.perf_counter(), time.thread_time()
            try:
                return method(*args, **kwargs)
            finally:
                wall[name] += time.perf_counter() - started
                cpu[name] += time.thread_time() - cpu_started

        return stage

    for (module, cls, method), name in STAGES.items():
        owner = getattr(importlib.import_module(f"streaminfer.{module}"), cls)
        setattr(owner, method, timed(name, getattr(owner, method)))
    checkpoint = importlib.import_module("streaminfer.stream.checkpoint").Checkpoint
    write = checkpoint.write

    def counted(self: Any, records: Any, sources: Any) -> None:
        write(self, records, sources)
        done = (written[-1][1] if written else 0) + len(records)
        written.append((time.perf_counter(), done, time.process_time()))

    checkpoint.write = counted

    def report() -> None:
        timed_from = next((w for w in written if w[1] >= FIRST_COUNTED), None)
        if timed_from is None or written[-1] == timed_from:
            return
        (start, first, cpu_start), (end, last, cpu_end) = timed_from, written[-1]
        per = {name: (wall[name] / last * 1e6, cpu[name] / last * 1e6) for name in wall}
        # Every thread's CPU in the timed window: librdkafka's and ONNX Runtime's too.
        per[PROCESS] = (
            (end - start) / (last - first) * 1e6,
            (cpu_end - cpu_start) / (last - first) * 1e6,
        )
        figures = {"records_per_s": (last - first) / (end - start), "us_per_record": per}
        print("STAGES " + json.dumps(figures), file=sys.stderr, flush=True)

    atexit.register(report)


def one_round(src: Path | None, records: int) -> dict[str, Any]:
    """A broker, ``records`` records, one worker from ``src`` draining them: its figures."""
    from confluent_kafka import Producer

    from streaminfer.kafka.admin import TopicAdmin
    from streaminfer.kafka.broker import LocalBroker
    from streaminfer.kafka.config import KafkaSettings
    from streaminfer.kafka.records import consume
    from streaminfer.models.export.tiny import export_tiny_model
    from streaminfer.net import free_port

    with tempfile.TemporaryDirectory() as folder:
        broker = LocalBroker(Path(folder) / "broker")
        state = broker.start(port=free_port())
        try:
            settings = KafkaSettings(bootstrap_servers=state.bootstrap)
            tag = uuid.uuid4().hex[:8]
            source, sink = f"stages-in-{tag}", f"stages-out-{tag}"
            for topic in (source, sink):
                TopicAdmin(settings).create(topic)
            producer = Producer(
                {"bootstrap.servers": state.bootstrap, "linger.ms": 5, "log_level": 3}
            )
            for i in range(records):
                value = {"model": "tiny", "inputs": {"x": [[i % 100, 1, 2, 3]]}}
                producer.produce(source, json.dumps(value).encode())
                if i % 10_000 == 0:
                    producer.poll(0)
            producer.flush()
            repo = Path(folder) / "repo"
            export_tiny_model(repo, version=1)
            env = dict(os.environ)
            if src is not None:
                env["PYTHONPATH"] = str(src)
            log = Path(folder) / "worker.log"
            worker = subprocess.Popen(
                [sys.executable, __file__, "--inner", "run", "-b", state.bootstrap,
                 "--input", source, "--output", sink, "--group-id", f"stages-{tag}",
                 "--model", "tiny", "--repo", str(repo)],
                env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"),
            )  # fmt: skip
            try:
                read = sum(1 for _ in consume(settings, sink, True, count=records, timeout=60))
            finally:
                worker.terminate()
                worker.wait(60)
            if read != records:
                raise SystemExit(f"the worker wrote {read} of {records} outputs; see {log}")
            lines = [line for line in log.read_text().splitlines() if line.startswith("STAGES ")]
            if not lines:
                raise SystemExit(f"the worker reported no figures:\n{log.read_text()[-2000:]}")
            return dict(json.loads(lines[-1].removeprefix("STAGES ")))
        finally:
            broker.stop()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--inner":
        instrument()
        from streaminfer.cli.main import main as cli

        sys.argv = ["streaminfer", *sys.argv[2:]]
        cli()
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", type=Path, action="append", default=[], help="another src")
    args = parser.parse_args()
    from streaminfer.processes import interrupted_by_sigterm

    trees: list[Path | None] = [None, *args.tree]
    runs: dict[str, list[dict[str, Any]]] = {str(t or "this tree"): [] for t in trees}
    for round_ in range(args.rounds):
        for tree in trees:
            with interrupted_by_sigterm():  # a killed run stops its broker and worker
                figures = one_round(tree, args.records)
            runs[str(tree or "this tree")].append(figures)
            print(f"round {round_ + 1}, {tree or 'this tree'}: {figures['records_per_s']:,.0f}/s")
    for name_of_tree, measured in runs.items():
        rates = [f["records_per_s"] for f in measured]
        spread = f"{min(rates):,.0f}-{max(rates):,.0f}"
        print(f"\n{name_of_tree}: {statistics.median(rates):,.0f} records/s ({spread})")
        print(f"  {'stage':28s} {'wall us/record':>15s} {'CPU us/record':>14s}")
        for name in [*STAGES.values(), PROCESS]:
            pairs = [f["us_per_record"][name] for f in measured if name in f["us_per_record"]]
            if pairs:
                wall = statistics.median(p[0] for p in pairs)
                cpu = statistics.median(p[1] for p in pairs)
                print(f"  {name:28s} {wall:15.2f} {cpu:14.2f}")


if __name__ == "__main__":
    main()
