"""A connection pool for concurrent sending.

Theory of operation
-------------------
A :class:`Pool` owns up to ``max_connections`` :class:`~trio_sendmail.Session`\\ s
and a nursery for its own housekeeping (closing connections, reaping idle
ones), so that no task of the pool outlives its ``async with`` block.

* **Reuse.** Every send holds a :class:`Lease` (:meth:`Pool.lease`, the only
  way into a pooled connection; :meth:`Pool.send` and the bulk sender use it
  too). Taking one picks the most recently used idle connection (the one
  least likely to have been dropped by the server), or opens a new one while
  fewer than the *target size* are open, or else waits: callers park in FIFO
  order on a :class:`trio.lowlevel.ParkingLot`, so back-pressure needs no
  queue of its own.
* **Health.** A connection that was interrupted in any way is discarded (the
  session breaks itself, see :attr:`Session.is_usable`). One that sat idle for
  ``idle_check_after`` seconds is checked with NOOP before reuse. If a reused
  connection turns out to have been closed by the server, the lease sends the
  message again on another connection, and the caller sees no error, only
  when the wire proves the first attempt :attr:`Outcome.NOT_SENT`: e.g. a 421
  or an EOF seen by the driver's probe before anything was written, or a 421
  answering MAIL (data pipelined behind it never went into a transaction).
  A message whose data went into a transaction the server had opened, or
  whose stream was already read, is never sent twice (see :func:`_stale`).
* **Back-off.** When the server refuses new connections (421 at the greeting,
  or a refused TCP connect under load), the target size shrinks to the number
  of connections that work, and new attempts wait with exponential back-off and
  jitter. The target grows back by one each time a caller had to wait and no
  refusal happened for ``regrow_after`` seconds.
* **Limits** (:class:`PoolLimits`, in ``_pool_limits.py`` with the
  :class:`RateLimiter` that paces new connections). A connection is retired
  after ``max_messages_per_connection`` messages or ``max_age`` seconds, and
  closed when idle longer than ``max_idle`` seconds (RFC 5321 §4.5.3.2.7:
  servers drop idle clients after 5 minutes; providers much sooner).
* **Closing** sends QUIT on idle connections, under a short shielded timeout,
  and closes the rest.
"""

from __future__ import annotations

import email.message
import logging
import math
import random
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Unpack, overload

import trio

from ._dsn import DSN
from ._errors import (
    SMTPError,
    SMTPNotSupportedError,
    SMTPTLSError,
)
from ._inputs import Recipient, Sender, message_envelope
from ._lease import Lease, _Connection
from ._message import Mail, prepare_mail
from ._plan import message_options
from ._pool_limits import PoolLimits, PoolStatistics, RateLimiter
from ._reply_errors import SMTPAuthenticationError
from ._session import _connect
from ._settings import ConnectionOptions, ConnectionSettings, connection_settings
from ._transaction import OutcomeTracker, SendResult
from .proxy import SMTPProxyAuthenticationError

__all__ = [
    "FATAL_CONNECT_ERRORS",
    "Pool",
    "PoolLimits",
    "PoolStatistics",
    "RateLimiter",
    "open_pool",
]

#: Connections opened and closed (INFO), back-off and unknown outcomes
#: (WARNING), connections that cannot be opened (ERROR). Never per message on
#: the success path; never a secret (host, port, session number, error text).
logger = logging.getLogger("trio_sendmail.pool")


# Failures to open a connection that every further attempt would meet again
# (credentials refused, a TLS failure, an extension or AUTH mechanism the server
# lacks): the pool raises them at once. Other failures (refused, reset, timed
# out, a 554 greeting) are retried, up to PoolLimits.connect_retries while no
# connection works. The one definition of what is fatal when opening: the bulk
# sender (_bulk.py) ends its run on these and on the SMTPConnectionError the
# pool raises once its retries are spent.
FATAL_CONNECT_ERRORS = (
    SMTPAuthenticationError,
    SMTPTLSError,
    SMTPNotSupportedError,
    # The proxy refused our credentials: every attempt would fail the same way.
    SMTPProxyAuthenticationError,
)


