"""Interop with aiosmtpd, an independent server, started on loopback."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import trio
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AioSMTP
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

import trio_sendmail as ts
from trio_sendmail.testing import TestCertificates

from .. import defaults
from ..helpers import PASSWORD

pytestmark = pytest.mark.interop


@attrs.define
class Handler:
    envelopes: list[Envelope] = attrs.field(factory=list)

    async def handle_DATA(self, server: AioSMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 2.0.0 OK queued"


def _authenticator(
    server: AioSMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        b"alice",
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@attrs.frozen
class Aiosmtpd:
    port: int
    handler: Handler


@pytest.fixture
def aiosmtpd_server(certs: TestCertificates) -> Iterator[Aiosmtpd]:
    handler = Handler()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=_free_port(),
        server_hostname="localhost",
        tls_context=certs.server_context,
        require_starttls=True,
        authenticator=_authenticator,
        auth_require_tls=True,
        enable_SMTPUTF8=True,
        decode_data=False,
    )
    controller.start()
    try:
        yield Aiosmtpd(controller.port, handler)
    finally:
        controller.stop()


EDGE_BODY = (
    b"Subject: edge cases\r\n\r\n"
    b".leading dot\n..two dots\n.\nbare\rcr\rx\r\n.\r\nmiddle terminator above\n"
    b"\xc3\xa9t\xc3\xa9 8-bit\r\n\n.\n.\r\n\r.\r\nno final newline."
)


def normalise(body: bytes) -> bytes:
    body = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    return body if body.endswith(b"\r\n") or not body else body + b"\r\n"


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_starttls_auth_and_exact_bytes(
    aiosmtpd_server: Aiosmtpd, certs: TestCertificates, pipelining: bool, mechanism: str
) -> None:
    send, receive = trio.open_memory_channel[bytes](0)

    async def produce() -> None:
        async with send:
            # Split at every awkward place: between CR and LF, LF and dot, …
            for i in range(0, len(EDGE_BODY), 3):
                await send.send(EDGE_BODY[i : i + 3])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce)
        result = await defaults.sendmail_with_starttls(
            hostname="localhost",
            port=aiosmtpd_server.port,
            sender="a@example.com",
            recipients=["b@example.com", "jöran@example.com"],
            mail=receive,
            ssl_context=certs.client_context,
            authentication=ts.Authentication("alice", PASSWORD, mechanism=mechanism),
            pipelining=pipelining,
        )
    assert result.reply.code == 250
    (envelope,) = aiosmtpd_server.handler.envelopes
    assert envelope.mail_from == "a@example.com"
    assert envelope.rcpt_tos == ["b@example.com", "jöran@example.com"]
    assert "SMTPUTF8" in envelope.mail_options
    assert envelope.original_content == normalise(EDGE_BODY)


async def test_wrong_password(aiosmtpd_server: Aiosmtpd, certs: TestCertificates) -> None:
    with pytest.raises(ts.SMTPAuthenticationError) as info:
        await defaults.sendmail_with_starttls(
            hostname="localhost",
            port=aiosmtpd_server.port,
            sender="a@example.com",
            recipients=["b@example.com"],
            mail=b"x",
            ssl_context=certs.client_context,
            authentication=ts.Authentication("alice", "wrong"),
        )
    assert info.value.code == 535
    assert aiosmtpd_server.handler.envelopes == []


async def test_many_messages_over_one_session(
    aiosmtpd_server: Aiosmtpd, certs: TestCertificates
) -> None:
    async with defaults.open_session(
        "localhost",
        port=aiosmtpd_server.port,
        tls=ts.TLSMode.STARTTLS,
        ssl_context=certs.client_context,
        authentication=ts.Authentication("alice", PASSWORD),
    ) as session:
        for i in range(10):
            await session.send("a@example.com", ["b@example.com"], b"message %d\n" % i)
    contents = [e.original_content for e in aiosmtpd_server.handler.envelopes]
    assert contents == [b"message %d\r\n" % i for i in range(10)]
