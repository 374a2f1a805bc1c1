"""The bounds and counters of a connection pool, and the rate limiter that paces
new connections and bulk sends.

Theory of operation
-------------------
:class:`PoolLimits` are checked once, when built: a pool never runs with a bound
it cannot honour (no connection, a negative or NaN time, a rate of zero). The
:class:`~trio_sendmail.Pool` (``_pool.py``) applies them: a connection is retired
after ``max_messages_per_connection`` messages or ``max_age`` seconds and closed
when idle longer than ``max_idle`` seconds (RFC 5321 §4.5.3.2.7: servers drop
idle clients after 5 minutes; providers much sooner); ``connect_retries`` and
``regrow_after`` bound its back-off after refused connections.

A :class:`RateLimiter` spaces events at least ``1 / rate`` seconds apart, with
no bursts: each caller takes the next free slot and sleeps until it. The pool
paces new connections with one (``max_connect_rate``), and
:func:`~trio_sendmail.send_bulk` its messages (``rate``).

:class:`PoolStatistics` is a snapshot of the pool's counters, taken by
:meth:`Pool.statistics <trio_sendmail.Pool.statistics>`.
"""

from __future__ import annotations

import math

import attrs
import trio

__all__ = ["PoolLimits", "PoolStatistics", "RateLimiter"]


@attrs.frozen
class PoolLimits:
    """The bounds of a :class:`Pool`.

    Args:
        max_connections: the most connections open at once.
        max_messages_per_connection: a connection is retired after this many messages.
        max_idle: seconds an idle connection is kept open.
        max_age: seconds after which a connection is retired once idle.
        idle_check_after: an idle connection older than this is checked with
            NOOP before reuse.
        connect_retries: consecutive failed attempts to open a connection, when
            none is open, before :meth:`Pool.send` gives up.
        regrow_after: seconds without a refused connection before a shrunk
            pool may grow again.
        max_connect_rate: the most new connections per second, or ``None``
            (providers limit both messages and connections per second).
    """

    max_connections: int = 8
    max_messages_per_connection: int = 1000
    max_idle: float = 60.0
    max_age: float = 600.0
    idle_check_after: float = 5.0
    connect_retries: int = 5
    regrow_after: float = 30.0
    max_connect_rate: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.max_connections < 1 or self.max_messages_per_connection < 1:
            raise ValueError("max_connections and max_messages_per_connection must be >= 1")
        for name in ("max_idle", "max_age", "idle_check_after", "regrow_after"):
            value = getattr(self, name)
            if math.isnan(value) or value < 0:
                raise ValueError(f"PoolLimits.{name} must be >= 0")
        if self.connect_retries < 1:
            raise ValueError("connect_retries must be >= 1")
        if self.max_connect_rate is not None and not self.max_connect_rate > 0:
            raise ValueError("max_connect_rate must be a positive number per second")


class RateLimiter:
    """Spaces events at least ``1 / rate`` seconds apart (no bursts)."""

    def __init__(self, rate: float | None) -> None:
        if rate is not None and not rate > 0:
            raise ValueError("a rate must be a positive number per second")
        self._interval = 0.0 if rate is None else 1.0 / rate
        self._next = -math.inf

    async def wait(self) -> None:
        if not self._interval:
            await trio.lowlevel.checkpoint()
            return
        now = trio.current_time()
        start = max(now, self._next)
        self._next = start + self._interval
        await trio.sleep_until(start)


@attrs.frozen
class PoolStatistics:
    """Counters of a :class:`Pool` (see :meth:`Pool.statistics`)."""

    #: Connections open (idle + busy), and being opened.
    connections_open: int
    connections_idle: int
    connections_busy: int
    connections_opening: int
    #: How many connections the pool allows itself now (shrinks after refusals).
    target_size: int
    #: Tasks waiting for a connection.
    waiting: int
    messages_sent: int
    #: Messages sent again on another connection after a stale one failed.
    retries: int
    #: Messages whose send raised.
    failures: int
    #: Connection attempts that failed.
    connection_failures: int
