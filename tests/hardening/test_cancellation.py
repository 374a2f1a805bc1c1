"""Cancellation at every checkpoint of a send, and a timeout at every reply.

Checkpoints are found systematically: an instrument counts the steps of the task
that sends, and cancels its scope right after step n, for n = 1, 2, … until a send
runs to its end without being cancelled. After each interrupted send:

* the outcome is right: ``Session.outcome_unknown`` is true exactly when the end of
  the message (the final dot, or ``BDAT … LAST``) was handed to the transport and
  its reply not read; when it is false, the server never got the end of the
  message (*not sent*); a send that returned was *accepted*;
* a session interrupted after it began to write is unusable: the next send fails
  at once and nothing more reaches the server (no RSET, no QUIT, no second message);
* the pool discards the interrupted connection and sends the next message on a new one.

Timeouts are swept the same way: the server delays its k-th reply by a second, every
phase's timeout is half a second, for k = 1, 2, …: ``SMTPError.outcome`` is
*not sent* before the final reply, *unknown* at it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing

import trio_sendmail as ts
from trio_sendmail.testing import FakeSMTPServer, serve_fake_smtp

from .. import defaults
from ..helpers import (
    HOST,
    LOCK_CHUNK,
    LOCK_DATA,
    PIPE_CHUNK,
    PIPE_DATA,
    RawServer,
    ServerVariant,
    raw_server,
)
from .support import LOOPBACK, RecordingStream

PLAIN = ts.TLSMode.INSECURE_PLAINTEXT
BODY = b"Subject: cancel me\r\n\r\n" + b"line of text\r\n" * 3
BIG_BODY = b"Subject: big\r\n\r\n" + b"0123456789abcdef\r\n" * 8000  # > 2 send buffers
MAX_STEPS = 2000


class CancelAfter(trio.abc.Instrument):
    """Cancels *scope* right after the *n*-th step of *task*."""

    def __init__(self, task: trio.lowlevel.Task, n: int, scope: trio.CancelScope) -> None:
        self.task = task
        self.n = n
        self.scope = scope
        self.steps = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1
            if self.steps == self.n:
                self.scope.cancel()


@attrs.frozen
class Config:
    name: str
    #: What the server offers (PIPELINING and CHUNKING on or off).
    variant: ServerVariant
    #: The client's own ``pipelining=`` switch (off: lockstep although the server offers it).
    pipelining: bool = True
    streamed: bool = False
    body: bytes = BODY

    @property
    def extensions(self) -> tuple[str, ...]:
        return self.variant.extensions()

    @property
    def all_at_once(self) -> bool:
        """The first write already holds the end of data (MAIL, RCPT and BDAT LAST
        pipelined with a small message)."""
        return self.variant.eod_with_envelope and self.pipelining and not self.streamed


# The server offers PIPELINING or not, CHUNKING or not (pipe-/lock-, -chunk/-data), and the
# client may turn pipelining off itself (*-lockstep with a server that offers it).
CONFIGS = [
    Config("data-pipelined", PIPE_DATA),
    Config("data-lockstep", PIPE_DATA, pipelining=False),
    Config("data-no-pipelining", LOCK_DATA),
    Config("data-streamed-big", PIPE_DATA, streamed=True, body=BIG_BODY),
    Config("data-streamed-big-no-pipelining", LOCK_DATA, streamed=True, body=BIG_BODY),
    Config("bdat-single", PIPE_CHUNK),
    Config("bdat-single-lockstep", PIPE_CHUNK, pipelining=False),
    Config("bdat-single-no-pipelining", LOCK_CHUNK),
    Config("bdat-streamed-big", PIPE_CHUNK, streamed=True, body=BIG_BODY),
    Config("bdat-streamed-big-no-pipelining", LOCK_CHUNK, streamed=True, body=BIG_BODY),
    Config("bdat-big-lockstep", PIPE_CHUNK, pipelining=False, body=BIG_BODY),
    Config("bdat-big-no-pipelining", LOCK_CHUNK, body=BIG_BODY),
]
#: One small message per server variant, and the client's own lockstep.
SMALL_CONFIGS = [config for config in CONFIGS if config.body is BODY]


async def pieces(body: bytes, size: int = 20_000) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def end_of_data_attempted(wire: bytes | bytearray) -> bool:
    """Whether the client began to write the end of its message."""
    return wire.endswith(b"\r\n.\r\n") or b" LAST\r\n" in wire


@attrs.define
class Attempt:
    cancelled: bool
    steps: int
    outcome_unknown: bool
    usable: bool
    wrote_during_send: bool
    eod_attempted: bool
    delivered: int
    after: list[bytes]


async def attempt(config: Config, n: int) -> Attempt:
    server = FakeSMTPServer(extensions=config.extensions)
    client, server_stream = trio.testing.memory_stream_pair()
    recorder = RecordingStream(client)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, server_stream)
        async with defaults.open_session(
            "mail.example.test", tls=PLAIN, stream=recorder,
            pipelining=config.pipelining,
        ) as session:  # fmt: skip
            before = len(recorder.attempted)
            mail = pieces(config.body) if config.streamed else config.body
            with trio.CancelScope() as scope:
                instrument = CancelAfter(trio.lowlevel.current_task(), n, scope)
                trio.lowlevel.add_instrument(instrument)
                try:
                    await session.send("a@example.com", ["b@example.com"], mail)
                finally:
                    trio.lowlevel.remove_instrument(instrument)
            transcript_mark = len(server.transcript)
            result = Attempt(
                cancelled=scope.cancelled_caught,
                steps=instrument.steps,
                outcome_unknown=session.outcome_unknown,
                usable=session.is_usable,
                wrote_during_send=len(recorder.attempted) > before,
                eod_attempted=end_of_data_attempted(recorder.attempted[before:]),
                delivered=0,
                after=[],
            )
            if not result.usable:
                with pytest.raises((ts.SMTPConnectionError, trio.ClosedResourceError)):
                    await session.send("a@example.com", ["b@example.com"], b"again")
    result.delivered = len(server.messages)
    result.after = [line for who, line in server.transcript[transcript_mark:] if who == "C"]
    return result


def check(result: Attempt) -> None:
    if not result.cancelled:
        assert result.delivered == 1 and not result.outcome_unknown and result.usable
        return
    # Outcome: unknown exactly when the end of data went out and its reply was not read.
    assert result.outcome_unknown is result.eod_attempted
    if not result.outcome_unknown:
        assert result.delivered == 0, "reported not sent, but the server has the message"
    # An interrupted session is never reused.
    if result.wrote_during_send:
        assert not result.usable
    if not result.usable:
        assert result.after == [], result.after  # not even QUIT or RSET
    else:
        assert not result.wrote_during_send and result.delivered == 0


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
async def test_cancel_send_at_every_checkpoint(config: Config) -> None:
    seen = {"not sent": 0, "unknown": 0, "accepted": 0}
    for n in range(1, MAX_STEPS):
        result = await attempt(config, n)
        check(result)
        if not result.cancelled:
            seen["accepted"] += 1
            break
        seen["unknown" if result.outcome_unknown else "not sent"] += 1
    else:  # pragma: no cover
        pytest.fail(f"the send was still cancelled after {MAX_STEPS} steps")
    # The sweep crossed every region: before the end of data, after it, and the end.
    assert (seen["not sent"] > 0) is not config.all_at_once, seen
    assert seen["unknown"] > 0 and seen["accepted"] == 1, seen


# ------------------------------------------------------------------ timeouts


class DelayKth(trio.abc.Stream):
    """The server side of a stream: its *k*-th write is delayed by *delay* seconds."""

    def __init__(self, inner: trio.abc.Stream, k: int, delay: float) -> None:
        self.inner = inner
        self.k = k
        self.delay = delay
        self.writes = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        if self.writes == self.k:
            await trio.sleep(self.delay)
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


HALF = ts.Timeouts(connect=0.5, tls_handshake=0.5, greeting=0.5, command=0.5, mail=0.5,
                   rcpt=0.5, data_init=0.5, data_block=0.5, data_end=0.5, quit=0.5)  # fmt: skip


@pytest.mark.parametrize("config", SMALL_CONFIGS, ids=lambda c: c.name)
async def test_timeout_at_every_reply(
    config: Config, autojump_clock: trio.testing.MockClock
) -> None:
    outcomes: list[ts.Outcome | None] = []
    phases: list[str] = []
    for k in range(1, 50):
        server = FakeSMTPServer(extensions=config.extensions)
        client, server_stream = trio.testing.memory_stream_pair()
        delayed = DelayKth(server_stream, k, 1.0)
        error: ts.SMTPTimeoutError | None = None
        unknown = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle_stream, delayed)
            try:
                async with defaults.open_session(
                    "mail.example.test", tls=PLAIN, stream=client,
                    pipelining=config.pipelining, timeouts=HALF,
                ) as session:  # fmt: skip
                    try:
                        await session.send("a@example.com", ["b@example.com"], config.body)
                    finally:
                        unknown = session.outcome_unknown
            except ts.SMTPTimeoutError as exc:
                error = exc
            nursery.cancel_scope.cancel()
        if error is None:
            break
        outcomes.append(error.outcome)
        phases.append(error.phase)
        if error.outcome is ts.Outcome.UNKNOWN:
            # The end of data went out: with BDAT LAST pipelined behind MAIL, that is
            # already so while the client waits for the reply to MAIL.
            assert unknown is True
            assert error.phase == "data_end" or config.all_at_once
        elif error.outcome is ts.Outcome.NOT_SENT:
            assert unknown is False and server.messages == []
        else:
            # While opening: the greeting or the reply to EHLO.
            assert error.outcome is None and error.phase in ("greeting", "command")
    # The greeting, EHLO, then every reply of the transaction, the final one last.
    assert outcomes[:2] == [None, None] and outcomes[-1] is ts.Outcome.UNKNOWN
    assert set(outcomes[2:-1]) == {ts.Outcome.NOT_SENT} or config.all_at_once
    # The reply to the end of data (final dot or BDAT LAST) is bounded by data_end.
    assert phases[-1] == "data_end", phases


# ------------------------------------------------------------------ the pool


@pytest.mark.parametrize("streamed", [False, True], ids=["bytes", "streamed"])
async def test_pool_discards_an_interrupted_connection(
    streamed: bool, server_variant: ServerVariant
) -> None:
    server = FakeSMTPServer(extensions=server_variant.extensions())
    async with serve_fake_smtp(server) as port:
        for n in range(1, MAX_STEPS):
            server.messages.clear()
            async with defaults.open_pool(
                LOOPBACK, port=port, tls=PLAIN,
                limits=ts.PoolLimits(max_connections=1),
            ) as pool:  # fmt: skip
                mail = pieces(BIG_BODY) if streamed else BODY
                with trio.CancelScope() as scope:
                    instrument = CancelAfter(trio.lowlevel.current_task(), n, scope)
                    trio.lowlevel.add_instrument(instrument)
                    try:
                        await pool.send("a@example.com", ["b@example.com"], mail)
                    finally:
                        trio.lowlevel.remove_instrument(instrument)
                stats = pool.statistics()
                if not scope.cancelled_caught:
                    assert len(server.messages) == 1 and stats.connections_idle == 1
                    break
                assert stats.connections_busy == 0
                # An interrupted connection is not kept for reuse: what stays idle is a
                # connection that the cancellation did not interrupt (private state, read
                # because no statistic tells a healthy idle connection from another).
                for connection in pool._idle:
                    assert connection.session.is_usable
                    assert not connection.session.outcome_unknown
                first = len(server.messages)
                # The next message goes through (a reused, half-used connection would
                # have the fake server refuse a nested MAIL, or swallow it as data).
                await pool.send("a@example.com", ["b@example.com"], b"next")
                assert len(server.messages) == first + 1
                assert server.messages[-1].data == b"next\r\n"
            assert not any(line.upper() == b"RSET" for _, line in server.transcript)
        else:  # pragma: no cover
            pytest.fail("the pool's send was still cancelled after MAX_STEPS steps")


# ------------------------------------------------------------------ a reply to the end of data


@pytest.mark.parametrize("code", [250, 451, 554, 421])
async def test_the_reply_to_the_end_of_data_decides_the_outcome(
    server_variant: ServerVariant, code: int
) -> None:
    """2xx: accepted. Any 4xx or 5xx reply, 421 included, is an answer: the message was
    refused (Outcome.REFUSED), not lost in the dark (Outcome.UNKNOWN)."""
    extensions = server_variant.extensions()
    text = {250: "2.0.0 queued", 451: "4.3.0 try later", 554: "5.7.1 no", 421: "4.3.2 bye"}
    server = FakeSMTPServer(extensions=extensions, data_reply=(code, text[code]))
    client, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, server_stream)
        async with defaults.open_session("mail.example.test", tls=PLAIN, stream=client) as session:
            error: ts.SMTPResponseError | None = None
            try:
                await session.send("a@example.com", ["b@example.com"], BODY)
            except ts.SMTPResponseError as exc:
                error = exc
            unknown, usable = session.outcome_unknown, session.is_usable
    assert not unknown
    assert usable is (code != 421)
    if code == 250:
        assert error is None and len(server.messages) == 1
        return
    assert error is not None and error.code == code
    assert isinstance(error, ts.SMTPServiceClosing) is (code == 421)
    assert error.outcome is ts.Outcome.REFUSED, error.outcome


@pytest.mark.parametrize("where", ["mail", "data", "dot"])
async def test_cancelled_session_is_broken_and_never_reused(
    autojump_clock: trio.testing.MockClock, where: str, server_variant: ServerVariant
) -> None:
    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(server_variant.ehlo())
        await srv.expect(b"MAIL", b"" if where == "mail" else b"250 ok\r\n")
        if where != "mail":
            await srv.expect(b"RCPT", b"250 ok\r\n")
            if not server_variant.chunking:
                await srv.expect(b"DATA", b"354 go\r\n")
        if where == "dot":  # the final dot, or BDAT LAST with the one chunk
            await (srv.bdat() if server_variant.chunking else srv.data())
        await trio.sleep_forever()

    send, receive = trio.open_memory_channel[bytes](1)
    await send.send(b"first chunk\r\n")
    async with (
        raw_server(script) as (stream, srv),
        defaults.open_session(HOST, tls=PLAIN, stream=stream) as session,
    ):
        if where == "dot":
            await send.aclose()
        with trio.move_on_after(5):
            await session.send("a@example.com", ["b@example.com"], receive)
        assert not session.is_usable
        assert session.outcome_unknown is (where == "dot")
        with pytest.raises((ts.SMTPConnectionError, trio.ClosedResourceError)):
            await session.send("a@example.com", ["b@example.com"], b"again")
        rest = await srv.eof()
        assert b"RSET" not in rest and b"again" not in rest and b"QUIT" not in rest
    if where == "data":
        # The producer learns that nobody reads any more.
        with pytest.raises(trio.BrokenResourceError):
            await send.send(b"more")
