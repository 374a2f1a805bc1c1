"""The end-of-data gate (``OutcomeTracker(before_end_of_data=…)``, send_bulk's
``before_end_of_data``): nothing of a message's end of data (the final
``CRLF.CRLF``, or the ``BDAT … LAST`` chunk) reaches the server before the gate
returns; a gate that raises or is cancelled leaves the message undelivered
(:attr:`Outcome.NOT_SENT`) on a closed connection; the wait counts against no
timeout. The outbox arms its rows there (issue #16).
"""

from __future__ import annotations

import re

import pytest
import trio
import trio.testing

import trio_sendmail as ts
from trio_sendmail._address import ForwardPath, ReversePath
from trio_sendmail._core import ClientCore
from trio_sendmail._transaction import Transaction
from trio_sendmail.testing import FakeSMTPServer, TestCertificates, serve_fake_smtp

from .helpers import ServerFactory, ServerVariant, fake_session
from .test_core import BOB, SENDER, feed_whole, ready

BODY = b"Subject: gated\r\n\r\nline one\r\n.dot line\r\n"


async def _never() -> None:  # pragma: no cover - a gate the core never awaits
    raise AssertionError


def _gate(core: ClientCore) -> Transaction | None:
    return core.gate  # read through a call, so that mypy does not narrow it


def _end_written(txn: Transaction) -> bool:
    return txn.end_written


def _outcome(txn: Transaction) -> ts.Outcome:
    return txn.outcome


def _gated(core: ClientCore) -> Transaction:
    txn = core.mail(SENDER)
    txn.gate = _never
    return txn


# ------------------------------------------------------------------ the core


def test_data_end_is_held_at_the_gate() -> None:
    core = ready()
    txn = _gated(core)
    core.rcpt(BOB)
    core.data()
    core.data_to_send()
    feed_whole(core, b"250 ok\r\n250 ok\r\n354 go\r\n")
    core.end_data(BODY)
    held = core.take_output()
    assert held == b"Subject: gated\r\n\r\nline one\r\n..dot line\r\n"
    assert core.has_output and core.take_output() == b""
    assert _gate(core) is txn and txn.data_written and not _end_written(txn)
    assert _outcome(txn) is ts.Outcome.NOT_SENT
    core.open_gate()
    assert core.take_output() == b".\r\n"
    assert _gate(core) is None
    assert txn.end_written
    assert _outcome(txn) is ts.Outcome.UNKNOWN


def test_data_end_without_a_final_line_break() -> None:
    core = ready()
    _gated(core)
    core.rcpt(BOB)
    core.data()
    core.data_to_send()
    feed_whole(core, b"250 ok\r\n250 ok\r\n354 go\r\n")
    core.end_data(b"no line break")
    assert core.take_output() == b"no line break"
    assert core.take_output() == b""
    core.open_gate()
    assert core.take_output() == b"\r\n.\r\n"


def test_a_limited_take_stops_at_the_gate() -> None:
    core = ready()
    _gated(core)
    core.rcpt(BOB)
    core.data()
    core.data_to_send()
    feed_whole(core, b"250 ok\r\n250 ok\r\n354 go\r\n")
    core.end_data(b"abcdefgh\r\n")
    assert core.take_output(4) == b"abcd"
    assert core.take_output(100) == b"efgh\r\n"
    assert core.take_output(100) == b""
    core.open_gate()
    assert core.take_output(1) == b"."
    assert core.take_output(100) == b"\r\n"


def test_bdat_last_is_held_whole_behind_the_envelope() -> None:
    core = ready()
    txn = _gated(core)
    core.rcpt(BOB)
    core.begin_bdat(chunk_size=10)
    core.end_data(b"0123456789abc\r\n")
    held = core.take_output()
    # The envelope and the full chunk go; the last chunk waits, command and all.
    assert held == (
        b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\nBDAT 10\r\n0123456789"
    )
    assert _gate(core) is txn and txn.data_written and not _end_written(txn)
    core.open_gate()
    assert core.take_output() == b"BDAT 5 LAST\r\nabc\r\n"
    assert txn.end_written


