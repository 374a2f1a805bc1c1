"""The worker's journal: its writer thread, what it reports back, and the
one-statement settlement of many rows, on both engines (the sends through the
fake server with PIPELINING and CHUNKING on and off)."""

from __future__ import annotations

import collections
import contextlib
import contextvars
import threading
import time
from typing import Any

import pytest
import trio

import trio_sendmail as ts
from trio_sendmail.outbox import State, WorkProgress, _worker, open_outbox
from trio_sendmail.outbox._model import Settlement
from trio_sendmail.outbox._store import Store
from trio_sendmail.testing import FakeSMTPServer, serve_fake_smtp

from ..helpers import ServerVariant
from .test_outbox import body, message, work_options


def check_storage(
    entries: list[Any], ids: list[int], messages: list[Any], *, final: bool = False
) -> collections.Counter[State]:
    """Each row's outcome against the server's store (the rows are
    ``message(n)`` for n in order of *ids*): ``sent`` stored once, ``pending``
    and ``claimed`` (never armed) not stored, ``sending`` and ``unknown`` (their
    end of data may have gone out) at most once; with *final*, no row is
    still ``claimed`` or ``sending``. Returns the count of each state."""
    stored = collections.Counter(m.data for m in messages)
    number = {row_id: n for n, row_id in enumerate(ids)}
    for e in entries:
        copies = stored[body(number[e.id])]
        if e.state is State.SENT:
            assert copies == 1, e
        elif e.state in (State.PENDING, State.CLAIMED):
            assert copies == 0, e
        else:
            assert e.state in (State.UNKNOWN, State.SENDING), e
            assert copies <= 1, e
    states = collections.Counter(e.state for e in entries)
    if final:
        assert states[State.CLAIMED] == states[State.SENDING] == 0, states
    return states


async def test_two_workers_on_one_outbox_object_share_its_queue(
    outbox_url: str, server_variant: ServerVariant
) -> None:
    """Two ``work()`` calls at once on one :class:`Outbox`: each journal has a
    writer thread of its own, outside the outbox's thread limiter (two for
    SQLite), so their claims and heartbeats still get a thread; every message
    goes out once."""
    server = FakeSMTPServer(extensions=server_variant.extensions())
    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        await outbox.enqueue(message(n) for n in range(60))
        summaries: list[Any] = []

        async def work() -> None:
            summaries.append(await outbox.work("127.0.0.1", **work_options(port)))

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(work)
                nursery.start_soon(work)
        entries = await outbox.entries()
    assert sum(s.sent for s in summaries) == 60
    assert [e.state for e in entries] == [State.SENT] * 60
    assert sorted(m.data for m in server.messages) == sorted(body(n) for n in range(60))


