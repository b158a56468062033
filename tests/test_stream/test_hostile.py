"""Hostile records through real workers: every record ends in the output or the DLQ, in order.

The generator is structure-aware: it mutates the shapes the worker understands (JSON
records, URLs, image bytes, tensor bodies) rather than throwing only random bytes, so
the records reach past the first parser.  Valid records are interleaved and must come
out in their input order; the worker must never exit.
"""

from __future__ import annotations

import base64
import json
import random
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from streaminfer.kafka.admin import TopicAdmin
from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import UNREADABLE_HEADERS, consume, produce
from streaminfer.processes import ManagedProcess
from streaminfer.stream.outputs import HEADERS_DROPPED_HEADER, KEY_TRUNCATED_HEADER
from streaminfer.stream.records import LARGE_JSON_BYTES
from tests.servers import ServerProcess
from tests.support import wait_for
from tests.workers import decoded, embedded_worker, outputs

SEED = 20261130


def valid(i: int) -> bytes:
    return json.dumps({"id": f"ok-{i}", "model": "tiny", "inputs": {"x": [[i, 0, 0, 1]]}}).encode()


def plain(i: int) -> bytes:
    """A valid tensor record without an id: the worker stacks it with its neighbours."""
    return json.dumps({"model": "tiny", "inputs": {"x": [[i, 0, 0, 1]]}}).encode()


def hostile(rng: random.Random, jpeg: bytes) -> bytes:
    """One malformed record, of a shape picked at random."""
    deep = rng.randint(50, 200_000)
    shapes: list[Callable[[], bytes]] = [
        lambda: b'{"model":"tiny","inputs":{"x":' + b"[" * deep + b"]" * deep + b"}}",
        lambda: b'{"inputs":{"x":[[' + b"9" * rng.randint(4000, 9000) + b"]]}}",
        lambda: json.dumps(
            {"url": "http://" + "\u0130" * rng.randint(64, 300) + "/a.jpg"}
        ).encode(),
        lambda: b'{"url":"http://\\udc80.invalid/x.jpg","id":"\\ud800"}',
        lambda: ("http://[" + "f" * rng.randint(1, 60) + "]/x.jpg").encode(),
        lambda: b"file:///etc/passwd",
        lambda: b"/proc/self/environ",
        lambda: b"data:image/jpeg;base64," + base64.b64encode(jpeg[: rng.randint(3, 200)]),
        lambda: jpeg[: rng.randint(3, len(jpeg) - 1)],
        lambda: b"\xff\xd8\xff" + rng.randbytes(rng.randint(0, 2000)),
        lambda: json.dumps({"image_b64": base64.b64encode(rng.randbytes(64)).decode()}).encode(),
        lambda: json.dumps({"model": "tiny", "inputs": {"x": [[1, 2], [3]]}}).encode(),
        lambda: json.dumps({"model": "tiny", "inputs": {"x": [["a"] * 4]}}).encode(),
        lambda: json.dumps({"inputs": {"x": [[0] * rng.choice((0, 1, 3, 5, 9))]}}).encode(),
        lambda: json.dumps({"inputs": {"x": [[None, 1, 2, 3]]}}).encode(),
        lambda: json.dumps({"inputs": {"x": []}}).encode(),
        lambda: json.dumps({"inputs": {"x": [[0] * 4], "z": [[1]]}}).encode(),
        lambda: json.dumps({"inputs": {"x": [[[0] * 4]]}}).encode(),
        lambda: json.dumps({"model": "tiny", "inputs": {"x": [[0] * 4]}, "top_k": -3}).encode(),
        lambda: json.dumps({"model": "no-such-model", "inputs": {"x": [[0] * 4]}}).encode(),
        lambda: json.dumps(
            {"model": "tiny", "version": 10**30, "inputs": {"x": [[0] * 4]}}
        ).encode(),
        lambda: json.dumps([1, 2, 3]).encode(),
        lambda: rng.randbytes(rng.randint(1, 300)),
        lambda: b"",
    ]
    return rng.choice(shapes)()


