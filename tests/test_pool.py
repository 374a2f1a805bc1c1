"""The connection pool over loopback TCP: concurrency, limits, reuse order, idle
checks, recovery from stale connections, back-off, rate limits and closing.

The pool opens its own TCP connections, so these tests run servers on
127.0.0.1: the strict :class:`FakeSMTPServer`, or :class:`StubServer`, a small
scripted server whose replies tests can replace per command (and which tags
each reply to the end of data with the connection it came on).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final, Literal

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing

import trio_sendmail as ts
from trio_sendmail.testing import (
    FakeSMTPServer,
    TestCertificates,
    make_test_certificates,
    serve_fake_smtp,
)

from . import defaults
from .helpers import (
    PASSWORD,
    USERS,
    ServerVariant,
)

LOCAL: Final = "127.0.0.1"
PLAIN: Final = ts.TLSMode.INSECURE_PLAINTEXT
TIMEOUTS: Final = ts.Timeouts()
SENDER: Final = "a@example.com"
RECIPIENTS: Final = ("b@example.com",)

# --------------------------------------------------------------------------------------------
# A scripted SMTP server on loopback TCP

#: Close the connection without a reply.
DROP: Final = "drop"
#: Never answer (until the test ends).
HANG: Final = "hang"
#: What a hook returns: a reply to send, DROP, HANG, or None for the default reply.
Action = bytes | Literal["drop", "hang"] | None


class _Reader:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError
        self.buf += data

    async def line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            await self._fill()
        line = bytes(self.buf[: end + 2])
        del self.buf[: end + 2]
        return line

    async def data(self) -> bytes:
        """The message up to the final dot (not included, dots not unstuffed)."""
        searched = 0
        while True:
            if self.buf.startswith(b".\r\n"):
                del self.buf[:3]
                return b""
            end = self.buf.find(b"\r\n.\r\n", max(0, searched - 4))
            if end >= 0:
                data = bytes(self.buf[: end + 2])
                del self.buf[: end + 5]
                return data
            searched = len(self.buf)
            await self._fill()

    async def exactly(self, size: int) -> bytes:
        while len(self.buf) < size:
            await self._fill()
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data


@attrs.define(eq=False)
class Conn:
    """One connection the stub server accepted."""

    index: int
    opened: float
    stream: trio.abc.Stream
    reader: _Reader
    commands: list[str] = attrs.field(factory=list)
    #: Messages answered with 2xx on this connection.
    messages: list[bytes] = attrs.field(factory=list)
    #: A MAIL command was accepted and its transaction is open.
    mail: bool = False
    rcpts: list[str] = attrs.field(factory=list)
    #: The message data of the open transaction: after 354, or from the first BDAT on.
    in_data: bool = False
    #: The BDAT chunks of the open transaction so far.
    chunks: bytearray = attrs.field(factory=bytearray)
    quit: bool = False
    closed: bool = False
    closed_at: float | None = None

    def end_transaction(self) -> None:
        self.mail = self.in_data = False
        self.rcpts.clear()
        self.chunks.clear()


CommandHook = Callable[[Conn, str], Awaitable[Action]]
DataHook = Callable[[Conn, bytes], Awaitable[Action]]
GreetingHook = Callable[["StubServer", Conn], Awaitable[Action]]

#: What StubServer offers by default; a variant adds or removes PIPELINING and CHUNKING.
STUB_EXTENSIONS: Final = ("PIPELINING", "8BITMIME")


class StubServer:
    """A small SMTP server: hooks may replace any reply.

    Every reply to the end of data (the final dot, or ``BDAT … LAST``) is
    ``250 2.0.0 queued conn=<n> msg=<m>`` by default, so a test can tell from
    :attr:`SendResult.reply` which connection carried a message. A reply that
    starts with ``421`` closes the connection.

    With *variant*, PIPELINING and CHUNKING are added to or removed from
    *extensions* as it says. BDAT goes through the *command* hook too (before its
    chunk is read; a hook that returns a reply has the chunk read and discarded,
    and the transaction ended). Like a real server, the stub refuses RCPT without
    an accepted MAIL (503), and DATA or BDAT without an accepted recipient (554,
    after reading the chunk).
    """

    def __init__(
        self,
        *,
        extensions: Iterable[str] = STUB_EXTENSIONS,
        variant: ServerVariant | None = None,
        greeting: GreetingHook | None = None,
        command: CommandHook | None = None,
        end_of_data: DataHook | None = None,
        idle_timeout: float | None = None,
        idle_reply: bytes = b"",
    ) -> None:
        self.extensions = tuple(extensions) if variant is None else variant.extensions(extensions)
        self.greeting = greeting
        self.command = command
        self.end_of_data = end_of_data
        self.idle_timeout = idle_timeout
        self.idle_reply = idle_reply
        self.conns: list[Conn] = []
        self.active = 0
        self.max_active = 0
        #: (virtual time, connection, command line) for every command.
        self.log: list[tuple[float, int, str]] = []
        #: (connection, data) of every message whose end of data arrived (with recipients).
        self.received: list[tuple[int, bytes]] = []
        #: (connection, data) of every message answered with 2xx.
        self.accepted: list[tuple[int, bytes]] = []

    @property
    def chunking(self) -> bool:
        return "CHUNKING" in self.extensions

    def commands(self, verb: str) -> list[tuple[float, int, str]]:
        return [entry for entry in self.log if entry[2].upper().startswith(verb)]

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = Conn(len(self.conns) + 1, trio.current_time(), stream, _Reader(stream))
        self.conns.append(conn)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            with contextlib.suppress(EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
                await self._run(conn)
        finally:
            self.active -= 1
            conn.closed = True
            conn.closed_at = trio.current_time()
            await trio.aclose_forcefully(stream)

    async def _say(self, conn: Conn, action: Action) -> bool:
        """Send *action*; False when the connection must end."""
        if action == DROP:
            return False
        if action == HANG:
            await trio.sleep_forever()
        assert isinstance(action, bytes)
        await conn.stream.send_all(action)
        return not action.startswith(b"421")

    def _ehlo(self) -> bytes:
        lines = ["stub.example.test", *self.extensions]
        return b"".join(
            f"250{'-' if i < len(lines) - 1 else ' '}{line}\r\n".encode()
            for i, line in enumerate(lines)
        )

    async def _line(self, conn: Conn) -> bytes:
        if self.idle_timeout is None or conn.reader.buf:
            return await conn.reader.line()
        with trio.move_on_after(self.idle_timeout):
            return await conn.reader.line()
        # The client was idle too long: close (with a reply, if one is set).
        if self.idle_reply:
            await conn.stream.send_all(self.idle_reply)
        raise EOFError

    async def _finish_message(self, conn: Conn, data: bytes) -> bool:
        self.received.append((conn.index, data))
        conn.end_transaction()
        action = None if self.end_of_data is None else await self.end_of_data(conn, data)
        if action is None:
            action = (
                f"250 2.0.0 queued conn={conn.index} msg={len(conn.messages) + 1}\r\n".encode()
            )
        if isinstance(action, bytes) and action.startswith(b"2"):
            conn.messages.append(data)
            self.accepted.append((conn.index, data))
        return await self._say(conn, action)

    async def _bdat(self, conn: Conn, text: str) -> bool:
        """Serve one BDAT command (RFC 3030); False when the connection must end."""
        words = text.split(" ")
        if len(words) not in (2, 3) or not words[1].isdigit() or "CHUNKING" not in self.extensions:
            return await self._say(conn, b"501 5.5.4 syntax: BDAT size [LAST]\r\n")
        last = len(words) == 3 and words[2].upper() == "LAST"
        action = None if self.command is None else await self.command(conn, text)
        if action in (DROP, HANG):
            return await self._say(conn, action)
        chunk = await conn.reader.exactly(int(words[1]))  # read even if refused (§2)
        if action is not None:
            conn.end_transaction()
            return await self._say(conn, action)
        if not conn.mail:
            return await self._say(conn, b"503 5.5.1 need MAIL command\r\n")
        if not conn.rcpts:
            return await self._say(conn, b"554 5.5.1 no valid recipients\r\n")
        conn.in_data = True
        conn.chunks += chunk
        if last:
            return await self._finish_message(conn, bytes(conn.chunks))
        return await self._say(conn, b"250 2.0.0 %d octets received\r\n" % len(chunk))

    async def _run(self, conn: Conn) -> None:
        greeting = None if self.greeting is None else await self.greeting(self, conn)
        if greeting is None:
            greeting = b"220 stub.example.test ESMTP\r\n"
        if not await self._say(conn, greeting):
            return
        assert isinstance(greeting, bytes)  # DROP and HANG do not come back
        if not greeting.startswith(b"2"):
            return
        while True:
            text = (await self._line(conn)).decode("utf-8", "replace")[:-2]
            conn.commands.append(text)
            self.log.append((trio.current_time(), conn.index, text))
            verb = text.partition(" ")[0].upper()
            if verb == "BDAT":
                if not await self._bdat(conn, text):
                    return
                continue
            action = None if self.command is None else await self.command(conn, text)
            if action is None:
                action = self._default(conn, verb, text)
            if verb == "MAIL":
                conn.end_transaction()
                conn.mail = isinstance(action, bytes) and action.startswith(b"2")
            elif verb == "RSET":
                conn.end_transaction()
            if not await self._say(conn, action):
                return
            assert isinstance(action, bytes)
            if verb == "QUIT" and action.startswith(b"221"):
                conn.quit = True
                return
            if verb == "DATA" and action.startswith(b"354"):
                conn.in_data = True
                if not await self._finish_message(conn, await conn.reader.data()):
                    return

    def _default(self, conn: Conn, verb: str, text: str) -> bytes:
        if verb in ("EHLO", "HELO"):
            return self._ehlo()
        if verb in ("MAIL", "RSET"):
            return b"250 2.0.0 ok\r\n"
        if verb == "RCPT":
            if not conn.mail:
                return b"503 5.5.1 need MAIL command\r\n"
            conn.rcpts.append(text)
            return b"250 2.1.5 ok\r\n"
        if verb == "DATA":
            if conn.chunks:
                return b"503 5.5.1 DATA after BDAT\r\n"
            return b"354 go ahead\r\n" if conn.rcpts else b"554 5.5.1 no valid recipients\r\n"
        if verb == "NOOP":
            return b"250 2.0.0 ok\r\n"
        if verb == "QUIT":
            return b"221 2.0.0 bye\r\n"
        return b"502 5.5.1 not implemented\r\n"


@asynccontextmanager
async def serve_tcp(handler: Callable[[trio.SocketStream], Awaitable[None]]) -> AsyncIterator[int]:
    """Serve *handler* on a free loopback port for the duration of the block."""
    listeners = await trio.open_tcp_listeners(0, host=LOCAL)
    port: int = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handler, listeners)
        yield port
        nursery.cancel_scope.cancel()


class Counting:
    """A FakeSMTPServer on TCP that counts the connections open at once."""

    def __init__(self, server: FakeSMTPServer) -> None:
        self.server = server
        self.active = 0
        self.max_active = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self.server.handle_stream(stream)
        finally:
            self.active -= 1


def pool_at(
    port: int, *, timeouts: ts.Timeouts = TIMEOUTS, **limits: Any
) -> AbstractAsyncContextManager[ts.Pool]:
    return defaults.open_pool(
        LOCAL,
        port=port,
        tls=PLAIN,
        timeouts=timeouts,
        limits=ts.PoolLimits(**limits),
    )


def body(key: int) -> bytes:
    return b"Subject: m%d\r\n\r\nkey=%d\r\n" % (key, key)


def conn_of(result: ts.SendResult) -> int:
    match = re.search(r"conn=(\d+)", result.reply.text)
    assert match is not None, result.reply
    return int(match.group(1))


def check_consistent(stats: ts.PoolStatistics, limit: int) -> None:
    assert stats.connections_open == (
        stats.connections_idle + stats.connections_busy + stats.connections_opening
    )
    assert 0 <= stats.connections_open <= limit
    assert stats.waiting >= 0


async def until(predicate: Callable[[], bool], *, timeout: float = 10.0) -> None:
    # Polls: the states waited for (pool statistics, server state) have no event.
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.001)


@attrs.define(eq=False)
class Held:
    """A send whose message is a stream the test holds open: its connection stays busy."""

    chunks: trio.MemorySendChannel[bytes]
    done: trio.Event = attrs.field(factory=trio.Event)
    result: ts.SendResult | None = None
    error: BaseException | None = None

    @property
    def streaming(self) -> bool:
        """The send got a connection and waits for the message's next chunk."""
        return self.chunks.statistics().tasks_waiting_receive > 0

    async def finish(self, data: bytes = b"Subject: held\r\n\r\nheld\r\n") -> ts.SendResult:
        await self.chunks.send(data)
        await self.chunks.aclose()
        await self.done.wait()
        assert self.result is not None, self.error
        return self.result


