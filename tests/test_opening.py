"""Real sockets on loopback: TLS verification, SNI, connection errors."""

from __future__ import annotations

import socket
import ssl

import pytest
import trio
import trustme

import trio_sendmail as ts
from trio_sendmail.testing import FakeSMTPServer, TestCertificates, serve_fake_smtp

from . import defaults
from .helpers import PASSWORD, USERS

AUTH = ts.Authentication("alice", PASSWORD)


def server_for(certs: TestCertificates) -> FakeSMTPServer:
    return FakeSMTPServer(ssl_context=certs.server_context, users=USERS)


async def test_sendmail_implicit_tls_on_loopback(certs: TestCertificates) -> None:
    server = server_for(certs)
    async with serve_fake_smtp(server, implicit_tls=True) as port:
        result = await defaults.sendmail(
            hostname="localhost",
            port=port,
            sender="a@example.com",
            recipients=["b@example.com"],
            mail=b"hello",
            ssl_context=certs.client_context,
            authentication=AUTH,
        )
    assert result.reply.code == 250
    assert server.messages[0].tls and server.messages[0].authenticated_as == "alice"


async def test_sendmail_with_starttls_on_loopback(certs: TestCertificates) -> None:
    server = server_for(certs)
    async with serve_fake_smtp(server) as port:
        await defaults.sendmail_with_starttls(
            hostname="127.0.0.1",
            port=port,
            sender="a@example.com",
            recipients=["b@example.com"],
            mail=b"hello",
            ssl_context=certs.client_context,
            authentication=AUTH,
        )
    assert server.messages[0].tls


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:  # pragma: no cover - depends on the machine
        return False
    return True


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback on this machine")
async def test_ipv6_loopback_literal_hostname(certs: TestCertificates) -> None:
    server = server_for(certs)
    async with serve_fake_smtp(server, implicit_tls=True, host="::1") as port:
        await defaults.sendmail(
            hostname="::1",
            port=port,
            sender="a@example.com",
            recipients=["b@example.com"],
            mail=b"x",
            ssl_context=certs.client_context,
        )
    assert len(server.messages) == 1


@pytest.mark.parametrize("implicit", [True, False])
async def test_untrusted_certificate_is_a_tls_error(
    certs: TestCertificates, implicit: bool
) -> None:
    other_ca = trustme.CA()
    context = ssl.create_default_context()
    other_ca.configure_trust(context)
    server = server_for(certs)
    send = defaults.sendmail if implicit else defaults.sendmail_with_starttls
    async with serve_fake_smtp(server, implicit_tls=implicit) as port:
        with pytest.raises(ts.SMTPTLSError, match="certificate"):
            await send(
                hostname="localhost",
                port=port,
                sender="a@example.com",
                recipients=["b@example.com"],
                mail=b"x",
                ssl_context=context,
                authentication=AUTH,
            )
    assert server.messages == []
    assert not any(line.startswith(b"AUTH") for _, line in server.transcript)


@pytest.mark.parametrize("implicit", [True, False])
async def test_wrong_hostname_is_a_tls_error(implicit: bool) -> None:
    from trio_sendmail.testing import make_test_certificates

    certs = make_test_certificates("mail.example.test")  # not valid for 127.0.0.1
    server = server_for(certs)
    send = defaults.sendmail if implicit else defaults.sendmail_with_starttls
    async with serve_fake_smtp(server, implicit_tls=implicit) as port:
        with pytest.raises(ts.SMTPTLSError):
            await send(
                hostname="127.0.0.1",
                port=port,
                sender="a@example.com",
                recipients=["b@example.com"],
                mail=b"x",
                ssl_context=certs.client_context,
                authentication=AUTH,
            )
    assert server.messages == []


async def test_sni_carries_the_hostname(certs: TestCertificates) -> None:
    seen: list[str | None] = []
    server_context = certs.server_context

    def on_sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        seen.append(name)

    server_context.sni_callback = on_sni
    try:
        server = server_for(certs)
        for send, implicit in (
            (defaults.sendmail, True),
            (defaults.sendmail_with_starttls, False),
        ):
            async with serve_fake_smtp(server, implicit_tls=implicit) as port:
                await send(
                    hostname="localhost",
                    port=port,
                    sender="a@example.com",
                    recipients=["b@example.com"],
                    mail=b"x",
                    ssl_context=certs.client_context,
                )
    finally:
        server_context.sni_callback = None
    assert seen == ["localhost", "localhost"]


async def test_connection_refused_is_a_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(ts.SMTPConnectionError, match="cannot connect"):
        await ts.sendmail(
            hostname="127.0.0.1",
            port=port,
            sender="a@example.com",
            recipients=["b@example.com"],
            mail=b"x",
        )


async def test_connect_timeout(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def never(*args: object, **kwargs: object) -> trio.SocketStream:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    monkeypatch.setattr(trio, "open_tcp_stream", never)
    start = trio.current_time()
    with pytest.raises(ts.SMTPTimeoutError) as info:
        async with ts.open_session("127.0.0.1", timeouts=ts.Timeouts(connect=7)):
            pass  # pragma: no cover
    assert info.value.phase == "connect"
    assert trio.current_time() - start == pytest.approx(7)


async def test_tls_handshake_that_stalls_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, _server = trio.testing.memory_stream_pair()  # nobody answers the ClientHello
    start = trio.current_time()
    with pytest.raises(ts.SMTPTimeoutError) as info:
        async with ts.open_session(
            "localhost", stream=client, timeouts=ts.Timeouts(tls_handshake=9)
        ):
            pass  # pragma: no cover
    assert info.value.phase == "tls_handshake"
    assert trio.current_time() - start == pytest.approx(9)


async def test_default_ehlo_name_is_a_valid_domain(certs: TestCertificates) -> None:
    server = FakeSMTPServer()
    async with (
        serve_fake_smtp(server) as port,
        ts.open_session("127.0.0.1", port=port, tls=ts.TLSMode.INSECURE_PLAINTEXT),
    ):
        pass
    (helo,) = {line for who, line in server.transcript if line.startswith(b"EHLO")}
    name = helo.decode()[5:]
    assert ts.Domain.parse(name)  # an FQDN or the address literal of our end
    assert name == "[127.0.0.1]" or "." in name
