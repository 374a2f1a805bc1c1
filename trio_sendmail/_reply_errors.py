"""The errors that carry the server's replies.

They live one floor above :mod:`~trio_sendmail._errors` (which imports nothing
from the package) because they hold a :class:`~trio_sendmail.Reply` and, for
:class:`SMTPRecipientsRefused`, a :class:`~trio_sendmail.ForwardPath`:
``_errors`` ← ``_address``, ``_reply`` ← ``_reply_errors``, with no cycle.

Transient and permanent flavours
--------------------------------
Each concrete reply error exists in two flavours, written out below as plain
subclasses: ``X.Transient`` (also an :class:`SMTPTransientError`) for a 4xx
reply and ``X.Permanent`` (also an :class:`SMTPPermanentError`) for a 5xx one.
So ``except SMTPTransientError`` catches every retryable refusal whatever
command it answered, while ``except SMTPSenderRefused`` still catches both
flavours of a refused sender. :meth:`SMTPResponseError.from_reply` and
:meth:`SMTPRecipientsRefused.from_replies` pick the flavour; nothing else
creates these errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from ._address import ForwardPath
from ._errors import SMTPError, SMTPPermanentError, SMTPTransientError
from ._reply import EnhancedStatus, Reply

__all__ = [
    "SMTPAuthenticationError",
    "SMTPRecipientsRefused",
    "SMTPResponseError",
    "SMTPSenderRefused",
    "SMTPServiceClosing",
]


class SMTPResponseError(SMTPError):
    """The server refused a command with a 4xx or 5xx reply.

    Do not instantiate directly; use :meth:`from_reply`, which picks the
    transient or permanent flavour from the reply code.

    Attributes:
        reply: the whole :class:`~trio_sendmail.Reply`.
        command: the verb of the refused command (``"MAIL"``, ``"RCPT"``, ``"DATA"``,
            ``"."`` for the end of data, ``"CONNECT"`` for the greeting, …).
    """

    #: The flavour for a 4xx reply (also an :class:`SMTPTransientError`).
    Transient: ClassVar[type[SMTPResponseError]]
    #: The flavour for a 5xx reply (also an :class:`SMTPPermanentError`).
    Permanent: ClassVar[type[SMTPResponseError]]

    def __init__(self, reply: Reply, command: str, *, message: str | None = None) -> None:
        self.reply = reply
        self.command = command
        super().__init__(message or f"{command} refused: {reply}")

    @classmethod
    def from_reply(
        cls, reply: Reply, command: str, *, message: str | None = None
    ) -> SMTPResponseError:
        """Build the flavour of *cls* that matches *reply*'s class (4xx or 5xx)."""
        flavour = cls.Transient if reply.is_transient else cls.Permanent
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
        return self.reply.is_transient


class SMTPResponseErrorTransient(SMTPResponseError, SMTPTransientError):
    """:class:`SMTPResponseError` with a 4xx reply."""


class SMTPResponseErrorPermanent(SMTPResponseError, SMTPPermanentError):
    """:class:`SMTPResponseError` with a 5xx reply."""


SMTPResponseError.Transient = SMTPResponseErrorTransient
SMTPResponseError.Permanent = SMTPResponseErrorPermanent


class SMTPServiceClosing(SMTPResponseError):
    """The server answered 421: it is closing the connection (always transient)."""


class SMTPServiceClosingTransient(SMTPServiceClosing, SMTPTransientError):
    """:class:`SMTPServiceClosing` with a 4xx reply (421)."""


class SMTPServiceClosingPermanent(SMTPServiceClosing, SMTPPermanentError):
    """:class:`SMTPServiceClosing` with a 5xx reply (never built from a 421)."""


SMTPServiceClosing.Transient = SMTPServiceClosingTransient
SMTPServiceClosing.Permanent = SMTPServiceClosingPermanent


class SMTPSenderRefused(SMTPResponseError):
    """``MAIL FROM`` was refused."""


class SMTPSenderRefusedTransient(SMTPSenderRefused, SMTPTransientError):
    """:class:`SMTPSenderRefused` with a 4xx reply."""


class SMTPSenderRefusedPermanent(SMTPSenderRefused, SMTPPermanentError):
    """:class:`SMTPSenderRefused` with a 5xx reply."""


SMTPSenderRefused.Transient = SMTPSenderRefusedTransient
SMTPSenderRefused.Permanent = SMTPSenderRefusedPermanent


class SMTPAuthenticationError(SMTPResponseError):
    """Authentication failed (e.g. 535, 534, 538), or the server's proof was wrong.

    Attributes:
        details: what the server said about the refusal inside the SASL
            exchange, when the mechanism carries it: the JSON object of an OAuth
            error challenge (RFC 7628 §3.2.2), or ``{"e": ...}`` for a SCRAM
            server error; else ``None``.
    """

    details: dict[str, object] | None = None


class SMTPAuthenticationErrorTransient(SMTPAuthenticationError, SMTPTransientError):
    """:class:`SMTPAuthenticationError` with a 4xx reply."""


class SMTPAuthenticationErrorPermanent(SMTPAuthenticationError, SMTPPermanentError):
    """:class:`SMTPAuthenticationError` with a 5xx reply."""


SMTPAuthenticationError.Transient = SMTPAuthenticationErrorTransient
SMTPAuthenticationError.Permanent = SMTPAuthenticationErrorPermanent


class SMTPRecipientsRefused(SMTPError):
    """Every recipient was refused; nothing was sent.

    Attributes:
        refused: each refused recipient with the server's reply.
    """

    #: The flavour when every refusal was a 4xx reply (an :class:`SMTPTransientError`).
    Transient: ClassVar[type[SMTPRecipientsRefused]]
    #: The flavour when one refusal at least was a 5xx reply (an :class:`SMTPPermanentError`).
    Permanent: ClassVar[type[SMTPRecipientsRefused]]

    def __init__(self, refused: Mapping[ForwardPath, Reply]) -> None:
        self.refused = dict(refused)
        detail = "; ".join(f"{path}: {reply}" for path, reply in self.refused.items())
        super().__init__(f"all recipients refused: {detail}")

    @classmethod
    def from_replies(cls, refused: Mapping[ForwardPath, Reply]) -> SMTPRecipientsRefused:
        """Transient only when every refusal was a 4xx reply."""
        transient = all(reply.is_transient for reply in refused.values())
        return (cls.Transient if transient else cls.Permanent)(refused)

    @property
    def is_transient(self) -> bool:
        """True when every refusal was temporary (4xx)."""
        return all(reply.is_transient for reply in self.refused.values())


class SMTPRecipientsRefusedTransient(SMTPRecipientsRefused, SMTPTransientError):
    """:class:`SMTPRecipientsRefused` where every refusal was a 4xx reply."""


class SMTPRecipientsRefusedPermanent(SMTPRecipientsRefused, SMTPPermanentError):
    """:class:`SMTPRecipientsRefused` where a refusal at least was a 5xx reply."""


SMTPRecipientsRefused.Transient = SMTPRecipientsRefusedTransient
SMTPRecipientsRefused.Permanent = SMTPRecipientsRefusedPermanent