def hold(pool: ts.Pool, nursery: trio.Nursery) -> Held:
    send, receive = trio.open_memory_channel[bytes](0)
    held = Held(send)

    async def run() -> None:
        try:
            held.result = await pool.send(SENDER, RECIPIENTS, receive)
        except Exception as exc:
            held.error = exc
        finally:
            held.done.set()

    nursery.start_soon(run)
    return held


async def finish_all(helds: list[Held]) -> list[ts.SendResult]:
    """Finish held sends in the order they get a connection."""
    results = []
    pending = list(helds)
    while pending:
        await until(lambda: any(held.streaming for held in pending))
        held = next(held for held in pending if held.streaming)
        results.append(await held.finish())
        pending.remove(held)
    return results


def in_data(stub: StubServer) -> int:
    """The connections whose send is under way: in its message data, or (with CHUNKING,
    where a streamed message sends no command before its first chunk) past RCPT."""
    return sum(conn.in_data or (stub.chunking and bool(conn.rcpts)) for conn in stub.conns)


# --------------------------------------------------------------------------------------------
# Concurrency


async def test_concurrent_sends_use_at_most_max_connections(server_variant: ServerVariant) -> None:
    server = FakeSMTPServer(extensions=server_variant.extensions())
    counting = Counting(server)
    samples: list[ts.PoolStatistics] = []
    async with serve_tcp(counting.handle) as port, pool_at(port, max_connections=4) as pool:
        done = 0

        async def one(key: int) -> None:
            nonlocal done
            result = await pool.send(SENDER, [f"r{key}@example.com"], body(key))
            assert result.reply.code == 250
            samples.append(pool.statistics())
            done += 1

        async def sample() -> None:
            while done < 50:
                samples.append(pool.statistics())
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample)
            for key in range(50):
                nursery.start_soon(one, key)
        final = pool.statistics()

    datas = sorted(message.data for message in server.messages)
    assert datas == sorted(body(key) for key in range(50))  # each exactly once
    assert [m.recipients for m in server.messages if m.data == body(7)] == [("r7@example.com",)]
    assert server.connections == 4
    assert counting.max_active == 4
    for stats in samples:
        check_consistent(stats, 4)
        assert stats.connections_busy <= 4
        assert stats.waiting <= 50 - 4
        assert stats.retries == stats.failures == stats.connection_failures == 0
    assert max(stats.waiting for stats in samples) > 0  # callers did queue up
    assert max(stats.connections_busy for stats in samples) == 4
    sent = [stats.messages_sent for stats in samples]
    assert sent == sorted(sent)  # the counter only grows
    assert final == ts.PoolStatistics(
        connections_open=4,
        connections_idle=4,
        connections_busy=0,
        connections_opening=0,
        target_size=4,
        waiting=0,
        messages_sent=50,
        retries=0,
        failures=0,
        connection_failures=0,
    )
    assert counting.active == 0  # every connection was closed when the pool closed
    assert [line for who, line in server.transcript if who == "C"].count(b"QUIT") == 4


