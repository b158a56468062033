"""The worker end to end: a real broker, real image host, worker processes, read_committed."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
from confluent_kafka import Producer

from streaminfer.kafka.broker import LocalBroker
from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import produce
from streaminfer.models.export.tiny import tiny_reference
from streaminfer.net import free_port
from streaminfer.processes import STREAMINFER, ManagedProcess
from tests.support import run_cli, wait_for
from tests.workers import (
    decoded,
    embedded_worker,
    high_watermark,
    outputs,
    produce_keyed,
    tiny_record,
)

CATS = {281, 282, 285}
ESPRESSO = 967


def test_embedded_predictions_and_output_format(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    stream_repo: Path,
    image_host: str,
    sample_jpegs: dict[str, bytes],
) -> None:
    inp, out = topic_factory("in"), topic_factory("out")
    embedded_worker(start_worker, stream_repo, inp, out)
    produce(
        kafka_settings,
        inp,
        [f"{image_host}/chelsea.jpg".encode()],
        key=b"cat-key",
        headers=[("origin", b"test")],
    )
    produce(
        kafka_settings,
        inp,
        [
            json.dumps({"url": f"{image_host}/coffee.jpg", "id": "coffee-1", "top_k": 2}).encode(),
            json.dumps({"image_b64": base64.b64encode(sample_jpegs["chelsea"]).decode()}).encode(),
            sample_jpegs["coffee"],
        ],
    )
    records = outputs(kafka_settings, out, 4)
    docs = decoded(records)

    cat = docs[0]
    assert records[0].key == b"cat-key"
    headers = dict(records[0].headers)
    assert headers["origin"] == b"test" and headers["streaminfer.trace.id"]
    assert cat["predictions"][0]["class_id"] in CATS
    assert len(cat["predictions"]) == 5 and cat["mode"] == "embedded"
    assert cat["model"] == {"name": "efficientnet-lite0", "version": 1}
    assert cat["source"]["topic"] == inp and cat["source"]["offset"] == 0
    assert set(cat["timings_ms"]) >= {"fetch", "preprocess", "inference", "total"}
    assert all(round(ms, 3) == ms for ms in cat["timings_ms"].values())  # to the µs
    scores = [p["score"] for p in cat["predictions"]]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1

    assert docs[1]["id"] == "coffee-1" and len(docs[1]["predictions"]) == 2
    assert docs[1]["predictions"][0]["class_id"] == ESPRESSO
    assert docs[1]["predictions"][0]["label"] == "espresso"
    assert docs[2]["predictions"][0]["class_id"] in CATS
    assert docs[3]["predictions"][0]["class_id"] == ESPRESSO


def test_bad_records_are_dead_lettered_and_good_ones_keep_order(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    stream_repo: Path,
    image_host: str,
    sample_jpegs: dict[str, bytes],
    tmp_path: Path,
) -> None:
    inp, out = topic_factory("in"), topic_factory("out")
    dlq = topic_factory("dlq")
    oversized = tmp_path / "big.jpg"
    oversized.write_bytes(b"\xff\xd8\xff" + b"\0" * (21 * 1024 * 1024))
    good = f"{image_host}/coffee.jpg".encode()
    tiny_bad_shape = json.dumps({"model": "tiny", "inputs": {"x": [[1, 2, 3]]}}).encode()
    bad = {
        b"{not json": "bad_json",
        b"http://127.0.0.1:1/unreachable.jpg": "fetch_failed",
        f"{image_host}/missing.jpg".encode(): "not_found",
        f"{image_host}/page.html".encode(): "not_an_image",
        sample_jpegs["chelsea"][: len(sample_jpegs["chelsea"]) // 3]: "corrupt_image",
        f"file://{oversized}".encode(): "too_large",
        b"/etc/passwd": "forbidden",  # outside the --allow-files folder
        b"http://169.254.169.254/latest/meta-data": "forbidden_address",
        json.dumps({"url": f"{image_host}/coffee.jpg", "model": "nope"}).encode(): "unknown_model",
        tiny_bad_shape: "invalid_input",
        b"   ": "empty_record",
    }
    values = []
    for value in bad:
        values += [good, value]
    values.append(good)
    worker = embedded_worker(
        start_worker, stream_repo, inp, out, "--dlq", dlq, "--allow-files", str(tmp_path)
    )
    produce(kafka_settings, inp, values)

    dead = outputs(kafka_settings, dlq, len(bad))
    reasons = {}
    for record in dead:
        headers = dict(record.headers)
        assert headers["streaminfer.source.topic"] == inp.encode()
        assert headers["streaminfer.error.message"]
        offset = int(headers["streaminfer.source.offset"])
        assert record.value == values[offset]
        reasons[record.value] = (headers["streaminfer.error.type"] or b"").decode()
    assert reasons == bad

    good_outputs = decoded(outputs(kafka_settings, out, len(bad) + 1))
    offsets = [d["source"]["offset"] for d in good_outputs]
    assert offsets == sorted(offsets) == list(range(0, len(values), 2))
    assert all(d["predictions"][0]["class_id"] == ESPRESSO for d in good_outputs)
    assert worker.alive(), worker.log()


def test_tensor_records(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    stream_repo: Path,
) -> None:
    inp, out = topic_factory("in"), topic_factory("out")
    embedded_worker(start_worker, stream_repo, inp, out, "--model", "tiny")
    rows = [[1.0, 2.0, 3.0, 4.0], [0.5, 0.0, -1.0, 2.0]]
    produce(
        kafka_settings,
        inp,
        [
            json.dumps({"inputs": {"x": rows}}).encode(),
            json.dumps({"instances": [{"x": rows[0]}, {"x": rows[1]}]}).encode(),
        ],
    )
    for doc in decoded(outputs(kafka_settings, out, 2)):
        assert doc["model"] == {"name": "tiny", "version": 1}
        np.testing.assert_allclose(doc["outputs"]["y"], tiny_reference(np.array(rows)), rtol=1e-6)


def _tensor_inputs(count: int) -> list[tuple[bytes, bytes]]:
    return [(f"k{i % 97}".encode(), tiny_record(i)) for i in range(count)]


@contextlib.contextmanager
def _frozen(broker: LocalBroker) -> Iterator[None]:
    """The broker stopped (SIGSTOP) for the block: it keeps its connections, answers nothing."""
    state = broker.state()
    assert state is not None and state.pid is not None
    os.kill(state.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(state.pid, signal.SIGCONT)


def _assert_exactly_once_in_order(docs: list[dict], count: int) -> None:
    ids = [int(d["id"]) for d in docs]
    assert sorted(ids) == list(range(count)), "every input exactly once"
    by_partition: dict[int, list[int]] = defaultdict(list)
    for doc in docs:
        by_partition[doc["source"]["partition"]].append(doc["source"]["offset"])
        assert (
            doc["outputs"]["y"][0][0] == tiny_reference(np.array([[int(doc["id"]), 0, 0, 0]]))[0][0]
        )
    for offsets in by_partition.values():
        assert offsets == sorted(offsets), "input order kept within each partition"


def test_sigkill_mid_run_loses_nothing_and_duplicates_nothing(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    stream_repo: Path,
) -> None:
    count = 4000
    inp, out = topic_factory("in", partitions=3), topic_factory("out", partitions=3)
    produce_keyed(kafka_settings, inp, _tensor_inputs(count))
    args = ("--model", "tiny", "--batch-size", "8", "--max-in-flight", "2")
    for kill_at in (count // 5, count // 2, 3 * count // 4):
        worker = embedded_worker(start_worker, stream_repo, inp, out, *args)
        wait_for(
            lambda w=worker, n=kill_at: (
                high_watermark(kafka_settings, out, 3) >= n or not w.alive()
            ),
            90,
            f"{kill_at} outputs before the kill",
        )
        assert worker.alive(), worker.log()
        worker.send_signal(signal.SIGKILL)
        worker.process.wait()
    embedded_worker(start_worker, stream_repo, inp, out, *args)
    docs = decoded(outputs(kafka_settings, out, count, timeout=90))
    _assert_exactly_once_in_order(docs, count)


def _serves(worker: ManagedProcess) -> bool:
    """Whether the worker's last rebalance left it serving partitions, by its log."""
    serving = re.findall(r"; serving (.*)$", worker.log(), re.M)
    return bool(serving) and serving[-1] != "nothing"


