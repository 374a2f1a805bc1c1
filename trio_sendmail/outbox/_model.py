"""The outbox's values: row states, the retry policy, what a worker and the
statistics report, and how a :class:`~trio_sendmail.BulkMessage` becomes a row
and a :class:`~trio_sendmail.BulkResult` becomes a row's new state.

Theory of operation
-------------------
A row's state says what the database can prove about its message (the state
diagram is in ``docs/design.rst``, "The durable outbox"):

* ``pending``: no attempt can have delivered it; a worker will send it once its
  ``next_attempt_at`` has come;
* ``claimed``: a worker holds it (a lease with an expiry); it has not been
  *armed* yet, so nothing of it can have reached the end of data;
* ``sending``: armed: the worker recorded, in a committed transaction, that it
  may write the end of data from now on. Only an armed row goes to
  :func:`~trio_sendmail.send_bulk`;
* ``sent`` / ``refused`` / ``failed``: final (RFC 5321 §4.2.1: a 2xx reply to
  the end of data, a 5xx refusal, or no more retries);
* ``unknown``: an attempt may have reached the end of data and no reply was
  recorded; it is never sent again automatically.

When a claim expires (its worker died), ``claimed`` rows go back to
``pending`` and ``sending`` rows become ``unknown``: that is the whole crash
rule, and the reason why arming precedes the end of data.
"""

from __future__ import annotations

import enum
import functools
import json
import random
from collections.abc import Mapping
from typing import Any

import attrs

from .._bulk_types import BulkMessage, BulkResult
from .._dsn import DSN
from .._errors import (
    Outcome,
    SMTPConnectionError,
    SMTPError,
    SMTPPermanentError,
    SMTPTimeoutError,
    SMTPTransientError,
)
from .._inputs import envelope
from .._reply_errors import SMTPRecipientsRefused, SMTPResponseError

__all__ = [
    "OutboxEntry",
    "OutboxStatistics",
    "RetryPolicy",
    "Settlement",
    "State",
    "WorkProgress",
    "WorkSummary",
    "decode_message",
    "encode_message",
    "settle",
]


class State(enum.Enum):
    """The state of an outbox row (see the module's theory of operation)."""

    PENDING = "pending"
    CLAIMED = "claimed"
    SENDING = "sending"
    SENT = "sent"
    REFUSED = "refused"
    FAILED = "failed"
    UNKNOWN = "unknown"


@attrs.frozen
class RetryPolicy:
    """When a transiently failed message is tried again.

    Args:
        max_attempts: attempts in all (the first one included); then ``failed``.
        backoff: the first retry waits up to this many seconds; each next one up
            to twice as long (full jitter), at most *max_backoff*.
        max_backoff: the longest wait between two attempts.
        max_age: seconds after enqueueing when a message that still fails
            transiently becomes ``failed`` instead of waiting again.
    """

    max_attempts: int = 5
    backoff: float = 30.0
    max_backoff: float = 3600.0
    max_age: float = 3 * 86400.0

    def __attrs_post_init__(self) -> None:
        if self.max_attempts < 1 or not self.backoff >= 0 or not self.max_backoff >= 0:
            raise ValueError("max_attempts must be >= 1, backoff and max_backoff >= 0")
        if not self.max_age > 0:
            raise ValueError("max_age must be > 0")

    def delay(self, attempts: int) -> float:
        """The wait after the *attempts*-th attempt failed (full jitter)."""
        ceiling = min(self.max_backoff, self.backoff * 2.0 ** max(0, attempts - 1))
        return random.uniform(0.0, ceiling)


@attrs.frozen
class OutboxEntry:
    """One row of the outbox, as :meth:`Outbox.entries` reads it.

    Attributes:
        id: the row's id (what :meth:`Outbox.enqueue` returned).
        key: the caller's idempotency key, if any.
        state: its :class:`State`.
        attempts: attempts armed so far.
        created_at: when it was enqueued (seconds since the epoch).
        next_attempt_at: when it may be sent (pending rows).
        reply_code: the server's last reply code that decided it (sent, refused,
            failed), if any.
        reply_text: that reply's text.
        refused_recipients: recipient to ``(code, text)``, for the recipients the
            server refused (also on a ``sent`` row: the others got it).
        error: what went wrong, for rows that did not end ``sent``.
        worker: the worker that holds it or made its last attempt.
    """

    id: int
    key: str | None
    state: State
    attempts: int
    created_at: float
    next_attempt_at: float
    reply_code: int | None = None
    reply_text: str | None = None
    refused_recipients: dict[str, tuple[int, str]] = attrs.field(factory=dict)
    error: str | None = None
    worker: str | None = None


