"""The fake server's connection handling: greeting, EHLO, TLS, its listener, its
configuration, and robustness (``trio_sendmail/testing/_server.py``)."""

from __future__ import annotations

import ssl
from functools import partial

import pytest
import trio
import trio.testing

from trio_sendmail.testing import (
    DEFAULT_EXTENSIONS,
    FakeSMTPServer,
    TestCertificates,
    serve_fake_smtp,
)

from .raw_client import (
    HOST,
    PASSWORD,
    PLAIN_OK,
    USERS,
    RawClient,
    Reply,
    assert_no_secret,
    connected,
    tcp_connected,
)

# --- greeting and EHLO --------------------------------------------------------------------------


async def test_greeting_ehlo_and_quit() -> None:
    server = FakeSMTPServer()
    async with connected(server, greeting=None) as client:
        greeting = await client.reply()
        assert greeting == Reply(220, (f"{HOST} ESMTP trio_sendmail fake server",))
        ehlo = await client.ehlo()
        assert ehlo.lines == (HOST, *DEFAULT_EXTENSIONS)
        assert (await client.cmd("QUIT")) == Reply(221, ("2.0.0 Bye",))
        await client.expect_eof()
    assert server.connections == 1
    assert server.transcript[:2] == [
        ("S", f"220 {HOST} ESMTP trio_sendmail fake server".encode()),
        ("C", b"EHLO client.example.test"),
    ]
    assert server.transcript[2] == ("S", f"250-{HOST}".encode())
    assert server.transcript[-1] == ("S", b"221 2.0.0 Bye")


async def test_greeting_421_closes() -> None:
    server = FakeSMTPServer(greeting=(421, "4.3.2 busy\nreally"))
    async with connected(server, greeting=None) as client:
        assert await client.reply() == Reply(421, ("4.3.2 busy", "really"))
        await client.expect_eof()


async def test_greeting_554_waits_for_quit() -> None:
    server = FakeSMTPServer(greeting=(554, "5.3.2 go away"))
    async with connected(server, greeting=554) as client:
        assert (await client.cmd("EHLO x")).code == 503
        assert (await client.cmd("MAIL FROM:<a@b.test>")).code == 503
        assert (await client.cmd("QUIT")).code == 221
        await client.expect_eof()


async def test_ehlo_advertises_starttls_but_not_auth_before_tls(
    tls_server: FakeSMTPServer,
) -> None:
    async with connected(tls_server) as client:
        lines = (await client.ehlo()).lines
        assert "STARTTLS" in lines
        assert not any(line.startswith("AUTH") for line in lines)
        reply = await client.cmd(f"AUTH PLAIN {PLAIN_OK}")
        assert reply == Reply(538, ("5.7.11 Encryption required for requested authentication",))
    assert tls_server.messages == []
    assert_no_secret(tls_server)


async def test_ehlo_variants(certs: TestCertificates) -> None:
    plain_auth = FakeSMTPServer(users=USERS, auth_requires_tls=False, extensions=["8BITMIME"])
    async with connected(plain_auth) as client:
        assert (await client.ehlo()).lines == (HOST, "8BITMIME", "AUTH PLAIN LOGIN")
    no_starttls = FakeSMTPServer(ssl_context=certs.server_context, starttls=False, extensions=[])
    async with connected(no_starttls) as client:
        assert (await client.ehlo()).lines == (HOST,)
        assert (await client.cmd("STARTTLS")).code == 454


async def test_helo_and_commands_before_greeting() -> None:
    server = FakeSMTPServer()
    async with connected(server) as client:
        for command in ("MAIL FROM:<a@b.test>", "RCPT TO:<a@b.test>", "DATA", "STARTTLS"):
            assert await client.cmd(command) == Reply(503, ("5.5.1 Send EHLO first",))
        assert (await client.cmd("NOOP")).code == 250
        assert (await client.cmd("EHLO")).code == 501
        assert await client.cmd("HELO client.example.test") == Reply(250, (HOST,))
        # No ESMTP after HELO: parameters are not recognised, AUTH and STARTTLS not available.
        assert (await client.cmd("MAIL FROM:<a@b.test> SIZE=10")).code == 555
        assert (await client.cmd("MAIL FROM:<a@b.test>")).code == 250
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 250
        assert (await client.cmd("DATA")).code == 354
        await client.send(b"hi\r\n.\r\n")
        assert (await client.reply()).code == 250
    assert server.messages[0].helo == "client.example.test"


