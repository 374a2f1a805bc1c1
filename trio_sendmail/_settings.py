"""The settings of a connection: TLS mode, timeouts, I/O sizes, and
:class:`ConnectionSettings`, the validated parameters shared by
:func:`~trio_sendmail.open_session`, the pool and the bulk sender.

Ports: 465 for implicit TLS (RFC 8314 §3.3), 587 for submission with STARTTLS
(RFC 6409 §3.1), 25 for a local relay (RFC 5321 §4.5.4.2). Timeouts default to
RFC 5321 §4.5.3.2.
"""

from __future__ import annotations

import enum
import math
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypedDict

import attrs
import trio

from ._address import Domain
from ._address import domain as to_domain
from ._errors import SMTPInputError
from ._inputs import check_argument, ehlo_ascii
from ._sasl import Authentication

__all__ = [
    "DEFAULT_TIMEOUTS",
    "LMTP_PORT",
    "SMTP_PORT",
    "SUBMISSIONS_PORT",
    "SUBMISSION_PORT",
    "ConnectionOptions",
    "ConnectionSettings",
    "Connector",
    "MailProtocol",
    "TLSMode",
    "Timeouts",
    "connection_settings",
    "default_ssl_context",
]

#: RFC 8314 §3.3: submission over implicit TLS.
SUBMISSIONS_PORT = 465
#: RFC 6409 §3.1: message submission (with STARTTLS).
SUBMISSION_PORT = 587
#: RFC 5321 §4.5.4.2: relay between MTAs (a local relay listens here).
SMTP_PORT = 25
#: LMTP over TCP (RFC 2033 §5 forbids port 25; 24, "any private mail
#: system", is what LMTP servers such as Dovecot and Cyrus listen on).
LMTP_PORT = 24

#: The protocol a connection speaks: SMTP (RFC 5321) or LMTP (RFC 2033).
MailProtocol = Literal["smtp", "lmtp"]


class TLSMode(enum.Enum):
    """How the connection is secured."""

    #: TLS from the first byte (RFC 8314), port 465 by default.
    IMPLICIT = "implicit"
    #: Plain TCP, then STARTTLS, required (RFC 3207), port 587 by default.
    STARTTLS = "starttls"
    #: No TLS at all, for a trusted local relay (port 25 by default). Anyone on
    #: the path can read and change the mail. AUTH is refused on such a
    #: connection unless ``insecure_auth_over_plaintext=True``.
    INSECURE_PLAINTEXT = "insecure-plaintext"


@attrs.frozen
class Timeouts:
    """Bounds, in seconds, on each phase of the dialogue.

    The defaults are those of RFC 5321 §4.5.3.2. Use ``math.inf`` to disable one.
    The caller's own cancel scopes apply on top of these.
    """

    #: Opening the connection (not set by the RFC): TCP, or the whole of a
    #: ``connect`` callable, such as a proxy's handshake.
    connect: float = 60.0
    #: The TLS handshake, implicit or after STARTTLS (not set by the RFC).
    tls_handshake: float = 60.0
    #: §4.5.3.2.1: waiting for the 220 greeting.
    greeting: float = 300.0
    #: EHLO, STARTTLS, AUTH, RSET and NOOP (the RFC's 5 minutes).
    command: float = 300.0
    #: §4.5.3.2.2: the reply to MAIL.
    mail: float = 300.0
    #: §4.5.3.2.3: the reply to each RCPT.
    rcpt: float = 300.0
    #: §4.5.3.2.4: the 354 reply to DATA.
    data_init: float = 120.0
    #: §4.5.3.2.5: writing one block of message data.
    data_block: float = 180.0
    #: §4.5.3.2.6: the reply after the final dot (10 minutes: the server may
    #: be delivering; giving up sooner risks duplicates).
    data_end: float = 600.0
    #: The polite QUIT when closing (not set by the RFC).
    quit: float = 10.0

    def __attrs_post_init__(self) -> None:
        for field in attrs.fields(Timeouts):
            value = getattr(self, field.name)
            if not isinstance(value, int | float) or math.isnan(value) or value <= 0:
                raise ValueError(f"Timeouts.{field.name} must be a positive number, not {value!r}")


#: The one default :class:`Timeouts` (RFC 5321 §4.5.3.2).
DEFAULT_TIMEOUTS = Timeouts()


#: The smallest ``send_size`` and ``receive_size`` accepted.
MIN_IO_SIZE = 512


def _check_io_size(_instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name} must be an int, not {type(value).__name__}")
    if value < MIN_IO_SIZE:
        raise ValueError(f"{attribute.name} must be at least {MIN_IO_SIZE} bytes, not {value}")


_shared_context: ssl.SSLContext | None = None


def default_ssl_context() -> ssl.SSLContext:
    """``ssl.create_default_context()``, made once per process (it verifies
    certificates and host names, and loads the system's CAs)."""
    global _shared_context
    if _shared_context is None:
        _shared_context = ssl.create_default_context()
    return _shared_context


