"""A fast, repeatable micro-benchmark of the per-message hot path.

Usage::

    python bench/hot.py                      # in-memory only (no server needed)
    python bench/hot.py --port 12526         # also over loopback to smtp-sink there
    python bench/hot.py --messages 5000 --repeats 5

For each mode it prints the CPU time per message (``getrusage``, user +
system, median of the repetitions) and the Python function calls per message
(``sys.setprofile``, counted on a separate, shorter run: a count does not
move with the machine, so it is the figure to compare between commits).

Modes:

* ``mem-bulk`` / ``mem-session``: ``send_bulk`` over a pool of one connection,
  and an ``open_session`` + ``send`` loop, against :class:`ScriptedStream`, an
  in-memory server that answers every command at once (no sockets, no
  scheduler waits): only the client's own work is measured. ``-chunking``
  variants announce CHUNKING (``BDAT … LAST``), the others do not (DATA).
* ``sink-bulk`` / ``sink-session`` (with ``--port``): the same over loopback
  to Postfix's ``smtp-sink`` (no CHUNKING), ``--connections`` of them.

Calls are split by where the called function lives: ``trio_sendmail``,
``trio``, and the rest (the scripted server's own calls are excluded).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clients

import trio_sendmail as ts

SENDER = "bench@example.com"
RECIPIENTS = ["sink@example.com"]


class ScriptedStream(trio.abc.Stream):
    """An SMTP server in memory that answers every command as soon as it is
    written: replies are ready for the client's next read."""

    def __init__(self, *, chunking: bool, pipelining: bool = True, record: bool = False) -> None:
        caps = [b"8BITMIME", b"ENHANCEDSTATUSCODES", b"SIZE 100000000"]
        if pipelining:
            caps.insert(0, b"PIPELINING")
        if chunking:
            caps.append(b"CHUNKING")
        #: Messages taken (their end of data answered); with *record*, the
        #: message data as it came on the wire (after DATA: from a CRLF on).
        self.messages = 0
        self.data: bytearray | None = bytearray() if record else None
        ehlo = b"250-hot.example\r\n" + b"".join(b"250-" + c + b"\r\n" for c in caps[:-1])
        self._ehlo = ehlo + b"250 " + caps[-1] + b"\r\n"
        self._out = bytearray(b"220 hot.example ESMTP\r\n")
        self._in = bytearray()
        self._data = False  # between 354 and the final dot
        self._bdat = -1  # BDAT octets still to take
        self._last = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self._in += data
        self._serve()

    def _serve(self) -> None:
        buf = self._in
        while buf:
            if self._bdat >= 0:
                take = min(self._bdat, len(buf))
                if self.data is not None:
                    self.data += buf[:take]
                del buf[:take]
                self._bdat -= take
                if self._bdat:
                    return
                self._bdat = -1
                self.messages += self._last
                self._out += b"250 2.0.0 Ok: queued\r\n" if self._last else b"250 2.0.0 Ok\r\n"
                continue
            if self._data:
                end = buf.find(b"\r\n.\r\n")
                if end < 0:
                    keep = max(0, len(buf) - 4)
                    if self.data is not None:
                        self.data += buf[:keep]
                    del buf[:keep]
                    return
                if self.data is not None:
                    self.data += buf[: end + 2]
                del buf[: end + 5]
                self.messages += 1
                self._data = False
                self._out += b"250 2.0.0 Ok: queued as HOT\r\n"
                continue
            end = buf.find(b"\r\n")
            if end < 0:
                return
            line = bytes(buf[:end]).upper()
            del buf[: end + 2]
            if line.startswith((b"EHLO", b"LHLO")):
                self._out += self._ehlo
            elif line.startswith(b"MAIL"):
                self._out += b"250 2.1.0 Ok\r\n"
            elif line.startswith(b"RCPT"):
                self._out += b"250 2.1.5 Ok\r\n"
            elif line == b"DATA":
                self._out += b"354 End data with <CR><LF>.<CR><LF>\r\n"
                self._data = True
                # The body may sit behind the line already: match its end
                # from the line break that preceded DATA's body.
                buf[:0] = b"\r\n"
            elif line.startswith(b"BDAT"):
                parts = line.split()
                self._bdat = int(parts[1])
                self._last = len(parts) > 2
            elif line == b"QUIT":
                self._out += b"221 2.0.0 Bye\r\n"
            elif line == b"RSET" or line == b"NOOP":
                self._out += b"250 2.0.0 Ok\r\n"
            else:
                self._out += b"502 5.5.2 Error: command not recognized\r\n"

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        if not self._out:
            raise AssertionError("the client waits for a reply that was never asked for")
        size = len(self._out) if max_bytes is None else max_bytes
        data = bytes(self._out[:size])
        del self._out[:size]
        return data

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def _memory_options(
    chunking: bool, *, pipelining: bool = True, streams: list[ScriptedStream] | None = None
) -> dict[str, Any]:
    """Connection options for a pool or session over :class:`ScriptedStream`\\ s
    (each one made is appended to *streams*)."""

    async def connect(_host: str, _port: int) -> trio.abc.Stream:
        stream = ScriptedStream(
            chunking=chunking, pipelining=pipelining, record=streams is not None
        )
        if streams is not None:
            streams.append(stream)
        return stream

    return {
        "port": 25,
        "tls": ts.TLSMode.INSECURE_PLAINTEXT,
        "domain": "bench.example.com",
        "connect": connect,
    }


def _sink_options(port: int) -> dict[str, Any]:
    return {"port": port, "tls": ts.TLSMode.INSECURE_PLAINTEXT, "domain": "bench.example.com"}


