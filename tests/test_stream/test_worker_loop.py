"""The worker's loop, one pass at a time, with clients that reach no broker."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future, wait
from pathlib import Path

from confluent_kafka import Consumer, Message, Producer

from streaminfer.images import FetchPolicy, ImageFetcher
from streaminfer.kafka.config import KafkaSettings
from streaminfer.models.export.tiny import export_tiny_model
from streaminfer.models.registry import ModelRegistry
from streaminfer.predictors import Predictor, create_predictor
from streaminfer.stream.checkpoint import Commit
from streaminfer.stream.settings import WorkerSettings
from streaminfer.stream.work import InputRecord, Work
from streaminfer.stream.worker import Worker, _Chunk, _Committed, _done_here, _Finished
from tests.servers import ServerProcess

NOWHERE = "127.0.0.1:9"  # nothing listens: the clients never connect, and need not


def _worker(predictor: Predictor, repo: Path) -> Worker:
    """A worker whose clients reach no broker."""
    quiet = {"bootstrap.servers": NOWHERE, "log_level": 0}
    return Worker(
        WorkerSettings(input="in", output="out", model="tiny", repo=repo),
        KafkaSettings(bootstrap_servers=NOWHERE),
        predictor,
        ImageFetcher(FetchPolicy()),
        consumer=Consumer({**quiet, "group.id": "loop"}),
        producer=Producer(quiet),
    )


def test_a_full_buffer_waits_for_the_commit_in_flight_instead_of_spinning(tmp_path: Path) -> None:
    """Every chunk finished, their outputs held back by a commit in flight, no room to
    poll: the pass waits for the commit (at most 50 ms), not returning at once to spin."""
    registry = ModelRegistry(tmp_path)
    predictor = create_predictor("embedded", registry=registry)
    worker = _worker(predictor, tmp_path)
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


def test_records_that_queue_behind_a_busy_lane_form_one_larger_chunk(tmp_path: Path) -> None:
    """The only lane busy: the forming batch keeps taking records past the chunk size, up
    to ``queued_size``, then holds; once the lane is free they go as one chunk."""
    export_tiny_model(tmp_path, version=1)
    registry = ModelRegistry(tmp_path)
    registry.reload()
    predictor = create_predictor("embedded", registry=registry)
    worker = _worker(predictor, tmp_path)
    value = json.dumps({"inputs": {"x": [[0, 1, 2, 3]]}}).encode()
    try:
        worker._lanes.waiting = 0.0  # one lane
        worker._sizer.size, worker._sizer.queued_size = 16, 64
        busy: Future[_Finished] = Future()
        worker._pending.append(_Chunk([], busy, threading.Event(), 0))
        worker.intake._take(
            [Message(topic="in", partition=0, offset=i, value=value) for i in range(20)]
        )
        worker._fill()
        assert worker.intake._full_since is None  # polled for more: room for 44
        more = range(20, 64)
        worker.intake._take([Message(topic="in", partition=0, offset=i, value=value) for i in more])
        worker._fill()
        assert worker.intake._full_since is not None  # 64 waiting: held
        assert len(worker._pending) == 1
        busy.set_result(_Finished([], [], 0.0, 0.0))
        worker._fill()
        assert [len(c.records) for c in worker._pending] == [0, 64]
        assert all(w.result is not None for w in worker._pending[1].future.result().works)
    finally:
        worker.consumer.close()
        worker.pipeline.close()
        predictor.close()
        registry.close()


def _threads_of_chunks(worker: Worker, lanes_waiting: float) -> list[str]:
    """Hand two chunks of tensor records to the pipeline with ``ChunkLanes`` at the given
    ratio of waiting to holding; the threads that processed each, once both finished."""
    names: list[str] = []
    process = worker.pipeline.process

    def recorded(records: list[InputRecord], abandoned: threading.Event) -> list[Work]:
        names.append(threading.current_thread().name)
        return process(records, abandoned)

    worker.pipeline.process = recorded  # type: ignore[method-assign]
    worker._lanes.waiting = lanes_waiting
    for chunk in range(2):
        value = json.dumps({"inputs": {"x": [[chunk, 1, 2, 3]]}}).encode()
        worker.intake._take([Message(topic="in", partition=0, offset=chunk, value=value)])
        worker._submit_forming()
        wait([c.future for c in worker._pending])
    for pending in worker._pending:
        assert pending.future.result().works[0].result is not None  # served
    return names


def test_one_lane_of_embedded_work_runs_on_the_loop_thread(tmp_path: Path) -> None:
    """A chunk thread would cost the records about a quarter more CPU; with more lanes, or
    a model server whose outage could hold the loop, chunks go to the threads."""
    export_tiny_model(tmp_path, version=1)
    registry = ModelRegistry(tmp_path)
    registry.reload()
    embedded = create_predictor("embedded", registry=registry)
    worker = _worker(embedded, tmp_path)
    try:
        loop = threading.current_thread().name
        assert _threads_of_chunks(worker, lanes_waiting=0.0) == [loop, loop]  # limit 1
        worker._pending.clear()
        assert all(name.startswith("chunk") for name in _threads_of_chunks(worker, 3.0))
    finally:
        worker.consumer.close()
        worker.pipeline.close()
        embedded.close()
        registry.close()


def test_a_remote_models_chunks_never_run_on_the_loop_thread(tmp_path: Path) -> None:
    export_tiny_model(tmp_path, version=1)
    with ServerProcess(tmp_path, log=tmp_path / "serve.log") as server:
        remote = create_predictor("kserve-grpc", server=server.grpc_target)
        worker = _worker(remote, tmp_path)
        try:
            names = _threads_of_chunks(worker, lanes_waiting=0.0)  # one lane, as embedded's
            assert len(names) == 2 and all(name.startswith("chunk") for name in names)
        finally:
            worker.consumer.close()
            worker.pipeline.close()
            remote.close()


def test_a_chunk_run_here_fails_as_a_chunk_threads_would() -> None:
    def broken(records: list[InputRecord], abandoned: threading.Event) -> _Finished:
        raise RuntimeError("a bug")

    future = _done_here(broken, [], threading.Event())
    assert future.done() and isinstance(future.exception(), RuntimeError)
