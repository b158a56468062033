"""``read_body`` over real HTTP: declared, chunked and compressed bodies, the size bound,
and a body cut short."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from streaminfer.models.batcher import Overloaded
from streaminfer.serving.request_body import BODY_BUDGET, SMALL_BODY_BYTES, BodyBudget, read_body

LIMIT = 1000


async def _echo(request: web.Request) -> web.Response:
    return web.Response(body=await read_body(request))


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    """``data`` sent chunked, ``size`` bytes a chunk."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _with_server(
    test: Callable[[TestServer], Awaitable[None]],
    limit: int = LIMIT,
    budget: BodyBudget | None = None,
) -> None:
    """``test`` against a server of ``_echo`` (by default its bodies all small), giving
    back what a body reserved once it is answered, as the model server's middleware does."""

    @web.middleware
    async def release(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            bodies.release(request)

    bodies = budget or BodyBudget(limit, timeout=5)

    async def run() -> None:
        app = web.Application(client_max_size=limit, middlewares=[release])
        app[BODY_BUDGET] = bodies
        app.router.add_post("/", _echo)
        async with TestServer(app, host="127.0.0.1") as server:
            await test(server)

    asyncio.run(run())


def test_a_declared_length_is_read_whole_and_bounded() -> None:
    async def test(server: TestServer) -> None:
        async with aiohttp.ClientSession() as session:
            for body in (bytes(range(256)) * 3, b""):
                async with session.post(server.make_url("/"), data=body) as reply:
                    assert reply.status == 200 and await reply.read() == body
            async with session.post(server.make_url("/"), data=b"x" * (LIMIT + 1)) as reply:
                assert reply.status == 413

    _with_server(test)


def test_chunked_and_compressed_bodies_are_read_as_sent() -> None:
    async def test(server: TestServer) -> None:
        body = b"0123456789" * 90
        async with aiohttp.ClientSession() as session:
            async with session.post(server.make_url("/"), data=_chunks(body, 100)) as reply:
                assert reply.status == 200 and await reply.read() == body
            async with session.post(server.make_url("/"), data=_chunks(body * 2, 100)) as reply:
                assert reply.status == 413  # chunked past the bound
            packed = gzip.compress(body)
            assert len(packed) < len(body)  # its Content-Length is not the body's length
            headers = {"Content-Encoding": "gzip"}
            async with session.post(server.make_url("/"), data=packed, headers=headers) as reply:
                assert reply.status == 200 and await reply.read() == body

    _with_server(test)


def test_a_body_that_does_not_decompress_is_the_clients_fault() -> None:
    """It was answered 500, as if the server had failed."""

    async def test(server: TestServer) -> None:
        async with aiohttp.ClientSession() as session:
            for encoding in ("gzip", "deflate"):
                headers = {"Content-Encoding": encoding}
                async with session.post(
                    server.make_url("/"), data=b"not compressed", headers=headers
                ) as reply:
                    assert reply.status == 400, await reply.text()
                    assert "the body cannot be read" in await reply.text()

    _with_server(test)


def test_a_body_cut_short_leaves_the_server_answering() -> None:
    async def test(server: TestServer) -> None:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"y" * 10)
        await writer.drain()
        writer.write_eof()
        await reader.read()  # the server closes the connection, whatever it answers
        writer.close()
        async with (
            aiohttp.ClientSession() as session,
            session.post(server.make_url("/"), data=b"next") as reply,
        ):
            assert reply.status == 200 and await reply.read() == b"next"

    _with_server(test)


# -- the budget of large bodies --------------------------------------------------------------
MIB = 1 << 20


def test_small_bodies_have_a_pool_of_their_own_and_every_body_a_deadline() -> None:
    async def test() -> None:
        budget = BodyBudget(4 * MIB, timeout=5)
        assert budget.small.total == 2 * MIB  # half the budget of large bodies
        now = asyncio.get_running_loop().time()
        read_by = await budget.reserve("whole", 4 * MIB)
        assert now + 5 <= read_by < now + 6
        read_by = await budget.reserve("small", SMALL_BODY_BYTES)  # large bodies are full
        assert now + 5 <= read_by < now + 6
        assert budget.held == 5 * MIB
        await budget.reserve("small too", SMALL_BODY_BYTES)
        third = asyncio.create_task(budget.reserve("third", 1))  # small ones are full too
        await asyncio.sleep(0)
        assert budget.waiting == 1 and not third.done()
        budget.release("small")
        await third
        for name in ("whole", "small too", "third", "never reserved"):
            budget.release(name)
        assert budget.held == 0 and budget.waiting == 0

    asyncio.run(test())


def test_small_bodies_wait_at_most_twice_the_timeout_for_their_pool() -> None:
    """3,000 connections that declared 1 MiB each and sent a byte took a server to 3.2 GB:
    now the first ones hold the small bodies' pool and the rest wait, then give up."""

    async def test() -> None:
        budget = BodyBudget(4 * MIB, timeout=0.05)
        await budget.reserve("a", SMALL_BODY_BYTES)
        await budget.reserve("b", SMALL_BODY_BYTES)
        with pytest.raises(Overloaded, match=r"2 MiB of bodies of up to 1 MiB .* retry later"):
            await budget.reserve("c", 10)
        assert budget.held == 2 * MIB and budget.waiting == 0

    asyncio.run(test())