# --- STARTTLS and implicit TLS ------------------------------------------------------------------


async def test_starttls_upgrade_then_ehlo_again(
    tls_server: FakeSMTPServer, certs: TestCertificates
) -> None:
    async with connected(tls_server) as client:
        await client.ehlo("before.example.test")
        assert await client.cmd("STARTTLS") == Reply(220, ("2.0.0 Ready to start TLS",))
        await client.starttls(certs.client_context)
        # The EHLO state was forgotten.
        assert (await client.cmd("MAIL FROM:<a@b.test>")).code == 503
        assert (await client.cmd("STARTTLS")).code == 503
        lines = (await client.ehlo("after.example.test")).lines
        assert "STARTTLS" not in lines
        assert "AUTH PLAIN LOGIN" in lines
        assert (await client.cmd("STARTTLS")) == Reply(503, ("5.5.1 Already using TLS",))
        reply = await client.send_message("a@b.test", ["c@d.test"], b"x\r\n.\r\n")
        assert reply.code == 250
        assert (await client.cmd("QUIT")).code == 221
        await client.expect_eof()
    [message] = tls_server.messages
    assert message.tls
    assert message.helo == "after.example.test"
    assert tls_server.injected_plaintext == []


async def test_starttls_injected_plaintext_is_discarded(
    tls_server: FakeSMTPServer, certs: TestCertificates
) -> None:
    async with connected(tls_server) as client:
        await client.ehlo()
        await client.send(b"STARTTLS\r\nMAIL FROM:<evil@attacker.test>\r\n")
        assert (await client.reply()).code == 220
        await client.starttls(certs.client_context)
        await client.ehlo()
        # The injected MAIL did not open a transaction.
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 503
    assert tls_server.injected_plaintext == [b"MAIL FROM:<evil@attacker.test>\r\n"]


async def test_starttls_refusals() -> None:
    server = FakeSMTPServer()
    async with connected(server) as client:
        await client.ehlo()
        assert await client.cmd("STARTTLS") == Reply(454, ("4.7.0 TLS not available",))
        assert (await client.cmd("STARTTLS now")).code == 501


async def test_tls_handshake_failure_ends_quietly(tls_server: FakeSMTPServer) -> None:
    async with connected(tls_server) as client:
        await client.ehlo()
        assert (await client.cmd("STARTTLS")).code == 220
        await client.send(b"this is not a TLS ClientHello\r\n" * 10)
        with pytest.raises((EOFError, trio.BrokenResourceError)):
            await client.reply()


async def test_implicit_tls_over_memory(
    tls_server: FakeSMTPServer, certs: TestCertificates
) -> None:
    async with connected(
        tls_server, implicit_tls=True, client_context=certs.client_context
    ) as client:
        lines = (await client.ehlo()).lines
        assert "STARTTLS" not in lines
        assert "AUTH PLAIN LOGIN" in lines
        assert (await client.cmd("QUIT")).code == 221
        await client.expect_eof()


async def test_implicit_tls_needs_context() -> None:
    server = FakeSMTPServer()
    _, server_stream = trio.testing.memory_stream_pair()
    with pytest.raises(ValueError, match="ssl_context"):
        await server.handle_stream(server_stream, implicit_tls=True)
    with pytest.raises(ValueError, match="ssl_context"):
        async with serve_fake_smtp(server, implicit_tls=True):
            pass  # pragma: no cover


async def test_tcp_implicit_tls_with_auth(
    tls_server: FakeSMTPServer, certs: TestCertificates
) -> None:
    async with tcp_connected(tls_server, implicit_tls=True, context=certs.client_context) as c:
        await c.ehlo()
        assert (await c.cmd(f"AUTH PLAIN {PLAIN_OK}")).code == 235
        assert (await c.send_message("alice@b.test", ["c@d.test"], b"hi\r\n.\r\n")).code == 250
        assert (await c.cmd("QUIT")).code == 221
        await c.expect_eof()
    [message] = tls_server.messages
    assert message.tls
    assert message.authenticated_as == "alice"
    assert_no_secret(tls_server)


