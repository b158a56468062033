"""The worker's loop, one pass at a time, with clients that reach no broker."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from pathlib import Path

from confluent_kafka import Consumer, Producer

from streaminfer.images import FetchPolicy, ImageFetcher
from streaminfer.kafka.config import KafkaSettings
from streaminfer.models.registry import ModelRegistry
from streaminfer.predictors import create_predictor
from streaminfer.stream.checkpoint import Commit
from streaminfer.stream.settings import WorkerSettings
from streaminfer.stream.worker import Worker, _Committed

NOWHERE = "127.0.0.1:9"  # nothing listens: the clients never connect, and need not


def test_a_full_buffer_waits_for_the_commit_in_flight_instead_of_spinning(tmp_path: Path) -> None:
    """Every chunk finished, their outputs held back by a commit in flight, no room to
    poll: the pass waits for the commit (at most 50 ms), not returning at once to spin."""
    quiet = {"bootstrap.servers": NOWHERE, "log_level": 0}
    registry = ModelRegistry(tmp_path)
    predictor = create_predictor("embedded", registry=registry)
    worker = Worker(
        WorkerSettings(input="in", output="out", model="none", repo=tmp_path),
        KafkaSettings(bootstrap_servers=NOWHERE),
        predictor,
        ImageFetcher(FetchPolicy()),
        consumer=Consumer({**quiet, "group.id": "loop"}),
        producer=Producer(quiet),
    )
    try:
        worker._pending_records = worker._budget.records  # a full buffer of finished work
        commit: Future[_Committed] = Future()
        worker._commit = commit
        done = _Committed(Commit.COMMITTED, written=0, interval_s=0.1, duration_s=0.01)
        finisher = threading.Timer(0.01, commit.set_result, args=(done,))
        started = time.perf_counter()
        finisher.start()
        worker._fill()
        waited = time.perf_counter() - started
        assert commit.done() or waited >= 0.05, f"returned after {waited * 1000:.2f} ms"
        finisher.join()
    finally:
        worker.consumer.close()
        worker.pipeline.close()
        predictor.close()
        registry.close()
