"""The driver (``trio_sendmail/_driver.py``): replies read however the bytes arrive.

Its error boundary against hostile servers is proven by the hardening matrix
(``tests/hardening/``); its probe for unasked bytes and its salvage of a refusal
before a reset by ``tests/hardening/test_outcomes.py``.
"""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel

import trio_sendmail as ts

from . import defaults
from .helpers import HOST, RawServer, ServerVariant, raw_server

PLAIN = ts.TLSMode.INSECURE_PLAINTEXT


@pytest.mark.parametrize(
    "greeting",
    [
        b"220 srv ESMTP\r\n",
        b"220-srv ESMTP\r\n220-more text\r\n220 end\r\n",
        b"220 srv ESMTP\n",  # bare LF line endings are tolerated in replies
    ],
)
@pytest.mark.parametrize("step", [1, 2, 3, 7])
async def test_replies_split_at_any_byte(
    greeting: bytes, step: int, server_variant: ServerVariant
) -> None:
    ehlo = server_variant.ehlo("8BITMIME")
    final = b"250-2.0.0 queued\r\n250 2.0.0 as 123\r\n"

    async def drip(srv: RawServer, data: bytes) -> None:
        for i in range(0, len(data), step):
            await srv.send(data[i : i + step])
            await trio.lowlevel.checkpoint()

    async def message(srv: RawServer) -> None:
        if server_variant.chunking:
            assert await srv.bdat() == (b"x\r\n", True)
        else:
            assert await srv.data() == b"x\r\n.\r\n"

    async def script(srv: RawServer) -> None:
        await drip(srv, greeting)
        await srv.line()
        await drip(srv, ehlo)
        if server_variant.pipelining:  # every reply dripped in one stream
            await srv.expect(b"MAIL FROM:", b"")
            await srv.expect(b"RCPT TO:", b"")
            if server_variant.chunking:
                await message(srv)
                await drip(srv, b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n" + final)
            else:
                await srv.expect(b"DATA", b"")
                await drip(srv, b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354\r\n")
                await message(srv)
                await drip(srv, final)
        else:
            await srv.expect(b"MAIL FROM:", b"")
            await drip(srv, b"250 2.1.0 ok\r\n")
            await srv.expect(b"RCPT TO:", b"")
            await drip(srv, b"250 2.1.5 ok\r\n")
            if not server_variant.chunking:
                await srv.expect(b"DATA", b"")
                await drip(srv, b"354\r\n")
            await message(srv)
            await drip(srv, final)
        await srv.expect(b"QUIT", b"221 bye\r\n")

    async with (
        raw_server(script) as (stream, _),
        defaults.open_session(HOST, tls=PLAIN, stream=stream) as session,
    ):
        result = await session.send("a@example.com", ["b@example.com"], b"x")
    assert result.reply.lines == ("queued", "as 123")
    assert result.reply.enhanced_status == ts.EnhancedStatus(2, 0, 0)


async def test_the_probe_follows_the_stream_into_tls() -> None:
    # _readable() finds a stream's TLS layers once per stream: after STARTTLS
    # (a new stream) it must look into the TLS layer's undecrypted bytes too.
    import ssl

    from trio_sendmail._driver import Driver
    from trio_sendmail._settings import DEFAULT_TIMEOUTS

    plain, _peer = trio.testing.memory_stream_pair()
    driver = Driver(plain, session_id=1, hostname="mx.example", timeouts=DEFAULT_TIMEOUTS,
                    send_size=65536, receive_size=65536)  # fmt: skip
    assert not driver._readable()  # no socket, nothing buffered
    tls = trio.SSLStream(plain, ssl.create_default_context(), server_hostname="mx.example")
    driver.stream = tls
    assert not driver._readable()
    tls._incoming.write(b"\x17\x03\x03")  # read from the transport, not decrypted yet
    assert driver._readable()
