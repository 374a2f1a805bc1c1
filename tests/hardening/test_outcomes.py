"""Regression tests of "exact outcomes under every fault", over real loopback sockets.

Each test names the defect it pins down. The outcome rules: ACCEPTED means the
server took the message; NOT_SENT means resending cannot duplicate it; REFUSED
means the server said no to it; UNKNOWN means its end of data went out and no
answer proves what became of it.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio

import trio_sendmail as ts
import trio_sendmail._opening as opening
from trio_sendmail._address import Domain

from ..helpers import LOCK_DATA, PIPE_CHUNK, PIPE_DATA, RawServer, ServerVariant, variants

LOCAL = "127.0.0.1"
PLAIN = ts.TLSMode.INSECURE_PLAINTEXT
SENDER = "a@example.com"
RECIPIENTS = ["b@example.com"]
MESSAGE = b"Subject: hi\r\n\r\nhello\r\n"

Script = Callable[[RawServer], Awaitable[None]]


@asynccontextmanager
async def tcp_script(script: Script) -> AsyncIterator[int]:
    """Serve *script* on a free loopback port, for one connection at a time."""
    listeners = await trio.open_tcp_listeners(0, host=LOCAL)
    port: int = listeners[0].socket.getsockname()[1]

    async def handler(stream: trio.SocketStream) -> None:
        with contextlib.suppress(EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            await script(RawServer(stream))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handler, listeners)
        yield port
        nursery.cancel_scope.cancel()


def reset(server: RawServer) -> None:
    """Close the server's socket with a TCP RST (SO_LINGER 0)."""
    stream = server.stream
    assert isinstance(stream, trio.SocketStream)
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