async def test_callers_wait_when_every_connection_is_busy(server_variant: ServerVariant) -> None:
    stub = StubServer(variant=server_variant)
    async with (
        serve_tcp(stub.handle) as port,
        pool_at(port, max_connections=2) as pool,
        trio.open_nursery() as nursery,
    ):
        first, second = hold(pool, nursery), hold(pool, nursery)
        await until(lambda: in_data(stub) == 2)
        stats = pool.statistics()
        assert (stats.connections_open, stats.connections_busy, stats.waiting) == (2, 2, 0)

        third: list[ts.SendResult] = []

        async def wait_for_a_connection() -> None:
            third.append(await pool.send(SENDER, RECIPIENTS, body(3)))

        nursery.start_soon(wait_for_a_connection)
        await until(lambda: pool.statistics().waiting == 1)
        for _ in range(10):  # it keeps waiting: back-pressure, not a third connection
            await trio.sleep(0.001)
        assert pool.statistics().waiting == 1 and not third
        assert len(stub.conns) == 2 and stub.max_active == 2

        released = await second.finish()
        await until(lambda: bool(third))
        assert conn_of(third[0]) == conn_of(released)  # it got the freed connection
        assert pool.statistics().waiting == 0
        await first.finish()
    assert len(stub.conns) == 2
    assert body(3) in [data for _, data in stub.accepted]


# --------------------------------------------------------------------------------------------
# Limits


