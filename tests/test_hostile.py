"""The driver against scripted, misbehaving servers: every failure is typed,
bounded in time, and leaves the session closed and unusable."""

from __future__ import annotations

import math

import pytest
import trio
import trio.lowlevel
import trio.testing

import trio_sendmail as ts

from .helpers import CLIENT_NAME, HOST, RawServer, raw_server

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
async def test_replies_split_at_any_byte(greeting: bytes, step: int) -> None:
    ehlo = b"250-srv\r\n250-PIPELINING\r\n250 8BITMIME\r\n"

    async def drip(srv: RawServer, data: bytes) -> None:
        for i in range(0, len(data), step):
            await srv.send(data[i : i + step])
            await trio.lowlevel.checkpoint()

    async def script(srv: RawServer) -> None:
        await drip(srv, greeting)
        await srv.line()
        await drip(srv, ehlo)
        await srv.expect(b"MAIL FROM:", b"")
        await srv.expect(b"RCPT TO:", b"")
        await srv.expect(b"DATA", b"")
        await drip(srv, b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354\r\n")
        assert await srv.data() == b"x\r\n.\r\n"
        await drip(srv, b"250-2.0.0 queued\r\n250 2.0.0 as 123\r\n")
        await srv.expect(b"QUIT", b"221 bye\r\n")

    async with (
        raw_server(script) as (stream, _),
        ts.open_session(HOST, tls=PLAIN, stream=stream, domain=CLIENT_NAME) as session,
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
                async with ts.open_session(HOST, tls=PLAIN, stream=stream, domain=CLIENT_NAME):
                    pass  # pragma: no cover


async def test_eof_between_replies_is_a_connection_error() -> None:
    async def script(srv: RawServer) -> None:
        await srv.stream.aclose()

    async with raw_server(script) as (stream, _):
        with pytest.raises(ts.SMTPConnectionError, match="closed the connection"):
            async with ts.open_session(HOST, tls=PLAIN, stream=stream, domain=CLIENT_NAME):
                pass  # pragma: no cover


@pytest.mark.parametrize("code", [554, 421, 450])
async def test_greeting_refused(code: int) -> None:
    async def script(srv: RawServer) -> None:
        await srv.send(b"%d go away\r\n" % code)
        await srv.eof()

    async with raw_server(script) as (stream, _):
        with pytest.raises(ts.SMTPResponseError) as info:
            async with ts.open_session(HOST, tls=PLAIN, stream=stream, domain=CLIENT_NAME):
                pass  # pragma: no cover
    assert info.value.code == code and info.value.command == "CONNECT"
    assert info.value.is_transient is (code < 500)
    if code == 421:
        assert isinstance(info.value, ts.SMTPServiceClosing)


# 421 at each step: the error is transient, the session closed, nothing hangs.
STEPS_421 = ["ehlo", "starttls-ehlo", "mail", "rcpt", "data", "dot", "rset"]


@pytest.mark.parametrize("step", STEPS_421)
async def test_421_at_each_step(step: str) -> None:
    ehlo = b"250-srv\r\n250 SIZE 100\r\n"
    bye = b"421 4.3.2 shutting down\r\n"

    async def script(srv: RawServer) -> None:
        await srv.send(b"220 srv\r\n")
        await srv.expect(b"EHLO", bye if step == "ehlo" else ehlo)
        if step == "starttls-ehlo":
            return
        if step == "rset":
            await srv.expect(b"MAIL", b"250 ok\r\n")
            await srv.expect(b"RCPT", b"550 5.1.1 no such user\r\n")
            await srv.expect(b"RSET", bye)
            await srv.eof()
            return
        await srv.expect(b"MAIL", bye if step == "mail" else b"250 ok\r\n")
        await srv.expect(b"RCPT", bye if step == "rcpt" else b"250 ok\r\n")
        await srv.expect(b"DATA", bye if step == "data" else b"354 go\r\n")
        await srv.data()
        await srv.send(bye)
        await srv.eof()

    if step == "starttls-ehlo":
        return  # covered by test_starttls_hostile below
    expected = ts.SMTPRecipientsRefused if step == "rset" else ts.SMTPServiceClosing
    async with raw_server(script) as (stream, srv):
        with pytest.raises(expected) as info:
            async with ts.open_session(
                HOST, tls=PLAIN, stream=stream, domain=CLIENT_NAME
            ) as session:
                try:
                    await session.send("a@example.com", ["b@example.com"], b"x")
                finally:
                    assert not session.is_usable
    error = info.value
    if step == "rset":
        # The refusal is what the caller needs; the 421 to RSET closed the session.
        assert isinstance(error, ts.SMTPRecipientsRefused) and not error.is_transient
        assert isinstance(error.__context__, ts.SMTPServiceClosing)
        return
    assert isinstance(error, ts.SMTPServiceClosing) and isinstance(error, ts.SMTPTransientError)
    assert error.is_transient and error.code == 421
    rest = await srv.eof()
    assert b"QUIT" not in rest


async def test_starttls_reply_followed_by_injected_plaintext() -> None:
    async def script(srv: RawServer) -> None:
        await srv.send(b"220 srv\r\n")
        await srv.expect(b"EHLO", b"250-srv\r\n250 STARTTLS\r\n")
        await srv.expect(b"STARTTLS", b"220 go ahead\r\n250-srv\r\n250 AUTH PLAIN\r\n")
        await srv.eof()

    async with raw_server(script) as (stream, _):
        with pytest.raises(ts.SMTPProtocolError, match="injection"):
            async with ts.open_session(
                HOST, tls=ts.TLSMode.STARTTLS, stream=stream, domain=CLIENT_NAME
            ):
                pass  # pragma: no cover


async def test_starttls_refused() -> None:
    async def script(srv: RawServer) -> None:
        await srv.send(b"220 srv\r\n")
        await srv.expect(b"EHLO", b"250-srv\r\n250 STARTTLS\r\n")
        await srv.expect(b"STARTTLS", b"454 4.7.0 TLS not available\r\n")
        await srv.expect(b"QUIT", b"221 bye\r\n")

    async with raw_server(script) as (stream, _):
        with pytest.raises(ts.SMTPResponseError) as info:
            async with ts.open_session(
                HOST, tls=ts.TLSMode.STARTTLS, stream=stream, domain=CLIENT_NAME
            ):
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
            async with ts.open_session(
                HOST,
                tls=PLAIN,
                stream=stream,
                domain=CLIENT_NAME,
                authentication=ts.Authentication("u", "pw-secret", mechanism="LOGIN"),
                insecure_auth_over_plaintext=True,
            ):
                pass  # pragma: no cover


async def test_unexpected_reply_class_is_a_protocol_error() -> None:
    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(b"250 srv\r\n")
        await srv.expect(b"MAIL", b"354 what\r\n")
        await srv.eof()

    async with (
        raw_server(script) as (stream, _),
        ts.open_session(HOST, tls=PLAIN, stream=stream, domain=CLIENT_NAME) as session,
    ):
        with pytest.raises(ts.SMTPProtocolError) as info:
            await session.send("a@example.com", ["b@example.com"], b"x")
        assert info.value.outcome is ts.Outcome.NOT_SENT
        assert not session.is_usable


async def test_more_replies_than_commands_is_a_protocol_error() -> None:
    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(b"250 srv\r\n")
        await srv.expect(b"MAIL", b"250 ok\r\n250 ok\r\n")
        await srv.eof()

    async with (
        raw_server(script) as (stream, _),
        ts.open_session(HOST, tls=PLAIN, stream=stream, domain=CLIENT_NAME) as session,
    ):
        with pytest.raises(ts.SMTPProtocolError):
            await session.send("a@example.com", ["b@example.com"], b"x")


# --------------------------------------------------------------- timeouts


@pytest.mark.parametrize(
    ("phase", "seconds"),
    [("greeting", 300), ("mail", 300), ("rcpt", 300), ("data_init", 120), ("data_end", 600)],
)
async def test_rfc5321_default_timeouts(
    autojump_clock: trio.testing.MockClock, phase: str, seconds: int
) -> None:
    async def script(srv: RawServer) -> None:
        if phase == "greeting":
            await trio.sleep_forever()
        await srv.send(b"220 srv\r\n")
        await srv.expect(b"EHLO", b"250 srv\r\n")
        await srv.expect(b"MAIL", b"" if phase == "mail" else b"250 ok\r\n")
        if phase != "mail":
            await srv.expect(b"RCPT", b"" if phase == "rcpt" else b"250 ok\r\n")
        if phase not in ("mail", "rcpt"):
            await srv.expect(b"DATA", b"" if phase == "data_init" else b"354 go\r\n")
        if phase == "data_end":
            await srv.data()
        await trio.sleep_forever()

    start = trio.current_time()
    async with raw_server(script) as (stream, _):
        with pytest.raises(ts.SMTPTimeoutError) as info:
            async with ts.open_session(
                HOST, tls=PLAIN, stream=stream, domain=CLIENT_NAME
            ) as session:
                mid = trio.current_time()
                await session.send("a@example.com", ["b@example.com"], b"x")
    elapsed = trio.current_time() - (start if phase == "greeting" else mid)
    assert elapsed == pytest.approx(seconds)
    assert info.value.phase == phase
    assert info.value.outcome is (
        ts.Outcome.UNKNOWN
        if phase == "data_end"
        else None
        if phase == "greeting"
        else ts.Outcome.NOT_SENT
    )


async def test_every_phase_timeout_can_be_overridden(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(b"250 srv\r\n")
        await trio.sleep_forever()

    async with raw_server(script) as (stream, _):
        timeouts = ts.Timeouts(mail=1.5, quit=0.5)
        async with ts.open_session(
            HOST, tls=PLAIN, stream=stream, domain=CLIENT_NAME, timeouts=timeouts
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
            async with ts.open_session(
                HOST,
                tls=PLAIN,
                stream=stream,
                domain=CLIENT_NAME,
                timeouts=ts.Timeouts(greeting=30),
            ):
                pass  # pragma: no cover
    assert trio.current_time() - start <= 31


async def test_silent_data_block_write_times_out(autojump_clock: trio.testing.MockClock) -> None:
    """A server that stops reading mid-DATA: the write blocks, then times out."""
    client, srv_stream = trio.testing.lockstep_stream_pair()
    srv = RawServer(srv_stream)

    async def script() -> None:
        await srv.greet_and_ehlo(b"250 srv\r\n")
        await srv.expect(b"MAIL", b"250 ok\r\n")
        await srv.expect(b"RCPT", b"250 ok\r\n")
        await srv.expect(b"DATA", b"354 go\r\n")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(script)
        async with ts.open_session(
            HOST,
            tls=PLAIN,
            stream=client,
            domain=CLIENT_NAME,
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
    autojump_clock: trio.testing.MockClock, where: str
) -> None:
    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(b"250 srv\r\n")
        await srv.expect(b"MAIL", b"" if where == "mail" else b"250 ok\r\n")
        if where != "mail":
            await srv.expect(b"RCPT", b"250 ok\r\n")
            await srv.expect(b"DATA", b"354 go\r\n")
        if where == "dot":
            await srv.data()
        await trio.sleep_forever()

    send, receive = trio.open_memory_channel[bytes](1)
    await send.send(b"first chunk\r\n")
    async with (
        raw_server(script) as (stream, srv),
        ts.open_session(HOST, tls=PLAIN, stream=stream, domain=CLIENT_NAME) as session,
    ):
        if where == "dot":
            await send.aclose()
        with trio.move_on_after(5):
            await session.send("a@example.com", ["b@example.com"], receive)
        assert not session.is_usable
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
        ts.open_session(HOST, tls=PLAIN, stream=stream, domain=CLIENT_NAME) as session,
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
        ts.open_session(HOST, tls=PLAIN, stream=stream, domain=CLIENT_NAME) as session,
    ):
        with pytest.raises(ts.SMTPRecipientsRefused) as info:
            await session.send("a@example.com", ["b@example.com"], b"x")
        assert isinstance(info.value.__context__, ts.SMTPProtocolError)
        assert not session.is_usable


async def test_data_refused() -> None:
    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo()
        await srv.expect(b"MAIL", b"")
        await srv.expect(b"RCPT", b"")
        await srv.expect(b"DATA", b"250 ok\r\n250 ok\r\n451 4.3.0 not now\r\n")
        await srv.expect(b"RSET", b"250 ok\r\n")
        await srv.expect(b"QUIT", b"221 bye\r\n")

    async with (
        raw_server(script) as (stream, _),
        ts.open_session(HOST, tls=PLAIN, stream=stream, domain=CLIENT_NAME) as session,
    ):
        with pytest.raises(ts.SMTPResponseError) as info:
            await session.send("a@example.com", ["b@example.com"], b"x")
        assert info.value.command == "DATA" and info.value.is_transient
        assert info.value.outcome is ts.Outcome.NOT_SENT
        assert session.is_usable


async def test_many_recipients_are_pipelined_in_bounded_batches() -> None:
    recipients = [f"r{i}@example.com" for i in range(250)]
    batches: list[int] = []

    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo()
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
        await srv.expect(b"DATA", b"250 ok\r\n" * pending + b"354 go\r\n")
        batches.append(pending + 1)
        await srv.data()
        await srv.send(b"250 ok\r\n")
        await srv.expect(b"QUIT", b"221 bye\r\n")

    async with (
        raw_server(script) as (stream, _),
        ts.open_session(HOST, tls=PLAIN, stream=stream, domain=CLIENT_NAME) as session,
    ):
        result = await session.send("a@example.com", recipients, b"x")
    assert len(result.accepted) == 250
    assert sum(batches) == 252 and max(batches) <= 101  # MAIL + 100 RCPT
    # greeting, EHLO, three batches (the last one ends with DATA), the dot, QUIT
    assert session.statistics().round_trips == 1 + 1 + 3 + 1 + 1


async def test_server_does_not_offer_auth() -> None:
    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(b"250 srv\r\n")
        await srv.expect(b"QUIT", b"221 bye\r\n")

    async with raw_server(script) as (stream, _):
        with pytest.raises(ts.SMTPNotSupportedError, match="does not offer AUTH"):
            async with ts.open_session(
                HOST,
                tls=PLAIN,
                stream=stream,
                domain=CLIENT_NAME,
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
            async with ts.open_session(HOST, tls=PLAIN, stream=stream, domain=CLIENT_NAME):
                pass  # pragma: no cover
    assert info.value.command == "EHLO" and info.value.code == 550


async def test_server_disconnects_mid_data() -> None:
    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo()
        await srv.expect(b"MAIL", b"")
        await srv.expect(b"RCPT", b"")
        await srv.expect(b"DATA", b"250 ok\r\n250 ok\r\n354 go\r\n")
        await srv.stream.aclose()

    async with (
        raw_server(script) as (stream, _),
        ts.open_session(HOST, tls=PLAIN, stream=stream, domain=CLIENT_NAME) as session,
    ):
        await trio.sleep(0.01)
        with pytest.raises(ts.SMTPConnectionError) as info:
            await session.send("a@example.com", ["b@example.com"], b"x" * 1_000_000)
        assert info.value.outcome is ts.Outcome.NOT_SENT
        assert not session.is_usable


async def test_server_disconnects_after_the_final_dot() -> None:
    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo()
        await srv.expect(b"MAIL", b"")
        await srv.expect(b"RCPT", b"")
        await srv.expect(b"DATA", b"250 ok\r\n250 ok\r\n354 go\r\n")
        await srv.data()
        await srv.stream.aclose()

    async with (
        raw_server(script) as (stream, _),
        ts.open_session(HOST, tls=PLAIN, stream=stream, domain=CLIENT_NAME) as session,
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
        ts.open_session(HOST, tls=PLAIN, stream=stream, domain=CLIENT_NAME) as session,
    ):
        with pytest.raises(ts.SMTPServiceClosing):
            await session.noop()
        with pytest.raises(ts.SMTPConnectionError, match="closed"):
            await session.send("a@example.com", ["b@example.com"], b"x")
