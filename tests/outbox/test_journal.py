"""The worker's journal: its writer thread, what it reports back, and the
one-statement settlement of many rows, on both engines (the sends through the
fake server with PIPELINING and CHUNKING on and off)."""

from __future__ import annotations

import collections
import threading
from typing import Any

import pytest
import trio

import trio_sendmail as ts
from trio_sendmail.outbox import State, WorkProgress, open_outbox
from trio_sendmail.outbox._model import Settlement
from trio_sendmail.outbox._store import Store
from trio_sendmail.testing import FakeSMTPServer, serve_fake_smtp

from ..helpers import ServerVariant
from .test_outbox import body, message, work_options


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
    outbox_url: str, server_variant: ServerVariant
) -> None:
    """The writer: one thread for the whole run, not the trio thread."""
    server = FakeSMTPServer(extensions=server_variant.extensions())
    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        store: Store = outbox._store
        threads: collections.Counter[int] = collections.Counter()
        original = store.record

        def record(worker: str, arm: Any, settlements: Any) -> dict[int, int]:
            threads[threading.get_ident()] += 1
            return original(worker, arm, settlements)

        store.record = record  # type: ignore[method-assign]
        await outbox.enqueue(message(n) for n in range(30))
        summary = await outbox.work("127.0.0.1", **work_options(port))
    assert summary.sent == 30
    assert threading.get_ident() not in threads
    # Every transaction but the final flush's (in a thread of the outbox).
    _, count = threads.most_common(1)[0]
    assert count >= sum(threads.values()) - 1 and count >= 2, threads


async def test_an_error_of_the_progress_callback_ends_the_run_with_it(
    outbox_url: str, server_variant: ServerVariant
) -> None:
    """The callback runs where a commit is reported back to the trio thread: its
    error ends the run (not trio: a ``run_sync_soon`` callback must not raise),
    and the rows stay exact: each sent row reached the server once, no pending
    row reached it."""
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
    delivered = collections.Counter(m.data for m in server.messages)
    states = collections.Counter(e.state for e in entries)
    assert states[State.SENT] >= 5 and states[State.PENDING] > 0, states
    assert set(states) <= {State.SENT, State.PENDING, State.UNKNOWN}, states
    number = {row_id: n for n, row_id in enumerate(ids)}
    for e in entries:
        n = number[e.id]
        if e.state is State.SENT:
            assert delivered[body(n)] == 1
        elif e.state is State.PENDING:
            assert delivered[body(n)] == 0
        else:
            assert delivered[body(n)] <= 1


async def test_settles_more_rows_than_one_statement_takes(outbox_url: str) -> None:
    """7,500 settlements in one transaction: 67,500 parameters, past
    PostgreSQL's limit (65,535) and SQLite's default one (32,766; some builds
    allow more) unless the statement is cut in parts; each row gets its own
    outcome."""
    count = 7_500
    async with open_outbox(outbox_url) as outbox:
        store: Store = outbox._store
        ids = await outbox.enqueue(
            ts.BulkMessage("a@example.com", ["b@example.com"], b"x\r\n") for _ in range(count)
        )
        claimed = await outbox._call(store.claim, "w1", count, 60.0, recover=False)
        assert len(claimed.rows) == count
        armed = await outbox._call(store.arm, "w1", ids)
        assert len(armed) == count
        settlements = [
            Settlement(
                id=row_id,
                state=State.SENT if i % 3 else State.REFUSED,
                reply_code=250 if i % 3 else 550,
                reply_text=f"reply {i}",
            )
            for i, row_id in enumerate(ids)
        ]
        await outbox._call(store.settle, "w1", settlements)
        entries = await outbox.entries()
    assert [(e.state, e.reply_code, e.reply_text) for e in entries] == [
        (s.state, s.reply_code, s.reply_text) for s in settlements
    ]
    assert all(e.attempts == 1 and e.worker == "w1" for e in entries)


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
            assert await _indexes(outbox) == {"outbox_due", "outbox_worker"}
    await trio.sleep(0.05)  # its claim expires
    server = FakeSMTPServer(extensions=server_variant.extensions())
    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        assert await _indexes(outbox) == {"outbox_due", "outbox_in_flight"}
        summary = await outbox.work("127.0.0.1", **work_options(port))
        unknown = await outbox.entries(state=State.UNKNOWN)
        stats = await outbox.statistics()
    assert summary.sent == 3
    assert [e.id for e in unknown] == ids[:1]
    assert stats.counts[State.SENT] == 3 and stats.counts[State.UNKNOWN] == 1
    assert sorted(m.data for m in server.messages) == sorted(body(n) for n in range(1, 4))


async def _indexes(outbox: Any) -> set[str]:
    """The names of the indexes on outbox_messages (not the primary key's)."""
    store: Store = outbox._store

    def names() -> set[str]:
        with store.transaction() as cur:
            if "sqlite" in type(store).__name__.lower():
                cur.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'index'"
                    " AND tbl_name = 'outbox_messages' AND sql IS NOT NULL"
                )
            else:
                cur.execute(
                    "SELECT indexname FROM pg_indexes WHERE tablename = 'outbox_messages'"
                    " AND schemaname = current_schema()"
                    " AND indexname NOT IN ('outbox_messages_pkey', 'outbox_messages_key_key')"
                )
            return {str(row[0]) for row in cur.fetchall()}

    found: set[str] = await outbox._call(names)
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
        for step in range(16):
            with trio.fail_after(10), trio.move_on_after(step * 0.002):
                await outbox.work("127.0.0.1", **work_options(port))
        entries = await outbox.entries()
    number = {row_id: n for n, row_id in enumerate(ids)}
    delivered = collections.Counter(m.data for m in server.messages)
    unknown = 0
    for e in entries:
        if e.state is State.SENT:
            assert delivered[body(number[e.id])] == 1
        elif e.state is State.PENDING:
            assert delivered[body(number[e.id])] == 0
        else:
            assert e.state is State.UNKNOWN, e
            assert delivered[body(number[e.id])] <= 1
            unknown += 1
    assert unknown <= 3 * 16  # 3 connections, 16 runs