async def test_connection_retired_after_max_messages_per_connection(
    server_variant: ServerVariant,
) -> None:
    stub = StubServer(variant=server_variant)
    async with (
        serve_tcp(stub.handle) as port,
        pool_at(port, max_messages_per_connection=3) as pool,
    ):
        used = [conn_of(await pool.send(SENDER, RECIPIENTS, body(key))) for key in range(7)]
        await until(lambda: stub.conns[1].closed)
        assert pool.statistics().connections_open == 1
    assert used == [1, 1, 1, 2, 2, 2, 3]
    assert [len(conn.messages) for conn in stub.conns] == [3, 3, 1]
    assert all(conn.quit for conn in stub.conns)  # retired politely, with QUIT


async def test_idle_connection_closed_by_the_reaper_after_max_idle(
    loopback_clock: trio.testing.MockClock,
    server_variant: ServerVariant,
) -> None:
    stub = StubServer(variant=server_variant)
    async with (
        serve_tcp(stub.handle) as port,
        pool_at(port, max_idle=10, idle_check_after=100) as pool,
    ):
        await pool.send(SENDER, RECIPIENTS, body(1))
        start = trio.current_time()
        await trio.sleep(9)
        assert pool.statistics().connections_idle == 1 and not stub.conns[0].closed
        await trio.sleep(11)
        stats = pool.statistics()
        assert (stats.connections_open, stats.connections_idle) == (0, 0)
        (conn,) = stub.conns
        assert conn.closed and conn.quit  # QUIT, then the close
        assert conn.closed_at is not None and 10 <= conn.closed_at - start <= 20
        # The next send opens a new connection.
        assert conn_of(await pool.send(SENDER, RECIPIENTS, body(2))) == 2


async def test_connection_retired_after_max_age_once_idle(
    loopback_clock: trio.testing.MockClock,
    server_variant: ServerVariant,
) -> None:
    stub = StubServer(variant=server_variant)
    async with (
        serve_tcp(stub.handle) as port,
        pool_at(port, max_age=5, max_idle=100, idle_check_after=100) as pool,
        trio.open_nursery() as nursery,
    ):
        used = []
        for key in range(3):
            used.append(conn_of(await pool.send(SENDER, RECIPIENTS, body(key))))
            await trio.sleep(1)
        # A send that is still running when the age is reached is not interrupted.
        held = hold(pool, nursery)
        await until(lambda: in_data(stub) == 1)
        await trio.sleep(5)
        used.append(conn_of(await held.finish()))
        assert stub.conns[0].closed or pool.statistics().connections_idle == 0
        used.append(conn_of(await pool.send(SENDER, RECIPIENTS, body(9))))
    assert used == [1, 1, 1, 1, 2]
    assert stub.conns[0].quit


# --------------------------------------------------------------------------------------------
# Reuse order


@pytest.mark.parametrize("order", [(0, 1, 2), (1, 2, 0), (2, 0, 1)])
async def test_most_recently_used_idle_connection_is_reused_first(
    order: tuple[int, ...], server_variant: ServerVariant
) -> None:
    stub = StubServer(variant=server_variant)
    async with (
        serve_tcp(stub.handle) as port,
        pool_at(port, max_connections=3) as pool,
        trio.open_nursery() as nursery,
    ):
        helds = [hold(pool, nursery) for _ in range(3)]
        await until(lambda: in_data(stub) == 3)
        released = [conn_of(await helds[i].finish()) for i in order]
        assert sorted(released) == [1, 2, 3]
        assert pool.statistics().connections_idle == 3
        # Most recently released first, then the one before it.
        assert conn_of(await pool.send(SENDER, RECIPIENTS, body(1))) == released[-1]
        held = hold(pool, nursery)
        await until(lambda: in_data(stub) == 1)
        assert conn_of(await pool.send(SENDER, RECIPIENTS, body(2))) == released[-2]
        assert conn_of(await held.finish()) == released[-1]
    assert len(stub.conns) == 3


# --------------------------------------------------------------------------------------------
# Idle checks and stale connections


async def test_connection_idle_past_idle_check_after_gets_noop(
    loopback_clock: trio.testing.MockClock,
    server_variant: ServerVariant,
) -> None:
    stub = StubServer(variant=server_variant)
    async with serve_tcp(stub.handle) as port, pool_at(port, idle_check_after=5) as pool:
        await pool.send(SENDER, RECIPIENTS, body(1))
        await trio.sleep(4)
        await pool.send(SENDER, RECIPIENTS, body(2))
        assert not stub.commands("NOOP")  # recently used: no check
        await trio.sleep(6)
        result = await pool.send(SENDER, RECIPIENTS, body(3))
    assert conn_of(result) == 1
    (conn,) = stub.conns
    data = "BDAT" if server_variant.chunking else "DATA"  # a small message: BDAT n LAST
    assert [c.split(" ")[0] for c in conn.commands if not c.startswith("RCPT")] == [
        "EHLO", "MAIL", data, "MAIL", data, "NOOP", "MAIL", data, "QUIT",
    ]  # fmt: skip


@pytest.mark.parametrize("failure", ["421", "closed", "silent"])
async def test_failed_idle_check_discards_the_connection_silently(
    loopback_clock: trio.testing.MockClock, failure: str, server_variant: ServerVariant
) -> None:
    async def noop(conn: Conn, line: str) -> Action:
        if not line.startswith("NOOP") or conn.index != 1:
            return None
        if failure == "421":
            return b"421 4.4.2 idle too long\r\n"
        return DROP if failure == "closed" else HANG

    stub = StubServer(variant=server_variant, command=noop)
    async with serve_tcp(stub.handle) as port, pool_at(port, idle_check_after=5) as pool:
        assert conn_of(await pool.send(SENDER, RECIPIENTS, body(1))) == 1
        await trio.sleep(10)
        result = await pool.send(SENDER, RECIPIENTS, body(2))  # no error
        assert conn_of(result) == 2
        stats = pool.statistics()
        assert (stats.retries, stats.failures, stats.messages_sent) == (0, 0, 2)
        assert stats.connections_open == 1
    assert [data for _, data in stub.received] == [body(1), body(2)]
    assert stub.conns[0].closed and "MAIL" not in stub.conns[0].commands[-1]