def test_group_members_share_partitions_and_survive_a_kill(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    stream_repo: Path,
) -> None:
    count = 3000
    inp, out = topic_factory("in", partitions=6), topic_factory("out", partitions=6)
    args = ("--model", "tiny", "--batch-size", "8", "--max-in-flight", "2")
    workers = [embedded_worker(start_worker, stream_repo, inp, out, *args) for _ in range(3)]
    for worker in workers:
        wait_for(lambda w=worker: _serves(w), 60, "every worker to own partitions")
    produce_keyed(kafka_settings, inp, _tensor_inputs(count))
    wait_for(lambda: high_watermark(kafka_settings, out, 6) >= count // 3, 60, "a third done")
    workers[0].send_signal(signal.SIGKILL)
    docs = decoded(outputs(kafka_settings, out, count, timeout=90))
    _assert_exactly_once_in_order(docs, count)
    served_by = {d["source"]["partition"] for d in docs}
    assert served_by == set(range(6))


def test_an_incremental_rebalance_keeps_the_partitions_that_stay_served_and_ready(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    stream_repo: Path,
) -> None:
    """A new group rebalances incrementally (cooperative-sticky), which revokes only what
    moves: the first worker kept two partitions but took itself for one with none, and
    reported not ready."""
    count = 3000
    inp, out = topic_factory("in", partitions=4), topic_factory("out", partitions=4)
    port = free_port()
    args = ["--model", "tiny", "--batch-size", "8", "--max-in-flight", "2"]
    first = embedded_worker(start_worker, stream_repo, inp, out, *args,
                            "--metrics-port", str(port))  # fmt: skip
    ready = f"http://127.0.0.1:{port}/readyz"
    wait_for(lambda: _get(ready) == 200, 60, "the first worker to be ready")
    assert "0 members; partition assignment cooperative-sticky" in first.log()
    produce_keyed(kafka_settings, inp, _tensor_inputs(count))
    second = embedded_worker(start_worker, stream_repo, inp, out, *args)
    wait_for(lambda: "revoked" in first.log(), 60, "the first worker to give partitions up")
    wait_for(lambda: _serves(second), 60, "the second to take them")
    assert "1 members using cooperative-sticky; partition assignment cooperative-sticky" in (
        second.log()
    )
    assert _get(ready) == 200, first.log_tail()
    docs = decoded(outputs(kafka_settings, out, count, timeout=90))
    _assert_exactly_once_in_order(docs, count)
    assert {d["source"]["partition"] for d in docs} == set(range(4))


def test_a_worker_joining_an_eager_group_rebalances_as_its_members_do(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    stream_repo: Path,
) -> None:
    """A group cannot mix eager and incremental members: one started by an older
    streaminfer (eager) is joined eagerly, not refused with INCONSISTENT_GROUP_PROTOCOL."""
    count = 2000
    inp, out = topic_factory("in", partitions=4), topic_factory("out", partitions=4)
    args = ["--model", "tiny", "--batch-size", "8"]
    first = embedded_worker(start_worker, stream_repo, inp, out, *args,
                            "-X", "partition.assignment.strategy=range")  # fmt: skip
    wait_for(lambda: _serves(first), 60, "the first worker's partitions")
    produce_keyed(kafka_settings, inp, _tensor_inputs(count))
    second = embedded_worker(start_worker, stream_repo, inp, out, *args)
    wait_for(lambda: _serves(second), 60, "the second to take some")
    assert "1 members using range; partition assignment range,roundrobin" in second.log()
    docs = decoded(outputs(kafka_settings, out, count, timeout=90))
    _assert_exactly_once_in_order(docs, count)


def test_a_worker_without_the_flag_joins_a_kip_848_group_as_a_classic_member(
    bootstrap: str,
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    stream_repo: Path,
    tmp_path: Path,
) -> None:
    """A group of KIP-848's protocol (group.protocol=consumer) is joined as librdkafka
    joins it by default; Kafka 4 brokers take classic members into it."""
    count = 400
    inp, out = topic_factory("in", partitions=4), topic_factory("out", partitions=4)
    args = ["--input", inp, "--output", out, "--mode", "embedded", "--repo", str(stream_repo),
            "--group-id", f"g-{inp}", "--model", "tiny", "--batch-size", "8"]  # fmt: skip
    # Not start_worker's: the session timeout it sets is the broker's under this protocol.
    first = ManagedProcess(
        "kip-848 member",
        [*STREAMINFER, "run", "-b", bootstrap, "-X", "group.protocol=consumer", *args],
        tmp_path / "kip-848-member.log",
    )
    try:
        wait_for(lambda: _serves(first), 60, "the first worker's partitions")
        second = start_worker(*args)
        wait_for(lambda: _serves(second), 60, "the second to take some")
        assert "uses KIP-848's group protocol" in second.log()
        produce_keyed(kafka_settings, inp, _tensor_inputs(count))
        docs = decoded(outputs(kafka_settings, out, count, timeout=90))
        _assert_exactly_once_in_order(docs, count)
        assert {d["source"]["partition"] for d in docs} == set(range(4))
    finally:
        first.stop(60)


def test_sigterm_finishes_and_exits_zero(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    stream_repo: Path,
) -> None:
    inp, out = topic_factory("in"), topic_factory("out")
    worker = embedded_worker(start_worker, stream_repo, inp, out, "--model", "tiny")
    produce_keyed(kafka_settings, inp, _tensor_inputs(200))
    outputs(kafka_settings, out, 200)
    worker.send_signal(signal.SIGTERM)
    assert worker.process.wait(60) == 0, worker.log()


def test_seed_flow_with_the_cli(
    bootstrap: str,
    kafka_settings: KafkaSettings,
    start_worker: Callable,
    stream_repo: Path,
    image_host: str,
) -> None:
    """The original demo's flow: bare URLs into ImageInputTopic, predictions out."""
    assert (
        run_cli(
            "topics", "create", "ImageInputTopic", "-b", bootstrap, "--if-not-exists"
        ).returncode
        == 0
    )
    start_worker("--mode", "embedded", "--repo", str(stream_repo), "--allow-network", "127.0.0.0/8")
    urls = f"{image_host}/chelsea.jpg\n{image_host}/coffee.jpg\n".encode()
    produced = run_cli("produce", "ImageInputTopic", "-b", bootstrap, input=urls)
    assert produced.returncode == 0, produced.stderr
    consumed = run_cli(
        "consume",
        "ImageOutputTopic",
        "--from-beginning",
        "--count",
        "2",
        "--timeout",
        "60",
        "--format",
        "json",
        "-b",
        bootstrap,
    )
    assert consumed.returncode == 0, consumed.stderr
    docs = [json.loads(json.loads(line)["value"]) for line in consumed.stdout.splitlines()]
    assert [d["predictions"][0]["class_id"] in CATS | {ESPRESSO} for d in docs] == [True, True]
    assert docs[0]["predictions"][0]["class_id"] in CATS


def test_bad_configuration_is_one_line(bootstrap: str, tmp_path: Path) -> None:
    result = run_cli("run", "-b", bootstrap, "--mode", "embedded")
    assert result.returncode != 0 and "needs --repo" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli("run", "-b", bootstrap, "--input", "no-such-topic", "--repo", str(tmp_path))
    assert result.returncode != 0 and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_at_least_once_and_metrics(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    stream_repo: Path,
) -> None:
    inp, out = topic_factory("in"), topic_factory("out")
    port = free_port()
    embedded_worker(
        start_worker,
        stream_repo,
        inp,
        out,
        "--model",
        "tiny",
        "--processing-guarantee",
        "at-least-once",
        "--metrics-port",
        str(port),
    )
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _get(base + "/readyz") == 200, 60, "the worker to be ready")
    assert _get(base + "/healthz") == 200
    produce_keyed(kafka_settings, inp, _tensor_inputs(100))
    _assert_exactly_once_in_order(decoded(outputs(kafka_settings, out, 100)), 100)
    metrics = httpx.get(base + "/metrics").text
    assert (
        'streaminfer_records_out_total{mode="embedded",model="tiny",route="",version="1"} 100.0'
        in metrics
    )
    assert "streaminfer_records_in_total 100.0" in metrics
    assert "streaminfer_end_to_end_seconds_count 100.0" in metrics  # every input's age
    (age_sum,) = re.findall(r"^streaminfer_end_to_end_seconds_sum (\S+)$", metrics, re.M)
    assert 0 < float(age_sum) < 100 * 60

    def sample(name: str) -> float:
        text = httpx.get(base + "/metrics").text
        (value,) = re.findall(rf"^{name} (\S+)$", text, re.M)
        return float(value)

    count = "streaminfer_end_to_end_committed_seconds_count"
    wait_for(lambda: sample(count) == 100.0, 30, "every input's commit to be observed")
    assert sample("streaminfer_commit_seconds_count") >= 1


