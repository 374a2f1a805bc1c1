"""The two one-shot functions of the seed: ``sendmail`` and ``sendmail_with_starttls``."""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from email.headerregistry import Address

from ._address import Domain, ForwardPath, Mailbox, ReversePath
from ._message import Mail
from ._sasl import Authentication
from ._session import Buffers, SendResult, Timeouts, TLSMode, open_session

__all__ = ["sendmail", "sendmail_with_starttls"]


async def sendmail(
    *,
    hostname: str,
    sender: ReversePath | Mailbox | str | Address,
    recipients: Iterable[ForwardPath | Mailbox | str | Address],
    mail: Mail,
    port: int = 465,
    domain: Domain | str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    authentication: Authentication | None = None,
    buffers: Buffers | None = None,
    timeouts: Timeouts = Timeouts(),  # noqa: B008 (frozen)
    pipelining: bool = True,
) -> SendResult:
    """Submit one message over implicit TLS (RFC 8314), port 465 by default.

    Opens a connection, performs the TLS handshake (certificate and host name
    verified, with SNI), sends EHLO, authenticates if *authentication* is given,
    sends the message, then QUIT, and closes the connection.

    Args:
        hostname: the server's domain name or IP address.
        sender: the reverse-path: a :class:`ReversePath`, a ``str``, an
            :class:`email.headerregistry.Address`, or ``""`` / ``"<>"`` for the null path.
        recipients: forward-paths (:class:`ForwardPath`, ``str`` or ``Address``).
        mail: the message (see :meth:`Session.send`).
        port: the server's port.
        domain: the EHLO name (default: the local FQDN, or an address literal).
        ssl_context: the seed's *authenticator*; default
            :func:`ssl.create_default_context`.
        authentication: credentials for AUTH, or ``None``.
        buffers: reusable I/O buffers (:class:`Buffers`).
        timeouts: per-phase bounds (:class:`Timeouts`).
        pipelining: use PIPELINING when offered.

    Returns:
        :class:`SendResult`: the final reply and any refused recipients.

    Raises:
        SMTPError: see :func:`open_session` and :meth:`Session.send`. The
        connection is always closed when this returns or raises.
    """
    async with open_session(
        hostname,
        port=port,
        tls=TLSMode.IMPLICIT,
        ssl_context=ssl_context,
        domain=domain,
        authentication=authentication,
        buffers=buffers,
        timeouts=timeouts,
        pipelining=pipelining,
    ) as session:
        return await session.send(sender, recipients, mail)


async def sendmail_with_starttls(
    *,
    hostname: str,
    sender: ReversePath | Mailbox | str | Address,
    recipients: Iterable[ForwardPath | Mailbox | str | Address],
    mail: Mail,
    port: int = 587,
    domain: Domain | str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    authentication: Authentication | None = None,
    buffers: Buffers | None = None,
    timeouts: Timeouts = Timeouts(),  # noqa: B008 (frozen)
    pipelining: bool = True,
) -> SendResult:
    """Submit one message over plain TCP upgraded with STARTTLS, port 587 by default.

    Same parameters as :func:`sendmail`. The server must offer STARTTLS: if it
    does not, :class:`SMTPNotSupportedError` is raised and nothing is sent in
    plaintext. The TCP stream is upgraded in place to a :class:`trio.SSLStream`
    (certificate and host name verified), and EHLO is sent again over TLS.
    """
    async with open_session(
        hostname,
        port=port,
        tls=TLSMode.STARTTLS,
        ssl_context=ssl_context,
        domain=domain,
        authentication=authentication,
        buffers=buffers,
        timeouts=timeouts,
        pipelining=pipelining,
    ) as session:
        return await session.send(sender, recipients, mail)