@pytest.mark.parametrize("reply", [b"", b"421 4.4.2 closing: idle timeout\r\n"])
@pytest.mark.parametrize("idle_check_after", [5, 2])
async def test_server_closed_idle_connection_next_send_succeeds(
    loopback_clock: trio.testing.MockClock,
    reply: bytes,
    idle_check_after: float,
    server_variant: ServerVariant,
) -> None:
    # The server drops clients idle for 3 s. With idle_check_after=5 the next
    # send finds the connection dead on MAIL and is sent again on another one
    # (a retry); with idle_check_after=2 the NOOP check finds it dead first.
    stub = StubServer(variant=server_variant, idle_timeout=3, idle_reply=reply)
    async with (
        serve_tcp(stub.handle) as port,
        pool_at(port, idle_check_after=idle_check_after, max_connections=2) as pool,
    ):
        assert conn_of(await pool.send(SENDER, RECIPIENTS, body(1))) == 1
        await trio.sleep(4)
        assert stub.conns[0].closed
        # With PIPELINING and CHUNKING, BDAT LAST and the message go out with MAIL: the
        # dead connection must be noticed before that write (it was closed, FIN and all,
        # a second ago), or answered by a 421 to MAIL, for the message to be sent again.
        result = await pool.send(SENDER, RECIPIENTS, body(2))  # no error
        assert conn_of(result) == 2
        stats = pool.statistics()
        retries = 1 if idle_check_after > 4 else 0
        assert (stats.retries, stats.failures, stats.messages_sent) == (retries, 0, 2)
        assert stats.connections_open == 1
    assert stub.accepted == [(1, body(1)), (2, body(2))]  # delivered once
    assert len(stub.conns) == 2


async def test_421_to_mail_on_reused_connection_is_resent(server_variant: ServerVariant) -> None:
    async def mail(conn: Conn, line: str) -> Action:
        if line.startswith("MAIL") and conn.index == 1 and conn.messages:
            return b"421 4.3.2 shutting down\r\n"
        return None

    stub = StubServer(variant=server_variant, command=mail)
    async with serve_tcp(stub.handle) as port, pool_at(port) as pool:
        await pool.send(SENDER, RECIPIENTS, body(1))
        result = await pool.send(SENDER, RECIPIENTS, body(2))
        assert conn_of(result) == 2
        assert pool.statistics().retries == 1
    assert stub.accepted == [(1, body(1)), (2, body(2))]


async def test_failure_on_a_fresh_connection_is_not_resent(server_variant: ServerVariant) -> None:
    async def mail(conn: Conn, line: str) -> Action:
        return b"421 4.3.2 shutting down\r\n" if line.startswith("MAIL") else None

    stub = StubServer(variant=server_variant, command=mail)
    async with serve_tcp(stub.handle) as port, pool_at(port) as pool:
        with pytest.raises(ts.SMTPServiceClosing) as info:
            await pool.send(SENDER, RECIPIENTS, body(1))
        assert info.value.outcome is ts.Outcome.NOT_SENT
        stats = pool.statistics()
        assert (stats.retries, stats.failures, stats.connections_open) == (0, 1, 0)
    assert len(stub.conns) == 1 and stub.received == []


async def data_flows_then_drop(conn: Conn, line: str) -> Action:
    """A command hook: on a reused connection, let the message data begin to flow (354
    to DATA, or the first BDAT), read its first line, then drop the connection."""
    if not conn.messages:
        return None
    if line == "DATA":
        await conn.stream.send_all(b"354 go ahead\r\n")
        await conn.reader.line()  # the first line of the message, then away
        return DROP
    if line.startswith("BDAT"):
        await conn.reader.line()  # the first line of the first chunk, then away
        return DROP
    return None


async def test_streamed_message_is_not_resent_once_its_data_began_to_flow(
    server_variant: ServerVariant,
) -> None:
    stub = StubServer(variant=server_variant, command=data_flows_then_drop)
    async with serve_tcp(stub.handle) as port, pool_at(port) as pool:
        await pool.send(SENDER, RECIPIENTS, body(1))
        send, receive = trio.open_memory_channel[bytes](0)
        errors: list[ts.SMTPError] = []

        async def sender() -> None:
            try:
                await pool.send(SENDER, RECIPIENTS, receive)
            except ts.SMTPError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            with contextlib.suppress(trio.BrokenResourceError):
                while True:  # until the send gives up and closes the stream
                    await send.send(b"Subject: s\r\n\r\n" + b"line\r\n" * 20000)
        (error,) = errors
        assert isinstance(error, ts.SMTPConnectionError)
        assert error.outcome is ts.Outcome.NOT_SENT
        stats = pool.statistics()
        assert (stats.retries, stats.failures, stats.messages_sent) == (0, 1, 1)
    assert len(stub.conns) == 1  # no other connection was tried
    assert stub.received == [(1, body(1))]


async def test_bytes_message_is_not_resent_once_its_data_began_to_flow(
    server_variant: ServerVariant,
) -> None:
    # The pool's rule: "a message whose data began to flow is never sent twice".
    stub = StubServer(variant=server_variant, command=data_flows_then_drop)
    big = b"Subject: big\r\n\r\n" + b"0123456789" * 1_000_000  # far more than socket buffers
    async with serve_tcp(stub.handle) as port, pool_at(port) as pool:
        await pool.send(SENDER, RECIPIENTS, body(1))
        with pytest.raises(ts.SMTPConnectionError) as info:
            await pool.send(SENDER, RECIPIENTS, big)
        assert info.value.outcome is ts.Outcome.NOT_SENT
        assert pool.statistics().retries == 0
    assert len(stub.conns) == 1
    assert stub.received == [(1, body(1))]


