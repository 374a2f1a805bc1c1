"""ConnectionSettings: one name for a connection, and one set of per-message options.

* :class:`ConnectionSettings` checks its arguments when it is made (before any I/O),
  never shows a secret in its repr, and derives variants with :func:`attrs.evolve`;
* :class:`ConnectionOptions` lists the same keywords (but the host name), so the
  signatures of ``open_session``, ``open_pool`` and ``send_bulk`` cannot drift from it;
* ``dsn``, ``requiretls`` and ``binary`` are accepted by every way of sending.
"""

from __future__ import annotations

import inspect
import math
import ssl
from collections.abc import Callable
from typing import Any, get_type_hints

import attrs
import pytest
import trio
import trio.testing

import trio_sendmail as ts
from trio_sendmail._settings import DEFAULT_TIMEOUTS
from trio_sendmail.testing import (
    DEFAULT_EXTENSIONS,
    FakeSMTPServer,
    TestCertificates,
    serve_fake_smtp,
)

from . import defaults
from .helpers import (
    CLIENT_NAME,
    HOST,
    PASSWORD,
    RawServer,
    ServerVariant,
    raw_server,
    tls_server,
)

AUTH = ts.Authentication("alice", PASSWORD)
SENDER = "a@example.com"
RECIPIENTS = ["b@example.com"]


# --------------------------------------------------------------------------------------------
# The type


def test_options_are_the_fields_but_the_hostname() -> None:
    fields = [field.name for field in attrs.fields(ts.ConnectionSettings)]
    assert fields[0] == "hostname"
    assert list(ts.ConnectionOptions.__annotations__) == fields[1:]
    assert ts.ConnectionOptions.__required_keys__ == frozenset()  # total=False
    # Each option is keyword-only on the class, as in the functions.
    assert all(field.kw_only for field in attrs.fields(ts.ConnectionSettings)[1:])


def test_defaults() -> None:
    settings = ts.ConnectionSettings("smtp.example.com")
    assert settings.port is None and settings.resolved_port == 465
    assert settings.tls is ts.TLSMode.IMPLICIT
    assert settings.timeouts is DEFAULT_TIMEOUTS
    assert (settings.pipelining, settings.chunking) == (True, True)
    assert settings.domain is None and settings.authentication is None
    for tls, port in ((ts.TLSMode.STARTTLS, 587), (ts.TLSMode.INSECURE_PLAINTEXT, 25)):
        assert ts.ConnectionSettings("smtp.example.com", tls=tls).resolved_port == port
    assert ts.ConnectionSettings("smtp.example.com", port=2525).resolved_port == 2525


def test_domain_is_stored_as_a_domain() -> None:
    settings = ts.ConnectionSettings("smtp.example.com", domain="client.example.com")
    assert settings.domain == ts.Domain.parse("client.example.com")
    same = ts.ConnectionSettings("smtp.example.com", domain=ts.Domain.parse("client.example.com"))
    assert same == settings


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hostname": ""},
        {"hostname": "smtp example.com"},
        {"hostname": "smtp.example.com\r\nQUIT"},
        {"port": 0},
        {"port": 65536},
        {"domain": "bad domain"},
        {"domain": "a\r\nRCPT TO:<x@y>"},
    ],
)
def test_malformed_input_is_refused_when_made(kwargs: dict[str, Any]) -> None:
    arguments = {"hostname": "smtp.example.com", **kwargs}
    hostname = arguments.pop("hostname")
    with pytest.raises(ts.SMTPInputError):
        ts.ConnectionSettings(hostname, **arguments)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("tls", "implicit"),
        ("ssl_context", "not a context"),
        ("authentication", ("alice", PASSWORD)),
        ("timeouts", 30),
        ("port", "465"),
    ],
)
def test_wrong_types_are_refused_when_made(name: str, value: Any) -> None:
    with pytest.raises((TypeError, ts.SMTPInputError), match=name) as caught:
        ts.ConnectionSettings("smtp.example.com", **{name: value})
    assert PASSWORD not in str(caught.value)  # the message never shows a secret


def test_repr_shows_no_secret() -> None:
    context = ssl.create_default_context()
    settings = ts.ConnectionSettings(
        "smtp.example.com", authentication=AUTH, ssl_context=context, domain=CLIENT_NAME
    )
    text = repr(settings)
    assert PASSWORD not in text and "SSLContext" not in text
    assert "authentication" not in text and "ssl_context" not in text
    assert "smtp.example.com" in text and CLIENT_NAME in text