def test_an_ungated_transaction_is_not_held() -> None:
    core = ready()
    core.mail(SENDER)
    core.rcpt(BOB)
    core.begin_bdat(chunk_size=100)
    core.end_data(b"x\r\n")
    assert core.take_output().endswith(b"BDAT 3 LAST\r\nx\r\n")
    assert _gate(core) is None


def test_the_next_message_waits_behind_the_gate() -> None:
    """With a deferred end (send_bulk), the next envelope is queued behind the
    gate: it must not overtake the end of data it follows."""
    core = ready()
    _gated(core)
    core.rcpt(BOB)
    core.begin_bdat(chunk_size=100)
    core.end_data(b"x\r\n")
    core.mail(ReversePath.parse("next@example.org"))
    core.rcpt(ForwardPath.parse("c@example.com"))
    first = core.take_output()
    assert first.endswith(b"RCPT TO:<bob@example.com>\r\n")
    core.open_gate()
    assert core.take_output() == (
        b"BDAT 3 LAST\r\nx\r\nMAIL FROM:<next@example.org>\r\nRCPT TO:<c@example.com>\r\n"
    )


# -------------------------------------------------------------- a session


class Gate:
    """Records what the server had when the gate was reached, then waits."""

    def __init__(self, server: FakeSMTPServer, *, wait: float = 0.0) -> None:
        self.server = server
        self.wait = wait
        self.calls = 0
        self.seen: list[int] = []
        self.lasts: list[int] = []

    async def __call__(self) -> None:
        self.calls += 1
        await trio.sleep(self.wait)  # the server has time to take what was sent
        self.seen.append(len(self.server.messages))
        self.lasts.append(_lasts(self.server))


def _lasts(server: FakeSMTPServer) -> int:
    """``BDAT … LAST`` commands the server has received."""
    return sum(1 for side, line in server.transcript if side == "C" and line.endswith(b" LAST"))


