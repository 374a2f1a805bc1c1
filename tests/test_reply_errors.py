"""Reply errors (``trio_sendmail/_reply_errors.py``): every row of the table in
docs/errors.rst that maps sendmail-lwt's errors to trio_sendmail's, proven against a
scripted server that answers with that very code."""

from __future__ import annotations

import pytest

import trio_sendmail as ts

from . import defaults
from .helpers import HOST, RawServer, raw_server

PLAIN = ts.TLSMode.INSECURE_PLAINTEXT
AUTH = ts.Authentication("alice", "Reply-Errors-Pa55word", mechanism="PLAIN")
EHLO = b"250-srv\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n"


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (501, b"5.5.2"),  # `Authentication_rejected
        (504, b"5.5.4"),  # `Unsupported_mechanism, refused although offered
        (534, b"5.7.9"),  # `Weak_mechanism
        (535, b"5.7.8"),  # `Authentication_failed
        (538, b"5.7.11"),  # `Encryption_required
        (454, b"4.7.0"),  # a temporary authentication failure
    ],
)
async def test_auth_refusals_are_authentication_errors(code: int, status: bytes) -> None:
    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(EHLO)
        await srv.expect(b"AUTH PLAIN ", b"%d %s no\r\n" % (code, status))
        await srv.expect(b"QUIT", b"221 bye\r\n")

    async with raw_server(script) as (stream, srv):
        with pytest.raises(ts.SMTPAuthenticationError) as info:
            async with defaults.open_session(
                HOST, tls=PLAIN, stream=stream, authentication=AUTH,
                insecure_auth_over_plaintext=True,
            ):  # fmt: skip
                pass  # pragma: no cover
        assert await srv.eof() == b""  # QUIT was answered; nothing after it
    error = info.value
    assert error.code == code and error.command == "AUTH"
    assert str(error.enhanced_status) == status.decode()
    assert error.is_transient is (code < 500)
    flavour = ts.SMTPTransientError if code < 500 else ts.SMTPPermanentError
    assert issubclass(type(error), flavour)
    assert error.outcome is None  # raised while opening the session
    assert AUTH.password not in repr(error) and AUTH.password not in str(error)


async def test_authentication_required_is_a_refused_sender() -> None:
    """`Authentication_required (530): the server refuses MAIL."""

    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(EHLO)
        await srv.expect(b"MAIL FROM:", b"530 5.7.0 Authentication required\r\n")
        # A refused MAIL opened no transaction: nothing to reset (RFC 5321 §4.1.1.2).
        await srv.expect(b"QUIT", b"221 bye\r\n")

    async with (
        raw_server(script) as (stream, _),
        defaults.open_session(HOST, tls=PLAIN, stream=stream) as session,
    ):
        with pytest.raises(ts.SMTPSenderRefused) as info:
            await session.send("a@example.com", ["b@example.com"], b"x")
        assert session.is_usable
    error = info.value
    assert error.code == 530 and error.command == "MAIL"
    assert isinstance(error, ts.SMTPPermanentError) and not error.is_transient
    assert error.outcome is ts.Outcome.NOT_SENT


# `Temporary_failure (`Mailbox_unavailable | `Error_processing | `Action_ignored |
# `Unable_to_accomodate_parameters): 450, 451, 452, 455 at each command.
TEMPORARY = [450, 451, 452, 455]


@pytest.mark.parametrize("code", TEMPORARY)
async def test_temporary_failure_of_mail(code: int) -> None:
    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(EHLO)
        await srv.expect(b"MAIL FROM:", b"%d 4.3.0 not now\r\n" % code)
        await srv.expect(b"QUIT", b"221 bye\r\n")

    async with (
        raw_server(script) as (stream, _),
        defaults.open_session(HOST, tls=PLAIN, stream=stream) as session,
    ):
        with pytest.raises(ts.SMTPSenderRefused) as info:
            await session.send("a@example.com", ["b@example.com"], b"x")
    error = info.value
    assert type(error) is ts.SMTPSenderRefused.Transient
    assert error.code == code and error.is_transient and error.outcome is ts.Outcome.NOT_SENT


@pytest.mark.parametrize("code", TEMPORARY)
async def test_temporary_failure_of_every_recipient(code: int) -> None:
    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(EHLO)
        await srv.expect(b"MAIL FROM:", b"250 ok\r\n")
        await srv.expect(b"RCPT TO:", b"%d 4.2.2 mailbox full\r\n" % code)
        await srv.expect(b"RSET", b"250 ok\r\n")
        await srv.expect(b"QUIT", b"221 bye\r\n")

    async with (
        raw_server(script) as (stream, _),
        defaults.open_session(HOST, tls=PLAIN, stream=stream) as session,
    ):
        with pytest.raises(ts.SMTPRecipientsRefused) as info:
            await session.send("a@example.com", ["b@example.com"], b"x")
    error = info.value
    assert error.is_transient and error.outcome is ts.Outcome.NOT_SENT
    ((path, reply),) = error.refused.items()
    assert str(path) == "<b@example.com>" and reply.code == code and reply.is_transient


@pytest.mark.parametrize("code", TEMPORARY)
@pytest.mark.parametrize("at", ["DATA", "end of data"])
async def test_temporary_failure_of_the_message(code: int, at: str) -> None:
    reply = b"%d 4.3.0 try later\r\n" % code

    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(EHLO)
        await srv.expect(b"MAIL FROM:", b"250 ok\r\n")
        await srv.expect(b"RCPT TO:", b"250 ok\r\n")
        if at == "DATA":  # the transaction stays open: the client resets it
            await srv.expect(b"DATA", reply)
            await srv.expect(b"RSET", b"250 ok\r\n")
        else:  # the reply to the end of data ends the transaction (RFC 5321 §4.1.1.4)
            await srv.expect(b"DATA", b"354 go\r\n")
            await srv.data()
            await srv.send(reply)
        await srv.expect(b"QUIT", b"221 bye\r\n")

    async with (
        raw_server(script) as (stream, _),
        defaults.open_session(HOST, tls=PLAIN, stream=stream) as session,
    ):
        with pytest.raises(ts.SMTPResponseError) as info:
            await session.send("a@example.com", ["b@example.com"], b"x")
    error = info.value
    assert type(error) is ts.SMTPResponseError.Transient
    assert error.code == code and error.is_transient
    if at == "DATA":
        assert error.command == "DATA" and error.outcome is ts.Outcome.NOT_SENT
    else:
        assert error.command == "." and error.outcome is ts.Outcome.REFUSED