@pytest.mark.parametrize("end", [DROP, HANG])
async def test_message_is_not_resent_after_its_final_dot(
    loopback_clock: trio.testing.MockClock, end: Action, server_variant: ServerVariant
) -> None:
    async def after_dot(conn: Conn, data: bytes) -> Action:
        return end if conn.messages else None

    stub = StubServer(variant=server_variant, end_of_data=after_dot)
    timeouts = ts.Timeouts(data_end=30)
    async with serve_tcp(stub.handle) as port, pool_at(port, timeouts=timeouts) as pool:
        await pool.send(SENDER, RECIPIENTS, body(1))
        start = trio.current_time()
        with pytest.raises((ts.SMTPConnectionError, ts.SMTPTimeoutError)) as info:
            await pool.send(SENDER, RECIPIENTS, body(2))
        assert info.value.outcome is ts.Outcome.UNKNOWN
        if end == HANG:  # the reply to the final dot or to BDAT LAST: Timeouts.data_end
            assert isinstance(info.value, ts.SMTPTimeoutError)
            assert info.value.phase == "data_end"
            assert trio.current_time() - start == pytest.approx(30)
        stats = pool.statistics()
        assert (stats.retries, stats.failures, stats.connections_open) == (0, 1, 0)
    assert [data for _, data in stub.received] == [body(1), body(2)]  # body(2) went out once


async def test_pipelined_bdat_message_is_not_resent_after_it_went_out() -> None:
    # With PIPELINING and CHUNKING, MAIL, RCPT and "BDAT n LAST" with the whole
    # message go out in one write. A server that takes it all and then drops
    # the connection may have queued it: sending it again risks a duplicate.
    async def after_last(conn: Conn, data: bytes) -> Action:
        return DROP if conn.messages else None

    stub = StubServer(extensions=("PIPELINING", "8BITMIME", "CHUNKING"), end_of_data=after_last)
    async with serve_tcp(stub.handle) as port, pool_at(port) as pool:
        await pool.send(SENDER, RECIPIENTS, body(1))
        assert stub.commands("BDAT")
        with pytest.raises(ts.SMTPConnectionError) as info:
            await pool.send(SENDER, RECIPIENTS, body(2))
        assert info.value.outcome is ts.Outcome.UNKNOWN
        assert pool.statistics().retries == 0
    assert [data for _, data in stub.received].count(body(2)) == 1


async def test_cancelled_send_discards_its_connection_only(
    loopback_clock: trio.testing.MockClock, server_variant: ServerVariant
) -> None:
    stub = StubServer(variant=server_variant)
    async with serve_tcp(stub.handle) as port, pool_at(port) as pool:
        await pool.send(SENDER, RECIPIENTS, body(1))
        send, receive = trio.open_memory_channel[bytes](1)
        await send.send(b"Subject: partial\r\n\r\n")
        with trio.move_on_after(0.2):
            await pool.send(SENDER, RECIPIENTS, receive)  # waits for more chunks
        stats = pool.statistics()
        assert (stats.connections_open, stats.failures, stats.retries) == (0, 1, 0)
        await until(lambda: stub.conns[0].closed)
        assert conn_of(await pool.send(SENDER, RECIPIENTS, body(2))) == 2
    assert [data for _, data in stub.received] == [body(1), body(2)]


async def test_caller_cancelled_during_idle_check_does_not_leak_the_connection(
    loopback_clock: trio.testing.MockClock,
    server_variant: ServerVariant,
) -> None:
    async def slow_noop(conn: Conn, line: str) -> Action:
        return HANG if line.startswith("NOOP") else None

    stub = StubServer(variant=server_variant, command=slow_noop)
    async with (
        serve_tcp(stub.handle) as port,
        pool_at(port, max_connections=1, idle_check_after=1) as pool,
    ):
        await pool.send(SENDER, RECIPIENTS, body(1))
        await trio.sleep(2)
        with trio.move_on_after(1) as scope:  # cancelled while NOOP awaits its reply
            await pool.send(SENDER, RECIPIENTS, body(2))
        assert scope.cancelled_caught
        stats = pool.statistics()
        assert (stats.connections_busy, stats.connections_open) == (0, 0)
        with trio.fail_after(60):
            assert conn_of(await pool.send(SENDER, RECIPIENTS, body(3))) == 2


# --------------------------------------------------------------------------------------------
# Refused connections, back-off, fatal errors


async def test_421_at_greeting_shrinks_the_pool_and_backs_off(
    loopback_clock: trio.testing.MockClock,
    server_variant: ServerVariant,
) -> None:
    async def one_at_a_time(server: StubServer, conn: Conn) -> Action:
        return b"421 4.7.0 too many connections\r\n" if server.active > 1 else None

    stub = StubServer(variant=server_variant, greeting=one_at_a_time)
    async with serve_tcp(stub.handle) as port, pool_at(port, max_connections=4) as pool:
        start = trio.current_time()
        results: list[ts.SendResult] = []

        async def one(key: int) -> None:
            results.append(await pool.send(SENDER, RECIPIENTS, body(key)))

        async with trio.open_nursery() as nursery:
            for key in range(20):
                nursery.start_soon(one, key)
        elapsed = trio.current_time() - start
        stats = pool.statistics()
    assert len(results) == 20
    assert sorted(data for _, data in stub.accepted) == sorted(body(k) for k in range(20))
    (good,) = {conn for conn, _ in stub.accepted}
    assert {conn_of(result) for result in results} == {good}
    assert stats.target_size == 1
    assert stats.connection_failures == len(stub.conns) - 1 > 0
    assert (stats.messages_sent, stats.failures) == (20, 0)
    assert elapsed >= 0.1  # the refused openers backed off (0.2 s with 50-100 % jitter)


