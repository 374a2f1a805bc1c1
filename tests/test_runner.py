"""The transaction runner (``trio_sendmail/_runner.py``) against scripted servers:
what a reply at each step of one transaction means, with and without PIPELINING
(RFC 2920) and CHUNKING (RFC 3030).

Hostile servers (silence, garbage, disconnects, 421 at each step, TLS and AUTH
failures) are in the hardening matrix (``tests/hardening/scenarios.py``); the cases
here need a choreography of replies that the matrix's dialogue does not express.
"""

from __future__ import annotations

import pytest
import trio.testing

import trio_sendmail as ts

from . import defaults
from .helpers import (
    HOST,
    LOCK_CHUNK,
    LOCK_DATA,
    PIPE_CHUNK,
    PIPE_DATA,
    RawServer,
    ServerVariant,
    raw_server,
    variants,
)

PLAIN = ts.TLSMode.INSECURE_PLAINTEXT


async def test_a_421_to_rset_after_a_refusal_keeps_the_refusal(
    server_variant: ServerVariant,
) -> None:
    """Every recipient refused, then a 421 to the RSET that ends the transaction: the
    caller gets the refusal (not sent), with the 421 as its context; the session is
    over and nothing more is written (no QUIT)."""

    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(server_variant.ehlo("SIZE 100"))
        await srv.expect(b"MAIL", b"250 ok\r\n")
        await srv.expect(b"RCPT", b"550 5.1.1 no such user\r\n")
        if server_variant.pipelining:  # DATA, or BDAT LAST with the message, came along
            if server_variant.chunking:
                await srv.bdat()
                await srv.send(b"554 5.5.1 no valid recipients\r\n")
            else:
                await srv.expect(b"DATA", b"554 5.5.1 no valid recipients\r\n")
        await srv.expect(b"RSET", b"421 4.3.2 shutting down\r\n")

    async with raw_server(script) as (stream, srv):
        with pytest.raises(ts.SMTPRecipientsRefused) as info:
            async with defaults.open_session(HOST, tls=PLAIN, stream=stream) as session:
                try:
                    await session.send("a@example.com", ["b@example.com"], b"x")
                finally:
                    assert not session.is_usable
        rest = await srv.eof()
    error = info.value
    assert not error.is_transient
    assert isinstance(error.__context__, ts.SMTPServiceClosing)
    assert error.outcome is ts.Outcome.NOT_SENT
    assert rest == b""


@variants(LOCK_DATA, LOCK_CHUNK)  # without PIPELINING: MAIL is alone on the wire
async def test_more_replies_than_commands_is_a_protocol_error(
    server_variant: ServerVariant,
) -> None:
    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(server_variant.ehlo())
        await srv.expect(b"MAIL", b"250 ok\r\n250 ok\r\n")
        await srv.eof()

    async with (
        raw_server(script) as (stream, _),
        defaults.open_session(HOST, tls=PLAIN, stream=stream) as session,
    ):
        with pytest.raises(ts.SMTPProtocolError) as info:
            await session.send("a@example.com", ["b@example.com"], b"x")
        assert info.value.outcome is ts.Outcome.NOT_SENT


async def test_pipelined_data_accepted_although_every_recipient_was_refused() -> None:
    """RFC 2920 §3.1: a 354 after all RCPTs failed is answered by ending the data
    at once, so that the server refuses the empty message (which ends the
    transaction: no RSET is needed)."""

    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo()
        await srv.expect(b"MAIL FROM:", b"")
        await srv.expect(b"RCPT TO:", b"")
        await srv.expect(b"DATA", b"250 ok\r\n550 5.1.1 no\r\n354 go ahead anyway\r\n")
        assert await srv.data() == b".\r\n"  # an empty message, ended at once
        await srv.send(b"554 5.5.1 no valid recipients\r\n")
        await srv.expect(b"MAIL FROM:", b"")
        await srv.expect(b"RCPT TO:", b"")
        await srv.expect(b"DATA", b"250 ok\r\n250 ok\r\n354 go\r\n")
        assert await srv.data() == b"second\r\n.\r\n"
        await srv.send(b"250 queued\r\n")
        await srv.expect(b"QUIT", b"221 bye\r\n")

    async with (
        raw_server(script) as (stream, _),
        defaults.open_session(HOST, tls=PLAIN, stream=stream) as session,
    ):
        with pytest.raises(ts.SMTPRecipientsRefused):
            await session.send("a@example.com", ["b@example.com"], b"first")
        assert session.is_usable
        await session.send("a@example.com", ["b@example.com"], b"second")


async def test_pipelined_data_that_a_server_accepts_with_no_recipient() -> None:
    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo()
        await srv.expect(b"MAIL", b"")
        await srv.expect(b"RCPT", b"")
        await srv.expect(b"DATA", b"250 ok\r\n550 no\r\n354 go\r\n")
        await srv.data()
        await srv.send(b"250 accepted nothing?\r\n")
        await srv.eof()

    async with (
        raw_server(script) as (stream, _),
        defaults.open_session(HOST, tls=PLAIN, stream=stream) as session,
    ):
        with pytest.raises(ts.SMTPRecipientsRefused) as info:
            await session.send("a@example.com", ["b@example.com"], b"x")
        assert isinstance(info.value.__context__, ts.SMTPProtocolError)
        assert not session.is_usable


