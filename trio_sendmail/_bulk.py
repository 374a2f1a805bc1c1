"""Bulk sending over a pool: one result per message, retries, rate limits.

Theory of operation
-------------------
:func:`send_bulk` runs ``concurrency`` worker tasks in a nursery of its own.
They take messages from the caller's input as they need them, through a
:class:`~trio_sendmail._bulk_types.Source` (``_bulk_types.py``), so the input
is read only as fast as messages go out.

**Pipelining across messages.** A worker takes a :class:`~trio_sendmail.Lease`
on a connection (:meth:`Pool.lease`, the pool's only way in) and keeps it
while the input has a message ready: the body and final dot of one
message go out in the same write as the next message's MAIL, RCPT and DATA,
and one wait brings back the reply to both (RFC 2920 §3.1 lets message content
open a pipelined group). Against a server without CHUNKING this halves the
waits per message; with CHUNKING a small message already takes one wait
(``BDAT … LAST`` rides with its envelope). The connection goes back to the pool
when the input has nothing ready, when the connection is due for retirement,
or when a message must wait for a retry; a ``rate`` limit sends one message at
a time.

Each message ends in exactly one :class:`BulkResult`, handed to ``on_result``
(or gathered in the returned summary):

* ``ACCEPTED``: a 2xx reply to the end of data (refused recipients are listed);
* ``REFUSED``: the server refused the message (a 4xx or 5xx reply to ``MAIL``,
  ``RCPT``, ``DATA``, ``BDAT`` or the end of data): permanently, or still after
  ``max_retries`` retries (``attempts`` says);
* ``PARTIAL`` (LMTP only): the server delivered it to some recipients and
  refused it for others (:class:`~trio_sendmail.SMTPPartialDelivery`); never
  retried, since a retry would deliver it twice to the first ones;
* ``UNKNOWN``: the end of the data went out but no reply came back. It is **not
  retried** by default: the server may have queued it, and a retry could
  deliver it twice (``retry_unknown=True`` changes that);
* ``NOT_SENT``: it failed for good without a refusal before its end of data
  went out (a malformed message, or a connection lost or timed out still after
  the retries), or the run was cancelled or ended by a fatal error and the
  wire shows that the server cannot have the message.

Transient failures (4xx, a connection lost or timed out before the end of the
data) are retried with exponential back-off and full jitter. One message's
failure never cancels the others. Only errors that make every send pointless
end the run and are raised, unwrapped: when *opening a connection* fails on
authentication, TLS verification, a missing required extension (STARTTLS, an
AUTH mechanism), or fails outright after the pool's connect retries; and bugs.
A message the server cannot take (too large, 8-bit without 8BITMIME) fails
alone.

**Cancellation.** Each attempt of a message has an :class:`OutcomeTracker` of
its own, and every status is read from it. When the run is cancelled or ended
by a fatal error, each message still in flight is reported with what its
latest attempt's tracker shows: ``ACCEPTED`` if the 2xx reply had arrived,
``REFUSED`` if the message was refused, ``UNKNOWN`` if its end of data went out
without a reply (or an earlier attempt was unknown), else ``NOT_SENT``. A
deferred end of data still in the buffer is dropped with the connection, so
its message is ``NOT_SENT``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import Unpack

import trio

from ._bulk_types import (
    END,
    BulkMessage,
    BulkProgress,
    BulkResult,
    BulkSummary,
    Job,
    Marker,
    Source,
)
from ._errors import (
    Outcome,
    SMTPConnectionError,
    SMTPError,
    SMTPProtocolError,
    SMTPTimeoutError,
    SMTPTransientError,
)
from ._lease import Lease
from ._message import prepare_mail
from ._plan import message_options
from ._pool import DEFAULT_LIMITS, FATAL_CONNECT_ERRORS, Pool, open_pool
from ._pool_limits import PoolLimits, RateLimiter
from ._reply_errors import (
    SMTPRecipientsRefused,
    SMTPResponseError,
    SMTPServiceClosing,
)
from ._settings import ConnectionOptions, ConnectionSettings
from ._transaction import OutcomeTracker, SendResult, settle_error

__all__ = ["BulkMessage", "BulkProgress", "BulkResult", "BulkSummary", "send_bulk"]

#: A run's start and summary and each refused message (INFO), retries and
#: messages not accepted for another reason (WARNING), a run ended by a fatal
#: error (ERROR), back-off and rate-limit waits (DEBUG). Nothing is logged for
#: an accepted message; nothing logged is a secret (keys, error texts, counts).
logger = logging.getLogger("trio_sendmail.bulk")

# Failures to open a connection that make every other send pointless: those the
# pool never retries (bad credentials or TLS, a missing extension), and a
# connection error, which the pool raises only after its connect_retries.
_FATAL = (*FATAL_CONNECT_ERRORS, SMTPConnectionError)

# An enum member read for every message, as a module constant: reading one from
# its class costs several times a global's lookup (Python 3.11).
_ACCEPTED = Outcome.ACCEPTED

# The commands of a mail transaction: a refusal of one of them refuses the message.
_TRANSACTION_COMMANDS = frozenset({"MAIL", "RCPT", "DATA", "BDAT", "BDAT-LAST", "."})


def _refused(error: SMTPError) -> bool:
    """True when *error* is the server's 4xx or 5xx reply to a command of the
    message's transaction (not, say, to the greeting or to ``RSET``)."""
    if isinstance(error, SMTPRecipientsRefused):
        return True
    return isinstance(error, SMTPResponseError) and error.command in _TRANSACTION_COMMANDS


