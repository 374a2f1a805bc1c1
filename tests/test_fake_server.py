"""Tests of the public fake SMTP server, driven by a tiny raw client written here."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import re
import ssl
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_sendmail.testing import (
    DEFAULT_EXTENSIONS,
    FakeSMTPServer,
    ReceivedMessage,
    TestCertificates,
    make_test_certificates,
    serve_fake_smtp,
)

HOST = "mail.example.test"
PASSWORD = "correct horse battery staple"
USERS = {"alice": PASSWORD}
PLAIN_OK = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode("ascii")


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


@attrs.frozen
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


class RawClient:
    """Send raw bytes, read replies; just enough SMTP client to test a server with."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            data = await self.stream.receive_some(4096)
            if not data:
                raise EOFError(bytes(self.buffer))
            self.buffer += data
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        assert b"\n" not in line
        return line

    async def reply(self) -> Reply:
        lines: list[str] = []
        while True:
            line = (await self._line()).decode()
            code, separator = int(line[:3]), line[3:4]
            lines.append(line[4:])
            if separator == " ":
                return Reply(code, tuple(lines))
            assert separator == "-"

    async def cmd(self, line: str | bytes) -> Reply:
        raw = line.encode() if isinstance(line, str) else line
        await self.send(raw + b"\r\n")
        return await self.reply()

    async def starttls(self, context: ssl.SSLContext, hostname: str = HOST) -> None:
        assert not self.buffer
        tls = trio.SSLStream(self.stream, context, server_hostname=hostname)
        await tls.do_handshake()
        self.stream = tls

    async def expect_eof(self) -> None:
        assert not self.buffer
        assert await self.stream.receive_some(100) == b""

    async def ehlo(self, name: str = "client.example.test") -> Reply:
        reply = await self.cmd(f"EHLO {name}")
        assert reply.code == 250
        return reply

    async def send_message(self, sender: str, recipients: list[str], body: bytes) -> Reply:
        assert (await self.cmd(f"MAIL FROM:<{sender}>")).code == 250
        for recipient in recipients:
            assert (await self.cmd(f"RCPT TO:<{recipient}>")).code == 250
        return await self.send_message_body(body)

    async def send_message_body(self, body: bytes) -> Reply:
        assert (await self.cmd("DATA")).code == 354
        await self.send(body)
        return await self.reply()


