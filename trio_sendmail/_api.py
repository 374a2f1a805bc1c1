"""The two one-shot functions of ``sendmail-lwt``: ``sendmail`` and ``sendmail_with_starttls``.

Both run the same steps (:func:`_send_one`):

1. every check that needs no connection, so that a caller mistake raises
   before anything is opened, handshaken or authenticated (docs/errors.rst);
2. connect, secure, greet and authenticate (:func:`_session._connect`);
3. send the message;
4. close. Once the server has answered the end of the data, the answer is what
   the caller needs: the QUIT that follows is best effort, shielded from the
   caller's cancellation and bounded by ``Timeouts.quit`` (a deadline that fires
   during QUIT must not turn a queued message into an unknown outcome). On every
   other path the session is closed as ``async with open_session()`` closes it.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from email.headerregistry import Address

import trio

from ._address import Domain, ForwardPath, Mailbox, ReversePath
from ._dsn import DSN
from ._errors import Outcome, SMTPError
from ._inputs import envelope, mail_body, message_envelope
from ._message import Mail
from ._plan import Options, message_options
from ._sasl import Authentication
from ._session import _connect
from ._settings import (
    DEFAULT_TIMEOUTS,
    ConnectionSettings,
    Connector,
    Timeouts,
    TLSMode,
)
from ._transaction import OutcomeTracker, SendResult, settle_error

__all__ = ["sendmail", "sendmail_with_starttls"]


async def sendmail(
    *,
    hostname: str,
    sender: ReversePath | Mailbox | str | Address | None = None,
    recipients: Iterable[ForwardPath | Mailbox | str | Address] | None = None,
    mail: Mail,
    port: int = 465,
    domain: Domain | str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    authentication: Authentication | None = None,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    pipelining: bool = True,
    dsn: DSN | None = None,
    requiretls: bool = False,
    binary: bool = False,
    tracker: OutcomeTracker | None = None,
    connect: Connector | None = None,
) -> SendResult:
    """Submit one message over implicit TLS (RFC 8314), port 465 by default.

    Checks every argument, then opens a connection, performs the TLS handshake
    (certificate and host name verified, with SNI), sends EHLO, authenticates if
    *authentication* is given, sends the message, then QUIT, and closes the
    connection. The connection arguments make a :class:`ConnectionSettings`;
    the per-message ones (``dsn``, ``requiretls``, ``binary``) are those of
    :meth:`Session.send`.

    Args:
        hostname: the server's domain name or IP address.
        sender: the reverse-path: a :class:`ReversePath`, a ``str``, an
            :class:`email.headerregistry.Address`, or ``""`` / ``"<>"`` for the
            null path. Omitted (``None``), it is read from *mail*'s ``Sender``
            or ``From`` field (see :meth:`Session.send`).
        recipients: forward-paths (:class:`ForwardPath`, ``str`` or ``Address``);
            an iterable of them, not a single one. Duplicates are sent once.
            Omitted (``None``), they are read from *mail*'s ``To``, ``Cc`` and
            ``Bcc`` fields (see :meth:`Session.send`).
        mail: the message (see :meth:`Session.send`): an
            :class:`email.message.EmailMessage` is sent without its ``Bcc``
            fields; bytes and streams are sent as given.
        port: the server's port.
        domain: the EHLO name (default: the local FQDN, or an address literal).
        ssl_context: ``sendmail-lwt``'s *authenticator*; default
            :func:`ssl.create_default_context`.
        authentication: credentials for AUTH, or ``None``.
        timeouts: per-phase bounds (:class:`Timeouts`).
        pipelining: use PIPELINING when offered.
        dsn: delivery status notification options (RFC 3461); the server
            must offer DSN.
        requiretls: ask for REQUIRETLS (RFC 8689): every hop must use TLS;
            the server must offer it.
        binary: send the message unaltered as ``BODY=BINARYMIME`` over BDAT
            (RFC 3030); the server must offer CHUNKING and BINARYMIME.
        tracker: an :class:`OutcomeTracker` that tells the message's outcome
            however this call ends, cancellation included.
        connect: what opens the stream to the server, e.g. a proxy of
            :mod:`trio_sendmail.proxy`; ``None`` for :func:`trio.open_tcp_stream`
            (see :class:`ConnectionSettings`). TLS runs over that stream, for
            *hostname*.

    Returns:
        :class:`SendResult`: the final reply and any refused recipients. Once
        the server has answered the end of the data, the answer is returned (or
        raised) even if the caller's deadline fires during the QUIT that
        follows: that QUIT is shielded and bounded by ``Timeouts.quit``.

    Raises:
        SMTPInputError: a malformed hostname, port, sender, recipient or EHLO
            name (one with no ASCII form), no recipient, or no sender or
            recipients given with a *mail* that has no headers to read them
            from (bytes or a stream), raised before any I/O.
        TypeError: *recipients* is a single address, *mail* is a ``str`` or
            not a message, or an argument is of the wrong type (raised before
            any I/O).
        SMTPNotSupportedError: the server lacks an extension the message or
            *dsn*, *requiretls* or *binary* needs (raised before the message
            is sent).
        SMTPError: see :func:`open_session` and :meth:`Session.send`. The
            connection is always closed when this returns or raises.
    """
    settings = ConnectionSettings(
        hostname,
        port=port,
        tls=TLSMode.IMPLICIT,
        ssl_context=ssl_context,
        domain=domain,
        authentication=authentication,
        timeouts=timeouts,
        pipelining=pipelining,
        connect=connect,
    )
    options = message_options(dsn, requiretls, binary)
    return await _send_one(settings, sender, recipients, mail, options, tracker)


async def sendmail_with_starttls(
    *,
    hostname: str,
    sender: ReversePath | Mailbox | str | Address | None = None,
    recipients: Iterable[ForwardPath | Mailbox | str | Address] | None = None,
    mail: Mail,
    port: int = 587,
    domain: Domain | str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    authentication: Authentication | None = None,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    pipelining: bool = True,
    dsn: DSN | None = None,
    requiretls: bool = False,
    binary: bool = False,
    tracker: OutcomeTracker | None = None,
    connect: Connector | None = None,
) -> SendResult:
    """Submit one message over plain TCP upgraded with STARTTLS, port 587 by default.

    Same parameters, checks and result as :func:`sendmail`. The server must
    offer STARTTLS: if it does not, :class:`SMTPNotSupportedError` is raised and
    nothing is sent in plaintext. The TCP stream is upgraded in place to a
    :class:`trio.SSLStream` (certificate and host name verified), and EHLO is
    sent again over TLS.
    """
    settings = ConnectionSettings(
        hostname,
        port=port,
        tls=TLSMode.STARTTLS,
        ssl_context=ssl_context,
        domain=domain,
        authentication=authentication,
        timeouts=timeouts,
        pipelining=pipelining,
        connect=connect,
    )
    options = message_options(dsn, requiretls, binary)
    return await _send_one(settings, sender, recipients, mail, options, tracker)


def _check_types(options: Options) -> None:
    """Refuse an argument of the wrong type before connecting (it would fail
    later, after the connection, the TLS handshake or even AUTH).
    :class:`ConnectionSettings` checks the connection's arguments."""
    if options.dsn is not None and not isinstance(options.dsn, DSN):
        raise TypeError("dsn must be a DSN or None")


