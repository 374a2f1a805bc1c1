"""One :meth:`Outbox.work <trio_sendmail.outbox.Outbox.work>` call: claim,
send through :func:`~trio_sendmail.send_bulk`, arm at the end of data, record.

Theory of operation
-------------------
Five tasks (and the writer's thread) and a loop of send_bulk *rounds*:

* the **claimer** (:meth:`Worker.claimer`) claims a batch of rows (one
  transaction) and keeps up to ``prefetch`` of them decoded in the ``ready``
  queue (with ``work(rate=…)``, one at a time, no faster than the rate);
* each **round** is one :func:`~trio_sendmail.send_bulk` call on the worker's
  pool whose input is a sync iterator over ``ready`` (:class:`_Round`):
  send_bulk reads a sync input without waiting, which keeps each connection
  pipelining from one message to the next (RFC 2920 §3.1). A round's input
  ends for good the first time ``ready`` is empty; the next round starts as
  soon as the claimer has refilled it, while the previous one finishes its
  messages in flight;
* the **gate** (:meth:`Worker.before_end_of_data`, send_bulk's
  ``before_end_of_data``): right before a message's end of data (RFC 5321
  §4.1.1.4, the final dot; RFC 3030 §2, ``BDAT … LAST``) is written, its
  row is **armed** (``claimed`` → ``sending``), and the end waits for that
  commit. A row still ``claimed`` when its worker died provably never
  reached the end of data, and goes back to ``pending``;
* the **journal** (:meth:`Worker.journal`) makes every write of the run,
  one transaction at a time: the rows waiting at the gate are armed together
  (group commit: one commit for every connection that reached an end of data
  meanwhile, not one per message), and the outcomes that came back through
  send_bulk's ``on_result`` are recorded in the same transaction (an outcome
  waits at most ``FLUSH_DELAY`` for others when no row waits to be armed).
  The transactions go, through a queue, to the journal's own database
  thread (the **writer**: one :func:`trio.to_thread.run_sync` call that lasts
  the whole run), up to ``COMMITS_IN_FLIGHT`` at once, so that the next one
  is queued while the current one is made. The writer reports each commit
  back with :meth:`trio.lowlevel.TrioToken.run_sync_soon`, whose callback
  opens the gate itself. Every connection waits for one commit per message,
  so this hop is on every message's path: a thread started per commit, and a
  task that resumes to open the gate, cost the event loop about 8 % of W7's
  rate (``docs/design.rst``);
* the **heartbeat** extends the worker's claims every third of the lease;
* the **reporter** calls ``work(progress=…)`` after each transaction that
  recorded outcomes (in a task of the run, with the caller's context
  variables; the last report comes after the run's last transaction).

So when a worker dies, the rows it leaves ``sending`` (``unknown`` once its
claim expires) are those whose end of data was written, or was about to be,
and whose outcome was not committed yet: at most one message per connection
between its end of data and its reply (a connection writes the next message's
end only after that reply: under PIPELINING the next envelope's replies come
after it), and the outcomes of the last ``FLUSH_DELAY``.
There is no fsync per message (and none at all on SQLite, whose WAL commits
survive a process crash). send_bulk runs with ``max_retries=0``: every attempt
is recorded, and a transient failure goes back to ``pending`` at a time drawn
by the :class:`~trio_sendmail.outbox.RetryPolicy` (persisted in the row), where
any worker may take it.

When the run ends (the queue is empty, it is cancelled, or send_bulk raises a
fatal connection error), every outcome still buffered is recorded, shielded
from cancellation, and the claimed rows not yet armed are given back. A
message that the run stopped before it was tried (or that failed only because
the connection could not be opened: bad credentials, TLS) goes back to
``pending`` without losing an attempt.
"""

from __future__ import annotations

import collections
import math
import queue
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar

import attrs
import trio

from .._bulk_types import BulkMessage, BulkResult
from .._errors import Outcome, SMTPError
from .._pool import FATAL_CONNECT_ERRORS
from .._pool_limits import RateLimiter
from ._model import (
    RetryPolicy,
    Settlement,
    State,
    WorkProgress,
    WorkSummary,
    decode_message,
    settle,
)

if TYPE_CHECKING:
    from ._store import Store

T = TypeVar("T")


