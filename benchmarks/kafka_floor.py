"""The fastest a Python loop on confluent-kafka moves tensor records: no parse, no model.

    .venv/bin/python benchmarks/kafka_floor.py [--records 400000] [--rounds 3]
        [-X consumer.property=value ...]

Starts a local broker, writes ``--records`` tensor records (the bench's tiny model's)
up front, then, in this process, with the worker's own client settings
(``streaminfer.stream.clients``), drains them three ways:

- **consume**: poll the records in batches, nothing else;
- **copy**: poll, and produce each value unchanged to an output topic;
- **copy, exactly-once**: the same inside transactions committed every 100 ms with the
  consumed offsets (``send_offsets_to_transaction``), as the worker commits.

``-X`` sets a librdkafka property of the consumer, e.g. larger fetches and a deeper
prefetch queue (``queued.min.messages``): by default the consumer stops fetching at
100,000 queued records and waits for up to ``fetch.queue.backoff.ms`` before fetching
again, which caps a loop that drains faster than that.

Each figure is records/s and this process's CPU per record (every thread's, librdkafka's
too).  Whatever a worker does besides (parse, predict, an output document) comes on top
of "copy, exactly-once", so its rate bounds a Python worker on this client from above,
and its ratio to the bench's in-process ceiling is the most such a worker could reach.
The ways take turns for ``--rounds`` rounds; each figure is the median with its min-max.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Literal

from streaminfer.bench.workloads import TensorWorkload
from streaminfer.kafka.admin import TopicAdmin
from streaminfer.kafka.broker import LocalBroker
from streaminfer.kafka.config import KafkaSettings, parse_property
from streaminfer.kafka.records import produce, produce_waiting
from streaminfer.net import free_port
from streaminfer.processes import interrupted_by_sigterm
from streaminfer.stream import clients
from streaminfer.stream.settings import WorkerSettings

POLL_BATCH = 1024  # records a consume call may return
COMMIT_EVERY_S = 0.1  # the worker's default --commit-interval-ms
WAYS = ("consume", "copy", "copy, exactly-once")


def drain(
    kafka: KafkaSettings, source: str, records: int, way: str, consumer_properties: dict[str, str]
) -> tuple[float, float]:
    """Records/s and CPU µs a record of one way over every record of ``source``."""
    tag = uuid.uuid4().hex[:8]
    sink = f"floor-out-{tag}"
    TopicAdmin(kafka).create(sink)
    guarantee: Literal["exactly-once", "at-least-once"] = (
        "exactly-once" if way == "copy, exactly-once" else "at-least-once"
    )
    settings = WorkerSettings(
        input=source,
        output=sink,
        group_id=f"floor-{tag}",
        processing_guarantee=guarantee,
        mode="kserve-grpc",  # no model: a mode that needs no repository
        server="127.0.0.1:1",
    )
    consumer = clients.consumer(
        settings, kafka.model_copy(update={"properties": consumer_properties})
    )
    producer = clients.producer(settings, kafka)
    transactional = settings.exactly_once
    if transactional:
        producer.init_transactions()
        producer.begin_transaction()
    consumer.subscribe([source])
    first = None
    while first is None:  # the group join and the first fetch are not timed
        first = consumer.poll(1.0)
    started, cpu_started = time.perf_counter(), time.process_time()
    done, committed_at, messages = 0, started, [first]
    while True:
        if way != "consume":
            for message in messages:
                # A consumed message's headers are a list (or None), never the dict that
                # the binding's type also allows; a cast would cost the loop a call.
                headers = message.headers()
                produce_waiting(producer, sink, message.value(), message.key(), headers)  # type: ignore[arg-type]
            producer.poll(0)
        done += len(messages)
        now = time.perf_counter()
        if transactional and (now - committed_at >= COMMIT_EVERY_S or done >= records):
            offsets = consumer.position(consumer.assignment())
            producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata())
            producer.commit_transaction()
            producer.begin_transaction()
            committed_at = now
        if done >= records:
            break
        messages = consumer.consume(POLL_BATCH, timeout=1.0)
    producer.flush(30)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    if transactional:
        producer.abort_transaction()  # the empty one begun last
    consumer.close()
    return done / elapsed, cpu / done * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=400_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-X", dest="properties", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    consumer_properties = dict(parse_property(pair) for pair in args.properties)
    with tempfile.TemporaryDirectory() as folder:
        broker = LocalBroker(Path(folder) / "kafka")
        state = broker.start(port=free_port())
        try:
            kafka = KafkaSettings(bootstrap_servers=state.bootstrap)
            source = "floor-in"
            TopicAdmin(kafka).create(source)
            workload = TensorWorkload()
            produce(kafka, source, [workload.record(i) for i in range(args.records)])
            figures: dict[str, list[tuple[float, float]]] = {way: [] for way in WAYS}
            for round_ in range(1, args.rounds + 1):
                for way in WAYS:
                    rate, cpu_us = drain(kafka, source, args.records, way, consumer_properties)
                    figures[way].append((rate, cpu_us))
                    print(f"round {round_}, {way}: {rate:,.0f} records/s, {cpu_us:.2f} CPU µs")
            print(f"\n{'way':20s} {'records/s (min-max)':>28s} {'CPU µs/record':>14s}")
            for way, seen in figures.items():
                rates = [rate for rate, _ in seen]
                cpu = statistics.median(c for _, c in seen)
                spread = f"{statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"
                print(f"{way:20s} {spread:>28s} {cpu:14.2f}")
        finally:
            broker.stop()


if __name__ == "__main__":
    with interrupted_by_sigterm():  # a killed run stops its broker
        main()