def _answered(exc: BaseException) -> bool:
    """True when *exc* carries the server's answer to the end of the data."""
    return isinstance(exc, SMTPError) and exc.outcome is Outcome.REFUSED


async def _send_one(
    config: ConnectionSettings,
    sender: ReversePath | Mailbox | str | Address | None,
    recipients: Iterable[ForwardPath | Mailbox | str | Address] | None,
    mail: Mail,
    options: Options,
    tracker: OutcomeTracker | None,
) -> SendResult:
    # 1. Every input check, before any I/O (ConnectionSettings checked its own).
    _check_types(options)
    try:
        sender, recipients, mail = message_envelope(sender, recipients, mail)
        rpath, fpaths = envelope(sender, recipients)
    except SMTPError as exc:  # a bad address: the message was not sent
        settle_error(exc, None)
        raise
    body = mail_body(mail)  # a Message is serialised once, here
    # 2. Connect, secure, greet, authenticate (closed if this raises).
    session = await _connect(config, stream=None)
    # 3. Send.
    try:
        result = await session._send_op(rpath, fpaths, body, options, tracker=tracker)
        assert result is not None
    except BaseException as exc:
        if _answered(exc):
            # The message was refused after the end of the data: that refusal
            # is the answer the caller needs; QUIT must not lose it.
            with trio.CancelScope(shield=True):
                await session.aclose()
        else:
            await session.aclose()
        raise
    # 4. The message is queued: QUIT is best effort, bounded by Timeouts.quit
    # (inside aclose), and the caller's deadline cannot throw the result away.
    with trio.CancelScope(shield=True):
        await session.aclose()
    return result
