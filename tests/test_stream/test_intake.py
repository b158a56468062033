"""How much input the worker takes at once: chunk sizes and the buffer (pure logic), and
consumed messages made into records."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streaminfer.stream.intake import BACKLOG_CHECKS, BufferBudget, ChunkLanes, ChunkSizer, Intake


def test_a_chunk_is_the_batch_size_until_records_are_timed() -> None:
    assert ChunkSizer(16).size == 16


def test_cheap_records_make_larger_chunks_up_to_the_ceiling() -> None:
    sizer = ChunkSizer(16, target_s=0.01, growth=64)
    assert _sizes_taken(sizer, 6, lambda n: n * 20e-6) == [16, 32, 64, 128, 256, 500]
    for _ in range(50):  # 20 us a record: 500 make 10 ms; at 1 us, 10,000 would
        sizer.observe(1000, 1000 * 1e-6)
    assert sizer.size == 16 * 64


def test_a_chunk_takes_at_most_twice_the_largest_timed_so_far() -> None:
    """Images whose timing noise made the line's part per record tiny: by the line alone
    the next chunk would take the ceiling, 1,024 images."""
    sizer = ChunkSizer(16, growth=64)
    for n, seconds in [(16, 0.600), (32, 0.601)] * 20:
        sizer.observe(n, seconds)
    assert sizer.fixed_records > 1000 and sizer.most_records > 1000
    assert sizer.size == 64


# A chunk's time, as perf_counter measures it: in steps of nanoseconds, and maybe none.
_CHUNK_SECONDS = st.one_of(st.just(0.0), st.floats(1e-9, 5.0))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 2000), _CHUNK_SECONDS), min_size=1, max_size=60))
@example(chunks=[(1, 0.001)] * 8)  # lone records: the eighth chunk probes, not past 16
@example(chunks=[(16, 0.0)])  # a chunk timed at no cost: no record cost to divide by
def test_no_timing_makes_a_chunk_larger_than_twice_the_largest_timed(
    chunks: list[tuple[int, float]],
) -> None:
    sizer, largest = ChunkSizer(16, growth=64), 0
    for n, seconds in chunks:
        sizer.observe(n, seconds)
        largest = max(largest, n)
        assert 16 <= sizer.size <= sizer.queued_size <= max(16, min(16 * 64, 2 * largest))


def test_costly_records_keep_the_batch_size() -> None:
    sizer = ChunkSizer(16)
    sizer.observe(16, 16 * 0.005)  # an image: 5 ms
    assert sizer.size == 16
    assert sizer.queued_size == 20  # queued, as many as cost 100 ms


def test_records_that_queued_form_larger_chunks_up_to_a_commit_interval_of_work() -> None:
    """A round trip of 2 ms and 50 us a record: 10 ms of work is some 150 records, but
    records that queued behind busy lanes may go together, as many as 100 ms of their
    own cost, and no more than twice the largest chunk timed."""
    sizer = ChunkSizer(16, growth=256)
    for n in [100, 150, 200] * 10:
        sizer.observe(n, 0.002 + n * 50e-6)
    assert sizer.size < 200 and sizer.queued_size == 2 * 200
    for n in [600, 1200] * 20:
        sizer.observe(n, 0.002 + n * 50e-6)
    assert sizer.queued_size == round(0.1 / 50e-6) == 2000 > sizer.size
    sizer.ceiling = 1024
    sizer.observe(1200, 0.002 + 1200 * 50e-6)
    assert sizer.queued_size == 1024


def test_a_round_trip_per_chunk_makes_chunks_that_are_worth_it() -> None:
    sizer = ChunkSizer(16, target_s=0.01, growth=64)
    for n in [10, 20, 30, 40] * 10:  # 8 ms a call and 15 us a record
        sizer.observe(n, 0.008 + n * 15e-6)
    # By time alone a chunk would take ~30 records (10 ms at ~0.34 ms a record); the
    # round trip is worth 533 records' own cost, reached by doubling the largest chunk.
    assert round(sizer.target_s / sizer.record_s) < 40
    assert _sizes_taken(sizer, 5, lambda n: 0.008 + n * 15e-6) == [80, 160, 320, 533, 533]


def test_records_whose_cost_hides_the_round_trip_keep_the_batch_size() -> None:
    sizer = ChunkSizer(16)
    for n in [4, 8, 12, 16] * 10:  # images from a server: 3 ms a call, 20 ms an image
        sizer.observe(n, 0.003 + n * 0.020)
    assert sizer.size == 16


def test_a_round_trip_that_shows_no_cost_per_record_tries_twice_the_sizes() -> None:
    sizer = ChunkSizer(16, growth=64)
    for n, seconds in [(10, 0.012), (40, 0.010)] * 10:  # noise hides a record's cost
        sizer.observe(n, seconds)
    assert 2 * 10 < sizer.size <= 2 * 40  # twice the sizes seen, not the ceiling


def test_a_cost_that_is_all_round_trip_grows_chunks_to_the_ceiling() -> None:
    sizer = ChunkSizer(16, growth=64)
    sizes = []
    for turn in range(200):
        n = sizer.size if turn % 2 else sizer.size // 2  # as they come: sizes vary
        sizes.append(n)
        sizer.observe(n, 0.010)
    assert sizes[0] == 8 and max(sizes) == 16 * 64


def test_no_line_makes_a_chunk_hold_more_than_a_commit_interval_of_work() -> None:
    """Images from a server, 250 waiting: lanes sharing the cores make a probed chunk of
    32 finish sooner than one of 16, and the line then shows no cost per record."""
    sizer = ChunkSizer(16, growth=64)
    for n, seconds in [(16, 0.45), (32, 0.40)] * 20:
        sizer.observe(n, seconds)
    assert sizer.fixed_records > 16  # the line alone would take more records
    assert sizer.size == 16


def test_chunks_of_one_size_keep_the_last_line() -> None:
    sizer = ChunkSizer(16)
    for n in [10, 20, 30, 40] * 10:
        sizer.observe(n, 0.008 + n * 15e-6)
    for _ in range(100):  # saturated: every chunk as large as allowed, nothing to fit
        sizer.observe(533, 0.008 + 533 * 15e-6)
    assert sizer.fixed_records == pytest.approx(533, rel=1e-3)


def test_a_backlog_of_equal_chunks_is_probed_with_larger_ones() -> None:
    """A backlog from the start fills every chunk to the batch size: the sizer must try
    other sizes to find that a 25 ms round trip is worth far more records."""
    sizer = ChunkSizer(16, growth=64)
    sizes = _sizes_taken(sizer, 40, lambda n: 0.025 + n * 10e-6)
    assert sizes[:7] == [16] * 7 and sizes[7] == 32  # the eighth chunk probes
    assert sizer.size == 16 * 64


def test_chunks_that_vary_enough_are_not_probed() -> None:
    sizer = ChunkSizer(16)
    sizes = set()
    for n in [16, 8, 12, 4] * 10:  # images as they come: the line is known
        sizer.observe(n, 0.003 + n * 0.020)
        sizes.add(sizer.size)
    assert sizes == {16}


def test_every_lane_runs_until_a_chunk_has_finished() -> None:
    assert ChunkLanes(4).limit == 4


def test_chunks_that_hold_the_gil_run_one_at_a_time() -> None:
    lanes = ChunkLanes(4)
    for _ in range(5):
        lanes.observe(seconds=0.010, waited=0.0005)  # a tiny model: 5 % in its model run
    assert lanes.limit == 1


def test_chunks_that_mostly_wait_keep_every_lane() -> None:
    lanes = ChunkLanes(4)
    for _ in range(5):
        lanes.observe(seconds=0.200, waited=0.180)  # images: decodes and the model run
    assert lanes.limit == 4


def test_lanes_follow_the_share_of_waiting() -> None:
    lanes = ChunkLanes(8)
    for _ in range(30):
        lanes.observe(seconds=0.030, waited=0.020)  # waits twice what it holds: 3 overlap
    assert lanes.limit == 3
    for _ in range(30):
        lanes.observe(seconds=0.030, waited=0.001)  # the model got cheap: back to one
    assert lanes.limit == 1


def test_the_buffer_holds_at_least_its_chunks_and_grows_to_cover_a_commit() -> None:
    sizer = ChunkSizer(16)
    budget = BufferBudget(sizer, chunks=8)
    assert budget.records == 16 * 8
    sizer.observe(16, 16 * 20e-6)
    assert budget.records == 32 * 8  # the chunks it holds grow
    sizer.queued_size = 100
    assert budget.records == 100 * 8  # as large as records that queued may form
    # 200k records/s and 0.2 s commits, seen once (moving averages weigh it 0.3): twice a
    # commit's worth is 60k/s x 0.06 s x 2
    budget.observe(records=20_000, interval_s=0.1, commit_s=0.2)
    assert budget.records == 7200
    assert budget.has_room(100, 1000) and not budget.has_room(100, 64 * 2**20)


def test_a_backlog_is_more_than_the_worker_gets_through_in_the_stretched_interval() -> None:
    budget = BufferBudget(ChunkSizer(16), chunks=8)
    for _ in range(30):
        budget.observe(records=1_200, interval_s=0.1, commit_s=0.03)  # 12k records/s
    # At half load a slow commit leaves 3,000 records waiting: more than one interval's
    # 1,200, but cleared within the stretched interval's 6,000 at this pace.
    assert not budget.backlogged(3_000, within_s=0.5)
    assert [budget.backlogged(6_100, within_s=0.5) for _ in range(BACKLOG_CHECKS)] == [
        *[False] * (BACKLOG_CHECKS - 1),
        True,  # only a queue that lasts
    ]
    assert budget.backlogged(6_100, within_s=0.5)  # and while it lasts
    assert not budget.backlogged(budget.records, within_s=0.0)  # within what the buffer holds


def test_a_queue_that_one_slow_commit_left_is_no_backlog() -> None:
    """Below saturation the queue a slow commit left shrinks from the next check on; it
    must not stretch the commits, which would hold every record back."""
    budget = BufferBudget(ChunkSizer(16), chunks=8)
    for _ in range(30):
        budget.observe(records=1_400, interval_s=0.1, commit_s=0.03)  # 14k records/s
    shrinking = [9_200, 7_800, 6_400, 5_000, 9_000, 7_600, 100]  # two slow commits
    assert not any(budget.backlogged(waiting, within_s=0.5) for waiting in shrinking)


def test_messages_become_records_and_errors_are_skipped_unless_fatal() -> None:
    intake = Intake(Consumer({"group.id": "intake-test"}))
    plain = Message(topic="in", partition=1, offset=7, key=b"k", value=b"v", timestamp=(1, 5))
    traced = Message(topic="in", partition=1, offset=8, value=b"w", headers=[("h", b"1")])
    transient = Message(error=KafkaError(KafkaError._TRANSPORT, "broker went away"))
    intake._take([plain, transient, traced])
    first, second = intake.take_batch()
    assert (first.key, first.value, first.headers) == (b"k", b"v", [])
    assert (first.source.topic, first.source.partition, first.source.offset) == ("in", 1, 7)
    assert first.source.timestamp == 5
    assert second.headers == [("h", b"1")] and second.source.timestamp is None
    fatal = Message(error=KafkaError(KafkaError._FENCED, "fenced", fatal=True))
    with pytest.raises(KafkaException):
        intake._take([fatal])


def _sizes_taken(sizer: ChunkSizer, chunks: int, seconds: Callable[[int], float]) -> list[int]:
    """The sizes of ``chunks`` chunks that each take what the sizer asks (a backlog)."""
    sizes = []
    for _ in range(chunks):
        sizes.append(sizer.size)
        sizer.observe(sizes[-1], seconds(sizes[-1]))
    return sizes
