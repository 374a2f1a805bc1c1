"""A pooled connection held by one task: :class:`Lease` (see :meth:`Pool.lease
<trio_sendmail.Pool.lease>` and the theory of operation of ``_pool.py``).

The lease is the only way into a pooled connection: :meth:`Pool.send
<trio_sendmail.Pool.send>` and the bulk sender use it too. It sends a message
again on another connection only when the wire proves that the first attempt
did not reach the server's transaction (:func:`_stale`); it keeps the pool's
counters. It reaches the pool through :class:`_PoolSide`, the few members it
needs, so that this module does not import the pool's.
"""

from __future__ import annotations

import contextlib
import email.message
import logging
import math
from collections.abc import Iterable, Iterator
from email.headerregistry import Address
from typing import Protocol, overload

import attrs
import trio

from ._address import ForwardPath, Mailbox, ReversePath
from ._dsn import DSN
from ._errors import Outcome, SMTPConnectionError, SMTPError, SMTPProtocolError
from ._inputs import Recipient, Sender, is_single_address, message_envelope
from ._message import Mail, MailBody, OneShotStream, prepare_mail
from ._plan import Options, message_options
from ._reply_errors import SMTPServiceClosing
from ._session import Session
from ._transaction import OutcomeTracker, SendResult

__all__ = ["Lease"]

#: The pool's logger: a lease's resends and unknown outcomes are pool events.
logger = logging.getLogger("trio_sendmail.pool")


@attrs.define(eq=False)
class _Connection:
    session: Session
    created: float
    last_used: float
    messages: int = 0


# Errors that say the connection (not the message) is the problem.
_STALE = (SMTPConnectionError, SMTPServiceClosing, SMTPProtocolError)


def _stale(exc: SMTPError, tracker: OutcomeTracker, stream: OneShotStream | None) -> bool:
    """Whether a send on a reused connection failed because the server had
    closed it (or spoke out of turn) before it took any of the message, as the
    wire proves (:attr:`Outcome.NOT_SENT`): only then is it sent again, since
    that cannot duplicate it. A stream already read cannot be sent again."""
    transaction = tracker.transaction
    return (
        isinstance(exc, _STALE)
        and tracker.outcome is Outcome.NOT_SENT
        # A message whose data began to flow into a transaction the server had
        # opened is never sent twice; data pipelined behind a MAIL that got
        # 421 never flowed into one.
        and (transaction is None or not transaction.data_written or transaction.refuted)
        and not (stream is not None and stream.started)
    )