@attrs.frozen
class OutboxStatistics:
    """What :meth:`Outbox.statistics` returns.

    Attributes:
        counts: rows per :class:`State` (every state present, zero included).
        oldest_pending_age: seconds since the oldest ``pending`` row was
            enqueued, or ``None`` when none is pending.
        attempts: attempts made over all rows.
        retried: rows tried more than once.
    """

    counts: Mapping[State, int]
    oldest_pending_age: float | None
    attempts: int
    retried: int

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def open(self) -> int:
        """Rows not final yet (pending, claimed or sending)."""
        return sum(self.counts[s] for s in (State.PENDING, State.CLAIMED, State.SENDING))


@attrs.frozen
class WorkProgress:
    """A snapshot of one :meth:`Outbox.work` call, given to its ``progress`` callback."""

    sent: int
    refused: int
    failed: int
    unknown: int
    retried: int
    in_flight: int
    elapsed: float

    @property
    def done(self) -> int:
        return self.sent + self.refused + self.failed + self.unknown


@attrs.define
class WorkSummary:
    """What :meth:`Outbox.work` returns: the outcomes it recorded."""

    sent: int = 0
    refused: int = 0
    failed: int = 0
    unknown: int = 0
    #: Attempts that failed transiently and were put back on the schedule.
    retried: int = 0
    #: Attempts given back untried (the run stopped before their turn).
    released: int = 0


# --------------------------------------------------------------------------- rows


def _dsn_json(dsn: DSN | None) -> Any:
    if dsn is None:
        return None
    return {
        "ret": None if dsn.ret is None else dsn.ret.value,
        "envid": dsn.envid,
        "notify": None if dsn.notify is None else sorted(n.value for n in dsn.notify),
        "orcpt": dsn.orcpt,
    }


def encode_message(message: BulkMessage, data: bytes) -> dict[str, Any]:
    """The columns of a new row for *message*, whose bytes are *data*.

    Raises:
        SMTPAddressError, SMTPInputError, TypeError: a malformed envelope or key.
    """
    if not isinstance(message, BulkMessage):
        raise TypeError(f"enqueue takes BulkMessages, not {type(message).__name__}")
    key = message.key
    if key is not None and not isinstance(key, str):
        raise TypeError("an outbox message's key must be a str (its idempotency key) or None")
    sender, recipients = envelope(message.sender, message.recipients)
    mailbox = sender.mailbox
    domain = "" if mailbox is None else str(mailbox.domain).lower()
    options = {
        "dsn": _dsn_json(message.dsn),
        "requiretls": message.requiretls,
        "binary": message.binary,
    }
    return {
        "key": key,
        "sender": str(sender),
        "sender_domain": domain,
        "recipients": json.dumps([str(r) for r in recipients]),
        "mail": data,
        "options": json.dumps(options),
    }


@functools.lru_cache(maxsize=64)
def _decode_options(options: str) -> tuple[DSN | None, bool, bool]:
    """``(dsn, requiretls, binary)`` of a row's options. Cached: the messages
    of one job share their options (and DSN is frozen), and the claimer decodes
    every message on the event loop's thread."""
    opts = json.loads(options)
    dsn_data = opts.get("dsn")
    dsn = None
    if dsn_data is not None:
        dsn = DSN(
            ret=dsn_data["ret"],
            envid=dsn_data["envid"],
            notify=dsn_data["notify"],
            orcpt=dsn_data["orcpt"],
        )
    return dsn, bool(opts.get("requiretls")), bool(opts.get("binary"))


def decode_message(
    row_id: int, sender: str, recipients: str, mail: bytes, options: str
) -> BulkMessage:
    """The :class:`BulkMessage` of a row; its ``key`` is the row id."""
    dsn, requiretls, binary = _decode_options(options)
    return BulkMessage(
        sender,
        json.loads(recipients),
        bytes(mail),
        key=row_id,
        dsn=dsn,
        requiretls=requiretls,
        binary=binary,
    )


# --------------------------------------------------------------------------- outcomes


@attrs.frozen
class Settlement:
    """The new state of an armed row, from its :class:`BulkResult`."""

    id: int
    state: State
    #: For a row going back to ``pending``: seconds until it is due.
    delay: float | None = None
    reply_code: int | None = None
    reply_text: str | None = None
    refused: str | None = None
    error: str | None = None
    #: The attempt does not count (the run stopped before it was made).
    uncounted: bool = False
    #: Recipients refused with a 4xx while the row is settled for good (the
    #: message went to the others, or the others were refused for good): a
    #: follow-up row sends it to them again, due after *follow_up_delay*.
    follow_up: list[str] | None = None
    follow_up_delay: float = 0.0


