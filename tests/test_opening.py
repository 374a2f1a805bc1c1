"""Opening a session (``trio_sendmail/_opening.py``): the connection, TLS and AUTH.

Real sockets on loopback: TLS verification, SNI, connection errors. Then every SASL
mechanism in full sessions against the fake server (over memory streams): each
mechanism succeeds; wrong credentials fail with 535; the OAuth error challenge (RFC
7628 §3.2.2) is answered and the refused token is refreshed; a wrong SCRAM server
signature fails even though the server says 235; the automatic choice follows
MECHANISM_PREFERENCE; and no transcript (the client's debug log, the fake server's
record) shows a secret.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import ssl
from collections.abc import Iterable
from typing import Any, TypeVar

import pytest
import trio
import trustme

import trio_sendmail as ts
from trio_sendmail._sasl import Authentication, OAuth2Token
from trio_sendmail.testing import FakeSMTPServer, TestCertificates, serve_fake_smtp

from . import defaults
from .helpers import (
    CLIENT_NAME,
    HOST,
    PASSWORD,
    USERS,
    RawServer,
    ServerFactory,
    fake_session,
    raw_server,
    serving,
    tls_server,
)

AUTH = ts.Authentication("alice", PASSWORD)


def assert_delivered_once_over_tls(server: FakeSMTPServer, result: ts.SendResult) -> None:
    """The one message of the loopback tests, as the server stored it."""
    assert [str(path) for path in result.accepted] == ["<b@example.com>"] and not result.refused
    (message,) = server.messages
    assert message.tls and message.authenticated_as == "alice"
    assert (message.sender, message.recipients) == ("a@example.com", ("b@example.com",))
    assert message.data == b"hello\r\n"
    assert message.helo == CLIENT_NAME


async def test_sendmail_implicit_tls_on_loopback(
    make_server: ServerFactory, certs: TestCertificates
) -> None:
    server = make_server()
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
    assert_delivered_once_over_tls(server, result)


async def test_sendmail_with_starttls_on_loopback(
    make_server: ServerFactory, certs: TestCertificates
) -> None:
    server = make_server()
    async with serve_fake_smtp(server) as port:
        result = await defaults.sendmail_with_starttls(
            hostname="127.0.0.1",
            port=port,
            sender="a@example.com",
            recipients=["b@example.com"],
            mail=b"hello",
            ssl_context=certs.client_context,
            authentication=AUTH,
        )
    assert result.reply.code == 250 and result.reply.enhanced_status == ts.EnhancedStatus(2, 0, 0)
    # Authenticated, and only after the upgrade: the login went over TLS.
    assert_delivered_once_over_tls(server, result)
    verbs = [line.split(b" ", 1)[0].upper() for side, line in server.transcript if side == "C"]
    assert verbs.index(b"STARTTLS") < verbs.index(b"AUTH") < verbs.index(b"MAIL")


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:  # pragma: no cover - depends on the machine
        return False
    return True


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback on this machine")
async def test_ipv6_loopback_literal_hostname(
    make_server: ServerFactory, certs: TestCertificates
) -> None:
    server = make_server()
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
    make_server: ServerFactory, certs: TestCertificates, implicit: bool
) -> None:
    other_ca = trustme.CA()
    context = ssl.create_default_context()
    other_ca.configure_trust(context)
    server = make_server()
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
async def test_wrong_hostname_is_a_tls_error(make_server: ServerFactory, implicit: bool) -> None:
    from trio_sendmail.testing import make_test_certificates

    certs = make_test_certificates("mail.example.test")  # not valid for 127.0.0.1
    server = make_server()
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


async def test_sni_carries_the_hostname(
    make_server: ServerFactory, certs: TestCertificates
) -> None:
    seen: list[str | None] = []
    server_context = certs.server_context

    def on_sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        seen.append(name)

    server_context.sni_callback = on_sni
    try:
        server = make_server()
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


TOKEN = "ya29.Zq8xKv3mW-p7Ln_T4s"
BAD_TOKEN = "ya29.Bw6yHu2nQ-r5Jk_P9d"
ALL = ("PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256", "XOAUTH2", "OAUTHBEARER")
OAUTH = ("XOAUTH2", "OAUTHBEARER")
RESPONSES = {
    "PLAIN": 0,
    "LOGIN": 2,
    "CRAM-MD5": 1,
    "SCRAM-SHA-256": 2,
    "XOAUTH2": 0,
    "OAUTHBEARER": 0,
}
OAUTH_ERROR = {"status": "invalid_token", "scope": "smtp", "schemes": "bearer"}

E = TypeVar("E", bound=BaseException)


class Provider:
    """A fake async token provider: hands out *tokens* in turn, then repeats the last."""

    def __init__(self, *tokens: str | OAuth2Token) -> None:
        self.tokens = list(tokens)
        self.calls = 0

    async def __call__(self) -> str | OAuth2Token:
        self.calls += 1
        return self.tokens.pop(0) if len(self.tokens) > 1 else self.tokens[0]


def sasl_server(certs: TestCertificates, **kwargs: Any) -> FakeSMTPServer:
    kwargs.setdefault("auth_mechanisms", ALL)
    kwargs.setdefault("tokens", {TOKEN: "alice"})
    return tls_server(certs, **kwargs)


def credentials(mechanism: str | None, provider: Provider | None = None) -> Authentication:
    if mechanism in OAUTH:
        return Authentication(
            "alice", mechanism=mechanism, token_provider=provider or Provider(TOKEN)
        )
    return Authentication("alice", PASSWORD, mechanism=mechanism)


def auth_lines(server: FakeSMTPServer) -> list[bytes]:
    return [line for who, line in server.transcript if who == "C" and line.startswith(b"AUTH ")]


def used_mechanism(server: FakeSMTPServer) -> str:
    (line,) = auth_lines(server)
    return line.split(b" ")[1].decode()


async def send_one(
    server: FakeSMTPServer,
    certs: TestCertificates,
    auth: Authentication,
    tls: ts.TLSMode = ts.TLSMode.STARTTLS,
) -> None:
    async with fake_session(server, certs, tls=tls, authentication=auth) as session:
        assert session.authenticated
        await session.send("a@example.com", ["b@example.com"], b"Hi\n")
    assert server.messages[-1].authenticated_as == "alice"


async def open_fails(
    server: FakeSMTPServer,
    certs: TestCertificates,
    auth: Authentication,
    error: type[E],
    **kwargs: Any,
) -> pytest.ExceptionInfo[E]:
    kwargs.setdefault("tls", ts.TLSMode.STARTTLS)
    async with serving(server, implicit_tls=kwargs["tls"] is ts.TLSMode.IMPLICIT) as stream:
        with pytest.raises(error) as info:
            async with defaults.open_session(
                HOST,
                stream=stream,
                ssl_context=certs.client_context,
                authentication=auth,
                **kwargs,
            ):
                pass  # pragma: no cover
    return info


# --------------------------------------------------------------------------------------------
# Each mechanism


@pytest.mark.parametrize("tls", [ts.TLSMode.STARTTLS, ts.TLSMode.IMPLICIT])
@pytest.mark.parametrize("mechanism", ALL)
async def test_each_mechanism_succeeds(
    certs: TestCertificates, mechanism: str, tls: ts.TLSMode
) -> None:
    server = sasl_server(certs)
    await send_one(server, certs, credentials(mechanism), tls)
    assert used_mechanism(server) == mechanism
    assert server.messages[0].data == b"Hi\r\n"


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"])
@pytest.mark.parametrize("user", ["alice", "mallory"])
async def test_wrong_password_fails(certs: TestCertificates, mechanism: str, user: str) -> None:
    server = sasl_server(certs)
    auth = Authentication(user, "wrong-Passw0rd", mechanism=mechanism)
    info = await open_fails(server, certs, auth, ts.SMTPAuthenticationError)
    assert info.value.code == 535
    assert isinstance(info.value, ts.SMTPPermanentError)
    assert "wrong-Passw0rd" not in str(info.value)
    assert server.messages == []


@pytest.mark.parametrize("mechanism", OAUTH)
async def test_wrong_token_gets_the_error_challenge_then_535(
    certs: TestCertificates, mechanism: str
) -> None:
    server = sasl_server(certs)
    provider = Provider(BAD_TOKEN, TOKEN)
    auth = credentials(mechanism, provider)
    info = await open_fails(server, certs, auth, ts.SMTPAuthenticationError)
    assert info.value.code == 535
    assert info.value.enhanced_status is not None
    assert str(info.value.enhanced_status) == "5.7.8"
    assert BAD_TOKEN not in str(info.value)
    # The server sent the RFC 7628 §3.2.2 error challenge and got the dummy response.
    (index,) = [i for i, (who, line) in enumerate(server.transcript) if line.startswith(b"334")]
    assert json.loads(base64.b64decode(server.transcript[index][1][4:])) == OAUTH_ERROR
    assert server.transcript[index + 1 : index + 3] == [
        ("C", b"<redacted>"),
        ("S", b"535 5.7.8 Authentication credentials invalid"),
    ]
    # The refused token was dropped: the next session asks the provider for a new one ...
    await send_one(server, certs, auth)
    assert provider.calls == 2
    # ... which is cached for the sessions after it.
    await send_one(server, certs, auth)
    assert provider.calls == 2


async def test_a_token_near_expiry_is_refreshed_between_sessions(
    certs: TestCertificates,
) -> None:
    import time

    server = sasl_server(certs, tokens={TOKEN: "alice", BAD_TOKEN: "alice"})
    provider = Provider(
        OAuth2Token(TOKEN, expires_at=time.time() + 30),
        OAuth2Token(BAD_TOKEN, expires_at=time.time() + 3600),
    )
    auth = credentials("OAUTHBEARER", provider)
    for _ in range(3):
        await send_one(server, certs, auth)
    assert provider.calls == 2


@pytest.mark.parametrize("mechanism", OAUTH)
async def test_oauth_error_details_are_on_the_exception(
    certs: TestCertificates, mechanism: str
) -> None:
    server = sasl_server(certs)
    auth = credentials(mechanism, Provider(BAD_TOKEN))
    info = await open_fails(server, certs, auth, ts.SMTPAuthenticationError)
    assert info.value.details == OAUTH_ERROR


async def test_a_token_refused_without_error_challenge_is_refreshed() -> None:
    provider = Provider(BAD_TOKEN, TOKEN)
    auth = credentials("XOAUTH2", provider)

    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(b"250-srv\r\n250 AUTH XOAUTH2\r\n")
        await srv.expect(b"AUTH XOAUTH2 ", b"535 5.7.3 Authentication unsuccessful\r\n")
        await srv.expect(b"QUIT", b"221 bye\r\n")

    for _ in range(2):
        async with raw_server(script) as (stream, _):
            with pytest.raises(ts.SMTPAuthenticationError):
                async with defaults.open_session(
                    HOST,
                    tls=ts.TLSMode.INSECURE_PLAINTEXT,
                    stream=stream,
                    authentication=auth,
                    insecure_auth_over_plaintext=True,
                ):
                    pass  # pragma: no cover
    assert provider.calls == 2


# --------------------------------------------------------------------------------------------
# SCRAM: the server must prove itself


async def test_scram_wrong_server_signature_fails_even_though_the_server_says_235(
    certs: TestCertificates,
) -> None:
    server = sasl_server(certs, scram_bad_server_signature=True)
    auth = credentials("SCRAM-SHA-256")
    info = await open_fails(server, certs, auth, ts.SMTPAuthenticationError)
    assert "prove" in str(info.value)
    assert info.value.code == 235
    assert ("S", b"235 2.7.0 Authentication successful") in server.transcript
    assert server.messages == []
    # The client hung up at once: nothing after the 235.
    assert server.transcript[-1] == ("S", b"235 2.7.0 Authentication successful")


async def test_scram_low_iteration_count_is_refused(certs: TestCertificates) -> None:
    server = sasl_server(certs, scram_iterations=1000)
    info = await open_fails(server, certs, credentials("SCRAM-SHA-256"), ts.SMTPProtocolError)
    assert "iteration count 1000" in str(info.value)
    assert server.messages == []
    assert not any(line.startswith(b"235") for _, line in server.transcript)


async def test_scram_higher_iteration_count_is_fine(certs: TestCertificates) -> None:
    server = sasl_server(certs, scram_iterations=10_000)
    await send_one(server, certs, credentials("SCRAM-SHA-256"))


# --------------------------------------------------------------------------------------------
# The automatic choice


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        (ALL, "SCRAM-SHA-256"),
        (("PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"), "SCRAM-SHA-256"),
        (("CRAM-MD5", "LOGIN", "PLAIN"), "PLAIN"),
        (("CRAM-MD5", "LOGIN"), "LOGIN"),
        (("CRAM-MD5", "XOAUTH2", "OAUTHBEARER"), "CRAM-MD5"),
        (("PLAIN", "LOGIN"), "PLAIN"),
    ],
)
async def test_automatic_choice_with_a_password(
    certs: TestCertificates, offered: tuple[str, ...], expected: str
) -> None:
    server = sasl_server(certs, auth_mechanisms=offered)
    await send_one(server, certs, credentials(None))
    assert used_mechanism(server) == expected


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        (ALL, "OAUTHBEARER"),
        (("PLAIN", "XOAUTH2", "OAUTHBEARER"), "OAUTHBEARER"),
        (("SCRAM-SHA-256", "PLAIN", "XOAUTH2"), "XOAUTH2"),
    ],
)
async def test_automatic_choice_with_a_token_provider(
    certs: TestCertificates, offered: tuple[str, ...], expected: str
) -> None:
    server = sasl_server(certs, auth_mechanisms=offered)
    await send_one(server, certs, Authentication("alice", token_provider=Provider(TOKEN)))
    assert used_mechanism(server) == expected


async def test_automatic_choice_with_both_credentials(certs: TestCertificates) -> None:
    server = sasl_server(certs, auth_mechanisms=("SCRAM-SHA-256", "XOAUTH2"))
    both = Authentication("alice", PASSWORD, token_provider=Provider(TOKEN))
    await send_one(server, certs, both)
    assert used_mechanism(server) == "XOAUTH2"


@pytest.mark.parametrize(
    ("offered", "auth"),
    [
        (OAUTH, Authentication("alice", PASSWORD)),
        (("PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"), credentials("XOAUTH2")),
        (("PLAIN", "LOGIN"), Authentication("alice", token_provider=Provider(TOKEN))),
    ],
)
async def test_no_usable_mechanism(
    certs: TestCertificates, offered: tuple[str, ...], auth: Authentication
) -> None:
    server = sasl_server(certs, auth_mechanisms=offered)
    await open_fails(server, certs, auth, ts.SMTPNotSupportedError)
    assert auth_lines(server) == []


async def test_without_tls_cram_md5_is_preferred_to_plain() -> None:
    server = FakeSMTPServer(
        users=USERS, auth_requires_tls=False, auth_mechanisms=("PLAIN", "LOGIN", "CRAM-MD5")
    )
    async with (
        serving(server) as stream,
        defaults.open_session(
            HOST,
            tls=ts.TLSMode.INSECURE_PLAINTEXT,
            stream=stream,
            authentication=Authentication("alice", PASSWORD),
            insecure_auth_over_plaintext=True,
        ) as session,
    ):
        assert session.authenticated
    assert used_mechanism(server) == "CRAM-MD5"


# --------------------------------------------------------------------------------------------
# No secret in any transcript

_B64_RUN = re.compile(r"[A-Za-z0-9+/]{4,}={0,2}")


def b64_forms(secret: bytes) -> list[str]:
    """The base64 text that *secret* becomes inside any message, at any of the 3 alignments."""
    forms = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + secret).decode()
        forms.append(encoded[4 if shift else 0 : -4])
    return forms


def assert_clean(text: str, secrets: Iterable[str]) -> None:
    for secret in secrets:
        assert secret not in text
        for start in range(len(secret) - 5):
            assert secret[start : start + 6] not in text, secret[start : start + 6]
        for form in b64_forms(secret.encode()):
            assert form not in text
        for run in _B64_RUN.findall(text):
            if len(run) % 4 == 0:
                assert secret.encode() not in base64.b64decode(run)


def log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The client's transcript lines, without the ``[session id]`` prefix."""
    return [re.sub(r"^\[\d+\] ", "", record.getMessage()) for record in caplog.records]