class Pool(trio.abc.AsyncResource):
    """Concurrency-safe sending over many connections; get one from :func:`open_pool`."""

    def __init__(
        self, config: ConnectionSettings, limits: PoolLimits, nursery: trio.Nursery
    ) -> None:
        self._config = config
        self._limits = limits
        self._nursery = nursery
        self._idle: list[_Connection] = []  # most recently used last
        self._busy: set[_Connection] = set()
        self._opening = 0
        self._target = limits.max_connections
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False
        self._last_refusal = -math.inf
        self._connect_failures = 0  # consecutive
        self._sent = 0
        self._retries = 0
        self._failures = 0
        self._connection_failures = 0
        self._connect_limiter = RateLimiter(limits.max_connect_rate)

    def __repr__(self) -> str:
        c = self._config
        return (
            f"<trio_sendmail.Pool {c.hostname}:{c.resolved_port} {c.tls.value} "
            f"open={self._open_count()} target={self._target}>"
        )

    def _open_count(self) -> int:
        return len(self._idle) + len(self._busy) + self._opening

    def statistics(self) -> PoolStatistics:
        """Counters of this pool."""
        return PoolStatistics(
            connections_open=self._open_count(),
            connections_idle=len(self._idle),
            connections_busy=len(self._busy),
            connections_opening=self._opening,
            target_size=self._target,
            waiting=self._lot.statistics().tasks_waiting,
            messages_sent=self._sent,
            retries=self._retries,
            failures=self._failures,
            connection_failures=self._connection_failures,
        )

    # ------------------------------------------------------------ sending

    @property
    def limits(self) -> PoolLimits:
        """The pool's bounds."""
        return self._limits

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[Lease]:
        """Hold one pooled connection for a run of sends (see :class:`Lease`).

        Opens a connection when none is idle and the pool may grow, else waits
        for one. The connection goes back to the pool when the block ends; one
        that was interrupted is closed.

        Raises:
            trio.ClosedResourceError: the pool is closed.
            SMTPError: no connection could be opened (see :func:`open_session`).
        """
        if self._closed:
            raise trio.ClosedResourceError("this pool is closed")
        lease = Lease(self, await self._acquire())
        try:
            yield lease
        finally:
            await lease._end()

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
    ) -> SendResult: ...

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
    ) -> SendResult: ...

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
    ) -> SendResult:
        """Send one message over a pooled connection; safe from any number of tasks.

        Arguments and errors are those of :meth:`Session.send` (the sender
        and recipients may be omitted for an :class:`email.message.Message`,
        and are then read from its header fields), plus the
        connection errors of :func:`open_session` when no connection can be
        opened (no message was involved: their ``outcome`` is ``None``, and
        *tracker* says :attr:`Outcome.NOT_SENT`). A message is
        sent again on another connection only when the connection it was given
        had been closed by the server before any of the message was written.

        Raises:
            trio.ClosedResourceError: the pool is closed.
        """
        if tracker is None:
            tracker = OutcomeTracker()
        # The envelope and message are checked before a connection is taken.
        sender, recipients, mail = message_envelope(sender, recipients, mail)
        options = message_options(dsn, requiretls, binary)
        body = prepare_mail(mail)
        async with self.lease() as lease:
            result = await lease._send(sender, recipients, body, options, tracker=tracker)
        assert result is not None
        return result

    # ---------------------------------------------------- acquire / release

    async def _acquire(self) -> _Connection:
        while True:
            if self._closed:
                raise trio.ClosedResourceError("this pool is closed")
            now = trio.current_time()
            while self._idle:
                connection = self._idle.pop()
                if self._retire(connection, now):
                    self._close_soon(connection)
                    continue
                self._busy.add(connection)
                if now - connection.last_used >= self._limits.idle_check_after:
                    try:
                        healthy = await self._healthy(connection)
                    except BaseException:  # cancelled mid-check: the connection goes
                        self._busy.discard(connection)
                        self._close_soon(connection)
                        raise
                    if not healthy:
                        self._busy.discard(connection)
                        self._close_soon(connection)
                        continue
                return connection
            if self._open_count() < self._target:
                opened = await self._open()
                if opened is not None:
                    return opened
                continue
            if (
                self._target < self._limits.max_connections
                and now - self._last_refusal >= self._limits.regrow_after
            ):
                self._target += 1
                continue
            await self._lot.park()

    async def _healthy(self, connection: _Connection) -> bool:
        if not connection.session.is_usable:
            return False
        try:
            with trio.move_on_after(self._config.timeouts.quit):
                reply = await connection.session.noop()
                return reply.is_positive
        except SMTPError:
            return False
        return False

    async def _open(self) -> _Connection | None:
        """Open one connection; None after a refusal that the pool absorbed."""
        failure: SMTPError | None = None
        self._opening += 1
        try:
            if self._limits.max_connect_rate is not None:
                await self._rate_wait()
            session = await _connect(self._config)
        except FATAL_CONNECT_ERRORS as exc:
            self._connection_failures += 1
            logger.error("cannot open a connection to %s: %s", self._where(), exc)
            raise
        except SMTPError as exc:
            failure = exc
        finally:
            self._opening -= 1
            # A caller parked because the pool looked full: an attempt that
            # failed or was cancelled makes room for it.
            self._lot.unpark()
        if failure is not None:
            self._connection_failures += 1
            self._connect_failures += 1
            self._last_refusal = trio.current_time()
            working = self._open_count()
            if working == 0 and self._connect_failures >= self._limits.connect_retries:
                logger.error(
                    "cannot open a connection to %s after %d attempts: %s",
                    self._where(),
                    self._connect_failures,
                    failure,
                )
                self._connect_failures = 0
                raise failure
            # Shrink to what works, and back off before the next attempt.
            self._target = max(1, working)
            delay = self._backoff()
            logger.warning(
                "opening a connection to %s failed (%s); %d open, target size %d, "
                "next attempt in %.2f s",
                self._where(),
                failure,
                working,
                self._target,
                delay,
            )
            await trio.sleep(delay)
            return None
        self._connect_failures = 0
        now = trio.current_time()
        connection = _Connection(session, created=now, last_used=now)
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "opened connection #%d to %s (%d open, %s%s)",
                session._driver.session_id,
                self._where(),
                len(self._idle) + len(self._busy) + 1,  # established, with this one
                "TLS" if session.tls else "no TLS",
                ", authenticated" if session.authenticated else "",
            )
        self._busy.add(connection)
        return connection

    async def _rate_wait(self) -> None:
        started = trio.current_time()
        await self._connect_limiter.wait()
        waited = trio.current_time() - started
        if waited > 0 and logger.isEnabledFor(logging.DEBUG):
            logger.debug("waited %.3f s for max_connect_rate before connecting", waited)

    def _where(self) -> str:
        config = self._config
        return f"{config.hostname} port {config.resolved_port}"

    def _why(self, connection: _Connection, now: float) -> str:
        """Why *connection* is closed (for the log; the checks of :meth:`_retire`)."""
        limits = self._limits
        if self._closed:
            return "the pool is closing"
        if not connection.session.is_usable:
            return "it is not usable any more"
        if connection.messages >= limits.max_messages_per_connection:
            return f"it sent {connection.messages} messages (max_messages_per_connection)"
        if now - connection.created >= limits.max_age:
            return f"it is {now - connection.created:.0f} s old (max_age)"
        if now - connection.last_used >= limits.max_idle:
            return f"it was idle {now - connection.last_used:.0f} s (max_idle)"
        return "its health check failed"

    def _backoff(self) -> float:
        base = min(10.0, 0.1 * 2.0 ** min(self._connect_failures, 10))
        return base * (0.5 + random.random() / 2)  # jitter: 50 to 100 %

    def _retire(self, connection: _Connection, now: float) -> bool:
        return (
            not connection.session.is_usable
            or connection.messages >= self._limits.max_messages_per_connection
            or now - connection.created >= self._limits.max_age
            or now - connection.last_used >= self._limits.max_idle
        )

    async def _release(self, connection: _Connection) -> None:
        self._busy.discard(connection)
        connection.last_used = now = trio.current_time()
        if self._closed:
            await self._close(connection)
        elif self._retire(connection, now):
            self._close_soon(connection)
        else:
            self._idle.append(connection)
        self._lot.unpark()

    def _close_soon(self, connection: _Connection) -> None:
        self._nursery.start_soon(self._close, connection)
        self._lot.unpark()

    async def _close(self, connection: _Connection) -> None:
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "closing connection #%d to %s: %s",
                connection.session._driver.session_id,
                self._where(),
                self._why(connection, trio.current_time()),
            )
        with trio.CancelScope(shield=True):
            await connection.session.aclose()

    async def _reap(self) -> None:
        """Close idle connections past their time, forever."""
        while True:
            await trio.sleep(max(0.5, min(self._limits.max_idle, self._limits.max_age) / 4))
            now = trio.current_time()
            keep = []
            for connection in self._idle:
                if self._retire(connection, now):
                    self._close_soon(connection)
                else:
                    keep.append(connection)
            self._idle = keep

    # ------------------------------------------------------------ closing

    async def aclose(self) -> None:
        """QUIT idle connections (each bounded by ``Timeouts.quit``, shielded),
        close the pool; busy connections are closed when their send ends."""
        if self._closed:
            return
        self._closed = True
        idle, self._idle = self._idle, []
        async with trio.open_nursery() as nursery:
            for connection in idle:
                nursery.start_soon(self._close, connection)
        self._lot.unpark_all()


