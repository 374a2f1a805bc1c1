"""Refusals and large envelopes after a connection's first message: in a bulk
lease (a refused DATA fails that message alone; more recipients than one
pipelined batch), and on a session that goes on after a refusal."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_sendmail as ts

from . import defaults
from .helpers import ServerVariant
from .test_bulk import by_key, message
from .test_pool import (
    LOCAL,
    PLAIN,
    SENDER,
    Action,
    CommandHook,
    Conn,
    DataHook,
    StubServer,
    body,
    pool_at,
    serve_tcp,
)

Status = ts.Outcome


def refuse_nth_data(n: int) -> CommandHook:
    """A command hook that refuses the *n*-th DATA (from 1) with 554."""
    seen = [0]

    async def hook(_conn: Conn, line: str) -> Action:
        if line.upper() == "DATA":
            seen[0] += 1
            if seen[0] == n:
                return b"554 5.3.0 no data for you\r\n"
        return None

    return hook


def refuse_nth_end(n: int) -> DataHook:
    """An end-of-data hook that refuses the *n*-th message (from 1) with 554."""
    seen = [0]

    async def hook(_conn: Conn, _data: bytes) -> Action:
        seen[0] += 1
        return b"554 5.7.1 not this one\r\n" if seen[0] == n else None

    return hook


async def test_bulk_refusal_mid_lease_fails_that_message_alone(
    loopback_clock: trio.testing.MockClock, server_variant: ServerVariant
) -> None:
    """The second message of a lease is refused: at DATA (without CHUNKING,
    never stored: NOT_SENT) or at its ``BDAT … LAST`` (with CHUNKING: the server
    refused what it got). It alone is refused; the others are ACCEPTED, stored
    once each, on the one connection."""
    if server_variant.chunking:
        stub = StubServer(variant=server_variant, end_of_data=refuse_nth_end(2))
    else:
        stub = StubServer(variant=server_variant, command=refuse_nth_data(2))
    async with serve_tcp(stub.handle) as port, pool_at(port, max_connections=1) as pool:
        summary = await ts.send_bulk([message(k) for k in range(4)], pool=pool, max_retries=0)
    table = by_key(summary.results)
    refused = table[1]
    assert (refused.status, refused.attempts) == (Status.REFUSED, 1)
    assert isinstance(refused.error, ts.SMTPResponseError)
    if server_variant.chunking:
        assert (refused.error.code, refused.error.command) == (554, "BDAT")
        assert refused.error.outcome is Status.REFUSED
    else:
        assert (refused.error.code, refused.error.command) == (554, "DATA")
        assert refused.error.outcome is Status.NOT_SENT
    for key in (0, 2, 3):
        assert table[key].status is Status.ACCEPTED
    stored = [data for _, data in stub.received]
    for key in (0, 2, 3):
        assert stored.count(body(key)) == 1
    if not server_variant.chunking:
        assert body(1) not in stored
    # The session stayed usable: one connection carried them all, and the
    # refused transaction was closed with one RSET.
    assert len(stub.conns) == 1
    assert len(stub.commands("RSET")) == 1


async def test_bulk_many_recipients_after_the_first_message(
    loopback_clock: trio.testing.MockClock, server_variant: ServerVariant
) -> None:
    """More recipients than one pipelined batch (PIPELINE_BATCH = 100) in a
    lease's second message: all accepted, each message stored once."""
    many = [f"r{i}@example.com" for i in range(250)]
    batch = [message(0), ts.BulkMessage(SENDER, many, body(1), key=1), message(2)]
    stub = StubServer(variant=server_variant)
    async with serve_tcp(stub.handle) as port, pool_at(port, max_connections=1) as pool:
        summary = await ts.send_bulk(batch, pool=pool)
    table = by_key(summary.results)
    assert all(table[k].status is Status.ACCEPTED for k in range(3))
    result = table[1].result
    assert result is not None and len(result.accepted) == 250
    assert len(stub.commands("RCPT")) == 252
    assert sorted(data for _, data in stub.received) == [body(0), body(1), body(2)]


async def test_session_send_refusal_then_success(
    loopback_clock: trio.testing.MockClock, server_variant: ServerVariant
) -> None:
    """A session's second message is refused at its end of data: REFUSED (in
    the error and the tracker), and the session goes on with the third."""
    stub = StubServer(variant=server_variant, end_of_data=refuse_nth_end(2))
    async with (
        serve_tcp(stub.handle) as port,
        defaults.open_session(LOCAL, port=port, tls=PLAIN) as session,
    ):
        first = await session.send(SENDER, ["b@example.com"], body(0))
        assert first.reply.code == 250
        tracker = ts.OutcomeTracker()
        with pytest.raises(ts.SMTPResponseError) as info:
            await session.send(SENDER, ["b@example.com"], body(1), tracker=tracker)
        command = "BDAT" if server_variant.chunking else "."
        assert (info.value.code, info.value.command) == (554, command)
        assert info.value.outcome is Status.REFUSED
        assert tracker.outcome is Status.REFUSED
        assert session.is_usable
        third = await session.send(SENDER, ["b@example.com"], body(2))
        assert third.reply.code == 250
        stats = session.statistics()
        assert (stats.messages_sent, stats.messages_failed) == (2, 1)
    assert len(stub.conns) == 1


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipe", "lock"])
async def test_session_send_data_refused(
    loopback_clock: trio.testing.MockClock, pipelining: bool
) -> None:
    """DATA refused (a server without CHUNKING): NOT_SENT, nothing stored, and
    the session sends the next message."""
    extensions = ["PIPELINING"] if pipelining else []
    stub = StubServer(extensions=extensions, command=refuse_nth_data(1))
    async with (
        serve_tcp(stub.handle) as port,
        defaults.open_session(LOCAL, port=port, tls=PLAIN) as session,
    ):
        with pytest.raises(ts.SMTPResponseError) as info:
            await session.send(SENDER, ["b@example.com"], body(0))
        assert (info.value.code, info.value.command) == (554, "DATA")
        assert info.value.outcome is Status.NOT_SENT
        assert session.is_usable
        again = await session.send(SENDER, ["b@example.com"], body(1))
        assert again.reply.code == 250
    assert [data for _, data in stub.received] == [body(1)]