def test_a_saturated_worker_commits_less_often(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    stream_repo: Path,
) -> None:
    """A backlog (a queue that lasts three interval checks) stretches commits to 5 intervals."""
    inp, out = topic_factory("in"), topic_factory("out")
    port, interval_s, count = free_port(), 0.02, 30_000
    embedded_worker(start_worker, stream_repo, inp, out, "--model", "tiny",
                    "--commit-interval-ms", str(int(interval_s * 1000)),
                    "--metrics-port", str(port))  # fmt: skip
    wait_for(lambda: _get(f"http://127.0.0.1:{port}/readyz") == 200, 60, "the worker to be ready")
    started = time.monotonic()
    produce(kafka_settings, inp, [b'{"model":"tiny","inputs":{"x":[[1,2,3,4]]}}'] * count)
    outputs(kafka_settings, out, count, timeout=120)
    elapsed = time.monotonic() - started
    commits = high_watermark(kafka_settings, out, 1) - count  # one marker per transaction
    # Every interval would be about elapsed / interval_s commits, over twice this bound.
    assert 1 <= commits <= elapsed / (5 * interval_s) + 5, (commits, elapsed)


def test_a_drained_worker_commits_at_once_then_at_most_every_quarter_interval(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    stream_repo: Path,
) -> None:
    """A lone record is visible long before the interval; records that follow it within a
    quarter interval wait for the quarter, together, instead of a transaction each."""
    inp, out = topic_factory("in"), topic_factory("out")
    port, interval_s = free_port(), 20.0
    record = b'{"model":"tiny","inputs":{"x":[[1,2,3,4]]}}'
    embedded_worker(start_worker, stream_repo, inp, out, "--model", "tiny",
                    "--commit-interval-ms", str(int(interval_s * 1000)),
                    "--metrics-port", str(port))  # fmt: skip
    wait_for(lambda: _get(f"http://127.0.0.1:{port}/readyz") == 200, 60, "the worker to be ready")
    produce(kafka_settings, inp, [record])
    outputs(kafka_settings, out, 1, timeout=interval_s * 0.75)
    first_seen = time.monotonic()
    producer = Producer(kafka_settings.client_config())
    for _ in range(10):  # one at a time: each is a drain of its own
        producer.produce(inp, record)
        producer.flush(10)
    outputs(kafka_settings, out, 11, timeout=interval_s)
    # The quarter (5 s) counts from the first commit's start, a little before it was seen.
    assert time.monotonic() - first_seen >= interval_s / 4 / 2
    assert high_watermark(kafka_settings, out, 1) - 11 == 2  # one marker per transaction


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def test_outputs_resume_in_order_after_the_broker_stalls_a_commit(
    kafka_settings: KafkaSettings,
    kafka_broker: LocalBroker,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    stream_repo: Path,
) -> None:
    """The broker stops answering (SIGSTOP) while records stream in: nothing lost, nothing twice."""
    inp, out = topic_factory("in"), topic_factory("out")
    worker = embedded_worker(start_worker, stream_repo, inp, out, "--model", "tiny")
    values = [value for _, value in _tensor_inputs(300)]
    produce(kafka_settings, inp, values[:150])
    wait_for(lambda: high_watermark(kafka_settings, out, 1) > 20, what="outputs flowing")
    with _frozen(kafka_broker):
        time.sleep(2)  # the stall itself is what is tested: the broker is frozen this long
    produce(kafka_settings, inp, values[150:])
    ids = [d["id"] for d in decoded(outputs(kafka_settings, out, 300, timeout=120))]
    assert ids == [str(i) for i in range(300)]
    assert worker.alive()