DEFAULT_LIMITS = PoolLimits()


@asynccontextmanager
async def open_pool(
    server: str | ConnectionSettings,
    /,
    *,
    limits: PoolLimits = DEFAULT_LIMITS,
    **options: Unpack[ConnectionOptions],
) -> AsyncIterator[Pool]:
    """Open a connection pool to one server.

    Takes the server and connection options of :func:`open_session` (a host
    name and keyword arguments, or a :class:`ConnectionSettings`) and the
    pool's :class:`PoolLimits`. No connection is opened before the first send.
    Leaving the block closes every connection (QUIT on the idle ones) and ends
    every task the pool started.

    Raises:
        SMTPInputError: a malformed hostname, port or EHLO domain.
        TypeError: an option of the wrong type.
    """
    config = connection_settings(server, options)
    # The caller's block runs inside the pool's nursery; its exception is kept
    # out of the nursery (which would wrap it in a group) and raised as it was.
    error: BaseException | None = None
    with trio.CancelScope() as closing:
        async with trio.open_nursery() as nursery:
            pool = Pool(config, limits, nursery)
            nursery.start_soon(pool._reap)
            try:
                yield pool
            except BaseException as exc:
                error = exc
                # Closing is shielded then (it is bounded: each QUIT by
                # Timeouts.quit, the reaper cancelled): when the caller's scope
                # is cancelled, a Cancelled from the close would replace the
                # block's error, and that scope would swallow it for good.
                closing.shield = True
            finally:
                await pool.aclose()
                nursery.cancel_scope.cancel()
    if error is not None:
        raise error
