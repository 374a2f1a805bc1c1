"""A blocking facade, for code that runs in threads: Django, Flask, scripts,
Celery tasks.

Theory of operation
-------------------
* :func:`sendmail` and :func:`sendmail_with_starttls` run their async
  namesakes in a trio loop of their own (:func:`trio.run`) in the calling
  thread: same parameters, same result, same exceptions.
* A :class:`BlockingPool` starts one daemon thread that runs one trio loop for
  the pool's whole life. That loop hosts an :func:`~trio_sendmail.open_pool`
  pool: pipelined, authenticated connections, reused across calls.
  :meth:`BlockingPool.send` may be called from any number of OS threads at
  once: each call enters the loop with :func:`trio.from_thread.run` and blocks
  its thread until the pool has sent the message; whatever the send raises is
  raised in the calling thread, with the same type.
* **Closing.** :meth:`BlockingPool.close` refuses new sends at once
  (:class:`trio.ClosedResourceError`), lets the sends in flight finish (up to
  its *timeout*; after that they are cancelled and raise
  :class:`~trio_sendmail.SMTPConnectionError` with their outcome), then closes
  the pool (QUIT on the idle connections) and ends the thread. A pool that is
  never closed is closed when it is garbage-collected or when the interpreter
  exits (:func:`weakref.finalize`, which runs at exit), with
  :data:`EXIT_GRACE` seconds for sends in flight. The loop thread is a daemon
  thread so that it never keeps the interpreter alive on its own: Python joins
  non-daemon threads *before* exit handlers run, so a non-daemon loop thread
  would wait forever for a close that only an exit handler would do.
* The loop's state (:class:`_Loop`) is kept apart from the
  :class:`BlockingPool` object the caller holds, so that the loop thread never
  keeps that object alive and forgetting it is enough to close the pool.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import ParamSpec, TypeVar, Unpack

import trio

from . import _api
from ._dsn import DSN
from ._errors import SMTPConnectionError, SMTPTimeoutError
from ._inputs import Recipient, Sender
from ._message import Mail
from ._pool import DEFAULT_LIMITS, Pool, PoolLimits, PoolStatistics, open_pool
from ._settings import ConnectionOptions, ConnectionSettings, connection_settings
from ._transaction import OutcomeTracker, SendResult, settle_error

__all__ = ["EXIT_GRACE", "BlockingPool", "sendmail", "sendmail_with_starttls"]

logger = logging.getLogger("trio_sendmail.blocking")

#: Seconds that sends still in flight get to finish when a forgotten
#: :class:`BlockingPool` is closed at interpreter exit (or garbage-collected).
EXIT_GRACE = 10.0

P = ParamSpec("P")
T = TypeVar("T")


def _blocking(function: Callable[P, Awaitable[T]], doc: str) -> Callable[P, T]:
    """*function* run to completion in a trio loop of its own, in the caller's thread."""

    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        async def main() -> T:
            return await function(*args, **kwargs)

        return trio.run(main)

    run.__name__ = run.__qualname__ = function.__name__
    run.__module__ = __name__
    run.__doc__ = doc
    signature = inspect.signature(function)
    run.__signature__ = signature.replace(return_annotation="SendResult")  # type: ignore[attr-defined]
    return run


sendmail = _blocking(
    _api.sendmail,
    """:func:`trio_sendmail.sendmail`, blocking: the same parameters, result and
    exceptions, in a trio loop of its own (:func:`trio.run`) in the calling thread.

    Cannot be called from a thread that runs a trio loop (use the async
    function there). Bound the call with ``timeouts``; a
    :exc:`KeyboardInterrupt` in the calling thread cancels it, as it would
    cancel any :func:`trio.run`.
    """,
)

sendmail_with_starttls = _blocking(
    _api.sendmail_with_starttls,
    """:func:`trio_sendmail.sendmail_with_starttls`, blocking: the same
    parameters, result and exceptions, in a trio loop of its own in the calling
    thread (see :func:`sendmail`).
    """,
)


