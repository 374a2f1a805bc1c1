"""The exception hierarchy of trio_sendmail.

Every exception the library raises on purpose derives from :class:`SMTPError`.
Errors that carry a server reply derive from :class:`SMTPResponseError`; each
concrete response error exists in a *transient* (4xx) and a *permanent* (5xx)
flavour, so that ``except SMTPTransientError`` catches every retryable refusal
whatever command it answered, while ``except SMTPSenderRefused`` still catches
both flavours of a refused sender.

Caller mistakes (a malformed address, CR/LF injection) raise
:class:`SMTPInputError`, which is also a :class:`ValueError`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ._address import ForwardPath
    from ._reply import EnhancedStatus, Reply

__all__ = [
    "Outcome",
    "SMTPAddressError",
    "SMTPAuthenticationError",
    "SMTPConnectionError",
    "SMTPError",
    "SMTPInputError",
    "SMTPMessageTooLarge",
    "SMTPNotSupportedError",
    "SMTPPermanentError",
    "SMTPProtocolError",
    "SMTPRecipientsRefused",
    "SMTPResponseError",
    "SMTPSenderRefused",
    "SMTPServiceClosing",
    "SMTPTLSError",
    "SMTPTimeoutError",
    "SMTPTransientError",
]


class Outcome(enum.Enum):
    """What became of a message, derived from what went over the wire.

    Every :class:`SMTPError` raised while a message was being sent carries one
    of these (never ``ACCEPTED``) in its :attr:`SMTPError.outcome` attribute;
    an :class:`OutcomeTracker` given to a send holds one after any return,
    error or cancellation.
    """

    #: The server answered the end of the data with 2xx: it took the message.
    ACCEPTED = "accepted"

    #: The final dot (or ``BDAT … LAST``) never went out: the server cannot have
    #: accepted the message, and sending it again will not duplicate it.
    NOT_SENT = "not sent"
    #: The server received the whole message and refused it (a 4xx or 5xx reply
    #: to the final dot): it was not accepted.
    REFUSED = "refused"
    #: The end of the data went out but no reply came back (timeout, lost
    #: connection, cancellation): the server may or may not have queued it.
    #: Resending risks a duplicate.
    UNKNOWN = "unknown"


class SMTPError(Exception):
    """Base class of every error raised by trio_sendmail."""

    #: For errors raised while sending a message: whether the message can
    #: have been accepted. ``None`` when no message was involved.
    outcome: Outcome | None = None


class SMTPInputError(SMTPError, ValueError):
    """The caller passed a value that cannot be sent (raised before any I/O)."""


class SMTPAddressError(SMTPInputError):
    """A mailbox, path or domain is malformed or too long (RFC 5321 §4.1.2, §4.5.3.1)."""


class SMTPConnectionError(SMTPError):
    """The connection could not be opened, or it was lost.

    The session is unusable afterwards.
    """


class SMTPTLSError(SMTPConnectionError):
    """The TLS handshake failed: bad certificate, wrong hostname, or a broken peer."""


class SMTPTimeoutError(SMTPError, TimeoutError):
    """A phase of the dialogue took longer than its :class:`~trio_sendmail.Timeouts` bound.

    Attributes:
        phase: the name of the timed-out phase, e.g. ``"greeting"`` or ``"data_end"``.
    """

    def __init__(self, message: str, *, phase: str) -> None:
        super().__init__(message)
        self.phase = phase


class SMTPProtocolError(SMTPError):
    """The server broke the SMTP protocol (malformed, over-long or unexpected replies,
    or bytes injected before a TLS handshake). The session is unusable afterwards."""


class SMTPNotSupportedError(SMTPError):
    """Something the send needs is not offered by the server (STARTTLS, an AUTH
    mechanism, SMTPUTF8, 8BITMIME, …), or is refused by policy (AUTH without TLS).

    It is raised before the corresponding data is sent.
    """


class SMTPMessageTooLarge(SMTPNotSupportedError):
    """The message is known to exceed the server's declared ``SIZE`` limit (RFC 1870)."""

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class SMTPTransientError(SMTPError):
    """Marker base: the failure is temporary (an SMTP 4xx reply); retrying later may work."""

    is_transient: ClassVar[bool] = True