def all_text(caplog: pytest.LogCaptureFixture, server: FakeSMTPServer) -> str:
    client = "\n".join(record.getMessage() for record in caplog.records)
    fake = "\n".join(line.decode("utf-8", "replace") for _, line in server.transcript)
    return client + "\n" + fake


@pytest.mark.parametrize("mechanism", ALL)
async def test_transcripts_never_show_a_secret(
    certs: TestCertificates, transcript: pytest.LogCaptureFixture, mechanism: str
) -> None:
    server = sasl_server(certs)
    await send_one(server, certs, credentials(mechanism))
    text = all_text(transcript, server)
    assert f"C: AUTH {mechanism}" in text
    assert_clean(text, [PASSWORD, TOKEN])
    lines = log_lines(transcript)
    # Every SASL line from the client is redacted.
    with_initial = mechanism not in ("LOGIN", "CRAM-MD5")
    auth = [line for line in lines if line.startswith("C: AUTH ")]
    assert auth == [f"C: AUTH {mechanism}" + (" <redacted>" if with_initial else "")]
    start = lines.index(auth[0])
    end = next(i for i, line in enumerate(lines) if line.startswith("S: 235"))
    responses = [line for line in lines[start + 1 : end] if line.startswith("C: ")]
    assert responses == ["C: <redacted>"] * RESPONSES[mechanism]
    assert all(r.levelno == logging.DEBUG for r in transcript.records)