async def test_shrunk_pool_grows_back_after_regrow_after(
    loopback_clock: trio.testing.MockClock,
    server_variant: ServerVariant,
) -> None:
    refusing = True

    async def maybe_refuse(server: StubServer, conn: Conn) -> Action:
        if refusing and server.active > 1:
            return b"421 4.7.0 too many connections\r\n"
        return None

    stub = StubServer(variant=server_variant, greeting=maybe_refuse)
    async with (
        serve_tcp(stub.handle) as port,
        pool_at(port, max_connections=3, regrow_after=30) as pool,
        trio.open_nursery() as nursery,
    ):
        for key in range(2):
            nursery.start_soon(pool.send, SENDER, RECIPIENTS, body(key))
        await until(lambda: len(stub.accepted) == 2)
        stats = pool.statistics()
        assert (stats.target_size, stats.connection_failures, stats.connections_open) == (1, 1, 1)
        refusing = False
        # Before regrow_after: a second caller waits for the one connection.
        first, second = hold(pool, nursery), hold(pool, nursery)
        await until(lambda: pool.statistics().waiting == 1)
        await finish_all([first, second])
        assert pool.statistics().target_size == 1 and len(stub.conns) == 2
        await trio.sleep(31)
        # After it: a caller that had to wait makes the pool grow by one.
        first, second = hold(pool, nursery), hold(pool, nursery)
        await until(lambda: in_data(stub) == 2)
        assert pool.statistics().target_size == 2
        used = {conn_of(result) for result in await finish_all([first, second])}
        assert len(used) == 2 and len(stub.conns) == 3


async def test_connection_refused_raises_after_connect_retries(
    loopback_clock: trio.testing.MockClock,
) -> None:
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind((LOCAL, 0))
        port = sock.getsockname()[1]
    async with pool_at(port, connect_retries=3) as pool:
        start = trio.current_time()
        with pytest.raises(ts.SMTPConnectionError, match="cannot connect"):
            await pool.send(SENDER, RECIPIENTS, body(1))
        elapsed = trio.current_time() - start
        stats = pool.statistics()
    assert stats.connection_failures == 3
    assert (stats.connections_open, stats.connections_opening, stats.messages_sent) == (0, 0, 0)
    # Two back-offs: 0.2 s then 0.4 s, each with 50-100 % jitter.
    assert 0.3 - 1e-9 <= elapsed <= 0.6 + 1e-9


def tls_pool(
    port: int, context: ssl.SSLContext, password: str, **limits: Any
) -> AbstractAsyncContextManager[ts.Pool]:
    return defaults.open_pool(
        LOCAL,
        port=port,
        tls=ts.TLSMode.IMPLICIT,
        ssl_context=context,
        authentication=ts.Authentication("alice", password),
        limits=ts.PoolLimits(**limits),
    )


@pytest.mark.parametrize("fault", ["password", "certificate"])
async def test_fatal_connect_errors_are_raised_at_once(
    loopback_clock: trio.testing.MockClock, certs: TestCertificates, fault: str
) -> None:
    server = FakeSMTPServer(ssl_context=certs.server_context, users=USERS)
    if fault == "password":
        context, password = certs.client_context, "wrong password"
        expected: type[ts.SMTPError] = ts.SMTPAuthenticationError
    else:
        context, password = make_test_certificates().client_context, PASSWORD  # another CA
        expected = ts.SMTPTLSError
    async with (
        serve_fake_smtp(server, implicit_tls=True) as port,
        tls_pool(port, context, password, connect_retries=5) as pool,
    ):
        start = trio.current_time()
        with pytest.raises(expected):
            await pool.send(SENDER, RECIPIENTS, body(1))
        assert trio.current_time() - start < 0.1  # no back-off (at least 0.1 s)
        assert pool.statistics().connection_failures == 1
    assert server.connections == 1
    assert server.messages == []


async def test_sending_with_a_good_password_over_tls(
    certs: TestCertificates, server_variant: ServerVariant
) -> None:
    server = FakeSMTPServer(
        extensions=server_variant.extensions(), ssl_context=certs.server_context, users=USERS
    )
    async with (
        serve_fake_smtp(server, implicit_tls=True) as port,
        tls_pool(port, certs.client_context, PASSWORD, max_connections=2) as pool,
        trio.open_nursery() as nursery,
    ):
        for key in range(6):
            nursery.start_soon(pool.send, SENDER, RECIPIENTS, body(key))
    assert len(server.messages) == 6
    assert all(m.tls and m.authenticated_as == "alice" for m in server.messages)
    assert server.connections == 2


async def test_fatal_connect_error_does_not_leak_a_connection_slot(
    loopback_clock: trio.testing.MockClock, certs: TestCertificates
) -> None:
    server = FakeSMTPServer(ssl_context=certs.server_context, users=USERS)
    async with (
        serve_fake_smtp(server, implicit_tls=True) as port,
        tls_pool(port, certs.client_context, "wrong password", max_connections=1) as pool,
    ):
        with pytest.raises(ts.SMTPAuthenticationError):
            await pool.send(SENDER, RECIPIENTS, body(1))
        stats = pool.statistics()
        assert (stats.connections_opening, stats.connections_open) == (0, 0)
        # A second send tries again (and fails the same way) instead of waiting forever.
        with trio.fail_after(60), pytest.raises(ts.SMTPAuthenticationError):
            await pool.send(SENDER, RECIPIENTS, body(2))


# --------------------------------------------------------------------------------------------
# Closing


async def test_leaving_the_block_quits_idle_connections_and_ends_every_task(
    server_variant: ServerVariant,
) -> None:
    server = FakeSMTPServer(extensions=server_variant.extensions())
    counting = Counting(server)
    async with serve_tcp(counting.handle) as port:
        me = trio.lowlevel.current_task()
        before = list(me.child_nurseries)
        async with pool_at(port, max_connections=3) as pool:
            mine = [n for n in me.child_nurseries if n not in before]
            assert len(mine) == 1 and mine[0].child_tasks  # the pool's own nursery
            async with trio.open_nursery() as nursery:
                for key in range(9):
                    nursery.start_soon(pool.send, SENDER, RECIPIENTS, body(key))
            assert pool.statistics().connections_idle == 3
        assert me.child_nurseries == before  # no task of the pool outlives the block
        assert pool.statistics().connections_open == 0
        await until(lambda: counting.active == 0)
    commands = [line for who, line in server.transcript if who == "C"]
    assert commands.count(b"QUIT") == 3 == server.connections
    assert len(server.messages) == 9
    with pytest.raises(trio.ClosedResourceError):
        await pool.send(SENDER, RECIPIENTS, body(99))


