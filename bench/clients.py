"""One benchmark client run, in a process of its own.

Usage: ``python bench/clients.py CLIENT JSON-PARAMS``. Prints one JSON object:
``{"elapsed": s, "cpu": s, "messages": n, "rss_base": KiB, "rss_peak": KiB}``.
Each run gets a fresh interpreter, so peak RSS and CPU time are its own.

Before the clock starts, every client warms up on a connection of its own
(``params["warmup"]`` messages, default 50): a process that has not sent
anything yet runs some clients (aiosmtplib by about 30 %) slower for the whole
run. ``cpu`` is the process's user + system time (``getrusage``) spent in the
timed part only.

Clients: ``trio_sendmail`` (``send_bulk`` over a pool), ``trio_sendmail_session``
(``open_session`` and a ``send`` loop on one task per connection), ``ceiling``
(``bench/ceiling.py``: a hand-written trio client, no library), ``aiosmtplib``,
``aiosmtplib_uvloop``, ``smtplib``, ``raw_sslstream`` (W4's limit: the same
bytes over a bare ``trio.SSLStream``).
"""

from __future__ import annotations

import json
import resource
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ceiling

SENDER = "bench@example.com"


def rss_now_kib() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() // 1024


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def message(size: int) -> bytes:
    """A 7-bit message of *size* bytes with CRLF lines (so no client rewrites
    it), made of sentences: the dots make a client look for lines to stuff."""
    head = b"From: bench@example.com\r\nTo: sink@example.com\r\nSubject: bench\r\n\r\n"
    line = b"Lorem ipsum dolor sit amet. Consectetur adipiscing elit, sed do eiusmod.\r\n"
    body = line * ((size - len(head)) // len(line) + 1)
    return (head + body)[: size - 2] + b"\r\n"


def recipients(count: int) -> list[str]:
    return [f"rcpt{i}@example.com" for i in range(count)]


def client_context(params: dict[str, Any]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=params["cafile"])


def shares(n: int, connections: int) -> list[int]:
    """*n* messages spread over *connections* (none empty)."""
    return [c for c in (n // connections + (i < n % connections) for i in range(connections)) if c]


# ------------------------------------------------------------------ trio_sendmail


def _ts_connection(params: dict[str, Any]) -> dict[str, Any]:
    import trio_sendmail as ts

    tls = params.get("tls", False)
    return {
        "port": params["port"],
        "tls": ts.TLSMode.IMPLICIT if tls else ts.TLSMode.INSECURE_PLAINTEXT,
        "ssl_context": client_context(params) if tls else None,
        "domain": "bench.example.com",
    }


def _ts_host(params: dict[str, Any]) -> str:
    host: str = params["tls_hostname"] if params.get("tls") else params["host"]
    return host


async def trio_sendmail_stream(params: dict[str, Any], n: int) -> int:
    """W4: one message streamed from a memory channel (*n* is ignored)."""
    import trio

    import trio_sendmail as ts

    total = params["stream_bytes"]
    chunk = message(65536)
    send, receive = trio.open_memory_channel[bytes](4)

    async def produce() -> None:
        async with send:
            for _ in range(total // len(chunk)):
                await send.send(chunk)

    host, options = _ts_host(params), _ts_connection(params)
    async with ts.open_session(host, **options) as session, trio.open_nursery() as nursery:
        nursery.start_soon(produce)
        await session.send(SENDER, recipients(params["recipients"]), receive)
    return 1


async def trio_sendmail_run(params: dict[str, Any], n: int) -> int:
    """``send_bulk`` over a pool of ``connections``: the way to move many messages."""
    import trio_sendmail as ts

    connections = params["connections"]
    rcpts = recipients(params["recipients"])
    body = message(params["size"])
    limits = ts.PoolLimits(max_connections=connections, max_messages_per_connection=n + 1)
    async with ts.open_pool(_ts_host(params), limits=limits, **_ts_connection(params)) as pool:
        messages = (ts.BulkMessage(SENDER, rcpts, body) for _ in range(n))
        summary = await ts.send_bulk(messages, pool=pool, on_result=lambda r: None)
        assert summary.accepted == n, summary
    return n


async def trio_sendmail_session_run(params: dict[str, Any], n: int) -> int:
    """``open_session`` and a loop of ``send`` on one task per connection: the
    loop most callers write."""
    import trio

    import trio_sendmail as ts

    rcpts = recipients(params["recipients"])
    body = message(params["size"])
    host, options = _ts_host(params), _ts_connection(params)

    async def one(count: int) -> None:
        async with ts.open_session(host, **options) as session:
            for _ in range(count):
                result = await session.send(SENDER, rcpts, body)
                assert result.reply.code == 250, result

    async with trio.open_nursery() as nursery:
        for count in shares(n, params["connections"]):
            nursery.start_soon(one, count)
    return n


async def ceiling_run(params: dict[str, Any], n: int) -> int:
    """``bench/ceiling.py``: the same protocol work by hand, no library."""
    body, rcpts = message(params["size"]), recipients(params["recipients"])
    await ceiling.run(params, shares(n, params["connections"]), body, SENDER, rcpts)
    return n


# ------------------------------------------------------------------ aiosmtplib


async def aiosmtplib_run(params: dict[str, Any], n: int) -> int:
    import asyncio

    import aiosmtplib

    tls = params.get("tls", False)
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

    await asyncio.gather(*(one_client(c) for c in shares(n, params["connections"])))
    return n


# ------------------------------------------------------------------ smtplib


def smtplib_run(params: dict[str, Any], n: int) -> int:
    import smtplib

    rcpts = recipients(params["recipients"])
    body = message(params["size"])
    with smtplib.SMTP(params["host"], params["port"], local_hostname="bench.example.com") as s:
        for _ in range(n):
            s.sendmail(SENDER, rcpts, body)
    return n


# ------------------------------------------------------------------ raw SSLStream


async def raw_sslstream_run(params: dict[str, Any], n: int) -> int:
    """W4's limit: a minimal SMTP dialogue, then the same bytes over a bare
    SSLStream (*n* is ignored: one message of ``stream_bytes``)."""
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
    for command in (
        b"EHLO bench.example.com",
        b"MAIL FROM:<a@example.com>",
        b"RCPT TO:<b@example.com>",
        b"DATA",
    ):
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


# ------------------------------------------------------------------ the harness

#: client: (runner taking (params, messages), event loop)
RUNNERS: dict[str, tuple[Callable[..., Any], str]] = {
    "trio_sendmail": (trio_sendmail_run, "trio"),
    "trio_sendmail_session": (trio_sendmail_session_run, "trio"),
    "ceiling": (ceiling_run, "trio"),
    "aiosmtplib": (aiosmtplib_run, "asyncio"),
    "aiosmtplib_uvloop": (aiosmtplib_run, "uvloop"),
    "smtplib": (smtplib_run, "sync"),
    "raw_sslstream": (raw_sslstream_run, "trio"),
}


def run(loop: str, function: Callable[..., Any], *args: Any) -> Any:
    if loop == "sync":
        return function(*args)
    if loop == "trio":
        import trio

        return trio.run(function, *args)
    import asyncio

    if loop == "uvloop":
        import uvloop

        return uvloop.run(function(*args))
    return asyncio.run(function(*args))


def main() -> None:
    client, params = sys.argv[1], json.loads(sys.argv[2])
    function, loop = RUNNERS[client]
    if params.get("stream_bytes") and client == "trio_sendmail":
        function = trio_sendmail_stream
    if client.startswith("trio_sendmail"):
        import trio_sendmail  # noqa: F401  (imported before the clock starts)
    warmup = params.get("warmup", 50)
    if warmup and not params.get("stream_bytes"):
        # On a connection of its own (and the first connections' set-up).
        run(loop, function, dict(params, connections=1), warmup)
    base = rss_now_kib()  # the interpreter's baseline, warmed up
    cpu = cpu_now()
    start = time.perf_counter()
    messages = run(loop, function, params, params["messages"])
    elapsed = time.perf_counter() - start
    cpu = cpu_now() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "elapsed": elapsed,
                "cpu": cpu,
                "messages": messages,
                "rss_base": base,
                "rss_peak": peak,
            }
        )
    )


if __name__ == "__main__":
    main()