async def test_pipelined_bdat_with_every_recipient_refused() -> None:
    """The BDAT counterpart of the test above: with PIPELINING and CHUNKING, a small
    message's BDAT LAST went out with MAIL and RCPT; every recipient refused, the server
    refuses the BDAT too (RFC 3030 §2): not sent, and the session stays usable (a RSET
    may end the refused transaction)."""

    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(PIPE_CHUNK.ehlo())
        await srv.expect(b"MAIL FROM:", b"")
        await srv.expect(b"RCPT TO:", b"")
        assert await srv.bdat() == (b"first\r\n", True)
        await srv.send(b"250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n")
        line = await srv.line()
        if line == b"RSET\r\n":
            await srv.send(b"250 ok\r\n")
            line = await srv.line()
        assert line.startswith(b"MAIL FROM:"), line
        await srv.expect(b"RCPT TO:", b"")
        assert await srv.bdat() == (b"second\r\n", True)
        await srv.send(b"250 ok\r\n250 ok\r\n250 queued\r\n")
        await srv.expect(b"QUIT", b"221 bye\r\n")

    async with (
        raw_server(script) as (stream, _),
        defaults.open_session(HOST, tls=PLAIN, stream=stream) as session,
    ):
        with pytest.raises(ts.SMTPRecipientsRefused) as info:
            await session.send("a@example.com", ["b@example.com"], b"first")
        assert info.value.outcome is ts.Outcome.NOT_SENT
        assert session.is_usable
        await session.send("a@example.com", ["b@example.com"], b"second")


async def test_pipelined_bdat_that_a_server_accepts_with_no_recipient(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A server that answers 250 to a BDAT LAST whose recipients it all refused: as with
    DATA above, the client does not trust that session any more."""

    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(PIPE_CHUNK.ehlo())
        await srv.expect(b"MAIL", b"")
        await srv.expect(b"RCPT", b"")
        await srv.bdat()
        await srv.send(b"250 ok\r\n550 no\r\n250 accepted nothing?\r\n")
        await srv.eof()

    async with (
        raw_server(script) as (stream, _),
        defaults.open_session(HOST, tls=PLAIN, stream=stream) as session,
    ):
        with pytest.raises(ts.SMTPRecipientsRefused) as info:
            await session.send("a@example.com", ["b@example.com"], b"x")
        assert isinstance(info.value.__context__, ts.SMTPProtocolError)
        assert not session.is_usable


async def test_data_refused(server_variant: ServerVariant) -> None:
    """DATA refused: nothing of the message went out. Its BDAT counterpart: the one
    ``BDAT n LAST`` of a small message refused, which is the end of data refused."""

    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(server_variant.ehlo())
        await srv.expect(b"MAIL", b"250 ok\r\n")
        await srv.expect(b"RCPT", b"250 ok\r\n")
        if server_variant.chunking:
            assert await srv.bdat() == (b"x\r\n", True)
            await srv.send(b"451 4.3.0 not now\r\n")
        else:
            await srv.expect(b"DATA", b"451 4.3.0 not now\r\n")
        await srv.expect(b"RSET", b"250 ok\r\n")
        await srv.expect(b"QUIT", b"221 bye\r\n")

    async with (
        raw_server(script) as (stream, _),
        defaults.open_session(HOST, tls=PLAIN, stream=stream) as session,
    ):
        with pytest.raises(ts.SMTPResponseError) as info:
            await session.send("a@example.com", ["b@example.com"], b"x")
        assert info.value.is_transient
        if server_variant.chunking:
            assert info.value.command == "BDAT"
            assert info.value.outcome is ts.Outcome.REFUSED
        else:
            assert info.value.command == "DATA"
            assert info.value.outcome is ts.Outcome.NOT_SENT
        assert session.is_usable


@variants(PIPE_DATA, PIPE_CHUNK)
async def test_many_recipients_are_pipelined_in_bounded_batches(
    server_variant: ServerVariant,
) -> None:
    recipients = [f"r{i}@example.com" for i in range(250)]
    batches: list[int] = []

    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(server_variant.ehlo())
        await srv.expect(b"MAIL", b"")
        pending = 1
        for _ in recipients:
            await srv.expect(b"RCPT", b"")
            pending += 1
            if not srv.buffer:
                # Everything sent so far has been read: answer it all.
                batches.append(pending)
                await srv.send(b"250 ok\r\n" * pending)
                pending = 0
        if server_variant.chunking:  # the last batch ends with BDAT LAST and the message
            assert await srv.bdat() == (b"x\r\n", True)
            await srv.send(b"250 ok\r\n" * (pending + 1))
        else:
            await srv.expect(b"DATA", b"250 ok\r\n" * pending + b"354 go\r\n")
            await srv.data()
            await srv.send(b"250 ok\r\n")
        batches.append(pending + 1)
        await srv.expect(b"QUIT", b"221 bye\r\n")

    async with (
        raw_server(script) as (stream, _),
        defaults.open_session(HOST, tls=PLAIN, stream=stream) as session,
    ):
        result = await session.send("a@example.com", recipients, b"x")
    assert len(result.accepted) == 250
    assert sum(batches) == 252 and max(batches) <= 101  # MAIL + 100 RCPT
    # greeting, EHLO, three batches (the last one ends with DATA), the dot, QUIT; with
    # BDAT the message rides with the last batch, and its end needs no round trip.
    dot = 0 if server_variant.chunking else 1
    assert session.statistics().round_trips == 1 + 1 + 3 + dot + 1
