"""The session driver against the fake server: the behaviour issue #2 lists."""

from __future__ import annotations

import email.message
import logging
from collections.abc import AsyncIterator
from email.headerregistry import Address

import pytest
import trio
import trio.testing

import trio_sendmail as ts
from trio_sendmail.testing import FakeSMTPServer, TestCertificates

from . import defaults
from .helpers import (
    CLIENT_NAME,
    HOST,
    PASSWORD,
    USERS,
    RawServer,
    ServerFactory,
    ServerVariant,
    fake_session,
    raw_server,
    serving,
)

PLAIN_EXT = ("PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "SIZE 1000000")


AUTH = ts.Authentication("alice", PASSWORD)


@pytest.mark.parametrize("tls", [ts.TLSMode.IMPLICIT, ts.TLSMode.STARTTLS])
@pytest.mark.parametrize("mechanism", [None, "PLAIN", "LOGIN"])
async def test_send_over_tls_with_auth(
    make_server: ServerFactory, certs: TestCertificates, tls: ts.TLSMode, mechanism: str | None
) -> None:
    server = make_server()
    auth = ts.Authentication("alice", PASSWORD, mechanism=mechanism)
    async with fake_session(server, certs, tls=tls, authentication=auth) as session:
        assert session.tls and session.authenticated
        result = await session.send("a@example.com", ["b@example.com"], b"Hi\n")
    assert result.reply.code == 250
    assert result.accepted == (ts.ForwardPath.parse("b@example.com"),)
    assert result.refused == {}
    (msg,) = server.messages
    assert (msg.sender, msg.recipients, msg.data) == (
        "a@example.com",
        ("b@example.com",),
        b"Hi\r\n",
    )
    assert msg.tls and msg.authenticated_as == "alice"
    assert msg.helo == CLIENT_NAME
    assert server.bare_line_endings == 0 and server.injected_plaintext == []


async def test_starttls_forgets_capabilities_and_says_ehlo_again(
    make_server: ServerFactory, certs: TestCertificates
) -> None:
    server = make_server()
    async with fake_session(server, certs, authentication=AUTH) as session:
        assert not session.capabilities.starttls  # the post-TLS EHLO does not offer it
        assert "PLAIN" in session.capabilities.auth_mechanisms  # only offered over TLS
    commands = [line for who, line in server.transcript if who == "C"]
    assert commands[:3] == [b"EHLO client.example.test", b"STARTTLS", b"EHLO client.example.test"]


async def test_starttls_not_offered_is_an_error_without_fallback(
    make_server: ServerFactory, certs: TestCertificates
) -> None:
    server = make_server(starttls=False)
    async with serving(server) as stream:
        with pytest.raises(ts.SMTPNotSupportedError, match="STARTTLS"):
            async with defaults.open_session(
                HOST,
                tls=ts.TLSMode.STARTTLS,
                stream=stream,
                ssl_context=certs.client_context,
                authentication=AUTH,
            ):
                pass  # pragma: no cover
    commands = [line for who, line in server.transcript if who == "C"]
    assert not any(c.startswith((b"AUTH", b"MAIL")) for c in commands)


async def test_auth_over_plaintext_refused_before_any_credential(certs: TestCertificates) -> None:
    server = FakeSMTPServer(users=USERS, auth_requires_tls=False)
    async with serving(server) as stream:
        with pytest.raises(ts.SMTPNotSupportedError, match="without TLS"):
            async with defaults.open_session(
                HOST,
                tls=ts.TLSMode.INSECURE_PLAINTEXT,
                stream=stream,
                authentication=AUTH,
            ):
                pass  # pragma: no cover
    assert not any(line.startswith(b"AUTH") for _, line in server.transcript)


async def test_auth_over_plaintext_when_the_caller_opts_in(certs: TestCertificates) -> None:
    server = FakeSMTPServer(users=USERS, auth_requires_tls=False)
    async with (
        serving(server) as stream,
        defaults.open_session(
            HOST,
            tls=ts.TLSMode.INSECURE_PLAINTEXT,
            stream=stream,
            authentication=AUTH,
            insecure_auth_over_plaintext=True,
        ) as session,
    ):
        assert session.authenticated and not session.tls
        await session.send("a@example.com", ["b@example.com"], b"x")
    assert server.messages[0].authenticated_as == "alice"


async def test_local_relay_in_plaintext_without_auth() -> None:
    server = FakeSMTPServer()
    async with (
        serving(server) as stream,
        defaults.open_session(HOST, tls=ts.TLSMode.INSECURE_PLAINTEXT, stream=stream) as session,
    ):
        for i in range(3):
            await session.send("a@example.com", ["b@example.com"], b"msg %d" % i)
        assert session.statistics().messages_sent == 3
    assert [m.data for m in server.messages] == [b"msg 0\r\n", b"msg 1\r\n", b"msg 2\r\n"]
    assert not server.messages[0].tls


@pytest.mark.parametrize("code", [535, 534, 538, 454])
async def test_auth_failures(
    make_server: ServerFactory, certs: TestCertificates, code: int
) -> None:
    server = make_server()
    wrong = ts.Authentication("alice", "wrong-password")
    if code == 535:
        async with serving(server) as stream:
            with pytest.raises(ts.SMTPAuthenticationError) as info:
                async with defaults.open_session(
                    HOST,
                    tls=ts.TLSMode.STARTTLS,
                    stream=stream,
                    ssl_context=certs.client_context,
                    authentication=wrong,
                ):
                    pass  # pragma: no cover
        assert info.value.code == 535
        assert isinstance(info.value, ts.SMTPPermanentError)
        assert "wrong-password" not in str(info.value)
        return
    # Other codes come from a scripted server.

    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(b"250-srv\r\n250 AUTH PLAIN\r\n")
        await srv.expect(
            b"AUTH PLAIN ",
            b"%d 5.7.0 nope\r\n" % code if code >= 500 else b"%d 4.7.0 try later\r\n" % code,
        )
        await srv.expect(b"QUIT", b"221 bye\r\n")

    async with raw_server(script) as (stream, _):
        with pytest.raises(ts.SMTPAuthenticationError) as info:
            async with defaults.open_session(
                HOST,
                tls=ts.TLSMode.INSECURE_PLAINTEXT,
                stream=stream,
                authentication=AUTH,
                insecure_auth_over_plaintext=True,
            ):
                pass  # pragma: no cover
    assert info.value.code == code
    assert info.value.is_transient is (code < 500)
    assert isinstance(info.value, ts.SMTPTransientError if code < 500 else ts.SMTPPermanentError)


async def test_auth_mechanism_not_offered(
    make_server: ServerFactory, certs: TestCertificates
) -> None:
    server = make_server(auth_mechanisms=("LOGIN",))
    auth = ts.Authentication("alice", PASSWORD, mechanism="PLAIN")
    async with serving(server) as stream:
        with pytest.raises(ts.SMTPNotSupportedError, match="PLAIN"):
            async with defaults.open_session(
                HOST,
                tls=ts.TLSMode.STARTTLS,
                stream=stream,
                ssl_context=certs.client_context,
                authentication=auth,
            ):
                pass  # pragma: no cover


async def test_some_recipients_refused(
    make_server: ServerFactory, certs: TestCertificates
) -> None:
    server = make_server(refuse_recipients={"bad@example.com": (550, "5.1.1 no such user")})
    async with fake_session(server, certs, authentication=AUTH) as session:
        result = await session.send(
            "a@example.com", ["ok@example.com", "bad@example.com", "ok2@example.com"], b"x"
        )
    bad = ts.ForwardPath.parse("bad@example.com")
    assert set(result.refused) == {bad}
    assert result.refused[bad].code == 550
    assert result.refused[bad].enhanced_status == ts.EnhancedStatus(5, 1, 1)
    assert server.messages[0].recipients == ("ok@example.com", "ok2@example.com")


@pytest.mark.parametrize("pipelining", [True, False])
async def test_all_recipients_refused_resets_and_session_stays_usable(
    make_server: ServerFactory, certs: TestCertificates, pipelining: bool
) -> None:
    server = make_server(
        refuse_recipients={
            "bad@example.com": (550, "5.1.1 no such user"),
            "later@example.com": (450, "4.2.0 try later"),
        },
    )
    async with fake_session(server, certs, pipelining=pipelining) as session:
        with pytest.raises(ts.SMTPRecipientsRefused) as info:
            await session.send("a@example.com", ["bad@example.com", "later@example.com"], b"x")
        assert not info.value.is_transient
        assert isinstance(info.value, ts.SMTPPermanentError)
        assert info.value.outcome is ts.Outcome.NOT_SENT
        assert {str(p) for p in info.value.refused} == {"<bad@example.com>", "<later@example.com>"}
        with pytest.raises(ts.SMTPRecipientsRefused) as info2:
            await session.send("a@example.com", ["later@example.com"], b"x")
        assert info2.value.is_transient and isinstance(info2.value, ts.SMTPTransientError)
        assert session.is_usable
        await session.send("a@example.com", ["good@example.com"], b"y")
    assert [m.recipients for m in server.messages] == [("good@example.com",)]
    commands = [line for who, line in server.transcript if who == "C"]
    assert commands.count(b"RSET") == 2
    assert b"DATA" not in commands[: commands.index(b"RSET")] or pipelining


@pytest.mark.parametrize("pipelining", [True, False])
async def test_sender_refused_resets_and_session_stays_usable(
    make_server: ServerFactory, certs: TestCertificates, pipelining: bool
) -> None:
    server = make_server(refuse_senders={"spam@example.com": (553, "5.7.1 not you")})
    async with fake_session(server, certs, pipelining=pipelining) as session:
        with pytest.raises(ts.SMTPSenderRefused) as info:
            await session.send("spam@example.com", ["b@example.com"], b"x")
        assert info.value.code == 553 and info.value.command == "MAIL"
        assert info.value.enhanced_status == ts.EnhancedStatus(5, 7, 1)
        assert not info.value.is_transient
        await session.send("ok@example.com", ["b@example.com"], b"y")
    assert [m.sender for m in server.messages] == ["ok@example.com"]


async def test_message_refused_after_data(
    make_server: ServerFactory, certs: TestCertificates, server_variant: ServerVariant
) -> None:
    server = make_server(data_reply=(451, "4.3.0 queue full"))
    async with fake_session(server, certs) as session:
        with pytest.raises(ts.SMTPResponseError) as info:
            await session.send("a@example.com", ["b@example.com"], b"x")
        # The refused end of data: the final dot, or the one BDAT LAST.
        assert info.value.command == ("BDAT" if server_variant.chunking else ".")
        assert info.value.is_transient
        assert info.value.outcome is ts.Outcome.REFUSED
        assert session.is_usable
    assert server.messages == []


async def test_body_normalised_and_stuffed_from_a_memory_channel(
    make_server: ServerFactory, certs: TestCertificates, server_variant: ServerVariant
) -> None:
    server = make_server()
    send, receive = trio.open_memory_channel[bytes](1)
    pieces = [b".leading dot\n", b"bare\rcr", b"\r", b"\n.", b"\r\n", b"end.\r", b".x", b"\n.."]

    async def produce() -> None:
        async with send:
            for piece in pieces:
                await send.send(piece)

    async with fake_session(server, certs) as session, trio.open_nursery() as nursery:
        nursery.start_soon(produce)
        await session.send("a@example.com", ["b@example.com"], receive)
    msg = server.messages[0]
    assert msg.data == b".leading dot\r\nbare\r\ncr\r\n.\r\nend.\r\n.x\r\n..\r\n"
    if server_variant.chunking:  # BDAT chunks carry the data as it is (RFC 3030 §2)
        assert msg.raw == msg.data
    else:  # dot-stuffed, then the final dot (RFC 5321 §4.5.2)
        assert msg.raw == b"..leading dot\r\nbare\r\ncr\r\n..\r\nend.\r\n..x\r\n...\r\n.\r\n"
    assert server.bare_line_endings == 0


async def test_email_message_and_address_objects(
    make_server: ServerFactory, certs: TestCertificates
) -> None:
    server = make_server()
    message = email.message.EmailMessage()
    message["From"] = "Alice <alice@example.com>"
    message["To"] = "Bob <bob@example.com>"
    message["Subject"] = "Hello"
    message.set_content(".starts with a dot\nsecond line\n")
    async with fake_session(server, certs) as session:
        await session.send(
            Address("Alice", "alice", "example.com"),
            [Address("Bob", "bob", "example.com"), Address(username="john doe", domain="x.test")],
            message,
        )
    msg = server.messages[0]
    assert msg.recipients == ("bob@example.com", '"john doe"@x.test')
    assert b"\r\n.starts with a dot\r\n" in msg.data
    assert b"Subject: Hello\r\n" in msg.data


async def test_null_reverse_path_and_postmaster(
    make_server: ServerFactory, certs: TestCertificates
) -> None:
    server = make_server()
    async with fake_session(server, certs) as session:
        await session.send("<>", ["Postmaster"], b"bounce")
    assert server.messages[0].sender == ""
    assert server.messages[0].recipients == ("Postmaster",)


async def test_size_declared_and_too_big_refused_before_anything(
    make_server: ServerFactory, certs: TestCertificates
) -> None:
    server = make_server(extensions=PLAIN_EXT)
    async with fake_session(server, certs) as session:
        await session.send("a@example.com", ["b@example.com"], b"abc\n")
        with pytest.raises(ts.SMTPMessageTooLarge) as info:
            await session.send("a@example.com", ["b@example.com"], b"x" * 1_000_001)
        assert (info.value.size, info.value.limit) == (1_000_003, 1_000_000)
        assert session.is_usable
    assert server.messages[0].mail_options == ("SIZE=5",)
    mails = [line for who, line in server.transcript if who == "C" and line.startswith(b"MAIL")]
    assert len(mails) == 1


async def test_8bit_declared_when_offered(
    make_server: ServerFactory, certs: TestCertificates
) -> None:
    server = make_server()
    async with fake_session(server, certs) as session:
        await session.send("a@example.com", ["b@example.com"], "Grüße\n".encode())
    assert "BODY=8BITMIME" in server.messages[0].mail_options
    assert server.undeclared_8bit == 0


async def test_8bit_without_8bitmime_is_refused_before_sending(
    make_server: ServerFactory, certs: TestCertificates
) -> None:
    server = make_server(extensions=("PIPELINING",))
    async with fake_session(server, certs) as session:
        with pytest.raises(ts.SMTPNotSupportedError, match="8BITMIME"):
            await session.send("a@example.com", ["b@example.com"], b"caf\xc3\xa9\n")
        assert session.is_usable
    assert server.messages == []


async def test_8bit_stream_without_8bitmime_drops_the_connection(
    make_server: ServerFactory, certs: TestCertificates
) -> None:
    server = make_server(extensions=("PIPELINING",))

    async def chunks() -> AsyncIterator[bytes]:
        yield b"ascii first\r\n"
        yield b"caf\xc3\xa9\r\n"

    async with fake_session(server, certs) as session:
        with pytest.raises(ts.SMTPNotSupportedError, match="8BITMIME") as info:
            await session.send("a@example.com", ["b@example.com"], chunks())
        assert info.value.outcome is ts.Outcome.NOT_SENT
        assert not session.is_usable
    assert server.messages == []
    assert server.undeclared_8bit == 0


async def test_smtputf8_declared_only_when_needed(
    make_server: ServerFactory, certs: TestCertificates
) -> None:
    server = make_server()
    async with fake_session(server, certs) as session:
        await session.send("a@example.com", ["b@example.com"], b"x")
        await session.send("jöran@exämple.com", ["b@example.com"], b"x")
    assert "SMTPUTF8" not in server.messages[0].mail_options
    assert "SMTPUTF8" in server.messages[1].mail_options
    assert server.messages[1].sender == "jöran@exämple.com"


async def test_smtputf8_needed_but_not_offered(
    make_server: ServerFactory, certs: TestCertificates
) -> None:
    server = make_server(extensions=("PIPELINING", "8BITMIME"))
    async with fake_session(server, certs) as session:
        with pytest.raises(ts.SMTPNotSupportedError, match="SMTPUTF8"):
            await session.send("a@example.com", ["jöran@example.com"], b"x")
        assert session.is_usable
    assert not any(line.startswith(b"MAIL") for _, line in server.transcript)


@pytest.mark.parametrize(
    "bad",
    ["a@example.com\r\nRCPT TO:<x@y>", "a@exa\nmple.com", "a\x00@example.com", "a@ex\rample.com"],
)
async def test_injection_in_addresses_raises_before_sending(
    make_server: ServerFactory, certs: TestCertificates, bad: str
) -> None:
    server = make_server()
    async with fake_session(server, certs) as session:
        with pytest.raises(ts.SMTPAddressError):
            await session.send(bad, ["b@example.com"], b"x")
        with pytest.raises(ts.SMTPAddressError):
            await session.send("a@example.com", ["b@example.com", bad], b"x")
        assert session.is_usable
    assert not any(line.startswith(b"MAIL") for _, line in server.transcript)


@pytest.mark.parametrize("bad", ["client\r\nMAIL FROM:<x@y>", "cli\x00ent", "a b"])
async def test_injection_in_ehlo_name_raises_before_connecting(bad: str) -> None:
    with pytest.raises(ts.SMTPInputError):
        async with ts.open_session("mail.example.test", domain=bad):
            pass  # pragma: no cover


async def test_bad_arguments() -> None:
    with pytest.raises(ts.SMTPInputError):
        async with ts.open_session("mail.example.test\r\n"):
            pass  # pragma: no cover
    with pytest.raises(ts.SMTPInputError):
        async with ts.open_session("mail.example.test", port=70000):
            pass  # pragma: no cover
    with pytest.raises(TypeError):
        async with ts.open_session("mail.example.test", tls="implicit"):  # type: ignore[arg-type]
            pass  # pragma: no cover


async def test_bad_send_arguments(make_server: ServerFactory, certs: TestCertificates) -> None:
    server = make_server()
    async with fake_session(server, certs) as session:
        with pytest.raises(ts.SMTPInputError):
            await session.send("a@example.com", [], b"x")
        with pytest.raises(TypeError):
            await session.send("a@example.com", "b@example.com", b"x")
        with pytest.raises(TypeError):
            await session.send("a@example.com", ["b@example.com"], "text")  # type: ignore[call-overload]
        with pytest.raises(TypeError):
            await session.send("a@example.com", ["b@example.com"], 42)  # type: ignore[call-overload]
        assert session.is_usable
        await session.send("a@example.com", ["b@example.com", "b@example.com"], b"x")
    assert server.messages[0].recipients == ("b@example.com",)


async def test_transcript_is_logged_and_redacted(
    make_server: ServerFactory, certs: TestCertificates, transcript: pytest.LogCaptureFixture
) -> None:
    server = make_server()
    for mechanism in ("PLAIN", "LOGIN"):
        auth = ts.Authentication("alice", PASSWORD, mechanism=mechanism)
        async with fake_session(server, certs, authentication=auth) as session:
            await session.send("a@example.com", ["b@example.com"], b"x")
            assert PASSWORD not in repr(session)
        assert PASSWORD not in repr(auth)
    text = "\n".join(r.getMessage() for r in transcript.records)
    assert "C: AUTH PLAIN <redacted>" in text
    assert "C: AUTH LOGIN" in text and "C: <redacted>" in text
    assert "C: MAIL FROM:<a@example.com>" in text
    assert PASSWORD not in text
    import base64

    for secret in (PASSWORD, "\0alice\0" + PASSWORD):
        assert base64.b64encode(secret.encode()).decode() not in text
    assert all(r.name == "trio_sendmail.transcript" for r in transcript.records)
    assert all(r.levelno == logging.DEBUG for r in transcript.records)


async def test_session_statistics_and_repr(
    make_server: ServerFactory, certs: TestCertificates
) -> None:
    server = make_server()
    async with fake_session(server, certs, authentication=AUTH) as session:
        await session.send("a@example.com", ["b@example.com"], b"x")
        stats = session.statistics()
        assert stats.messages_sent == 1 and stats.messages_failed == 0
        assert stats.tls and stats.authenticated and stats.state == "ready"
        assert stats.bytes_sent > 0 and stats.bytes_received > 0
        assert "mail.example.test" in repr(session)
        assert session.greeting is not None and session.greeting.code == 220
        assert (await session.noop()).code == 250
        assert (await session.rset()).code == 250
    with pytest.raises(trio.ClosedResourceError):
        await session.send("a@example.com", ["b@example.com"], b"x")
    assert not session.is_usable
    assert [line for who, line in server.transcript if who == "C"][-1] == b"QUIT"


async def test_concurrent_send_is_busy(
    make_server: ServerFactory, certs: TestCertificates
) -> None:
    server = make_server()
    send, receive = trio.open_memory_channel[bytes](0)
    async with fake_session(server, certs) as session, trio.open_nursery() as nursery:
        nursery.start_soon(session.send, "a@example.com", ["b@example.com"], receive)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await session.send("a@example.com", ["b@example.com"], b"x")
        await send.send(b"body")
        await send.aclose()
    assert server.messages[0].data == b"body\r\n"


class CountingStream(trio.abc.Stream):
    """Records the size of every write and of every read asked for."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.writes: list[int] = []
        self.asked: list[int | None] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(len(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        self.asked.append(max_bytes)
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_send_size_and_receive_size_bound_every_write_and_read(
    make_server: ServerFactory, server_variant: ServerVariant
) -> None:
    server = make_server()
    client, server_side = trio.testing.memory_stream_pair()
    counting = CountingStream(client)
    body = b"y" * 5000 + b"\n"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, server_side)
        async with defaults.open_session(
            HOST, stream=counting, tls=ts.TLSMode.INSECURE_PLAINTEXT,
            send_size=1024, receive_size=512,
        ) as session:  # fmt: skip
            await session.send("a@example.com", ["b@example.com"], body)
    assert [m.data for m in server.messages] == [body[:-1] + b"\r\n"]
    assert max(counting.writes) <= 1024 and sum(counting.writes) > 5002
    assert set(counting.asked) == {512}
    settings = ts.ConnectionSettings(HOST, send_size=1024, receive_size=512)
    assert (settings.send_size, settings.receive_size) == (1024, 512)
    with pytest.raises(ValueError, match="send_size must be at least 512"):
        ts.ConnectionSettings(HOST, send_size=10)
    with pytest.raises(TypeError, match="receive_size must be an int"):
        ts.ConnectionSettings(HOST, receive_size=4096.0)  # type: ignore[arg-type]


async def test_streamed_message_large_chunks_and_small(
    make_server: ServerFactory, certs: TestCertificates
) -> None:
    server = make_server()

    async def chunks() -> AsyncIterator[bytes]:
        for size in (10, 5000, 3, 4096, 1, 20000, 7):
            yield b"." * size + b"\n"

    async with fake_session(server, certs, send_size=4096) as session:
        await session.send("a@example.com", ["b@example.com"], chunks())
    expected = b"".join(b"." * n + b"\r\n" for n in (10, 5000, 3, 4096, 1, 20000, 7))
    assert server.messages[0].data == expected


async def test_message_source_raising_mid_data_drops_the_connection(
    make_server: ServerFactory,
    certs: TestCertificates,
) -> None:
    server = make_server()

    class SourceFailed(Exception):
        pass

    async def chunks() -> AsyncIterator[bytes]:
        yield b"partial message\r\n"
        raise SourceFailed

    async with fake_session(server, certs) as session:
        with pytest.raises(SourceFailed):
            await session.send("a@example.com", ["b@example.com"], chunks())
        assert not session.is_usable
        with pytest.raises((ts.SMTPConnectionError, trio.ClosedResourceError)):
            await session.send("a@example.com", ["b@example.com"], b"x")
    assert server.messages == []
    commands = [line for who, line in server.transcript if who == "C"]
    assert b"RSET" not in commands and b"QUIT" not in commands


async def test_bad_chunk_type_mid_data(
    make_server: ServerFactory, certs: TestCertificates
) -> None:
    server = make_server()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"ok\r\n"
        yield "text"  # type: ignore[misc]

    async with fake_session(server, certs) as session:
        with pytest.raises(TypeError, match="bytes-like"):
            await session.send("a@example.com", ["b@example.com"], chunks())
    assert server.messages == []


async def test_memoryview_and_bytearray_messages(
    make_server: ServerFactory, certs: TestCertificates
) -> None:
    server = make_server()
    async with fake_session(server, certs) as session:
        await session.send("a@example.com", ["b@example.com"], bytearray(b"one\n"))
        await session.send("a@example.com", ["b@example.com"], memoryview(b"two\n"))
    assert [m.data for m in server.messages] == [b"one\r\n", b"two\r\n"]


async def test_helo_fallback_when_ehlo_is_unknown() -> None:

    async def script(srv: RawServer) -> None:
        await srv.send(b"220 old server\r\n")
        await srv.expect(b"EHLO ", b"502 5.5.2 what?\r\n")
        await srv.expect(b"HELO ", b"250 old.example\r\n")
        await srv.expect(b"MAIL FROM:<a@example.com>\r\n", b"250 ok\r\n")
        await srv.expect(b"RCPT TO:<b@example.com>\r\n", b"250 ok\r\n")
        await srv.expect(b"DATA", b"354 go\r\n")
        assert await srv.data() == b"x\r\n.\r\n"
        await srv.send(b"250 queued\r\n")
        await srv.expect(b"QUIT", b"221 bye\r\n")

    async with (
        raw_server(script) as (stream, _),
        defaults.open_session(HOST, tls=ts.TLSMode.INSECURE_PLAINTEXT, stream=stream) as session,
    ):
        assert dict(session.capabilities) == {}
        result = await session.send("a@example.com", ["b@example.com"], b"x")
        assert result.reply.code == 250


async def test_unicode_ehlo_name_is_sent_as_a_labels(
    make_server: ServerFactory, certs: TestCertificates
) -> None:
    server = make_server()
    async with fake_session(server, certs, domain="bücher.example") as session:
        await session.send("a@example.com", ["b@example.com"], b"x")
    assert server.messages[0].helo == "xn--bcher-kva.example"


async def test_session_not_ready_after_the_server_closed_it() -> None:
    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo()
        await srv.expect(b"NOOP", b"421 4.3.2 bye\r\n")

    async with (
        raw_server(script) as (stream, _),
        defaults.open_session(HOST, tls=ts.TLSMode.INSECURE_PLAINTEXT, stream=stream) as session,
    ):
        with pytest.raises(ts.SMTPServiceClosing):
            await session.noop()
        with pytest.raises(ts.SMTPConnectionError, match="closed"):
            await session.send("a@example.com", ["b@example.com"], b"x")
