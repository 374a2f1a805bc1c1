"""The :class:`Outbox`: a durable queue of messages in SQLite or PostgreSQL.

Theory of operation
-------------------
The outbox is a thin trio layer over a synchronous :class:`~._store.Store`:
every database call runs in a worker thread (:func:`trio.to_thread.run_sync`),
at most one at a time for SQLite (one connection) and at most ``pool_size``
for PostgreSQL (its connection pool). A call that was started is never
abandoned: cancelling the caller waits for its short transaction to commit or
roll back, so what the database says and what the caller was told agree.

Inputs are checked before any I/O: :meth:`Outbox.enqueue` validates every
envelope and key, and reads every streamed message to the end, before the one
transaction that stores them all.
"""

from __future__ import annotations

import email.message
import secrets
import socket
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar, Unpack

import trio

from .._bulk import send_bulk
from .._bulk_types import BulkMessage
from .._message import prepare_mail
from .._pool import DEFAULT_LIMITS, Pool, open_pool
from .._pool_limits import PoolLimits
from .._settings import ConnectionOptions, ConnectionSettings
from ._engines import PostgresStore, store_for_url
from ._model import (
    OutboxEntry,
    OutboxStatistics,
    RetryPolicy,
    State,
    WorkProgress,
    WorkSummary,
    encode_message,
)
from ._store import Store
from ._worker import Worker, reraise

__all__ = ["Outbox", "open_outbox"]

T = TypeVar("T")


async def _spool(mail: object) -> bytes:
    """The whole message as bytes (a stream is read to its end)."""
    if isinstance(mail, bytes | bytearray | memoryview):
        return bytes(mail)
    if isinstance(mail, email.message.Message):
        data = prepare_mail(mail).data
        assert data is not None
        return data
    if isinstance(mail, AsyncIterable):
        parts = []
        async for chunk in mail:
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise TypeError(f"message chunks must be bytes-like, not {type(chunk).__name__}")
            parts.append(bytes(chunk))
        return b"".join(parts)
    raise TypeError(
        f"a message must be bytes, an EmailMessage or a stream, not {type(mail).__name__}"
    )