def mixed_records(jpeg: bytes, count: int, topic: str) -> tuple[list[bytes], list[str]]:
    """``count`` hostile records with valid ones between them, for a topic of one
    partition; the valid ones' output ids in order (their own, or from their offset)."""
    rng = random.Random(SEED)
    values, ids = [], []
    for i in range(count):
        values.append(hostile(rng, jpeg))
        if i % 3 == 0:
            values.append(valid(i) if i % 2 else plain(i))
            ids.append(f"ok-{i}" if i % 2 else f"{topic}-0-{len(values) - 1}")
    return values, ids


def large_records_topic(settings: KafkaSettings, name: str, max_bytes: int) -> KafkaSettings:
    """Create topic ``name`` for records of up to ``max_bytes``; settings to produce them."""
    TopicAdmin(settings).create(name, config={"max.message.bytes": str(max_bytes)})
    properties = {**settings.properties, "message.max.bytes": str(max_bytes)}
    return settings.model_copy(update={"properties": properties})


def assert_all_accounted_for(
    settings: KafkaSettings, out: str, dlq: str, sent: int, ids: list[str]
) -> None:
    outs = outputs(settings, out, len(ids), timeout=120)
    docs = decoded(outs)
    assert [d["id"] for d in docs] == ids  # order of the valid ones kept
    letters = list(consume(settings, dlq, from_beginning=True, count=sent - len(ids), timeout=60))
    assert len(letters) == sent - len(ids)
    for letter in letters:
        headers = dict(letter.headers)
        assert headers["streaminfer.error.type"], letter
        message = headers["streaminfer.error.message"] or b""
        assert b"root:" not in message and b"PATH=" not in message  # no local file quoted


def zstd_batch(
    settings: KafkaSettings, topic: str, values: list[bytes], transaction: bool = False
) -> None:
    """``values`` in one zstd record batch, however large they are together; with
    ``transaction``, committed in a transaction (its marker takes the offset after them)."""
    # The long linger keeps them in one batch until the flush sends it.
    config = {"message.max.bytes": 10**9, "batch.size": 10**9, "linger.ms": 5000}
    if transaction:
        config["transactional.id"] = f"zstd-{topic}"
    producer = Producer(settings.client_config(config, **{"compression.type": "zstd"}))
    if transaction:
        producer.init_transactions(30)
        producer.begin_transaction()
    for value in values:
        producer.produce(topic, value)
    if transaction:
        producer.commit_transaction(60)
    assert producer.flush(60) == 0