class SMTPPermanentError(SMTPError):
    """Marker base: the failure is permanent (an SMTP 5xx reply); do not retry as is."""

    is_transient: ClassVar[bool] = False


def _flavours(cls: type[SMTPError]) -> None:
    """Give a response-error class its transient and permanent subclasses."""
    for marker, word in ((SMTPTransientError, "Transient"), (SMTPPermanentError, "Permanent")):
        sub = type(
            cls.__name__,
            (cls, marker),
            {"__module__": cls.__module__, "__qualname__": f"{cls.__qualname__}.{word}"},
        )
        setattr(cls, word, sub)


class SMTPResponseError(SMTPError):
    """The server refused a command with a 4xx or 5xx reply.

    Do not instantiate directly; use :meth:`from_reply`, which picks the
    transient or permanent flavour from the reply code.

    Attributes:
        reply: the whole :class:`~trio_sendmail.Reply`.
        command: the verb of the refused command (``"MAIL"``, ``"RCPT"``, ``"DATA"``,
            ``"."`` for the end of data, ``"CONNECT"`` for the greeting, …).
    """

    Transient: ClassVar[type[SMTPResponseError]]
    Permanent: ClassVar[type[SMTPResponseError]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not issubclass(cls, SMTPTransientError | SMTPPermanentError):
            _flavours(cls)

    def __init__(self, reply: Reply, command: str, *, message: str | None = None) -> None:
        self.reply = reply
        self.command = command
        super().__init__(message or f"{command} refused: {reply}")

    @classmethod
    def from_reply(
        cls, reply: Reply, command: str, *, message: str | None = None
    ) -> SMTPResponseError:
        """Build the flavour of *cls* that matches *reply*'s class (4xx or 5xx)."""
        flavour = cls.Transient if 400 <= reply.code < 500 else cls.Permanent
        return flavour(reply, command, message=message)

    @property
    def code(self) -> int:
        """The three-digit reply code."""
        return self.reply.code

    @property
    def enhanced_status(self) -> EnhancedStatus | None:
        """The RFC 3463 enhanced status code, when the server sent one."""
        return self.reply.enhanced_status

    @property
    def lines(self) -> tuple[str, ...]:
        """The reply's text lines (without code or enhanced status)."""
        return self.reply.lines

    @property
    def is_transient(self) -> bool:
        """True for a 4xx reply (retry later), False for a 5xx one."""
        return 400 <= self.reply.code < 500


class SMTPServiceClosing(SMTPResponseError):
    """The server answered 421: it is closing the connection (always transient)."""


class SMTPSenderRefused(SMTPResponseError):
    """``MAIL FROM`` was refused."""


class SMTPAuthenticationError(SMTPResponseError):
    """Authentication failed (e.g. 535, 534, 538), or the server's proof was wrong.

    Attributes:
        details: what the server said about the refusal inside the SASL
            exchange, when the mechanism carries it: the JSON object of an OAuth
            error challenge (RFC 7628 §3.2.2), or ``{"e": ...}`` for a SCRAM
            server error; else ``None``.
    """

    details: dict[str, Any] | None = None


class SMTPRecipientsRefused(SMTPError):
    """Every recipient was refused; nothing was sent.

    Attributes:
        refused: each refused recipient with the server's reply.
    """

    Transient: ClassVar[type[SMTPRecipientsRefused]]
    Permanent: ClassVar[type[SMTPRecipientsRefused]]

    def __init__(self, refused: Mapping[ForwardPath, Reply]) -> None:
        self.refused = dict(refused)
        detail = "; ".join(f"{path}: {reply}" for path, reply in self.refused.items())
        super().__init__(f"all recipients refused: {detail}")

    @classmethod
    def from_replies(cls, refused: Mapping[ForwardPath, Reply]) -> SMTPRecipientsRefused:
        """Transient only when every refusal was a 4xx reply."""
        transient = all(400 <= reply.code < 500 for reply in refused.values())
        return (cls.Transient if transient else cls.Permanent)(refused)

    @property
    def is_transient(self) -> bool:
        """True when every refusal was temporary (4xx)."""
        return all(400 <= reply.code < 500 for reply in self.refused.values())


_flavours(SMTPRecipientsRefused)
_flavours(SMTPResponseError)
