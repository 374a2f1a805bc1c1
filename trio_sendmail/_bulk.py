"""Bulk sending over a pool: one result per message, retries, rate limits.

Theory of operation
-------------------
:func:`send_bulk` runs ``concurrency`` worker tasks in a nursery of its own.
A feeder task pulls messages from the caller's iterable (sync or async, e.g. a
:class:`trio.MemoryReceiveChannel`) into an unbuffered channel, so at most one
message per worker is held in memory however long the input is.

Each message ends in exactly one :class:`BulkResult`, handed to ``on_result``
(or gathered in the returned summary):

* ``ACCEPTED``: a 2xx reply to the end of data (refused recipients are listed);
* ``FAILED``: a permanent refusal (5xx), a bad message, or a transient failure
  that was still failing after ``max_retries`` retries (``attempts`` says);
* ``UNKNOWN``: the end of the data went out but no reply came back. It is **not
  retried** by default: the server may have queued it, and a retry could
  deliver it twice (``retry_unknown=True`` changes that);
* ``NOT_SENT``: the run was cancelled or ended by a fatal error before the
  message could be accepted.

Transient failures (4xx, a connection lost or timed out before the end of the
data) are retried with exponential back-off and full jitter. One message's
failure never cancels the others. Only errors that make every send pointless
end the run and are raised, unwrapped: when *opening a connection* fails on
authentication, TLS verification, a missing required extension (STARTTLS, an
AUTH mechanism), or fails outright after the pool's connect retries; and bugs.
A message the server cannot take (too large, 8-bit without 8BITMIME) fails
alone. Messages that were still pending are then reported as ``NOT_SENT``.
"""

from __future__ import annotations

import enum
import random
from collections.abc import AsyncIterable, Callable, Iterable
from email.headerregistry import Address
from typing import Any

import attrs
import trio

from ._address import ForwardPath, Mailbox, ReversePath
from ._dsn import DSN
from ._errors import (
    Outcome,
    SMTPAuthenticationError,
    SMTPConnectionError,
    SMTPError,
    SMTPNotSupportedError,
    SMTPTimeoutError,
    SMTPTransientError,
)
from ._message import Mail, close_early
from ._pool import Pool, _RateLimiter, _Tracker, open_pool
from ._session import SendResult

__all__ = ["BulkMessage", "BulkProgress", "BulkResult", "BulkStatus", "BulkSummary", "send_bulk"]


_Recipient = ForwardPath | Mailbox | str | Address


def _recipients(value: Iterable[_Recipient]) -> tuple[_Recipient, ...]:
    if isinstance(value, str | bytes | Address | ForwardPath | Mailbox):
        raise TypeError("recipients must be an iterable of addresses, not a single address")
    return tuple(value)


@attrs.frozen
class BulkMessage:
    """One message of a bulk run: its envelope, its content, and your key.

    Args:
        sender: the reverse-path.
        recipients: the forward-paths.
        mail: the message (bytes or an :class:`email.message.EmailMessage` can be
            retried; a stream only until its first chunk was read).
        key: anything that identifies the message for you (returned in its result).
        dsn: DSN options for this message.
    """

    sender: ReversePath | Mailbox | str | Address
    recipients: tuple[_Recipient, ...] = attrs.field(converter=_recipients)
    mail: Mail = attrs.field(repr=False)
    key: object = None
    dsn: DSN | None = None


class BulkStatus(enum.Enum):
    """What became of one message."""

    ACCEPTED = "accepted"
    FAILED = "failed"
    UNKNOWN = "unknown"
    NOT_SENT = "not sent"


@attrs.frozen
class BulkResult:
    """The outcome of one message.

    Attributes:
        message: the message.
        status: :class:`BulkStatus`.
        result: the server's final reply and refused recipients, when accepted.
        error: the last error, when not accepted.
        attempts: how many times it was tried.
    """

    message: BulkMessage
    status: BulkStatus
    result: SendResult | None = None
    error: BaseException | None = None
    attempts: int = 0


