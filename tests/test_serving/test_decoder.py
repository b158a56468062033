"""The decoder process: results and errors come back, a dead one is replaced, and one
body's freed memory serves the next instead of being faulted in again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from streaminfer.codecs.errors import DecodeError
from streaminfer.codecs.jsonvalues import loads_tensors
from streaminfer.serving.decoder import BodyDecoder
from streaminfer.serving.errors import Unavailable
from tests.support import wait_for

IMAGE = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
BODY = json.dumps({"instances": IMAGE.tolist()}).encode()  # 3 MB, as a REST client sends it


def _minor_faults(pid: int) -> int:
    """Pages the process has faulted in (field 10 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[7])


def _pid(decoder: BodyDecoder) -> int:
    assert decoder._process is not None and decoder._process.pid is not None
    return decoder._process.pid


def test_results_and_errors_come_back() -> None:
    async def run() -> None:
        decoder = BodyDecoder()
        try:
            read = await decoder.decode(loads_tensors, BODY)
            np.testing.assert_array_equal(read["instances"], IMAGE)
            with pytest.raises(DecodeError, match="not valid JSON"):
                await decoder.decode(loads_tensors, b'{"instances": [1.5,')
        finally:
            decoder.close()

    asyncio.run(run())


def _arrays(body: bytes) -> dict[str, np.ndarray]:
    """In the decoder: an answer of several out-of-band buffers, one of them empty."""
    return {"bytes": np.frombuffer(body, np.uint8), "empty": np.empty(0), "image": IMAGE}


def test_every_part_of_a_message_arrives_whole() -> None:
    """Bodies and answers of any size, empty ones too, each read as one whole part."""

    async def run() -> None:
        decoder = BodyDecoder()
        try:
            for body in (b"", b"x", BODY, BODY * 3):
                answer = await decoder.decode(_arrays, body)
                assert answer["bytes"].tobytes() == body
                assert answer["empty"].size == 0
                np.testing.assert_array_equal(answer["image"], IMAGE)
        finally:
            decoder.close()

    asyncio.run(run())


def test_a_killed_decoder_fails_its_body_and_is_replaced() -> None:
    async def run() -> None:
        decoder = BodyDecoder()
        try:
            assert await decoder.decode(len, b"x") == 1
            os.kill(_pid(decoder), signal.SIGKILL)
            with pytest.raises(Unavailable, match="died"):
                await decoder.decode(len, BODY)
            assert await decoder.decode(len, BODY) == len(BODY)
        finally:
            decoder.close()

    asyncio.run(run())


def test_close_stops_the_process_and_its_thread() -> None:
    async def run() -> None:
        decoder = BodyDecoder()
        assert await decoder.decode(len, b"x") == 1
        process = decoder._process
        assert process is not None and _socket_threads()
        decoder.close()
        assert not process.is_alive()
        wait_for(lambda: not _socket_threads(), 10, "the decoder's socket thread to end")

    asyncio.run(run())


def _socket_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("decoder-socket")]


def test_each_body_reuses_the_memory_the_last_one_freed() -> None:
    """By default glibc maps every multi-megabyte block fresh and unmaps it when freed,
    so each 3 MB body would fault in about 13 MB (3,300 pages) again.  Kept, the blocks
    one body freed (its own, read whole into one, and simdjson's) serve the next."""

    async def run() -> list[int]:
        decoder = BodyDecoder()
        try:
            faults = []
            for _ in range(12):
                before = _minor_faults(_pid(decoder)) if decoder._process else 0
                await decoder.decode(loads_tensors, BODY)
                faults.append(_minor_faults(_pid(decoder)) - before)
            return faults
        finally:
            decoder.close()

    faults = asyncio.run(run())
    assert sum(faults[2:]) / len(faults[2:]) < 1500, faults  # under half of those pages


def _gated_len(body: bytes, started: str, gate: str) -> int:
    """In the decoder: say the parse began, then hold it until the test opens the gate."""
    Path(started).touch()
    while not Path(gate).exists():
        time.sleep(0.01)
    return len(body)


def test_a_cancelled_body_keeps_the_socket_until_its_answer_is_read(tmp_path: Path) -> None:
    """A request cancelled mid-exchange (its client gone) must not let the next body onto
    the socket while its answer is still coming: the two would read each other's results.
    Until it ends, it counts among the decoder's bodies."""
    started, gate = tmp_path / "started", tmp_path / "gate"
    events: list[str] = []

    async def run() -> int:
        decoder = BodyDecoder()
        exchange = decoder._exchange

        def spied(parse: object, body: bytes, args: tuple[object, ...]) -> object:
            events.append(f"begin {len(body)}")
            try:
                return exchange(parse, body, args)  # type: ignore[arg-type]
            finally:
                events.append(f"end {len(body)}")

        decoder._exchange = spied  # type: ignore[method-assign]
        try:
            first = asyncio.create_task(
                decoder.decode(_gated_len, b"first", str(started), str(gate))
            )
            await asyncio.to_thread(wait_for, started.exists, 30)
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            assert decoder.bodies == 1
            second = asyncio.create_task(decoder.decode(len, b"second body"))
            # the second body is queued behind the first, or (the fault) already on the socket
            await asyncio.to_thread(
                wait_for, lambda: decoder._exchanges._work_queue.qsize() or len(events) > 1, 30
            )
            assert decoder.bodies == 2
            gate.touch()
            answer = await second
            assert decoder.bodies == 0
            return answer
        finally:
            decoder.close()

    assert asyncio.run(run()) == len(b"second body")
    assert events == ["begin 5", "end 5", "begin 11", "end 11"]