class _Loop:
    """The loop thread and what lives in it (see the module's docstring)."""

    def __init__(self, settings: ConnectionSettings, limits: PoolLimits) -> None:
        self.settings = settings
        self.limits = limits
        #: The process the loop thread runs in: a fork()ed child has no such thread.
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.closed = False  # guarded by lock: set by the first close()
        self.ready = threading.Event()
        self.crash: BaseException | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.pool: Pool | None = None
        # Loop-thread state.
        self.stopping = False
        self.grace = math.inf
        self.stop: trio.Event | None = None
        self.active: set[trio.CancelScope] = set()
        self.drained: trio.Event | None = None
        self.thread = threading.Thread(
            target=self._run, name=f"trio_sendmail BlockingPool {settings.hostname}", daemon=True
        )
        self.thread.start()
        self.ready.wait()
        if self.crash is not None:
            raise self.crash

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to the callers
            self.crash = exc
            logger.error("the BlockingPool loop stopped: %r", exc)
        finally:
            self.ready.set()

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self.stop = trio.Event()
        self.drained = trio.Event()
        async with open_pool(self.settings, limits=self.limits) as pool:
            self.pool = pool
            self.ready.set()
            await self.stop.wait()
            # No new send starts now (self.stopping); let those in flight end.
            with trio.move_on_after(self.grace):
                while self.active:
                    await self.drained.wait()
            for scope in self.active:
                scope.cancel()
            while self.active:
                await self.drained.wait()

    def _begin_stop(self, grace: float) -> None:
        self.stopping = True
        self.grace = grace
        assert self.stop is not None
        self.stop.set()

    def close(self, grace: float) -> None:
        """Stop the loop (waiting *grace* seconds for sends in flight) and,
        unless called from the loop thread itself, wait for it to end."""
        with self.lock:
            first = not self.closed
            self.closed = True
        if os.getpid() != self.pid:
            return  # a fork()ed child: the loop thread (and its pool) live in the parent
        if first and self.token is not None:
            with contextlib.suppress(trio.RunFinishedError):  # the loop has ended
                self.token.run_sync_soon(self._begin_stop, grace)
        if threading.current_thread() is not self.thread:
            self.thread.join()

    def check_process(self) -> None:
        """Refuse to wait for a loop thread that this process does not have."""
        if os.getpid() != self.pid:
            raise RuntimeError(
                "this BlockingPool was created before fork(): its loop thread does not "
                "run in this child process; create the pool in the child (for example "
                "in a post-fork hook of your server or task queue)"
            )

    def closed_error(self) -> trio.ClosedResourceError:
        error = trio.ClosedResourceError("this BlockingPool is closed")
        error.__cause__ = self.crash
        return error

    async def send(
        self,
        tracker: OutcomeTracker,
        timeout: float | None,
        call: Callable[[Pool], Awaitable[SendResult]],
    ) -> SendResult:
        """Run in the loop (a system task of :func:`trio.from_thread.run`)."""
        if self.stopping or self.pool is None:
            raise self.closed_error()
        pool = self.pool
        with trio.CancelScope() as closing:
            self.active.add(closing)
            try:
                with trio.move_on_after(math.inf if timeout is None else timeout) as bound:
                    return await call(pool)
            finally:
                self.active.discard(closing)
                if not self.active:
                    assert self.drained is not None
                    self.drained.set()
                    self.drained = trio.Event()
        if bound.cancelled_caught:
            error: SMTPConnectionError | SMTPTimeoutError = SMTPTimeoutError(
                f"the send took longer than its timeout of {timeout:g} s", phase="send"
            )
        else:
            error = SMTPConnectionError("the BlockingPool was closed while the message was sent")
        error.outcome = tracker.outcome
        raise error


