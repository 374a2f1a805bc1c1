"""The ceiling: a hand-written trio SMTP client that uses no library.

It does the protocol work that ``send_bulk`` does for a whole message with CRLF
line endings, and nothing more: pipelining across messages (RFC 2920 §3.1: one
message's body and final dot go out in the same write as the next message's
MAIL, RCPT and DATA), one wait per message, and every reply read whole
(multi-line replies too) and its code checked. Its body is dot-stuffed once,
before the clock starts: a library must check every message it is given, so
this is a bound, not a peer. Every trio_sendmail figure is also given as a
ratio to it.
"""

from __future__ import annotations

import ssl
from typing import Any

import trio


class _Replies:
    """Reads replies from *stream* and checks their codes."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def expect(self, code: bytes) -> None:
        """Read one reply (every line of it) and check that its code is *code*."""
        buffer = self.buffer
        while True:
            start = 0
            while (end := buffer.find(b"\r\n", start)) >= 0:
                if buffer[start + 3 : start + 4] != b"-":  # the last line of a reply
                    if buffer[start : start + 3] != code:
                        got = bytes(buffer[start:end])
                        raise RuntimeError(f"expected {code.decode()}, got {got!r}")
                    del buffer[: end + 2]
                    return
                if buffer[start : start + 3] != code:
                    raise RuntimeError(f"expected {code.decode()}: {bytes(buffer[start:end])!r}")
                start = end + 2
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("the server closed the connection")
            buffer += data


async def one_connection(
    params: dict[str, Any], count: int, body: bytes, sender: str, recipients: list[str]
) -> None:
    stream: trio.abc.Stream = await trio.open_tcp_stream(params["host"], params["port"])
    if params.get("tls"):
        context = ssl.create_default_context(cafile=params["cafile"])
        stream = trio.SSLStream(stream, context, server_hostname=params["tls_hostname"])
    replies = _Replies(stream)
    async with stream:
        await replies.expect(b"220")
        await stream.send_all(b"EHLO bench.example.com\r\n")
        await replies.expect(b"250")
        envelope = (
            f"MAIL FROM:<{sender}>\r\n".encode()
            + b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in recipients)
            + b"DATA\r\n"
        )
        stuffed = body.replace(b"\r\n.", b"\r\n..")
        if stuffed.startswith(b"."):
            stuffed = b"." + stuffed
        payload = stuffed + b".\r\n"
        await stream.send_all(envelope)
        for i in range(count):
            await replies.expect(b"250")  # MAIL
            for _ in recipients:
                await replies.expect(b"250")  # RCPT
            await replies.expect(b"354")  # DATA
            # This message's data and end, with the next message's envelope.
            await stream.send_all(payload + (envelope if i < count - 1 else b"QUIT\r\n"))
            await replies.expect(b"250")  # the final dot
        await replies.expect(b"221")  # QUIT


async def run(
    params: dict[str, Any], shares: list[int], body: bytes, sender: str, recipients: list[str]
) -> None:
    async with trio.open_nursery() as nursery:
        for count in shares:
            nursery.start_soon(one_connection, params, count, body, sender, recipients)