async def envelope(server: RawServer, variant: ServerVariant) -> None:
    """Answer MAIL and one RCPT, pipelined or not."""
    await server.expect(b"MAIL", b"" if variant.pipelining else b"250 2.1.0 ok\r\n")
    await server.expect(b"RCPT", b"" if variant.pipelining else b"250 2.1.5 ok\r\n")
    if variant.pipelining:
        await server.send(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n")


# --------------------------------------------------------------------------------------------
# Defect 3: a reply the server sends unasked was paired with the next command.


@variants()
async def test_a_stray_reply_between_transactions_ends_the_session_before_a_write(
    server_variant: ServerVariant,
) -> None:
    # The stray "250" arrives in a packet of its own while the session is idle. Before
    # the fix it answered the next MAIL, and every later reply answered the wrong
    # command: a refused message could be reported accepted.
    after: list[bytes] = []

    async def script(server: RawServer) -> None:
        await server.greet_and_ehlo(server_variant.ehlo())
        await envelope(server, server_variant)
        await server.message(server_variant)
        await server.send(b"250 2.0.0 queued as A\r\n")
        await trio.sleep(0.05)
        await server.send(b"250 2.0.0 nobody asked\r\n")
        after.append(await server.eof())

    async with (
        tcp_script(script) as port,
        ts.open_session(LOCAL, port=port, tls=PLAIN, domain="client.example") as session,
    ):
        first = await session.send(SENDER, RECIPIENTS, MESSAGE)
        assert first.reply.lines == ("queued as A",)
        await trio.sleep(0.3)  # the stray reply is in the socket now
        tracker = ts.OutcomeTracker()
        with pytest.raises(ts.SMTPProtocolError, match="nobody asked") as info:
            await session.send(SENDER, RECIPIENTS, MESSAGE, tracker=tracker)
        assert info.value.outcome is ts.Outcome.NOT_SENT
        assert tracker.outcome is ts.Outcome.NOT_SENT
        assert not session.is_usable
    assert after == [b""]  # nothing of the second message was written


async def test_a_stray_reply_before_ehlo_is_not_taken_for_the_capabilities(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before the fix, a reply that came after the greeting, in a later packet,
    # answered EHLO: it became the capabilities.
    async def slow_name(stream: trio.abc.Stream) -> Domain:
        await trio.sleep(0.3)  # a slow local name lookup
        return ts.Domain.parse("client.example")

    monkeypatch.setattr(opening, "_default_ehlo_name", slow_name)
    after: list[bytes] = []

    async def script(server: RawServer) -> None:
        await server.send(b"220 srv ESMTP\r\n")
        await trio.sleep(0.05)
        await server.send(b"250-srv\r\n250 AUTH PLAIN\r\n")
        after.append(await server.eof())

    async with tcp_script(script) as port:
        with pytest.raises(ts.SMTPProtocolError, match="nobody asked"):
            async with ts.open_session(LOCAL, port=port, tls=PLAIN):
                pass  # pragma: no cover - the session must not open
    assert after == [b""]  # EHLO was never written


async def test_an_idle_421_is_a_closing_session_and_the_pool_sends_elsewhere() -> None:
    # Postfix says "421 4.4.2 … timeout exceeded" to an idle client, then closes.
    # With CHUNKING and PIPELINING the message's BDAT LAST would go out with its
    # MAIL: the 421 must be seen before that write, and the message sent again.
    connections: list[int] = []

    async def script(server: RawServer) -> None:
        index = len(connections)
        connections.append(index)
        await server.greet_and_ehlo(PIPE_CHUNK.ehlo())
        await envelope(server, PIPE_CHUNK)
        await server.message(PIPE_CHUNK)
        await server.send(b"250 2.0.0 queued\r\n")
        if index == 0:
            await server.send(b"421 4.4.2 srv Error: timeout exceeded\r\n")
            await server.eof()
            return
        await server.expect(b"QUIT", b"221 2.0.0 bye\r\n")

    limits = ts.PoolLimits(max_connections=1, idle_check_after=1000)
    async with (
        tcp_script(script) as port,
        ts.open_pool(LOCAL, port=port, tls=PLAIN, domain="client.example", limits=limits) as pool,
    ):
        await pool.send(SENDER, RECIPIENTS, MESSAGE)
        await trio.sleep(0.3)
        tracker = ts.OutcomeTracker()
        result = await pool.send(SENDER, RECIPIENTS, MESSAGE, tracker=tracker)
        assert result.reply.code == 250
        assert (tracker.outcome, tracker.attempts) == (ts.Outcome.ACCEPTED, 2)
        assert pool.statistics().retries == 1
    assert connections == [0, 1]


# --------------------------------------------------------------------------------------------
# Defect 8: a refusal that arrived before the server reset the connection was dropped.


@variants(PIPE_CHUNK, PIPE_DATA, LOCK_DATA)
async def test_a_refusal_sent_before_a_reset_is_what_the_caller_gets(
    server_variant: ServerVariant,
) -> None:
    # Like Exim over its size limit: "552" after the first block of a big message,
    # then the connection is reset while the client is still writing.
    async def script(server: RawServer) -> None:
        await server.greet_and_ehlo(server_variant.ehlo())
        await envelope(server, server_variant)
        if server_variant.chunking:
            await server.bdat()
        else:
            await server.expect(b"DATA", b"354 go\r\n")
            await server.stream.receive_some(65536)
        await server.send(b"552 5.3.4 Message size exceeds fixed limit\r\n")
        await trio.sleep(0.05)
        reset(server)

    big = b"Subject: big\r\n\r\n" + b"0123456789abcdef\r\n" * 500_000  # 9 MB
    tracker = ts.OutcomeTracker()
    async with (
        tcp_script(script) as port,
        ts.open_session(LOCAL, port=port, tls=PLAIN, domain="client.example") as session,
    ):
        with pytest.raises(ts.SMTPResponseError) as info:
            await session.send(SENDER, RECIPIENTS, big, tracker=tracker)
    assert info.value.code == 552 and not info.value.is_transient
    assert info.value.outcome in (ts.Outcome.NOT_SENT, ts.Outcome.REFUSED)
    assert tracker.outcome is info.value.outcome


# --------------------------------------------------------------------------------------------
# Defect 2: with CHUNKING, a 421 answering MAIL was reported UNKNOWN.


async def test_a_421_answering_mail_proves_the_pipelined_bdat_was_not_taken() -> None:
    async def script(server: RawServer) -> None:
        await server.greet_and_ehlo(PIPE_CHUNK.ehlo())
        await server.expect(b"MAIL", b"")
        await server.expect(b"RCPT", b"")
        await server.bdat()  # BDAT n LAST and the message, in the same write
        await server.send(b"421 4.3.2 shutting down\r\n")

    tracker = ts.OutcomeTracker()
    async with (
        tcp_script(script) as port,
        ts.open_session(LOCAL, port=port, tls=PLAIN, domain="client.example") as session,
    ):
        with pytest.raises(ts.SMTPServiceClosing) as info:
            await session.send(SENDER, RECIPIENTS, MESSAGE, tracker=tracker)
    assert info.value.outcome is ts.Outcome.NOT_SENT
    assert tracker.outcome is ts.Outcome.NOT_SENT
    transaction = tracker.transaction
    assert transaction is not None and transaction.end_written  # it went out, unread


# --------------------------------------------------------------------------------------------
# Cancellation: the tracker tells what the wire says, on every entry point.


@variants(PIPE_CHUNK, PIPE_DATA)
async def test_a_cancel_while_the_end_of_data_waits_for_its_answer_is_unknown(
    server_variant: ServerVariant,
) -> None:
    stored = trio.Event()

    async def script(server: RawServer) -> None:
        await server.greet_and_ehlo(server_variant.ehlo())
        await envelope(server, server_variant)
        await server.message(server_variant)
        stored.set()  # the server has the message; it never answers
        await server.eof()

    async with tcp_script(script) as port:
        trackers = {"Session.send": ts.OutcomeTracker(), "Pool.send": ts.OutcomeTracker()}
        async with ts.open_session(LOCAL, port=port, tls=PLAIN, domain="c.example") as session:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    lambda: session.send(
                        SENDER, RECIPIENTS, MESSAGE, tracker=trackers["Session.send"]
                    )
                )
                await stored.wait()
                await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
            assert session.outcome_unknown and not session.is_usable
        stored = trio.Event()
        async with (
            ts.open_pool(LOCAL, port=port, tls=PLAIN, domain="c.example") as pool,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(
                lambda: pool.send(SENDER, RECIPIENTS, MESSAGE, tracker=trackers["Pool.send"])
            )
            await stored.wait()
            await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    assert {name: t.outcome for name, t in trackers.items()} == {
        "Session.send": ts.Outcome.UNKNOWN,
        "Pool.send": ts.Outcome.UNKNOWN,
    }


# --------------------------------------------------------------------------------------------
# Found by the chaos test.


async def test_a_send_cancelled_while_its_connection_opens_wakes_the_next_caller() -> None:
    # With max_connections=1, a caller parks while another opens the only connection.
    # Before the fix, cancelling the opener left the parked caller asleep for ever.
    greetings: list[trio.Event] = []

    async def script(server: RawServer) -> None:
        held = trio.Event()
        greetings.append(held)
        if len(greetings) == 1:
            await held.wait()  # the first connection never greets
        await server.greet_and_ehlo(PIPE_DATA.ehlo())
        await envelope(server, PIPE_DATA)
        await server.message(PIPE_DATA)
        await server.send(b"250 2.0.0 queued\r\n")
        await server.expect(b"QUIT", b"221 2.0.0 bye\r\n")

    limits = ts.PoolLimits(max_connections=1)
    done = trio.Event()
    results: list[ts.SendResult] = []
    opener = trio.CancelScope()

    async def first() -> None:
        with opener:
            await pool.send(SENDER, RECIPIENTS, MESSAGE)  # cancelled while it connects

    async def second() -> None:
        results.append(await pool.send(SENDER, RECIPIENTS, MESSAGE))
        done.set()

    async with (
        tcp_script(script) as port,
        ts.open_pool(LOCAL, port=port, tls=PLAIN, domain="client.example", limits=limits) as pool,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(first)
        await trio.sleep(0.1)  # the first caller is opening the only connection
        nursery.start_soon(second)
        await trio.sleep(0.1)  # the second one is parked
        assert pool.statistics().waiting == 1
        opener.cancel()
        with trio.fail_after(5):
            await done.wait()
    assert len(results) == 1 and results[0].reply.code == 250


async def test_a_greeting_that_is_not_220_is_a_protocol_error() -> None:
    # A stray "250" before the real greeting would otherwise be the greeting, and the
    # 220 after it the reply to EHLO.
    async def script(server: RawServer) -> None:
        await server.send(b"250 2.0.0 nobody asked\r\n")
        await trio.sleep(0.05)
        await server.send(b"220 srv ESMTP\r\n")
        await server.eof()

    async with tcp_script(script) as port:
        with pytest.raises(ts.SMTPProtocolError, match="not 220"):
            async with ts.open_session(LOCAL, port=port, tls=PLAIN, domain="client.example"):
                pass  # pragma: no cover - the session must not open


async def test_a_cancel_during_a_retry_back_off_reports_every_waiting_message() -> None:
    # A 421 answers a pipelined end of data: that message and the one sent with it
    # both wait for a retry. A cancel during the first back-off must report both
    # (before the fix, the second one was never reported).
    async def script(server: RawServer) -> None:
        await server.greet_and_ehlo(PIPE_DATA.ehlo())
        await envelope(server, PIPE_DATA)
        await server.expect(b"DATA", b"354 go\r\n")
        await server.data()  # message 0, then message 1's envelope in the same write
        await server.expect(b"MAIL", b"")
        await server.expect(b"RCPT", b"")
        await server.expect(b"DATA", b"421 4.3.2 closing for maintenance\r\n")

    results: list[ts.BulkResult] = []
    messages = [ts.BulkMessage(SENDER, RECIPIENTS, MESSAGE, key=key) for key in (0, 1)]
    async with (
        tcp_script(script) as port,
        ts.open_pool(LOCAL, port=port, tls=PLAIN, domain="client.example") as pool,
    ):
        with trio.move_on_after(1):
            await ts.send_bulk(
                messages, pool=pool, concurrency=1, retry_backoff=1000, on_result=results.append
            )
    statuses = {result.message.key: result.status for result in results}
    assert statuses == {0: ts.Outcome.REFUSED, 1: ts.Outcome.NOT_SENT}