def _refused_json(refused: Mapping[Any, Any]) -> str | None:
    if not refused:
        return None
    return json.dumps({str(path): [reply.code, reply.text] for path, reply in refused.items()})


def _follow_up(
    refused: Mapping[Any, Any],
    *,
    now: float,
    created_at: float,
    attempts: int,
    policy: RetryPolicy,
) -> tuple[list[str] | None, float]:
    """The recipients of *refused* worth another attempt (a 4xx reply, RFC 5321
    §4.2.1: the same command may succeed later), if the policy allows one."""
    again = [str(path) for path, reply in refused.items() if reply.is_transient]
    if not again:
        return None, 0.0
    delay = policy.delay(attempts)
    if attempts < policy.max_attempts and now + delay - created_at <= policy.max_age:
        return again, delay
    return None, 0.0


def _describe(error: BaseException | None) -> str | None:
    if error is None:
        return None
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}"


def _transient(error: BaseException | None) -> bool:
    """A failure worth another attempt later."""
    if isinstance(error, SMTPPermanentError):
        return False
    if isinstance(error, SMTPTransientError | SMTPConnectionError | SMTPTimeoutError):
        return True
    # Cancelled, or another message's fatal error stopped the run: not this one's fault.
    return not isinstance(error, SMTPError | TypeError | ValueError)


def settle(
    result: BulkResult,
    *,
    now: float,
    created_at: float,
    attempts: int,
    policy: RetryPolicy,
    untried: bool = False,
) -> Settlement:
    """What becomes of an armed row, given its *result* (``attempts`` counts
    this one). A message that the run stopped before it was tried (it was
    cancelled), or that the caller says was *untried* (its connection could not
    be opened), goes back to ``pending`` without losing an attempt."""
    key = result.message.key
    assert isinstance(key, int)
    status, error = result.status, result.error
    if status is Outcome.ACCEPTED:
        sent = result.result
        assert sent is not None
        again, delay = _follow_up(
            sent.refused, now=now, created_at=created_at, attempts=attempts, policy=policy
        )
        return Settlement(
            key,
            State.SENT,
            reply_code=sent.reply.code,
            reply_text=sent.reply.text,
            refused=_refused_json(sent.refused),
            follow_up=again,
            follow_up_delay=delay,
        )
    if status is Outcome.PARTIAL:
        # LMTP: delivered to some recipients, refused for others. Sent (a resend
        # would deliver it twice to those who have it), with every refusal kept.
        partial = result.result
        if partial is None:  # no record of who has it: it may be anyone
            return Settlement(key, State.UNKNOWN, error=_describe(error))
        refusals = dict(partial.refused)
        refusals.update(
            (path, reply) for path, reply in partial.final_replies.items() if not reply.is_positive
        )
        again, delay = _follow_up(
            refusals, now=now, created_at=created_at, attempts=attempts, policy=policy
        )
        return Settlement(
            key,
            State.SENT,
            reply_code=partial.reply.code,
            reply_text=partial.reply.text,
            refused=_refused_json(refusals),
            error=_describe(error),
            follow_up=again,
            follow_up_delay=delay,
        )
    if status is Outcome.UNKNOWN:
        return Settlement(key, State.UNKNOWN, error=_describe(error))
    code = text = refused = None
    if isinstance(error, SMTPResponseError):
        code, text = error.reply.code, error.reply.text
    elif isinstance(error, SMTPRecipientsRefused):
        refused = _refused_json(error.refused)
    if status is Outcome.NOT_SENT and (
        untried or not isinstance(error, SMTPError | TypeError | ValueError)
    ):
        # The run stopped (cancelled) before this attempt could be made.
        return Settlement(key, State.PENDING, delay=0.0, uncounted=True, error=_describe(error))
    if _transient(error):
        delay = policy.delay(attempts)
        if attempts < policy.max_attempts and now + delay - created_at <= policy.max_age:
            return Settlement(
                key,
                State.PENDING,
                delay=delay,
                reply_code=code,
                reply_text=text,
                refused=refused,
                error=_describe(error),
            )
        final = State.FAILED
    elif status is Outcome.REFUSED:
        final = State.REFUSED
    else:
        final = State.FAILED
    again, delay = None, 0.0
    if isinstance(error, SMTPRecipientsRefused):
        # Every recipient refused, some for good: those refused with a 4xx may
        # take the message later.
        again, delay = _follow_up(
            error.refused, now=now, created_at=created_at, attempts=attempts, policy=policy
        )
    return Settlement(
        key,
        final,
        reply_code=code,
        reply_text=text,
        refused=refused,
        error=_describe(error),
        follow_up=again,
        follow_up_delay=delay,
    )
