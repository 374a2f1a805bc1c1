"""A TCP proxy that delays every byte by a fixed time in each direction (W6).

Usage: ``python bench/delay_proxy.py LISTEN_PORT UPSTREAM_PORT [DELAY_MS]``
(both on 127.0.0.1; 5 ms by default). Each chunk read is written out DELAY
after it arrived, in order, so the proxy adds latency (a round trip of twice
DELAY) without limiting the bandwidth: what a server a few hundred kilometres
away looks like. That is where pipelining across messages matters.
"""

from __future__ import annotations

import sys
from functools import partial

import trio

HOST = "127.0.0.1"


async def _pump(source: trio.SocketStream, sink: trio.SocketStream, delay: float) -> None:
    send, receive = trio.open_memory_channel[tuple[float, bytes]](1024)

    async def read() -> None:
        async with send:
            while data := await source.receive_some(65536):
                await send.send((trio.current_time() + delay, data))

    async def write() -> None:
        async with receive:
            async for due, data in receive:
                await trio.sleep_until(due)
                await sink.send_all(data)
        await sink.send_eof()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            nursery.start_soon(write)
    except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # one side went away: this direction is over


async def _connection(upstream_port: int, delay: float, client: trio.SocketStream) -> None:
    try:
        server = await trio.open_tcp_stream(HOST, upstream_port)
    except OSError:
        await client.aclose()
        return
    async with client, server, trio.open_nursery() as nursery:
        nursery.start_soon(_pump, client, server, delay)
        nursery.start_soon(_pump, server, client, delay)


async def main(listen_port: int, upstream_port: int, delay: float) -> None:
    await trio.serve_tcp(partial(_connection, upstream_port, delay), listen_port, host=HOST)


if __name__ == "__main__":
    delay_ms = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
    trio.run(main, int(sys.argv[1]), int(sys.argv[2]), delay_ms / 1000)
