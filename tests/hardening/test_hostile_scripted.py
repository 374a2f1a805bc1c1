"""The driver against scripted, misbehaving servers: every failure is typed,
bounded in time, and leaves the session closed and unusable."""

from __future__ import annotations

import math

import pytest
import trio
import trio.lowlevel
import trio.testing

import trio_sendmail as ts

from .. import defaults
from ..helpers import (
    HOST,
    LOCK_CHUNK,
    LOCK_DATA,
    PIPE_CHUNK,
    PIPE_DATA,
    VARIANTS,
    RawServer,
    ServerVariant,
    raw_server,
    variants,
)

PLAIN = ts.TLSMode.INSECURE_PLAINTEXT


def open_plain(stream: trio.abc.Stream, **kwargs: object) -> ts.Session:  # type: ignore[empty-body]
    ...


async def transaction(srv: RawServer) -> None:
    """Serve one whole pipelined transaction, then QUIT."""
    await srv.expect(b"MAIL FROM:", b"")
    await srv.expect(b"RCPT TO:", b"")
    await srv.expect(b"DATA", b"250 ok\r\n250 ok\r\n354 go\r\n")
    await srv.data()
    await srv.send(b"250 queued\r\n")


@pytest.mark.parametrize(
    "greeting",
    [
        b"220 srv ESMTP\r\n",
        b"220-srv ESMTP\r\n220-more text\r\n220 end\r\n",
        b"220 srv ESMTP\n",  # bare LF line endings are tolerated in replies
    ],
)
@pytest.mark.parametrize("step", [1, 2, 3, 7])
async def test_replies_split_at_any_byte(
    greeting: bytes, step: int, server_variant: ServerVariant
) -> None:
    ehlo = server_variant.ehlo("8BITMIME")
    final = b"250-2.0.0 queued\r\n250 2.0.0 as 123\r\n"

    async def drip(srv: RawServer, data: bytes) -> None:
        for i in range(0, len(data), step):
            await srv.send(data[i : i + step])
            await trio.lowlevel.checkpoint()

    async def message(srv: RawServer) -> None:
        if server_variant.chunking:
            assert await srv.bdat() == (b"x\r\n", True)
        else:
            assert await srv.data() == b"x\r\n.\r\n"

    async def script(srv: RawServer) -> None:
        await drip(srv, greeting)
        await srv.line()
        await drip(srv, ehlo)
        if server_variant.pipelining:  # every reply dripped in one stream
            await srv.expect(b"MAIL FROM:", b"")
            await srv.expect(b"RCPT TO:", b"")
            if server_variant.chunking:
                await message(srv)
                await drip(srv, b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n" + final)
            else:
                await srv.expect(b"DATA", b"")
                await drip(srv, b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354\r\n")
                await message(srv)
                await drip(srv, final)
        else:
            await srv.expect(b"MAIL FROM:", b"")
            await drip(srv, b"250 2.1.0 ok\r\n")
            await srv.expect(b"RCPT TO:", b"")
            await drip(srv, b"250 2.1.5 ok\r\n")
            if not server_variant.chunking:
                await srv.expect(b"DATA", b"")
                await drip(srv, b"354\r\n")
            await message(srv)
            await drip(srv, final)
        await srv.expect(b"QUIT", b"221 bye\r\n")

    async with (
        raw_server(script) as (stream, _),
        defaults.open_session(HOST, tls=PLAIN, stream=stream) as session,
    ):
        result = await session.send("a@example.com", ["b@example.com"], b"x")
    assert result.reply.lines == ("queued", "as 123")
    assert result.reply.enhanced_status == ts.EnhancedStatus(2, 0, 0)


BAD_GREETINGS = {
    "garbage": b"HTTP/1.1 400 Bad Request\r\n",
    "bad code": b"999 what\r\n",
    "short code": b"22 hi\r\n",
    "bad separator": b"220*srv\r\n",
    "mixed codes": b"220-srv\r\n250 srv\r\n",
    "not utf-8": b"220 caf\xe9\r\n",
    "NUL": b"220 srv\x00\r\n",
    "over-long line": b"220 " + b"x" * 5000 + b"\r\n",
    "over-long line, no newline": b"220 " + b"x" * 5000,
    "endless continuation": b"220-x\r\n" * 300,
    "EOF mid-reply": b"220-srv\r\n",
    "EOF mid-line": b"220 sr",
}


@pytest.mark.parametrize("name", list(BAD_GREETINGS))
async def test_malformed_greeting_is_a_protocol_error(name: str) -> None:
    async def script(srv: RawServer) -> None:
        await srv.send(BAD_GREETINGS[name])
        await srv.stream.aclose()

    with trio.fail_after(5):
        async with raw_server(script) as (stream, _):
            with pytest.raises(ts.SMTPProtocolError):
                async with defaults.open_session(HOST, tls=PLAIN, stream=stream):
                    pass  # pragma: no cover


async def test_eof_between_replies_is_a_connection_error() -> None:
    async def script(srv: RawServer) -> None:
        await srv.stream.aclose()

    async with raw_server(script) as (stream, _):
        with pytest.raises(ts.SMTPConnectionError, match="closed the connection"):
            async with defaults.open_session(HOST, tls=PLAIN, stream=stream):
                pass  # pragma: no cover


@pytest.mark.parametrize("code", [554, 421, 450])
async def test_greeting_refused(code: int) -> None:
    async def script(srv: RawServer) -> None:
        await srv.send(b"%d go away\r\n" % code)
        await srv.eof()

    async with raw_server(script) as (stream, _):
        with pytest.raises(ts.SMTPResponseError) as info:
            async with defaults.open_session(HOST, tls=PLAIN, stream=stream):
                pass  # pragma: no cover
    assert info.value.code == code and info.value.command == "CONNECT"
    assert info.value.is_transient is (code < 500)
    if code == 421:
        assert isinstance(info.value, ts.SMTPServiceClosing)


# 421 at each step: the error is transient, the session closed, nothing hangs.
STEPS_421 = ["ehlo", "starttls-ehlo", "mail", "rcpt", "data", "dot", "rset"]


@pytest.mark.parametrize(
    ("step", "server_variant"),
    [
        pytest.param(step, variant, id=f"{step}-{variant}")
        for step in STEPS_421
        for variant in VARIANTS
        if not (step == "data" and variant.chunking)  # no DATA command with BDAT
        and not (step in ("ehlo", "starttls-ehlo") and variant != LOCK_DATA)  # no mail yet
    ],
    indirect=["server_variant"],
)
async def test_421_at_each_step(step: str, server_variant: ServerVariant) -> None:
    ehlo = server_variant.ehlo("SIZE 100")
    bye = b"421 4.3.2 shutting down\r\n"
    chunking = server_variant.chunking

    async def script(srv: RawServer) -> None:
        # Each command is answered as it is read (pipelined ones too); after the 421
        # the script stops reading: the test reads what else the client sent.
        await srv.send(b"220 srv\r\n")
        await srv.expect(b"EHLO", bye if step == "ehlo" else ehlo)
        if step in ("ehlo", "starttls-ehlo"):
            return
        if step == "rset":
            await srv.expect(b"MAIL", b"250 ok\r\n")
            await srv.expect(b"RCPT", b"550 5.1.1 no such user\r\n")
            if server_variant.pipelining:  # DATA, or BDAT LAST with the message, came along
                if chunking:
                    await srv.bdat()
                    await srv.send(b"554 5.5.1 no valid recipients\r\n")
                else:
                    await srv.expect(b"DATA", b"554 5.5.1 no valid recipients\r\n")
            await srv.expect(b"RSET", bye)
            return
        await srv.expect(b"MAIL", bye if step == "mail" else b"250 ok\r\n")
        if step == "mail":
            return
        await srv.expect(b"RCPT", bye if step == "rcpt" else b"250 ok\r\n")
        if step == "rcpt":
            return
        if chunking:
            await srv.message(server_variant)
        else:
            await srv.expect(b"DATA", bye if step == "data" else b"354 go\r\n")
            if step == "data":
                return
            await srv.data()
        await srv.send(bye)

    if step == "starttls-ehlo":
        return  # covered by test_starttls_hostile below
    expected = ts.SMTPRecipientsRefused if step == "rset" else ts.SMTPServiceClosing
    async with raw_server(script) as (stream, srv):
        with pytest.raises(expected) as info:
            async with defaults.open_session(HOST, tls=PLAIN, stream=stream) as session:
                try:
                    await session.send("a@example.com", ["b@example.com"], b"x")
                finally:
                    assert not session.is_usable
        rest = await srv.eof()
    error = info.value
    if step == "rset":
        # The refusal is what the caller needs; the 421 to RSET closed the session.
        assert isinstance(error, ts.SMTPRecipientsRefused) and not error.is_transient
        assert isinstance(error.__context__, ts.SMTPServiceClosing)
        assert error.outcome is ts.Outcome.NOT_SENT
        return
    assert isinstance(error, ts.SMTPServiceClosing) and isinstance(error, ts.SMTPTransientError)
    assert error.is_transient and error.code == 421
    # A 421 before the end of data refused the transaction (even when BDAT LAST had
    # gone out with MAIL and RCPT): not sent. A 421 to the end of data refused it.
    if step == "ehlo":
        assert error.outcome is None  # while opening the session
    else:
        assert error.outcome is (ts.Outcome.REFUSED if step == "dot" else ts.Outcome.NOT_SENT)
    assert b"QUIT" not in rest


async def test_starttls_reply_followed_by_injected_plaintext() -> None:
    async def script(srv: RawServer) -> None:
        await srv.send(b"220 srv\r\n")
        await srv.expect(b"EHLO", b"250-srv\r\n250 STARTTLS\r\n")
        await srv.expect(b"STARTTLS", b"220 go ahead\r\n250-srv\r\n250 AUTH PLAIN\r\n")
        await srv.eof()

    async with raw_server(script) as (stream, _):
        with pytest.raises(ts.SMTPProtocolError, match="injection"):
            async with defaults.open_session(HOST, tls=ts.TLSMode.STARTTLS, stream=stream):
                pass  # pragma: no cover


async def test_starttls_refused() -> None:
    async def script(srv: RawServer) -> None:
        await srv.send(b"220 srv\r\n")
        await srv.expect(b"EHLO", b"250-srv\r\n250 STARTTLS\r\n")
        await srv.expect(b"STARTTLS", b"454 4.7.0 TLS not available\r\n")
        await srv.expect(b"QUIT", b"221 bye\r\n")

    async with raw_server(script) as (stream, _):
        with pytest.raises(ts.SMTPResponseError) as info:
            async with defaults.open_session(HOST, tls=ts.TLSMode.STARTTLS, stream=stream):
                pass  # pragma: no cover
    assert info.value.code == 454 and info.value.command == "STARTTLS"
    assert info.value.is_transient


@pytest.mark.parametrize(
    ("challenge", "error"),
    [
        (b"334 !!!not base64!!!\r\n", ts.SMTPProtocolError),
        (b"334 VXNlcm5hbWU6\r\n" * 1, None),  # first prompt fine; then endless
    ],
)
async def test_auth_hostile_challenges(challenge: bytes, error: type[Exception] | None) -> None:
    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(b"250-srv\r\n250 AUTH LOGIN\r\n")
        await srv.expect(b"AUTH LOGIN", challenge)
        while True:  # endless 334s
            await srv.expect(b"", b"334 UGFzc3dvcmQ6\r\n")

    async with raw_server(script) as (stream, _):
        with pytest.raises(ts.SMTPProtocolError):
            async with defaults.open_session(
                HOST,
                tls=PLAIN,
                stream=stream,
                authentication=ts.Authentication("u", "pw-secret", mechanism="LOGIN"),
                insecure_auth_over_plaintext=True,
            ):
                pass  # pragma: no cover


async def test_unexpected_reply_class_is_a_protocol_error(server_variant: ServerVariant) -> None:
    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(server_variant.ehlo())
        await srv.expect(b"MAIL", b"354 what\r\n")

    async with (
        raw_server(script) as (stream, _),
        defaults.open_session(HOST, tls=PLAIN, stream=stream) as session,
    ):
        with pytest.raises(ts.SMTPProtocolError) as info:
            await session.send("a@example.com", ["b@example.com"], b"x")
        # With PIPELINING and CHUNKING the message's BDAT LAST went out with MAIL, and
        # nothing answered it: unknown. Else nothing of the message went out.
        unknown = server_variant.eod_with_envelope
        assert info.value.outcome is (ts.Outcome.UNKNOWN if unknown else ts.Outcome.NOT_SENT)
        assert not session.is_usable


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


# --------------------------------------------------------------- timeouts


@pytest.mark.parametrize(
    ("phase", "seconds", "server_variant"),
    [
        pytest.param(phase, seconds, variant, id=f"{phase}-{variant}")
        for phase, seconds in [
            ("greeting", 300), ("mail", 300), ("rcpt", 300), ("data_init", 120), ("data_end", 600)
        ]
        for variant in VARIANTS
        if not (phase == "data_init" and variant.chunking)  # no DATA, no 354 with BDAT
        and not (phase == "greeting" and variant != LOCK_DATA)  # before any EHLO
    ],
    indirect=["server_variant"],
)  # fmt: skip
async def test_rfc5321_default_timeouts(
    autojump_clock: trio.testing.MockClock,
    phase: str,
    seconds: int,
    server_variant: ServerVariant,
) -> None:
    async def script(srv: RawServer) -> None:
        if phase == "greeting":
            await trio.sleep_forever()
        await srv.send(b"220 srv\r\n")
        await srv.expect(b"EHLO", server_variant.ehlo())
        await srv.expect(b"MAIL", b"" if phase == "mail" else b"250 ok\r\n")
        if phase != "mail":
            await srv.expect(b"RCPT", b"" if phase == "rcpt" else b"250 ok\r\n")
        if phase == "data_init":
            await srv.expect(b"DATA", b"")
        if phase == "data_end":
            await srv.message(server_variant)
        await trio.sleep_forever()

    start = trio.current_time()
    async with raw_server(script) as (stream, _):
        with pytest.raises(ts.SMTPTimeoutError) as info:
            async with defaults.open_session(HOST, tls=PLAIN, stream=stream) as session:
                mid = trio.current_time()
                await session.send("a@example.com", ["b@example.com"], b"x")
    elapsed = trio.current_time() - (start if phase == "greeting" else mid)
    assert elapsed == pytest.approx(seconds)
    assert info.value.phase == phase
    if phase == "greeting":
        assert info.value.outcome is None
    elif phase == "data_end" or server_variant.eod_with_envelope:
        # The end of data went out (with MAIL and RCPT, under PIPELINING with BDAT).
        assert info.value.outcome is ts.Outcome.UNKNOWN
    else:
        assert info.value.outcome is ts.Outcome.NOT_SENT


async def test_every_phase_timeout_can_be_overridden(
    autojump_clock: trio.testing.MockClock, server_variant: ServerVariant
) -> None:
    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(server_variant.ehlo())
        await trio.sleep_forever()

    async with raw_server(script) as (stream, _):
        timeouts = ts.Timeouts(mail=1.5, quit=0.5)
        async with defaults.open_session(
            HOST, tls=PLAIN, stream=stream, timeouts=timeouts
        ) as session:
            start = trio.current_time()
            with pytest.raises(ts.SMTPTimeoutError):
                await session.send("a@example.com", ["b@example.com"], b"x")
            assert trio.current_time() - start == pytest.approx(1.5)
    with pytest.raises(ValueError, match="positive"):
        ts.Timeouts(mail=0)
    with pytest.raises(ValueError, match="positive"):
        ts.Timeouts(command=math.nan)
    assert ts.Timeouts(data_end=math.inf).data_end == math.inf


async def test_slow_drip_forever_is_bounded_by_the_phase_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def script(srv: RawServer) -> None:
        while True:  # one byte of a never-ending continuation line every second
            for byte in b"220-":
                await srv.send(bytes([byte]))
                await trio.sleep(1)

    start = trio.current_time()
    async with raw_server(script) as (stream, _):
        with pytest.raises((ts.SMTPTimeoutError, ts.SMTPProtocolError)):
            async with defaults.open_session(
                HOST,
                tls=PLAIN,
                stream=stream,
                timeouts=ts.Timeouts(greeting=30),
            ):
                pass  # pragma: no cover
    assert trio.current_time() - start <= 31


async def test_silent_data_block_write_times_out(
    autojump_clock: trio.testing.MockClock, server_variant: ServerVariant
) -> None:
    """A server that stops reading mid-DATA (or before the first BDAT chunk): the write
    blocks, then times out."""
    client, srv_stream = trio.testing.lockstep_stream_pair()
    srv = RawServer(srv_stream)

    async def script() -> None:
        await srv.greet_and_ehlo(server_variant.ehlo())
        await srv.expect(b"MAIL", b"250 ok\r\n")
        await srv.expect(b"RCPT", b"250 ok\r\n")
        if not server_variant.chunking:
            await srv.expect(b"DATA", b"354 go\r\n")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(script)
        async with defaults.open_session(
            HOST,
            tls=PLAIN,
            stream=client,
            timeouts=ts.Timeouts(data_block=42),
        ) as session:
            start = trio.current_time()
            with pytest.raises(ts.SMTPTimeoutError) as info:
                await session.send("a@example.com", ["b@example.com"], b"x" * 100_000)
            assert trio.current_time() - start == pytest.approx(42)
            assert info.value.phase == "data_block"
            assert info.value.outcome is ts.Outcome.NOT_SENT
            assert not session.is_usable
        nursery.cancel_scope.cancel()


# ----------------------------------------------------------- cancellation


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


async def test_server_does_not_offer_auth() -> None:
    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(b"250 srv\r\n")
        await srv.expect(b"QUIT", b"221 bye\r\n")

    async with raw_server(script) as (stream, _):
        with pytest.raises(ts.SMTPNotSupportedError, match="does not offer AUTH"):
            async with defaults.open_session(
                HOST,
                tls=PLAIN,
                stream=stream,
                authentication=ts.Authentication("u", "pw"),
                insecure_auth_over_plaintext=True,
            ):
                pass  # pragma: no cover


async def test_ehlo_refused() -> None:
    async def script(srv: RawServer) -> None:
        await srv.send(b"220 srv\r\n")
        await srv.expect(b"EHLO", b"550 5.7.1 go away\r\n")
        await srv.expect(b"QUIT", b"221 bye\r\n")

    async with raw_server(script) as (stream, _):
        with pytest.raises(ts.SMTPResponseError) as info:
            async with defaults.open_session(HOST, tls=PLAIN, stream=stream):
                pass  # pragma: no cover
    assert info.value.command == "EHLO" and info.value.code == 550


async def test_server_disconnects_mid_data(server_variant: ServerVariant) -> None:
    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(server_variant.ehlo())
        await srv.expect(b"MAIL", b"250 ok\r\n")
        await srv.expect(b"RCPT", b"250 ok\r\n")
        if not server_variant.chunking:  # with BDAT: before the first chunk is read
            await srv.expect(b"DATA", b"354 go\r\n")
        await srv.stream.aclose()

    async with (
        raw_server(script) as (stream, _),
        defaults.open_session(HOST, tls=PLAIN, stream=stream) as session,
    ):
        await trio.sleep(0.01)
        with pytest.raises(ts.SMTPConnectionError) as info:
            await session.send("a@example.com", ["b@example.com"], b"x" * 1_000_000)
        assert info.value.outcome is ts.Outcome.NOT_SENT
        assert not session.is_usable


async def test_server_disconnects_after_the_final_dot(server_variant: ServerVariant) -> None:
    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(server_variant.ehlo())
        await srv.expect(b"MAIL", b"250 ok\r\n")
        await srv.expect(b"RCPT", b"250 ok\r\n")
        await srv.message(server_variant)  # up to the final dot, or BDAT LAST
        await srv.stream.aclose()

    async with (
        raw_server(script) as (stream, _),
        defaults.open_session(HOST, tls=PLAIN, stream=stream) as session,
    ):
        with pytest.raises(ts.SMTPConnectionError) as info:
            await session.send("a@example.com", ["b@example.com"], b"x")
        assert info.value.outcome is ts.Outcome.UNKNOWN


async def test_session_not_ready_after_the_server_closed_it() -> None:
    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo()
        await srv.expect(b"NOOP", b"421 4.3.2 bye\r\n")

    async with (
        raw_server(script) as (stream, _),
        defaults.open_session(HOST, tls=PLAIN, stream=stream) as session,
    ):
        with pytest.raises(ts.SMTPServiceClosing):
            await session.noop()
        with pytest.raises(ts.SMTPConnectionError, match="closed"):
            await session.send("a@example.com", ["b@example.com"], b"x")
