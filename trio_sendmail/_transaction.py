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

Only the sans-io core writes a :class:`Transaction`: it creates one with MAIL,
notes when the bytes holding the end of data are handed to the transport
(:meth:`Transaction.end_sent`), and records every reply paired with one of the
transaction's commands. Every caller (the session, the pool, the bulk sender)
reads :attr:`Transaction.outcome`; nothing else decides it. The record imports
nothing from trio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from ._address import ForwardPath
from ._errors import Outcome
from ._reply import Reply

if TYPE_CHECKING:
    from ._errors import SMTPError

__all__ = ["OutcomeTracker", "SendResult", "Transaction", "settle_error"]


@attrs.frozen(hash=False)
class SendResult:
    """The outcome of a message the server accepted.

    Attributes:
        reply: the server's reply to the end of data (``250 2.0.0 Ok: queued as …``).
        accepted: the recipients the server accepted.
        refused: the recipients the server refused, each with its reply (the
            message went to the others).
    """

    reply: Reply
    accepted: tuple[ForwardPath, ...]
    refused: dict[ForwardPath, Reply] = attrs.field(factory=dict)


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
        "rcpt_answered",
        "rcpt_sent",
        "refused",
        "sender_reply",
    )

    def __init__(self) -> None:
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
        #: A 421 answered a command of this transaction (or an earlier one in
        #: the same pipelined group) before its end of data was answered.
        self.closed_early = False

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

    @property
    def failure_outcome(self) -> Outcome:
        """The outcome to report with an error raised while sending.

        An error after a 2xx to the end of data means the server's word cannot
        be trusted (it accepted what it had refused part of): unknown.
        """
        outcome = self.outcome
        return Outcome.UNKNOWN if outcome is Outcome.ACCEPTED else outcome


def settle_error(
    error: SMTPError, transaction: Transaction | None, tracker: OutcomeTracker | None = None
) -> SMTPError:
    """Give *error* the outcome of *transaction* (``None``: nothing was sent),
    and tell *tracker* that its send raised it, so that both say the same.

    The one place where an error learns what became of its message.
    """
    error.outcome = Outcome.NOT_SENT if transaction is None else transaction.failure_outcome
    if tracker is not None and tracker._transaction is transaction:
        tracker._raised = True
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
    """

    __slots__ = ("_raised", "_transaction", "attempts")

    def __init__(self) -> None:
        self._transaction: Transaction | None = None
        # The send raised an SMTPError: a 2xx to the end of data that came
        # with a protocol error is no proof (the error's outcome is UNKNOWN).
        self._raised = False
        #: Transactions begun for this message (1 unless a pool sent it again).
        self.attempts = 0

    def __repr__(self) -> str:
        return f"<OutcomeTracker {self.outcome.name} attempts={self.attempts}>"

    def _follow(self, transaction: Transaction) -> None:
        self._transaction = transaction
        self._raised = False
        self.attempts += 1

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
        return transaction.failure_outcome if self._raised else transaction.outcome

    @property
    def final_reply(self) -> Reply | None:
        """The server's reply to the end of data, if one came."""
        transaction = self._transaction
        return None if transaction is None else transaction.final_reply

    @property
    def result(self) -> SendResult | None:
        """The result when the message was accepted, else ``None``."""
        transaction = self._transaction
        if transaction is None or self.outcome is not Outcome.ACCEPTED:
            return None
        assert transaction.final_reply is not None
        return SendResult(
            transaction.final_reply, tuple(transaction.accepted), dict(transaction.refused)
        )