def test_a_commit_stuck_past_its_limit_ends_the_worker_to_be_restarted(
    kafka_settings: KafkaSettings,
    kafka_broker: LocalBroker,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    stream_repo: Path,
) -> None:
    """librdkafka's ``send_offsets_to_transaction`` can wait for good for a group
    coordinator that has left the cluster (confluentinc/librdkafka#5511): a worker's
    outputs stopped with nothing logged.  A commit that outlives ``commit_stuck_s`` now
    ends the worker (exit 75, saying why), and one started after it writes every output
    once, in order.  The frozen broker stands in for the stuck call: the commit waits out
    librdkafka's 30 s, past the 3 s allowed here.  Records keep coming until the broker
    is frozen, so that a commit is due then."""
    inp, out = topic_factory("in"), topic_factory("out")
    limited = ("env", "STREAMINFER_COMMIT_STUCK_S=3")
    worker = embedded_worker(start_worker, stream_repo, inp, out, "--model", "tiny", prefix=limited)
    with _steady_records(kafka_settings, inp) as sent:
        wait_for(lambda: high_watermark(kafka_settings, out, 1) > 20, what="outputs flowing")
        with _frozen(kafka_broker):
            sent.stop()
            worker.process.wait(30)
    assert worker.process.returncode == 75, worker.log()
    assert "has not returned in 3 s (commit_stuck_s)" in worker.log()
    embedded_worker(start_worker, stream_repo, inp, out, "--model", "tiny")
    docs = decoded(outputs(kafka_settings, out, sent.count, timeout=120))
    assert [d["id"] for d in docs] == [str(i) for i in range(sent.count)]