def _lost_error(
    error: BaseException, tracker: OutcomeTracker, *, written: bool = True
) -> SMTPError:
    """The error of a pipelined message whose connection failed before the
    reply to its end of data (*error* is what the next message ran into); or,
    not *written*, before any of it was written (*error* is the previous
    message's own)."""
    copy: SMTPError
    if not written:
        copy = SMTPConnectionError(
            f"the connection was closed before this message was written: {error}"
        )
    elif isinstance(error, SMTPTimeoutError):
        copy = SMTPTimeoutError(str(error), phase=error.phase)
    elif isinstance(error, SMTPProtocolError):
        copy = SMTPProtocolError(str(error))
    else:
        copy = SMTPConnectionError(
            f"the connection was lost before the reply to the end of data: {error}"
        )
    copy.__cause__ = error
    return settle_error(copy, tracker.transaction)


def _log_result(result: BulkResult) -> None:
    """Log a message that was not accepted: refused at INFO (the server's
    answer, an everyday event), anything else at WARNING."""
    status = result.status
    level = logging.INFO if status is Outcome.REFUSED else logging.WARNING
    if not logger.isEnabledFor(level):
        return
    if status is Outcome.UNKNOWN:
        why = "outcome unknown (the server may have queued it; resending risks a duplicate)"
    else:
        why = status.value.replace("_", " ")
    logger.log(
        level,
        "message %r: %s after %d attempt%s: %s",
        result.message.key,
        why,
        result.attempts,
        "" if result.attempts == 1 else "s",
        result.error,
    )


def _refusal(tracker: OutcomeTracker) -> SMTPError:
    """The error of a pipelined message that the server refused."""
    reply = tracker.final_reply
    assert reply is not None
    kind = SMTPServiceClosing if reply.code == 421 else SMTPResponseError
    return settle_error(kind.from_reply(reply, "."), tracker.transaction)