class Caller(Protocol):
    """How the worker runs a :class:`Store` method: in a thread, with the
    outbox's limiter (:meth:`Outbox._call <trio_sendmail.outbox.Outbox>`)."""

    async def __call__(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T: ...


__all__ = ["Worker"]

#: Outcomes wait at most this long (or until FLUSH_SIZE of them) to be recorded
#: together. A worker killed meanwhile leaves them ``unknown``.
FLUSH_DELAY = 0.005
FLUSH_SIZE = 32

#: Journal transactions handed to database threads at once: the next one's
#: thread hop overlaps the current one (the database runs them one at a time).
COMMITS_IN_FLIGHT = 2

#: How often a worker looks for expired claims of other workers.
RECOVER_INTERVAL = 1.0


def _held(result: BulkResult) -> bool:
    """A result that only says the connection could not be opened: kept until
    the run ends, to learn whether it ended the run (not the message's fault)."""
    error = result.error
    return (
        result.status is Outcome.NOT_SENT
        and isinstance(error, FATAL_CONNECT_ERRORS)
        # Raised while opening a connection (no message involved: no outcome).
        # A message the server cannot take (too large; an extension it lacks for
        # this message: SMTPUTF8, 8BITMIME, DSN, REQUIRETLS…) has NOT_SENT as its
        # outcome: it is settled now (as failed), never held.
        and error.outcome is None
    )


def reraise(error: BaseException) -> NoReturn:
    """Raise *error* (taken out of an exception group) as it was raised: with
    its own traceback, cause and context (``raise error`` in an ``except``
    clause would make the group its context)."""
    context, suppress = error.__context__, error.__suppress_context__
    try:
        raise error
    finally:
        error.__context__ = context
        error.__suppress_context__ = suppress


def _one_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The only exception in *group* that is not a cancellation, if there is
    exactly one."""
    _, rest = group.split(trio.Cancelled)
    leaves: list[BaseException] = []
    stack: list[BaseException] = [] if rest is None else [rest]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else None


class _Round:
    """The input of one send_bulk call: the armed messages that are ready.

    A sync iterator, which send_bulk reads without waiting, so that each
    connection keeps pipelining from one message to the next (RFC 2920
    §3.1). It ends for good the first time nothing is ready; the worker then
    waits for the next armed message and starts another round on the same pool,
    while this one finishes the messages it has (so the pool never drains).
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.ended = trio.Event()

    def __iter__(self) -> _Round:
        return self

    def __next__(self) -> BulkMessage:
        message = None if self.ended.is_set() else self.worker.take()
        if message is None:
            self.ended.set()
            raise StopIteration
        return message


class ClaimLost(SMTPError):
    """A row could not be armed: its claim expired (another worker may have it),
    or the transaction failed. Its message must not be sent, so its end of data
    is never written."""


class _Group:
    """The rows that wait at the gate for one commit of the journal."""

    __slots__ = ("armed", "done", "failed", "ids")

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.done = trio.Event()
        #: id -> attempts of the rows the commit armed.
        self.armed: dict[int, int] = {}
        #: The commit failed (the database's error ends the run).
        self.failed = False


@attrs.frozen
class _Journal:
    """One transaction of the journal: the rows to arm and the outcomes to record."""

    group: _Group
    results: list[BulkResult]
    held: list[BulkResult]
    settlements: list[Settlement]
    #: id -> the worker's entry for each settled row, taken out of ``rows``.
    entries: dict[int, tuple[float, int] | None]


class Worker:
    """The state of one work() call."""

    def __init__(
        self,
        store: Store,
        call: Caller,
        worker_id: str,
        *,
        policy: RetryPolicy,
        batch_size: int,
        depth: int,
        lease: float,
        poll_interval: float,
        until_empty: bool,
        progress: Callable[[WorkProgress], None] | None,
        rate: float | None = None,
    ) -> None:
        self.store = store
        self.call = call
        self.id = worker_id
        self.policy = policy
        self.batch_size = batch_size
        #: Most claimed messages decoded and ready, not yet handed to send_bulk.
        self.depth = depth
        #: This worker's own rate (``work(rate=…)``): messages are made ready,
        #: one at a time, no faster (send_bulk sends them as they come).
        self.limiter = None if rate is None else RateLimiter(rate)
        self.ready: collections.deque[BulkMessage] = collections.deque()
        self.has_ready = trio.Event()
        self.want_more = trio.Event()
        self.exhausted = False
        self.lease = lease
        self.poll_interval = poll_interval
        self.until_empty = until_empty
        self.progress = progress
        self.summary = WorkSummary()
        #: id -> (created_at, attempts, this one included) of the rows claimed
        #: (ready, or in send_bulk) and not yet recorded.
        self.rows: dict[int, tuple[float, int]] = {}
        self.group = _Group()
        self.results: list[BulkResult] = []
        self.held: list[BulkResult] = []
        self.has_work = trio.Event()
        #: The journal gathers outcomes for one transaction (see on_result).
        self.gathering = False
        #: Journal transactions that may be in flight (see journal()).
        self.slots = trio.Semaphore(COMMITS_IN_FLIGHT)
        #: The journal's transactions, for its writer thread (None: stop).
        self.jobs: queue.SimpleQueue[_Journal | None] = queue.SimpleQueue()
        #: The first error of a journal transaction (or of the bookkeeping
        #: after it), which the journal raises.
        self.journal_error: BaseException | None = None
        #: The transaction the writer is making (for when the writer dies).
        self.writing: _Journal | None = None
        #: New outcomes were counted: the reporter calls ``progress`` (in a
        #: task of the run, with the caller's context variables; not in the
        #: writer's callback, which runs in trio's own task).
        self.report_due = trio.Event()
        #: The progress callback raised (the run's error): not called again.
        self.progress_failed = False
        #: Stops the reporter when the run ends: the last report is the run's.
        self.reporter_scope = trio.CancelScope()
        self.started = trio.current_time()
        self.last_recover = -math.inf
        self.failure: BaseException | None = None

    # ---------------------------------------------------------------- input

    async def claimer(self) -> None:
        """Keep up to ``depth`` claimed messages ready: claim rows in batches
        (one transaction each)."""
        local: collections.deque[Any] = collections.deque()
        call = self.call
        while True:
            while len(self.ready) >= self.depth:
                self.want_more = trio.Event()
                await self.want_more.wait()
            if not local:
                now = trio.current_time()
                recover = now - self.last_recover >= RECOVER_INTERVAL
                if recover:
                    self.last_recover = now
                claimed = await call(
                    self.store.claim, self.id, self.batch_size, self.lease, recover=recover
                )
                if not claimed.rows:
                    busy = self.rows or self.results
                    if self.until_empty and not busy:
                        count, _ = await call(self.store.open_rows)
                        if count == 0:
                            self.exhausted = True
                            self.has_ready.set()
                            return
                    wait = self.poll_interval if claimed.wait is None else claimed.wait
                    if busy:
                        wait = min(wait, 0.05)  # results on their way may be retried soon
                    await trio.sleep(min(max(wait, 0.001), self.poll_interval))
                    continue
                local.extend(claimed.rows)
            size = min(self.depth - len(self.ready), len(local))
            if self.limiter is not None:
                size = 1
                await self.limiter.wait()
            for _ in range(max(1, size)):
                row_id, sender, recipients, mail, options, created_at, attempts = local.popleft()
                if row_id in self.rows:
                    # This worker's own claim expired while the row was in
                    # flight here, and it claimed the row again: the copy in
                    # flight settles it (a second copy could deliver it twice).
                    continue
                self.rows[row_id] = (float(created_at), int(attempts) + 1)
                self.ready.append(decode_message(row_id, sender, recipients, mail, options))
            self.has_ready.set()

    def take(self) -> BulkMessage | None:
        """The next ready message, or None when none is ready."""
        if not self.ready:
            return None
        message = self.ready.popleft()
        if len(self.ready) < self.depth:
            self.want_more.set()
        return message

    # ------------------------------------------------------------ the gate

    async def before_end_of_data(self, message: BulkMessage) -> None:
        """send_bulk's ``before_end_of_data``: arm the message's row, and
        return once that is committed.

        Raises:
            ClaimLost: the row is no longer this worker's to send.
        """
        key = message.key
        assert isinstance(key, int)
        group = self.group
        group.ids.append(key)
        self.has_work.set()
        await group.done.wait()
        if group.failed:
            raise ClaimLost(f"outbox row {key} could not be armed (database error): not sent")
        if key not in group.armed:
            raise ClaimLost(f"the claim on outbox row {key} was lost: not sent")

    # ---------------------------------------------------------------- results

    def on_result(self, result: BulkResult) -> None:
        if _held(result):
            self.held.append(result)
        else:
            results = self.results
            results.append(result)
            # While the journal gathers outcomes, only a full batch wakes it
            # (one task switch per batch, not per outcome).
            if not self.gathering or len(results) >= FLUSH_SIZE:
                self.has_work.set()

    # Protected from KeyboardInterrupt (here and in _run_writer): raised in
    # its finally clause, or before the writer's thread starts, it would leave
    # the writer waiting for work for ever, and the run with it.
    @trio.lowlevel.enable_ki_protection
    async def journal(self) -> None:
        """Commit the rows waiting at the gate and the outcomes received:
        one transaction at a time, made by the writer thread, up to
        :data:`COMMITS_IN_FLIGHT` queued at once."""
        # (run() takes a transaction's error out of the nurseries' groups.)
        async with trio.open_nursery() as nursery:
            # Not nursery.start(): a start cancelled before the writer says
            # it started waits for the writer to end, which it does only
            # once told to (below). A new task always runs its first step,
            # where the writer shields itself and starts its thread.
            nursery.start_soon(self._run_writer, trio.lowlevel.current_trio_token())
            try:
                await self._gather()
            finally:
                # The writer makes the transactions queued before this, then
                # ends (their results come back before it does).
                self.jobs.put(None)

    @trio.lowlevel.enable_ki_protection
    async def _run_writer(self, token: trio.lowlevel.TrioToken) -> None:
        # Shielded from its first step: the thread must start, and run until
        # it is told to stop, even when the run is cancelled at once (a
        # transaction queued and never made would leave its rows at the gate,
        # and its slot taken, for ever).
        with trio.CancelScope(shield=True):
            try:
                # A limiter of its own: the outbox's (for claims and
                # heartbeats) is not held for the whole run.
                await trio.to_thread.run_sync(self._writer, token, limiter=trio.CapacityLimiter(1))
            except BaseException as exc:
                # No thread (it could not start), or the writer died: every
                # transaction it did not report fails, so that its gate opens,
                # its slot is released and its outcomes wait for the final
                # flush (which would otherwise wait for the slots for ever).
                # The journal raises the error (raised here too, it would
                # come out of the journal twice).
                self._abandon(exc)

    def _abandon(self, error: BaseException) -> None:
        left = [] if self.writing is None else [self.writing]
        self.writing = None
        while True:
            try:
                work = self.jobs.get_nowait()
            except queue.Empty:
                break
            if work is not None:
                left.append(work)
        for work in left:
            self._committed(work, None, error)
        self._fail(error)

    def _writer(self, token: trio.lowlevel.TrioToken) -> None:
        """The writer thread: make each queued transaction; report it back."""
        store = self.store
        while True:
            work = self.jobs.get()
            if work is None:
                return
            self.writing = work
            try:
                armed = store.run(store.record, self.id, work.group.ids, work.settlements)
            except BaseException as exc:  # reported to the trio thread, which raises it
                token.run_sync_soon(self._committed, work, None, exc)
            else:
                token.run_sync_soon(self._committed, work, armed, None)
            self.writing = None

    # Protected from KeyboardInterrupt (trio delivers it elsewhere, as a
    # cancellation here): between taking a slot and queueing the transaction,
    # or in _take, it would lose the slot (the final flush would wait for it
    # for ever) or the outcomes taken.
    @trio.lowlevel.enable_ki_protection
    async def _gather(self) -> None:
        while True:
            await self.has_work.wait()
            self._raise_failure()
            # Rows at the gate: let the other connections whose replies are
            # in reach theirs too, so that one commit arms them all.
            count = len(self.group.ids)
            while count:
                await trio.lowlevel.checkpoint()
                if len(self.group.ids) == count:
                    break
                count = len(self.group.ids)
            if not self.group.ids:
                # Only outcomes: gather what arrives meanwhile (one
                # transaction for many), unless a row comes to the gate.
                self.gathering = True
                try:
                    with trio.move_on_after(FLUSH_DELAY):
                        while len(self.results) < FLUSH_SIZE and not self.group.ids:
                            self.has_work = trio.Event()
                            await self.has_work.wait()
                            self._raise_failure()
                finally:
                    self.gathering = False
            await self.slots.acquire()  # rows reaching the gate meanwhile join
            if self.journal_error is not None:
                self.slots.release()
                self._raise_failure()
            work = self._take(final=False)
            if work.group.ids or work.settlements:
                self.jobs.put(work)
            else:
                self._committed(work, {}, None)

    def _raise_failure(self) -> None:
        if self.journal_error is not None:
            raise self.journal_error

    @trio.lowlevel.enable_ki_protection
    async def flush(self, *, final: bool = False) -> None:
        """Once every transaction in flight is over: arm the rows at the gate
        and record the outcomes received so far (one transaction, in a
        thread of the outbox: the writer may have stopped)."""
        for _ in range(COMMITS_IN_FLIGHT):
            await self.slots.acquire()
        try:
            work = self._take(final)
            armed: dict[int, int] = {}
            if work.group.ids or work.settlements:
                # Shielded: these results left self.results, so a cancellation
                # here (say, while waiting for a database thread) would lose
                # them, and rows whose answer came back would end "unknown".
                # The transaction is short.
                try:
                    with trio.CancelScope(shield=True):
                        armed = await self.call(
                            self.store.record, self.id, work.group.ids, work.settlements
                        )
                except BaseException as exc:
                    self._committed(work, None, exc, release=False)
                    raise
            before = self.journal_error
            self._committed(work, armed, None, release=False)
            error = self.journal_error
            if error is not None and error is not before:  # raised by the bookkeeping
                raise error
        finally:
            for _ in range(COMMITS_IN_FLIGHT):
                self.slots.release()

    def _take(self, final: bool) -> _Journal:
        """What the next transaction writes, taken now (synchronously)."""
        group, self.group = self.group, _Group()
        results, self.results = self.results, []
        held: list[BulkResult] = []
        self.has_work = trio.Event()
        now = time.time()
        settlements = [self._settlement(result, now) for result in results]
        if final:
            # The connection could not be opened: when that ended the run, it
            # is not these messages' fault.
            held, self.held = self.held, []
            settlements += [
                self._settlement(result, now, untried=self.failure is not None) for result in held
            ]
        # Forgotten now, before the transaction: once it commits, the claimer
        # may claim a row again (a retry due at once), and its new entry must
        # stay.
        entries = {s.id: self.rows.pop(s.id, None) for s in settlements}
        return _Journal(group, results, held, settlements, entries)

    def _committed(
        self,
        work: _Journal,
        armed: dict[int, int] | None,
        error: BaseException | None,
        *,
        release: bool = True,
    ) -> None:
        """The transaction *work* was made (it armed *armed*), or failed with
        *error*: open its gate, and account for it. Synchronous: the writer
        thread has it called in the trio thread (``run_sync_soon``), so an
        error here becomes the journal's, never trio's."""
        group = work.group
        try:
            if error is not None:
                group.failed = True
                # Not recorded: kept for the final flush (the run ends with this
                # error; a database that answers again records them then).
                self.results[:0] = work.results
                self.held[:0] = work.held
                for row_id, entry in work.entries.items():
                    if entry is not None:
                        self.rows.setdefault(row_id, entry)
                self._fail(error)
                return
            assert armed is not None
            group.armed = armed
            for row_id, attempts in armed.items():
                entry = self.rows.get(row_id)
                # A row whose outcome was taken meanwhile (its gate waiter was
                # cancelled) is not in flight any more: not put back.
                if entry is not None:
                    self.rows[row_id] = (entry[0], attempts)
            if work.settlements:
                self._account(work.settlements)
        except BaseException as exc:  # the progress callback's, say
            self._fail(exc)
        finally:
            group.done.set()
            if release:
                self.slots.release()

    def _fail(self, error: BaseException) -> None:
        """Make *error* the journal's (the first one wins), and wake it."""
        if self.journal_error is None:
            self.journal_error = error
        self.has_work.set()

    def _account(self, settlements: list[Settlement]) -> None:
        summary = self.summary
        for s in settlements:
            if s.state is State.SENT:
                summary.sent += 1
            elif s.state is State.REFUSED:
                summary.refused += 1
            elif s.state is State.FAILED:
                summary.failed += 1
            elif s.state is State.UNKNOWN:
                summary.unknown += 1
            elif s.uncounted:
                summary.released += 1
            else:
                summary.retried += 1
        if self.progress is not None:
            self.report_due.set()

    async def _finish(self) -> None:
        """The run's last transaction, then the claimed rows that were never
        sent go back (even when that transaction failed: now, not when the
        lease ends)."""
        try:
            await self.flush(final=True)
        finally:
            for message in self.ready:
                key = message.key
                assert isinstance(key, int)
                self.rows.pop(key, None)  # not in flight any more
            self.ready.clear()
            await self.call(self.store.release, self.id)

    async def reporter(self) -> None:
        """Call ``progress`` after each transaction that recorded outcomes
        (its error ends the run)."""
        with self.reporter_scope:
            while True:
                await self.report_due.wait()
                self.report()

    def report(self) -> None:
        """Call ``progress`` with the counts so far."""
        assert self.progress is not None
        self.report_due = trio.Event()
        summary = self.summary
        try:
            self.progress(
                WorkProgress(
                    sent=summary.sent,
                    refused=summary.refused,
                    failed=summary.failed,
                    unknown=summary.unknown,
                    retried=summary.retried,
                    in_flight=len(self.rows) - len(self.ready),
                    elapsed=trio.current_time() - self.started,
                )
            )
        except BaseException:
            self.progress_failed = True  # not called again
            raise

    def _settlement(self, result: BulkResult, now: float, *, untried: bool = False) -> Settlement:
        key = result.message.key
        assert isinstance(key, int)
        created_at, attempts = self.rows.get(key, (now, 1))
        if isinstance(result.error, ClaimLost):
            # Never written (its end of data waited at the gate): no attempt. The
            # row goes back to pending if it is still this worker's (the journal
            # failed); if another worker has it, the update changes nothing.
            untried = True
        return settle(
            result,
            now=now,
            created_at=created_at,
            attempts=attempts,
            policy=self.policy,
            untried=untried,
        )

    # ---------------------------------------------------------------- claims

    async def heartbeat(self) -> None:
        while True:
            await trio.sleep(self.lease / 3)
            await self.call(self.store.heartbeat, self.id, self.lease)

    # ---------------------------------------------------------------- the run

    async def run(self, send: Callable[[Iterator[BulkMessage]], Awaitable[Any]]) -> WorkSummary:
        """Send rounds through *send* (send_bulk on one pool) until the queue
        is empty (``until_empty``), cancelled, or a fatal error."""
        try:
            # In a task of its own: trio delivers a KeyboardInterrupt to the
            # main task at its next wait, shielded or not, and the run's
            # cleanup (the last transaction, giving back the claimed rows)
            # waits. Here the main task only waits for this task, which the
            # interrupt cancels: the cleanup runs, then the interrupt goes on.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._run, send)
        except BaseExceptionGroup as group:
            # One error (the journal's, the progress callback's…) and the
            # cancellations it caused: the run's error is that one.
            error = _one_error(group)
            if error is None:
                raise
            reraise(error)
        return self.summary

    async def _run(self, send: Callable[[Iterator[BulkMessage]], Awaitable[Any]]) -> None:
        claimer_scope = trio.CancelScope()
        claimer_done = trio.Event()

        async def claim() -> None:
            try:
                with claimer_scope:
                    await self.claimer()
            finally:
                claimer_done.set()

        async def one_round(round_: _Round) -> None:
            try:
                await send(round_)
            finally:
                round_.ended.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.heartbeat)
            nursery.start_soon(self.journal)
            nursery.start_soon(claim)
            if self.progress is not None:
                nursery.start_soon(self.reporter)
            try:
                async with trio.open_nursery() as rounds:
                    while not self.exhausted:
                        if not self.ready:
                            self.has_ready = trio.Event()
                            await self.has_ready.wait()
                            continue
                        round_ = _Round(self)
                        rounds.start_soon(one_round, round_)
                        await round_.ended.wait()
            except BaseExceptionGroup as group:  # the first round's error is the run's
                leaves = group.exceptions
                self.failure = leaves[0] if len(leaves) == 1 else group
                raise self.failure from None
            except BaseException as exc:
                self.failure = exc
                raise
            finally:
                claimer_scope.cancel()
                self.reporter_scope.cancel()
                with trio.CancelScope(shield=True):
                    # The claimer's last transaction is over, and send_bulk has
                    # returned: every row of this worker is ready (claimed),
                    # or has its outcome here.
                    await claimer_done.wait()
                    try:
                        await self._finish()
                    except Exception as exc:
                        first = self.journal_error or self.failure
                        if first is None:
                            raise
                        # The database failed first (the journal's error ends
                        # the run), and again here: the first error is the
                        # run's, not an exception group of both.
                        first.add_note(
                            f"the run's last transaction failed too ({type(exc).__name__})"
                        )
                nursery.cancel_scope.cancel()
                due = self.report_due.is_set() and not self.progress_failed
                if self.progress is not None and due:
                    try:
                        self.report()  # the final flush's outcomes
                    except Exception as exc:
                        failing = self.journal_error or self.failure
                        if failing is None:
                            raise
                        # The run ends with another error: the callback's
                        # must not replace it.
                        failing.add_note(
                            f"the progress callback failed too ({type(exc).__name__})"
                        )
