"""The search for an unreadable batch's end, against a partition laid out in batches that
answers as librdkafka does: a fetch from an offset in an unreadable batch is an error at
the batch's first offset, from any other offset the records from there on, past what a
read_committed consumer skips in silence (transaction markers, aborted records), which
only moves its position.  (The real consumer and broker are in test_hostile.py.)"""

from __future__ import annotations

import math
from dataclasses import dataclass

from confluent_kafka import KafkaError, TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from streaminfer.stream.unreadable import UnreadableBatches


@dataclass
class Fetched:
    at: int
    failed: KafkaError | None = None

    def error(self) -> KafkaError | None:
        return self.failed

    def topic(self) -> str:
        return "in"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self.at


READ, UNREADABLE, SKIPPED = "read", "unreadable", "skipped"
INVALID = -1001  # the consumer's position after a seek, until it fetches from there


class Partition:
    """Batches of (size, kind) from offset 0, read from the group's committed offset;
    ``fetching`` is where the next fetch reads, ``app`` the position the consumer reports."""

    def __init__(self, batches: list[tuple[int, str]], committed: int) -> None:
        self.batches = []
        base = 0
        for size, kind in batches:
            self.batches.append((base, size, kind))
            base += size
        self.end = base
        self.committed_offset = committed
        self.fetching = committed
        self.app = INVALID
        self.seeks = 0

    def fetch(self) -> list[Fetched]:
        for base, size, kind in self.batches:
            if base <= self.fetching < base + size:
                if kind == UNREADABLE:
                    return [Fetched(base, KafkaError(KafkaError._BAD_COMPRESSION, "bad"))]
                fetched = [Fetched(at) for at in range(self.fetching, base + size)]
                self.fetching = self.app = base + size
                return fetched if kind == READ else []
        return []

    # The consumer's calls that UnreadableBatches makes:
    def seek(self, tp: TopicPartition) -> None:
        assert 0 <= tp.offset <= self.end  # never past the end, where the offset would reset
        self.fetching, self.app = tp.offset, INVALID
        self.seeks += 1

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.app) for tp in tps]

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.committed_offset) for tp in tps]

    def get_watermark_offsets(self, tp: TopicPartition, **_: object) -> tuple[int, int]:
        return 0, self.end


@given(
    st.lists(
        st.tuples(st.integers(1, 300), st.sampled_from([READ, UNREADABLE, SKIPPED])),
        min_size=1,
        max_size=8,
    ),
    st.integers(1, 50),
    st.floats(0, 1),
)
def test_every_offset_is_read_or_handed_out_once_in_order(
    batches: list[tuple[int, str]], most: int, committed_share: float
) -> None:
    """From the group's committed offset, anywhere (inside an unreadable batch, where a
    worker killed while handing it out left it), every offset after it once."""
    committed = round(sum(size for size, _ in batches) * committed_share)
    partition = Partition(batches, committed)
    unreadable = UnreadableBatches(partition)  # type: ignore[arg-type]
    seen: list[tuple[int, bool]] = []
    for _ in range(10_000):
        seen += [(r.source.offset, False) for r in unreadable.take(most)]
        fetched = partition.fetch()
        if partition.fetching == partition.end and not fetched and not unreadable.searches:
            break
        unreadable.polled()
        seen += [(m.at, True) for m in fetched if not unreadable.takes(m)]  # type: ignore[arg-type]
        unreadable.observe_positions()
    expected = [
        (offset, kind == READ)
        for base, size, kind in partition.batches
        if kind != SKIPPED
        for offset in range(base, base + size)
        if offset >= committed
    ]
    assert seen == expected
    bad = [size for size, kind in batches if kind == UNREADABLE]
    # Each batch: a seek per doubling and per halving, and one to go on after it.
    assert partition.seeks <= sum(2 * math.ceil(math.log2(size + 1)) + 2 for size in bad)
