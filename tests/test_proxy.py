"""The ``connect`` parameter and the proxies of :mod:`trio_sendmail.proxy`, against
fake proxies on loopback (``tests/proxies_plugin.py``): honest ones relaying to
the fake SMTP server in every variant, and hostile scripted ones.

The real proxies (microsocks, tinyproxy) are in ``tests/interop/test_proxies.py``.
"""

from __future__ import annotations

import base64
import logging
import pickle
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

import trio_sendmail as ts
from trio_sendmail.proxy import (
    MAX_HTTP_HEAD,
    HTTPConnectProxy,
    SMTPProxyAuthenticationError,
    SMTPProxyError,
    SMTPProxyProtocolError,
    SMTPProxyRefused,
    SOCKS5Proxy,
)
from trio_sendmail.testing import FakeSMTPServer, make_test_certificates, serve_fake_smtp

from . import defaults
from .helpers import HOST, ServerVariant
from .proxies_plugin import FakeProxy, Reader, serve, serve_script

USER = "proxy-user"
SECRET = "Pr0xy-Secret-üñï"
TOKEN = base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
SENDER = "sender@example.com"
RECIPIENT = "rcpt@example.com"
MESSAGE = b"Subject: tunnelled\r\n\r\nThrough the proxy.\r\n.dot\r\n"
FAST = ts.Timeouts(connect=10, tls_handshake=10, greeting=10, command=10, quit=5)
HANG = ts.Timeouts(connect=0.5, tls_handshake=5, greeting=5, command=5, quit=2)
Proxy = SOCKS5Proxy | HTTPConnectProxy
SMTP_PORT = 2525  # the port the client asks the proxy for (routed to the fake server)


@attrs.define
class SNI:
    """TLS contexts for the fake server that record the SNI names they see."""

    server_context: ssl.SSLContext
    client_context: ssl.SSLContext
    names: list[str | None] = attrs.field(factory=list)