@attrs.frozen
class BulkProgress:
    """A snapshot of a bulk run, given to the ``progress`` callback."""

    accepted: int
    failed: int
    unknown: int
    not_sent: int
    retried: int
    in_flight: int
    elapsed: float

    @property
    def done(self) -> int:
        """Messages with a final result."""
        return self.accepted + self.failed + self.unknown + self.not_sent

    @property
    def rate(self) -> float:
        """Accepted messages per second so far."""
        return self.accepted / self.elapsed if self.elapsed > 0 else 0.0


@attrs.define
class BulkSummary:
    """What :func:`send_bulk` returns."""

    accepted: int = 0
    failed: int = 0
    unknown: int = 0
    not_sent: int = 0
    retried: int = 0
    #: Every result, in completion order, when no ``on_result`` was given.
    results: list[BulkResult] = attrs.field(factory=list)


# Failures to open a connection that make every other send pointless.
_FATAL = (SMTPAuthenticationError, SMTPNotSupportedError, SMTPConnectionError)


def _retryable(error: SMTPError, tracker: _Tracker, retry_unknown: bool) -> bool:
    if tracker.stream_started:
        return False  # the chunks already read are gone
    if error.outcome is Outcome.UNKNOWN or tracker.outcome_unknown:
        return retry_unknown
    if isinstance(error, SMTPTransientError):
        return True
    return isinstance(error, SMTPConnectionError | SMTPTimeoutError)


