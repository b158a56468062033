"""Instructions a tensor record costs the worker, counted by callgrind.

    .venv/bin/python benchmarks/record_instructions.py [--batches 8]

On a shared machine a wall-clock figure moves by a third between runs, which hides a
change worth 5 %; an instruction count does not move.  This drives a real ``Worker``'s
per-record work on micro-batches of 1,024 tensor records, without a broker: messages
made into records (the intake), the pipeline (parse, route, embedded predict with the
tiny tensor model, output records), the produce calls and the metrics; librdkafka's
network side is all that is left out.  It runs under valgrind's callgrind once with no
batch and once with ``--batches``, and prints the difference per record, so start-up
cancels out.  Instructions are not time (a cache miss costs more than an add): this
says which way a change moved the work, a timed benchmark what it is worth.  Needs
valgrind (Debian's package).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

RECORDS = 1024  # a tensor micro-batch as the worker takes it under load


def count(batches: int) -> int:
    """Instructions of this script run with ``batches`` batches under callgrind."""
    done = subprocess.run(
        [
            "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
            sys.executable, __file__, "--inner", str(batches),
        ],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict and set layouts each run
    )  # fmt: skip
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"callgrind printed no count:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def run_worker(batches: int) -> None:
    """The worker's per-record work for ``batches`` micro-batches (the measured part)."""
    from confluent_kafka import Consumer, Message, Producer

    from streaminfer.images import FetchPolicy, ImageFetcher
    from streaminfer.kafka.config import KafkaSettings
    from streaminfer.models.batcher import WORKER_BATCHING
    from streaminfer.models.export.tiny import export_tiny_model
    from streaminfer.models.registry import ModelRegistry
    from streaminfer.predictors import create_predictor
    from streaminfer.stream.settings import WorkerSettings
    from streaminfer.stream.worker import Worker, settle_collector

    nowhere = "127.0.0.1:9"  # no broker: produce only queues, and the queue is purged
    messages = [
        Message(
            topic="in",
            partition=0,
            offset=i,
            value=json.dumps({"model": "tiny", "inputs": {"x": [[i % 97, 1, 2, 3]]}}).encode(),
            timestamp=(1, 1_700_000_000_000),
        )
        for i in range(RECORDS)
    ]
    with tempfile.TemporaryDirectory() as folder:
        export_tiny_model(Path(folder), version=1)
        registry = ModelRegistry(Path(folder), default_batching=WORKER_BATCHING)  # as run's
        registry.reload()
        predictor = create_predictor("embedded", registry=registry)
        quiet = {"bootstrap.servers": nowhere, "log_level": 0}  # no "connection refused" lines
        producer = Producer(quiet)
        worker = Worker(
            WorkerSettings(input="in", output="out", model="tiny", repo=Path(folder)),
            KafkaSettings(bootstrap_servers=nowhere),
            predictor,
            ImageFetcher(FetchPolicy()),
            consumer=Consumer({**quiet, "group.id": "instructions"}),
            producer=producer,
        )
        worker.checkpoint._in_transaction = True  # as if begun: there is no coordinator
        abandoned = threading.Event()
        for batch in range(batches + 1):  # the first warms up: it compiles and allocates
            if batch == 1:
                settle_collector()  # as Worker.run does once started
            worker.intake._take(messages if batch else messages[:16])
            records = worker.intake.take_batch()
            finished = worker._process(records, abandoned)
            worker.checkpoint.write(finished.produced, [r.source for r in records])
            worker._account(finished)
            producer.purge()
        worker.pipeline.close()
        predictor.close()
        registry.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--inner", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner is not None:
        run_worker(args.inner)
        return
    per_record = (count(args.batches) - count(0)) / (args.batches * RECORDS)
    print(f"{per_record:,.0f} instructions a record ({args.batches} x {RECORDS} records)")


if __name__ == "__main__":
    main()