def test_bodies_wait_their_turn_first_come_first_served() -> None:
    """A smaller body that would fit waits behind a larger one that came first, so a
    stream of small large bodies cannot starve a large one."""

    async def test() -> None:
        budget = BodyBudget(10 * MIB, timeout=5)
        await budget.reserve("a", 8 * MIB)
        order: list[str] = []

        async def take(name: str, size: int) -> None:
            await budget.reserve(name, size)
            order.append(name)

        b = asyncio.create_task(take("b", 4 * MIB))
        c = asyncio.create_task(take("c", 2 * MIB))
        await asyncio.sleep(0)  # let both ask
        assert budget.waiting == 2 and order == []
        budget.release("a")
        await asyncio.gather(b, c)
        assert order == ["b", "c"] and budget.held == 6 * MIB and budget.waiting == 0

    asyncio.run(test())


def test_a_body_larger_than_the_budget_waits_for_all_of_it() -> None:
    async def test() -> None:
        budget = BodyBudget(4 * MIB, timeout=5)
        await budget.reserve("a", 2 * MIB)
        huge = asyncio.create_task(budget.reserve("huge", 64 * MIB))
        await asyncio.sleep(0)
        assert budget.waiting == 1
        budget.release("a")
        await huge
        assert budget.held == 4 * MIB  # the whole budget, no more

    asyncio.run(test())


def test_a_body_gives_up_after_twice_the_timeout_and_the_one_behind_goes_ahead() -> None:
    async def test() -> None:
        budget = BodyBudget(4 * MIB, timeout=0.05)
        await budget.reserve("a", 2 * MIB)
        head = asyncio.create_task(budget.reserve("b", 4 * MIB))  # "a" never lets go
        await asyncio.sleep(0.02)  # so that "c" gives up later than "b"
        behind = asyncio.create_task(budget.reserve("c", 2 * MIB))  # fits, but came later
        await asyncio.sleep(0)
        assert budget.waiting == 2
        with pytest.raises(Overloaded, match="retry later"):
            await head
        await behind
        assert budget.held == 4 * MIB and budget.waiting == 0

    asyncio.run(test())


@pytest.mark.parametrize("released", [False, True])
def test_a_cancelled_waiter_lets_the_ones_behind_it_through(released: bool) -> None:
    """A client that goes away while its body waits leaves the queue; had it been at the
    head, the smaller body behind it would otherwise wait for nothing.  Its future is
    cancelled at once, but it leaves the queue only when its task runs again: a release
    in between (``released``) must pass it over, not grant it (which raised
    InvalidStateError, and answered 500, when many bodies timed out at once)."""

    async def test() -> None:
        budget = BodyBudget(10 * MIB, timeout=5)
        await budget.reserve("a", 8 * MIB)
        head = asyncio.create_task(budget.reserve("b", 4 * MIB))
        behind = asyncio.create_task(budget.reserve("c", 2 * MIB))
        await asyncio.sleep(0)
        head.cancel()
        if released:
            budget.release("a")
        await behind
        held = 2 * MIB if released else 10 * MIB
        assert head.cancelled() and budget.held == held and budget.waiting == 0

    asyncio.run(test())


def test_a_waiter_granted_as_it_is_cancelled_gives_its_share_back() -> None:
    async def test() -> None:
        budget = BodyBudget(4 * MIB, timeout=5)
        await budget.reserve("a", 4 * MIB)
        waiter = asyncio.create_task(budget.reserve("b", 4 * MIB))
        await asyncio.sleep(0)
        budget.release("a")  # grants "b" ...
        waiter.cancel()  # ... which is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert budget.held == 0 and budget.waiting == 0

    asyncio.run(test())


def test_a_chunked_body_waits_for_the_budget_only_past_its_first_mib() -> None:
    """Its length unknown, a chunked body is read like a small one up to 1 MiB, so small
    chunked requests go on while the budget is full; past that it reserves the largest
    body allowed, and waits for it."""
    budget = BodyBudget(4 * MIB, timeout=5)

    async def test(server: TestServer) -> None:
        await budget.reserve("another", 4 * MIB)  # the whole budget
        async with aiohttp.ClientSession() as session:
            small = bytes(range(256)) * 400
            async with session.post(server.make_url("/"), data=_chunks(small, 64 * 1024)) as reply:
                assert reply.status == 200 and await reply.read() == small

            large = bytes(range(256)) * 8192  # 2 MiB

            async def post_large() -> bytes:
                chunked = _chunks(large, 64 * 1024)
                async with session.post(server.make_url("/"), data=chunked) as reply:
                    assert reply.status == 200
                    return await reply.read()

            sending = asyncio.create_task(post_large())
            async with asyncio.timeout(10):  # the large body comes to wait for the budget
                while budget.waiting == 0:
                    await asyncio.sleep(0.01)
            assert not sending.done()
            budget.release("another")
            assert await sending == large
            assert budget.held == 0 and budget.waiting == 0

    _with_server(test, limit=4 * MIB, budget=budget)