def _check_hostname(hostname: str) -> str:
    if not isinstance(hostname, str) or not hostname:
        raise SMTPInputError("hostname must be a non-empty str")
    check_argument(hostname, "the hostname", utf8=True)
    if " " in hostname:
        raise SMTPInputError(f"hostname {hostname!r} contains a space")
    return hostname


def _default_port(tls: TLSMode) -> int:
    return {
        TLSMode.IMPLICIT: SUBMISSIONS_PORT,
        TLSMode.STARTTLS: SUBMISSION_PORT,
        TLSMode.INSECURE_PLAINTEXT: SMTP_PORT,
    }[tls]


def _ehlo_domain(value: Domain | str | None) -> Domain | None:
    """The EHLO name as a :class:`Domain`, checked now (not after connecting)."""
    if value is None:
        return None
    name = to_domain(value)
    ehlo_ascii(name)
    return name


def _check_hostname_field(_instance: object, _attribute: object, value: str) -> None:
    _check_hostname(value)


def _check_port(_instance: object, _attribute: object, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise SMTPInputError(f"invalid port {value!r}")


_Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]

#: What opens the byte stream to the server: an async callable taking the
#: server's host name and port, like :func:`trio.open_tcp_stream` (the default),
#: or a proxy from :mod:`trio_sendmail.proxy`.
Connector = Callable[[str, int], Awaitable[trio.abc.Stream]]


def _check_connect(_instance: object, _attribute: object, value: Connector | None) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"connect must be an async callable or None, not {type(value).__name__}")


def _check_protocol(_instance: object, _attribute: object, value: object) -> None:
    if value not in ("smtp", "lmtp"):
        raise SMTPInputError(f'protocol must be "smtp" or "lmtp", not {value!r}')


def _socket_path(value: str | os.PathLike[str] | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike):
        raise TypeError(f"unix_socket must be a path or None, not {type(value).__name__}")
    path = os.fspath(value)
    if not isinstance(path, str) or not path or "\x00" in path:
        raise SMTPInputError(f"invalid Unix socket path {value!r}")
    return path


def _check_unix_socket(
    instance: ConnectionSettings, _attribute: object, value: str | None
) -> None:
    if value is not None and instance.connect is not None:
        raise SMTPInputError("unix_socket and connect cannot be used together")