class Outbox(trio.abc.AsyncResource):
    """A durable queue of messages shared by any number of workers.

    Get one from :func:`open_outbox`. Every method may be called from any
    task; the database work runs in threads.
    """

    def __init__(self, store: Store, *, retry: RetryPolicy) -> None:
        self._store = store
        self._retry = retry
        # SQLite: the store runs one transaction at a time (its own lock); a
        # second thread lets the worker's next call hop over meanwhile.
        self._limiter = trio.CapacityLimiter(
            store._pool.max_size if isinstance(store, PostgresStore) else 2
        )
        self._closed = False

    def __repr__(self) -> str:  # the URL may hold a password: never shown
        return f"<Outbox {type(self._store).__name__[:-5].lower()}>"

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise trio.ClosedResourceError("the outbox is closed")
        return await trio.to_thread.run_sync(
            partial(self._store.run, fn, *args, **kwargs), limiter=self._limiter
        )

    async def aclose(self) -> None:
        """Close the database connections (idempotent)."""
        if not self._closed:
            self._closed = True
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._store.close, limiter=self._limiter)

    # ---------------------------------------------------------------- enqueue

    async def enqueue(self, messages: Iterable[BulkMessage]) -> list[int]:
        """Store *messages* in one transaction; returns their ids, in order.

        A message's ``key``, when it is a ``str``, makes enqueueing idempotent:
        a key already in the outbox is not stored again, and its existing id
        is returned. A streamed message is read to its end first (spooled into
        the database).

        Raises:
            SMTPAddressError, SMTPInputError: a malformed envelope (nothing is stored).
            TypeError: a message that is not a :class:`~trio_sendmail.BulkMessage`,
                a key that is neither ``str`` nor ``None``, or a malformed body.
        """
        batch = list(messages)
        checked = [encode_message(message, b"") for message in batch]  # before any I/O
        for row, message in zip(checked, batch, strict=True):
            row["mail"] = await _spool(message.mail)
        if not checked:
            await trio.lowlevel.checkpoint()
            return []
        return await self._call(self._store.enqueue, checked)

    # ---------------------------------------------------------------- work

    async def work(
        self,
        server: str | ConnectionSettings | None = None,
        *,
        pool: Pool | None = None,
        limits: PoolLimits | None = None,
        concurrency: int | None = None,
        rate: float | None = None,
        until_empty: bool = False,
        batch_size: int = 200,
        prefetch: int | None = None,
        lease: float = 60.0,
        poll_interval: float = 1.0,
        worker_id: str | None = None,
        progress: Callable[[WorkProgress], None] | None = None,
        **options: Unpack[ConnectionOptions],
    ) -> WorkSummary:
        """Send the outbox's messages until cancelled (or until it is empty).

        The worker claims up to *batch_size* due rows at a time, sends them with
        :func:`~trio_sendmail.send_bulk` over *pool*, or over a pool of its
        own opened to *server* with *limits* and *options*, exactly as
        send_bulk does; *concurrency* and *rate* are send_bulk's too (*rate*
        limits this worker; :meth:`set_rate_limit` limits all of them).

        Args:
            until_empty: return once no row is ``pending``, ``claimed`` or
                ``sending`` (by any worker), instead of waiting for more.
            batch_size: rows claimed per transaction.
            prefetch: most claimed messages kept decoded and ready for
                send_bulk (default: twice *concurrency*, or twice the pool's
                ``max_connections``), so that each connection can pipeline
                one message after the other. A row is armed (``sending``) only
                right before its end of data is written, so a worker killed at
                any instant leaves ``unknown`` only the messages whose end of
                data was written (or was about to be) and whose outcome was not
                recorded yet (see :ref:`design-outbox`).
            lease: seconds a claim lasts without a heartbeat (renewed every
                third of it). A dead worker's rows are taken back after it.
            poll_interval: longest wait between two looks at an empty queue.
            worker_id: this worker's name in the database (default: host name,
                process id and a random suffix).
            progress: called with a :class:`WorkProgress` after each batch of
                outcomes is recorded (in a task of this call, which sees the
                caller's context variables), the last time after the run's
                last transaction. An error it raises ends the run with that
                error, after every outcome is recorded.

        Returns:
            :class:`WorkSummary`: what this call recorded.

        Raises:
            SMTPAuthenticationError, SMTPTLSError, SMTPNotSupportedError,
            SMTPConnectionError: as :func:`~trio_sendmail.send_bulk`, when no
                connection can be opened; every outcome is recorded first, and
                the messages that were not tried go back to ``pending``.
            sqlite3.Error, psycopg.Error: a transaction failed (the database
                is locked past its busy timeout, or unreachable): the rows
                waiting to be armed are not sent, and the outcomes received are
                recorded by one last transaction if the database answers.
        """
        if rate is not None and not rate > 0:
            raise ValueError("rate must be > 0 or None")
        if batch_size < 1 or not lease > 0 or not poll_interval > 0:
            raise ValueError("batch_size must be >= 1, lease and poll_interval > 0")
        if (pool is None) == (server is None):
            raise TypeError("work needs a pool or a server, not both")
        if pool is not None and (limits is not None or options):
            raise TypeError("give work either a pool or connection parameters, not both")
        if prefetch is None:  # two messages per connection
            if concurrency is not None:
                prefetch = 2 * concurrency
            elif pool is not None:
                prefetch = 2 * pool.limits.max_connections
            else:
                prefetch = 2 * (limits or DEFAULT_LIMITS).max_connections
        if prefetch < 1:
            raise ValueError("prefetch must be >= 1")
        if worker_id is None:
            worker_id = f"{socket.gethostname()}:{_pid()}:{secrets.token_hex(4)}"
        worker = Worker(
            self._store,
            self._call,
            worker_id,
            policy=self._retry,
            batch_size=batch_size,
            depth=prefetch,
            lease=lease,
            poll_interval=poll_interval,
            until_empty=until_empty,
            progress=progress,
            rate=rate,
        )

        async def send(round_: Iterator[BulkMessage], pool: Pool) -> None:
            await send_bulk(
                round_,
                pool=pool,
                concurrency=concurrency,
                max_retries=0,
                on_result=worker.on_result,
                before_end_of_data=worker.before_end_of_data,
            )

        try:
            if pool is not None:
                return await worker.run(partial(send, pool=pool))
            assert server is not None
            own_limits = DEFAULT_LIMITS if limits is None else limits
            async with open_pool(server, limits=own_limits, **options) as own_pool:
                return await worker.run(partial(send, pool=own_pool))
        except BaseExceptionGroup as group:
            leaves = group.exceptions
            if len(leaves) == 1:
                reraise(leaves[0])
            raise

    # ---------------------------------------------------------------- operator

    async def statistics(self) -> OutboxStatistics:
        """Rows per state, the age of the oldest pending row, and attempts."""
        counts, age, attempts, retried = await self._call(self._store.statistics)
        return OutboxStatistics(counts, age, attempts, retried)

    async def entries(
        self,
        ids: Sequence[int] | None = None,
        *,
        state: State | None = None,
        limit: int | None = None,
    ) -> list[OutboxEntry]:
        """The rows with these *ids* (or all), in this *state* (or any), by id."""
        checked = None if ids is None else [_row_id(i) for i in ids]
        return await self._call(self._store.entries, checked, state, limit)

    async def resolve_unknown(self, ids: Sequence[int], *, resend: bool) -> list[int]:
        """Decide the fate of ``unknown`` rows (after checking the server's logs).

        Args:
            ids: the rows; those not ``unknown`` are left alone.
            resend: ``True`` puts them back to ``pending`` (they will be sent
                again: a duplicate if the server had them); ``False`` makes them
                ``failed`` (never sent again).

        Returns:
            The ids that were changed.
        """
        checked = [_row_id(i) for i in ids]
        return await self._call(self._store.resolve_unknown, checked, bool(resend))

    async def recover(self) -> None:
        """Take back the rows of workers whose claims expired now (workers also
        do it as they claim)."""
        await self._call(self._store.recover)

    async def purge_sent(self, older_than_days: float) -> int:
        """Delete ``sent`` rows recorded more than *older_than_days* ago;
        returns how many."""
        if not older_than_days >= 0:
            raise ValueError("older_than_days must be >= 0")
        return await self._call(self._store.purge_sent, older_than_days * 86400.0)

    async def set_rate_limit(
        self, rate: float | None, *, domain: str | None = None, burst: float | None = None
    ) -> None:
        """Limit how many messages per second all workers together send.

        Args:
            rate: messages per second, or ``None`` to remove the limit.
            domain: ``None`` for the whole outbox; a sender domain
                (``"example.com"``) for the messages from that domain; ``"*"``
                for each sender domain separately (a provider's limit is per
                account). Setting ``"*"`` resets the per-domain buckets.
            burst: the most messages sent at once after a quiet period
                (default: ``rate`` rounded up, at least 1).
        """
        if rate is not None and not rate > 0:
            raise ValueError("rate must be > 0 or None")
        if burst is not None and not burst >= 1:
            raise ValueError("burst must be >= 1")
        scope = "*" if domain is None else "domain:" + domain.lower()
        await self._call(self._store.set_rate_limit, scope, rate, burst)