async def send_bulk(
    messages: Iterable[BulkMessage] | AsyncIterable[BulkMessage],
    *,
    pool: Pool | None = None,
    server: str | ConnectionSettings | None = None,
    limits: PoolLimits | None = None,
    concurrency: int | None = None,
    max_retries: int = 3,
    retry_backoff: float = 1.0,
    retry_unknown: bool = False,
    rate: float | None = None,
    on_result: Callable[[BulkResult], None] | None = None,
    progress: Callable[[BulkProgress], None] | None = None,
    before_end_of_data: Callable[[BulkMessage], Awaitable[None]] | None = None,
    **options: Unpack[ConnectionOptions],
) -> BulkSummary:
    """Send many messages concurrently over *pool*, or over a pool of its own.

    Args:
        messages: :class:`BulkMessage`\\ s, from an iterable or an async iterable
            (such as the receive side of a memory channel). They are read as the
            workers need them, so the input can be endless.
        pool: the :class:`Pool` to send through (see :func:`open_pool`; its
            ``max_connect_rate`` limits connections per second).
        server: instead of *pool*, the server to open a pool to, for this run
            only: a host name or a :class:`ConnectionSettings`, as for
            :func:`open_pool`.
        limits: with *server*, the :class:`PoolLimits` of that pool.
        concurrency: connections sending at once (default: the pool's
            ``max_connections``). Under PIPELINING each carries up to two
            messages: one waiting for the reply to its end of data while the
            next one's envelope goes out.
        max_retries: retries of a transiently failing message.
        retry_backoff: the first retry waits up to this many seconds; each next
            one up to twice as long (full jitter), at most 5 minutes.
        retry_unknown: also retry messages whose outcome is unknown (risking
            duplicates; off by default).
        rate: the most messages started per second, or ``None``.
        on_result: called with each :class:`BulkResult` as soon as it is final.
            Without it, results are gathered in the returned summary.
        progress: called with a :class:`BulkProgress` after every change.
        before_end_of_data: awaited with a message right before its end of
            data is written, on each attempt (see :class:`OutcomeTracker`): a
            durable queue records there that the message may now be delivered.
            If it raises, that attempt's end of data is never written: its
            connection is closed and the message is reported
            :attr:`Outcome.NOT_SENT` with the error (an :class:`SMTPError`,
            :class:`TypeError` or :class:`ValueError`;
            any other exception ends the run).
        options: with *server*, the connection options of :func:`open_pool`
            (:class:`ConnectionOptions`: ``port``, ``tls``, ``authentication``, …).

    Returns:
        :class:`BulkSummary` with the counts (and the results, without ``on_result``).

    Raises:
        SMTPAuthenticationError, SMTPTLSError, SMTPNotSupportedError,
        SMTPConnectionError: opening a connection failed in a way that makes
            every send pointless; the run stops, and every message taken from
            the input so far has been reported.
    """
    if pool is None:
        if server is None:
            raise TypeError("send_bulk needs a pool or a server")
        own_limits = DEFAULT_LIMITS if limits is None else limits
        async with open_pool(server, limits=own_limits, **options) as own_pool:
            return await send_bulk(
                messages,
                pool=own_pool,
                concurrency=concurrency,
                max_retries=max_retries,
                retry_backoff=retry_backoff,
                retry_unknown=retry_unknown,
                rate=rate,
                on_result=on_result,
                progress=progress,
                before_end_of_data=before_end_of_data,
            )
    if server is not None or limits is not None or options:
        raise TypeError("give send_bulk either a pool or connection parameters, not both")
    if concurrency is None:
        concurrency = pool.limits.max_connections
    if concurrency < 1 or max_retries < 0 or not retry_backoff >= 0:
        raise ValueError("concurrency must be >= 1, max_retries and retry_backoff >= 0")
    run = _Run(pool, max_retries, retry_backoff, retry_unknown, rate, on_result, progress)
    run.gate = before_end_of_data
    await run.run(messages, concurrency)
    return run.summary


