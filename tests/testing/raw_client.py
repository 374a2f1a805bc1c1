"""A raw SMTP client, just enough to test the fake server with (and what the
tests of ``trio_sendmail.testing`` share)."""

from __future__ import annotations

import base64
import contextlib
import ssl
from collections.abc import AsyncIterator
from functools import partial

import attrs
import trio
import trio.testing

from trio_sendmail.testing import (
    FakeSMTPServer,
    serve_fake_smtp,
)

HOST = "mail.example.test"
PASSWORD = "correct horse battery staple"
USERS = {"alice": PASSWORD}
PLAIN_OK = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode("ascii")


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


@attrs.frozen
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


class RawClient:
    """Send raw bytes, read replies; just enough SMTP client to test a server with."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            data = await self.stream.receive_some(4096)
            if not data:
                raise EOFError(bytes(self.buffer))
            self.buffer += data
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        assert b"\n" not in line
        return line

    async def reply(self) -> Reply:
        lines: list[str] = []
        while True:
            line = (await self._line()).decode()
            code, separator = int(line[:3]), line[3:4]
            lines.append(line[4:])
            if separator == " ":
                return Reply(code, tuple(lines))
            assert separator == "-"

    async def cmd(self, line: str | bytes) -> Reply:
        raw = line.encode() if isinstance(line, str) else line
        await self.send(raw + b"\r\n")
        return await self.reply()

    async def starttls(self, context: ssl.SSLContext, hostname: str = HOST) -> None:
        assert not self.buffer
        tls = trio.SSLStream(self.stream, context, server_hostname=hostname)
        await tls.do_handshake()
        self.stream = tls

    async def expect_eof(self) -> None:
        assert not self.buffer
        assert await self.stream.receive_some(100) == b""

    async def ehlo(self, name: str = "client.example.test") -> Reply:
        reply = await self.cmd(f"EHLO {name}")
        assert reply.code == 250
        return reply

    async def send_message(self, sender: str, recipients: list[str], body: bytes) -> Reply:
        assert (await self.cmd(f"MAIL FROM:<{sender}>")).code == 250
        for recipient in recipients:
            assert (await self.cmd(f"RCPT TO:<{recipient}>")).code == 250
        return await self.send_message_body(body)

    async def send_message_body(self, body: bytes) -> Reply:
        assert (await self.cmd("DATA")).code == 354
        await self.send(body)
        return await self.reply()


@contextlib.asynccontextmanager
async def connected(
    server: FakeSMTPServer,
    *,
    implicit_tls: bool = False,
    client_context: ssl.SSLContext | None = None,
    greeting: int | None = 220,
) -> AsyncIterator[RawClient]:
    """Serve one connection over memory streams; close the client side on exit."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(server.handle_stream, server_stream, implicit_tls=implicit_tls))
        client = RawClient(client_stream)
        try:
            if implicit_tls:
                assert client_context is not None
                await client.starttls(client_context)
            if greeting is not None:
                assert (await client.reply()).code == greeting
            yield client
        finally:
            with contextlib.suppress(trio.BrokenResourceError):
                await client.stream.aclose()


@contextlib.asynccontextmanager
async def tcp_connected(
    server: FakeSMTPServer, *, implicit_tls: bool = False, context: ssl.SSLContext | None = None
) -> AsyncIterator[RawClient]:
    async with serve_fake_smtp(server, implicit_tls=implicit_tls) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = RawClient(stream)
        try:
            if implicit_tls:
                assert context is not None
                await client.starttls(context, hostname="127.0.0.1")
            assert (await client.reply()).code == 220
            yield client
        finally:
            with contextlib.suppress(trio.BrokenResourceError):
                await client.stream.aclose()


def assert_no_secret(server: FakeSMTPServer) -> None:
    secrets = [PASSWORD.encode(), b64(PASSWORD).encode(), b64(f"\0alice\0{PASSWORD}").encode()]
    for _, line in server.transcript:
        for secret in secrets:
            assert secret not in line
