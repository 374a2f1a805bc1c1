"""The commands in flight: the output buffer and the FIFO of commands that wait
for a reply, under the rules of the state table (sans-io).

Theory of operation
-------------------
:class:`CommandPipeline` is the lower half of
:class:`~trio_sendmail._core.ClientCore`: it queues command lines for sending
and remembers, in order, the commands whose replies are still to come. What
each command means and what each reply changes is the core's business.

* **A FIFO of commands in flight.** Replies come back in the order the commands
  went out, also when several are sent in one write (PIPELINING, RFC 2920 §3.1).
  A command is checked against the state the session will be in once every
  earlier command in flight succeeds (:attr:`Rule.success
  <trio_sendmail._table.Rule.success>`); the confirmed state follows the
  replies. Nothing is queued after a command that must end a pipelined group
  (EHLO, DATA, NOOP, QUIT, STARTTLS, AUTH) until its reply is in.
* **Several replies to one command** (LMTP, RFC 2033 §4.2): the end of data
  is answered once per recipient accepted at RCPT. Its :class:`Command` stays
  at the head of the FIFO until the last of those replies (the core pairs each
  with its recipient), so the commands pipelined behind it still get theirs in
  order.
* **A failure is sticky.** A broken pipeline refuses every later command
  (:class:`~trio_sendmail.SMTPUsageError`: issuing it is the caller's mistake),
  and whatever was still queued is dropped: it must never go out.
* **Marks.** An offset in the output buffer can be marked with a
  :class:`~trio_sendmail._transaction.Transaction`: when
  :meth:`CommandPipeline.take_output` hands out the byte at that offset, the
  transaction's envelope, data or end of data is recorded as written (so an
  interrupted write counts as one that went out).
* **Gates.** A transaction with a :attr:`~trio_sendmail._transaction.Transaction.gate`
  gets a gate mark where its end of data begins. :meth:`CommandPipeline.take_output`
  hands out nothing at or past a closed gate: the driver awaits the gate,
  then :meth:`CommandPipeline.open_gate` lets the end of data go.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from ._errors import SMTPUsageError
from ._table import SAME, TABLE, Rule, State, Verb
from ._transaction import Transaction

__all__ = [
    "MARK_DATA",
    "MARK_END",
    "MARK_ENVELOPE",
    "MARK_GATE",
    "Command",
    "CommandPipeline",
    "command",
    "new_tuple",
]


# What a mark in the output buffer notes when its byte is handed out; a gate
# mark holds back its byte and every later one until the gate is opened.
MARK_ENVELOPE, MARK_DATA, MARK_END, MARK_GATE = 0, 1, 2, 3


# Enum members read on the hot path, as module constants: reading one from its
# class costs several times a global's lookup (Python 3.11).
_BROKEN = State.BROKEN

#: ``tuple.__new__``: builds a :class:`Command` (or the core's ``Event``) from
#: its fields in C, skipping the named tuple's Python ``__new__``.
new_tuple = tuple.__new__


class Command(NamedTuple):
    """A command in flight, with its rule (looked up once, when issued) and the
    transaction it belongs to (``None`` outside a mail transaction). A tuple:
    :data:`new_tuple` makes one without a Python call (several per message)."""

    verb: Verb
    subject: object
    rule: Rule
    txn: Transaction | None


def command(verb: Verb, subject: object = None, txn: Transaction | None = None) -> Command:
    """A :class:`Command` for *verb*, with its rule from the table."""
    return new_tuple(Command, (verb, subject, TABLE[verb], txn))


class CommandPipeline:
    """The output buffer and the commands in flight (see the module's docstring).

    Args:
        transcript: called with each line sent (``"C: …"``); the attribute
            :attr:`transcript`, which may be changed at any time.
        out_buffer: a reusable buffer for outgoing commands.
    """

    def __init__(
        self,
        *,
        transcript: Callable[[str], None] | None = None,
        out_buffer: bytearray | None = None,
    ) -> None:
        self.state = State.CONNECTED
        # The state once every command in flight succeeds.
        self._tail = State.CONNECTED
        # Neither of these two is ever rebound: the driver's pump reads them
        # directly (``has_output`` and ``awaiting_reply`` without a call).
        self._inflight: deque[Command] = deque([command(Verb.CONNECT)])
        self._out = out_buffer if out_buffer is not None else bytearray()
        del self._out[:]
        self.transcript = transcript
        # Offsets in the output buffer whose bytes, once handed out, mean that
        # a transaction's envelope, data or end of data went out.
        self._marks: list[tuple[int, Transaction, int]] = []
        # Commands queued since the output was last taken.
        self._unsent = 0

    # ---------------------------------------------------------------- output

    def take_output(self, limit: int | None = None) -> bytes:
        """Take up to *limit* of the bytes queued for sending (all by default).

        Call it right before writing what it returns: the transactions whose
        envelope, data or end of data lie in these bytes are marked as
        written, so that an interrupted write counts as one that went out.

        Nothing at or past a closed gate is handed out: an empty result while
        :attr:`has_output` means that :attr:`gate` must be awaited and opened.
        """
        out = self._out
        if not out:
            return b""
        marks = self._marks
        if marks:
            for offset, _, kind in marks:
                if kind == MARK_GATE:
                    if offset == 0:
                        return b""
                    if limit is None or offset < limit:
                        limit = offset
                    break
        if limit is None or len(out) <= limit:
            data = bytes(out)
            del out[:]
        else:
            data = bytes(out[:limit])
            del out[:limit]
        self._unsent = 0
        if self._marks:
            self._marks_taken(len(data))
        return data

    def data_to_send(self) -> bytes:
        """Take all the bytes queued for sending (see :meth:`take_output`)."""
        return self.take_output()

    def _marks_taken(self, count: int) -> None:
        keep = []
        for offset, txn, kind in self._marks:
            if offset >= count or kind == MARK_GATE:
                keep.append((offset - count, txn, kind))
            elif kind == MARK_END:
                txn.end_written = txn.data_written = txn.envelope_written = True
            elif kind == MARK_DATA:
                txn.data_written = txn.envelope_written = True
            else:
                txn.envelope_written = True
        self._marks = keep

    @property
    def gate(self) -> Transaction | None:
        """The transaction of the first closed gate in the queued output (the
        bytes before it may be taken; those at and after it may not)."""
        for _, txn, kind in self._marks:
            if kind == MARK_GATE:
                return txn
        return None

    def open_gate(self) -> None:
        """Open the first closed gate (:attr:`gate`)."""
        marks = self._marks
        for i, mark in enumerate(marks):
            if mark[2] == MARK_GATE:
                del marks[i]
                return

    @property
    def wire_idle(self) -> bool:
        """True when no command already written waits for a reply: any byte
        from the server now would be one nobody asked for."""
        return self._unsent == len(self._inflight)

    @property
    def has_output(self) -> bool:
        """True when bytes are queued for sending."""
        return bool(self._out)

    @property
    def output_size(self) -> int:
        """How many bytes are queued for sending."""
        return len(self._out)

    @property
    def awaiting_reply(self) -> bool:
        """True while a command sent is still waiting for its reply."""
        return bool(self._inflight)

    @property
    def inflight(self) -> tuple[Verb, ...]:
        """The verbs of the commands waiting for a reply, oldest first."""
        return tuple(c.verb for c in self._inflight)

    @property
    def oldest(self) -> Verb:
        """The verb of the oldest command waiting for a reply."""
        return self._inflight[0].verb

    @property
    def inflight_count(self) -> int:
        """How many commands wait for a reply."""
        return len(self._inflight)

    def _log(self, line: str) -> None:
        if self.transcript is not None:
            self.transcript(line)

    def _issue(self, verb: Verb, line: str, *, subject: object = None, log: str | None = None,
               utf8: bool = False, txn: Transaction | None = None) -> None:  # fmt: skip
        if self.state is _BROKEN:
            raise SMTPUsageError("the session is broken by an earlier error")
        rule = TABLE[verb]
        inflight = self._inflight
        if inflight and inflight[-1].rule.last_in_group:
            raise SMTPUsageError(
                f"{verb.value} cannot follow {inflight[-1].verb.value} "
                "before its reply (RFC 2920 §3.1)"
            )
        if self._tail not in rule.legal:
            raise SMTPUsageError(
                f"{verb.value} is not allowed now (session state: {self._tail.value})"
            )
        out = self._out
        out += line.encode("utf-8" if utf8 else "ascii")
        out += b"\r\n"
        inflight.append(new_tuple(Command, (verb, subject, rule, txn)))
        self._unsent += 1
        if rule.success is not SAME:
            self._tail = rule.success
        if self.transcript is not None:
            self.transcript("C: " + (log if log is not None else line))

    def broken(self) -> None:
        """Mark the session unusable (I/O failed or a command was interrupted).

        Whatever is still queued is dropped: it must never go out.
        """
        self.state = self._tail = State.BROKEN
        del self._out[:]
        self._marks.clear()
