"""Test helpers: the fake server over memory streams, and a tiny scripted server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio
import trio.testing

from trio_sendmail import Session, TLSMode, open_session
from trio_sendmail.testing import FakeSMTPServer, TestCertificates

HOST = "mail.example.test"
CLIENT_NAME = "client.example.test"
PASSWORD = "s3cret-Pa55word!"
USERS = {"alice": PASSWORD}


@asynccontextmanager
async def fake_session(
    server: FakeSMTPServer,
    certs: TestCertificates,
    *,
    tls: TLSMode = TLSMode.STARTTLS,
    **kwargs: Any,
) -> AsyncIterator[Session]:
    """An open_session() talking to *server* over an in-memory stream pair."""
    client, srv = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(server.handle_stream, srv, implicit_tls=tls is TLSMode.IMPLICIT)
        )
        kwargs.setdefault("domain", CLIENT_NAME)
        kwargs.setdefault("ssl_context", certs.client_context)
        async with open_session(HOST, tls=tls, stream=client, **kwargs) as session:
            yield session


ServerScript = Callable[["RawServer"], Awaitable[None]]


class RawServer:
    """The server side of a memory stream, driven line by line by a test."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.received: list[bytes] = []

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            data = await self.stream.receive_some()
            if not data:
                raise EOFError
            self.buffer += data
        end = self.buffer.index(b"\r\n") + 2
        line = bytes(self.buffer[:end])
        del self.buffer[:end]
        self.received.append(line)
        return line

    async def expect(self, prefix: bytes, reply: bytes) -> bytes:
        line = await self.line()
        assert line.startswith(prefix), (line, prefix)
        if reply:
            await self.send(reply)
        return line

    async def data(self) -> bytes:
        """Read message data up to and including the end-of-data line."""
        while True:
            if self.buffer.startswith(b".\r\n"):
                end = 3
                break
            index = self.buffer.find(b"\r\n.\r\n")
            if index >= 0:
                end = index + 5
                break
            chunk = await self.stream.receive_some()
            if not chunk:
                raise EOFError
            self.buffer += chunk
        data = bytes(self.buffer[:end])
        del self.buffer[:end]
        return data

    async def greet_and_ehlo(self, ehlo: bytes = b"250-srv\r\n250 PIPELINING\r\n") -> None:
        await self.send(b"220 srv ESMTP\r\n")
        await self.expect(b"EHLO ", ehlo)

    async def eof(self) -> bytes:
        """Read until the client closes; return what came."""
        rest = bytes(self.buffer)
        while True:
            try:
                data = await self.stream.receive_some()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return rest
            if not data:
                return rest
            rest += data


@asynccontextmanager
async def raw_server(script: ServerScript) -> AsyncIterator[tuple[trio.abc.Stream, RawServer]]:
    """Run *script* against the client side of a memory stream pair."""
    client, srv = trio.testing.memory_stream_pair()
    server = RawServer(srv)

    async def run() -> None:
        with contextlib.suppress(EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            await script(server)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        yield client, server
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def serving(
    server: FakeSMTPServer, *, implicit_tls: bool = False
) -> AsyncIterator[trio.abc.Stream]:
    """Run *server* on one in-memory connection; yield the client's stream."""
    client, srv = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(server.handle_stream, srv, implicit_tls=implicit_tls))
        yield client
