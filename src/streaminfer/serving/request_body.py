"""A REST request's body: read in one piece when its length is declared, large ones within
a budget of bytes the server holds at once."""

from __future__ import annotations

import asyncio
from collections import deque

from aiohttp import StreamReader, web

from streaminfer.models.batcher import Overloaded

SMALL_BODY_BYTES = 1 << 20
"""Bodies up to this size skip the budget, so small requests never wait behind large ones."""


class BodyBudget:
    """Bytes of large request bodies that the server holds at once.

    A body and what is decoded from it live until its request is answered, and nothing
    bounded how many were read at once: eight 60 MB bodies took a server from 315 MB to
    1,164.  So a request whose body is larger than ``SMALL_BODY_BYTES`` reserves its
    declared length before a byte of it is read (a body of unknown length, the largest
    allowed once it has passed ``SMALL_BODY_BYTES``), and holds it until answered.  While
    others hold the budget it waits, first come first served, for at most twice
    ``timeout`` (429), long enough for the body ahead of it to arrive or be cut off.  Then
    its body must arrive within ``timeout`` (408): a client that trickles a large body
    holds its share that long only.
    """

    def __init__(self, total: int, timeout: float) -> None:
        self.total = total
        self.timeout = timeout
        self.held = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._reserved: dict[int, int] = {}  # id(request): bytes it holds

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def reserve(self, request: object, size: int) -> float | None:
        """Reserve ``size`` bytes for ``request``'s body (nothing for a small one), to be
        given back by ``release``; the event loop's time by which the body must be read."""
        if size <= SMALL_BODY_BYTES:
            return None
        size = min(size, self.total)
        await self._acquire(size)
        self._reserved[id(request)] = size
        return asyncio.get_running_loop().time() + self.timeout

    def release(self, request: object) -> None:
        """Give back what ``request`` reserved, if anything: it has been answered."""
        size = self._reserved.pop(id(request), 0)
        if size:
            self.held -= size
            self._grant()

    async def _acquire(self, size: int) -> None:
        if not self._waiting and self.held + size <= self.total:
            self.held += size
            return
        entry = (size, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        try:
            async with asyncio.timeout(2 * self.timeout):
                await entry[1]
        except BaseException as exc:
            if entry in self._waiting:
                self._waiting.remove(entry)
                self._grant()  # it may have been the one holding smaller bodies back
            elif entry[1].done() and not entry[1].cancelled():
                self.held -= size  # granted just as it gave up
                self._grant()
            if isinstance(exc, TimeoutError):
                raise Overloaded(
                    f"the server holds its limit of large request bodies "
                    f"({self.total >> 20} MiB, --body-memory-mb) and this one waited "
                    f"{2 * self.timeout:g} s for room; retry later"
                ) from None
            raise

    def _grant(self) -> None:
        while self._waiting and self.held + self._waiting[0][0] <= self.total:
            size, waiter = self._waiting.popleft()
            self.held += size
            waiter.set_result(None)


BODY_BUDGET = web.AppKey("body_budget", BodyBudget)


async def read_body(request: web.Request) -> bytes | bytearray:
    """The body, within the app's ``client_max_size`` (413 beyond) and its body budget.

    A declared length is read into a buffer of that size, chunk by chunk as they arrive:
    aiohttp's ``readexactly`` joins its chunks, then the blocks it awaited, holding the
    body twice and costing a 3 MB body 3.0-3.9 ms of the server's CPU against 0.8-1.3.
    """
    if not request.body_exists:
        return b""
    length = request.content_length
    if length is not None and request.headers.get("Content-Encoding", "identity") != "identity":
        length = None  # the declared length is the compressed one
    if length is not None and length > request.client_max_size:
        raise web.HTTPRequestEntityTooLarge(request.client_max_size, length)
    if length == 0:
        return b""
    budget = request.app[BODY_BUDGET]
    try:
        if length is None:
            return await _read_undeclared(request, budget)
        read_by = await budget.reserve(request, length)
        async with asyncio.timeout_at(read_by):
            return await _read_exactly(request.content, length)
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            text=f"the body did not arrive within {budget.timeout:g} s (--body-timeout)"
        ) from None


async def _read_exactly(content: StreamReader, length: int) -> bytearray:
    body = bytearray(length)
    view = memoryview(body)
    filled = 0
    while filled < length:
        chunk = await content.readany()  # never past the declared length: aiohttp stops there
        if not chunk:
            raise web.HTTPBadRequest(text="the body ended before its Content-Length")
        view[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
    return body


async def _read_undeclared(request: web.Request, budget: BodyBudget) -> bytes:
    """A chunked or compressed body, its length known only once read: its first
    ``SMALL_BODY_BYTES`` like a small body's, the rest once it has reserved the largest
    allowed, so that small chunked requests never wait for the budget."""
    limit = request.client_max_size
    chunks: list[bytes] = []
    size = 0
    read_by: float | None = None
    while True:
        async with asyncio.timeout_at(read_by):
            chunk = await request.content.readany()  # decompressed, for a compressed body
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise web.HTTPRequestEntityTooLarge(limit, size)
        chunks.append(chunk)
        if read_by is None and size > SMALL_BODY_BYTES:
            read_by = await budget.reserve(request, limit)