class Lease:
    """A pooled connection held by one task; see :meth:`Pool.lease`.

    :meth:`send` sends one message at a time; :meth:`send` with ``defer=True``
    may leave a small message's end of data queued, to go out with the next
    message's envelope (pipelining across messages, RFC 2920 §3.1), until
    :meth:`settle` or the next send reads its reply.
    """

    def __init__(self, pool: _PoolSide, connection: _Connection) -> None:
        self._pool = pool
        self._connection: _Connection | None = connection
        self._sends = 0
        self._pending: OutcomeTracker | None = None

    def __repr__(self) -> str:
        return f"<trio_sendmail.Lease of {self._held().session!r}>"

    def _held(self) -> _Connection:
        connection = self._connection
        assert connection is not None, "the lease lost its connection"
        return connection

    @property
    def session(self) -> Session:
        """The session this lease holds."""
        return self._held().session

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """One cancel scope for a run of sends on this lease instead of one
        per send (each I/O is still bounded by its phase's timeout)."""
        with self._held().session._batch():
            yield

    @property
    def pending(self) -> OutcomeTracker | None:
        """The tracker of a message whose end of data has no reply yet."""
        return self._pending

    def should_return(self) -> bool:
        """True when the connection should go back to the pool now: another
        task waits for one, it is due for retirement, or the pool is closing."""
        pool = self._pool
        connection = self._held()
        connection.last_used = now = trio.current_time()
        return bool(pool._lot) or pool._retire(connection, now) or pool._closed

    @overload
    async def send(
        self,
        sender: Sender,
        recipients: Iterable[Recipient],
        mail: Mail,
        *,
        dsn: DSN | None = None,
        requiretls: bool = False,
        binary: bool = False,
        tracker: OutcomeTracker | None = None,
        defer: bool = False,
    ) -> SendResult | None: ...

    @overload
    async def send(
        self,
        sender: Sender | None = None,
        recipients: Iterable[Recipient] | None = None,
        *,
        mail: email.message.Message,
        dsn: DSN | None = None,
        requiretls: bool = False,
        binary: bool = False,
        tracker: OutcomeTracker | None = None,
        defer: bool = False,
    ) -> SendResult | None: ...

    async def send(
        self,
        sender: Sender | None = None,
        recipients: Iterable[Recipient] | None = None,
        mail: Mail | None = None,
        *,
        dsn: DSN | None = None,
        requiretls: bool = False,
        binary: bool = False,
        tracker: OutcomeTracker | None = None,
        defer: bool = False,
    ) -> SendResult | None:
        """Send one message on this lease (arguments and errors of
        :meth:`Pool.send`).

        With *defer*, a small message sent with DATA under PIPELINING may
        leave its body and final dot queued, to go out with the next message's
        envelope (RFC 2920 §3.1): this then returns ``None``, :attr:`pending`
        is its *tracker*, and the next :meth:`send` or :meth:`settle` reads its
        reply. The first send on a reused connection is sent again on another
        connection when the server had closed the first one before it took any
        of the message.
        """
        sender, recipients, mail = message_envelope(sender, recipients, mail)
        options = message_options(dsn, requiretls, binary)
        return await self._send(
            sender, recipients, prepare_mail(mail), options, tracker=tracker, defer=defer
        )

    async def _send(
        self,
        sender: ReversePath | Mailbox | str | Address,
        recipients: Iterable[ForwardPath | Mailbox | str | Address],
        body: MailBody,
        options: Options,
        *,
        tracker: OutcomeTracker | None,
        defer: bool = False,
    ) -> SendResult | None:
        pool = self._pool
        if tracker is None:
            tracker = OutcomeTracker()
        if not isinstance(recipients, list | tuple) and not is_single_address(recipients):
            recipients = list(recipients)  # needed twice; one address fails in envelope()
        stream: OneShotStream | None = None
        if body.chunks is not None:
            stream = OneShotStream(body.chunks)
            body = MailBody(chunks=stream)
        while True:
            connection = self._connection
            assert connection is not None, "the lease lost its connection"
            first = self._sends == 0 and connection.messages > 0
            self._sends += 1
            try:
                out = await connection.session._send_op(
                    sender, recipients, body, options, tracker=tracker, defer=defer
                )
            except SMTPError as exc:
                self._count_pending()
                if first and _stale(exc, tracker, stream) and not pool._closed:
                    pool._retries += 1
                    logger.info(
                        "connection #%d had been closed by the server (%s); sending the "
                        "message again on another connection",
                        connection.session._driver.session_id,
                        exc,
                    )
                    await self._replace()
                    continue
                pool._failures += 1
                if exc.outcome is Outcome.UNKNOWN:
                    logger.warning(
                        "connection #%d: the message's outcome is unknown (the server may "
                        "have queued it; resending risks a duplicate): %s",
                        connection.session._driver.session_id,
                        exc,
                    )
                raise
            except BaseException:
                pool._failures += 1
                raise
            if self._pending is not None:
                self._count_pending()
            connection.messages += 1
            if out is None:
                self._pending = tracker
            else:
                pool._sent += 1
            return out

    async def settle(self) -> None:
        """Read the reply to a pending message's end of data (writing it first
        if it is still queued). Raises the connection's error when no reply
        came; the pending message's tracker tells what that means for it."""
        if self._pending is None:
            return
        try:
            await self._held().session._settle(self._pending)
        finally:
            self._count_pending()

    def _count_pending(self) -> None:
        pending = self._pending
        if pending is None:
            return
        reply = pending.final_reply
        if reply is None and self._held().session.is_usable:
            return  # still waiting for its reply
        self._pending = None
        if reply is not None and reply.is_positive:
            self._pool._sent += 1
        else:
            self._pool._failures += 1

    async def _replace(self) -> None:
        """Swap a connection the server had closed for another one."""
        pool = self._pool
        dead = self._held()
        batch = dead.session._driver.timer
        if batch is not None:
            # Inside batch(): that scope belongs to the dead connection and was
            # armed by its last I/O. Left armed, it would fire during a send on
            # the new connection (which times its sends itself), and its `with`
            # block would swallow that cancellation with the message unreported.
            batch.deadline = math.inf
        self._connection = None
        await pool._release(dead)
        self._connection = await pool._acquire()
        self._sends = 0

    async def _end(self) -> None:
        """Give the connection back; a message still pending abandons it, so
        that its queued end of data can never go out later."""
        connection = self._connection
        if connection is None:
            return
        try:
            if self._pending is not None and self._pending.final_reply is None:
                await connection.session._driver.fail()
                self._count_pending()
        finally:
            await self._pool._release(connection)


class _PoolSide(Protocol):
    """What a :class:`Lease` uses of its :class:`~trio_sendmail.Pool`."""

    _lot: trio.lowlevel.ParkingLot
    _closed: bool
    _sent: int
    _failures: int
    _retries: int

    def _retire(self, connection: _Connection, now: float) -> bool: ...

    async def _release(self, connection: _Connection) -> None: ...

    async def _acquire(self) -> _Connection: ...