async def test_close_wakes_waiting_callers_and_closes_busy_connections_after_their_send(
    server_variant: ServerVariant,
) -> None:
    stub = StubServer(variant=server_variant)
    async with (
        serve_tcp(stub.handle) as port,
        pool_at(port, max_connections=1) as pool,
        trio.open_nursery() as nursery,
    ):
        held = hold(pool, nursery)
        await until(lambda: in_data(stub) == 1)
        errors: list[BaseException] = []

        async def waiter() -> None:
            try:
                await pool.send(SENDER, RECIPIENTS, body(2))
            except trio.ClosedResourceError as exc:
                errors.append(exc)

        nursery.start_soon(waiter)
        await until(lambda: pool.statistics().waiting == 1)
        await pool.aclose()
        await until(lambda: bool(errors))
        assert pool.statistics().waiting == 0
        assert not stub.conns[0].closed  # the busy send goes on
        result = await held.finish()
        assert result.reply.code == 250
        await until(lambda: stub.conns[0].closed)
        assert stub.conns[0].quit
        with pytest.raises(trio.ClosedResourceError):
            await pool.send(SENDER, RECIPIENTS, body(3))
    assert len(stub.conns) == 1


class Oops(Exception):
    pass


class OopsGroup(ExceptionGroup[Exception]):
    pass


async def test_exception_in_the_block_comes_out_unwrapped(server_variant: ServerVariant) -> None:
    server = FakeSMTPServer(extensions=server_variant.extensions())
    async with serve_fake_smtp(server) as port:
        error = Oops("mine")
        with pytest.raises(Oops) as info:
            async with pool_at(port) as pool:
                await pool.send(SENDER, RECIPIENTS, body(1))
                raise error
        assert info.value is error  # not an ExceptionGroup
        assert pool.statistics().connections_open == 0
    assert [line for who, line in server.transcript if who == "C"].count(b"QUIT") == 1


async def test_exception_group_raised_in_the_block_comes_out_as_raised() -> None:
    # The caller's own group (here a subclass, as libraries define) must come
    # back as it was raised: not wrapped, not rebuilt as a plain ExceptionGroup.
    server = FakeSMTPServer()
    async with serve_fake_smtp(server) as port:
        group = OopsGroup("several", [Oops("a"), KeyError("b")])
        with pytest.raises(ExceptionGroup) as info:
            async with pool_at(port):
                raise group
        assert type(info.value) is OopsGroup
        assert info.value is group


async def test_cancellation_of_the_block_comes_out_as_plain_cancellation(
    server_variant: ServerVariant,
) -> None:
    server = FakeSMTPServer(extensions=server_variant.extensions())
    async with serve_fake_smtp(server) as port:
        with trio.move_on_after(5) as scope:
            async with pool_at(port) as pool:
                await pool.send(SENDER, RECIPIENTS, body(1))
                scope.cancel()
                await trio.sleep_forever()
        assert scope.cancelled_caught
    assert len(server.messages) == 1


# --------------------------------------------------------------------------------------------
# Connection rate


async def test_max_connect_rate_spaces_connections(
    loopback_clock: trio.testing.MockClock,
    server_variant: ServerVariant,
) -> None:
    stub = StubServer(variant=server_variant)
    async with (
        serve_tcp(stub.handle) as port,
        pool_at(port, max_connections=6, max_connect_rate=2) as pool,
        trio.open_nursery() as nursery,
    ):
        start = trio.current_time()
        helds = [hold(pool, nursery) for _ in range(6)]
        await until(lambda: in_data(stub) == 6, timeout=30)
        for held in helds:
            await held.finish()
    opened = sorted(conn.opened for conn in stub.conns)
    assert len(opened) == 6
    gaps = [b - a for a, b in itertools.pairwise(opened)]
    assert all(gap >= 0.5 - 1e-9 for gap in gaps), gaps
    assert opened[-1] - start >= 2.5 - 1e-9


# --------------------------------------------------------------------------------------------
# Arguments


@pytest.mark.parametrize(
    "limits",
    [
        {"max_connections": 0},
        {"max_messages_per_connection": 0},
        {"max_idle": -1},
        {"max_age": math.nan},
        {"idle_check_after": -0.5},
        {"regrow_after": -1},
        {"connect_retries": 0},
        {"max_connect_rate": 0},
        {"max_connect_rate": -2.0},
    ],
)
def test_bad_limits_are_refused(limits: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        ts.PoolLimits(**limits)


async def test_no_connection_before_the_first_send() -> None:
    stub = StubServer()
    async with serve_tcp(stub.handle) as port, pool_at(port) as pool:
        await trio.sleep(0.01)
        assert stub.conns == []
        assert pool.statistics().connections_open == 0
        assert "open=0" in repr(pool)


# --------------------------------------------------------------------------------------------
# Errors while the caller is cancelled


async def test_an_error_in_the_block_survives_the_callers_cancellation(
    server_variant: ServerVariant,
) -> None:
    """The block raises while its caller's scope is cancelled: closing the pool
    (QUIT on the idle connection) must not replace the error with
    ``Cancelled``, which the cancelled scope would then swallow, losing the
    error for good."""
    server = FakeSMTPServer(extensions=server_variant.extensions())

    class Boom(Exception):
        pass

    async with serve_fake_smtp(server) as port:
        with pytest.raises(Boom), trio.CancelScope() as scope:
            async with pool_at(port) as pool:
                await pool.send(SENDER, ["r1@example.com"], body(1))  # an idle connection
                scope.cancel()
                raise Boom("the caller's own error")
    assert len(server.messages) == 1