@pytest.mark.parametrize("mechanism", OAUTH)
async def test_transcripts_of_a_refused_token_never_show_it(
    certs: TestCertificates, transcript: pytest.LogCaptureFixture, mechanism: str
) -> None:
    server = sasl_server(certs)
    auth = credentials(mechanism, Provider(BAD_TOKEN))
    await open_fails(server, certs, auth, ts.SMTPAuthenticationError)
    assert_clean(all_text(transcript, server), [BAD_TOKEN])


async def test_failed_password_transcripts_never_show_it(
    certs: TestCertificates, transcript: pytest.LogCaptureFixture
) -> None:
    wrong = "Wr0ng-secret-value"
    for mechanism in ("PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"):
        server = sasl_server(certs)
        auth = Authentication("alice", wrong, mechanism=mechanism)
        await open_fails(server, certs, auth, ts.SMTPAuthenticationError)
        assert_clean(all_text(transcript, server), [wrong])


async def test_scram_server_signature_is_redacted_by_the_fake_server(
    certs: TestCertificates,
) -> None:
    server = sasl_server(certs)
    await send_one(server, certs, credentials("SCRAM-SHA-256"))
    challenges = [line for who, line in server.transcript if who == "S" and b"334" in line]
    assert challenges[-1] == b"334 <redacted>"
    server_first = base64.b64decode(challenges[0][4:])
    assert re.fullmatch(rb"r=[^,]+,s=[A-Za-z0-9+/=]+,i=4096", server_first)


async def test_scram_server_signature_is_not_in_the_client_log(
    certs: TestCertificates, transcript: pytest.LogCaptureFixture
) -> None:
    server = sasl_server(certs)
    await send_one(server, certs, credentials("SCRAM-SHA-256"))
    # The core never logs SASL challenges: SCRAM's salt and server signature would allow an
    # offline attack on the password.
    challenges = [line for line in log_lines(transcript) if line.startswith("S: 334")]
    assert challenges == ["S: 334 <redacted>"] * 2


@pytest.mark.parametrize("mechanism", OAUTH)
async def test_a_real_size_token_fits_on_the_auth_line(
    certs: TestCertificates, mechanism: str
) -> None:
    """JWT access tokens are 1.5 to 2.5 KB: longer than an ordinary command line."""
    token = "eyJ" + "a" * 2500
    server = sasl_server(certs, tokens={token: "alice"})
    await send_one(server, certs, credentials(mechanism, Provider(token)))
