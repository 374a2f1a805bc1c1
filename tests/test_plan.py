"""ESMTP extensions against the fake server: PIPELINING round trips, CHUNKING
(BDAT), BINARYMIME, DSN, REQUIRETLS, and their combinations."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

import trio_sendmail as ts
from trio_sendmail import DSN, DSNNotify, DSNReturn
from trio_sendmail._dsn import xtext
from trio_sendmail.testing import FakeSMTPServer, TestCertificates

from .helpers import fake_session

BASE = ("PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "SIZE 10000000")


def server_with(certs: TestCertificates, *extensions: str, **kwargs: object) -> FakeSMTPServer:
    return FakeSMTPServer(
        ssl_context=certs.server_context,
        extensions=extensions,
        **kwargs,  # type: ignore[arg-type]
    )


async def round_trips_per_message(
    certs: TestCertificates, extensions: tuple[str, ...], **session_kwargs: object
) -> tuple[int, FakeSMTPServer]:
    server = server_with(certs, *extensions)
    async with fake_session(server, certs, **session_kwargs) as session:  # type: ignore[arg-type]
        await session.send("a@example.com", ["b@example.com"], b"warm up")
        before = session.statistics().round_trips
        for i in range(10):
            await session.send("a@example.com", ["b@example.com", "c@example.com"], b"m%d" % i)
        per_message = (session.statistics().round_trips - before) // 10
    assert len(server.messages) == 11
    assert server.pipelining_violations == 0
    return per_message, server


@pytest.mark.parametrize(
    ("extensions", "kwargs", "expected"),
    [
        (BASE, {"pipelining": False}, 5),  # MAIL, RCPT, RCPT, DATA, dot
        (BASE, {}, 2),  # MAIL+RCPT+RCPT+DATA, then the body and the dot
        ((*BASE, "CHUNKING"), {"pipelining": False}, 4),  # MAIL, RCPT, RCPT, BDAT LAST
        ((*BASE, "CHUNKING"), {}, 1),  # everything in one write
        ((*BASE, "CHUNKING"), {"chunking": False}, 2),
    ],
)
async def test_round_trips_per_message(
    certs: TestCertificates,
    extensions: tuple[str, ...],
    kwargs: dict[str, object],
    expected: int,
) -> None:
    per_message, server = await round_trips_per_message(certs, extensions, **kwargs)
    assert per_message == expected
    assert server.messages[-1].data == b"m9\r\n"


@pytest.mark.parametrize("pipelining", [True, False])
async def test_bdat_small_and_large_and_streamed(
    certs: TestCertificates, pipelining: bool
) -> None:
    server = server_with(certs, *BASE, "CHUNKING")
    big = b"".join(b".line %d\n" % i for i in range(20000))  # > send_size, dots not stuffed
    send_size = 4096

    async def stream() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    async with fake_session(server, certs, pipelining=pipelining, send_size=send_size) as session:
        await session.send("a@example.com", ["b@example.com"], b".small\rbody")
        await session.send("a@example.com", ["b@example.com"], big)
        await session.send("a@example.com", ["b@example.com"], stream())
        await session.send("a@example.com", ["b@example.com"], b"")
    expected_big = big.replace(b"\n", b"\r\n")
    assert [m.data for m in server.messages] == [
        b".small\r\nbody\r\n",
        expected_big,
        expected_big,
        b"",
    ]
    assert server.bare_line_endings == 0
    commands = [line for who, line in server.transcript if who == "C"]
    assert b"DATA" not in commands
    assert any(c.startswith(b"BDAT 4096") and not c.endswith(b"LAST") for c in commands)
    assert b"BDAT 0 LAST" in commands


async def test_bdat_stream_8bit_declared(certs: TestCertificates) -> None:
    server = server_with(certs, *BASE, "CHUNKING")

    async def stream() -> AsyncIterator[bytes]:
        yield "Grüße\n".encode()

    async with fake_session(server, certs) as session:
        await session.send("jöran@example.com", ["b@example.com"], stream())
    (message,) = server.messages
    assert set(message.mail_options) == {"BODY=8BITMIME", "SMTPUTF8"}
    assert message.data == "Grüße\r\n".encode()
    assert server.undeclared_8bit == 0


@pytest.mark.parametrize("pipelining", [True, False])
async def test_bdat_refused_recipients_and_message(
    certs: TestCertificates, pipelining: bool
) -> None:
    server = server_with(
        certs, *BASE, "CHUNKING",
        refuse_recipients={"bad@example.com": (550, "5.1.1 no")},
        data_reply=(554, "5.6.0 content refused"),
    )  # fmt: skip
    async with fake_session(server, certs, pipelining=pipelining) as session:
        with pytest.raises(ts.SMTPRecipientsRefused):
            await session.send("a@example.com", ["bad@example.com"], b"x")
        with pytest.raises(ts.SMTPResponseError) as info:
            await session.send("a@example.com", ["ok@example.com"], b"x")
        assert info.value.command == "BDAT" and info.value.code == 554
        assert info.value.outcome is ts.Outcome.REFUSED
        assert session.is_usable
        await session.noop()
    assert server.messages == []


async def test_binarymime(certs: TestCertificates) -> None:
    server = server_with(certs, *BASE, "CHUNKING", "BINARYMIME")
    payload = bytes(range(256)) * 3 + b"\r\n.\r\n\n.\r"
    async with fake_session(server, certs) as session:
        await session.send("a@example.com", ["b@example.com"], payload, binary=True)
    (message,) = server.messages
    assert message.data == payload  # unaltered
    assert "BODY=BINARYMIME" in message.mail_options
    assert f"SIZE={len(payload)}" in message.mail_options


async def test_binarymime_needs_the_extensions(certs: TestCertificates) -> None:
    server = server_with(certs, *BASE, "CHUNKING")
    async with fake_session(server, certs) as session:
        with pytest.raises(ts.SMTPNotSupportedError, match="BINARYMIME"):
            await session.send("a@example.com", ["b@example.com"], b"x", binary=True)
        assert session.is_usable


async def test_dsn_options(certs: TestCertificates) -> None:
    server = server_with(certs, *BASE, "DSN")
    dsn = DSN(ret="HDRS", envid="queue+42=x", notify={"SUCCESS", "FAILURE"}, orcpt=True)
    async with fake_session(server, certs) as session:
        await session.send("a@example.com", ["b+tag@example.com", "jöran@example.com"], b"x",
                           dsn=dsn)  # fmt: skip
    (message,) = server.messages
    assert "RET=HDRS" in message.mail_options
    assert "ENVID=queue+2B42+3Dx" in message.mail_options
    assert message.rcpt_options["b+tag@example.com"] == (
        "NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;b+2Btag@example.com",
    )  # fmt: skip
    assert message.rcpt_options["jöran@example.com"] == (
        "NOTIFY=SUCCESS,FAILURE", "ORCPT=utf-8;j\\x{F6}ran@example.com",
    )  # fmt: skip


async def test_dsn_without_server_support(certs: TestCertificates) -> None:
    server = server_with(certs, *BASE)
    async with fake_session(server, certs) as session:
        with pytest.raises(ts.SMTPNotSupportedError, match="DSN"):
            await session.send("a@example.com", ["b@example.com"], b"x",
                               dsn=DSN(notify=["NEVER"]))  # fmt: skip
    assert not any(line.startswith(b"MAIL") for _, line in server.transcript)


def test_dsn_validation() -> None:
    assert DSN(notify="never").notify == frozenset({DSNNotify.NEVER})
    assert DSN(ret=DSNReturn.FULL).mail_params() == ["RET=FULL"]
    for bad in ({"NEVER", "SUCCESS"}, set(), {"SOMETIMES"}):
        with pytest.raises(ts.SMTPInputError):
            DSN(notify=bad)
    for envid in ("", "x" * 101, "tab\there", "ünï"):
        with pytest.raises(ts.SMTPInputError):
            DSN(envid=envid)
    with pytest.raises(ValueError, match="HEADERS"):
        DSN(ret="HEADERS")
    assert xtext("a+b=c d\x00é") == "a+2Bb+3Dc+20d+00+C3+A9"


async def test_requiretls(certs: TestCertificates) -> None:
    server = server_with(certs, *BASE, "REQUIRETLS")
    async with fake_session(server, certs) as session:
        await session.send("a@example.com", ["b@example.com"], b"x", requiretls=True)
    assert "REQUIRETLS" in server.messages[0].mail_options


async def test_requiretls_refused_without_tls_or_support(certs: TestCertificates) -> None:
    plain = FakeSMTPServer(extensions=(*BASE, "REQUIRETLS"))
    async with fake_session(plain, certs, tls=ts.TLSMode.INSECURE_PLAINTEXT) as session:
        with pytest.raises(ts.SMTPNotSupportedError, match="TLS"):
            await session.send("a@example.com", ["b@example.com"], b"x", requiretls=True)
    server = server_with(certs, *BASE)
    async with fake_session(server, certs) as session:
        with pytest.raises(ts.SMTPNotSupportedError, match="REQUIRETLS"):
            await session.send("a@example.com", ["b@example.com"], b"x", requiretls=True)


async def test_bdat_cancelled_mid_stream_breaks_the_session(
    certs: TestCertificates, autojump_clock: trio.testing.MockClock
) -> None:
    server = server_with(certs, *BASE, "CHUNKING")
    send, receive = trio.open_memory_channel[bytes](1)
    send_size = 1024
    async with fake_session(server, certs, send_size=send_size) as session:
        await send.send(b"x" * 5000)
        with trio.move_on_after(1):
            await session.send("a@example.com", ["b@example.com"], receive)
        assert not session.is_usable
    assert server.messages == []


@pytest.mark.parametrize(("pipelining", "most_in_flight"), [(True, 8), (False, 1)])
async def test_bdat_chunks_in_flight(
    certs: TestCertificates, pipelining: bool, most_in_flight: int
) -> None:
    """RFC 3030 §4.2: BDAT chunks are pipelined only with PIPELINING."""
    server = server_with(certs, *BASE, "CHUNKING")
    send_size = 1024
    seen: list[int] = []
    async with fake_session(server, certs, pipelining=pipelining, send_size=send_size) as session:
        core = session._core
        original = core.next_chunk

        def spy() -> bool:
            queued = original()
            seen.append(len(core.inflight))
            return queued

        core.next_chunk = spy  # type: ignore[method-assign]
        await session.send("a@example.com", ["b@example.com"], b"x" * 20_000)
    assert max(seen) == most_in_flight
    assert server.pipelining_violations == 0
    assert server.messages[0].data == b"x" * 20_000 + b"\r\n"
