"""One benchmark client run, in a process of its own.

Usage: ``python bench/clients.py CLIENT WORKLOAD JSON-PARAMS``. Prints one JSON
object: ``{"elapsed": seconds, "messages": n, "bytes": n, "rss_base": KiB,
"rss_peak": KiB}``. Each run gets a fresh interpreter, so peak RSS is its own.

Clients: ``trio_sendmail``, ``aiosmtplib``, ``smtplib``, ``raw_sslstream`` (W4's
physical limit: the same bytes over a bare ``trio.SSLStream``).
"""

from __future__ import annotations

import json
import resource
import ssl
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

SENDER = "bench@example.com"


def rss_now_kib() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() // 1024


def message(size: int) -> bytes:
    """A 7-bit message of *size* bytes with CRLF lines (so no client rewrites it)."""
    head = b"From: bench@example.com\r\nTo: sink@example.com\r\nSubject: bench\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    body = line * ((size - len(head)) // len(line) + 1)
    return (head + body)[: size - 2] + b"\r\n"


def recipients(count: int) -> list[str]:
    return [f"rcpt{i}@example.com" for i in range(count)]


def client_context(params: dict[str, Any]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=params["cafile"])


# ------------------------------------------------------------------ trio_sendmail


async def trio_sendmail_run(params: dict[str, Any]) -> int:
    import trio

    import trio_sendmail as ts

    tls = params.get("tls", False)
    mode = ts.TLSMode.IMPLICIT if tls else ts.TLSMode.INSECURE_PLAINTEXT
    context = client_context(params) if tls else None
    host, port = params["host"], params["port"]
    n, connections = params["messages"], params["connections"]
    rcpts = recipients(params["recipients"])
    if params.get("stream_bytes"):
        total = params["stream_bytes"]
        chunk = message(65536)
        send, receive = trio.open_memory_channel[bytes](4)

        async def produce() -> None:
            async with send:
                for _ in range(total // len(chunk)):
                    await send.send(chunk)

        async with ts.open_session(
            params["tls_hostname"], port=port, tls=mode, ssl_context=context,
            domain="bench.example.com",
        ) as session, trio.open_nursery() as nursery:  # fmt: skip
            nursery.start_soon(produce)
            await session.send(SENDER, rcpts, receive)
        return 1
    body = message(params["size"])
    # The way to move many messages: send_bulk over a pool, which pipelines each
    # message's end of data with the next one's envelope on every connection.
    limits = ts.PoolLimits(max_connections=connections, max_messages_per_connection=n)
    async with ts.open_pool(
        params["tls_hostname"] if tls else host, port=port, tls=mode, ssl_context=context,
        domain="bench.example.com", limits=limits,
    ) as pool:  # fmt: skip
        messages = (ts.BulkMessage(SENDER, rcpts, body) for _ in range(n))
        summary = await ts.send_bulk(messages, pool=pool, on_result=lambda r: None)
        assert summary.accepted == n, summary
    return n


# ------------------------------------------------------------------ aiosmtplib


async def aiosmtplib_run(params: dict[str, Any]) -> int:
    import asyncio

    import aiosmtplib

    tls = params.get("tls", False)
    n, connections = params["messages"], params["connections"]
    rcpts = recipients(params["recipients"])
    body = message(params["size"])

    async def one_client(count: int) -> None:
        client = aiosmtplib.SMTP(
            hostname=params["tls_hostname"] if tls else params["host"],
            port=params["port"],
            use_tls=tls,
            start_tls=False,
            tls_context=client_context(params) if tls else None,
            local_hostname="bench.example.com",
        )
        await client.connect()
        for _ in range(count):
            await client.sendmail(SENDER, rcpts, body)
        await client.quit()

    share = [n // connections + (1 if i < n % connections else 0) for i in range(connections)]
    await asyncio.gather(*(one_client(count) for count in share))
    return n


# ------------------------------------------------------------------ smtplib


def smtplib_run(params: dict[str, Any]) -> int:
    import smtplib

    n = params["messages"]
    rcpts = recipients(params["recipients"])
    body = message(params["size"])
    with smtplib.SMTP(params["host"], params["port"], local_hostname="bench.example.com") as s:
        for _ in range(n):
            s.sendmail(SENDER, rcpts, body)
    return n


# ------------------------------------------------------------------ raw SSLStream


async def raw_sslstream_run(params: dict[str, Any]) -> int:
    """W4's limit: a minimal SMTP dialogue, then the same bytes over a bare SSLStream."""
    import trio

    stream = await trio.open_tcp_stream(params["host"], params["port"])
    ssl_stream = trio.SSLStream(
        stream, client_context(params), server_hostname=params["tls_hostname"]
    )
    buffer = b""

    async def reply() -> bytes:
        nonlocal buffer
        while True:
            lines = buffer.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if line[3:4] == b" " or len(line) == 3:
                    buffer = b"\r\n".join(lines[i + 1 :])
                    return line
            data = await ssl_stream.receive_some(65536)
            if not data:
                raise EOFError
            buffer += data

    await reply()
    for command in (b"EHLO bench.example.com", b"MAIL FROM:<a@example.com>",
                    b"RCPT TO:<b@example.com>", b"DATA"):  # fmt: skip
        await ssl_stream.send_all(command + b"\r\n")
        await reply()
    chunk = message(65536)
    for _ in range(params["stream_bytes"] // len(chunk)):
        await ssl_stream.send_all(chunk)
    await ssl_stream.send_all(b".\r\n")
    line = await reply()
    assert line.startswith(b"250"), line
    await ssl_stream.send_all(b"QUIT\r\n")
    await ssl_stream.aclose()
    return 1


RUNNERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "trio_sendmail": trio_sendmail_run,
    "aiosmtplib": aiosmtplib_run,
    "smtplib": smtplib_run,
    "raw_sslstream": raw_sslstream_run,
}


#: Modules each client needs, imported before the clock starts.
PRELOAD = {
    "trio_sendmail": ["trio", "trio_sendmail"],
    "aiosmtplib": ["asyncio", "aiosmtplib"],
    "smtplib": ["smtplib"],
    "raw_sslstream": ["trio"],
}


def main() -> None:
    import importlib

    client, params = sys.argv[1], json.loads(sys.argv[2])
    runner = RUNNERS[client]
    for module in PRELOAD[client]:
        importlib.import_module(module)
    base = rss_now_kib()  # the interpreter's baseline, with the client's modules loaded
    start = time.perf_counter()
    if client == "aiosmtplib":
        import asyncio

        coroutine: Coroutine[Any, Any, int] = runner(params)
        messages = asyncio.run(coroutine)
    elif client == "smtplib":
        messages = runner(params)
    else:
        import trio

        messages = trio.run(runner, params)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"elapsed": elapsed, "messages": messages, "rss_base": base,
                      "rss_peak": peak}))  # fmt: skip


if __name__ == "__main__":
    main()