@contextlib.asynccontextmanager
async def connected(
    server: FakeSMTPServer,
    *,
    implicit_tls: bool = False,
    client_context: ssl.SSLContext | None = None,
    greeting: int | None = 220,
) -> AsyncIterator[RawClient]:
    """Serve one connection over memory streams; close the client side on exit."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(server.handle_stream, server_stream, implicit_tls=implicit_tls))
        client = RawClient(client_stream)
        try:
            if implicit_tls:
                assert client_context is not None
                await client.starttls(client_context)
            if greeting is not None:
                assert (await client.reply()).code == greeting
            yield client
        finally:
            with contextlib.suppress(trio.BrokenResourceError):
                await client.stream.aclose()


@contextlib.asynccontextmanager
async def tcp_connected(
    server: FakeSMTPServer, *, implicit_tls: bool = False, context: ssl.SSLContext | None = None
) -> AsyncIterator[RawClient]:
    async with serve_fake_smtp(server, implicit_tls=implicit_tls) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = RawClient(stream)
        try:
            if implicit_tls:
                assert context is not None
                await client.starttls(context, hostname="127.0.0.1")
            assert (await client.reply()).code == 220
            yield client
        finally:
            with contextlib.suppress(trio.BrokenResourceError):
                await client.stream.aclose()


@pytest.fixture(scope="module")
def certs() -> TestCertificates:
    return make_test_certificates()


@pytest.fixture
def tls_server(certs: TestCertificates) -> FakeSMTPServer:
    return FakeSMTPServer(ssl_context=certs.server_context, users=USERS)


def assert_no_secret(server: FakeSMTPServer) -> None:
    secrets = [PASSWORD.encode(), b64(PASSWORD).encode(), b64(f"\0alice\0{PASSWORD}").encode()]
    for _, line in server.transcript:
        for secret in secrets:
            assert secret not in line


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


# --- AUTH ---------------------------------------------------------------------------------------


@pytest.fixture
def auth_server() -> FakeSMTPServer:
    return FakeSMTPServer(users=USERS, auth_requires_tls=False)


async def test_auth_plain_initial_response(auth_server: FakeSMTPServer) -> None:
    async with connected(auth_server) as client:
        await client.ehlo()
        reply = await client.cmd(f"AUTH PLAIN {PLAIN_OK}")
        assert reply == Reply(235, ("2.7.0 Authentication successful",))
        assert (await client.cmd(f"AUTH PLAIN {PLAIN_OK}")).code == 503
        assert (await client.send_message("a@b.test", ["c@d.test"], b".\r\n")).code == 250
    assert auth_server.messages[0].authenticated_as == "alice"
    assert ("C", b"AUTH PLAIN <redacted>") in auth_server.transcript
    assert_no_secret(auth_server)


async def test_auth_plain_empty_challenge(auth_server: FakeSMTPServer) -> None:
    async with connected(auth_server) as client:
        await client.ehlo()
        assert await client.cmd("AUTH PLAIN") == Reply(334, ("",))
        assert (await client.cmd(b64(f"alice\0alice\0{PASSWORD}"))).code == 235
    assert auth_server.transcript[-4:-1] == [
        ("C", b"AUTH PLAIN"),
        ("S", b"334 "),
        ("C", b"<redacted>"),
    ]
    assert_no_secret(auth_server)


@pytest.mark.parametrize(
    "response",
    ["\0alice\0wrong", f"\0bob\0{PASSWORD}", f"mallory\0alice\0{PASSWORD}", "garbage"],
)
async def test_auth_plain_wrong_credentials(auth_server: FakeSMTPServer, response: str) -> None:
    async with connected(auth_server) as client:
        await client.ehlo()
        reply = await client.cmd(f"AUTH PLAIN {b64(response)}")
        assert reply == Reply(535, ("5.7.8 Authentication credentials invalid",))
        # A failed AUTH may be retried.
        assert (await client.cmd(f"AUTH PLAIN {PLAIN_OK}")).code == 235


async def test_auth_login(auth_server: FakeSMTPServer) -> None:
    async with connected(auth_server) as client:
        await client.ehlo()
        assert await client.cmd("AUTH LOGIN") == Reply(334, (b64("Username:"),))
        assert await client.cmd(b64("alice")) == Reply(334, (b64("Password:"),))
        assert (await client.cmd(b64(PASSWORD))).code == 235
    assert auth_server.transcript.count(("C", b"<redacted>")) == 2
    assert_no_secret(auth_server)


async def test_auth_login_initial_response_and_custom_prompts() -> None:
    server = FakeSMTPServer(
        users=USERS, auth_requires_tls=False, login_prompts=(b"User\0", b"Pass\0")
    )
    async with connected(server) as client:
        await client.ehlo()
        assert await client.cmd(f"AUTH LOGIN {b64('alice')}") == Reply(334, (b64("Pass\0"),))
        assert (await client.cmd(b64("nope"))).code == 535
        assert (await client.cmd("auth login")).code == 334
        assert (await client.cmd(b64("alice"))).code == 334
        assert (await client.cmd(b64(PASSWORD))).code == 235
    assert ("C", b"AUTH LOGIN <redacted>") in server.transcript
    assert_no_secret(server)


async def test_auth_cancel_and_bad_base64(auth_server: FakeSMTPServer) -> None:
    async with connected(auth_server) as client:
        await client.ehlo()
        assert (await client.cmd("AUTH LOGIN")).code == 334
        assert await client.cmd("*") == Reply(501, ("5.7.0 Authentication cancelled",))
        assert (await client.cmd("AUTH PLAIN")).code == 334
        assert await client.cmd("not base64!") == Reply(501, ("5.5.2 Invalid base64 data",))
        assert (await client.cmd("AUTH PLAIN AAA=BBB=")).code == 501
        assert (await client.cmd("AUTH PLAIN =AAA")).code == 501
        assert (await client.cmd("AUTH LOGIN")).code == 334
        assert (await client.cmd(b64("alice"))).code == 334
        assert (await client.cmd("=")).code == 501
        assert (await client.cmd("AUTH CRAM-MD5")) == Reply(
            504, ("5.5.4 Unrecognized authentication type",)
        )
        assert (await client.cmd("AUTH")).code == 501
        # Nothing was authenticated: the session still works.
        assert (await client.cmd("NOOP")).code == 250


async def test_auth_line_limits_and_odd_lines(auth_server: FakeSMTPServer) -> None:
    async with connected(auth_server) as client:
        await client.ehlo()
        assert (await client.cmd("AUTH PLAIN")).code == 334
        assert await client.cmd("A" * 13000) == Reply(
            500, ("5.5.6 Authentication exchange line is too long",)
        )
        assert (await client.cmd("AUTH PLAIN")).code == 334
        await client.send(b"abcd\n")
        assert (await client.reply()).code == 500
        # A long but legal response line is fine (RFC 4954 allows up to 12288 octets).
        assert (await client.cmd("AUTH PLAIN")).code == 334
        assert (await client.cmd(b64(b"\0alice\0" + b"x" * 6000))).code == 535
        assert (await client.cmd("AUTH PLAIN " + b64(b"\xff\0alice\0x"))).code == 535
        assert (await client.cmd("AUTH LOGIN")).code == 334
        assert (await client.cmd(b64(b"\xff"))).code == 334
        assert (await client.cmd(b64(PASSWORD))).code == 535
        assert (await client.cmd(f"AUTH PLAIN\t{PLAIN_OK}")).code == 500
    assert ("C", b"AUTH <redacted>") in auth_server.transcript
    assert_no_secret(auth_server)


async def test_auth_and_starttls_need_ehlo_not_helo(certs: TestCertificates) -> None:
    server = FakeSMTPServer(ssl_context=certs.server_context, users=USERS, auth_requires_tls=False)
    async with connected(server) as client:
        assert (await client.cmd("HELO")).code == 501
        assert (await client.cmd("HELO client.example.test")).code == 250
        assert (await client.cmd("STARTTLS")) == Reply(503, ("5.5.1 Send EHLO first",))
        assert (await client.cmd(f"AUTH PLAIN {PLAIN_OK}")).code == 503


async def test_auth_state_rules() -> None:
    server = FakeSMTPServer(users=USERS, auth_requires_tls=False, require_auth=True)
    async with connected(server) as client:
        assert (await client.cmd("AUTH PLAIN")).code == 503  # before EHLO
        await client.ehlo()
        assert await client.cmd("MAIL FROM:<a@b.test>") == Reply(
            530, ("5.7.0 Authentication required",)
        )
        assert (await client.cmd(f"AUTH PLAIN {PLAIN_OK}")).code == 235
        assert (await client.cmd("MAIL FROM:<a@b.test>")).code == 250
        assert (await client.cmd("AUTH LOGIN")).code == 503
    no_users = FakeSMTPServer()
    async with connected(no_users) as client:
        await client.ehlo()
        assert (await client.cmd("AUTH PLAIN")).code == 502


async def test_auth_during_transaction_refused(auth_server: FakeSMTPServer) -> None:
    async with connected(auth_server) as client:
        await client.ehlo()
        assert (await client.cmd("MAIL FROM:<a@b.test>")).code == 250
        assert (await client.cmd("AUTH PLAIN")).code == 503


# --- AUTH: CRAM-MD5, XOAUTH2, OAUTHBEARER, SCRAM-SHA-256 ----------------------------------------

TOKEN = "ya29.fake-Token_0123"


def sasl_server(*mechanisms: str, **kwargs: object) -> FakeSMTPServer:
    return FakeSMTPServer(
        users=USERS,
        tokens={TOKEN: "alice"},
        auth_requires_tls=False,
        auth_mechanisms=mechanisms,
        **kwargs,  # type: ignore[arg-type]
    )


def unb64(reply: Reply) -> bytes:
    assert reply.code == 334, reply
    return base64.b64decode(reply.lines[0], validate=True)


def cram_answer(user: str, password: str, challenge: bytes) -> str:
    return b64(f"{user} {hmac.digest(password.encode(), challenge, 'md5').hex()}")


async def test_auth_cram_md5() -> None:
    server = sasl_server("CRAM-MD5")
    async with connected(server) as client:
        assert "AUTH CRAM-MD5" in (await client.ehlo()).lines
        challenge = unb64(await client.cmd("AUTH CRAM-MD5"))
        assert re.fullmatch(rb"<\d+\.\d+@mail\.example\.test>", challenge)
        reply = await client.cmd(cram_answer("alice", PASSWORD, challenge))
        assert reply == Reply(235, ("2.7.0 Authentication successful",))
        assert (await client.send_message("a@b.test", ["c@d.test"], b".\r\n")).code == 250
    assert server.messages[0].authenticated_as == "alice"
    assert server.transcript.count(("C", b"<redacted>")) == 1
    assert_no_secret(server)


@pytest.mark.parametrize(
    "answer",
    [
        lambda c: cram_answer("alice", "wrong", c),
        lambda c: cram_answer("bob", PASSWORD, c),
        lambda c: cram_answer("alice", PASSWORD, c + b"x"),
        lambda c: b64(f"alice {hmac.digest(PASSWORD.encode(), c, 'md5').hex().upper()}"),
        lambda c: b64(f"alice{hmac.digest(PASSWORD.encode(), c, 'md5').hex()}"),
        lambda c: b64(b"\xff " + b"0" * 32),
        lambda c: "",
    ],
)
async def test_auth_cram_md5_wrong_answers(answer: Any) -> None:
    server = sasl_server("CRAM-MD5", "PLAIN")
    async with connected(server) as client:
        await client.ehlo()
        challenge = unb64(await client.cmd("AUTH CRAM-MD5"))
        reply = await client.cmd(answer(challenge))
        assert reply == Reply(535, ("5.7.8 Authentication credentials invalid",))
        # Each attempt gets a fresh challenge.
        assert unb64(await client.cmd("AUTH CRAM-MD5")) != challenge


async def test_auth_cram_md5_refuses_an_initial_response_and_is_off_by_default() -> None:
    async with connected(sasl_server("CRAM-MD5")) as client:
        await client.ehlo()
        reply = await client.cmd(f"AUTH CRAM-MD5 {b64('alice')}")
        assert reply == Reply(501, ("5.5.2 CRAM-MD5 does not allow an initial response",))
        assert (await client.cmd("AUTH PLAIN")).code == 504  # implemented, not advertised
    async with connected(FakeSMTPServer(users=USERS, auth_requires_tls=False)) as client:
        assert "AUTH PLAIN LOGIN" in (await client.ehlo()).lines
        for mechanism in ("CRAM-MD5", "SCRAM-SHA-256", "XOAUTH2", "OAUTHBEARER"):
            assert (await client.cmd(f"AUTH {mechanism}")).code == 504


def xoauth2(user: str, token: str) -> str:
    return b64(f"user={user}\x01auth=Bearer {token}\x01\x01")


def oauthbearer(token: str, authz: str = "a=alice", pairs: str = "") -> str:
    return b64(f"n,{authz},\x01{pairs}auth=Bearer {token}\x01\x01")


async def test_auth_offered_with_tokens_only() -> None:
    server = FakeSMTPServer(
        tokens={TOKEN: "alice"}, auth_requires_tls=False, auth_mechanisms=["xoauth2"]
    )
    async with connected(server) as client:
        assert "AUTH XOAUTH2" in (await client.ehlo()).lines
        assert (await client.cmd(f"AUTH XOAUTH2 {xoauth2('alice', TOKEN)}")).code == 235
    assert TOKEN not in repr(server)


@pytest.mark.parametrize(
    "initial",
    [
        xoauth2("alice", TOKEN),
        oauthbearer(TOKEN),
        oauthbearer(TOKEN, authz=""),
        oauthbearer(TOKEN, pairs="host=mail.example.test\x01port=587\x01"),
        b64(f"y,,\x01auth=bearer {TOKEN}\x01\x01"),
    ],
)
async def test_auth_oauth_success(initial: str) -> None:
    server = sasl_server("XOAUTH2", "OAUTHBEARER")
    mechanism = "XOAUTH2" if base64.b64decode(initial).startswith(b"user=") else "OAUTHBEARER"
    async with connected(server) as client:
        await client.ehlo()
        assert (await client.cmd(f"AUTH {mechanism} {initial}")).code == 235
        assert (await client.send_message("a@b.test", ["c@d.test"], b".\r\n")).code == 250
    assert server.messages[0].authenticated_as == "alice"
    assert ("C", f"AUTH {mechanism} <redacted>".encode()) in server.transcript
    assert not any(TOKEN.encode() in line for _, line in server.transcript)


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
async def test_auth_oauth_without_initial_response(mechanism: str) -> None:
    message = xoauth2("alice", TOKEN) if mechanism == "XOAUTH2" else oauthbearer(TOKEN)
    async with connected(sasl_server("XOAUTH2", "OAUTHBEARER")) as client:
        await client.ehlo()
        assert await client.cmd(f"AUTH {mechanism}") == Reply(334, ("",))
        assert (await client.cmd(message)).code == 235


@pytest.mark.parametrize(
    ("mechanism", "initial", "dummy"),
    [
        ("XOAUTH2", xoauth2("alice", "ya29.unknown"), ""),
        ("XOAUTH2", xoauth2("bob", TOKEN), ""),  # somebody else's token
        ("OAUTHBEARER", oauthbearer("ya29.unknown"), b64("\x01")),
        ("OAUTHBEARER", oauthbearer(TOKEN, authz="a=bob"), b64("\x01")),
    ],
)
async def test_auth_oauth_error_challenge(mechanism: str, initial: str, dummy: str) -> None:
    server = sasl_server("XOAUTH2", "OAUTHBEARER")
    async with connected(server) as client:
        await client.ehlo()
        error = json.loads(unb64(await client.cmd(f"AUTH {mechanism} {initial}")))
        assert error == {"status": "invalid_token", "scope": "smtp", "schemes": "bearer"}
        reply = await client.cmd(dummy)
        assert reply == Reply(535, ("5.7.8 Authentication credentials invalid",))
        # A wrong dummy response is a protocol error.
        assert (await client.cmd(f"AUTH {mechanism} {initial}")).code == 334
        wrong = b64("\x01") if mechanism == "XOAUTH2" else ""
        assert await client.cmd(wrong) == Reply(
            501, ("5.5.2 Expected the dummy response to the error challenge",)
        )
        assert (await client.cmd(f"AUTH {mechanism} {initial}")).code == 334
        assert (await client.cmd("*")).code == 501
    assert server.messages == []


@pytest.mark.parametrize(
    ("mechanism", "message"),
    [
        ("XOAUTH2", f"user=alice\x01auth=Bearer {TOKEN}\x01"),
        ("XOAUTH2", f"auth=Bearer {TOKEN}\x01user=alice\x01\x01"),
        ("XOAUTH2", f"user=alice\x01auth=Basic {TOKEN}\x01\x01"),
        ("XOAUTH2", "user=alice\x01auth=Bearer \x01\x01"),
        ("XOAUTH2", b"user=\xff\x01auth=Bearer x\x01\x01"),
        ("OAUTHBEARER", f"p=tls-unique,a=alice,\x01auth=Bearer {TOKEN}\x01\x01"),
        ("OAUTHBEARER", f"n,alice,\x01auth=Bearer {TOKEN}\x01\x01"),
        ("OAUTHBEARER", f"n,a=al=ice,\x01auth=Bearer {TOKEN}\x01\x01"),
        ("OAUTHBEARER", f"n,a=alice,auth=Bearer {TOKEN}\x01\x01"),
        ("OAUTHBEARER", f"n,a=alice,\x01auth=Bearer {TOKEN}\x01"),
        ("OAUTHBEARER", "n,a=alice,\x01host=x\x01\x01"),
        ("OAUTHBEARER", f"n,a=alice,\x01auth=Bearer {TOKEN}\x01auth=Bearer x\x01\x01"),
        ("OAUTHBEARER", f"n,a=alice,\x01no-equals\x01auth=Bearer {TOKEN}\x01\x01"),
        ("OAUTHBEARER", "n,a=alice,\x01\x01"),
        ("OAUTHBEARER", "n,a=alice"),
        ("OAUTHBEARER", b"n,a=\xff,\x01\x01"),
    ],
)
async def test_auth_oauth_malformed(mechanism: str, message: str | bytes) -> None:
    server = sasl_server("XOAUTH2", "OAUTHBEARER")
    async with connected(server) as client:
        await client.ehlo()
        reply = await client.cmd(f"AUTH {mechanism} {b64(message)}")
        assert reply == Reply(535, ("5.7.8 Authentication credentials invalid",))


# SCRAM-SHA-256, computed here from RFC 5802 §3 independently of the client library.


def scram_client_final(
    password: str, client_first_bare: str, server_first: str, gs2: str = "n,,"
) -> tuple[str, bytes]:
    """-> (client-final message, the expected server signature)."""
    fields = dict(item.split("=", 1) for item in server_first.split(","))
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(fields["s"]), int(fields["i"])
    )
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    without_proof = f"c={b64(gs2)},r={fields['r']}"
    message = f"{client_first_bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return f"{without_proof},p={b64(proof)}", hmac.digest(server_key, message, "sha256")


async def scram_exchange(
    client: RawClient,
    password: str = PASSWORD,
    user: str = "alice",
    gs2: str = "n,,",
    initial: bool = True,
) -> tuple[Reply, bytes]:
    bare = f"n={user},r=cl1ent-N0nce"
    if initial:
        reply = await client.cmd(f"AUTH SCRAM-SHA-256 {b64(gs2 + bare)}")
    else:
        assert await client.cmd("AUTH SCRAM-SHA-256") == Reply(334, ("",))
        reply = await client.cmd(b64(gs2 + bare))
    server_first = unb64(reply).decode()
    assert re.fullmatch(r"r=cl1ent-N0nce[!-+\--~]+,s=[A-Za-z0-9+/]+=*,i=\d+", server_first)
    final, signature = scram_client_final(password, bare, server_first, gs2)
    return await client.cmd(b64(final)), signature


@pytest.mark.parametrize("initial", [True, False])
async def test_auth_scram_sha_256(initial: bool) -> None:
    server = sasl_server("SCRAM-SHA-256")
    async with connected(server) as client:
        await client.ehlo()
        reply, signature = await scram_exchange(client, initial=initial)
        assert unb64(reply) == b"v=" + base64.b64encode(signature)
        assert await client.cmd("") == Reply(235, ("2.7.0 Authentication successful",))
        assert (await client.send_message("a@b.test", ["c@d.test"], b".\r\n")).code == 250
    assert server.messages[0].authenticated_as == "alice"
    # The server signature is a proof derived from the password: redacted.
    assert ("S", b"334 <redacted>") in server.transcript
    assert not any(base64.b64encode(signature) in line for _, line in server.transcript)
    assert_no_secret(server)


async def test_auth_scram_salt_and_iterations() -> None:
    server = sasl_server("SCRAM-SHA-256", scram_iterations=5000)
    async with connected(server) as client:
        await client.ehlo()
        salts = []
        for _ in range(2):
            first = unb64(await client.cmd(f"AUTH SCRAM-SHA-256 {b64('n,,n=alice,r=abc')}"))
            fields = dict(item.split(b"=", 1) for item in first.split(b","))
            assert fields[b"i"] == b"5000"
            assert len(base64.b64decode(fields[b"s"])) == 16
            salts.append(fields[b"s"])
            assert (await client.cmd("*")).code == 501
        assert salts[0] != salts[1]
    with pytest.raises(ValueError, match="scram_iterations"):
        FakeSMTPServer(scram_iterations=0)


async def test_auth_scram_bad_server_signature_option() -> None:
    server = sasl_server("SCRAM-SHA-256", scram_bad_server_signature=True)
    async with connected(server) as client:
        await client.ehlo()
        reply, signature = await scram_exchange(client)
        received = unb64(reply)
        assert received.startswith(b"v=") and received != b"v=" + base64.b64encode(signature)
        assert (await client.cmd("")).code == 235  # the server claims success all the same


@pytest.mark.parametrize(
    ("password", "user", "gs2"),
    [
        ("wrong password", "alice", "n,,"),
        (PASSWORD, "bob", "n,,"),  # unknown user: same steps, then 535
        (PASSWORD, "alice", "n,a=bob,"),
        (PASSWORD, "alice", "y,,"),  # the c= attribute will not match what was sent
    ],
)
async def test_auth_scram_failures(password: str, user: str, gs2: str) -> None:
    server = sasl_server("SCRAM-SHA-256")
    async with connected(server) as client:
        await client.ehlo()
        bare = f"n={user},r=nonce"
        reply = await client.cmd(f"AUTH SCRAM-SHA-256 {b64(gs2 + bare)}")
        if gs2 == "n,a=bob,":
            assert reply.code == 535
            return
        final, _ = scram_client_final(password, bare, unb64(reply).decode())
        reply = await client.cmd(b64(final))
        assert reply == Reply(535, ("5.7.8 Authentication credentials invalid",))


async def test_auth_scram_authzid_and_escaped_names() -> None:
    server = FakeSMTPServer(
        users={"a,b=c": PASSWORD}, auth_requires_tls=False, auth_mechanisms=["SCRAM-SHA-256"]
    )
    async with connected(server) as client:
        await client.ehlo()
        gs2 = "n,a=a=2Cb=3Dc,"
        reply, _ = await scram_exchange(client, user="a=2Cb=3Dc", gs2=gs2)
        assert unb64(reply).startswith(b"v=")
        assert (await client.cmd("")).code == 235
        assert (await client.send_message("a@b.test", ["c@d.test"], b".\r\n")).code == 250
    assert server.messages[0].authenticated_as == "a,b=c"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda final: final.replace("r=", "r=x", 1),  # a different nonce
        lambda final: final.replace("c=biws", "c=eSws"),  # a different GS2 header
        lambda final: final.replace("c=biws", "c=!!!!"),
        lambda final: final.rpartition(",p=")[0],  # no proof
        lambda final: final[:-4] + "AAA=",  # a short/other proof
        lambda final: final.rpartition(",p=")[0] + ",p=" + b64(bytes(32)),
        lambda final: "c=biws",
    ],
)
async def test_auth_scram_bad_client_final(tamper: Any) -> None:
    server = sasl_server("SCRAM-SHA-256")
    async with connected(server) as client:
        await client.ehlo()
        bare = "n=alice,r=nonce"
        first = unb64(await client.cmd(f"AUTH SCRAM-SHA-256 {b64('n,,' + bare)}")).decode()
        final, _ = scram_client_final(PASSWORD, bare, first)
        reply = await client.cmd(b64(tamper(final)))
        assert reply == Reply(535, ("5.7.8 Authentication credentials invalid",))


@pytest.mark.parametrize(
    "first",
    [
        "p=tls-unique,,n=alice,r=abc",
        "n,,m=ext,n=alice,r=abc",
        "n,,n=alice",
        "n,,n=al=ice,r=abc",
        "n,,n=alice,r=a\x7fb",
        "n,,r=abc,n=alice",
        "n,alice,n=alice,r=abc",
        "n",
        b"n,,n=\xff,r=abc",
    ],
)
async def test_auth_scram_bad_client_first(first: str | bytes) -> None:
    async with connected(sasl_server("SCRAM-SHA-256")) as client:
        await client.ehlo()
        reply = await client.cmd(f"AUTH SCRAM-SHA-256 {b64(first)}")
        assert reply == Reply(535, ("5.7.8 Authentication credentials invalid",))


async def test_auth_scram_response_to_the_server_final_message_must_be_empty() -> None:
    async with connected(sasl_server("SCRAM-SHA-256")) as client:
        await client.ehlo()
        reply, _ = await scram_exchange(client)
        assert reply.code == 334
        assert (await client.cmd(b64("v=junk"))).code == 535
        assert (await client.cmd("NOOP")).code == 250


# --- MAIL, RCPT, DATA ---------------------------------------------------------------------------


async def test_simple_transaction_records_everything() -> None:
    server = FakeSMTPServer()
    async with connected(server) as client:
        await client.ehlo()
        assert (await client.cmd("MAIL FROM:<a@b.test> BODY=8BITMIME SIZE=20")) == Reply(
            250, ("2.1.0 Ok",)
        )
        assert await client.cmd("RCPT TO:<c@d.test>") == Reply(250, ("2.1.5 Ok",))
        assert (await client.cmd("RCPT TO:<Postmaster>")).code == 250
        assert await client.cmd("DATA") == Reply(354, ("End data with <CR><LF>.<CR><LF>",))
        await client.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n")
        reply = await client.reply()
        assert reply.code == 250
        assert reply.text.startswith("2.0.0 Ok: queued as ")
    assert server.messages == [
        ReceivedMessage(
            sender="a@b.test",
            recipients=("c@d.test", "Postmaster"),
            mail_options=("BODY=8BITMIME", "SIZE=20"),
            rcpt_options={"c@d.test": (), "Postmaster": ()},
            data=b"Subject: hi\r\n\r\nbody\r\n",
            raw=b"Subject: hi\r\n\r\nbody\r\n.\r\n",
            tls=False,
            authenticated_as=None,
            helo="client.example.test",
        )
    ]
    assert server.bare_line_endings == server.undeclared_8bit == 0
    assert server.pipelining_violations == 0


async def test_refusals() -> None:
    server = FakeSMTPServer(
        refuse_senders={"Spammer@Evil.test": (550, "5.7.1 go away")},
        refuse_recipients={
            "nobody@d.test": (550, "5.1.1 no such user"),
            "later@d.test": (450, "4.2.1 try\nlater"),
        },
    )
    async with connected(server) as client:
        await client.ehlo()
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 503
        assert (await client.cmd("DATA")).code == 503
        assert await client.cmd("MAIL FROM:<spammer@evil.TEST>") == Reply(550, ("5.7.1 go away",))
        assert (await client.cmd("MAIL FROM:<>")).code == 250
        assert (await client.cmd("MAIL FROM:<a@b.test>")) == Reply(
            503, ("5.5.1 Nested MAIL command",)
        )
        assert (await client.cmd("RCPT TO:<nobody@d.test>")).code == 550
        assert await client.cmd("RCPT TO:<later@d.test>") == Reply(450, ("4.2.1 try", "later"))
        assert await client.cmd("DATA") == Reply(554, ("5.5.1 No valid recipients",))
        assert (await client.cmd("RCPT TO:<c@d.test> NOTIFY=NEVER")).code == 555
        assert (await client.cmd("RCPT TO:<>")).code == 501
        assert (await client.cmd("RCPT TO: <c@d.test>")).code == 501
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 250
        assert (await client.cmd("DATA now")).code == 501
        assert (await client.cmd("DATA")).code == 354
        await client.send(b"x\r\n.\r\n")
        assert (await client.reply()).code == 250
    [message] = server.messages
    assert message.sender == ""
    assert message.recipients == ("c@d.test",)


@pytest.mark.parametrize(
    "command",
    [
        "MAIL FROM: <a@b.test>",
        "MAIL FROM:a@b.test",
        "MAIL FROM:<a@b.test",
        "MAIL TO:<a@b.test>",
        "MAIL FROM:<a@b.test>  SIZE=1",
        "MAIL FROM:<a@b.test>SIZE=1",
        "MAIL FROM:<a b@c.test>",
        "MAIL FROM:<a@>",
        "MAIL FROM:<@b.test>",
        "MAIL FROM:<a..b@c.test>",
        "MAIL FROM:<a@b.test> SIZE=x",
        "MAIL FROM:<a@b.test> SIZE=1 SIZE=2",
        "MAIL FROM:<a@b.test> BODY=9BIT",
        "MAIL FROM:<a@b.test> SMTPUTF8=yes",
        'MAIL FROM:<"a"b"@c.test>',
        'MAIL FROM:<"abc@c.test>',
        'MAIL FROM:<"a\\"@c.test>',
        "MAIL FROM:<a@-b.test>",
        "MAIL FROM:<a@[]>",
        "MAIL FROM:<@x.test,b.test:a@c.test>",
    ],
)
async def test_mail_syntax_errors(command: str) -> None:
    server = FakeSMTPServer()
    async with connected(server) as client:
        await client.ehlo()
        assert (await client.cmd(command)).code == 501
        assert (await client.cmd("MAIL FROM:<a@b.test>")).code == 250


async def test_unusual_but_valid_addresses() -> None:
    server = FakeSMTPServer()
    async with connected(server) as client:
        await client.ehlo()
        assert (await client.cmd('MAIL FROM:<"john >doe\\"x"@b.test>')).code == 250
        assert (await client.cmd("RCPT TO:<@relay.test:c@[192.0.2.1]>")).code == 250
        assert (await client.cmd("RCPT TO:<x+tag@d.test> ORCPT=rfc822;x@d.test")).code == 555
        assert (await client.cmd("DATA")).code == 354
        await client.send(b".\r\n")
        assert (await client.reply()).code == 250
    [message] = server.messages
    assert message.sender == '"john >doe\\"x"@b.test'
    assert message.recipients == ("@relay.test:c@[192.0.2.1]",)
    assert message.data == b""


async def test_rcpt_options_are_recorded_with_dsn() -> None:
    server = FakeSMTPServer(extensions=["DSN", "8BITMIME"])
    async with connected(server) as client:
        await client.ehlo()
        assert (await client.cmd("MAIL FROM:<a@b.test> RET=HDRS ENVID=x1")).code == 250
        assert (await client.cmd("RCPT TO:<c@d.test> NOTIFY=NEVER")).code == 250
        assert (await client.send_message_body(b"hi\r\n.\r\n")).code == 250
    [message] = server.messages
    assert message.mail_options == ("RET=HDRS", "ENVID=x1")
    assert message.rcpt_options == {"c@d.test": ("NOTIFY=NEVER",)}


async def test_data_reply_override() -> None:
    server = FakeSMTPServer(data_reply=(451, "4.3.0 try later"))
    async with connected(server) as client:
        await client.ehlo()
        reply = await client.send_message("a@b.test", ["c@d.test"], b"x\r\n.\r\n")
        assert reply == Reply(451, ("4.3.0 try later",))
        # The transaction is over whatever the reply.
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 503
        server.data_reply = (250, "custom ok")
        reply = await client.send_message("a@b.test", ["c@d.test"], b"y\r\n.\r\n")
        assert reply == Reply(250, ("custom ok",))
    assert [m.data for m in server.messages] == [b"y\r\n"]


async def test_size_limits() -> None:
    server = FakeSMTPServer(extensions=["ENHANCEDSTATUSCODES", "SIZE 100", "PIPELINING"])
    async with connected(server) as client:
        await client.ehlo()
        assert await client.cmd("MAIL FROM:<a@b.test> SIZE=101") == Reply(
            552, ("5.3.4 Message size exceeds fixed maximum message size",)
        )
        assert (await client.cmd("MAIL FROM:<a@b.test> SIZE=100")).code == 250
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 250
        assert (await client.cmd("DATA")).code == 354
        await client.send(b"x" * 99 + b"\r\n" + b"y" * 99 + b"\r\n.\r\n")
        assert (await client.reply()).code == 552
        # Exactly at the limit, dot-stuffing not counted.
        body = b"..".ljust(99, b"z") + b"\r\n.\r\n"
        assert (await client.send_message("a@b.test", ["c@d.test"], body)).code == 250
    assert len(server.messages) == 1
    assert len(server.messages[0].data) == 100


async def test_smtputf8() -> None:
    server = FakeSMTPServer()
    async with connected(server) as client:
        await client.ehlo()
        assert await client.cmd("MAIL FROM:<jörg@b.test>") == Reply(
            553, ("5.6.7 Non-ASCII address requires SMTPUTF8",)
        )
        assert (await client.cmd("MAIL FROM:<jörg@bücher.test> SMTPUTF8")).code == 250
        assert (await client.cmd("RCPT TO:<用户@例子.test>")).code == 250
        assert (await client.cmd(b"RCPT TO:<\xff@b.test>")).code == 500
        assert (await client.cmd("DATA")).code == 354
        await client.send("Subject: grüße\r\n.\r\n".encode())
        assert (await client.reply()).code == 250
    assert server.messages[0].sender == "jörg@bücher.test"
    assert server.messages[0].recipients == ("用户@例子.test",)
    assert server.undeclared_8bit == 1

    no_utf8 = FakeSMTPServer(extensions=["8BITMIME"])
    async with connected(no_utf8) as client:
        await client.ehlo()
        assert (await client.cmd("MAIL FROM:<jörg@b.test> SMTPUTF8")).code == 555
        assert (await client.cmd("MAIL FROM:<a@b.test>")).code == 250
        assert (await client.cmd("RCPT TO:<jörg@b.test>")).code == 553
        assert (await client.cmd("EHLO bücher.test")).code == 500


async def test_undeclared_8bit_counted_declared_not() -> None:
    server = FakeSMTPServer()
    async with connected(server) as client:
        await client.ehlo()
        assert (await client.send_message("a@b.test", ["c@d.test"], b"\xe9\r\n.\r\n")).code == 250
        assert (await client.cmd("MAIL FROM:<a@b.test> BODY=8BITMIME")).code == 250
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 250
        assert (await client.send_message_body(b"\xe9\r\n.\r\n")).code == 250
    assert server.undeclared_8bit == 1
    assert [m.data for m in server.messages] == [b"\xe9\r\n", b"\xe9\r\n"]


# --- DATA transparency and line endings ---------------------------------------------------------


async def test_dot_unstuffing() -> None:
    server = FakeSMTPServer()
    raw = b"..hidden\r\n.\r\n"
    async with connected(server) as client:
        await client.ehlo()
        assert (await client.send_message("a@b.test", ["c@d.test"], raw)).code == 250
        body = b"a\r\n..\r\n...x\r\nb.\r\n.c\r\n.\r\n"
        assert (await client.send_message("a@b.test", ["c@d.test"], body)).code == 250
    first, second = server.messages
    assert first.raw == b"..hidden\r\n.\r\n"
    assert first.data == b".hidden\r\n"
    assert second.raw == body
    assert second.data == b"a\r\n.\r\n..x\r\nb.\r\nc\r\n"


async def test_bare_line_endings_are_counted_and_never_terminate() -> None:
    server = FakeSMTPServer()
    smuggled = b"a\n.\nMAIL FROM:<x@y.test>\r\nb\r.\r\nc\n.\r\n..\n\r\n.\r\n"
    async with connected(server) as client:
        await client.ehlo()
        reply = await client.send_message("a@b.test", ["c@d.test"], smuggled)
        assert reply.code == 250
    [message] = server.messages
    assert message.raw == smuggled
    assert message.data == smuggled[:-3].replace(b"\r\n..\n", b"\r\n.\n")
    # a\n .\n  b\r  c\n  ..\n  -> 2 + 1 + 1 + 1 bare endings
    assert server.bare_line_endings == 5
    assert server.pipelining_violations == 0


async def test_command_line_errors() -> None:
    server = FakeSMTPServer(max_line_length=40)
    async with connected(server) as client:
        await client.ehlo()
        await client.send(b"NOOP\n")
        assert await client.reply() == Reply(500, ("5.5.2 Bare CR or LF in command line",))
        await client.send(b"NO\rOP\r\n")
        assert (await client.reply()).code == 500
        assert await client.cmd("NOOP " + "x" * 40) == Reply(500, ("5.5.2 Line too long",))
        # A long line that arrives over several reads is skipped as a whole.
        await client.send(b"NOOP " + b"y" * 100)
        await trio.testing.wait_all_tasks_blocked()
        await client.send(b"y" * 100 + b"\r\n")
        assert (await client.reply()).code == 500
        assert (await client.cmd("NOOP " + "x" * 33)).code == 250  # 40 octets with CRLF
        assert (await client.cmd(b"\xc3\x28")).code == 500
        assert (await client.cmd("NO\tOP")).code == 500
        assert (await client.cmd("")).code == 500
        assert await client.cmd("FROB") == Reply(500, ("5.5.2 Command not recognized",))
        assert (await client.cmd("BDAT 3 LAST")).code == 500  # CHUNKING not offered
        assert (await client.cmd("NOOP")).code == 250
    assert ("C", b"NOOP\n") in server.transcript
    assert ("C", b"<line too long>") in server.transcript


async def test_rset_noop_vrfy_help_expn_quit() -> None:
    server = FakeSMTPServer()
    async with connected(server) as client:
        await client.ehlo()
        assert (await client.cmd("MAIL FROM:<a@b.test>")).code == 250
        assert await client.cmd("RSET") == Reply(250, ("2.0.0 Ok",))
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 503
        assert (await client.cmd("MAIL FROM:<a@b.test>")).code == 250
        assert (await client.ehlo()).code == 250  # EHLO resets the transaction too
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 503
        assert (await client.cmd("RSET x")).code == 501
        assert (await client.cmd("noop hello")) == Reply(250, ("2.0.0 Ok",))
        assert (await client.cmd("VRFY bob")).code == 252
        assert (await client.cmd("VRFY")).code == 501
        assert (await client.cmd("EXPN list")).code == 502
        assert (await client.cmd("HELP")).code == 214
        assert (await client.cmd("QUIT now")).code == 501
        assert (await client.cmd("quit")) == Reply(221, ("2.0.0 Bye",))
        await client.expect_eof()
    assert server.messages == []


async def test_no_enhanced_status_codes_unless_advertised() -> None:
    server = FakeSMTPServer(extensions=["PIPELINING"])
    async with connected(server) as client:
        await client.ehlo()
        assert await client.cmd("MAIL FROM:<a@b.test>") == Reply(250, ("Ok",))
        assert await client.cmd("RCPT TO:<c@d.test>") == Reply(250, ("Ok",))
        assert (await client.cmd("DATA")).code == 354
        await client.send(b".\r\n")
        assert (await client.reply()).text.startswith("Ok: queued as ")
        assert await client.cmd("QUIT") == Reply(221, ("Bye",))


# --- PIPELINING and odd segmentation ------------------------------------------------------------


async def test_pipelined_commands_in_one_write() -> None:
    server = FakeSMTPServer()
    async with connected(server) as client:
        await client.ehlo()
        await client.send(
            b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nRCPT TO:<e@f.test>\r\nDATA\r\n"
        )
        assert [(await client.reply()).code for _ in range(4)] == [250, 250, 250, 354]
        # Message content may be followed by the next group.
        await client.send(b"one\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<g@h.test>\r\nDATA\r\n")
        assert [(await client.reply()).code for _ in range(4)] == [250, 250, 250, 354]
        await client.send(b"two\r\n.\r\nQUIT\r\n")
        assert [(await client.reply()).code for _ in range(2)] == [250, 221]
        await client.expect_eof()
    assert [m.recipients for m in server.messages] == [("c@d.test", "e@f.test"), ("g@h.test",)]
    assert server.pipelining_violations == 0


@pytest.mark.parametrize(
    ("extensions", "group", "violations"),
    [
        (["PIPELINING"], b"DATA\r\nhello\r\n.\r\n", 1),  # data before the 354
        (["PIPELINING"], b"NOOP\r\nNOOP\r\n", 1),
        (["PIPELINING"], b"RSET\r\nRSET\r\n", 0),
        ([], b"RSET\r\nRSET\r\n", 1),
        (["PIPELINING"], b"EHLO a\r\nRSET\r\n", 1),
    ],
)
async def test_pipelining_violations(extensions: list[str], group: bytes, violations: int) -> None:
    server = FakeSMTPServer(extensions=extensions)
    async with connected(server) as client:
        await client.ehlo()
        await client.send(group)
        await client.cmd("NOOP")
    assert server.pipelining_violations == violations


async def test_auth_plain_pipelined_with_mail_is_allowed_but_login_is_not(
    auth_server: FakeSMTPServer,
) -> None:
    async with connected(auth_server) as client:
        await client.ehlo()
        await client.send(f"AUTH PLAIN {PLAIN_OK}\r\nMAIL FROM:<a@b.test>\r\n".encode())
        assert [(await client.reply()).code for _ in range(2)] == [235, 250]
    assert auth_server.pipelining_violations == 0
    async with connected(auth_server) as client:
        await client.ehlo()
        await client.send(f"AUTH LOGIN\r\n{b64('alice')}\r\n".encode())
        assert (await client.reply()).code == 334
        assert (await client.reply()).code == 334
    assert auth_server.pipelining_violations == 1


async def test_one_byte_at_a_time() -> None:
    server = FakeSMTPServer()
    session = (
        b"EHLO slow.example.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"
        b"..dot\r\nline\r\n.\r\nQUIT\r\n"
    )
    async with connected(server) as client:
        for index in range(len(session)):
            await client.send(session[index : index + 1])
            await trio.testing.wait_all_tasks_blocked()
        codes = [(await client.reply()).code for _ in range(6)]
        assert codes == [250, 250, 250, 354, 250, 221]
        await client.expect_eof()
    [message] = server.messages
    assert message.data == b".dot\r\nline\r\n"
    assert message.helo == "slow.example.test"
    assert server.bare_line_endings == 0


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(
        st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
    ),
    cuts=st.lists(st.integers(min_value=1, max_value=50), max_size=20),
)
async def test_dot_stuffed_bodies_round_trip_whatever_the_segmentation(
    lines: list[bytes], cuts: list[int]
) -> None:
    server = FakeSMTPServer()
    message = b"".join(line + b"\r\n" for line in lines)
    stuffed = b"".join((b"." if line.startswith(b".") else b"") + line + b"\r\n" for line in lines)
    wire = stuffed + b".\r\nQUIT\r\n"
    async with connected(server) as client:
        await client.ehlo()
        assert (await client.cmd("MAIL FROM:<a@b.test> BODY=8BITMIME")).code == 250
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 250
        assert (await client.cmd("DATA")).code == 354
        position = 0
        for cut in [*cuts, len(wire)]:
            await client.send(wire[position : position + cut])
            position += cut
        assert (await client.reply()).code == 250
        assert (await client.reply()).code == 221
    [received] = server.messages
    assert received.data == message
    assert received.raw == stuffed + b".\r\n"
    assert server.bare_line_endings == server.undeclared_8bit == 0


async def test_long_data_lines_are_kept_whole() -> None:
    server = FakeSMTPServer()
    body = b"." + b"x" * 200_000 + b"\r\n" + b"y" * 70_000 + b"\r" + b"\n.\r\n"
    async with connected(server) as client:
        await client.ehlo()
        reply = await client.send_message("a@b.test", ["c@d.test"], body)
        assert reply.code == 250
    assert server.messages[0].data == body[1:-3]
    assert server.bare_line_endings == 0


# --- CHUNKING -----------------------------------------------------------------------------------


async def test_bdat() -> None:
    server = FakeSMTPServer(extensions=[*DEFAULT_EXTENSIONS, "CHUNKING", "BINARYMIME"])
    async with connected(server) as client:
        await client.ehlo()
        await client.send(b"BDAT 3\r\nabc")  # no transaction: refused, chunk still consumed
        assert (await client.reply()).code == 503
        assert (await client.cmd("NOOP")).code == 250
        assert (await client.cmd("MAIL FROM:<a@b.test> BODY=BINARYMIME")).code == 250
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 250
        await client.send(b"BDAT 5\r\nab\r\nc")
        assert await client.reply() == Reply(250, ("2.0.0 5 octets received",))
        await client.send(b"BDAT 5 LAST\r\n\n.\n\r\n")
        assert (await client.reply()).text.startswith("2.0.0 Ok: queued as")
        assert (await client.cmd("BDAT x")).code == 501
    [message] = server.messages
    assert message.data == message.raw == b"ab\r\nc\n.\n\r\n"
    assert server.bare_line_endings == 0  # BINARYMIME: bare LFs are fine
    assert server.transcript.count(("C", b"BDAT 5")) == 1


async def test_bdat_size_limit_bare_line_endings_and_mixing() -> None:
    server = FakeSMTPServer(extensions=["PIPELINING", "CHUNKING", "SIZE 10"])
    async with connected(server) as client:
        await client.ehlo()
        assert (await client.cmd("MAIL FROM:<a@b.test> BODY=BINARYMIME")).code == 555
        assert (await client.cmd("MAIL FROM:<a@b.test>")).code == 250
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 250
        await client.send(b"BDAT 6\r\na\nbcdeBDAT 6 LAST\r\nfghijk")
        assert (await client.reply()).code == 250
        assert await client.reply() == Reply(
            552, ("Message size exceeds fixed maximum message size",)
        )
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 503  # transaction aborted
        assert (await client.cmd("MAIL FROM:<a@b.test>")).code == 250
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 250
        assert (await client.cmd("BDAT 1 FOO")).code == 501
        await client.send(b"BDAT 3\r\na\nb")
        assert (await client.reply()).code == 250
        assert await client.cmd("DATA") == Reply(503, ("DATA after BDAT",))
        await client.send(b"BDAT 0 LAST\r\n")
        assert (await client.reply()).code == 250
    [message] = server.messages
    assert message.data == b"a\nb"
    assert server.bare_line_endings == 2  # one in the refused message, one in the accepted one
    assert server.pipelining_violations == 0


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