class BlockingPool:
    """A connection pool for threads: one trio loop in a background thread hosts
    an :func:`~trio_sendmail.open_pool` pool, and :meth:`send` may be called
    from any number of OS threads at once.

    Takes the arguments of :func:`~trio_sendmail.open_pool`: a host name and
    connection keywords (``port``, ``tls``, ``authentication``, ``connect``, …),
    or a :class:`~trio_sendmail.ConnectionSettings`, and ``limits``. They are
    checked in the calling thread, before the loop starts. No connection is
    opened before the first send.

    Use it as a context manager, or call :meth:`close`. A pool that is never
    closed is closed when it is garbage-collected or at interpreter exit.

    Raises:
        SMTPInputError: a malformed hostname, port or EHLO domain.
        TypeError: an option of the wrong type.
    """

    def __init__(
        self,
        server: str | ConnectionSettings,
        /,
        *,
        limits: PoolLimits = DEFAULT_LIMITS,
        **options: Unpack[ConnectionOptions],
    ) -> None:
        settings = connection_settings(server, options)
        if not isinstance(limits, PoolLimits):
            raise TypeError(f"limits must be a PoolLimits, not {type(limits).__name__}")
        self._hostname = settings.hostname
        self._loop = _Loop(settings, limits)
        # Holds the loop, not self: runs on garbage collection or at exit.
        self._finalizer = weakref.finalize(self, self._loop.close, EXIT_GRACE)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<trio_sendmail.blocking.BlockingPool {self._hostname} {state}>"

    def __enter__(self) -> BlockingPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (or the pool was finalized)."""
        return self._loop.closed

    def send(
        self,
        sender: Sender,
        recipients: Iterable[Recipient],
        mail: Mail,
        *,
        dsn: DSN | None = None,
        requiretls: bool = False,
        binary: bool = False,
        tracker: OutcomeTracker | None = None,
        timeout: float | None = None,
    ) -> SendResult:
        """Send one message over a pooled connection, blocking the calling thread.

        Safe from any number of threads at once. The arguments, result and
        exceptions are those of :meth:`Pool.send <trio_sendmail.Pool.send>`,
        raised in the calling thread; *mail* is best given as ``bytes`` or an
        :class:`email.message.EmailMessage` (a trio memory channel belongs to
        another loop).

        Args:
            timeout: seconds for the whole send, waiting for a connection
                included, or ``None`` (the default) for only the bounds of the
                pool's ``Timeouts``.

        Raises:
            trio.ClosedResourceError: the pool is closed (nothing was sent).
            SMTPTimeoutError: *timeout* passed (phase ``"send"``); its
                ``outcome`` says whether the message can have been accepted.
            SMTPConnectionError: :meth:`close` cancelled this send after its
                grace period; ``outcome`` as above.
            RuntimeError: called from the pool's own loop thread, or from a
                thread that runs a trio loop.

        Cancellation: a thread cannot be cancelled from outside. A
        :exc:`KeyboardInterrupt` in the calling thread stops the wait, not the
        send, which carries on in the pool's loop; pass a *tracker* to learn
        its outcome.
        """
        loop = self._loop
        loop.check_process()
        if loop.closed or loop.token is None:
            raise loop.closed_error()
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        own = tracker if tracker is not None else OutcomeTracker()
        call = functools.partial(
            _pool_send,
            sender=sender,
            recipients=recipients,
            mail=mail,
            dsn=dsn,
            requiretls=requiretls,
            binary=binary,
            tracker=own,
        )
        try:
            return trio.from_thread.run(loop.send, own, timeout, call, trio_token=loop.token)
        except (trio.RunFinishedError, trio.Cancelled):
            if own.transaction is None:
                # The loop ended (or was ending) before the send could start.
                raise loop.closed_error() from None
            # The loop stopped in the middle of the send: what became of the
            # message is what its tracker says, not "nothing was sent".
            raise settle_error(
                SMTPConnectionError("the BlockingPool's loop stopped during the send"),
                own.transaction,
                own,
            ) from loop.crash

    def statistics(self) -> PoolStatistics:
        """The pool's counters (see :meth:`Pool.statistics <trio_sendmail.Pool.statistics>`).

        Raises:
            trio.ClosedResourceError: the pool is closed.
        """
        loop = self._loop
        loop.check_process()
        pool = loop.pool
        if loop.closed or loop.token is None or pool is None:
            raise loop.closed_error()
        try:
            return trio.from_thread.run_sync(pool.statistics, trio_token=loop.token)
        except trio.RunFinishedError:
            raise loop.closed_error() from None

    def close(self, timeout: float | None = None) -> None:
        """Close the pool; safe to call more than once, from any thread.

        New sends raise :class:`trio.ClosedResourceError` at once. Sends in
        flight may finish for up to *timeout* seconds (``None``: as long as
        they take, each bounded by the pool's ``Timeouts``); the rest are then
        cancelled and raise :class:`~trio_sendmail.SMTPConnectionError` in
        their threads. Then the idle connections get QUIT, and the loop
        thread ends; this returns when it has.
        """
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be >= 0 seconds, not {timeout!r}")
        self._finalizer.detach()
        self._loop.close(math.inf if timeout is None else timeout)


async def _pool_send(
    pool: Pool,
    *,
    sender: Sender,
    recipients: Iterable[Recipient],
    mail: Mail,
    dsn: DSN | None,
    requiretls: bool,
    binary: bool,
    tracker: OutcomeTracker,
) -> SendResult:
    return await pool.send(
        sender, recipients, mail, dsn=dsn, requiretls=requiretls, binary=binary, tracker=tracker
    )