async def test_every_journal_transaction_of_a_run_is_made_by_one_thread(
    outbox_url: str, server_variant: ServerVariant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer: one thread for the whole run (the one that runs
    ``Worker._writer``), which makes every transaction but the final flush's."""
    server = FakeSMTPServer(extensions=server_variant.extensions())
    writers: list[int] = []
    original_writer = _worker.Worker._writer

    def writer(self: _worker.Worker, token: Any) -> None:
        writers.append(threading.get_ident())
        original_writer(self, token)

    monkeypatch.setattr(_worker.Worker, "_writer", writer)
    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        store: Store = outbox._store
        threads: list[int] = []
        original = store.record

        def record(worker: str, arm: Any, settlements: Any) -> dict[int, int]:
            threads.append(threading.get_ident())
            return original(worker, arm, settlements)

        store.record = record  # type: ignore[method-assign]
        await outbox.enqueue(message(n) for n in range(30))
        summary = await outbox.work("127.0.0.1", **work_options(port))
    assert summary.sent == 30
    assert len(writers) == 1 and writers[0] != threading.get_ident()
    by_writer = [t == writers[0] for t in threads]
    assert sum(by_writer) >= max(2, len(threads) - 1), (writers, threads)


async def test_an_error_of_the_progress_callback_ends_the_run_with_it(
    outbox_url: str, server_variant: ServerVariant
) -> None:
    """The callback's error ends the run with that error alone (not an
    exception group with the cancellations it caused, and never inside trio's
    own task, where it would crash trio), and the rows stay exact: each sent
    row reached the server once, no pending row reached it."""
    server = FakeSMTPServer(extensions=server_variant.extensions())

    class Stop(Exception):
        pass

    def progress(p: WorkProgress) -> None:
        if p.sent >= 5:
            raise Stop("enough")

    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        ids = await outbox.enqueue(message(n) for n in range(40))
        with trio.fail_after(30), pytest.raises(Stop):
            await outbox.work("127.0.0.1", **work_options(port), progress=progress)
        entries = await outbox.entries()
    states = check_storage(entries, ids, server.messages, final=True)
    assert states[State.SENT] >= 5 and states[State.PENDING] > 0, states


async def test_settles_more_rows_than_one_statement_takes(outbox_url: str) -> None:
    """7,501 settlements in one transaction: 67,509 parameters, past
    PostgreSQL's limit (65,535) and SQLite's default one (32,766; some builds
    allow more) unless the statement is cut in parts (here 16, the last of one
    row). Every kind of settlement is in the mix, and each row gets its own:
    sent and refused after their arm (the attempt counted once), refused while
    only claimed (counted then), back to ``pending`` with a delay (no worker)
    and back to ``pending`` uncounted (the run stopped before the attempt)."""
    count = 7_501
    async with open_outbox(outbox_url) as outbox:
        store: Store = outbox._store
        ids = await outbox.enqueue(
            ts.BulkMessage("a@example.com", ["b@example.com"], b"x\r\n") for _ in range(count)
        )
        claimed = await outbox._call(store.claim, "w1", count, 60.0, recover=False)
        assert len(claimed.rows) == count
        kinds = ["sent", "refused", "claimed-refused", "retry", "uncounted"]
        kind = {row_id: kinds[i % len(kinds)] for i, row_id in enumerate(ids)}
        armed = await outbox._call(
            store.arm, "w1", [i for i in ids if kind[i] != "claimed-refused"]
        )
        assert len(armed) == count - count // len(kinds) - (count % len(kinds) > 2)

        def settlement(i: int, row_id: int) -> Settlement:
            k = kind[row_id]
            if k == "sent":
                return Settlement(
                    id=row_id, state=State.SENT, reply_code=250, reply_text=f"ok {i}"
                )
            if k in ("refused", "claimed-refused"):
                return Settlement(
                    id=row_id, state=State.REFUSED, reply_code=550, reply_text=f"no {i}"
                )
            if k == "retry":
                return Settlement(
                    id=row_id, state=State.PENDING, delay=3600.0, reply_code=451, error=f"e{i}"
                )
            return Settlement(id=row_id, state=State.PENDING, delay=0.0, uncounted=True)

        before = time.time()
        settlements = [settlement(i, row_id) for i, row_id in enumerate(ids)]
        await outbox._call(store.settle, "w1", settlements)
        entries = await outbox.entries()
    assert [e.id for e in entries] == ids
    for e, s in zip(entries, settlements, strict=True):
        k = kind[e.id]
        assert (e.state, e.reply_code, e.reply_text, e.error) == (
            s.state, s.reply_code, s.reply_text, s.error,
        ), (k, e)  # fmt: skip
        assert e.attempts == (0 if k == "uncounted" else 1), (k, e)
        assert e.worker == (None if s.state is State.PENDING else "w1"), (k, e)
        if k == "retry":
            assert e.next_attempt_at >= before + 3600.0
        elif k == "uncounted":
            assert before - 1 <= e.next_attempt_at <= time.time() + 1


async def test_a_version_1_outbox_migrates_to_partial_indexes(
    outbox_url: str, server_variant: ServerVariant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outbox made by a trio_sendmail with schema version 1 (full indexes
    on the state) is migrated when opened: its rows are kept, the partial
    indexes of version 2 replace the old ones, and every query still finds
    its rows (a pending row is claimed and sent; an unknown one is listed)."""
    from trio_sendmail.outbox import _store

    with monkeypatch.context() as patch:
        patch.setattr(_store, "MIGRATIONS", _store.MIGRATIONS[:1])
        patch.setattr(_store, "SCHEMA_VERSION", 1)
        async with open_outbox(outbox_url) as outbox:
            ids = await outbox.enqueue(message(n) for n in range(4))
            store: Store = outbox._store
            await outbox._call(store.claim, "old", 1, 0.01, recover=False)
            await outbox._call(store.arm, "old", ids[:1])  # then the old worker dies
            assert set(await _indexes(outbox)) == {"outbox_due", "outbox_worker"}
    await trio.sleep(0.05)  # its claim expires
    server = FakeSMTPServer(extensions=server_variant.extensions())
    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        indexes = await _indexes(outbox)
        assert set(indexes) == {"outbox_due", "outbox_in_flight"}
        assert "where" in indexes["outbox_due"].lower() and "pending" in indexes["outbox_due"]
        assert (
            "claimed" in indexes["outbox_in_flight"] and "sending" in indexes["outbox_in_flight"]
        )
        summary = await outbox.work("127.0.0.1", **work_options(port))
        unknown = await outbox.entries(state=State.UNKNOWN)
        stats = await outbox.statistics()
    assert summary.sent == 3
    assert [e.id for e in unknown] == ids[:1]
    assert stats.counts[State.SENT] == 3 and stats.counts[State.UNKNOWN] == 1
    assert sorted(m.data for m in server.messages) == sorted(body(n) for n in range(1, 4))


async def _indexes(outbox: Any) -> dict[str, str]:
    """The indexes on outbox_messages (not the keys'): name -> definition."""
    store: Store = outbox._store

    def names() -> dict[str, str]:
        with store.transaction() as cur:
            if "sqlite" in type(store).__name__.lower():
                cur.execute(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'index'"
                    " AND tbl_name = 'outbox_messages' AND sql IS NOT NULL"
                )
            else:
                cur.execute(
                    "SELECT indexname, indexdef FROM pg_indexes"
                    " WHERE tablename = 'outbox_messages' AND schemaname = current_schema()"
                    " AND indexname NOT IN ('outbox_messages_pkey', 'outbox_messages_key_key')"
                )
            return {str(row[0]): str(row[1]) for row in cur.fetchall()}

    found: dict[str, str] = await outbox._call(names)
    return found


async def test_a_run_cancelled_at_any_moment_ends_and_loses_no_row(
    outbox_url: str, server_variant: ServerVariant
) -> None:
    """``work()`` cancelled after 0 to 30 ms (while the pool opens, the writer
    starts, a claim or a commit runs, messages are in flight): each run ends
    promptly, and every row is ``sent`` (delivered once), ``pending`` (never
    delivered) or ``unknown`` (cancelled between its end of data and the reply:
    delivered at most once, and at most one per connection and run): the run
    records every outcome it has before it ends."""
    server = FakeSMTPServer(extensions=server_variant.extensions())
    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        ids = await outbox.enqueue(message(n) for n in range(200))
        runs = 0
        # 16 runs cancelled after 0 to 30 ms, and more (each a little later)
        # until one got as far as recording a sent message.
        while runs < 16 or not (await outbox.statistics()).counts[State.SENT]:
            assert runs < 200
            with trio.fail_after(10), trio.move_on_after(runs * 0.002):
                await outbox.work("127.0.0.1", **work_options(port))
            runs += 1
        entries = await outbox.entries()
        # Nothing stays claimed (each run gave its rows back).
        states = check_storage(entries, ids, list(server.messages), final=True)
        assert states[State.UNKNOWN] <= 3 * runs  # 3 connections a run
        # A last run sends every pending row, once.
        with trio.fail_after(30):
            await outbox.work("127.0.0.1", **work_options(port))
        after = await outbox.entries()
    assert check_storage(after, ids, server.messages, final=True)[State.PENDING] == 0


VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


async def test_progress_runs_in_a_task_of_the_run_with_the_callers_context(
    outbox_url: str, server_variant: ServerVariant
) -> None:
    """The writer's report of a commit runs in trio's own task; the progress
    callback does not: it runs in a task of the run, which sees the caller's
    context variables (a logging or tracing context)."""
    server = FakeSMTPServer(extensions=server_variant.extensions())
    seen: list[tuple[str, str]] = []

    def progress(p: WorkProgress) -> None:
        seen.append((VAR.get(), trio.lowlevel.current_task().name))

    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        await outbox.enqueue(message(n) for n in range(20))
        VAR.set("caller")
        summary = await outbox.work("127.0.0.1", **work_options(port), progress=progress)
    assert summary.sent == 20 and seen
    assert all(v == "caller" and "run_sync_soon" not in name for v, name in seen), seen


async def test_a_failed_final_flush_still_gives_the_claimed_rows_back(
    outbox_url: str, server_variant: ServerVariant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's last transaction fails (here: raised after it): the rows the
    worker claimed and never sent go back to ``pending`` at once, not when the
    lease ends (here an hour), and the run ends with the error."""
    server = FakeSMTPServer(extensions=server_variant.extensions())
    original = _worker.Worker.flush

    class Broken(Exception):
        pass

    raised: list[bool] = []

    async def flush(self: _worker.Worker, *, final: bool = False) -> None:
        await original(self, final=final)
        if final:
            raised.append(True)
            raise Broken("the last transaction failed")

    monkeypatch.setattr(_worker.Worker, "flush", flush)
    sent_once = trio.Event()

    def progress(p: WorkProgress) -> None:
        if p.sent:
            sent_once.set()

    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        ids = await outbox.enqueue(message(n) for n in range(300))

        async def work() -> None:
            options = work_options(port, lease=3600.0, batch_size=300)
            # The error, or the cancellation that ended the run (the pool's
            # closing, cancelled too, may replace it).
            with contextlib.suppress(Broken):
                await outbox.work("127.0.0.1", **options, progress=progress)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(work)
                await sent_once.wait()
                # Ends the run while claimed rows wait (until_empty=False: it
                # would run on), through the round's cancellation.
                nursery.cancel_scope.cancel()
        entries = await outbox.entries()
    assert raised
    states = check_storage(entries, ids, server.messages, final=True)
    assert states[State.PENDING] > 0, states


async def test_a_writer_thread_that_dies_does_not_hang_the_run(
    outbox_url: str, server_variant: ServerVariant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's thread dies (here: it cannot start, after the journal has
    queued transactions): each queued transaction fails, so its rows' gates
    open (their ends of data are never written), the final flush records what
    came back, and the run ends with the error instead of waiting for ever."""
    server = FakeSMTPServer(extensions=server_variant.extensions())
    original = trio.to_thread.run_sync

    queued: list[int] = []

    async def run_sync(fn: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(fn, "__name__", "") == "_writer":
            # (Shielded by the caller.) Dies once transactions wait for it.
            jobs = fn.__self__.jobs
            for _ in range(1000):
                if jobs.qsize():
                    break
                await trio.sleep(0.005)
            queued.append(jobs.qsize())
            raise RuntimeError("can't start new thread")
        return await original(fn, *args, **kwargs)

    monkeypatch.setattr(trio.to_thread, "run_sync", run_sync)
    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        ids = await outbox.enqueue(message(n) for n in range(50))
        with trio.fail_after(20), pytest.raises(RuntimeError, match="new thread"):
            await outbox.work("127.0.0.1", **work_options(port))
        entries = await outbox.entries()
    assert queued and queued[0] >= 1
    assert len(server.messages) == 0  # no end of data was written
    assert {e.state for e in entries} <= {State.PENDING}, entries
    assert [e.id for e in entries] == ids


async def test_a_postgresql_migration_runs_without_the_statement_timeout(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration may index every row of a large outbox: its transaction has
    no statement timeout (the outbox's connections have 30 s), so it is not
    rolled back at each open. Checked by a migration that fails otherwise."""
    from trio_sendmail.outbox import _store

    check = (  # (no "%": the statements go through psycopg's placeholders)
        "DO $$ BEGIN IF current_setting('statement_timeout') <> '0' THEN"
        " RAISE EXCEPTION 'a statement timeout is set'; END IF; END $$"
    )
    monkeypatch.setattr(_store, "MIGRATIONS", [*_store.MIGRATIONS, (99, [check])])
    monkeypatch.setattr(_store, "SCHEMA_VERSION", 99)
    async with open_outbox(postgres_url) as outbox:
        assert await outbox.statistics()


class DatabaseDown(Exception):
    pass


async def test_a_database_that_fails_for_good_ends_the_run_with_its_first_error(
    outbox_url: str, server_variant: ServerVariant
) -> None:
    """The database stops answering mid-run: the journal's transaction fails,
    then the run's last transaction and the release fail too. ``work()``
    raises the first error (not an exception group of all three), with its own
    context kept, and a note of the others."""
    server = FakeSMTPServer(extensions=server_variant.extensions())
    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        store: Store = outbox._store
        calls: list[int] = []
        original = store.record

        def record(worker: str, arm: Any, settlements: Any) -> dict[int, int]:
            calls.append(1)
            if len(calls) <= 2:
                return original(worker, arm, settlements)
            try:
                raise ConnectionResetError("the server went away")
            except ConnectionResetError:
                raise DatabaseDown(f"transaction {len(calls)}") from None

        def release(worker: str) -> int:
            raise DatabaseDown("release")

        store.record = record  # type: ignore[method-assign]
        store.release = release  # type: ignore[method-assign]
        ids = await outbox.enqueue(message(n) for n in range(40))
        with trio.fail_after(30), pytest.raises(DatabaseDown) as caught:
            await outbox.work("127.0.0.1", **work_options(port))
        store.record = original  # type: ignore[method-assign]
        entries = await outbox.entries()
    # Rows armed before the outage stay sending (unknown once their lease
    # ends); no end of data went out after it.
    check_storage(entries, ids, server.messages)
    assert str(caught.value) == "transaction 3"
    assert caught.value.__suppress_context__ is True  # its own "from None", kept
    assert any("last transaction failed too" in n for n in caught.value.__notes__)


async def test_the_final_report_does_not_replace_the_runs_error(
    outbox_url: str,
) -> None:
    """No connection can be opened (the run's error), and the progress
    callback fails when it is called with the last counts: ``work()`` raises
    the connection error, with a note of the callback's."""

    class Boom(Exception):
        pass

    def progress(p: WorkProgress) -> None:
        raise Boom("a closed pipe")

    with trio.socket.socket() as sock:  # a port nothing listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with open_outbox(outbox_url) as outbox:
        await outbox.enqueue(message(n) for n in range(3))
        with trio.fail_after(30), pytest.raises(ts.SMTPConnectionError) as caught:
            await outbox.work("127.0.0.1", **work_options(port), progress=progress)
        entries = await outbox.entries()
    assert any("progress callback failed too" in n for n in caught.value.__notes__)
    assert [e.state for e in entries] == [State.PENDING] * 3


async def test_the_last_report_of_a_cancelled_run_counts_nothing_in_flight(
    outbox_url: str, server_variant: ServerVariant
) -> None:
    """A run cancelled while messages wait, claimed: its last report comes
    after every outcome is recorded and those rows went back, so nothing is
    in flight any more."""
    server = FakeSMTPServer(extensions=server_variant.extensions())
    reports: list[WorkProgress] = []
    reported = trio.Event()

    def progress(p: WorkProgress) -> None:
        reports.append(p)
        reported.set()

    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        ids = await outbox.enqueue(message(n) for n in range(300))
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:

                async def work() -> None:
                    await outbox.work("127.0.0.1", **work_options(port), progress=progress)

                nursery.start_soon(work)
                await reported.wait()
                nursery.cancel_scope.cancel()
        entries = await outbox.entries()
    states = check_storage(entries, ids, server.messages, final=True)
    assert states[State.PENDING] > 0, states
    assert reports[-1].in_flight == 0, reports[-1]
