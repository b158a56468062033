"""Record batches the consumer cannot read: their records are dead-lettered, and the
partition goes on after them.

librdkafka refuses a batch that decompresses past ``receive.message.max.bytes`` (100 MB
by default: a compression bomb of a few kilobytes makes it), or that is corrupt.  It
hands the application an error at the batch's first offset, then fetches the batch again
and fails again, for ever: the partition would stall.  The error does not say how many
records the batch holds, so the end is found by seeking: past the first offset, twice as
far each time the error comes back, then halving the gap between the last offset that
failed and the first that did not, about 2·log2(n) fetches for a batch of n records.  Its
offsets then become records without a value, dead-lettered as ``unreadable_record`` in
their place in the partition's order, and the consumer goes on from the first offset
after them.  Read from an offset inside the batch (the group's committed offset, left
there by a worker killed while handing the batch out), the error still names its first
offset: the offsets before the committed one are not handed out again.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from streaminfer.errors import RecordError
from streaminfer.stream.records import Source
from streaminfer.stream.work import InputRecord

log = logging.getLogger(__name__)

UNREADABLE_BATCH = frozenset({KafkaError._BAD_COMPRESSION, KafkaError._BAD_MSG})
QUERY_TIMEOUT_S = 10.0  # a search's questions to the broker: watermarks, committed offset

Partition = tuple[str, int]


class UnreadableRecord(RecordError):
    reason = "unreadable_record"


@dataclass(slots=True)
class _Search:
    """Where the unreadable batch at ``base`` ends: every offset in [base, bad_end) is in
    it, ``good`` (once known) is not, nor is any offset at the partition's end (``end``)."""

    base: int
    bad_end: int
    end: int
    error: str
    good: int | None = None
    probe: int = -1
    step: int = 1
    found: bool = False


