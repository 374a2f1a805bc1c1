"""The exception hierarchy of trio_sendmail: the floor that imports nothing.

Every exception the library raises on purpose derives from :class:`SMTPError`.
Whose fault it was decides the branch, as h11's ``LocalProtocolError`` /
``RemoteProtocolError`` split does:

* **The caller's**: a value that cannot be sent (a malformed address, CR/LF
  injection, a bad option) raises :class:`SMTPInputError`, also a
  :class:`ValueError`; a call the session cannot take in its state raises
  :class:`SMTPUsageError`, also a :class:`RuntimeError`. Both are raised before
  anything goes out, and neither says anything about the server.
* **The server's**: it broke the protocol (:class:`SMTPProtocolError`), or it
  refused a command (:class:`~trio_sendmail.SMTPResponseError` and the other
  errors that carry its replies; they live one floor up, in
  ``_reply_errors.py``, since they hold a :class:`~trio_sendmail.Reply`).
* **Nobody's in particular**: the connection (:class:`SMTPConnectionError`),
  a timeout, or an extension the server lacks (:class:`SMTPNotSupportedError`).
"""

from __future__ import annotations

import enum

__all__ = [
    "Outcome",
    "SMTPAddressError",
    "SMTPConnectionError",
    "SMTPError",
    "SMTPInputError",
    "SMTPMessageTooLarge",
    "SMTPNotSupportedError",
    "SMTPPermanentError",
    "SMTPProtocolError",
    "SMTPTLSError",
    "SMTPTimeoutError",
    "SMTPTransientError",
    "SMTPUsageError",
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
    #: to the final dot): it was not accepted. (As a
    #: :attr:`BulkResult.status <trio_sendmail.BulkResult>`, also a message whose
    #: sender or recipients were refused for good.)
    REFUSED = "refused"
    #: The end of the data went out but no reply came back (timeout, lost
    #: connection, cancellation): the server may or may not have queued it.
    #: Resending risks a duplicate.
    UNKNOWN = "unknown"
    #: LMTP (RFC 2033 §4.2) only: the server answered the end of the data once
    #: per recipient, accepting the message for some and refusing it for
    #: others. It is not accepted: see
    #: :class:`~trio_sendmail.SMTPPartialDelivery` for who has it. Resending
    #: the whole message duplicates it for the recipients that have it.
    PARTIAL = "partial"


class SMTPError(Exception):
    """Base class of every error raised by trio_sendmail.

    Every one can be pickled with all its attributes (its outcome, reply, phase
    …), so that it can cross processes, as a Celery task's error does.
    """

    #: For errors raised while sending a message: whether the message can
    #: have been accepted. ``None`` when no message was involved.
    outcome: Outcome | None = None

    def __reduce__(self) -> tuple[object, ...]:
        # Subclasses take keyword-only arguments (phase=, reply…), which the
        # default reduction (type(self)(*self.args)) would drop: rebuild the
        # error from its args and attributes instead.
        return (_restore_error, (type(self), self.args, self.__dict__))


def _restore_error(
    kind: type[SMTPError], args: tuple[object, ...], state: dict[str, object]
) -> SMTPError:
    error = kind.__new__(kind)
    error.args = args
    error.__dict__.update(state)
    return error


class SMTPInputError(SMTPError, ValueError):
    """The caller passed a value that cannot be sent (raised before any I/O)."""


class SMTPAddressError(SMTPInputError):
    """A mailbox, path or domain is malformed or too long (RFC 5321 §4.1.2, §4.5.3.1)."""


class SMTPUsageError(SMTPError, RuntimeError):
    """The caller used a session in a way its state does not allow (raised before any I/O).

    For example: sending on a session that is not ready, a command issued
    before the reply it must wait for (RFC 2920 §3.1), STARTTLS on a session
    that already runs TLS, message data outside DATA, or any command on a core
    broken by an earlier error. The server did nothing wrong: this is the
    counterpart of h11's ``LocalProtocolError``, where :class:`SMTPProtocolError`
    is its ``RemoteProtocolError``. It is a :class:`RuntimeError` (a call at the
    wrong time), where a bad value is an :class:`SMTPInputError`
    (:class:`ValueError`).
    """


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
    or bytes injected before a TLS handshake). The session is unusable afterwards.

    Only the server's mistakes raise it; the caller's raise :class:`SMTPUsageError`.
    """


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
    """Marker base: the failure is temporary (an SMTP 4xx reply); retrying later may work.

    Every reply error exists in a transient flavour that derives from it
    (``SMTPSenderRefused.Transient``, …), so ``except SMTPTransientError``
    catches every retryable refusal whatever command it answered.
    """

    @property
    def is_transient(self) -> bool:
        """True: retrying later may work."""
        return True


class SMTPPermanentError(SMTPError):
    """Marker base: the failure is permanent (an SMTP 5xx reply); do not retry as is."""

    @property
    def is_transient(self) -> bool:
        """False: do not retry as is."""
        return False
