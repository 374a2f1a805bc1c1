"""Whole-path properties: random bodies in random chunks arrive exactly
normalised, and a large stream is sent with bounded memory."""

from __future__ import annotations

import tracemalloc

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trio_sendmail as ts
from trio_sendmail.testing import FakeSMTPServer

from .. import defaults
from ..helpers import HOST, VARIANTS, ServerVariant, serving

ATOMS = [b"\r", b"\n", b".", b"\r\n", b"\r\n.\r\n", b"\n.\n", b"\r.\r\n", b"\n.\r\n",
         b"\r\n.\r", b"\x00", b"x", b"\xff", b"ab"]  # fmt: skip

bodies = st.lists(st.sampled_from(ATOMS) | st.binary(max_size=5), max_size=40).map(b"".join)


def normalise(body: bytes) -> bytes:
    body = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    return body if body.endswith(b"\r\n") or not body else body + b"\r\n"


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8))
@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_random_bodies_in_random_chunks_arrive_normalised(
    body: bytes, cuts: list[int], variant: ServerVariant
) -> None:
    points = sorted({c % (len(body) + 1) for c in cuts})
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]

    async def main() -> FakeSMTPServer:
        server = FakeSMTPServer(extensions=variant.extensions())
        send, receive = trio.open_memory_channel[bytes](len(chunks) + 1)
        for chunk in chunks:
            send.send_nowait(chunk)
        send.close()
        async with (
            serving(server) as stream,
            defaults.open_session(
                HOST, tls=ts.TLSMode.INSECURE_PLAINTEXT, stream=stream
            ) as session,
        ):
            await session.send("a@example.com", ["b@example.com"], receive)
            await session.send("a@example.com", ["b@example.com"], body)
        return server

    server = trio.run(main)
    streamed, whole = server.messages
    assert streamed.data == whole.data == normalise(body)
    assert streamed.raw == whole.raw
    if not variant.chunking:  # the only end-of-data sequence on the wire is the real one
        assert streamed.raw.find(b"\r\n.\r\n") in (-1, len(streamed.raw) - 5)
    assert server.bare_line_endings == 0


class CountingServer:
    """Counts DATA bytes without keeping them."""

    def __init__(self) -> None:
        self.size = 0


async def test_large_stream_is_sent_with_bounded_memory() -> None:
    """40 MiB streamed through a memory channel: the client's own allocations
    stay far below the message size (no full copy is ever held)."""
    chunk = (b"0123456789abcdef.\n" * 3641)[:65536]
    count = 640  # 40 MiB
    client, server_stream = trio.testing.memory_stream_pair()
    received = CountingServer()

    async def sink() -> None:
        buf = bytearray()

        async def reply(line: bytes) -> None:
            await server_stream.send_all(line)

        await reply(b"220 sink\r\n")
        in_data = False
        while True:
            data = await server_stream.receive_some(1 << 20)
            if not data:
                return
            if in_data:
                received.size += len(data)
                tail = (bytes(buf) + data)[-5:]
                buf[:] = tail
                if tail == b"\r\n.\r\n":
                    in_data = False
                    await reply(b"250 ok\r\n")
                continue
            for line in data.split(b"\r\n")[:-1]:
                if line.startswith(b"EHLO"):
                    await reply(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                elif line == b"DATA":
                    await reply(b"250 ok\r\n250 ok\r\n354 go\r\n")
                    in_data = True
                elif line == b"QUIT":
                    await reply(b"221 bye\r\n")
                    return

    send, receive = trio.open_memory_channel[bytes](1)

    async def produce() -> None:
        async with send:
            for _ in range(count):
                await send.send(chunk)

    tracemalloc.start()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sink)
            nursery.start_soon(produce)
            async with defaults.open_session(
                HOST, tls=ts.TLSMode.INSECURE_PLAINTEXT, stream=client
            ) as session:
                await session.send("a@example.com", ["b@example.com"], receive)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received.size >= len(chunk) * count
    # The memory stream itself buffers what is in flight; the whole message is 40 MiB.
    assert peak < 8 * 1024 * 1024, peak