class UnreadableBatches:
    """Measures each unreadable batch by seeking, and hands out its records to dead-letter.

    Every message of a partition whose batch is being measured or handed out is the
    search's: librdkafka reads the records after the batch again once the search seeks
    the partition past it.
    """

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer
        self.searches: dict[Partition, _Search] = {}  # partitions searched or handed out
        self.found: deque[Partition] = deque()  # measured, in the order found
        self._handed_out_to: dict[Partition, int] = {}  # offsets before it are dead-lettered
        # Partitions a probe sought since the last poll: the poll's later messages of them
        # were fetched before the seek (the consumer drops those it still holds, not these).
        self._sought: set[Partition] = set()

    def polled(self) -> None:
        """The messages ``takes`` is given next come from a new poll (needed only while
        ``searches`` holds a partition)."""
        self._sought.clear()

    def takes(self, message: Message) -> bool:
        """True if ``message`` is the search's (an unreadable batch's error, or any record
        of a partition being searched); False for the intake to read as usual."""
        error = message.error()
        unreadable = error is not None and error.code() in UNREADABLE_BATCH
        if error is not None and not unreadable:
            return False  # the intake logs it, or raises a fatal one
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is None or partition is None or offset is None or offset < 0:
            return False
        key = (topic, partition)
        if key in self._sought:
            return True
        search = self.searches.get(key)
        if search is None:
            if not unreadable:
                return False
            assert error is not None
            self._start(key, offset, error.str())
        elif not search.found:
            self._observe(key, search, offset, unreadable)
        return True

    def observe_positions(self) -> None:
        """After a poll: a probe the consumer read past, with no record or error for it,
        landed on what read_committed skips in silence (a transaction's marker, aborted
        records), so it is past the batch.  Nothing else answers a probe at a marker
        that ends the partition: the dead letters would wait for the next record."""
        probing = [(key, search) for key, search in self.searches.items() if not search.found]
        if not probing:
            return
        # A seek returns once done and leaves the position unknown (negative); an error
        # at the batch's first offset leaves it so.  So a position past the probe was
        # reached from it, never one from before it.
        positions = self._consumer.position([TopicPartition(*key) for key, _ in probing])
        for (key, search), position in zip(probing, positions, strict=True):
            if position.offset > search.probe >= 0:
                self._observe(key, search, search.probe, unreadable=False)

    def take(self, most: int) -> list[InputRecord]:
        """Up to ``most`` records of the measured batches, first found first; a batch
        handed out in full lets its partition go on after it."""
        records: list[InputRecord] = []
        now = time.monotonic()
        while self.found and len(records) < most:
            key = self.found[0]
            search = self.searches[key]
            first = self._handed_out_to[key]  # set when the search started
            last = min(search.bad_end, first + most - len(records))
            error = UnreadableRecord(
                f"the consumer could not read the record batch at offsets {search.base}"
                f"-{search.bad_end - 1} of {key[0]} [{key[1]}]: {search.error} (librdkafka "
                "refuses a batch whole: one that inflates past the consumer's "
                "receive.message.max.bytes, a compression bomb, or one it cannot parse)"
            )
            for offset in range(first, last):
                source = Source(key[0], key[1], offset, None)
                records.append(InputRecord(None, None, [], source, now, unreadable=error))
            self._handed_out_to[key] = last
            if last == search.bad_end:  # before a poll: nothing stale to drop after it
                self.found.popleft()
                del self.searches[key]
                self._sought.discard(key)
                self._consumer.seek(TopicPartition(key[0], key[1], last))
        return records

    def forget(self) -> None:
        """The partitions were rewound or revoked: their next owner (or the rewind) reads
        the batches again."""
        self.searches.clear()
        self.found.clear()
        self._handed_out_to.clear()
        self._sought.clear()

    def _start(self, key: Partition, base: int, error: str) -> None:
        log.warning("%s [%d]: an unreadable record batch at offset %d: %s", *key, base, error)
        # The error names the batch's first offset even when the consumer reads from an
        # offset inside it: the group's committed offset, when a worker killed while
        # handing the batch out, or a rewind, left it there; or where this search went on
        # from when the partition's end was unknown, so it took the batch to end there.
        # The offsets before that were dead-lettered already; the one read from is in
        # the batch too.
        start = max(base, self._handed_out_to.get(key, base), self._committed(key))
        self._handed_out_to[key] = start
        bad_end = start + 1
        search = _Search(base, bad_end, max(bad_end, self._end(key)), error)
        self.searches[key] = search
        self._next(key, search)

    def _observe(self, key: Partition, search: _Search, offset: int, unreadable: bool) -> None:
        if unreadable and offset == search.base:  # the probe is in the batch
            search.bad_end = search.probe + 1
            search.step *= 2
        elif unreadable and offset > search.base:  # another unreadable batch begins there
            search.good = min(offset, search.good if search.good is not None else offset)
        elif not unreadable and offset >= search.probe:  # the probe is past the batch
            search.good = search.probe
        else:
            return  # fetched before the last seek
        self._next(key, search)

    def _next(self, key: Partition, search: _Search) -> None:
        if search.good is None and search.bad_end >= search.end:
            search.good = search.end
        if search.good is None:  # twice as far as the last probe in the batch
            probe = min(search.bad_end + search.step - 1, search.end - 1)
        elif search.bad_end < search.good:  # halfway between in the batch and past it
            probe = (search.bad_end + search.good) // 2
        else:
            search.found = True
            self.found.append(key)
            return
        search.probe = probe
        self._consumer.seek(TopicPartition(key[0], key[1], probe))
        self._sought.add(key)

    def _committed(self, key: Partition) -> int:
        """The group's committed offset of the partition, negative if none or unknown."""
        try:
            (committed,) = self._consumer.committed([TopicPartition(*key)], QUERY_TIMEOUT_S)
        except KafkaException as exc:
            log.warning(
                "%s [%d]: no committed offset (%s): the batch is dead-lettered "
                "from its first offset",
                *key,
                exc,
            )
            return -1
        return committed.offset

    def _end(self, key: Partition) -> int:
        """The partition's end (its high watermark), 0 if unknown: no probe may seek past
        it, where the consumer would reset its offset."""
        tp = TopicPartition(*key)
        watermarks = self._consumer.get_watermark_offsets(tp, cached=True)
        if not watermarks or watermarks[1] < 0:
            watermarks = self._consumer.get_watermark_offsets(tp, timeout=QUERY_TIMEOUT_S)
        return int(watermarks[1]) if watermarks else 0
