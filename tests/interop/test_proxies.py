"""trio_sendmail through real proxies (microsocks, tinyproxy) to the private Postfix.

The proxies run on loopback (``tests/interop/proxies.sh start``), Postfix too
(``tests/interop/postfix.sh start``). Every test sends through a proxy with the
SMTP server named ``localhost``, the name in Postfix's certificate: the proxy
resolves it (each proxy's log shows the name it was asked for), and the library
verifies the certificate for it, over the tunnel. The delivered Maildir file
is compared byte for byte with what was sent.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
import trio

import trio_sendmail as ts
from trio_sendmail.proxy import (
    HTTPConnectProxy,
    SMTPProxyAuthenticationError,
    SMTPProxyRefused,
    SOCKS5Proxy,
)

from .. import defaults
from ..postfix_plugin import PostfixEnv
from ..proxies_plugin import ProxiesEnv
from .test_postfix import (
    TIMEOUTS,
    assert_same_bytes,
    make_message,
    new_message_id,
    port_for,
    read_delivered,
    stored_form,
    unique,
    verify_error,
    wait_for_delivery,
    wait_for_one,
)

pytestmark = pytest.mark.postfix

Proxy = SOCKS5Proxy | HTTPConnectProxy
KINDS = ("socks5-auth", "socks5-noauth", "http-auth")
TLS_MODES = pytest.mark.parametrize(
    "tls", [ts.TLSMode.STARTTLS, ts.TLSMode.IMPLICIT], ids=lambda mode: str(mode.value)
)


def make_proxy(env: ProxiesEnv, kind: str) -> Proxy:
    if kind == "socks5-auth":
        return SOCKS5Proxy(env.host, env.socks_port, username=env.user, password=env.password)
    if kind == "socks5-noauth":
        return SOCKS5Proxy(env.host, env.socks_noauth_port)
    return HTTPConnectProxy(env.host, env.http_port, username=env.user, password=env.password)


LOG_NAMES = {"socks5-auth": "socks", "socks5-noauth": "socks-noauth", "http-auth": "http"}


def log_of(env: ProxiesEnv, kind: str) -> Path:
    return env.log_dir / f"{LOG_NAMES[kind]}.log"


def requests_logged(env: ProxiesEnv, kind: str, port: int) -> int:
    """How often the proxy's log says it was asked for ``localhost:port`` by name."""
    text = log_of(env, kind).read_text(encoding="utf-8", errors="replace")
    needle = (
        f"CONNECT localhost:{port} " if kind == "http-auth" else f"connected to localhost:{port}"
    )
    return text.count(needle)


@attrs.define
class Recording:
    """A connector that calls *proxy* and records the peer of each stream it
    returns (the proxy's address, not the SMTP server's)."""

    proxy: Proxy
    peers: list[tuple[str, int]] = attrs.field(factory=list)

    async def __call__(self, hostname: str, port: int) -> trio.abc.Stream:
        stream = await self.proxy(hostname, port)
        host, peer_port = stream.socket.getpeername()[:2]
        self.peers.append((host, peer_port))
        return stream


def proxy_port(env: ProxiesEnv, kind: str) -> int:
    return {"socks5-auth": env.socks_port, "socks5-noauth": env.socks_noauth_port}.get(
        kind, env.http_port
    )


async def logged_soon(check: Callable[[], bool]) -> None:
    """Poll the proxy's log file (nothing to wait on but the file)."""
    with trio.move_on_after(10):
        while not check():  # noqa: ASYNC110 - a file written by another process
            await trio.sleep(0.05)
    assert check()


@pytest.mark.parametrize("kind", KINDS)
@TLS_MODES
async def test_sendmail_through_proxy(
    postfix: PostfixEnv,
    proxies: ProxiesEnv,
    tls_context: ssl.SSLContext,
    kind: str,
    tls: ts.TLSMode,
) -> None:
    port = port_for(postfix, tls)
    if port not in proxies.connect_ports and kind == "http-auth":
        pytest.fail(f"tinyproxy allows CONNECT to {proxies.connect_ports}, not Postfix's {port}")
    before = requests_logged(proxies, kind, port)
    connect = Recording(make_proxy(proxies, kind))
    local = unique("proxy")
    rcpt = postfix.address(local)
    message = make_message(
        sender=postfix.user,
        to=rcpt,
        message_id=new_message_id(postfix),
        subject=f"through {kind} {tls.value}",
        body=b"Tunnelled.\r\n.leading dot\r\nbare\nLF\r\n",
    )
    send = defaults.sendmail if tls is ts.TLSMode.IMPLICIT else defaults.sendmail_with_starttls
    result = await send(
        hostname=postfix.tls_hostname,
        port=port,
        sender=postfix.user,
        recipients=[rcpt],
        mail=message,
        ssl_context=tls_context,
        authentication=ts.Authentication(postfix.user, postfix.password),
        timeouts=TIMEOUTS,
        connect=connect,
    )
    assert result.reply.code == 250
    assert result.accepted == (ts.ForwardPath.parse(rcpt),)
    assert connect.peers == [(proxies.host, proxy_port(proxies, kind))]
    delivered = await wait_for_one(postfix, local)
    assert_same_bytes(delivered.message, stored_form(message))
    assert delivered.delivered_to == rcpt
    assert delivered.protocol == "ESMTPSA"
    assert f"queued as {delivered.queue_id}" in result.reply.text
    # The proxy was asked for the name (remote DNS), once.
    await logged_soon(lambda: requests_logged(proxies, kind, port) == before + 1)