def _pid() -> int:
    import os

    return os.getpid()


def _row_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"outbox row ids are ints, not {type(value).__name__}")
    return value


@asynccontextmanager
async def open_outbox(
    url: str, *, retry: RetryPolicy | None = None, pool_size: int = 4
) -> AsyncIterator[Outbox]:
    """Open (and create or migrate) the outbox at *url*.

    Args:
        url: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, or
            ``postgresql://user@host:port/database`` (needs the ``postgres``
            extra: ``pip install 'trio_sendmail[postgres]'``). PostgreSQL
            connections get a 10 s ``connect_timeout``, 30 s
            ``statement_timeout`` and ``lock_timeout`` (set on each new
            connection), and TCP keepalives with a 30 s ``tcp_user_timeout``,
            unless the URL, libpq's environment or the role sets them.
        retry: when transient failures are tried again (:class:`RetryPolicy`).
        pool_size: PostgreSQL connections at most (SQLite uses one).

    Raises:
        ValueError: an unsupported URL.
        ImportError: a ``postgresql://`` URL without psycopg installed.
    """
    store = await trio.to_thread.run_sync(partial(store_for_url, url, pool_size=pool_size))
    outbox = Outbox(store, retry=RetryPolicy() if retry is None else retry)
    try:
        await outbox._call(store.migrate)
        yield outbox
    finally:
        await outbox.aclose()