async def test_the_server_has_nothing_before_the_gate_returns(
    make_server: ServerFactory,
    certs: TestCertificates,
    server_variant: ServerVariant,
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = make_server()
    # A long wait, far past every bound: the gate's time is not the server's.
    timeouts = ts.Timeouts(data_block=1, data_end=1, data_init=1, command=1)
    async with fake_session(server, certs, timeouts=timeouts) as session:
        for n in range(3):
            gate = Gate(server, wait=30)
            tracker = ts.OutcomeTracker(before_end_of_data=gate)
            result = await session.send("a@example.com", ["b@example.com"], BODY, tracker=tracker)
            assert result.reply.code == 250
            assert gate.calls == 1 and gate.seen == [n]
            assert gate.lasts == [n if server_variant.chunking else 0]
            assert tracker.outcome is ts.Outcome.ACCEPTED
    assert [m.data for m in server.messages] == [BODY] * 3


class Refused(ts.SMTPError):
    pass


@pytest.mark.parametrize("how", ["raise", "cancel"])
async def test_a_failing_gate_leaves_the_message_undelivered(
    make_server: ServerFactory,
    certs: TestCertificates,
    server_variant: ServerVariant,
    autojump_clock: trio.testing.MockClock,
    how: str,
) -> None:
    server = make_server()

    async def gate() -> None:
        if how == "raise":
            raise Refused("no")
        await trio.sleep_forever()

    tracker = ts.OutcomeTracker(before_end_of_data=gate)
    async with fake_session(server, certs) as session:
        with trio.move_on_after(5):
            with pytest.raises(Refused) if how == "raise" else _nothing():
                await session.send("a@example.com", ["b@example.com"], BODY, tracker=tracker)
        assert tracker.outcome is ts.Outcome.NOT_SENT
        assert not session.is_usable
    await trio.sleep(1)
    assert server.messages == []
    assert _lasts(server) == 0


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


async def test_send_bulk_awaits_the_gate_for_each_message(
    server_variant: ServerVariant,
) -> None:
    server = FakeSMTPServer(extensions=server_variant.extensions(("8BITMIME", "SIZE 100000")))
    order: list[tuple[str, int]] = []

    async def gate(message: ts.BulkMessage) -> None:
        key = message.key
        assert isinstance(key, int)
        delivered = {_key(m.data) for m in server.messages}
        assert key not in delivered
        order.append(("gate", key))
        await trio.sleep(0.001)

    messages = [
        ts.BulkMessage(
            "a@example.com", ["b@example.com"], b"Subject: %d\r\n\r\nkey=%d\r\n" % (k, k), key=k
        )
        for k in range(40)
    ]
    async with serve_fake_smtp(server) as port:
        summary = await ts.send_bulk(
            messages,
            server="127.0.0.1",
            port=port,
            tls=ts.TLSMode.INSECURE_PLAINTEXT,
            limits=ts.PoolLimits(max_connections=3),
            before_end_of_data=gate,
        )
    assert summary.accepted == 40
    assert sorted(k for _, k in order) == list(range(40))
    assert sorted(_key(m.data) for m in server.messages) == list(range(40))


async def test_send_bulk_reports_a_refused_gate_as_not_sent(
    server_variant: ServerVariant,
) -> None:
    server = FakeSMTPServer(extensions=server_variant.extensions(("8BITMIME",)))

    async def gate(message: ts.BulkMessage) -> None:
        if message.key == 3:
            raise Refused("this one is no longer ours")

    messages = [
        ts.BulkMessage("a@example.com", ["b@example.com"], b"key=%d\r\n" % k, key=k)
        for k in range(8)
    ]
    async with serve_fake_smtp(server) as port:
        summary = await ts.send_bulk(
            messages,
            server="127.0.0.1",
            port=port,
            tls=ts.TLSMode.INSECURE_PLAINTEXT,
            limits=ts.PoolLimits(max_connections=2),
            max_retries=0,
            before_end_of_data=gate,
        )
    statuses = {r.message.key: r.status for r in summary.results}
    assert statuses.pop(3) is ts.Outcome.NOT_SENT
    assert set(statuses.values()) == {ts.Outcome.ACCEPTED}
    (three,) = [r for r in summary.results if r.message.key == 3]
    # Its own error (not another message's). A message whose envelope waited
    # behind its end on the same connection was not written: it went again,
    # although max_retries=0, and that was its only attempt.
    assert isinstance(three.error, Refused) and three.error.outcome is ts.Outcome.NOT_SENT
    assert three.attempts == 1
    assert {r.attempts for r in summary.results} == {1}
    assert sorted(_key(m.data) for m in server.messages) == [0, 1, 2, 4, 5, 6, 7]


def _key(data: bytes) -> int:
    match = re.search(rb"key=(\d+)", data)
    assert match is not None
    return int(match.group(1))


class Recording(trio.abc.Stream):
    """The client's side of a stream, recording each ``send_all``."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_the_end_leaves_in_one_write_with_what_precedes_it(
    server_variant: ServerVariant,
) -> None:
    """The bytes queued before a closed gate wait for it too: the end of data
    goes out in the same write as the rest of the message (DATA) or as the
    pipelined envelope (BDAT), not in a write of its own."""
    server = FakeSMTPServer(extensions=server_variant.extensions(("8BITMIME", "SIZE 100000")))
    client, srv = trio.testing.memory_stream_pair()
    recording = Recording(client)
    opened = 0

    async def gate() -> None:
        nonlocal opened
        opened += 1
        await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, srv)
        async with ts.open_session(
            "mail.example.test", tls=ts.TLSMode.INSECURE_PLAINTEXT, stream=recording
        ) as session:
            tracker = ts.OutcomeTracker(before_end_of_data=gate)
            await session.send("a@example.com", ["b@example.com"], BODY, tracker=tracker)
    assert opened == 1 and len(server.messages) == 1
    (end,) = [w for w in recording.writes if w.endswith((b".\r\n", BODY))]
    if server_variant.chunking:
        assert b"BDAT %d LAST\r\n" % len(BODY) in end
        if server_variant.pipelining:
            assert end.startswith(b"MAIL FROM:<a@example.com>")
    else:
        assert end == b"Subject: gated\r\n\r\nline one\r\n..dot line\r\n.\r\n"