def test_evolve_checks_again_and_resolves_the_port_from_the_new_mode() -> None:
    settings = ts.ConnectionSettings("smtp.example.com", authentication=AUTH)
    starttls = attrs.evolve(settings, tls=ts.TLSMode.STARTTLS)
    assert starttls.resolved_port == 587  # not the 465 of the implicit default
    assert starttls.authentication is AUTH
    assert settings.tls is ts.TLSMode.IMPLICIT  # unchanged: frozen
    fixed = attrs.evolve(settings, port=2525)
    assert attrs.evolve(fixed, tls=ts.TLSMode.STARTTLS).resolved_port == 2525
    with pytest.raises(ts.SMTPInputError):
        attrs.evolve(settings, port=-1)
    with pytest.raises(ts.SMTPInputError):
        attrs.evolve(settings, domain="bad domain")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        settings.port = 25  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# The signatures: one list of keywords, typed end to end


def _public_callables() -> list[tuple[str, Callable[..., object]]]:
    found: list[tuple[str, Callable[..., object]]] = []
    for name in ts.__all__:
        value = getattr(ts, name)
        if inspect.isfunction(value):
            found.append((name, value))
        elif isinstance(value, type):
            for attribute, member in vars(value).items():
                if inspect.isfunction(member) and not attribute.startswith("_"):
                    found.append((f"{name}.{attribute}", member))
    return found


def test_no_untyped_keyword_arguments_in_the_public_api() -> None:
    unpacked = []
    for name, function in _public_callables():
        for param in inspect.signature(function).parameters.values():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                assert param.annotation == "Unpack[ConnectionOptions]", name
                unpacked.append(name)
    assert sorted(unpacked) == ["open_pool", "open_session", "send_bulk"]


def test_the_options_resolve_to_the_typed_dict() -> None:
    for function in (ts.open_session, ts.open_pool, ts.send_bulk):
        hints = get_type_hints(function, include_extras=True)
        assert hints["options"].__args__ == (ts.ConnectionOptions,)


@pytest.mark.parametrize(
    "function",
    [ts.sendmail, ts.sendmail_with_starttls, ts.Session.send, ts.Pool.send, ts.Lease.send],
)
def test_every_send_takes_the_same_message_options(function: Callable[..., object]) -> None:
    params = inspect.signature(function).parameters
    for name, default in (("dsn", None), ("requiretls", False), ("binary", False)):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[name].default is default


def test_bulk_message_takes_the_same_message_options() -> None:
    fields = {field.name: field.default for field in attrs.fields(ts.BulkMessage)}
    assert (fields["dsn"], fields["requiretls"], fields["binary"]) == (None, False, False)


def test_one_default_timeouts() -> None:
    for function in (ts.sendmail, ts.sendmail_with_starttls):
        assert inspect.signature(function).parameters["timeouts"].default is DEFAULT_TIMEOUTS


# --------------------------------------------------------------------------------------------
# Using it


def server_offering(certs: TestCertificates, *extensions: str) -> FakeSMTPServer:
    """The tests' fake server, offering *extensions* besides the default ones."""
    return tls_server(certs, extensions=(*DEFAULT_EXTENSIONS, *extensions))


async def test_open_session_takes_settings_and_options(certs: TestCertificates) -> None:
    server = server_offering(certs)
    async with serve_fake_smtp(server, implicit_tls=True) as port:
        settings = ts.ConnectionSettings(
            "localhost", port=port, ssl_context=certs.client_context, authentication=AUTH,
            domain=CLIENT_NAME,
        )  # fmt: skip
        async with ts.open_session(settings) as session:
            await session.send(SENDER, RECIPIENTS, b"one")
        # Keyword arguments replace the settings' values.
        async with ts.open_session(settings, domain="other.example.test") as session:
            await session.send(SENDER, RECIPIENTS, b"two")
        # The flat form, the same connection.
        async with ts.open_session(
            "localhost", port=port, ssl_context=certs.client_context, authentication=AUTH,
            domain=CLIENT_NAME,
        ) as session:  # fmt: skip
            await session.send(SENDER, RECIPIENTS, b"three")
    assert [m.helo for m in server.messages] == [CLIENT_NAME, "other.example.test", CLIENT_NAME]
    assert all(m.authenticated_as == "alice" for m in server.messages)


