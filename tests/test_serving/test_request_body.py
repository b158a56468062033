"""``read_body`` over real HTTP: declared, chunked and compressed bodies, the size bound,
and a body cut short."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from streaminfer.serving.request_body import read_body

LIMIT = 1000


async def _echo(request: web.Request) -> web.Response:
    return web.Response(body=await read_body(request))


def _with_server(test: Callable[[TestServer], Awaitable[None]]) -> None:
    async def run() -> None:
        app = web.Application(client_max_size=LIMIT)
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
    async def chunks(data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), 100):
            yield data[start : start + 100]

    async def test(server: TestServer) -> None:
        body = b"0123456789" * 90
        async with aiohttp.ClientSession() as session:
            async with session.post(server.make_url("/"), data=chunks(body)) as reply:
                assert reply.status == 200 and await reply.read() == body
            async with session.post(server.make_url("/"), data=chunks(body * 2)) as reply:
                assert reply.status == 413  # chunked past the bound
            packed = gzip.compress(body)
            assert len(packed) < len(body)  # its Content-Length is not the body's length
            headers = {"Content-Encoding": "gzip"}
            async with session.post(server.make_url("/"), data=packed, headers=headers) as reply:
                assert reply.status == 200 and await reply.read() == body

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
