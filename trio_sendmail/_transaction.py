"""The record of one mail transaction: what went out, what came back, and what
that proves about the message.

Theory of operation
-------------------
Every message gets exactly one outcome, and it is derived from the wire alone
(RFC 5321 §3.3 and §4.1.1.4 for DATA, RFC 3030 §2 and §4.2 for BDAT, RFC 2920
§3.1 for pipelined groups):

* a 2xx reply to the end of data (the final dot, or ``BDAT … LAST``) is
  :attr:`~Outcome.ACCEPTED`; a refusal of the envelope or of a BDAT chunk (see
  below) is :attr:`~Outcome.NOT_SENT`, also when a pipelined end of data was
  refused after it; any other reply to the end of data is
  :attr:`~Outcome.REFUSED`;
* with no such reply, a message whose end of data never went out is
  :attr:`~Outcome.NOT_SENT`: the server cannot have accepted it;
* with no such reply, a message whose end of data went out (or began to) is
  :attr:`~Outcome.UNKNOWN`, unless an earlier reply *refutes* it: MAIL refused,
  every recipient refused, a BDAT chunk refused (RFC 3030 §2: the transaction
  fails), or a ``421`` that answered a command of the transaction before its
  end of data (RFC 5321 §3.8: the server closes and reads nothing after it;
  replies come in order, RFC 2920 §3.1). Then it is :attr:`~Outcome.NOT_SENT`.

Under LMTP (RFC 2033 §4.2) the end of data gets one reply per recipient
accepted at RCPT, in RCPT order, recorded in
:attr:`Transaction.recipient_replies`. Once every one is in, the message is
:attr:`~Outcome.ACCEPTED` when all are 2xx, :attr:`~Outcome.REFUSED` when none
is, and :attr:`~Outcome.PARTIAL` otherwise (never "accepted"). While some are
missing it is :attr:`~Outcome.UNKNOWN`: the recipients answered 2xx have it,
those not answered may.

Only the sans-io core writes a :class:`Transaction`: it creates one with MAIL,
notes when the bytes holding the end of data are handed to the transport
(:meth:`Transaction.end_sent`), and records every reply paired with one of the
transaction's commands. Every caller (the session, the pool, the bulk sender)
reads :attr:`Transaction.outcome`; nothing else decides it. The record imports
nothing from trio.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import attrs

from ._address import ForwardPath
from ._errors import Outcome, SMTPError
from ._reply import Reply

__all__ = ["OutcomeTracker", "SMTPPartialDelivery", "SendResult", "Transaction", "settle_error"]


def _one_reply_each(result: SendResult) -> dict[ForwardPath, Reply]:
    return dict.fromkeys(result.accepted, result.reply)


@attrs.frozen(hash=False)
class SendResult:
    """The outcome of a message the server accepted.

    Attributes:
        reply: the server's reply to the end of data (``250 2.0.0 Ok: queued as …``);
            under LMTP, the reply for the first recipient the server delivered to.
        accepted: the recipients the server accepted (at RCPT).
        refused: the recipients the server refused at RCPT, each with its reply
            (the message went to the others).
        final_replies: each accepted recipient's reply to the end of data, in
            RCPT order. Under SMTP that is :attr:`reply` for every one; under
            LMTP (RFC 2033 §4.2) the server answers for each recipient.
    """

    reply: Reply
    accepted: tuple[ForwardPath, ...]
    refused: dict[ForwardPath, Reply] = attrs.field(factory=dict)
    final_replies: Mapping[ForwardPath, Reply] = attrs.field(
        default=attrs.Factory(_one_reply_each, takes_self=True), kw_only=True
    )


class SMTPPartialDelivery(SMTPError):
    """LMTP only (RFC 2033 §4.2): after the end of data the server accepted the
    message for some recipients and refused it for others.

    The message is not "accepted": its :attr:`~SMTPError.outcome` is
    :attr:`Outcome.PARTIAL <trio_sendmail.Outcome.PARTIAL>`. The session stays
    usable (the transaction is over). Resending the whole message would
    duplicate it for the recipients in :attr:`delivered`: resend it, if at
    all, to those in :attr:`refused` only.

    Attributes:
        result: the :class:`SendResult`, whose
            :attr:`~SendResult.final_replies` holds every recipient's reply.
    """

    def __init__(self, result: SendResult) -> None:
        self.result = result
        detail = "; ".join(f"{path}: {reply}" for path, reply in self.refused.items())
        super().__init__(
            f"delivered to {len(self.delivered)} of {len(result.final_replies)} "
            f"recipients; refused: {detail}"
        )

    @property
    def delivered(self) -> tuple[ForwardPath, ...]:
        """The recipients whose reply to the end of data was 2xx: they have the message."""
        return tuple(p for p, reply in self.result.final_replies.items() if reply.is_positive)

    @property
    def refused(self) -> dict[ForwardPath, Reply]:
        """The recipients whose reply to the end of data was 4xx or 5xx, with it."""
        return {p: r for p, r in self.result.final_replies.items() if not r.is_positive}

    @property
    def is_transient(self) -> bool:
        """True when every refusal was temporary (4xx): a retry to :attr:`refused` may work."""
        return all(reply.is_transient for reply in self.refused.values())


class Transaction:
    """What happened on the wire to one message (written only by the core)."""

    __slots__ = (
        "accepted",
        "chunk_refusal",
        "closed_early",
        "data_reply",
        "data_written",
        "end_written",
        "envelope_written",
        "final_reply",
        "gate",
        "rcpt_answered",
        "rcpt_sent",
        "recipient_replies",
        "refused",
        "sender_reply",
    )

    def __init__(self, *, lmtp: bool = False) -> None:
        #: The reply to MAIL, once read.
        self.sender_reply: Reply | None = None
        #: The recipients the server accepted, in order.
        self.accepted: list[ForwardPath] = []
        #: The recipients the server refused, with its replies.
        self.refused: dict[ForwardPath, Reply] = {}
        #: RCPT commands issued, and answered.
        self.rcpt_sent = 0
        self.rcpt_answered = 0
        #: The reply to DATA (354, or a refusal).
        self.data_reply: Reply | None = None
        #: The first refusal of a BDAT chunk that is not the last.
        self.chunk_refusal: Reply | None = None
        #: The reply to the end of data.
        self.final_reply: Reply | None = None
        #: Bytes of the envelope went to the transport.
        self.envelope_written = False
        #: Bytes of the message itself went to the transport.
        self.data_written = False
        #: The bytes holding the end of data went to the transport (or began to).
        self.end_written = False
        #: Awaited right before the end of data is written (set by the tracker
        #: that follows this transaction: ``before_end_of_data``).
        self.gate: Callable[[], Awaitable[None]] | None = None
        #: A 421 answered a command of this transaction (or an earlier one in
        #: the same pipelined group) before its end of data was answered.
        self.closed_early = False
        #: LMTP (RFC 2033 §4.2): each accepted recipient's reply to the end of
        #: data, in RCPT order, as they come; ``None`` under SMTP.
        self.recipient_replies: dict[ForwardPath, Reply] | None = {} if lmtp else None

    def __repr__(self) -> str:
        return f"<Transaction {self.outcome.name}>"

    # ------------------------------------------------------------- proofs

    @property
    def refuted(self) -> bool:
        """True when a reply proves the end of data cannot have been accepted."""
        sender = self.sender_reply
        return (
            (sender is not None and not sender.is_positive)
            or (self.rcpt_sent > 0 and self.rcpt_answered == self.rcpt_sent and not self.accepted)
            or self.chunk_refusal is not None
            or self.closed_early
        )

    @property
    def outcome(self) -> Outcome:
        """The message's outcome, as far as the wire tells it now."""
        replies = self.recipient_replies
        if replies:
            return self._lmtp_outcome(replies)
        final = self.final_reply
        if final is not None and final.is_positive:
            return Outcome.ACCEPTED
        if self.refuted:
            # The envelope (or a chunk) was refused before the message was:
            # as if nothing had been sent, whatever answered its end.
            return Outcome.NOT_SENT
        if final is not None:
            return Outcome.REFUSED
        return Outcome.UNKNOWN if self.end_written else Outcome.NOT_SENT

    def _lmtp_outcome(self, replies: dict[ForwardPath, Reply]) -> Outcome:
        if len(replies) < len(self.accepted):
            # The end of data was answered for some recipients only: those
            # answered 2xx have the message, the others may.
            return Outcome.UNKNOWN
        positive = sum(1 for reply in replies.values() if reply.is_positive)
        if positive == len(replies):
            return Outcome.ACCEPTED
        return Outcome.PARTIAL if positive else Outcome.REFUSED

    @property
    def failure_outcome(self) -> Outcome:
        """The outcome to report with an error raised while sending.

        An error after a 2xx to the end of data means the server's word cannot
        be trusted (it accepted what it had refused part of): unknown. So is
        an error after a partial delivery (LMTP), unless that is the error.
        """
        outcome = self.outcome
        return Outcome.UNKNOWN if outcome in _TAKEN else outcome

    def result(self) -> SendResult:
        """The :class:`SendResult` once the end of data was answered."""
        final = self.final_reply
        assert final is not None
        replies = self.recipient_replies
        if replies:
            return SendResult(final, tuple(self.accepted), dict(self.refused),
                              final_replies=dict(replies))  # fmt: skip
        return SendResult(final, tuple(self.accepted), dict(self.refused))


