"""The transaction runner: one message, from MAIL to the reply to its end of data.

Theory of operation
-------------------
:func:`run_transaction` issues the core's commands for one message and reads
their replies through the :class:`~trio_sendmail._driver.Driver`; the core
records every reply in the message's
:class:`~trio_sendmail._transaction.Transaction`, so the runner only decides
what to send next and which error to raise.

* **The envelope** (RFC 5321 §3.3): with PIPELINING (RFC 2920 §3.1), MAIL, every
  RCPT (in batches of :data:`PIPELINE_BATCH`) and DATA go out in one write and
  the replies are read in order; without it, one command per round trip, and
  DATA only after a recipient was accepted.
* **The body**: after 354, dot-stuffed by the core and ended with ``CRLF.CRLF``
  (RFC 5321 §4.1.1.4, §4.5.2); or with CHUNKING, ``BDAT`` chunks (RFC 3030 §2).
  A whole message of less than ``send_size`` octets rides with its envelope as
  ``BDAT n LAST`` (§4.2 allows it to be pipelined); a larger or streamed one
  waits for the envelope's replies, then flows in chunks with up to
  :data:`BDAT_WINDOW` of them unanswered. Memory stays bounded: the body is cut
  in pieces of at most ``send_size`` octets.
* **Refusals** end the transaction cleanly (RFC 5321 §4.1.1.5 RSET; after a
  pipelined DATA that got 354 although no recipient was accepted, an empty
  message is ended so that the server refuses it, RFC 2920 §3.1), so the
  session stays usable. Anything else that interrupts a transaction is left
  to the session's error boundary, which drops the connection.
* **LMTP** (RFC 2033 §4.2): the end of data gets one reply per accepted
  recipient; the runner reads them all (the core records each), then returns
  when every one is 2xx, raises :class:`~trio_sendmail.SMTPPartialDelivery`
  when some are, and the refusal when none is. The end of data is never
  deferred under LMTP.
* **Deferred end of data**: for the bulk sender, a small message sent with
  DATA may stop after queuing its body and final dot; they go out with the
  next message's envelope, and the first reply read answers them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import NoReturn

from ._address import ForwardPath, ReversePath
from ._core import State, Verb
from ._driver import Driver
from ._errors import Outcome, SMTPError, SMTPNotSupportedError, SMTPProtocolError
from ._message import MailBody, close_early
from ._plan import Plan
from ._reply import Reply
from ._reply_errors import SMTPRecipientsRefused, SMTPResponseError, SMTPSenderRefused
from ._transaction import OutcomeTracker, SendResult, SMTPPartialDelivery, Transaction

__all__ = ["BDAT_WINDOW", "PIPELINE_BATCH", "run_transaction"]

#: Most RCPT commands written in one pipelined batch before their replies are
#: read (RFC 2920 §3.1 asks the client not to let the send window deadlock).
PIPELINE_BATCH = 100

#: Most BDAT chunks written before the oldest one's reply is read (RFC 3030
#: §4.2 allows BDAT to be pipelined; the window bounds the unread replies).
BDAT_WINDOW = 8


async def run_transaction(
    driver: Driver,
    tracker: OutcomeTracker,
    sender: ReversePath,
    recipients: list[ForwardPath],
    body: MailBody,
    plan: Plan,
    *,
    pipelining: bool,
    defer: bool = False,
) -> SendResult | None:
    """Send one message; ``None`` when *defer* left its end of data queued.

    The transaction is handed to *tracker* as soon as MAIL is queued. Raises
    the server's refusals (:class:`SMTPSenderRefused`,
    :class:`SMTPRecipientsRefused`, :class:`SMTPResponseError`) after ending
    the transaction, and lets every other error through.
    """
    core = driver.core
    size = driver.send_size
    txn = core.mail(sender, plan.mail_params)
    tracker._follow(txn)
    whole = body.data
    # With CHUNKING, a whole message that fits one chunk rides with the envelope.
    single = plan.chunking and plan.size is not None and plan.size < size
    if not pipelining:
        await driver.event()
        if txn.sender_reply is not None and txn.sender_reply.is_positive:
            for path in recipients:
                core.rcpt(path, plan.rcpt_params(path))
                await driver.event()
    else:
        dsn = plan.dsn
        for i, path in enumerate(recipients, 1):
            core.rcpt(path, () if dsn is None else dsn.rcpt_params(path))  # plan.rcpt_params
            if i % PIPELINE_BATCH == 0:
                await driver.drain()
    if pipelining or txn.accepted:
        if single:
            assert whole is not None
            core.begin_bdat(chunk_size=size, binary=plan.binary)
            core.body(whole, clean=plan.clean)
            core.end_body()
        elif not plan.chunking:
            core.data()
    await driver.drain()

    sender_reply = txn.sender_reply
    if sender_reply is not None and not sender_reply.is_positive:
        await _refuse(driver, txn, SMTPSenderRefused.from_reply(sender_reply, "MAIL"))
    if not txn.accepted:
        await _refuse(driver, txn, SMTPRecipientsRefused.from_replies(txn.refused))
    if single:
        final = txn.final_reply
        assert final is not None
    elif plan.chunking:
        final = await _send_chunks(driver, txn, body, plan, pipelining)
    else:
        data_reply = txn.data_reply
        assert data_reply is not None
        if data_reply.code != 354:
            await _refuse(driver, txn, SMTPResponseError.from_reply(data_reply, "DATA"))
        if defer and pipelining and whole is not None and len(whole) <= size:
            # The body and the final dot wait for the next message's
            # envelope: one write and one wait for both (RFC 2920 §3.1).
            core.end_data(whole, clean=plan.clean)
            return None
        final = await _send_data(driver, body, plan)
    if txn.recipient_replies:
        return _lmtp_result(txn, "BDAT" if plan.chunking else ".")
    if not final.is_positive:
        error = SMTPResponseError.from_reply(final, "BDAT" if plan.chunking else ".")
        if plan.chunking:  # a refused BDAT leaves the transaction open
            await _refuse(driver, txn, error)
        raise error
    return SendResult(final, tuple(txn.accepted), txn.refused)


def _lmtp_result(txn: Transaction, command: str) -> SendResult:
    """Under LMTP, once every recipient has its reply to the end of data: the
    result when all are 2xx, else the error (RFC 2033 §4.2)."""
    replies = txn.recipient_replies
    assert replies
    result = txn.result()
    outcome = txn.outcome
    if outcome is Outcome.ACCEPTED:
        return result
    if outcome is Outcome.PARTIAL:
        raise SMTPPartialDelivery(result)
    # Refused for every recipient: the first permanent refusal, if any, says why.
    refusals = list(replies.values())
    reply = next((r for r in refusals if not r.is_transient), refusals[0])
    raise SMTPResponseError.from_reply(reply, command)


async def _send_data(driver: Driver, body: MailBody, plan: Plan) -> Reply:
    """After 354: the body, dot-stuffed by the core, then the final dot;
    returns the reply to the end of data."""
    core = driver.core
    whole = body.data
    if whole is not None and len(whole) <= driver.send_size:
        # A small whole message: body and final dot go out in one write.
        core.end_data(whole, clean=plan.clean)
    else:
        async with contextlib.aclosing(_pieces(driver, body)) as pieces:
            async for piece in pieces:
                core.body(piece, clean=plan.clean)
                await driver.write_data()
        core.end_body()
    event = await driver.event()
    if core.lmtp:  # one reply per accepted recipient (RFC 2033 §4.2)
        while core.awaiting_reply:
            await driver.event()
        txn = core.transaction
        assert txn is not None and txn.final_reply is not None
        return txn.final_reply
    return event.reply


class _ChunkRefused(Exception):
    def __init__(self, reply: Reply) -> None:
        self.reply = reply


def _check_chunk(verb: Verb, reply: Reply) -> None:
    if verb is Verb.BDAT and not reply.is_positive:
        raise _ChunkRefused(reply)


async def _send_chunks(
    driver: Driver, txn: Transaction, body: MailBody, plan: Plan, pipelining: bool
) -> Reply:
    """The body as BDAT chunks (framed by the core), up to :data:`BDAT_WINDOW`
    of them unanswered with PIPELINING (one without); returns the reply to
    ``BDAT … LAST``."""
    core = driver.core
    # RFC 3030 §4.2: BDAT may be pipelined only when PIPELINING is in use.
    window = BDAT_WINDOW if pipelining else 1
    core.begin_bdat(chunk_size=driver.send_size, binary=plan.binary)
    try:
        async with contextlib.aclosing(_pieces(driver, body)) as pieces:
            async for piece in pieces:
                core.body(piece, clean=plan.clean)
                while core.next_chunk():
                    await driver.write_data()
                    while (event := driver.ready_event()) is not None:
                        _check_chunk(event.verb, event.reply)
                    while core.inflight_count >= window:
                        event = await driver.event()
                        _check_chunk(event.verb, event.reply)
        core.end_body()
        while core.awaiting_reply:
            event = await driver.event()
            _check_chunk(event.verb, event.reply)
    except _ChunkRefused as refusal:
        error = SMTPResponseError.from_reply(refusal.reply, "BDAT")
        try:
            await driver.drain()  # RFC 3030 §4.2: read every reply
        except SMTPError as exc:  # the server refused, then dropped the connection
            error.__context__ = exc
            raise error from None
        await _refuse(driver, txn, error)
    final = txn.final_reply
    assert final is not None
    return final


async def _pieces(
    driver: Driver, body: MailBody
) -> AsyncGenerator[bytes | bytearray | memoryview]:
    """The message in pieces of at most ``send_size`` octets; a stream's
    chunks are checked as they come."""
    size = driver.send_size
    if body.data is not None:
        view = memoryview(body.data)
        for start in range(0, len(view), size):
            yield view[start : start + size]
        return
    assert body.chunks is not None
    caps = driver.core.capabilities
    eight_bit_ok = caps is not None and caps.eightbitmime
    iterator = aiter(body.chunks)
    try:
        async for chunk in iterator:
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise TypeError(f"message chunks must be bytes-like, not {type(chunk).__name__}")
            if not eight_bit_ok and not _isascii(chunk):
                raise SMTPNotSupportedError(
                    "the message has 8-bit bytes and the server does not offer "
                    "8BITMIME; the connection was dropped before the end of data"
                )
            if len(chunk) <= size:
                yield chunk
            else:
                view = memoryview(chunk).cast("B")
                for start in range(0, len(view), size):
                    yield view[start : start + size]
    except BaseException:
        await close_early(iterator)
        raise


def _isascii(data: bytes | bytearray | memoryview) -> bool:
    if isinstance(data, memoryview):
        return bytes(data).isascii()
    return data.isascii()


async def _refuse(driver: Driver, txn: Transaction, error: SMTPError) -> NoReturn:
    """Raise *error* after ending the refused transaction.

    If ending it fails too (a 421, a lost connection), the session is closed
    or broken, but *error* is what the caller needs to know.
    """
    try:
        core = driver.core
        final = txn.final_reply
        if final is not None and final.is_positive:
            # A pipelined BDAT LAST was accepted after the envelope was refused.
            raise SMTPProtocolError("the server accepted a message it had refused the envelope of")
        data_reply = txn.data_reply
        if data_reply is not None and data_reply.code == 354 and core.state is State.DATA:
            # RFC 2920 §3.1: DATA was accepted although nothing else was;
            # end an empty message so that the server refuses it.
            core.end_body()
            event = await driver.event()
            if event.reply.is_positive:
                raise SMTPProtocolError("the server accepted a message with no valid recipient")
        if core.state in (State.MAIL, State.RCPT, State.BDAT):
            core.rset()  # the table admits only 2xx to RSET
            await driver.event()
    except SMTPError as exc:
        error.__context__ = exc
        await driver.fail()
    raise error