class _SteadyRecords:
    """Tiny-model records ``0, 1, ...``, a few hundred a second, from a thread."""

    def __init__(self, settings: KafkaSettings, topic: str) -> None:
        self.count = 0
        self._producer = Producer(settings.client_config())
        self._topic = topic
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._send, daemon=True)
        self._thread.start()

    def _send(self) -> None:
        while not self._stopped.is_set():
            for _ in range(10):
                self._producer.produce(self._topic, tiny_record(self.count))
                self.count += 1
            self._producer.poll(0.02)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def flush(self) -> None:
        self.stop()
        assert self._producer.flush(60) == 0, "every record delivered"


@contextlib.contextmanager
def _steady_records(settings: KafkaSettings, topic: str) -> Iterator[_SteadyRecords]:
    """Records sent steadily for the block, and every one delivered after it."""
    sender = _SteadyRecords(settings, topic)
    try:
        yield sender
    finally:
        sender.flush()


def test_a_stop_with_the_broker_frozen_ends_within_the_shutdown_timeout(
    kafka_settings: KafkaSettings,
    kafka_broker: LocalBroker,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    stream_repo: Path,
) -> None:
    """SIGTERM while the broker answers nothing: the worker exits at --shutdown-timeout,
    and a worker started after it still writes every output once, in order."""
    inp, out = topic_factory("in"), topic_factory("out")
    timeout_s = 3.0
    args = ("--model", "tiny", "--shutdown-timeout", str(timeout_s))
    worker = embedded_worker(start_worker, stream_repo, inp, out, *args)
    produce(kafka_settings, inp, [value for _, value in _tensor_inputs(3000)])
    wait_for(lambda: high_watermark(kafka_settings, out, 1) > 20, what="outputs flowing")
    with _frozen(kafka_broker):
        worker.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        worker.process.wait(timeout_s + 30)
        took = time.monotonic() - stopping
    # It gave up at the timeout (not after the commit's own 30 s), saying so.
    assert took < timeout_s + 2, worker.log()
    assert worker.process.returncode == 1
    assert "longer than --shutdown-timeout" in worker.log()
    embedded_worker(start_worker, stream_repo, inp, out, *args)
    ids = [d["id"] for d in decoded(outputs(kafka_settings, out, 3000, timeout=120))]
    assert ids == [str(i) for i in range(3000)]
