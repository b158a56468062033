"""Traffic for a benchmark: a producer at a steady rate, and a reader of what comes out.

The reader is a ``read_committed`` consumer, so an output counts when a downstream
application could see it: under exactly-once, when its transaction commits.  It keeps
what it saw in numpy columns, not an object per output: the bench's process shares the
worker's cores, and with a million such objects each of its full garbage collections took
100-170 ms, holding back the reader (and the paced producer, which then sent what fell
due at once) long enough to be most of the p99 latency it measured.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

from streaminfer.errors import InfrastructureError
from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import produce_waiting

_FLUSH_TIMEOUT_S = 30.0
PACING_S = 0.001  # the shortest sleep between paced sends: records due meanwhile go together


@dataclass(frozen=True)
class Arrivals:
    """Outputs as the reader saw them, a column a field, a row an input (its output's
    first sighting), in the order of the inputs' offsets."""

    offset: np.ndarray  # the input record's offset
    timestamp_ms: np.ndarray  # the input record's timestamp; NaN if it had none
    emitted_at: np.ndarray  # the output record's own timestamp (s): when the worker wrote it
    seen_at: np.ndarray  # wall clock (time.time()) when the reader received it

    def __len__(self) -> int:
        return len(self.offset)


_OFFSET, _TIMESTAMP_MS, _EMITTED_AT, _SEEN_AT = range(4)  # the columns of the reader's rows


