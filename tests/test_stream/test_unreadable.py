"""The search for an unreadable batch's end, against a partition laid out in batches that
answers as librdkafka does: a fetch from an offset in an unreadable batch is an error at
the batch's first offset, from any other offset the records from there on.  (The real
consumer and broker are in test_hostile.py.)"""

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


class Partition:
    """Batches of (size, readable) from offset 0; ``position`` is where the next fetch reads."""

    def __init__(self, batches: list[tuple[int, bool]]) -> None:
        self.batches = []
        base = 0
        for size, readable in batches:
            self.batches.append((base, size, readable))
            base += size
        self.end = base
        self.position = 0
        self.seeks = 0

    def fetch(self) -> list[Fetched]:
        for base, size, readable in self.batches:
            if base <= self.position < base + size:
                if not readable:
                    return [Fetched(base, KafkaError(KafkaError._BAD_COMPRESSION, "bad"))]
                fetched = [Fetched(at) for at in range(self.position, base + size)]
                self.position = base + size
                return fetched
        return []

    # The consumer's calls that UnreadableBatches makes:
    def seek(self, tp: TopicPartition) -> None:
        assert 0 <= tp.offset <= self.end  # never past the end, where the offset would reset
        self.position = tp.offset
        self.seeks += 1

    def get_watermark_offsets(self, tp: TopicPartition, **_: object) -> tuple[int, int]:
        return 0, self.end


@given(
    st.lists(st.tuples(st.integers(1, 300), st.booleans()), min_size=1, max_size=8),
    st.integers(1, 50),
)
def test_every_offset_is_read_or_handed_out_once_in_order(
    batches: list[tuple[int, bool]], most: int
) -> None:
    partition = Partition(batches)
    unreadable = UnreadableBatches(partition)  # type: ignore[arg-type]
    seen: list[tuple[int, bool]] = []
    for _ in range(10_000):
        seen += [(r.source.offset, False) for r in unreadable.take(most)]
        fetched = partition.fetch()
        if not fetched and not unreadable.searches:
            break
        unreadable.polled()
        seen += [(m.at, True) for m in fetched if not unreadable.takes(m)]  # type: ignore[arg-type]
    expected = [
        (offset, readable)
        for base, size, readable in partition.batches
        for offset in range(base, base + size)
    ]
    assert seen == expected
    bad = [size for size, readable in batches if not readable]
    # Each batch: a seek per doubling and per halving, and one to go on after it.
    assert partition.seeks <= sum(2 * math.ceil(math.log2(size + 1)) + 2 for size in bad)