async def test_tcp_starttls_and_several_connections(
    tls_server: FakeSMTPServer, certs: TestCertificates
) -> None:
    async with serve_fake_smtp(tls_server) as port:
        for number in range(2):
            client = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
            assert (await client.reply()).code == 220
            await client.ehlo()
            assert (await client.cmd("STARTTLS")).code == 220
            await client.starttls(certs.client_context, hostname="localhost")
            await client.ehlo()
            body = f"n{number}\r\n.\r\n".encode()
            assert (await client.send_message("a@b.test", ["c@d.test"], body)).code == 250
            assert (await client.cmd("QUIT")).code == 221
            await client.expect_eof()
            await client.stream.aclose()
    assert tls_server.connections == 2
    assert [m.data for m in tls_server.messages] == [b"n0\r\n", b"n1\r\n"]
    assert all(m.tls for m in tls_server.messages)


async def test_serve_tcp_with_nursery_start() -> None:
    server = FakeSMTPServer()
    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(partial(server.serve_tcp, host="127.0.0.1"))
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = RawClient(stream)
        assert (await client.reply()).code == 220
        assert (await client.cmd("QUIT")).code == 221
        await client.expect_eof()
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert server.connections == 1


async def test_lockstep_streams(certs: TestCertificates) -> None:
    server = FakeSMTPServer(ssl_context=certs.server_context)
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, server_stream)
        client = RawClient(client_stream)
        assert (await client.reply()).code == 220
        await client.ehlo()
        assert (await client.cmd("STARTTLS")).code == 220
        await client.starttls(certs.client_context)
        await client.ehlo()
        assert (await client.cmd("QUIT")).code == 221
        await client.expect_eof()
        await client.stream.aclose()


# --- robustness ---------------------------------------------------------------------------------


async def test_eof_mid_data_ends_quietly() -> None:
    server = FakeSMTPServer()
    async with connected(server) as client:
        await client.ehlo()
        assert (await client.cmd("MAIL FROM:<a@b.test>")).code == 250
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 250
        assert (await client.cmd("DATA")).code == 354
        await client.send(b"partial message\r\n")
    assert server.messages == []


async def test_broken_stream_ends_quietly() -> None:
    server = FakeSMTPServer()
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    # The client stops reading: the server's greeting fails with BrokenResourceError.
    await client_stream.receive_stream.aclose()
    with trio.fail_after(5):
        await server.handle_stream(server_stream)
    assert server.connections == 1
    await client_stream.aclose()


async def test_server_bugs_are_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeSMTPServer()

    async def broken_noop(self: object, arg: str) -> bool:
        raise ZeroDivisionError

    monkeypatch.setattr("trio_sendmail.testing._dialogue.Dialogue.cmd_noop", broken_noop)
    with pytest.RaisesGroup(ZeroDivisionError):
        async with connected(server) as client:
            await client.send(b"NOOP\r\n")
            await client.reply()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hostname": "two words"},
        {"hostname": ""},
        {"extensions": ["PIPELINING\r\nX"]},
        {"extensions": "PIPELINING"},
        {"data_reply": (99, "x")},
        {"greeting": (220, "a\r\nb")},
        {"refuse_senders": {"a@b.test": (700, "x")}},
        {"auth_mechanisms": ["PLAIN LOGIN"]},
        {"max_line_length": 2},
    ],
)
def test_invalid_configuration(kwargs: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        FakeSMTPServer(**kwargs)  # type: ignore[arg-type]


def test_certificates(certs: TestCertificates) -> None:
    assert certs.ca_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert certs.client_context.verify_mode == ssl.CERT_REQUIRED
    assert certs.client_context.check_hostname
    # Only the throw-away CA is trusted.
    assert len(certs.client_context.get_ca_certs()) == 1
    assert TestCertificates.__test__ is False


def test_repr_hides_users() -> None:
    assert PASSWORD not in repr(FakeSMTPServer(users=USERS))
