"""The data-block bound applies to each write of at most ``send_size`` octets,
not to a caller's chunk (issue #15; RFC 5321 §4.5.3.2.5: "each TCP SEND call").

A server that reads steadily at 2 MiB/s takes 4 s for an 8 MiB message. With
``data_block=1.5`` every 64 KiB write finishes in about 31 ms, so the message
goes through, whether it is given whole or as one 8 MiB chunk of a stream. A
control proves that the bound still bites: one stall longer than the bound
ends the send with :class:`SMTPTimeoutError` (phase ``data_block``), and one
write as large as the whole message (``send_size`` of 8 MiB) trips it too.

The client's bytes go through a :func:`trio.testing.lockstep_stream_one_way_pair`
read by a throttled server, so that the client's ``send_all`` returns only once
the server has read everything; the server's replies go through a buffered
pair, as over TCP. The autojump clock makes the 4 s of server time instant.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

import pytest
import trio
import trio.testing

import trio_sendmail as ts
from trio_sendmail._message import Mail
from trio_sendmail.testing import FakeSMTPServer

from .helpers import CLIENT_NAME, HOST, VARIANTS, ServerVariant

RATE = 2 * 1024 * 1024  # bytes per second the server reads
READ_SIZE = 64 * 1024
MESSAGE_SIZE = 8 * 1024 * 1024
TIMEOUTS = ts.Timeouts(data_block=1.5)


def _message() -> bytes:
    head = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: big\r\n\r\n"
    line = b".starts with a dot, stuffed on the wire\r\n" + b"y" * 70 + b"\r\n"
    body = line * ((MESSAGE_SIZE - len(head)) // len(line))
    return head + body


MESSAGE = _message()


class SteadyServerStream(trio.abc.HalfCloseableStream):
    """The server's side of the connection, reading :data:`RATE` bytes per
    second; after *stall_at* bytes, one read waits *stall* seconds first."""

    def __init__(
        self, inner: trio.abc.HalfCloseableStream, *, stall_at: int = -1, stall: float = 0.0
    ) -> None:
        self.inner = inner
        self.received = 0
        self.stall_at = stall_at
        self.stall = stall

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if 0 <= self.stall_at <= self.received:
            self.stall_at = -1
            await trio.sleep(self.stall)
        size = READ_SIZE if max_bytes is None else min(max_bytes, READ_SIZE)
        data = await self.inner.receive_some(size)
        self.received += len(data)
        await trio.sleep(len(data) / RATE)
        return bytes(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _one_chunk() -> AsyncIterator[bytes]:
    yield MESSAGE  # one caller chunk of 8 MiB


async def _send(
    variant: ServerVariant,
    mail: Mail,
    *,
    stall_at: int = -1,
    stall: float = 0.0,
    send_size: int = 64 * 1024,
) -> FakeSMTPServer:
    server = FakeSMTPServer(extensions=variant.extensions())
    to_server_send, to_server_receive = trio.testing.lockstep_stream_one_way_pair()
    to_client_send, to_client_receive = trio.testing.memory_stream_one_way_pair()
    client = trio.StapledStream(to_server_send, to_client_receive)
    raw = trio.StapledStream(to_client_send, to_server_receive)
    steady = SteadyServerStream(raw, stall_at=stall_at, stall=stall)
    error: ts.SMTPError | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(server.handle_stream, steady))
        try:
            async with ts.open_session(
                HOST,
                stream=client,
                tls=ts.TLSMode.INSECURE_PLAINTEXT,
                domain=CLIENT_NAME,
                timeouts=TIMEOUTS,
                pipelining=variant.pipelining,
                send_size=send_size,
            ) as session:
                start = trio.current_time()
                result = await session.send("a@example.com", ["b@example.com"], mail)
                assert result.reply.code == 250
                # The server took its time: far longer than one data-block bound.
                assert trio.current_time() - start > 2 * TIMEOUTS.data_block
        except ts.SMTPError as exc:
            error = exc
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error
    return server


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
@pytest.mark.parametrize("shape", ["whole", "one-chunk-stream"])
async def test_slow_steady_server_takes_a_big_message(
    autojump_clock: trio.testing.MockClock, variant: ServerVariant, shape: str
) -> None:
    mail: Mail = MESSAGE if shape == "whole" else _one_chunk()
    server = await _send(variant, mail)
    (received,) = server.messages
    assert received.data == MESSAGE  # stuffed on the wire, unstuffed by the server
    assert server.bare_line_endings == 0


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
async def test_a_stall_longer_than_the_bound_times_out(
    autojump_clock: trio.testing.MockClock, variant: ServerVariant
) -> None:
    with pytest.raises(ts.SMTPTimeoutError) as info:
        await _send(variant, _one_chunk(), stall_at=MESSAGE_SIZE // 2, stall=2.0)
    assert info.value.phase == "data_block"
    assert info.value.outcome is ts.Outcome.NOT_SENT


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
async def test_one_write_of_the_whole_message_would_trip_the_bound(
    autojump_clock: trio.testing.MockClock, variant: ServerVariant
) -> None:
    # The control: were the bound applied per caller chunk (one write of
    # 8 MiB), this server would exceed it. send_size makes that one write.
    with pytest.raises(ts.SMTPTimeoutError) as info:
        await _send(variant, _one_chunk(), send_size=MESSAGE_SIZE + 1024)
    assert info.value.phase == "data_block"