async def run_bulk(options: dict[str, Any], n: int, connections: int, body: bytes) -> None:
    limits = ts.PoolLimits(max_connections=connections, max_messages_per_connection=n + 1)
    async with ts.open_pool("127.0.0.1", limits=limits, **options) as pool:
        messages = (ts.BulkMessage(SENDER, RECIPIENTS, body) for _ in range(n))
        summary = await ts.send_bulk(messages, pool=pool, on_result=lambda r: None)
    assert summary.accepted == n, summary


async def run_session(options: dict[str, Any], n: int, connections: int, body: bytes) -> None:
    async def one(count: int) -> None:
        async with ts.open_session("127.0.0.1", **options) as session:
            for _ in range(count):
                result = await session.send(SENDER, RECIPIENTS, body)
                assert result.reply.code == 250, result

    async with trio.open_nursery() as nursery:
        for count in clients.shares(n, connections):
            nursery.start_soon(one, count)


async def run_ceiling(options: dict[str, Any], n: int, connections: int, body: bytes) -> None:
    """``bench/ceiling.py`` (hand-written, no library) over the same streams."""
    connect = options.get("connect")
    params = {"host": "127.0.0.1", "port": options["port"]}
    rcpts, shares = RECIPIENTS, clients.shares(n, connections)
    if connect is None:
        await clients.ceiling.run(params, shares, body, SENDER, rcpts)
        return
    real = trio.open_tcp_stream
    trio.open_tcp_stream = connect  # type: ignore[assignment]
    try:
        await clients.ceiling.run(params, shares, body, SENDER, rcpts)
    finally:
        trio.open_tcp_stream = real


Runner = Callable[[dict[str, Any], int, int, bytes], Awaitable[None]]


def cpu_per_message(runner: Runner, options: dict[str, Any], n: int, connections: int,
                    body: bytes) -> float:  # fmt: skip
    """CPU µs per message of one run of *n* messages (after a warm-up run)."""
    trio.run(runner, options, 50, 1, body)
    before = resource.getrusage(resource.RUSAGE_SELF)
    trio.run(runner, options, n, connections, body)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu * 1e6 / n


def calls_per_message(runner: Runner, options: dict[str, Any], n: int, connections: int,
                      body: bytes) -> Counter[str]:  # fmt: skip
    """Python calls per message, by where the callee lives: the difference
    between a run of *n* messages and a run of *n*/2 (so set-up and tear-down
    cancel out)."""

    def count(m: int) -> Counter[str]:
        counts: Counter[str] = Counter()
        here = __file__

        def profile(frame: Any, event: str, _arg: Any) -> None:
            if event != "call":
                return
            filename = frame.f_code.co_filename
            if "/trio_sendmail/" in filename:
                counts["trio_sendmail"] += 1
            elif "/trio/" in filename:
                counts["trio"] += 1
            elif filename == here and frame.f_code.co_name in ScriptedStream.__dict__:
                return
            else:
                counts["other"] += 1

        trio.run(runner, options, 10, 1, body)  # imports, caches
        sys.setprofile(profile)
        try:
            trio.run(runner, options, m, connections, body)
        finally:
            sys.setprofile(None)
        return counts

    full, half = count(n), count(n // 2)
    per: Counter[str] = Counter()
    for key in full:
        per[key] = round((full[key] - half[key]) / (n - n // 2))
    per["total"] = sum(per.values())
    return per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=None, help="smtp-sink's port on 127.0.0.1")
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--connections", type=int, default=8, help="for the sink modes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--only", nargs="*", help="modes to run")
    parser.add_argument("--no-calls", action="store_true", help="skip counting calls")
    args = parser.parse_args()
    body = clients.message(args.size)
    modes: list[tuple[str, Runner, dict[str, Any], int]] = [
        ("mem-bulk", run_bulk, _memory_options(False), 1),
        ("mem-bulk-chunking", run_bulk, _memory_options(True), 1),
        ("mem-ceiling", run_ceiling, _memory_options(False), 1),
        ("mem-session", run_session, _memory_options(False), 1),
        ("mem-session-chunking", run_session, _memory_options(True), 1),
    ]
    if args.port is not None:
        sink = _sink_options(args.port)
        modes += [
            ("sink-ceiling-1", run_ceiling, sink, 1),
            ("sink-bulk-1", run_bulk, sink, 1),
            ("sink-ceiling", run_ceiling, sink, args.connections),
            ("sink-bulk", run_bulk, sink, args.connections),
            ("sink-session", run_session, sink, args.connections),
        ]
    print(f"{args.messages} x {args.size} B messages, {args.repeats} repetitions")
    print(f"{'mode':22} {'CPU µs/msg':>18} {'calls/msg':>10} {'ts':>5} {'trio':>5} {'other':>5}")
    for name, runner, options, connections in modes:
        if args.only and name not in args.only:
            continue
        cpus = [cpu_per_message(runner, options, args.messages, connections, body)
                for _ in range(args.repeats)]  # fmt: skip
        calls: Counter[str] = Counter()
        if not args.no_calls:
            calls = calls_per_message(runner, options, 400, connections, body)
        print(
            f"{name:22} {statistics.median(cpus):7.1f} ({min(cpus):5.1f}-{max(cpus):5.1f})"
            f" {calls['total']:10} {calls['trio_sendmail']:5} {calls['trio']:5}"
            f" {calls['other']:5}",
            flush=True,
        )


if __name__ == "__main__":
    main()