class InputProducer:
    """Writes a run's inputs: all at once for saturation, then at steady rates.

    One producer serves every phase, so by the first paced record it is connected and
    has its producer id: a fresh one would hold its first records back for that
    handshake while their timestamps already run, and show it as worker latency.
    """

    def __init__(self, kafka: KafkaSettings, topic: str, value: Callable[[int], bytes]) -> None:
        self._topic = topic
        self._value = value
        self._sent = 0  # index of the next record
        self._failures: list[str] = []
        # librdkafka's default linger (5 ms), as an event source runs it: a record's
        # timestamp is still taken when it is produced, so the linger counts as latency.
        # linger.ms=0 made every record its own produce request: at 16k records/s that
        # cost the broker, on the worker's cores, more than the worker itself, and the
        # latency measured was the bench's own load (p50/p99 123/753 against 55/117 ms).
        self._producer = Producer(
            kafka.client_config(**{"enable.idempotence": True, "linger.ms": 5})
        )

    @property
    def sent(self) -> int:
        return self._sent

    def send_all(self, count: int) -> None:
        """Produce ``count`` records as fast as the producer takes them."""
        for _ in range(count):
            self._send()
        self._flush()

    def send_paced(self, rate: float, duration_s: float) -> tuple[int, float]:
        """Produce ``rate`` records a second for ``duration_s`` seconds; returns how many,
        and the seconds their sending took (longer than ``duration_s`` if the producer
        could not keep up).

        Every record due is sent at once, then the producer sleeps until the next is due,
        at least ``PACING_S``: a sleep per record overslept by the kernel's timer slack
        (50 µs) and more, which held a producer meant to send 25,000 a second to 7,500.
        """
        total = max(1, round(rate * duration_s))
        start = time.monotonic()
        sent = 0
        while sent < total:
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            for _ in range(sent, due):
                self._send()
            sent = due
            if sent < total:
                next_due = start + sent / rate
                time.sleep(max(PACING_S, next_due - time.monotonic()))  # pacing, by design
        seconds = time.monotonic() - start
        self._flush()
        return total, seconds

    def _send(self) -> None:
        produce_waiting(
            self._producer, self._topic, self._value(self._sent), on_delivery=self._on_delivery
        )
        self._producer.poll(0)
        self._sent += 1

    def _on_delivery(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            self._failures.append(error.str())

    def _flush(self) -> None:
        remaining = self._producer.flush(_FLUSH_TIMEOUT_S)
        if self._failures or remaining:
            unacknowledged = f"{remaining} records not acknowledged"
            reason = self._failures[0] if self._failures else unacknowledged
            raise InfrastructureError(f"producing to {self._topic!r} failed: {reason}")


class OutputCollector:
    """Reads the output and dead-letter topics from the start on a background thread."""

    def __init__(self, kafka: KafkaSettings, output: str, dead_letter: str) -> None:
        self._output = output
        self._consumer = Consumer(
            kafka.client_config(
                **{
                    "group.id": f"streaminfer-bench-{uuid.uuid4().hex[:8]}",  # never committed
                    "enable.auto.commit": False,
                    # A fetch the broker holds open returns as soon as a commit makes
                    # outputs visible, so librdkafka's default wait adds no latency; a
                    # short one only cost the broker a fetch every few milliseconds.
                    "isolation.level": "read_committed",
                }
            )
        )
        self._consumer.assign(
            [TopicPartition(t, 0, OFFSET_BEGINNING) for t in (output, dead_letter)]
        )
        # A float64 row an output (offsets stay exact to 2**53), a block a poll, joined
        # when read.
        self._rows: list[np.ndarray] = []
        self._outputs = 0
        self._modes: set[str] = set()  # who served the outputs, as the worker wrote it
        self._dead_lettered = 0
        self._error: str | None = None
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="bench-collector", daemon=True)
        self._thread.start()

    @property
    def dead_lettered(self) -> int:
        with self._changed:
            return self._dead_lettered

    @property
    def done(self) -> int:
        """Input records finished so far: outputs plus dead-lettered records."""
        with self._changed:
            return self._done_locked()

    @property
    def modes(self) -> list[str]:
        """Who served the outputs so far, as the workers wrote it in them."""
        with self._changed:
            return sorted(self._modes)

    def arrivals(self, first: int, end: int) -> Arrivals:
        """Outputs for input offsets ``first`` to ``end - 1``, first sighting of each."""
        with self._changed:
            if len(self._rows) > 1:
                self._rows = [np.concatenate(self._rows)]
            rows = self._rows[0] if self._rows else np.empty((0, 4))
        return first_sightings(rows, first, end)

    def wait_for(
        self, count: int, alive: Callable[[], bool], first_timeout: float, stall_timeout: float
    ) -> None:
        """Block until ``count`` records are done; raise if the worker dies or stops producing.

        ``first_timeout`` bounds the wait when nothing at all arrives (a worker starting);
        ``stall_timeout`` the wait for the next output once they flow.
        """
        with self._changed:
            last_progress, last_done = time.monotonic(), self._done_locked()
            while self._done_locked() < count:
                if self._error is not None:
                    raise InfrastructureError(f"reading the outputs failed: {self._error}")
                if not alive():
                    raise InfrastructureError("exited")
                if self._done_locked() != last_done:
                    last_progress, last_done = time.monotonic(), self._done_locked()
                limit = stall_timeout if last_done else first_timeout
                if time.monotonic() - last_progress > limit:
                    raise InfrastructureError(
                        f"no output for {limit:.0f}s ({last_done} of {count} records done)"
                    )
                self._changed.wait(0.5)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._consumer.close()

    def _done_locked(self) -> int:
        """Input records finished so far: outputs plus dead-lettered records."""
        return self._outputs + self._dead_lettered

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                # poll returns as soon as one record is there (consume would wait for
                # the timeout unless 1000 came, adding up to 0.1 s to every latency).
                first = self._consumer.poll(0.1)
                messages = [first, *self._consumer.consume(999, timeout=0)] if first else []
            except Exception as exc:  # surfaced to the waiting thread with its message
                with self._changed:
                    self._error = str(exc)
                    self._changed.notify_all()
                return
            if not messages:
                continue
            seen_at = time.time()
            rows: list[tuple[float, float, float, float]] = []
            modes: set[str] = set()
            dead = 0
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        with self._changed:
                            self._error = error.str()
                    continue
                if message.topic() == self._output:
                    rows.append(_row(message, seen_at, modes))
                else:
                    dead += 1
            with self._changed:
                if rows:
                    self._rows.append(np.array(rows, dtype=np.float64))
                self._outputs += len(rows)
                self._modes |= modes
                self._dead_lettered += dead
                self._changed.notify_all()


def first_sightings(rows: np.ndarray, first: int, end: int) -> Arrivals:
    """The rows (in the order seen) of input offsets ``first`` to ``end - 1``: the first
    of each offset's, in offset order."""
    offsets = rows[:, _OFFSET]
    rows = rows[(offsets >= first) & (offsets < end)]
    _, firsts = np.unique(rows[:, _OFFSET], return_index=True)  # each value's first index
    rows = rows[firsts]
    return Arrivals(
        offset=rows[:, _OFFSET].astype(np.int64),
        timestamp_ms=rows[:, _TIMESTAMP_MS],
        emitted_at=rows[:, _EMITTED_AT],
        seen_at=rows[:, _SEEN_AT],
    )


def _row(message: Message, seen_at: float, modes: set[str]) -> tuple[float, float, float, float]:
    """An output's row (the columns of ``Arrivals``); its mode goes into ``modes``."""
    # orjson: the reader shares the worker's cores, so its cost lowers what it measures.
    doc = orjson.loads(message.value() or b"{}")
    source = doc["source"]
    modes.add(str(doc["mode"]))
    _, emitted_ms = message.timestamp()
    timestamp = source.get("timestamp")
    return (
        float(source["offset"]),
        math.nan if timestamp is None else float(timestamp),
        emitted_ms / 1000,
        seen_at,
    )