async def test_bad_options_with_settings_fail_before_connecting(certs: TestCertificates) -> None:
    server = server_offering(certs)
    async with serve_fake_smtp(server, implicit_tls=True) as port:
        settings = ts.ConnectionSettings("localhost", port=port, ssl_context=certs.client_context)
        with pytest.raises(ts.SMTPInputError):
            async with ts.open_session(settings, domain="bad domain"):
                pass  # pragma: no cover
        with pytest.raises(TypeError, match="timeouts"):
            async with ts.open_pool(settings, timeouts=5):  # type: ignore[arg-type]
                pass  # pragma: no cover
        with pytest.raises(ts.SMTPInputError):
            await ts.send_bulk([], server="bad host")
    assert server.connections == 0


async def test_open_pool_and_send_bulk_take_settings(certs: TestCertificates) -> None:
    server = server_offering(certs)
    async with serve_fake_smtp(server, implicit_tls=True) as port:
        settings = defaults.ConnectionSettings(
            "localhost", port=port, ssl_context=certs.client_context
        )
        async with ts.open_pool(settings, limits=ts.PoolLimits(max_connections=1)) as pool:
            await pool.send(SENDER, RECIPIENTS, b"pooled")
        messages = [ts.BulkMessage(SENDER, RECIPIENTS, b"bulk", key=k) for k in range(3)]
        summary = await ts.send_bulk(messages, server=settings, authentication=AUTH)
        assert summary.accepted == 3
        summary = await defaults.send_bulk(
            messages, server="localhost", port=port, ssl_context=certs.client_context,
            limits=ts.PoolLimits(max_connections=1),
        )  # fmt: skip
        assert summary.accepted == 3
    assert len(server.messages) == 7
    assert [m.authenticated_as for m in server.messages[1:4]] == ["alice"] * 3


# --------------------------------------------------------------------------------------------
# The per-message options, everywhere

SENDMAILS = pytest.mark.parametrize(
    ("function", "implicit"), [(defaults.sendmail, True), (defaults.sendmail_with_starttls, False)]
)


@SENDMAILS
async def test_sendmail_requiretls(
    certs: TestCertificates, function: Callable[..., Any], implicit: bool
) -> None:
    server = server_offering(certs, "REQUIRETLS")
    async with serve_fake_smtp(server, implicit_tls=implicit) as port:
        await function(
            hostname="localhost", port=port, sender=SENDER, recipients=RECIPIENTS, mail=b"x",
            ssl_context=certs.client_context, requiretls=True,
        )  # fmt: skip
    assert "REQUIRETLS" in server.messages[0].mail_options


@SENDMAILS
async def test_sendmail_requiretls_refused_before_mail_when_not_offered(
    certs: TestCertificates, function: Callable[..., Any], implicit: bool
) -> None:
    server = server_offering(certs)
    tracker = ts.OutcomeTracker()
    async with serve_fake_smtp(server, implicit_tls=implicit) as port:
        with pytest.raises(ts.SMTPNotSupportedError, match="REQUIRETLS"):
            await function(
                hostname="localhost", port=port, sender=SENDER, recipients=RECIPIENTS,
                mail=b"x", ssl_context=certs.client_context,
                requiretls=True, tracker=tracker,
            )  # fmt: skip
    assert server.messages == []
    assert not any(line.startswith(b"MAIL") for who, line in server.transcript if who == "C")
    assert tracker.outcome is ts.Outcome.NOT_SENT


@SENDMAILS
async def test_sendmail_binary(
    certs: TestCertificates, function: Callable[..., Any], implicit: bool
) -> None:
    server = server_offering(certs, "CHUNKING", "BINARYMIME")
    data = b"Subject: bin\r\n\r\n\x00\xff bare\nLF and a\r\n.dot\r\n"
    async with serve_fake_smtp(server, implicit_tls=implicit) as port:
        await function(
            hostname="localhost", port=port, sender=SENDER, recipients=RECIPIENTS, mail=data,
            ssl_context=certs.client_context, binary=True,
        )  # fmt: skip
    received = server.messages[0]
    assert "BODY=BINARYMIME" in received.mail_options
    assert received.data == data
    assert any(line.startswith(b"BDAT") for who, line in server.transcript if who == "C")