def _check_type(kind: type, text: str, *, optional: bool = True) -> _Validator:
    def check(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if (value is None and optional) or isinstance(value, kind):
            return
        raise TypeError(f"{attribute.name} must be {text}, not {type(value).__name__}")

    return check


@attrs.frozen
class ConnectionSettings:
    """Where and how to connect: one value for :func:`~trio_sendmail.open_session`,
    :func:`~trio_sendmail.open_pool` and :func:`~trio_sendmail.send_bulk`.

    Every argument is checked when the value is made, before any I/O: a
    malformed hostname, port or EHLO name raises :class:`SMTPInputError`, an
    argument of the wrong type :class:`TypeError`. The repr never shows the
    credentials or the TLS context. Derive a variant with :func:`attrs.evolve`;
    those functions do so when given both a value and keyword arguments
    (``open_session(settings, timeouts=...)``).

    Args:
        hostname: the server's domain name or IP address; also the name its
            certificate must carry (checked, with SNI).
        port: ``None`` (the default) for the port of the TLS mode: 465
            (implicit TLS), 587 (STARTTLS) or 25 (plaintext); see
            :attr:`resolved_port`.
        tls: :class:`TLSMode`.
        ssl_context: trust and TLS settings, ``sendmail-lwt``'s *authenticator*;
            the default is :func:`ssl.create_default_context`, which verifies
            the certificate against the system's CAs (made once per process,
            when TLS is first used: pass your own context to pick up a CA
            bundle that changed since).
        domain: the EHLO name (a :class:`Domain`, or a ``str`` parsed as one);
            by default the local FQDN, or else an address literal of the local
            end of the connection.
        authentication: credentials for AUTH, or ``None`` to skip AUTH.
        insecure_auth_over_plaintext: allow AUTH on a connection without TLS.
            Anyone on the path can read the password. Off by default.
        timeouts: the bound of each phase (RFC 5321 §4.5.3.2 by default).
        pipelining: use PIPELINING (RFC 2920) when the server offers it.
        chunking: send messages with BDAT (CHUNKING, RFC 3030) when the server
            offers it: no dot-stuffing, and a small message costs one round
            trip with pipelining.
        connect: what opens the byte stream to the server: ``None`` (the
            default) for :func:`trio.open_tcp_stream`, or an async callable
            ``connect(hostname, port) -> trio.abc.Stream`` such as a proxy of
            :mod:`trio_sendmail.proxy` (:class:`~trio_sendmail.proxy.SOCKS5Proxy`,
            :class:`~trio_sendmail.proxy.HTTPConnectProxy`). TLS and STARTTLS
            still happen over the stream it returns, with *hostname* for SNI
            and the certificate check. It runs under ``Timeouts.connect``; an
            :class:`OSError` or a broken stream it raises becomes
            :class:`~trio_sendmail.SMTPConnectionError`. Not in the repr.
        protocol: ``"smtp"`` (the default) or ``"lmtp"``: LMTP (RFC 2033)
            greets with ``LHLO`` and gets one reply per recipient after the
            end of data, reported in :attr:`SendResult.final_replies
            <trio_sendmail.SendResult.final_replies>`; a message delivered to
            some recipients only raises
            :class:`~trio_sendmail.SMTPPartialDelivery`. With LMTP, the
            default port is 24.
        unix_socket: the path of a Unix-domain socket to connect to instead
            of TCP (an LMTP server's usual home); *hostname* then only names
            the server (for TLS, if any) and *port* is not used. Not with
            *connect*.
        send_size: the most bytes written at once (at least 512; 64 KiB by
            default). Message data is gathered up to this size before a write,
            a larger chunk of the caller's is written in pieces of this size,
            each under its own ``Timeouts.data_block`` bound, and it is the size
            of every BDAT chunk but the last. With the chunk being encoded, it
            bounds the memory a message costs, whatever its length.
        receive_size: the most bytes asked of the stream in one read (at least
            512; 16 KiB by default). A reply is bounded by the parser whatever
            this size: 64 KiB, in 256 lines of at most 4 KiB.
    """

    hostname: str = attrs.field(validator=_check_hostname_field)
    port: int | None = attrs.field(default=None, kw_only=True, validator=_check_port)
    tls: TLSMode = attrs.field(
        default=TLSMode.IMPLICIT, kw_only=True,
        validator=_check_type(TLSMode, "a TLSMode", optional=False),
    )  # fmt: skip
    ssl_context: ssl.SSLContext | None = attrs.field(
        default=None, kw_only=True, repr=False,
        validator=_check_type(ssl.SSLContext, "an ssl.SSLContext or None"),
    )  # fmt: skip
    domain: Domain | None = attrs.field(default=None, kw_only=True, converter=_ehlo_domain)
    authentication: Authentication | None = attrs.field(
        default=None, kw_only=True, repr=False,
        validator=_check_type(Authentication, "an Authentication or None"),
    )  # fmt: skip
    insecure_auth_over_plaintext: bool = attrs.field(default=False, kw_only=True)
    timeouts: Timeouts = attrs.field(
        default=DEFAULT_TIMEOUTS, kw_only=True,
        validator=_check_type(Timeouts, "a Timeouts", optional=False),
    )  # fmt: skip
    pipelining: bool = attrs.field(default=True, kw_only=True)
    chunking: bool = attrs.field(default=True, kw_only=True)
    connect: Connector | None = attrs.field(
        default=None, kw_only=True, repr=False, validator=_check_connect
    )
    protocol: MailProtocol = attrs.field(default="smtp", kw_only=True, validator=_check_protocol)
    unix_socket: str | None = attrs.field(
        default=None, kw_only=True, converter=_socket_path, validator=_check_unix_socket
    )
    send_size: int = attrs.field(default=64 * 1024, kw_only=True, validator=_check_io_size)
    receive_size: int = attrs.field(default=16 * 1024, kw_only=True, validator=_check_io_size)

    @property
    def resolved_port(self) -> int:
        """:attr:`port`, or the default port of :attr:`tls` when it is ``None``
        (24 for LMTP).

        The port is resolved when it is used, not when the value is made, so
        that ``attrs.evolve(settings, tls=TLSMode.STARTTLS)`` moves to port 587.
        """
        if self.port is not None:
            return self.port
        return LMTP_PORT if self.protocol == "lmtp" else _default_port(self.tls)


class ConnectionOptions(TypedDict, total=False):
    """The keyword arguments of :class:`ConnectionSettings` but *hostname*: what
    :func:`~trio_sendmail.open_session`, :func:`~trio_sendmail.open_pool` and
    :func:`~trio_sendmail.send_bulk` take after the server, for
    ``**options: Unpack[ConnectionOptions]``: ``port``, ``tls``,
    ``ssl_context``, ``domain``, ``authentication``,
    ``insecure_auth_over_plaintext``, ``timeouts``, ``pipelining``,
    ``chunking``, ``connect``, ``protocol``, ``unix_socket``, ``send_size`` and
    ``receive_size``. See :class:`ConnectionSettings` for their meaning and
    defaults."""

    port: int | None
    tls: TLSMode
    ssl_context: ssl.SSLContext | None
    domain: Domain | str | None
    authentication: Authentication | None
    insecure_auth_over_plaintext: bool
    timeouts: Timeouts
    pipelining: bool
    chunking: bool
    connect: Connector | None
    protocol: MailProtocol
    unix_socket: str | os.PathLike[str] | None
    send_size: int
    receive_size: int


def connection_settings(
    server: str | ConnectionSettings, options: ConnectionOptions
) -> ConnectionSettings:
    """*server* as :class:`ConnectionSettings`, with *options* applied."""
    if isinstance(server, ConnectionSettings):
        return attrs.evolve(server, **options) if options else server
    return ConnectionSettings(server, **options)
