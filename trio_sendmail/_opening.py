"""Opening a session: greeting, EHLO, STARTTLS and AUTH.

Theory of operation
-------------------
After the connection (and, for implicit TLS, the handshake; RFC 8314 §3.3):

1. the 220 greeting (RFC 5321 §4.3.1), then EHLO (§4.1.1.1), falling back to
   HELO only when the server does not know EHLO (500 or 502); under LMTP,
   LHLO instead, with no fallback (RFC 2033 §4.1);
2. with :attr:`TLSMode.STARTTLS`, STARTTLS is required (RFC 3207 §4): the same
   stream is upgraded in place, the certificate and host name are checked
   (with SNI), every capability learned before is forgotten, and EHLO is sent
   again (§4.2);
3. AUTH (RFC 4954) is refused over a connection without TLS before any
   credential is sent, unless the caller opted in; the mechanism is the
   strongest one both sides support.
"""

from __future__ import annotations

import ipaddress
import socket

import trio

from ._address import Domain, domain
from ._driver import Driver
from ._errors import SMTPInputError, SMTPNotSupportedError
from ._inputs import ehlo_ascii
from ._reply_errors import SMTPAuthenticationError, SMTPResponseError
from ._sasl import Authentication, OAuthBearerMechanism, choose_mechanism, usable_mechanisms
from ._settings import ConnectionSettings, TLSMode, default_ssl_context

__all__ = ["open_steps"]


async def open_steps(driver: Driver, config: ConnectionSettings) -> None:
    """Greet, secure and authenticate over *driver* (under its timer)."""
    core = driver.core
    core.lmtp = config.protocol == "lmtp"
    tls_mode = config.tls
    ssl_context = config.ssl_context
    if tls_mode is not TLSMode.INSECURE_PLAINTEXT and ssl_context is None:
        # Loading the system's CAs costs milliseconds: only when TLS is used.
        ssl_context = default_ssl_context()
    if tls_mode is TLSMode.IMPLICIT:
        assert ssl_context is not None
        await driver.handshake(ssl_context)
        core.tls = True
    greeting = await driver.event()
    if not greeting.reply.is_positive:
        raise SMTPResponseError.from_reply(greeting.reply, "CONNECT")
    name = config.domain or await _default_ehlo_name(driver.stream)
    await _ehlo(driver, name)
    if tls_mode is TLSMode.STARTTLS:
        caps = core.capabilities
        if caps is None or not caps.starttls:
            raise SMTPNotSupportedError(
                "the server does not offer STARTTLS (no plaintext fallback: "
                "use TLSMode.INSECURE_PLAINTEXT only for a trusted local relay)"
            )
        core.starttls()
        event = await driver.event()
        if not event.reply.is_positive:
            raise SMTPResponseError.from_reply(event.reply, "STARTTLS")
        assert ssl_context is not None
        await driver.handshake(ssl_context)
        core.tls_established()
        await _ehlo(driver, name)
    if config.authentication is not None:
        await _auth(driver, config.authentication, config.insecure_auth_over_plaintext)


async def _ehlo(driver: Driver, name: Domain) -> None:
    core = driver.core
    if core.lmtp:
        core.lhlo(name)
        event = await driver.event()
        if event.reply.is_positive:
            return
        raise SMTPResponseError.from_reply(event.reply, event.verb.value)
    core.ehlo(name)
    event = await driver.event()
    if event.reply.is_positive:
        return
    if event.reply.code in (500, 502):  # EHLO unknown: an RFC 821 server
        driver.core.helo(name)
        event = await driver.event()
        if event.reply.is_positive:
            return
    raise SMTPResponseError.from_reply(event.reply, event.verb.value)


async def _auth(driver: Driver, authentication: Authentication, insecure_plaintext: bool) -> None:
    core = driver.core
    if not core.tls and not insecure_plaintext:
        raise SMTPNotSupportedError(
            "refusing to send credentials over a connection without TLS "
            "(pass insecure_auth_over_plaintext=True to allow it)"
        )
    offered = core.capabilities.auth_mechanisms if core.capabilities is not None else frozenset()
    if not offered:
        raise SMTPNotSupportedError("the server does not offer AUTH")
    mechanism = choose_mechanism(authentication, offered, tls=core.tls)
    if mechanism is None:
        wanted = " or ".join(usable_mechanisms(authentication, tls=core.tls))
        raise SMTPNotSupportedError(
            f"the server offers AUTH {' '.join(sorted(offered))}, not {wanted}"
        )
    step = mechanism(authentication)
    if isinstance(step, OAuthBearerMechanism):
        step.host = driver.hostname
    await step.prepare()
    try:
        core.auth(step)
        event = await driver.event()
        while event.reply.code == 334:
            event = await driver.event()
    except SMTPAuthenticationError as exc:  # 235, but the server did not prove itself
        exc.details = step.error_details
        raise
    if event.reply.code != 235:
        step.failed()
        error = SMTPAuthenticationError.from_reply(event.reply, "AUTH")
        assert isinstance(error, SMTPAuthenticationError)
        error.details = step.error_details
        raise error


_default_name: Domain | None = None


async def _default_ehlo_name(stream: trio.abc.Stream) -> Domain:
    """The local FQDN when it is a valid domain name, else an address literal
    of the local end of the connection (RFC 5321 §4.1.4)."""
    global _default_name
    if _default_name is not None:
        return _default_name
    candidates = [socket.gethostname()]
    with trio.move_on_after(2):
        candidates.append(await trio.to_thread.run_sync(socket.getfqdn, abandon_on_cancel=True))
    for name in reversed(candidates):
        if "." in name and not name.endswith((".localdomain", ".local", ".localhost")):
            try:
                _default_name = domain(name)
                ehlo_ascii(_default_name)  # a name IDNA refuses is skipped
            except SMTPInputError:
                _default_name = None
                continue
            return _default_name
    return _local_literal(stream)


def _local_literal(stream: trio.abc.Stream) -> Domain:
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        host = stream.socket.getsockname()[0]
        return Domain.from_ip(ipaddress.ip_address(host.split("%", 1)[0]))
    return Domain.from_ip(ipaddress.ip_address("127.0.0.1"))
