"""The intake: polls records into the forming batch, and pauses the partitions when full.

Backpressure works in two steps.  A short wait for room needs no pause: pausing drops
librdkafka's prefetched records and costs a fetch round trip on resume.  A long one (the
model server is down) must keep polling so the group's callbacks are served, and that
needs the pause; polling a paused consumer still delivers records of a partition that
was just assigned, so those are kept too.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from streaminfer.kafka.access import refuse_denied
from streaminfer.kafka.records import message_headers
from streaminfer.stream.records import Source
from streaminfer.stream.unreadable import UnreadableBatches
from streaminfer.stream.work import InputRecord

log = logging.getLogger(__name__)

PAUSE_AFTER_S = 1.0  # a full buffer for this long pauses the partitions
_SMOOTHING = 0.3  # weight of the newest observation in the moving averages
_FIT_SMOOTHING = 0.05  # the chunk-cost line's: it needs chunks of several sizes
_FIT_SPREAD = 0.1  # chunk sizes must vary by this share of their mean to fit a line
_PROBE_EVERY = 8  # while they do not (a steady backlog), every 8th chunk takes twice as many
_MOST_CHUNK_S = 0.1  # a chunk's records wait for each other: at most a commit interval's
BACKLOG_CHECKS = 3  # checks running (one an interval) that must find a queue to call it a backlog


class ChunkSizer:
    """How many records a chunk (one pipeline thread's share of the input) takes.

    At least ``floor`` (``--batch-size``); more while records are cheap, so that a chunk
    holds about ``target_s`` of work: a chunk's fixed costs (a thread hop, a model run,
    the loop's bookkeeping) then stay a small part of each record's, which for a tiny
    model they are not at 16 records.  Images (milliseconds each) keep ``floor``.

    A remote model's round trip is such a fixed cost, of milliseconds, and on shared
    cores it grows with the load: sized by time alone, its chunks shrank to about 27
    tensor records as the round trip neared ``target_s``, the lanes could no longer keep
    up, and the worker queued for seconds at half load.  So a line is fitted to recent
    chunks (time = a part per chunk + a part per record), and a chunk also takes at
    least as many records as its part per chunk is worth.  A backlog fills every chunk to
    the same size, which fits no line: then every ``_PROBE_EVERY``-th chunk takes twice
    as many records.

    The line is fitted to noisy times (lanes share the cores), and noise can make its
    part per record negative or tiny, which reads as "records are free: take them all".
    Remote images once did (a chunk of 32 timed faster than one of 16), and so did
    embedded ones (40 ms each on 4 lanes, timed within +-50 %: 3 % of the lines in a
    simulation): their next chunk took every record waiting, 250 images, seconds of work
    and one output time for all.  So a chunk takes at most twice the largest one timed so
    far (a larger chunk's time then corrects the line), and its records cost at most
    ``_MOST_CHUNK_S`` together (by the line's part per record, or without one by their
    share of the chunk's time): each waits for the others.

    Records that queue while every lane is busy may form a larger chunk, up to
    ``queued_size`` (the same two bounds, without the time target): they have waited
    anyway, and one larger chunk pays the fixed part once.  Held to ``size``, a remote
    model's chunks stayed at about 150 tensor records (10 ms of work each) while a
    backlog of a second's input waited behind them; the fixed parts cost the worker a
    third of its throughput, and at half load it never caught up.
    """

    def __init__(self, floor: int, target_s: float = 0.01, growth: int = 64) -> None:
        self.floor = floor
        self.ceiling = floor * growth
        self.target_s = target_s
        self.record_s = 0.0  # moving average of a record's share of its chunk's time
        self.fixed_records = 0.0  # records that cost what a chunk's fixed part does
        self.most_records = 0.0  # records whose own cost is _MOST_CHUNK_S; 0: not known
        self.largest = 0  # the most records a chunk timed so far held
        self._moments = [0.0, 0.0, 0.0, 0.0]  # moving averages of n, t, n * n, n * t
        self._unknown_for = 0  # chunks since the line was last known
        # Worked out once a chunk, read on every pass of the loop (several times): as a
        # property it cost 1.8 µs a read.
        self.size = floor
        self.queued_size = floor

    def observe(self, records: int, seconds: float) -> None:
        if records <= 0:
            return
        first = self.record_s == 0.0  # the first chunk starts the moving averages
        per_record = seconds / records
        self.largest = max(self.largest, records)
        self.record_s += (1.0 if first else _SMOOTHING) * (per_record - self.record_s)
        self._fit(records, seconds, 1.0 if first else _FIT_SMOOTHING)
        self.size = self._size()
        self.queued_size = self._queued_size()

    def _fit(self, n: int, t: float, weight: float) -> None:
        """The least-squares line through recent chunks' (records, seconds), in moving
        averages; kept as it was while their sizes hardly vary (it is then unknown)."""
        moments = self._moments
        for i, value in enumerate((n, t, n * n, n * t)):
            moments[i] += weight * (value - moments[i])
        mean_n, mean_t, mean_nn, mean_nt = moments
        variance = mean_nn - mean_n * mean_n
        if variance < (_FIT_SPREAD * mean_n) ** 2:
            self._unknown_for += 1
            return
        self._unknown_for = 0
        per_record = (mean_nt - mean_n * mean_t) / variance
        fixed = mean_t - per_record * mean_n
        if per_record <= 0:  # no cost per record shows at these sizes: try larger ones
            self.fixed_records = float(self.ceiling)
            self.most_records = 0.0
        else:
            self.fixed_records = max(0.0, fixed / per_record)
            self.most_records = _MOST_CHUNK_S / per_record

    def _size(self) -> int:
        if self.record_s <= 0.0:
            return self.floor
        wanted = max(self.target_s / self.record_s, self.fixed_records)
        wanted = min(wanted, self._most_by_cost())
        most = min(self.ceiling, 2 * self.largest)
        size = max(self.floor, min(most, round(wanted)))
        if self._unknown_for % _PROBE_EVERY == _PROBE_EVERY - 1:
            return max(size, min(most, size * 2))  # another size, so that a line can be fitted
        return size

    def _queued_size(self) -> int:
        if self.record_s <= 0.0:  # chunks timed at no cost so far: nothing to go by
            return self.size
        most = min(self.ceiling, 2 * self.largest, round(self._most_by_cost()))
        return max(self.size, most)

    def _most_by_cost(self) -> float:
        """The records whose own cost is ``_MOST_CHUNK_S``, by the line or by their share."""
        return self.most_records or _MOST_CHUNK_S / self.record_s


class ChunkLanes:
    """How many chunks run through the pipeline side by side: as many as their waits can
    use, at most ``most`` (``--max-in-flight``), and all of them until a chunk has finished.

    A chunk holds the GIL except while it waits on work that needs none (``waited_s``: a
    model run, a remote call, downloads).  Chunks overlap only in those waits, so about
    ``1 + waited / held`` of them make progress at once; more just hand the GIL around.
    A tiny model's records hold it nearly all the time, and one chunk at a time ran them
    faster than four (24,000-31,000 records/s against 14,000-25,000, taking turns on 2
    cores); images, remote models and a handler's hooks (which may call a service) wait,
    and keep every lane.  (``held`` counts a chunk's wait for the GIL too, so crowded
    lanes make the next limit lower.)
    """

    def __init__(self, most: int) -> None:
        self.most = most
        self.waiting = -1.0  # moving average of a chunk's waited / held time; -1: none yet

    def observe(self, seconds: float, waited: float) -> None:
        ratio = waited / max(seconds - waited, 1e-6)
        if self.waiting < 0:
            self.waiting = ratio
        self.waiting += _SMOOTHING * (ratio - self.waiting)

    @property
    def limit(self) -> int:
        if self.waiting < 0:
            return self.most
        return max(1, min(self.most, round(1 + self.waiting)))


class BufferBudget:
    """How much polled input may wait in the worker: enough work to cover a commit.

    While a transaction commits, the outputs wait, but polling and predicting go on; the
    buffer must hold what the pipeline gets through meanwhile, or its threads idle.  So
    it is sized by time (twice a commit's duration at the recent throughput), never
    below ``chunks`` chunks as large as records that queued may form (``queued_size``),
    and bounded by bytes so that large records cannot exhaust memory.
    """

    def __init__(self, sizer: ChunkSizer, chunks: int, max_bytes: int = 64 * 2**20) -> None:
        self.sizer = sizer
        self.chunks = chunks
        self.max_bytes = max_bytes
        self.records_per_s = 0.0
        self.commit_s = 0.0
        self._checks_over = 0  # checks running that found a backlog

    def observe(self, records: int, interval_s: float, commit_s: float) -> None:
        """After a commit: ``records`` were written in the ``interval_s`` it closed."""
        if interval_s > 0:
            rate = records / interval_s
            self.records_per_s += _SMOOTHING * (rate - self.records_per_s)
        self.commit_s += _SMOOTHING * (commit_s - self.commit_s)

    @property
    def records(self) -> int:
        chunks = self.sizer.queued_size * self.chunks
        return max(chunks, int(self.records_per_s * self.commit_s * 2))

    def has_room(self, records: int, size: int) -> bool:
        return records < self.records and size < self.max_bytes

    def backlogged(self, waiting: int, within_s: float) -> bool:
        """More input ``waiting`` than the buffer holds and the worker gets through in
        ``within_s`` (a stretched commit interval) at its recent pace, at each of the last
        ``BACKLOG_CHECKS`` checks (one an interval).

        A shorter queue is no backlog: a slow commit holds the outputs, the buffer fills,
        polling pauses for a moment, and the queue clears within that time anyway.
        Stretching the commit interval for it would only hold every record back: at half
        load it sent p99 latency from about 100 ms to 480-620 ms.  Nor is a long queue
        that one slow commit left: below saturation it shrinks from the next check on.
        A real backlog lasts, so waiting for the third check costs it two transactions.
        """
        if waiting > max(self.records, self.records_per_s * within_s):
            self._checks_over += 1
        else:
            self._checks_over = 0
        return self._checks_over >= BACKLOG_CHECKS


class Intake:
    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.assigned: list[TopicPartition] = []
        self.forming: list[InputRecord] = []  # polled, waiting for a free chunk thread
        self.idle = False  # the last poll found nothing waiting
        self._paused = False
        self._full_since: float | None = None  # since when the buffer has been full
        self._unreadable = UnreadableBatches(consumer)

    def poll(self, timeout: float, most: int) -> None:
        """Poll until the forming batch holds ``most`` records; resumes paused partitions."""
        self._full_since = None
        if self._paused:
            self.consumer.resume(self.assigned)
            self._paused = False
        if self._unreadable.found:  # records to dead-letter first: no waiting for input
            self.forming += self._unreadable.take(most - len(self.forming))
            timeout = 0
        first = self.consumer.poll(timeout)
        self.idle = first is None
        if first is not None:
            more = most - len(self.forming) - 1
            self._take([first, *self.consumer.consume(more, timeout=0)] if more > 0 else [first])
        if self._unreadable.searches:  # a probe may have been read past in silence
            self._unreadable.observe_positions()

    def hold(self) -> None:
        """The buffer is full: pause once that has lasted; keep serving the group meanwhile."""
        now = time.monotonic()
        self._full_since = self._full_since or now
        if not self._paused and self.assigned and now - self._full_since > PAUSE_AFTER_S:
            self.consumer.pause(self.assigned)
            self._paused = True
        self.idle = False
        if self._paused:
            first = self.consumer.poll(0)  # a record of a newly assigned partition may come
            if first is not None:
                self._take([first])

    def take_batch(self) -> list[InputRecord]:
        batch, self.forming = self.forming, []
        return batch

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = list(partitions)
        self._paused = False

    def drop(self) -> None:
        """Forget the partitions and the records polled but not yet handed on."""
        self.assigned = []
        self.forget()
        self._paused = False

    def forget(self) -> None:
        """Forget the records polled but not yet handed on: the partitions are read again
        from their committed offsets."""
        self.forming = []
        self._unreadable.forget()

    def lags(self) -> dict[tuple[str, int], int]:
        """Records not yet consumed, per assigned partition, from the last fetched watermarks."""
        lags = {}
        for tp in self.consumer.position(self.assigned):
            _, high = self.consumer.get_watermark_offsets(tp, cached=True)
            if tp.offset >= 0 and high >= 0:
                lags[(tp.topic, tp.partition)] = max(0, high - tp.offset)
        return lags

    def _take(self, messages: list[Message]) -> None:
        now = time.monotonic()
        forming = self.forming
        unreadable = self._unreadable
        searching = unreadable.searches  # the same dict throughout: a search may start here
        if searching:
            unreadable.polled()
        for message in messages:
            # Most are records while no batch is being searched: nothing more to ask.
            plain = message.error() is None and not searching
            if plain or (not unreadable.takes(message) and _usable(message)):
                forming.append(input_record(message, now))


def input_record(message: Message, consumed_at: float) -> InputRecord:
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None and partition is not None and offset is not None
    ts_type, ts = message.timestamp()
    headers = message_headers(message)
    source = Source(topic, partition, offset, ts if ts_type else None)
    return InputRecord(message.key(), message.value(), headers, source, consumed_at)


def _usable(message: Message) -> bool:
    error = message.error()
    if error is None:
        return True
    if error.fatal():
        raise KafkaException(error)
    refuse_denied(error)  # the group or input topic not allowed: polling again won't be
    log.warning("consumer: %s", error.str())
    return False