@pytest.fixture
def server(stream_repo: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(stream_repo, log=tmp_path / "server.log") as server:
        yield server


def test_hostile_records_embedded(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable[..., ManagedProcess],
    stream_repo: Path,
    sample_jpegs: dict[str, bytes],
) -> None:
    inp, out = topic_factory("in"), topic_factory("out")
    values, ids = mixed_records(sample_jpegs["chelsea"], 90, inp)
    worker = embedded_worker(start_worker, stream_repo, inp, out, "--batch-size", "8")
    produce(kafka_settings, inp, values)
    assert_all_accounted_for(kafka_settings, out, f"{inp}.dlq", len(values), ids)
    assert worker.alive(), worker.log_tail(40)


def test_hostile_records_remote(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable[..., ManagedProcess],
    server: ServerProcess,
    sample_jpegs: dict[str, bytes],
) -> None:
    inp, out = topic_factory("in"), topic_factory("out")
    values, ids = mixed_records(sample_jpegs["coffee"], 60, inp)
    worker = start_worker(
        "--input", inp, "--output", out, "--mode", "kserve-grpc",
        "--server", server.target("kserve-grpc"), "--group-id", f"g-{inp}",
        "--model", "tiny", "--batch-size", "8",
    )  # fmt: skip
    produce(kafka_settings, inp, values)
    assert_all_accounted_for(kafka_settings, out, f"{inp}.dlq", len(values), ids)
    assert worker.alive(), worker.log_tail(40)


def test_an_oversized_output_is_dead_lettered_across_kills(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable[..., ManagedProcess],
    stream_repo: Path,
) -> None:
    inp = topic_factory("in")
    out = topic_factory("out")
    TopicAdmin(kafka_settings).create(f"{inp}.dlq", if_not_exists=True)
    # The output topic takes at most 20 kB: a 2,000-row request's output does not fit.
    small_out = f"{out}-small"
    TopicAdmin(kafka_settings).create(small_out, config={"max.message.bytes": "20000"})
    big = json.dumps({"id": "big", "model": "tiny", "inputs": {"x": [[1, 0, 0, 0]] * 2000}})
    before = [valid(i) for i in range(20)]
    after = [valid(i) for i in range(20, 40)]

    def start() -> ManagedProcess:
        return embedded_worker(start_worker, stream_repo, inp, small_out, "--batch-size", "2")

    worker = start()
    produce(kafka_settings, inp, before)
    wait_for(lambda: len(list(consume(kafka_settings, small_out, True, timeout=1))) >= 5)
    worker.send_signal(signal.SIGKILL)
    produce(kafka_settings, inp, [big.encode(), *after])
    worker = start()
    wait_for(
        lambda: any(
            r.value == big.encode() for r in consume(kafka_settings, f"{inp}.dlq", True, timeout=1)
        ),
        timeout=120,
        what="the big record in the DLQ",
    )
    worker.send_signal(signal.SIGKILL)
    start()
    docs = decoded(outputs(kafka_settings, small_out, 40, timeout=120))
    assert [d["id"] for d in docs] == [f"ok-{i}" for i in range(40)]  # none lost, none twice
    letters = list(consume(kafka_settings, f"{inp}.dlq", from_beginning=True, timeout=5))
    assert [dict(r.headers)["streaminfer.error.type"] for r in letters] == [b"too_large"]


def test_values_the_models_dtype_cannot_hold_are_dead_lettered_not_rounded(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable[..., ManagedProcess],
    stream_repo: Path,
) -> None:
    """A value past float32 (the tiny model's dtype) sits among records the worker stacks
    into one run: it goes to the DLQ with its reason, and its neighbours are served."""
    inp, out = topic_factory("in"), topic_factory("out")
    beyond = [1e39, -1e300, 2**200]
    values = [plain(0)]
    for value in beyond:
        values += [json.dumps({"model": "tiny", "inputs": {"x": [[0, value, 0, 0]]}}).encode()]
        values += [plain(len(values))]
    embedded_worker(start_worker, stream_repo, inp, out, "--batch-size", "16")
    produce(kafka_settings, inp, values)
    docs = decoded(outputs(kafka_settings, out, len(values) - len(beyond), timeout=120))
    assert [d["id"] for d in docs] == [f"{inp}-0-{i}" for i in range(0, len(values), 2)]
    assert all(None not in row for d in docs for row in d["outputs"]["y"])  # no inf or NaN
    letters = list(consume(kafka_settings, f"{inp}.dlq", True, count=len(beyond), timeout=60))
    assert [letter.value for letter in letters] == values[1::2]
    for letter in letters:
        headers = dict(letter.headers)
        assert headers["streaminfer.error.type"] == b"invalid_input"
        assert b"beyond float32's range" in headers["streaminfer.error.message"]


def test_a_record_of_millions_of_json_values_is_dead_lettered_unmade(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable[..., ManagedProcess],
    stream_repo: Path,
) -> None:
    """Topics may take large records: 9 MB of ``[],`` and 24 MB of ``{"a":1},`` are refused
    before their values are made (they took a worker's parse to 300 and 710 MB), their
    neighbours are served in order, and the worker goes on."""
    inp, out = topic_factory("in"), topic_factory("out")
    large = f"{inp}-large"
    producer_settings = large_records_topic(kafka_settings, large, 32 << 20)
    hostile = [b'{"model":"tiny","inputs":{"x":[' + item * 3_000_000 + b"0]}}"
               for item in (b"[],", b'{"a":1},')]  # fmt: skip
    values = [valid(0), hostile[0], valid(1), hostile[1], valid(2)]
    worker = embedded_worker(start_worker, stream_repo, large, out, "--batch-size", "8")
    produce(producer_settings, large, values)
    docs = decoded(outputs(kafka_settings, out, 3, timeout=120))
    assert [d["id"] for d in docs] == ["ok-0", "ok-1", "ok-2"]
    letters = list(
        consume(kafka_settings, f"{large}.dlq", from_beginning=True, count=2, timeout=60)
    )
    assert [dict(r.headers)["streaminfer.error.type"] for r in letters] == [b"too_many_values"] * 2
    for letter, value in zip(letters, hostile, strict=True):
        headers = dict(letter.headers)
        assert b"more than the 2,097,152" in headers["streaminfer.error.message"], headers
        assert headers["streaminfer.value.truncated"] == str(len(value)).encode()
    assert worker.alive(), worker.log_tail(40)


def test_a_json_records_size_changes_nothing_but_how_it_is_read(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable[..., ManagedProcess],
    stream_repo: Path,
) -> None:
    """Past 2 MiB, NaN and 1e999 were served (as nulls) and a 30-digit integer was
    dead-lettered, the reverse of what the same records did under 2 MiB."""
    inp, out = topic_factory("in"), topic_factory("out")
    large = f"{inp}-large"
    producer_settings = large_records_topic(kafka_settings, large, 8 << 20)

    def record(name: str, number: bytes, padding: bytes) -> bytes:
        return b'{"id": "%s", "model": "tiny", "inputs": {"x": [[%s, 0, 0, 1]]}%s}' % (
            name.encode(),
            number,
            padding,
        )

    values = [
        record(f"{number.decode()[:8]}-{len(padding)}", number, padding)
        for padding in (b"", b" " * LARGE_JSON_BYTES)
        for number in (b"NaN", b"1e999", b"1" + b"0" * 29)
    ]
    embedded_worker(start_worker, stream_repo, large, out)
    produce(producer_settings, large, values)
    docs = decoded(outputs(kafka_settings, out, 2, timeout=120))
    assert [d["id"] for d in docs] == ["10000000-0", f"10000000-{LARGE_JSON_BYTES}"]
    letters = list(consume(kafka_settings, f"{large}.dlq", True, count=4, timeout=60))
    assert [dict(r.headers)["streaminfer.error.type"] for r in letters] == [b"bad_json"] * 4


def test_a_record_whose_headers_alone_fill_a_topic_is_dead_lettered(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable[..., ManagedProcess],
    stream_repo: Path,
) -> None:
    """The input topic takes 4 MB records, the output and dead-letter topics 1 MB: a
    record of 1.5 MB of headers can be neither output nor dead-lettered whole, even with
    its value cut.  Its dead letter keeps the worker's headers and as many of its own as
    fit, says how many it dropped, and its neighbours are served in order."""
    inp, out = topic_factory("in"), topic_factory("out")
    large = f"{inp}-large"
    producer_settings = large_records_topic(kafka_settings, large, 4 << 20)
    heavy = [(f"h{i:04}", bytes(1000)) for i in range(1500)]
    worker = embedded_worker(start_worker, stream_repo, large, out, "--batch-size", "8")
    produce(producer_settings, large, [valid(0)])
    produce(producer_settings, large, [valid(1)], headers=heavy)
    produce(producer_settings, large, [valid(2)])
    docs = decoded(outputs(kafka_settings, out, 2, timeout=120))
    assert [d["id"] for d in docs] == ["ok-0", "ok-2"]
    letters = list(
        consume(kafka_settings, f"{large}.dlq", from_beginning=True, count=1, timeout=60)
    )
    assert len(letters) == 1
    headers = dict(letters[0].headers)
    assert headers["streaminfer.error.type"] == b"too_large", headers
    kept = [key for key, _ in letters[0].headers if key.startswith("h")]
    assert 0 < len(kept) < 1500 and kept == [key for key, _ in heavy[: len(kept)]]
    assert headers["streaminfer.headers.dropped"] == str(1500 - len(kept)).encode()
    assert worker.alive(), worker.log_tail(40)


def test_batches_the_consumer_cannot_decompress_are_dead_lettered_across_a_kill(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable[..., ManagedProcess],
    stream_repo: Path,
) -> None:
    """Compression bombs: a 150 MB record of zeros (5 KB on the broker), then a batch of
    120 1 MB records and a valid one, both zstd.  Each inflates past the consumer's
    ``receive.message.max.bytes`` (100 MB), so librdkafka refuses it at its first offset,
    again at every fetch: the partition stalled.  Every offset of both batches is
    dead-lettered once as unreadable, in order, and the records after them are served,
    with the worker killed once after the first dead letter was committed."""
    inp, out = topic_factory("in"), topic_factory("out")
    TopicAdmin(kafka_settings).create(f"{inp}.dlq", if_not_exists=True)
    produce(kafka_settings, inp, [valid(0)])
    zstd_batch(kafka_settings, inp, [bytes(150 << 20)])
    zstd_batch(kafka_settings, inp, [bytes(1 << 20)] * 120 + [valid(1)])
    produce(kafka_settings, inp, [valid(2), valid(3)])

    def start() -> ManagedProcess:
        return embedded_worker(start_worker, stream_repo, inp, out, "--batch-size", "8")

    worker = start()
    wait_for(
        lambda: any(consume(kafka_settings, f"{inp}.dlq", True, count=1, timeout=1)),
        timeout=120,
        what="a dead letter",
    )
    worker.send_signal(signal.SIGKILL)
    worker = start()
    docs = decoded(outputs(kafka_settings, out, 3, timeout=120))
    assert [d["id"] for d in docs] == ["ok-0", "ok-2", "ok-3"]
    letters = list(consume(kafka_settings, f"{inp}.dlq", from_beginning=True, timeout=5))
    assert [int(dict(r.headers)["streaminfer.source.offset"]) for r in letters] == list(
        range(1, 123)
    )  # none lost, none twice
    for letter in letters:
        headers = dict(letter.headers)
        assert headers["streaminfer.error.type"] == b"unreadable_record", headers
        assert b"Decompression" in headers["streaminfer.error.message"], headers
        assert letter.value is None
    assert b"offsets 1-1 " in dict(letters[0].headers)["streaminfer.error.message"]
    assert b"offsets 2-122 " in dict(letters[-1].headers)["streaminfer.error.message"]
    assert worker.alive(), worker.log_tail(40)


@pytest.mark.parametrize("transaction", [False, True], ids=["plain", "transactional"])
def test_an_unreadable_batch_at_the_partitions_end_is_dead_lettered_without_a_reset(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable[..., ManagedProcess],
    stream_repo: Path,
    transaction: bool,
) -> None:
    """The last batch of the partition unreadable: its end is found without seeking past
    the partition's (the consumer would reset its offset to the earliest and serve the
    first record again), and the record that comes later is served once.  Written in a
    transaction, the batch is followed by its commit marker, which a read_committed
    consumer skips without a record or an error: a probe that lands there must count as
    past the batch, not wait for the next record."""
    inp, out = topic_factory("in"), topic_factory("out")
    worker = embedded_worker(start_worker, stream_repo, inp, out, "--batch-size", "8")
    produce(kafka_settings, inp, [valid(0)])
    zstd_batch(kafka_settings, inp, [bytes(150 << 20), valid(1), valid(2)], transaction)
    letters = list(consume(kafka_settings, f"{inp}.dlq", from_beginning=True, count=3, timeout=60))
    assert [int(dict(r.headers)["streaminfer.source.offset"]) for r in letters] == [1, 2, 3]
    later = 5 if transaction else 4  # after the marker, if there is one
    produce(kafka_settings, inp, [valid(later)])
    docs = decoded(outputs(kafka_settings, out, 2, timeout=60))
    assert [d["id"] for d in docs] == ["ok-0", f"ok-{later}"]
    assert list(consume(kafka_settings, out, from_beginning=True, timeout=3))[2:] == []
    assert worker.alive(), worker.log_tail(40)


def test_an_unreadable_batch_is_dead_lettered_from_the_committed_offset_inside_it(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable[..., ManagedProcess],
    stream_repo: Path,
) -> None:
    """The group's committed offset inside an unreadable batch, as a worker killed while
    handing the batch out leaves it: librdkafka names the batch's first offset all the
    same, and the offsets before the committed one, dead-lettered already, must not be
    dead-lettered again."""
    inp, out = topic_factory("in"), topic_factory("out")
    TopicAdmin(kafka_settings).create(f"{inp}.dlq", if_not_exists=True)
    produce(kafka_settings, inp, [valid(0)])
    zstd_batch(kafka_settings, inp, [bytes(150 << 20), valid(1), valid(2), valid(3)])
    produce(kafka_settings, inp, [valid(5)])
    group = f"g-{inp}"
    committer = Consumer(kafka_settings.client_config(**{"group.id": group}))
    try:
        committer.commit(offsets=[TopicPartition(inp, 0, 3)], asynchronous=False)
    finally:
        committer.close()
    worker = embedded_worker(start_worker, stream_repo, inp, out, "--batch-size", "8", group=group)
    docs = decoded(outputs(kafka_settings, out, 1, timeout=60))
    assert [d["id"] for d in docs] == ["ok-5"]
    letters = list(consume(kafka_settings, f"{inp}.dlq", from_beginning=True, timeout=5))
    assert [int(dict(r.headers)["streaminfer.source.offset"]) for r in letters] == [3, 4]
    assert worker.alive(), worker.log_tail(40)


def test_records_whose_header_names_are_not_utf8_are_served(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable[..., ManagedProcess],
    stream_repo: Path,
) -> None:
    """kcat writes header names as given: one that is not UTF-8 makes the Python client's
    ``headers()`` fail for the record's every header, and (once the interpreter has
    specialized the call, after a few dozen records) leave its error to surface at some
    later call.  The records are served in order among their neighbours, their outputs
    saying their headers could not be read."""
    inp, out = topic_factory("in"), topic_factory("out")
    worker = embedded_worker(start_worker, stream_repo, inp, out, "--batch-size", "8")
    produce(kafka_settings, inp, [valid(i) for i in range(40)])
    kcat = ["kcat", "-b", kafka_settings.bootstrap_servers, "-t", inp, "-P"]
    odd = b"\n".join(valid(i) for i in range(40, 43))
    subprocess.run([*kcat, "-H", "trace=1", "-H", "\udcff\udcfename=v"], input=odd, check=True)
    produce(kafka_settings, inp, [valid(i) for i in range(43, 60)])
    records = outputs(kafka_settings, out, 60, timeout=120)
    assert [d["id"] for d in decoded(records)] == [f"ok-{i}" for i in range(60)]
    for record in records[40:43]:
        headers = dict(record.headers)
        assert b"not UTF-8" in headers[UNREADABLE_HEADERS], headers
        assert "trace" not in headers
    assert worker.alive(), worker.log_tail(40)
    # The kcat-like consume reads them too, with the same header in place of their own.
    inputs = list(consume(kafka_settings, inp, from_beginning=True, count=60, timeout=30))
    assert [[k for k, _ in r.headers] for r in inputs[40:43]] == [[UNREADABLE_HEADERS]] * 3


def envelope(rng: random.Random) -> tuple[bytes | None, list[tuple[str, bytes | None]]]:
    """A record's key and headers, of a shape picked at random: none, empty, odd text,
    many, large, or large enough together with a large key to fill a 1 MB topic."""
    names = [
        "",
        "streaminfer.error.type",
        "streaminfer.source.offset",
        "x" * 300,
        "\u0130\u2603",
        "h",
    ]
    headers: list[tuple[str, bytes | None]] = [
        (rng.choice(names), rng.choice([None, b"", rng.randbytes(rng.randint(1, 3000))]))
        for _ in range(rng.choice((0, 1, 3, 40, 900)))
    ]
    if rng.random() < 0.15:
        headers.append(("large", bytes(rng.randint(500_000, 1_200_000))))
    key = rng.choice([None, b"", rng.randbytes(rng.randint(1, 64))])
    if rng.random() < 0.15:
        key = rng.randbytes(rng.randint(500_000, 1_200_000))
    return key, headers


def first(headers: list[tuple[str, bytes | None]], name: str) -> bytes:
    """A header's first value, as many readers take it."""
    return next(value or b"" for key, value in headers if key == name)


def test_hostile_keys_and_headers_embedded(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable[..., ManagedProcess],
    stream_repo: Path,
    sample_jpegs: dict[str, bytes],
) -> None:
    """Records of every value shape above with keys and headers of random shapes, from a
    topic that takes 4 MB to output and dead-letter topics of 1 MB: each input offset
    ends exactly once in the output or the dead-letter topic, the outputs in input order,
    and the worker keeps running.  A record's own ``streaminfer.error.type`` and
    ``streaminfer.source.offset`` headers never come before the worker's in its dead letter."""
    inp, out = topic_factory("in"), topic_factory("out")
    large = f"{inp}-large"
    producer_settings = large_records_topic(kafka_settings, large, 4 << 20)
    rng = random.Random(SEED + 1)
    values, _ = mixed_records(sample_jpegs["chelsea"], 45, large)
    producer = Producer(producer_settings.client_config(**{"enable.idempotence": True}))
    for value in values:
        key, headers = envelope(rng)
        producer.produce(large, value, key, headers=headers)
        producer.poll(0)
    assert producer.flush(60) == 0
    worker = embedded_worker(start_worker, stream_repo, large, out, "--batch-size", "8")
    seen: list[int] = []

    def all_seen() -> bool:
        written = consume(kafka_settings, out, from_beginning=True, timeout=2)
        letters = consume(kafka_settings, f"{large}.dlq", from_beginning=True, timeout=2)
        seen[:] = [json.loads(r.value or b"")["source"]["offset"] for r in written]
        seen.extend(int(first(r.headers, "streaminfer.source.offset")) for r in letters)
        return len(seen) >= len(values)

    wait_for(all_seen, timeout=180, what="every record in the output or the DLQ")
    assert sorted(seen) == list(range(len(values)))  # each exactly once
    written = consume(kafka_settings, out, from_beginning=True, timeout=2)
    offsets = [json.loads(r.value or b"")["source"]["offset"] for r in written]
    assert offsets == sorted(offsets)
    letters = list(consume(kafka_settings, f"{large}.dlq", from_beginning=True, timeout=2))
    saying_cut = {HEADERS_DROPPED_HEADER, KEY_TRUNCATED_HEADER}
    cut = [r for r in letters if {k for k, _ in r.headers} & saying_cut]
    assert cut, "no record's key and headers filled the dead-letter topic: no test of that"
    spoofed = [r for r in letters if any(k == "input.streaminfer.error.type" for k, _ in r.headers)]
    assert spoofed, "no dead-lettered record brought its own reason: no test of that"
    for letter in letters:
        names = [k for k, _ in letter.headers]
        assert (
            names.count("streaminfer.error.type") == names.count("streaminfer.source.offset") == 1
        )
    assert worker.alive(), worker.log_tail(40)
