"""Dynamic batching: concurrent single requests coalesce into one batched model run.

Callers submit tensors whose first axis is their own batch (often 1).  A runner thread
takes the first waiting request and those queued behind it, up to ``max_batch_size``
rows (or ``merge_bytes`` of inputs), waiting up to ``max_batch_delay_ms`` for more (by
default not at all), runs the model once, and hands every caller its own slice of the
outputs.
With several runners, one batch runs while the next is gathered, and the batches running
at once hold ``max_batch_size`` rows between them.  Requests whose non-batch shapes
differ are never mixed in one run, and a request of more than ``max_batch_size`` rows
is run in slices of at most that many, so a large request costs the runtime no more
memory than a full batch does; unless ``slice_bytes`` lets small rows make larger
slices (at once, or growing while their runs stay short: ``slice_grow_ms``).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, Field

from streaminfer.errors import InfrastructureError
from streaminfer.types import Tensors, joined_rows, row_slices


class BatchingConfig(BaseModel):
    enabled: bool = True
    max_batch_size: int = Field(default=16, ge=1)
    # No wait by default, as in Triton's dynamic batcher: under load requests queue while
    # a batch runs, so batches fill by themselves; a wait only delays a lone request
    # (README: "Batching without waiting").
    max_batch_delay_ms: float = Field(default=0.0, ge=0)
    max_queue: int = Field(default=1024, ge=1)  # waiting requests before callers are refused
    runners: int = Field(default=1, ge=1)  # threads running the model at once
    # A request over max_batch_size rows is cut into slices of that many, a server's bound
    # on a model run.  With slice_bytes, a slice holds as many rows as fit in that much
    # input, never fewer: for a stream worker, whose micro-batches are bounded by time
    # already, 1,024 rows of a tiny model make one run instead of 64 (0.07 ms against
    # 2.49), while images still run 16 at a time.
    slice_bytes: int | None = Field(default=None, ge=1)
    # How slices grow past max_batch_size rows.  None: at once, to slice_bytes (a stream
    # worker, whose micro-batches are bounded by time already).  A number (a server, whose
    # requests come in any size): the slices of each input shape start at max_batch_size
    # rows, double after a run of that many took less than this many ms, and halve after
    # any run took four times as long (not twice: a run's time includes waiting for
    # the GIL, up to the 5 ms switch interval).  A run that short writes a few tens of
    # megabytes at most, so a model with small rows but large activations (a transformer
    # reading token ids) stays near max_batch_size, while a tiny model's 1,024-row
    # request soon runs in one go.
    slice_grow_ms: float | None = Field(default=None, gt=0)
    # Rows bound a batch of small rows; this bounds one of large rows: 4,096 merged rows
    # of a 1 MB tensor would be 4 GB.  The first request is always taken whole.
    merge_bytes: int = Field(default=64 << 20, ge=1)


SLICE_BYTES = 4 << 20
"""The input a slice of small rows may hold, in a stream worker and (growing) in a server."""
WORKER_BATCHING = BatchingConfig(slice_bytes=SLICE_BYTES)
"""How a stream worker's embedded models batch: a micro-batch in slices of 4 MB of input."""


class Overloaded(InfrastructureError):
    """The batch queue is full: the caller should back off (HTTP 429 / RESOURCE_EXHAUSTED)."""


Key = tuple[tuple[str, tuple[int, ...], str], ...]
"""Inputs' names, shapes past the batch axis and dtypes: requests with one key can merge."""
_SLICE_SHAPES = 64  # input shapes whose grown slice rows are remembered


def _key(inputs: Tensors) -> Key:
    return tuple(sorted((n, a.shape[1:], a.dtype.str) for n, a in inputs.items()))


@dataclass
class _Request:
    inputs: Tensors
    rows: int
    key: Key
    nbytes: int
    future: Future[Tensors] = field(default_factory=Future)
    last: bool = True  # the last slice of its caller's request: once taken, it waits no more


_STOP = object()