async def test_sendmail_binary_needs_binarymime(certs: TestCertificates) -> None:
    server = server_offering(certs, "CHUNKING")
    async with serve_fake_smtp(server, implicit_tls=True) as port:
        with pytest.raises(ts.SMTPNotSupportedError, match="BINARYMIME"):
            await defaults.sendmail(
                hostname="localhost", port=port, sender=SENDER, recipients=RECIPIENTS,
                mail=b"x", ssl_context=certs.client_context, binary=True,
            )  # fmt: skip
    assert server.messages == []


@SENDMAILS
async def test_sendmail_dsn(
    certs: TestCertificates, function: Callable[..., Any], implicit: bool
) -> None:
    server = server_offering(certs, "DSN")
    dsn = ts.DSN(ret=ts.DSNReturn.HEADERS, envid="job-1", notify=[ts.DSNNotify.FAILURE])
    async with serve_fake_smtp(server, implicit_tls=implicit) as port:
        await function(
            hostname="localhost", port=port, sender=SENDER, recipients=RECIPIENTS, mail=b"x",
            ssl_context=certs.client_context, dsn=dsn,
        )  # fmt: skip
    received = server.messages[0]
    assert "RET=HDRS" in received.mail_options
    assert "NOTIFY=FAILURE" in received.rcpt_options["b@example.com"]


async def test_sendmail_refuses_a_dsn_of_the_wrong_type_before_connecting() -> None:
    with pytest.raises(TypeError, match="dsn"):
        await ts.sendmail(
            hostname="localhost", port=1, sender=SENDER, recipients=RECIPIENTS, mail=b"x",
            dsn="FAILURE",  # type: ignore[arg-type]
        )  # fmt: skip


async def test_bulk_message_options(certs: TestCertificates) -> None:
    server = server_offering(certs, "REQUIRETLS", "CHUNKING", "BINARYMIME")
    async with serve_fake_smtp(server, implicit_tls=True) as port:
        messages = [
            ts.BulkMessage(SENDER, RECIPIENTS, b"plain\r\n", key=0),
            ts.BulkMessage(SENDER, RECIPIENTS, b"req\r\n", key=1, requiretls=True),
            ts.BulkMessage(SENDER, RECIPIENTS, b"bin\n\x00\r\n", key=2, binary=True),
        ]
        summary = await defaults.send_bulk(
            messages, server="localhost", port=port, ssl_context=certs.client_context,
            concurrency=1,
        )  # fmt: skip
    assert summary.accepted == 3
    options = {m.data: m.mail_options for m in server.messages}
    assert "REQUIRETLS" not in options[b"plain\r\n"]
    assert "BODY=BINARYMIME" not in options[b"plain\r\n"]
    assert "REQUIRETLS" in options[b"req\r\n"]
    assert "BODY=BINARYMIME" in options[b"bin\n\x00\r\n"]


async def test_bulk_message_requiretls_fails_alone_when_not_offered(
    certs: TestCertificates,
) -> None:
    server = server_offering(certs)
    async with serve_fake_smtp(server, implicit_tls=True) as port:
        messages = [
            ts.BulkMessage(SENDER, RECIPIENTS, b"req\r\n", key=0, requiretls=True),
            ts.BulkMessage(SENDER, RECIPIENTS, b"plain\r\n", key=1),
        ]
        summary = await defaults.send_bulk(
            messages, server="localhost", port=port, ssl_context=certs.client_context,
            concurrency=1,
        )  # fmt: skip
    assert summary.accepted == 1
    (refused,) = [r for r in summary.results if r.message.key == 0]
    assert isinstance(refused.error, ts.SMTPNotSupportedError)
    assert [m.data for m in server.messages] == [b"plain\r\n"]


async def test_every_phase_timeout_can_be_overridden(
    autojump_clock: trio.testing.MockClock, server_variant: ServerVariant
) -> None:
    async def script(srv: RawServer) -> None:
        await srv.greet_and_ehlo(server_variant.ehlo())
        await trio.sleep_forever()

    async with raw_server(script) as (stream, _):
        timeouts = ts.Timeouts(mail=1.5, quit=0.5)
        async with defaults.open_session(
            HOST, tls=ts.TLSMode.INSECURE_PLAINTEXT, stream=stream, timeouts=timeouts
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