@pytest.mark.parametrize("kind", KINDS)
async def test_pool_and_bulk_through_proxy(
    postfix: PostfixEnv, proxies: ProxiesEnv, tls_context: ssl.SSLContext, kind: str
) -> None:
    connect = Recording(make_proxy(proxies, kind))
    settings = defaults.ConnectionSettings(
        postfix.tls_hostname,
        port=postfix.submission_port,
        tls=ts.TLSMode.STARTTLS,
        ssl_context=tls_context,
        authentication=ts.Authentication(postfix.user, postfix.password),
        timeouts=TIMEOUTS,
        connect=connect,
    )
    local = unique("proxy-pool")
    rcpt = postfix.address(local)
    messages = [
        make_message(
            sender=postfix.user,
            to=rcpt,
            message_id=new_message_id(postfix),
            subject=f"pool {kind} {i}",
            body=f"Message {i} through {kind}.\r\n".encode(),
        )
        for i in range(12)
    ]
    async with (
        ts.open_pool(settings, limits=ts.PoolLimits(max_connections=3)) as pool,
        trio.open_nursery() as nursery,
    ):
        for message in messages[:6]:
            nursery.start_soon(pool.send, postfix.user, [rcpt], message)
    summary = await ts.send_bulk(
        [ts.BulkMessage(postfix.user, [rcpt], message) for message in messages[6:]],
        server=settings,
        limits=ts.PoolLimits(max_connections=2),
    )
    assert summary.accepted == 6
    assert 2 <= len(connect.peers) <= 5
    assert set(connect.peers) == {(proxies.host, proxy_port(proxies, kind))}
    files = await wait_for_delivery(postfix, local, count=len(messages))
    stored = sorted(read_delivered(path).message for path in files)
    assert stored == sorted(stored_form(message) for message in messages)


@TLS_MODES
async def test_certificate_checked_for_the_smtp_name_over_the_tunnel(
    postfix: PostfixEnv, proxies: ProxiesEnv, tls_context: ssl.SSLContext, tls: ts.TLSMode
) -> None:
    """The tunnel goes to Postfix, but the session expects another name: the
    handshake over the tunnel fails the host name check, before AUTH."""
    proxy = make_proxy(proxies, "socks5-auth")

    async def elsewhere(hostname: str, port: int) -> trio.abc.Stream:
        assert hostname == "wrong.example.test"
        return await proxy(postfix.tls_hostname, port)

    with pytest.raises(ts.SMTPTLSError) as info:
        async with defaults.open_session(
            "wrong.example.test",
            port=port_for(postfix, tls),
            tls=tls,
            ssl_context=tls_context,
            authentication=ts.Authentication(postfix.user, postfix.password),
            timeouts=TIMEOUTS,
            connect=elsewhere,
        ):
            pytest.fail("TLS succeeded with a certificate for another name")
    assert "Hostname mismatch" in verify_error(info.value).verify_message


@pytest.mark.parametrize(
    ("kind", "credentials", "error", "text"),
    [
        ("socks", None, SMTPProxyAuthenticationError, "none of the offered authentication"),
        ("socks", "wrong", SMTPProxyAuthenticationError, "refused the username and password"),
        ("http", None, SMTPProxyAuthenticationError, "407"),
        ("http", "wrong", SMTPProxyAuthenticationError, "401"),
    ],
)
async def test_real_proxies_refuse_bad_credentials(
    postfix: PostfixEnv,
    proxies: ProxiesEnv,
    tls_context: ssl.SSLContext,
    kind: str,
    credentials: str | None,
    error: type[Exception],
    text: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG", logger="trio_sendmail")
    password = None if credentials is None else f"{credentials}-Secret-{kind}"
    username = None if credentials is None else proxies.user
    proxy: Proxy
    if kind == "socks":
        proxy = SOCKS5Proxy(proxies.host, proxies.socks_port, username=username, password=password)
    else:
        proxy = HTTPConnectProxy(
            proxies.host, proxies.http_port, username=username, password=password
        )
    with pytest.raises(error) as info:
        await defaults.sendmail(
            hostname=postfix.tls_hostname,
            port=postfix.smtps_port,
            sender=postfix.user,
            recipients=[postfix.address("never")],
            mail=b"Subject: x\r\n\r\nx\r\n",
            ssl_context=tls_context,
            timeouts=TIMEOUTS,
            connect=proxy,
        )
    assert isinstance(info.value, ts.SMTPConnectionError)
    assert text in str(info.value)
    if password is not None:
        assert password not in str(info.value) + repr(info.value) + repr(proxy) + caplog.text


async def test_tinyproxy_refuses_a_port_it_does_not_tunnel_to(
    postfix: PostfixEnv, proxies: ProxiesEnv
) -> None:
    proxy = make_proxy(proxies, "http-auth")
    assert postfix.plain_port not in proxies.connect_ports
    with pytest.raises(SMTPProxyRefused) as info:
        async with defaults.open_session(
            postfix.tls_hostname,
            port=postfix.plain_port,
            tls=ts.TLSMode.INSECURE_PLAINTEXT,
            timeouts=TIMEOUTS,
            connect=proxy,
        ):
            pass
    assert info.value.code == 403