class DynamicBatcher:
    def __init__(
        self,
        run: Callable[[Tensors], Tensors],
        config: BatchingConfig,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._run = run
        self.config = config
        self._on_batch = on_batch
        self._queue: queue.Queue[_Request | object] = queue.Queue()
        self._held: _Request | None = None  # a request that did not fit the previous batch
        self._lock = threading.Lock()  # one runner gathers at a time
        self._running_rows = 0  # rows of the batches running now
        self._room = threading.Condition()  # guards _running_rows
        self._closing = threading.Lock()  # orders submissions against close()
        self._closed = False
        self._waiting = 0  # callers' requests with a slice still queued (max_queue)
        self._waiting_lock = threading.Lock()
        self._slice_limits: OrderedDict[Key, int] = OrderedDict()  # rows, where grown
        self._slice_limits_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._loop, name=f"batcher-{i}", daemon=True)
            for i in range(config.runners)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queue_depth(self) -> int:
        """Callers' requests waiting, however many slices each was cut into."""
        return self._waiting

    def submit(self, inputs: Tensors) -> list[Future[Tensors]]:
        """Queue ``inputs`` in slices (of ``max_batch_size`` rows, unless ``slice_bytes``
        lets small rows make more); a future per slice.

        ``max_queue`` counts requests waiting, not slices: a request too large for one
        batch is cut, and all its slices are queued, or none when the queue is full.
        """
        key = _key(inputs)  # its slices' too: they differ only along the batch axis
        slices = [
            self._slice(part, key) for part in row_slices(inputs, self._slice_rows(inputs, key))
        ]
        for piece in slices[:-1]:
            piece.last = False
        with self._closing:  # close() cannot come between the check and the puts
            if not self._closed:
                with self._waiting_lock:
                    if self._waiting >= self.config.max_queue:
                        raise Overloaded(
                            f"more than {self.config.max_queue} requests waiting for this model"
                        )
                    self._waiting += 1
                for piece in slices:
                    self._queue.put(piece)
                return [piece.future for piece in slices]
        for piece in slices:  # unloading: late callers get unbatched answers
            piece.future.set_result(self._run(piece.inputs))
        return [piece.future for piece in slices]

    def _slice_rows(self, inputs: Tensors, key: Key) -> int:
        rows = self.config.max_batch_size
        if self.config.slice_bytes is None:
            return rows
        row_bytes = sum(a.nbytes // a.shape[0] for a in inputs.values() if a.ndim and a.shape[0])
        most = max(rows, self.config.slice_bytes // max(1, row_bytes))
        if self.config.slice_grow_ms is None:
            return most
        return min(most, self._slice_limits.get(key, rows))

    def _learn_slice_rows(self, key: Key, rows: int, seconds: float) -> None:
        """Double the rows a slice of this shape may hold after a fast run of that many,
        halve them after a slow one (never below ``max_batch_size``)."""
        fast_ms = self.config.slice_grow_ms
        if fast_ms is None or self.config.slice_bytes is None:
            return
        floor = self.config.max_batch_size
        with self._slice_limits_lock:
            limit = self._slice_limits.pop(key, floor)
            if rows >= limit and seconds * 1000 < fast_ms:
                limit *= 2
            elif seconds * 1000 > 4 * fast_ms:
                limit = max(floor, limit // 2)
            if limit > floor:
                self._slice_limits[key] = limit  # the newest last
            # Bounded: a client sending ever new shapes only evicts the oldest.
            if len(self._slice_limits) > _SLICE_SHAPES:
                self._slice_limits.popitem(last=False)

    @staticmethod
    def _slice(inputs: Tensors, key: Key) -> _Request:
        rows = {a.shape[0] for a in inputs.values()}
        if len(rows) != 1:
            raise ValueError("all inputs of one request must have the same batch size")
        return _Request(inputs, rows.pop(), key, sum(a.nbytes for a in inputs.values()))

    def _taken(self, request: _Request) -> _Request:
        """``request``, off the queue into a batch: its caller's request waits no more if it
        was the last slice."""
        if request.last:
            with self._waiting_lock:
                self._waiting -= 1
        return request

    def infer(self, inputs: Tensors, timeout: float | None = None) -> Tensors:
        return joined_rows([part.result(timeout) for part in self.submit(inputs)])

    async def infer_async(self, inputs: Tensors) -> Tensors:
        return joined_rows(await asyncio.gather(*map(asyncio.wrap_future, self.submit(inputs))))

    def close(self) -> None:
        """Finish what is queued, then stop the runner threads."""
        with self._closing:  # no request is queued after this, so the stop marks follow them all
            self._closed = True
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join()

    def _loop(self) -> None:
        while True:
            batch = self._gather()
            if batch is None:
                return
            try:
                self._execute(batch)
            finally:
                with self._room:
                    self._running_rows -= sum(r.rows for r in batch)
                    self._room.notify_all()

    def _gather(self) -> list[_Request] | None:
        with self._lock:  # one runner gathers at a time, so batches fill up
            first = self._held or self._queue.get()
            self._held = None
            if first is _STOP:
                return None
            assert isinstance(first, _Request)
            # Batches running at once hold max_batch_size rows between them, so that more
            # runners never take more memory than one full batch; a batch may start
            # alone whatever its size.
            limit = self.config.max_batch_size
            with self._room:
                self._room.wait_for(
                    lambda: not self._running_rows or self._running_rows + first.rows <= limit
                )
                room = limit - self._running_rows
            batch, rows, nbytes = [self._taken(first)], first.rows, first.nbytes
            deadline = time.monotonic() + self.config.max_batch_delay_ms / 1000
            while rows < room:
                remaining = deadline - time.monotonic()
                try:
                    item = (
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else (self._queue.get_nowait())
                    )
                except queue.Empty:
                    break
                if item is _STOP:
                    self._queue.put(_STOP)
                    break
                assert isinstance(item, _Request)
                if (
                    item.key != first.key
                    or rows + item.rows > room
                    or nbytes + item.nbytes > self.config.merge_bytes
                ):
                    self._held = item
                    break
                batch.append(self._taken(item))
                rows += item.rows
                nbytes += item.nbytes
            with self._room:  # before the next runner gathers: it sees these rows running
                self._running_rows += rows
            return batch

    def _execute(self, batch: list[_Request]) -> None:
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            if len(live) == 1:
                inputs = live[0].inputs
            else:
                names = live[0].inputs.keys()
                inputs = {n: np.concatenate([r.inputs[n] for r in live]) for n in names}
            started = time.perf_counter()
            outputs = self._run(inputs)
            ran = time.perf_counter() - started
        except BaseException as exc:  # every caller must hear about the failure
            for request in live:
                request.future.set_exception(exc)
            return
        rows = sum(r.rows for r in live)
        self._learn_slice_rows(live[0].key, rows, ran)
        if self._on_batch is not None:
            self._on_batch(rows)
        start = 0
        for request in live:
            end = start + request.rows
            request.future.set_result({n: v[start:end] for n, v in outputs.items()})
            start = end