_TAKEN = (Outcome.ACCEPTED, Outcome.PARTIAL)


def settle_error(
    error: SMTPError, transaction: Transaction | None, tracker: OutcomeTracker | None = None
) -> SMTPError:
    """Give *error* the outcome of *transaction* (``None``: nothing was sent),
    and tell *tracker* that its send raised it, so that both say the same.

    The one place where an error learns what became of its message.
    """
    if transaction is None:
        outcome = Outcome.NOT_SENT
    elif isinstance(error, SMTPPartialDelivery) and transaction.outcome is Outcome.PARTIAL:
        outcome = Outcome.PARTIAL  # the error that reports the partial delivery
    else:
        outcome = transaction.failure_outcome
    error.outcome = outcome
    if tracker is not None and tracker._transaction is transaction:
        tracker._raised = outcome
    return error


class OutcomeTracker:
    """Follows one send, so that its outcome is known however the call ends.

    Pass one as ``tracker=`` to :func:`~trio_sendmail.sendmail`,
    :meth:`Session.send <trio_sendmail.Session.send>` or
    :meth:`Pool.send <trio_sendmail.Pool.send>`. After the call returns,
    raises, or is cancelled, :attr:`outcome` tells what became of the message
    (a cancellation carries no :attr:`SMTPError.outcome` of its own)::

        tracker = trio_sendmail.OutcomeTracker()
        with trio.move_on_after(30):
            await pool.send(sender, recipients, message, tracker=tracker)
        if tracker.outcome is trio_sendmail.Outcome.UNKNOWN:
            ...  # the server may have the message: do not resend blindly

    A tracker follows the latest attempt: when a pool sends a message again on
    another connection (the first one had been closed by the server before any
    of the message was written), the first attempt was :attr:`Outcome.NOT_SENT`.

    A tracker made with *before_end_of_data* awaits it right before the
    message's end of data (the final ``CRLF.CRLF``, or the ``BDAT … LAST``
    chunk) is written: everything before it may already be on the wire, and
    nothing of the end is, until it returns. A durable queue records there
    that the message may now be delivered (the outbox arms its row then), so
    that a crash before it provably left the message undelivered. If it raises
    (or the send is cancelled while it waits), the end is never written: the
    connection is closed and the outcome is :attr:`Outcome.NOT_SENT`. The
    wait counts against no timeout.
    """

    __slots__ = ("_gate", "_raised", "_transaction", "attempts", "gate_error")

    def __init__(self, *, before_end_of_data: Callable[[], Awaitable[None]] | None = None) -> None:
        self._gate = before_end_of_data
        self._transaction: Transaction | None = None
        # The outcome given to the SMTPError the send raised: a 2xx to the end
        # of data that came with a protocol error is no proof (UNKNOWN).
        self._raised: Outcome | None = None
        #: Transactions begun for this message (1 unless a pool sent it again).
        self.attempts = 0
        #: What *before_end_of_data* raised, if it did.
        self.gate_error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<OutcomeTracker {self.outcome.name} attempts={self.attempts}>"

    def _follow(self, transaction: Transaction) -> None:
        transaction.gate = None if self._gate is None else self._await_gate
        self._transaction = transaction
        self._raised = None
        self.attempts += 1

    async def _await_gate(self) -> None:
        assert self._gate is not None
        try:
            await self._gate()
        except BaseException as exc:
            self.gate_error = exc
            raise

    @property
    def transaction(self) -> Transaction | None:
        """The record of the latest attempt's transaction, once it began."""
        return self._transaction

    @property
    def outcome(self) -> Outcome:
        """:attr:`Outcome.NOT_SENT` until a transaction began, then its outcome."""
        transaction = self._transaction
        if transaction is None:
            return Outcome.NOT_SENT
        raised = self._raised
        return raised if raised is not None else transaction.outcome

    @property
    def final_reply(self) -> Reply | None:
        """The server's reply to the end of data, if one came."""
        transaction = self._transaction
        return None if transaction is None else transaction.final_reply

    @property
    def result(self) -> SendResult | None:
        """The result when the message was accepted (or, under LMTP, partly
        delivered: :attr:`Outcome.PARTIAL`), else ``None``."""
        transaction = self._transaction
        if transaction is None or self.outcome not in _TAKEN:
            return None
        return transaction.result()
