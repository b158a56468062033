"""The decoder process: large request bodies are parsed outside the server's process.

Parsing megabytes of JSON holds the GIL for a second and costs several times the body
in Python objects; done in the server, it would stall every other request (health
checks too) and swell the server's memory.  ``BodyDecoder`` hands such a body to one
spawned process, one body at a time, and gets the parsed result back.  Nothing big is
copied on the way: the body goes down a socket from its own buffer, arrays come back as
pickle protocol 5 out-of-band buffers, and each side reads a message's parts straight
into objects of their final size, used as they are.  (``multiprocessing``'s
``Connection`` read a 3 MB body in pipe-sized chunks, each into a fresh block, then
copied them together: 3 ms of the decoder's CPU a body, more than the transfer.)

A parser must be a module-level function (it is sent by reference) whose result and
exceptions pickle.  A decoder that dies is replaced at the next body; the body it was
parsing fails with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from streaminfer.allocator import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, mallopt
from streaminfer.codecs.errors import DecodeError
from streaminfer.serving.errors import Unavailable

T = TypeVar("T")
STOP_TIMEOUT = 5.0
# glibc's allocator parameters the decoder sets.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20
_COUNT = struct.Struct("!Q")
Part = bytes | bytearray | memoryview


class BodyDecoder:
    def __init__(self) -> None:
        # One body at a time, a bound on the decoder's memory, on one thread: a request
        # cancelled mid-exchange (its client gone) leaves its exchange to finish there,
        # and the next body waits for it, so no two exchanges ever share the socket.
        self._exchanges = ThreadPoolExecutor(1, thread_name_prefix="decoder-socket")
        self._process: BaseProcess | None = None
        self._connection: socket.socket | None = None
        self._bodies = 0
        self._bodies_lock = threading.Lock()  # counted up on the loop, down on the thread

    @property
    def bodies(self) -> int:
        """Bodies in the decoder process or waiting for it, cancelled requests' included."""
        return self._bodies

    async def decode(self, parse: Callable[..., T], body: bytes | bytearray, *args: Any) -> T:
        """``parse(body, *args)``, run in the decoder process; its exceptions are re-raised."""
        self._count_bodies(1)
        exchange = self._exchanges.submit(self._exchange, parse, body, args)
        exchange.add_done_callback(lambda _: self._count_bodies(-1))
        ok, result = await asyncio.wrap_future(exchange)
        if not ok:
            raise result
        return result  # type: ignore[no-any-return]

    def _count_bodies(self, change: int) -> None:
        with self._bodies_lock:
            self._bodies += change

    def _exchange(
        self, parse: Callable[..., Any], body: bytes | bytearray, args: tuple[Any, ...]
    ) -> Any:
        connection = self._connect()
        try:
            _send(connection, [pickle.dumps((parse, args)), body])
            header, *buffers = _receive(connection)
        except (EOFError, OSError) as exc:
            self._stop_process()  # the next body starts a new one
            raise Unavailable("the request decoder process died; try again") from exc
        return pickle.loads(header, buffers=buffers)

    def _connect(self) -> socket.socket:
        if self._connection is None:
            # Spawned, not forked: a fork would copy a process whose gRPC and runtime
            # threads may hold locks.
            context = multiprocessing.get_context("spawn")
            ours, theirs = socket.socketpair()
            self._process = context.Process(
                target=_serve, args=(theirs,), name="streaminfer-decoder", daemon=True
            )
            self._process.start()
            theirs.close()
            self._connection = ours
        return self._connection

    def close(self) -> None:
        """Stop the decoder process, and the thread that talks to it."""
        self._stop_process()
        self._exchanges.shutdown(wait=False, cancel_futures=True)

    def _stop_process(self) -> None:
        """The decoder process ends when its socket closes; killed if it does not."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._process is not None:
            self._process.join(STOP_TIMEOUT)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
            self._process = None


def _serve(connection: socket.socket) -> None:
    """The decoder process: parse each body sent, answer with the result or the exception."""
    _keep_freed_memory()
    while True:
        try:
            call, body = _receive(connection)
        except (EOFError, OSError):  # the server closed its end, or is gone
            return
        parse, args = pickle.loads(call)
        try:
            answer: tuple[bool, Any] = (True, parse(body, *args))
        except Exception as exc:
            answer = (False, exc)
        del body
        buffers: list[pickle.PickleBuffer] = []
        try:
            header = pickle.dumps(answer, protocol=5, buffer_callback=buffers.append)
        except Exception as exc:  # nested past pickle's depth, or an exception that won't go
            buffers.clear()
            failure: Exception = (
                DecodeError(f"the request is nested too deeply to decode ({exc})")
                if answer[0]
                else RuntimeError(f"{type(answer[1]).__name__}: {exc}")
            )
            header = pickle.dumps((False, failure), protocol=5)
        _send(connection, [header, *(buffer.raw() for buffer in buffers)])


def _send(connection: socket.socket, parts: Sequence[Part]) -> None:
    """A message: its part count and their lengths, then the parts as they are."""
    lengths = [len(part) for part in parts]  # a PickleBuffer's raw() is a flat view of bytes
    connection.sendall(struct.pack(f"!{1 + len(parts)}Q", len(parts), *lengths))
    for part in parts:
        connection.sendall(part)


def _receive(connection: socket.socket) -> list[bytes]:
    """The parts of the next message; EOFError if the other end has closed."""
    (count,) = _COUNT.unpack(_exactly(connection, _COUNT.size))
    lengths = struct.unpack(f"!{count}Q", _exactly(connection, _COUNT.size * count))
    return [_exactly(connection, length) for length in lengths]


def _exactly(connection: socket.socket, size: int) -> bytes:
    """``size`` bytes, read into one object of that size (unless a signal splits the read:
    joining a single part returns that part itself, not a copy)."""
    parts: list[bytes] = []
    received = 0
    while received < size:
        part = connection.recv(size - received, socket.MSG_WAITALL)
        if not part:
            raise EOFError("the other end closed the socket")
        parts.append(part)
        received += len(part)
    return b"".join(parts)


def _keep_freed_memory() -> None:
    """Let glibc keep the megabytes one body frees for the next one.

    By default each block of more than a few hundred kilobytes (a body, simdjson's
    tape, an array) is mapped fresh and handed back when freed, so every body faults
    its ~13 MB in again: 5 of the 8 ms a 3 MB body took.  Blocks under 32 MB now come
    from the heap, and up to 64 MB of free heap is kept.  Without glibc, nothing changes.
    """
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