async def send_bulk(
    messages: Iterable[BulkMessage] | AsyncIterable[BulkMessage],
    *,
    pool: Pool | None = None,
    hostname: str | None = None,
    concurrency: int | None = None,
    max_retries: int = 3,
    retry_backoff: float = 1.0,
    retry_unknown: bool = False,
    rate: float | None = None,
    on_result: Callable[[BulkResult], None] | None = None,
    progress: Callable[[BulkProgress], None] | None = None,
    **connection: Any,
) -> BulkSummary:
    """Send many messages concurrently over *pool*, or over a pool of its own.

    Args:
        messages: :class:`BulkMessage`\\ s, from an iterable or an async iterable
            (such as the receive side of a memory channel). They are read as the
            workers need them, so the input can be endless.
        pool: the :class:`Pool` to send through (see :func:`open_pool`; its
            ``max_connect_rate`` limits connections per second).
        hostname: instead of *pool*, the server to open a pool to, for this run
            only; the other keyword arguments of :func:`open_pool` (``port``,
            ``tls``, ``authentication``, ``limits``, …) go in ``**connection``.
        concurrency: messages in flight at once (default: the pool's
            ``max_connections``).
        max_retries: retries of a transiently failing message.
        retry_backoff: the first retry waits up to this many seconds; each next
            one up to twice as long (full jitter), at most 5 minutes.
        retry_unknown: also retry messages whose outcome is unknown (risking
            duplicates; off by default).
        rate: the most messages started per second, or ``None``.
        on_result: called with each :class:`BulkResult` as soon as it is final.
            Without it, results are gathered in the returned summary.
        progress: called with a :class:`BulkProgress` after every change.

    Returns:
        :class:`BulkSummary` with the counts (and the results, without ``on_result``).

    Raises:
        SMTPAuthenticationError, SMTPTLSError, SMTPNotSupportedError,
        SMTPConnectionError: opening a connection failed in a way that makes
            every send pointless; the run stops, and every message taken from
            the input so far has been reported.
    """
    if pool is None:
        if hostname is None:
            raise TypeError("send_bulk needs a pool or a hostname")
        async with open_pool(hostname, **connection) as own_pool:
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
            )
    if hostname is not None or connection:
        raise TypeError("give send_bulk either a pool or connection parameters, not both")
    if concurrency is None:
        concurrency = pool._limits.max_connections
    if concurrency < 1 or max_retries < 0 or not retry_backoff >= 0:
        raise ValueError("concurrency must be >= 1, max_retries and retry_backoff >= 0")
    summary = BulkSummary()
    limiter = _RateLimiter(rate)
    started = trio.current_time()
    in_flight = 0
    fatal: list[BaseException] = []

    def report(result: BulkResult) -> None:
        counter = result.status.name.lower()
        setattr(summary, counter, getattr(summary, counter) + 1)
        if on_result is not None:
            on_result(result)
        else:
            summary.results.append(result)
        notify()

    def notify() -> None:
        if progress is not None:
            progress(
                BulkProgress(
                    accepted=summary.accepted,
                    failed=summary.failed,
                    unknown=summary.unknown,
                    not_sent=summary.not_sent,
                    retried=summary.retried,
                    in_flight=in_flight,
                    elapsed=trio.current_time() - started,
                )
            )

    async def attempt(message: BulkMessage, attempts: int, tracker: _Tracker) -> BulkResult | None:
        """One try: the final result, or None to retry (cancellation passes through)."""
        try:
            result = await pool._send(
                message.sender, message.recipients, message.mail,
                message.dsn, False, False, tracker,
            )  # fmt: skip
        except SMTPError as exc:
            if tracker.connecting and isinstance(exc, _FATAL):
                # Every send would fail the same way (bad credentials or TLS, or
                # no connection after the pool's retries): the run ends.
                fatal.append(exc)
                return BulkResult(message, BulkStatus.NOT_SENT, error=exc, attempts=attempts)
            if attempts <= max_retries and _retryable(exc, tracker, retry_unknown):
                return None
            unknown = exc.outcome is Outcome.UNKNOWN or tracker.outcome_unknown
            status = BulkStatus.UNKNOWN if unknown else BulkStatus.FAILED
            return BulkResult(message, status, error=exc, attempts=attempts)
        except (TypeError, ValueError) as exc:  # a malformed message
            return BulkResult(message, BulkStatus.FAILED, error=exc, attempts=attempts)
        return BulkResult(message, BulkStatus.ACCEPTED, result=result, attempts=attempts)

    async def deliver(message: BulkMessage) -> None:
        nonlocal in_flight
        attempts = 0
        tracker = _Tracker()
        in_flight += 1
        notify()
        try:
            while True:
                attempts += 1
                tracker = _Tracker()
                await limiter.wait()
                final = await attempt(message, attempts, tracker)
                if final is not None:
                    report(final)
                    if any(final.error is error for error in fatal):
                        raise fatal[0]
                    return
                summary.retried += 1
                notify()
                ceiling = min(300.0, retry_backoff * 2.0 ** (attempts - 1))
                await trio.sleep(random.uniform(0, ceiling))
        except BaseException as exc:
            if not any(exc is error for error in fatal):
                # Cancelled while waiting, sending or backing off: still reported.
                status = BulkStatus.UNKNOWN if tracker.outcome_unknown else BulkStatus.NOT_SENT
                report(BulkResult(message, status, error=exc, attempts=attempts))
            raise
        finally:
            in_flight -= 1

    send_channel, receive_channel = trio.open_memory_channel[BulkMessage](0)

    async def hand_over(message: BulkMessage) -> None:
        try:
            await send_channel.send(message)
        except BaseException as exc:  # taken from the input: it must be reported
            report(BulkResult(message, BulkStatus.NOT_SENT, error=exc))
            raise

    async def feed() -> None:
        async with send_channel:
            if not isinstance(messages, AsyncIterable):
                for message in messages:
                    await hand_over(message)
                return
            iterator = aiter(messages)
            try:
                async for message in iterator:
                    await hand_over(message)
            except BaseException:
                await close_early(iterator)
                raise

    async def work(receive: trio.MemoryReceiveChannel[BulkMessage]) -> None:
        async with receive:
            async for message in receive:
                await deliver(message)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed)
            async with receive_channel:
                for _ in range(concurrency):
                    nursery.start_soon(work, receive_channel.clone())
    except BaseExceptionGroup as group:
        if fatal:
            raise fatal[0] from None
        leaves = group.exceptions
        if len(leaves) == 1:
            raise leaves[0] from leaves[0].__cause__
        raise
    return summary