class _Run:
    """The state of one :func:`send_bulk` call."""

    def __init__(
        self,
        pool: Pool,
        max_retries: int,
        retry_backoff: float,
        retry_unknown: bool,
        rate: float | None,
        on_result: Callable[[BulkResult], None] | None,
        progress: Callable[[BulkProgress], None] | None,
    ) -> None:
        self.pool = pool
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.retry_unknown = retry_unknown
        self.rate = rate
        self.limiter = RateLimiter(rate)
        self.on_result = on_result
        self.progress = progress
        self.summary = BulkSummary()
        self.started = trio.current_time()
        self.in_flight = 0
        self.fatal: list[BaseException] = []
        self.gate: Callable[[BulkMessage], Awaitable[None]] | None = None

    # ---------------------------------------------------------- reporting

    def report(self, result: BulkResult, job: Job | None = None) -> None:
        summary = self.summary
        status = result.status
        if status is _ACCEPTED:
            summary.accepted += 1
        else:
            if status is Outcome.REFUSED:
                summary.refused += 1
            elif status is Outcome.UNKNOWN:
                summary.unknown += 1
            elif status is Outcome.PARTIAL:
                summary.partial += 1
            else:
                summary.not_sent += 1
            _log_result(result)
        if job is not None:
            job.reported = True
            self.in_flight -= 1
        if self.on_result is not None:
            self.on_result(result)
        else:
            summary.results.append(result)
        if self.progress is not None:
            self.notify()

    def notify(self) -> None:
        if self.progress is None:
            return
        summary = self.summary
        self.progress(
            BulkProgress(
                accepted=summary.accepted,
                refused=summary.refused,
                unknown=summary.unknown,
                not_sent=summary.not_sent,
                retried=summary.retried,
                in_flight=self.in_flight,
                elapsed=trio.current_time() - self.started,
                partial=summary.partial,
            )
        )

    def taken(self, message: BulkMessage) -> Job:
        self.in_flight += 1
        if self.progress is not None:
            self.notify()
        return Job(message, gate=self.gate)

    def classify(
        self, job: Job, exc: BaseException, *, connecting: bool = False
    ) -> BulkResult | None:
        """The final result of a failed attempt, or None to retry it."""
        message, attempts = job.message, job.attempts
        if isinstance(exc, SMTPError):
            if connecting and isinstance(exc, _FATAL):
                # Every send would fail the same way (bad credentials or TLS, or
                # no connection after the pool's retries): the run ends.
                self.fatal.append(exc)
                logger.error("the bulk run stops: no connection can be opened: %s", exc)
                return BulkResult(message, Outcome.NOT_SENT, error=exc, attempts=attempts)
            if exc.outcome is Outcome.PARTIAL:  # LMTP: some recipients have it
                status = Outcome.UNKNOWN if job.was_unknown else Outcome.PARTIAL
                result = job.tracker.result
                return BulkResult(message, status, result=result, error=exc, attempts=attempts)
            unknown = job.tracker.outcome is Outcome.UNKNOWN or exc.outcome is Outcome.UNKNOWN
            if attempts <= self.max_retries and self._retryable(job, exc, unknown):
                job.was_unknown |= unknown
                logger.warning(
                    "message %r: attempt %d of %d failed%s, to be retried: %s",
                    message.key,
                    attempts,
                    self.max_retries + 1,
                    " with an unknown outcome" if unknown else "",
                    exc,
                )
                return None
            # After an attempt that may have been accepted, no later refusal
            # proves the message was not delivered.
            unknown |= job.was_unknown
            if unknown:
                status = Outcome.UNKNOWN
            elif _refused(exc) or job.tracker.outcome is Outcome.REFUSED:
                status = Outcome.REFUSED  # the server said no
            else:  # no refusal, and the wire shows the server cannot have it
                status = Outcome.NOT_SENT
            return BulkResult(message, status, error=exc, attempts=attempts)
        assert isinstance(exc, TypeError | ValueError)  # a malformed message, before any I/O
        return BulkResult(message, Outcome.NOT_SENT, error=exc, attempts=attempts)

    def _retryable(self, job: Job, error: SMTPError, unknown: bool) -> bool:
        if job.stream is not None and job.stream.started:
            return False  # the chunks already read are gone
        if unknown:
            return self.retry_unknown
        if isinstance(error, SMTPTransientError):
            return True
        return isinstance(error, SMTPConnectionError | SMTPTimeoutError)

    def interrupted(self, job: Job, exc: BaseException) -> None:
        """Report a job cut short by cancellation or another task's failure,
        with what the wire says of its latest attempt."""
        if job.reported:
            return
        tracker = job.tracker
        outcome = tracker.outcome
        result = None
        if outcome is Outcome.ACCEPTED or outcome is Outcome.PARTIAL:
            result = tracker.result
        elif job.was_unknown:
            outcome = Outcome.UNKNOWN
        error = None if outcome is Outcome.ACCEPTED else exc
        self.report(BulkResult(job.message, outcome, result=result, error=error,
                               attempts=job.attempts), job)  # fmt: skip

    def finish(self, job: Job, result: BulkResult) -> None:
        """Report *job*'s final result; raise if it ended the run."""
        self.report(result, job)
        if self.fatal and any(result.error is error for error in self.fatal):
            raise self.fatal[0]

    @staticmethod
    def accepted(job: Job, result: SendResult) -> BulkResult:
        return BulkResult(job.message, _ACCEPTED, result=result, attempts=job.attempts)

    # ---------------------------------------------------------- one at a time

    async def deliver(self, job: Job, *, backoff: bool) -> None:
        """Retry *job* alone until it has a final result (after back-off if *backoff*)."""
        message = job.message
        try:
            while True:
                if backoff:
                    self.summary.retried += 1
                    self.notify()
                    ceiling = min(300.0, self.retry_backoff * 2.0 ** (job.attempts - 1))
                    delay = random.uniform(0, ceiling)
                    logger.debug("message %r: retry in %.2f s", message.key, delay)
                    await trio.sleep(delay)
                backoff = True
                tracker = job.attempt()
                if self.rate is None:
                    await self.limiter.wait()
                else:
                    await self._rate_wait(message)
                connected = False
                try:
                    async with self.pool.lease() as lease:
                        connected = True
                        result = await lease.send(
                            message.sender, message.recipients, job.body(),
                            dsn=message.dsn, requiretls=message.requiretls,
                            binary=message.binary, tracker=tracker,
                        )  # fmt: skip
                except (SMTPError, TypeError, ValueError) as exc:
                    final = self.classify(job, exc, connecting=not connected)
                    if final is None:
                        continue
                else:
                    assert result is not None
                    final = BulkResult(message, Outcome.ACCEPTED, result=result,
                                       attempts=job.attempts)  # fmt: skip
                self.finish(job, final)
                return
        except BaseException as exc:
            self.interrupted(job, exc)
            raise

    async def _rate_wait(self, message: BulkMessage) -> None:
        started = trio.current_time()
        await self.limiter.wait()
        waited = trio.current_time() - started
        if waited > 0 and logger.isEnabledFor(logging.DEBUG):
            logger.debug("message %r: waited %.3f s for the rate limit", message.key, waited)

    # ---------------------------------------------------------- pipelined

    async def lease(self, job: Job, source: Source) -> list[tuple[Job, bool]]:
        """Send *job*, then every message the input has ready, over one
        connection, pipelining each message's end of data with the next
        message's envelope (RFC 2920 §3.1).

        Returns the jobs to retry alone, each with whether to back off first.
        """
        retry: list[tuple[Job, bool]] = []
        pending: Job | None = None  # its end of data has no reply yet
        current: Job | None = job
        connected = False
        try:
            job.attempt()  # opening the connection is part of this attempt
            async with self.pool.lease() as lease:
                connected = True
                with lease.batch():  # one cancel scope for the whole run
                    first = True
                    while current is not None:
                        if not first:
                            current.attempt()
                        first = False
                        message = current.message
                        try:
                            # Lease.send without its wrapper: a BulkMessage
                            # always holds its envelope (read from the headers
                            # when it was made), and one frame less is one less
                            # to pass through at every wait.
                            out = await lease._send(
                                message.sender, message.recipients,
                                prepare_mail(current.body()),
                                message_options(message.dsn, message.requiretls, message.binary),
                                tracker=current.tracker, defer=True,
                            )  # fmt: skip
                        except (SMTPError, TypeError, ValueError) as exc:
                            gated = False
                            if pending is not None:
                                # The pending message's own before_end_of_data
                                # may have raised while this one's envelope
                                # waited behind its end: the error is its own.
                                gated = pending.tracker.gate_error is exc
                                pending = self._pending_done(pending, lease, exc, retry, own=gated)
                            failed, current = current, None
                            if gated and (failed.stream is None or not failed.stream.started):
                                # Nothing of this one was written: it goes again
                                # (alone, at once), and this was no attempt.
                                failed.attempts -= 1
                                retry.append((failed, False))
                            else:
                                if gated:
                                    exc = _lost_error(exc, failed.tracker, written=False)
                                final = self.classify(failed, exc)
                                if final is None:
                                    retry.append((failed, True))
                                else:
                                    self.finish(failed, final)
                            if not lease.session.is_usable:
                                break
                        else:
                            if pending is not None:
                                pending = self._pending_done(pending, lease, None, retry)
                            done, current = current, None
                            if out is None:
                                pending = done
                            else:
                                self.finish(done, self.accepted(done, out))
                        if retry or lease.should_return():
                            # A retry waits its back-off before anything else, and
                            # another task waiting for a connection gets this one.
                            break
                        following = source.take_nowait()
                        if isinstance(following, Marker):
                            break
                        current = self.taken(following)
                if pending is not None:
                    try:
                        await lease.settle()
                    except SMTPError as exc:
                        pending = self._pending_done(pending, lease, exc, retry, own=True)
                    else:
                        pending = self._pending_done(pending, lease, None, retry)
            return retry
        except SMTPError as exc:
            if connected:
                raise self._interrupted_all(exc, pending, current, retry) from None
            final = self.classify(job, exc, connecting=True)
            if final is None:
                return [(job, True)]
            self.finish(job, final)
            return []
        except BaseException as exc:
            raise self._interrupted_all(exc, pending, current, retry) from None

    def _interrupted_all(
        self,
        exc: BaseException,
        pending: Job | None,
        current: Job | None,
        retry: list[tuple[Job, bool]],
    ) -> BaseException:
        """Report every job of a lease cut short; returns *exc* to raise."""
        for job in (pending, current, *(waiting for waiting, _ in retry)):
            if job is not None:
                self.interrupted(job, exc)
        return exc.with_traceback(exc.__traceback__)

    def _pending_done(
        self,
        job: Job,
        lease: Lease,
        error: BaseException | None,
        retry: list[tuple[Job, bool]],
        *,
        own: bool = False,
    ) -> Job | None:
        """Report a pipelined message once its end of data was answered, or its
        connection failed before the answer (*error*: the next message's
        error, or its own if *own*); returns it while it still waits."""
        tracker = job.tracker
        final = tracker.final_reply
        if final is None:
            if lease.session.is_usable:
                return job  # the next message failed before any I/O
            assert error is not None
            # Its own error already tells its outcome; another message's does not.
            exc = error if own and isinstance(error, SMTPError) else _lost_error(error, tracker)
        elif final.is_positive:
            accepted = tracker.result
            assert accepted is not None
            self.finish(job, BulkResult(job.message, _ACCEPTED, result=accepted,
                                        attempts=job.attempts))  # fmt: skip
            return None
        else:
            exc = _refusal(tracker)
        result = self.classify(job, exc)
        if result is None:
            retry.append((job, True))
        else:
            self.finish(job, result)
        return None

    # ---------------------------------------------------------- the run

    async def work(self, source: Source) -> None:
        while True:
            message = await source.take()
            if message is END:
                return
            assert not isinstance(message, Marker)
            job = self.taken(message)
            if self.rate is not None:
                await self.deliver(job, backoff=False)
                continue
            retries = await self.lease(job, source)
            for i, (retry, backoff) in enumerate(retries):
                try:
                    await self.deliver(retry, backoff=backoff)
                except BaseException as exc:
                    # Every job taken is reported, also those still waiting
                    # for their turn to be retried.
                    for waiting, _ in retries[i + 1 :]:
                        self.interrupted(waiting, exc)
                    raise

    async def run(
        self, messages: Iterable[BulkMessage] | AsyncIterable[BulkMessage], concurrency: int
    ) -> None:
        source = Source(self.report, messages)
        logger.info(
            "bulk run started: concurrency %d, max_retries %d, rate %s",
            concurrency,
            self.max_retries,
            "unlimited" if self.rate is None else f"{self.rate:g}/s",
        )
        try:
            async with trio.open_nursery() as nursery:
                source.start(nursery)
                for _ in range(concurrency):
                    nursery.start_soon(self.work, source)
        except BaseExceptionGroup as group:
            if self.fatal:
                raise self.fatal[0] from None
            leaves = group.exceptions
            if len(leaves) == 1:
                raise leaves[0] from leaves[0].__cause__
            raise
        finally:
            source.close()
            summary = self.summary
            logger.info(
                "bulk run ended after %.1f s: %d accepted, %d refused, %d unknown, "
                "%d not sent, %d retries%s",
                trio.current_time() - self.started,
                summary.accepted,
                summary.refused,
                summary.unknown,
                summary.not_sent,
                summary.retried,
                f", {summary.partial} partial" if summary.partial else "",
            )