@pytest.fixture
def sni() -> SNI:
    certs = make_test_certificates(HOST)
    recorder = SNI(certs.server_context, certs.client_context)

    def record(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        recorder.names.append(name)

    certs.server_context.sni_callback = record
    return recorder


def proxy_for(kind: str, port: int, *, credentials: bool = True) -> Proxy:
    auth: dict[str, Any] = {"username": USER, "password": SECRET} if credentials else {}
    if kind == "socks5":
        return SOCKS5Proxy("127.0.0.1", port, **auth)
    return HTTPConnectProxy("127.0.0.1", port, **auth)


@asynccontextmanager
async def fake_setup(
    kind: str, variant: ServerVariant, sni: SNI, tls: ts.TLSMode, *, coalesce: bool = False
) -> AsyncIterator[tuple[FakeSMTPServer, FakeProxy, Proxy]]:
    server = FakeSMTPServer(
        hostname=HOST,
        ssl_context=sni.server_context,
        extensions=variant.extensions(),
        users={"alice": "alice password"},
    )
    implicit = tls is ts.TLSMode.IMPLICIT
    async with serve_fake_smtp(server, implicit_tls=implicit) as smtp_port:
        fake = FakeProxy(
            kind, {(HOST, SMTP_PORT): smtp_port}, credentials=(USER, SECRET), coalesce=coalesce
        )
        async with serve(fake.handle) as proxy_port:
            yield server, fake, proxy_for(kind, proxy_port)


def expected_handshake(kind: str, host: bytes = HOST.encode(), port: int = SMTP_PORT) -> bytes:
    """The client's side of the handshake, from RFC 1928/1929 and RFC 9110."""
    if kind == "socks5":
        user, secret = USER.encode(), SECRET.encode()
        return (
            b"\x05\x02\x00\x02"  # version 5, two methods: none, username/password
            + b"\x01"
            + bytes([len(user)])
            + user
            + bytes([len(secret)])
            + secret
            + b"\x05\x01\x00\x03"  # CONNECT, by name
            + bytes([len(host)])
            + host
            + port.to_bytes(2, "big")
        )
    authority = host + b":%d" % port
    return (
        b"CONNECT " + authority + b" HTTP/1.1\r\nHost: " + authority + b"\r\n"
        b"Proxy-Authorization: Basic " + TOKEN.encode() + b"\r\n\r\n"
    )


# ------------------------------------------------------------------ sending through


KINDS = pytest.mark.parametrize("kind", ["socks5", "http"])
TLS_MODES = pytest.mark.parametrize(
    "tls", [ts.TLSMode.STARTTLS, ts.TLSMode.IMPLICIT], ids=lambda mode: str(mode.value)
)


@KINDS
@TLS_MODES
async def test_session_through_proxy(
    kind: str, tls: ts.TLSMode, server_variant: ServerVariant, sni: SNI
) -> None:
    async with (
        fake_setup(kind, server_variant, sni, tls) as (server, fake, proxy),
        defaults.open_session(
            HOST,
            port=SMTP_PORT,
            tls=tls,
            ssl_context=sni.client_context,
            authentication=ts.Authentication("alice", "alice password"),
            timeouts=FAST,
            connect=proxy,
        ) as session,
    ):
        assert session.tls and session.authenticated
        for i in range(3):
            result = await session.send(SENDER, [RECIPIENT], MESSAGE + b"%d\r\n" % i)
            assert result.reply.code == 250
    # The proxy was asked for the server by name (remote DNS), once.
    assert fake.requests == [(HOST, SMTP_PORT)]
    assert fake.handshakes == [expected_handshake(kind)]
    # TLS ran over the tunnel, for the SMTP server's name.
    assert sni.names == [HOST]
    assert [message.data for message in server.messages] == [
        MESSAGE + b"%d\r\n" % i for i in range(3)
    ]
    assert all(message.tls for message in server.messages)
    assert server.pipelining_violations == 0


@KINDS
async def test_greeting_in_the_same_packet_as_the_proxy_reply(
    kind: str, server_variant: ServerVariant, sni: SNI
) -> None:
    """A proxy may send the server's first bytes with its own reply: the
    connector must take exactly its reply and leave the greeting."""
    async with fake_setup(kind, server_variant, sni, ts.TLSMode.STARTTLS, coalesce=True) as (
        server,
        _fake,
        proxy,
    ):
        result = await defaults.sendmail_with_starttls(
            hostname=HOST,
            port=SMTP_PORT,
            sender=SENDER,
            recipients=[RECIPIENT],
            mail=MESSAGE,
            ssl_context=sni.client_context,
            timeouts=FAST,
            connect=proxy,
        )
    assert result.reply.code == 250
    assert [message.data for message in server.messages] == [MESSAGE]


@KINDS
@TLS_MODES
async def test_pool_and_bulk_through_proxy(
    kind: str, tls: ts.TLSMode, server_variant: ServerVariant, sni: SNI
) -> None:
    async with fake_setup(kind, server_variant, sni, tls) as (server, fake, proxy):
        settings = defaults.ConnectionSettings(
            HOST, port=SMTP_PORT, tls=tls, ssl_context=sni.client_context, connect=proxy
        )
        async with (
            ts.open_pool(settings, limits=ts.PoolLimits(max_connections=2)) as pool,
            trio.open_nursery() as nursery,
        ):
            for i in range(4):
                nursery.start_soon(pool.send, SENDER, [RECIPIENT], b"pool %d\r\n" % i)
        summary = await ts.send_bulk(
            [ts.BulkMessage(SENDER, [RECIPIENT], b"bulk %d\r\n" % i) for i in range(4)],
            server=settings,
            limits=ts.PoolLimits(max_connections=2),
        )
        if tls is ts.TLSMode.IMPLICIT:
            one = await defaults.sendmail(
                hostname=HOST,
                port=SMTP_PORT,
                sender=SENDER,
                recipients=[RECIPIENT],
                mail=b"one\r\n",
                ssl_context=sni.client_context,
                connect=proxy,
            )
        else:
            one = await defaults.sendmail_with_starttls(
                hostname=HOST,
                port=SMTP_PORT,
                sender=SENDER,
                recipients=[RECIPIENT],
                mail=b"one\r\n",
                ssl_context=sni.client_context,
                connect=proxy,
            )
    assert summary.accepted == 4
    assert one.reply.code == 250
    got = sorted(message.data for message in server.messages)
    assert got == sorted(
        [b"pool %d\r\n" % i for i in range(4)]
        + [b"bulk %d\r\n" % i for i in range(4)]
        + [b"one\r\n"]
    )
    assert 3 <= len(fake.requests) <= 5
    assert set(fake.requests) == {(HOST, SMTP_PORT)}
    assert set(sni.names) == {HOST}


@pytest.mark.parametrize(
    ("host", "socks_address", "authority"),
    [
        ("192.0.2.7", b"\x01\xc0\x00\x02\x07", b"192.0.2.7:25"),
        (
            "2001:db8::7",
            b"\x04" + bytes.fromhex("20010db8" + "0" * 22 + "07"),
            b"[2001:db8::7]:25",
        ),
        ("bücher.example", b"\x03\x15xn--bcher-kva.example", b"xn--bcher-kva.example:25"),
    ],
    ids=["ipv4", "ipv6", "idna"],
)
async def test_target_encoding(host: str, socks_address: bytes, authority: bytes) -> None:
    """IP literals go as addresses; names in their ASCII (IDNA) form."""
    seen: list[bytes] = []

    async def socks(stream: trio.SocketStream, reader: Reader) -> None:
        await reader.exactly(3)
        await stream.send_all(b"\x05\x00")
        seen.append(await reader.exactly(3 + len(socks_address) + 2))
        await stream.send_all(b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00")

    async def http(stream: trio.SocketStream, reader: Reader) -> None:
        seen.append(await reader.head())
        await stream.send_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")

    async with serve_script(socks) as socks_port, serve_script(http) as http_port:
        with pytest.raises(SMTPProxyRefused):
            await SOCKS5Proxy("127.0.0.1", socks_port)(host, 25)
        with pytest.raises(SMTPProxyRefused):
            await HTTPConnectProxy("127.0.0.1", http_port)(host, 25)
    assert seen == [
        b"\x05\x01\x00" + socks_address + b"\x00\x19",
        b"CONNECT " + authority + b" HTTP/1.1\r\nHost: " + authority + b"\r\n\r\n",
    ]


# ------------------------------------------------------------------ hostile proxies


async def _socks_methods(stream: trio.SocketStream, reader: Reader) -> None:
    (_version, count) = await reader.exactly(2)
    await reader.exactly(count)


def socks_script(*replies: bytes, hang: bool = False) -> Any:
    """A SOCKS5 proxy that reads the method offer, then sends *replies* one by
    one, each after reading what the client sends next; then hangs or closes."""

    async def script(stream: trio.SocketStream, reader: Reader) -> None:
        await _socks_methods(stream, reader)
        for i, reply in enumerate(replies):
            if i and not await stream.receive_some(4096):
                return
            await stream.send_all(reply)
        if hang:
            await trio.sleep_forever()

    return script


def http_script(reply: bytes, *, hang: bool = False) -> Any:
    async def script(stream: trio.SocketStream, reader: Reader) -> None:
        await reader.head()
        await stream.send_all(reply)
        if hang:
            await trio.sleep_forever()

    return script


async def oversized(stream: trio.SocketStream, reader: Reader) -> None:
    await reader.head()
    await stream.send_all(b"HTTP/1.1 200 OK\r\n")
    line = b"X-Padding: " + b"a" * 1000 + b"\r\n"
    for _ in range(MAX_HTTP_HEAD // len(line) + 4):
        await stream.send_all(line)
    await trio.sleep_forever()


AUTH_OK = b"\x01\x00"
CONNECTED = b"\x05\x00\x00\x01\x7f\x00\x00\x01\x10\x92"

HOSTILE: list[tuple[str, str, Any, type[Exception], str]] = [
    # SOCKS5
    (
        "socks-bad-version",
        "socks5",
        socks_script(b"\x04\x02"),
        SMTPProxyProtocolError,
        "version 4",
    ),
    (
        "socks-no-method",
        "socks5",
        socks_script(b"\x05\xff"),
        SMTPProxyAuthenticationError,
        "none of",
    ),
    ("socks-wrong-method", "socks5", socks_script(b"\x05\x01"), SMTPProxyProtocolError, "0x01"),
    (
        "socks-auth-refused",
        "socks5",
        socks_script(b"\x05\x02", b"\x01\x01"),
        SMTPProxyAuthenticationError,
        "refused the username",
    ),
    (
        "socks-auth-bad-version",
        "socks5",
        socks_script(b"\x05\x02", b"\x05\x00"),
        SMTPProxyProtocolError,
        "reply version 5",
    ),
    (
        "socks-refused",
        "socks5",
        socks_script(b"\x05\x02", AUTH_OK, b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00"),
        SMTPProxyRefused,
        "connection refused (reply 5)",
    ),
    (
        "socks-ruleset",
        "socks5",
        socks_script(b"\x05\x02", AUTH_OK, b"\x05\x02\x00\x01"),
        SMTPProxyRefused,
        "not allowed by ruleset",
    ),
    (
        "socks-truncated",
        "socks5",
        socks_script(b"\x05\x02", AUTH_OK, CONNECTED[:6]),
        SMTPProxyProtocolError,
        "in the middle of the bound address",
    ),
    (
        "socks-truncated-methods",
        "socks5",
        socks_script(b"\x05"),
        SMTPProxyProtocolError,
        "in the middle of the method selection (1 of 2",
    ),
    (
        "socks-connect-bad-version",
        "socks5",
        socks_script(b"\x05\x02", AUTH_OK, b"\x00\x5a\x00\x00\x00\x00\x00\x00"),
        SMTPProxyProtocolError,
        "version 0",
    ),
    (
        "socks-bad-address-type",
        "socks5",
        socks_script(b"\x05\x02", AUTH_OK, b"\x05\x00\x00\x09" + b"\x00" * 6),
        SMTPProxyProtocolError,
        "address type 0x09",
    ),
    (
        "socks-reserved",
        "socks5",
        socks_script(b"\x05\x02", AUTH_OK, b"\x05\x00\x07\x01" + b"\x00" * 6),
        SMTPProxyProtocolError,
        "reserved byte",
    ),
    (
        "socks-garbage",
        "socks5",
        socks_script(b"HTTP/1.1 400 Bad Request\r\n\r\n"),
        SMTPProxyProtocolError,
        "not a SOCKS5 reply",
    ),
    # HTTP CONNECT
    (
        "http-407",
        "http",
        http_script(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"),
        SMTPProxyAuthenticationError,
        "refused the credentials: 407",
    ),
    (
        "http-401",
        "http",
        http_script(b'HTTP/1.0 401 Unauthorized\r\nWWW-Authenticate: Basic realm="x"\r\n\r\n'),
        SMTPProxyAuthenticationError,
        "refused the credentials: 401 Unauthorized",
    ),
    (
        "http-502",
        "http",
        http_script(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\n\r\nbad"),
        SMTPProxyRefused,
        "502 Bad Gateway",
    ),
    (
        "http-403",
        "http",
        http_script(b"HTTP/1.1 403 Forbidden\r\n\r\n"),
        SMTPProxyRefused,
        "403 Forbidden",
    ),
    (
        "http-garbage",
        "http",
        http_script(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"),
        SMTPProxyProtocolError,
        "not an HTTP response: 'SSH-2.0-OpenSSH_9.2?'",
    ),
    (
        "http-binary-garbage",
        "http",
        http_script(b"\x00\xff\x1b[31m\n\n"),
        SMTPProxyProtocolError,
        "not an HTTP response",
    ),
    (
        "http-truncated",
        "http",
        http_script(b"HTTP/1.1 200 Connection established\r\nX-A: b\r\n"),
        SMTPProxyProtocolError,
        "before the end of its response",
    ),
    ("http-oversized", "http", oversized, SMTPProxyProtocolError, "longer than 16384 bytes"),
]


@pytest.mark.parametrize(
    ("kind", "script", "error", "text"),
    [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
async def test_hostile_proxy(
    kind: str,
    script: Any,
    error: type[SMTPProxyError],
    text: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_sendmail")
    async with serve_script(script) as port:
        proxy = proxy_for(kind, port)
        with pytest.raises(error) as info:
            async with defaults.open_session(
                HOST, port=SMTP_PORT, tls=ts.TLSMode.STARTTLS, timeouts=FAST, connect=proxy
            ):
                pytest.fail("a session opened through a hostile proxy")
    exc = info.value
    assert type(exc) is error
    assert isinstance(exc, ts.SMTPConnectionError)
    assert text in str(exc), str(exc)
    assert exc.proxy == f"{'SOCKS5' if kind == 'socks5' else 'HTTP'} proxy 127.0.0.1:{port}"
    if isinstance(exc, SMTPProxyRefused):
        assert exc.code in (2, 5, 403, 502)
    assert_no_secret(exc, proxy, caplog)
    copy = pickle.loads(pickle.dumps(exc))  # noqa: S301 - e.g. a Celery task's error
    assert (type(copy), str(copy), copy.proxy) == (error, str(exc), exc.proxy)
    assert getattr(copy, "code", None) == getattr(exc, "code", None)
    assert copy.outcome is exc.outcome


def assert_no_secret(exc: BaseException, proxy: object, caplog: pytest.LogCaptureFixture) -> None:
    texts = [repr(proxy), caplog.text]
    link: BaseException | None = exc
    while link is not None:
        texts += [str(link), repr(link), repr(link.args)]
        link = link.__cause__ or link.__context__
    for text in texts:
        assert SECRET not in text
        assert TOKEN not in text
        assert SECRET.encode().hex() not in text


@pytest.mark.parametrize("kind", ["socks5", "http"])
@pytest.mark.parametrize("stage", ["silent", "after-methods"])
async def test_hanging_proxy_times_out(kind: str, stage: str) -> None:
    if stage == "silent":
        script = http_script(b"", hang=True) if kind == "http" else socks_script(hang=True)
    elif kind == "http":
        script = http_script(b"HTTP/1.1 200 OK\r\n", hang=True)
    else:
        script = socks_script(b"\x05\x02", AUTH_OK, CONNECTED[:5], hang=True)
    async with serve_script(script) as port:
        with pytest.raises(ts.SMTPTimeoutError) as info:
            async with defaults.open_session(
                HOST, port=SMTP_PORT, tls=ts.TLSMode.STARTTLS, timeouts=HANG,
                connect=proxy_for(kind, port),
            ):  # fmt: skip
                pytest.fail("a session opened through a silent proxy")
    assert info.value.phase == "connect"


@pytest.mark.parametrize("kind", ["socks5", "http"])
async def test_proxy_not_listening(kind: str) -> None:
    async with serve_script(http_script(b"")) as port:
        pass  # the port is free again
    with pytest.raises(SMTPProxyError, match="cannot connect to the proxy") as info:
        await proxy_for(kind, port)(HOST, 25)
    assert info.value.proxy.endswith(f"127.0.0.1:{port}")


@pytest.mark.parametrize("kind", ["socks5", "http"])
async def test_no_credentials(kind: str) -> None:
    """Without credentials, SOCKS5 offers only "no authentication" and HTTP
    sends no Proxy-Authorization; a proxy that wants them says so."""
    seen: list[bytes] = []

    async def socks(stream: trio.SocketStream, reader: Reader) -> None:
        seen.append(await reader.exactly(3))
        await stream.send_all(b"\x05\xff")

    async def http(stream: trio.SocketStream, reader: Reader) -> None:
        seen.append(await reader.head())
        await stream.send_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")

    async with serve_script(socks if kind == "socks5" else http) as port:
        with pytest.raises(SMTPProxyAuthenticationError, match="give a username and password"):
            await proxy_for(kind, port, credentials=False)(HOST, 25)
    if kind == "socks5":
        assert seen == [b"\x05\x01\x00"]
    else:
        assert seen == [
            b"CONNECT %s:25 HTTP/1.1\r\nHost: %s:25\r\n\r\n" % (HOST.encode(), HOST.encode())
        ]


async def test_pool_reports_a_refusing_proxy() -> None:
    script = socks_script(b"\x05\x02", AUTH_OK, b"\x05\x04\x00\x01" + b"\x00" * 6)
    async with serve_script(script) as port:
        limits = ts.PoolLimits(connect_retries=2)
        async with ts.open_pool(
            HOST, port=SMTP_PORT, timeouts=FAST, limits=limits, connect=proxy_for("socks5", port)
        ) as pool:
            with pytest.raises(SMTPProxyRefused, match="host unreachable"):
                await pool.send(SENDER, [RECIPIENT], MESSAGE)


async def test_pool_does_not_retry_refused_proxy_credentials() -> None:
    """Refused proxy credentials fail every attempt the same way: the pool gives up
    at once (as for refused SMTP credentials), without its connect retries."""
    attempts: list[int] = []
    refuse = socks_script(b"\x05\x02", b"\x01\x01")  # RFC 1929: refused

    async def script(stream: trio.SocketStream, reader: Reader) -> None:
        attempts.append(1)
        await refuse(stream, reader)

    async with serve_script(script) as port:
        limits = ts.PoolLimits(connect_retries=3)
        async with ts.open_pool(
            HOST, port=SMTP_PORT, timeouts=FAST, limits=limits, connect=proxy_for("socks5", port)
        ) as pool:
            with pytest.raises(SMTPProxyAuthenticationError, match="refused the username"):
                await pool.send(SENDER, [RECIPIENT], MESSAGE)
    assert attempts == [1]


# ------------------------------------------------------------------ inputs, reprs


@pytest.mark.parametrize(
    ("make", "text"),
    [
        (lambda: SOCKS5Proxy("", 1080), "invalid proxy host"),
        (lambda: SOCKS5Proxy("proxy host", 1080), "invalid proxy host"),
        (lambda: SOCKS5Proxy("proxy\r\n", 1080), "invalid proxy host"),
        # Credentials or a URL in the host would end up in every error and log line.
        (lambda: SOCKS5Proxy("user:s3cret@proxy", 1080), "name or an address only"),
        (lambda: HTTPConnectProxy("http://proxy", 3128), "name or an address only"),
        (lambda: HTTPConnectProxy("proxy:3128", 3128), "name or an address only"),
        (lambda: SOCKS5Proxy("proxy", 0), "invalid proxy port"),
        (lambda: HTTPConnectProxy("proxy", 70000), "invalid proxy port"),
        (lambda: HTTPConnectProxy("proxy", True), "invalid proxy port"),
        (lambda: SOCKS5Proxy("proxy", password="x"), "both"),
        (lambda: SOCKS5Proxy("proxy", username="x"), "both"),
        (lambda: SOCKS5Proxy("proxy", username="", password="x"), "1 to 255 bytes"),
        (lambda: SOCKS5Proxy("proxy", username="u", password="é" * 128), "1 to 255 bytes"),
        (lambda: SOCKS5Proxy("proxy", username="u", password="a\nb"), "control character"),
        (lambda: HTTPConnectProxy("proxy", 3128, username="a:b", password="x"), "':'"),
    ],
)
def test_bad_proxy_arguments(make: Any, text: str) -> None:
    with pytest.raises(ts.SMTPInputError, match=text):
        make()


def test_ipv6_proxy_hosts_are_fine() -> None:
    assert "::1" in repr(SOCKS5Proxy("::1", 1080)) or SOCKS5Proxy("::1", 1080)
    HTTPConnectProxy("[2001:db8::1]", 3128)


async def test_bad_target_is_refused_before_connecting() -> None:
    proxy = SOCKS5Proxy("127.0.0.1", 9)  # nothing is opened: the discard port is never reached
    with pytest.raises(ts.SMTPInputError, match="longer than 255"):
        await proxy("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + ".example", 25)
    with pytest.raises(ts.SMTPInputError, match="no ASCII form"):
        await proxy("\u0300a.example", 25)


def test_reprs_hide_the_password() -> None:
    socks = SOCKS5Proxy("proxy.example", username=USER, password=SECRET)
    http = HTTPConnectProxy("proxy.example", 3128, username=USER, password=SECRET)
    assert repr(socks) == "SOCKS5Proxy(host='proxy.example', port=1080, username='proxy-user')"
    assert SECRET not in repr(http) and USER in repr(http)
    settings = ts.ConnectionSettings("mail.example.com", connect=http)
    assert "Proxy" not in repr(settings) and SECRET not in repr(settings)
    assert settings.connect is http


def test_connect_is_checked() -> None:
    with pytest.raises(TypeError, match="connect must be an async callable"):
        ts.ConnectionSettings("mail.example.com", connect="socks5://proxy")  # type: ignore[arg-type]


async def test_connect_errors_become_connection_errors() -> None:
    async def broken(hostname: str, port: int) -> trio.abc.Stream:
        raise ConnectionRefusedError(111, "refused by the test")

    async def lost(hostname: str, port: int) -> trio.abc.Stream:
        raise trio.BrokenResourceError("lost in the test")

    async def wrong(hostname: str, port: int) -> trio.abc.Stream:
        return "not a stream"  # type: ignore[return-value]

    for connect, error, text in [
        (broken, ts.SMTPConnectionError, "refused by the test"),
        (lost, ts.SMTPConnectionError, "lost in the test"),
        (wrong, TypeError, "connect returned a str"),
    ]:
        with pytest.raises(error, match=text):
            async with defaults.open_session(HOST, port=25, connect=connect):
                pass


async def test_connect_gets_the_server_name_and_port(
    sni: SNI, server_variant: ServerVariant
) -> None:
    """A connector of one's own: called with the hostname and resolved port,
    and its stream is used as it is (TLS on top, for the hostname)."""
    calls: list[tuple[str, int]] = []
    server = FakeSMTPServer(
        hostname=HOST, ssl_context=sni.server_context, extensions=server_variant.extensions()
    )
    async with serve_fake_smtp(server, implicit_tls=True) as port:

        async def connect(hostname: str, asked: int) -> trio.abc.Stream:
            calls.append((hostname, asked))
            return await trio.open_tcp_stream("127.0.0.1", port)

        result = await defaults.sendmail(
            hostname=HOST,
            sender=SENDER,
            recipients=[RECIPIENT],
            mail=MESSAGE,
            ssl_context=sni.client_context,
            connect=connect,
        )
    assert result.reply.code == 250
    assert calls == [(HOST, 465)]
    assert sni.names == [HOST]
    assert [message.data for message in server.messages] == [MESSAGE]
