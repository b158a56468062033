"""A REST request's body: read in one piece when its length is declared, within a budget
of bytes the server holds at once, which its answer holds in turn until it is written."""

from __future__ import annotations

import asyncio
from collections import deque

from aiohttp import StreamReader, web
from aiohttp.web_protocol import RequestPayloadError

from streaminfer.models.batcher import Overloaded

SMALL_BODY_BYTES = 1 << 20
"""Bodies up to this size have a pool of their own, so they never wait behind large ones."""


class _Pool:
    """Bytes handed out first come first served: one that does not fit waits, and so do
    all that come after it, so a run of smaller bodies cannot starve a larger one."""

    def __init__(self, total: int, described: str) -> None:
        self.total = total
        self.described = described  # for the 429: which limit was met
        self.held = 0
        self.waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, size: int, patience: float) -> None:
        if not self.waiting and self.held + size <= self.total:
            self.held += size
            return
        entry = (size, asyncio.get_running_loop().create_future())
        self.waiting.append(entry)
        try:
            async with asyncio.timeout(patience):
                await entry[1]
        except BaseException as exc:
            if entry in self.waiting:
                self.waiting.remove(entry)
                self.grant()  # it may have been the one holding smaller bodies back
            elif entry[1].done() and not entry[1].cancelled():
                self.give_back(size)  # granted just as it gave up
            if isinstance(exc, TimeoutError):
                raise Overloaded(
                    f"the server already holds {self.total >> 20} MiB of {self.described}, its "
                    f"limit, and this one waited {patience:g} s for room; retry later"
                ) from None
            raise

    def take(self, size: int) -> None:
        """Count ``size`` bytes at once, past the total if need be: they are held already."""
        self.held += size

    def give_back(self, size: int) -> None:
        self.held -= size
        self.grant()

    def grant(self) -> None:
        while self.waiting:
            size, waiter = self.waiting[0]
            if waiter.done():  # cancelled: its waiter has yet to run and take it out
                self.waiting.popleft()
                continue
            if self.held + size > self.total:
                return
            self.waiting.popleft()
            self.held += size
            waiter.set_result(None)


class BodyBudget:
    """Bytes of request bodies that the server holds at once.

    A body and what is decoded from it live until its request is answered, and nothing
    bounded how many were read at once: eight 60 MB bodies took a server from 315 MB to
    1,164, and 3,000 connections that each declared 1 MiB and sent one byte took one to
    3.2 GB.  So a request reserves its body's declared length before a byte of it is read
    (a body of unknown length: 1 MiB, then the largest allowed once it has passed that),
    and holds it until answered.  Bodies of up to ``SMALL_BODY_BYTES`` reserve from a pool
    of their own, half of ``total``, so that small requests never wait behind large
    ones.  A body that does not fit waits, first come first served, for at most twice
    ``timeout`` (429), long enough for the body ahead of it to arrive or be cut off.
    Then its body must arrive within ``timeout`` (408): a client that trickles a body
    holds its share that long only.

    The answer takes the body's place until it is written: twelve clients that sent 40 MB
    and never read their answers took a server to 1.4 GB, when the budget was given back
    as the handler returned.  An answer exists before it is counted, so it is counted at
    once, even past the budget, and the bodies after it wait; the REST app cuts off a
    client that does not take it within ``timeout``.
    """

    def __init__(self, total: int, timeout: float) -> None:
        self.timeout = timeout
        self.large = _Pool(total, "request bodies over 1 MiB (--body-memory-mb)")
        self.small = _Pool(
            max(total // 2, SMALL_BODY_BYTES),
            "bodies of up to 1 MiB (half of --body-memory-mb)",
        )
        self._reserved: dict[int, tuple[_Pool, int]] = {}  # id(request): where, how much

    @property
    def held(self) -> int:
        return self.large.held + self.small.held

    @property
    def waiting(self) -> int:
        return len(self.large.waiting) + len(self.small.waiting)

    async def reserve(self, request: object, size: int) -> float:
        """Reserve ``size`` bytes for ``request``'s body, in place of what it held, to be
        given back by ``release``; the event loop's time by which the body must be read."""
        self.release(request)
        pool = self.small if size <= SMALL_BODY_BYTES else self.large
        size = min(size, pool.total)
        await pool.acquire(size, 2 * self.timeout)
        self._reserved[id(request)] = pool, size
        return asyncio.get_running_loop().time() + self.timeout

    def hold_answer(self, request: object, size: int) -> None:
        """Hold ``size`` bytes for ``request``'s answer, in place of what its body held, to
        be given back by ``release`` once written."""
        self.release(request)
        pool = self.small if size <= SMALL_BODY_BYTES else self.large
        pool.take(size)
        self._reserved[id(request)] = pool, size

    def release(self, request: object) -> None:
        """Give back what ``request`` reserved, if anything: it has been answered."""
        reserved = self._reserved.pop(id(request), None)
        if reserved is not None:
            pool, size = reserved
            pool.give_back(size)


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
    except RequestPayloadError as exc:  # a compressed or chunked body that does not decode
        cause = getattr(exc.__cause__, "message", None) or str(exc)
        raise _closing_bad_request(f"the body cannot be read: {cause}") from None
    except ConnectionResetError:  # the client left mid-body: nobody to answer, nothing wrong
        raise _closing_bad_request("the connection was lost before the body arrived") from None


def _closing_bad_request(text: str) -> web.HTTPBadRequest:
    """A 400 that ends the connection: with its body half read, aiohttp ends it anyway,
    and the client is told so."""
    refused = web.HTTPBadRequest(text=text)
    refused.force_close()
    return refused


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
    """A chunked or compressed body, its length known only once read: up to
    ``SMALL_BODY_BYTES`` like a small body, past that once it has reserved the largest
    allowed, so that small chunked requests never wait behind large bodies."""
    limit = request.client_max_size
    chunks: list[bytes] = []
    size = 0
    read_by = await budget.reserve(request, min(limit, SMALL_BODY_BYTES))
    while True:
        async with asyncio.timeout_at(read_by):
            chunk = await request.content.readany()  # decompressed, for a compressed body
        if not chunk:
            return b"".join(chunks)
        grown = size + len(chunk)
        if grown > limit:
            raise web.HTTPRequestEntityTooLarge(limit, grown)
        chunks.append(chunk)
        if size <= SMALL_BODY_BYTES < grown:
            read_by = await budget.reserve(request, limit)
        size = grown
