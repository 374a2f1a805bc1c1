"""The settings of a connection: TLS mode, timeouts, buffers, and the
validated parameters shared by :func:`~trio_sendmail.open_session` and the pool.

Ports: 465 for implicit TLS (RFC 8314 §3.3), 587 for submission with STARTTLS
(RFC 6409 §3.1), 25 for a local relay (RFC 5321 §4.5.4.2). Timeouts default to
RFC 5321 §4.5.3.2.
"""

from __future__ import annotations

import enum
import math
import ssl

import attrs
import trio

from ._address import Domain
from ._address import domain as to_domain
from ._errors import SMTPInputError
from ._inputs import check_argument, ehlo_ascii
from ._sasl import Authentication

__all__ = [
    "SMTP_PORT",
    "SUBMISSIONS_PORT",
    "SUBMISSION_PORT",
    "Buffers",
    "SessionConfig",
    "TLSMode",
    "Timeouts",
    "default_ssl_context",
]

#: RFC 8314 §3.3: submission over implicit TLS.
SUBMISSIONS_PORT = 465
#: RFC 6409 §3.1: message submission (with STARTTLS).
SUBMISSION_PORT = 587
#: RFC 5321 §4.5.4.2: relay between MTAs (a local relay listens here).
SMTP_PORT = 25


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

    #: Opening the TCP connection (not set by the RFC).
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


class Buffers:
    """Reusable I/O buffers, the counterpart of ``sendmail-lwt``'s pre-allocated
    encoder and decoder.

    A :class:`Buffers` can be handed to many sessions in turn; a session holds
    it from the moment it connects until it is closed. Using it in two sessions
    at once raises :class:`trio.BusyResourceError`.

    Args:
        send_size: the most message bytes gathered before one write; small
            chunks are coalesced up to this size, and a chunk larger than it is
            written on its own. With the chunk being encoded, this bounds the
            memory a message costs, whatever its length.
        receive_size: the most bytes asked of the stream in one read. Replies
            are also bounded by the parser (see :data:`MAX_REPLY_SIZE`).
    """

    def __init__(self, *, send_size: int = 64 * 1024, receive_size: int = 16 * 1024) -> None:
        if send_size < 512 or receive_size < 512:
            raise ValueError("buffer sizes must be at least 512 bytes")
        self.send_size = send_size
        self.receive_size = receive_size
        #: Message data gathered before a write.
        self.send_buffer = bytearray()
        #: Commands queued by the core before a write.
        self.command_buffer = bytearray()
        #: Received bytes not yet parsed into replies.
        self.receive_buffer = bytearray()
        self._in_use = False

    def __repr__(self) -> str:
        return f"<Buffers send_size={self.send_size} receive_size={self.receive_size}>"

    def _acquire(self) -> None:
        if self._in_use:
            raise trio.BusyResourceError("these Buffers are in use by another session")
        self._in_use = True

    def _release(self) -> None:
        self._in_use = False
        del self.send_buffer[:]
        del self.command_buffer[:]
        del self.receive_buffer[:]


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


@attrs.frozen
class SessionConfig:
    """Validated connection parameters (shared by open_session and the pool)."""

    hostname: str
    port: int
    tls: TLSMode
    ssl_context: ssl.SSLContext | None = attrs.field(repr=False)
    ehlo_name: Domain | None
    authentication: Authentication | None = attrs.field(repr=False)
    insecure_auth_over_plaintext: bool
    timeouts: Timeouts
    pipelining: bool
    chunking: bool

    @classmethod
    def make(
        cls,
        hostname: str,
        *,
        port: int | None,
        tls: TLSMode,
        ssl_context: ssl.SSLContext | None,
        domain: Domain | str | None,
        authentication: Authentication | None,
        insecure_auth_over_plaintext: bool,
        timeouts: Timeouts,
        pipelining: bool,
        chunking: bool,
    ) -> SessionConfig:
        _check_hostname(hostname)
        if not isinstance(tls, TLSMode):
            raise TypeError("tls must be a TLSMode")
        if port is None:
            port = _default_port(tls)
        if not isinstance(port, int) or not 0 < port < 65536:
            raise SMTPInputError(f"invalid port {port!r}")
        ehlo_name = None
        if domain is not None:
            ehlo_name = to_domain(domain)
            ehlo_ascii(ehlo_name)  # raises now, not after connecting
        return cls(
            hostname=hostname,
            port=port,
            tls=tls,
            ssl_context=ssl_context,
            ehlo_name=ehlo_name,
            authentication=authentication,
            insecure_auth_over_plaintext=insecure_auth_over_plaintext,
            timeouts=timeouts,
            pipelining=pipelining,
            chunking=chunking,
        )
