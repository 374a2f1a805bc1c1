"""When a row cannot be armed at its end-of-data gate (its claim was lost, or
the journal's transaction failed): nothing of its end is written, the attempt
does not count, and a message queued behind it on the same connection goes
again, its attempt uncounted."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import pytest
import trio

import trio_sendmail as ts
from trio_sendmail.outbox import RetryPolicy, State, open_outbox
from trio_sendmail.outbox._model import Settlement
from trio_sendmail.outbox._store import Store
from trio_sendmail.testing import FakeSMTPServer, serve_fake_smtp

from ..helpers import CLIENT_NAME, ServerVariant


def message(n: int) -> ts.BulkMessage:
    return ts.BulkMessage(
        "news@example.com", [f"r{n}@example.com"], b"Subject: %d\r\n\r\nx\r\n" % n
    )


def steal_at_arm(store: Store, row_id: int) -> list[int]:
    """Make the first transaction that arms *row_id* find it claimed by another
    worker (as after its claim expired and another worker took it); returns
    the list that gets *row_id* once that happened."""
    original = store.record
    stolen: list[int] = []

    def record(
        worker: str, arm: Sequence[int], settlements: Sequence[Settlement]
    ) -> dict[int, int]:
        if row_id in arm and not stolen:
            stolen.append(row_id)
            with store.transaction() as cur:
                store._x(
                    cur,
                    "UPDATE outbox_messages SET worker = ? WHERE id = ?",
                    ("another-worker", row_id),
                )
        return original(worker, arm, settlements)

    store.record = record  # type: ignore[method-assign]
    return stolen


async def test_a_lost_claim_does_not_cost_the_next_message_an_attempt(
    outbox_url: str, server_variant: ServerVariant
) -> None:
    """Row 1's claim is lost at its gate (another worker took it after an
    expiry: simulated by moving the claim in the database right before the
    arm). Row 2, whose envelope was queued behind row 1's end of data on the
    same connection, was never written: it must not lose an attempt, let alone
    be marked ``failed`` (here the policy allows one attempt)."""
    server = FakeSMTPServer(extensions=server_variant.extensions())
    async with (
        serve_fake_smtp(server) as port,
        open_outbox(outbox_url, retry=RetryPolicy(max_attempts=1, backoff=0.0)) as outbox,
    ):
        ids = await outbox.enqueue(message(n) for n in range(3))
        stolen = steal_at_arm(outbox._store, ids[0])
        with trio.fail_after(30):
            await outbox.work(
                "127.0.0.1", port=port, tls=ts.TLSMode.INSECURE_PLAINTEXT,
                domain=CLIENT_NAME, limits=ts.PoolLimits(max_connections=1),
                concurrency=1, until_empty=True, poll_interval=0.05, lease=1.0,
            )  # fmt: skip
        entries = {e.id: e for e in await outbox.entries()}
    assert stolen == [ids[0]]
    # Row 2 was never written to the server at its first try.
    assert entries[ids[1]].state is State.SENT, entries[ids[1]]
    assert entries[ids[2]].state is State.SENT, entries[ids[2]]


async def test_a_failed_journal_transaction_leaves_unsent_rows_pending(
    tmp_path: Any, server_variant: ServerVariant
) -> None:
    """The journal's transaction that arms a row fails (SQLite's busy timeout
    ran out: ``database is locked``). The row's end of data was never written:
    after the run, it must be ``pending`` (or ``claimed`` until its lease
    ends), never ``failed``."""
    server = FakeSMTPServer(extensions=server_variant.extensions())
    async with serve_fake_smtp(server) as port, open_outbox(f"sqlite:///{tmp_path}/o.db") as ob:
        await ob.enqueue(message(n) for n in range(3))
        store = ob._store
        original = store.record
        failed: list[Sequence[int]] = []

        def record(
            worker: str, arm: Sequence[int], settlements: Sequence[Settlement]
        ) -> dict[int, int]:
            if arm and not failed:
                failed.append(list(arm))
                raise sqlite3.OperationalError("database is locked")
            return original(worker, arm, settlements)

        store.record = record  # type: ignore[method-assign]
        with trio.fail_after(30), pytest.raises(sqlite3.OperationalError):
            await ob.work(
                "127.0.0.1", port=port, tls=ts.TLSMode.INSECURE_PLAINTEXT,
                domain=CLIENT_NAME, limits=ts.PoolLimits(max_connections=1),
                concurrency=1, until_empty=True, poll_interval=0.05,
            )  # fmt: skip
        entries = {e.id: e for e in await ob.entries()}
    assert failed and failed[0]
    assert len(server.messages) == 0
    for row_id in failed[0]:
        assert entries[row_id].state in (State.PENDING, State.CLAIMED), entries[row_id]
    assert not [e for e in entries.values() if e.state is State.FAILED], entries


async def test_a_lost_claim_is_not_counted_failed_in_the_summary(
    outbox_url: str, server_variant: ServerVariant
) -> None:
    """A row whose claim was lost is not this worker's: its WorkSummary must
    not count it ``failed`` (the database records nothing for it; here the row
    is later taken back and sent)."""
    server = FakeSMTPServer(extensions=server_variant.extensions())
    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        ids = await outbox.enqueue(message(n) for n in range(2))
        stolen = steal_at_arm(outbox._store, ids[0])
        with trio.fail_after(30):
            summary = await outbox.work(
                "127.0.0.1", port=port, tls=ts.TLSMode.INSECURE_PLAINTEXT,
                domain=CLIENT_NAME, concurrency=1, until_empty=True, poll_interval=0.05,
                lease=1.0,
            )  # fmt: skip
        entries = await outbox.entries()
    assert stolen == [ids[0]]
    assert [e.state for e in entries] == [State.SENT] * 2
    assert (summary.sent, summary.failed) == (2, 0), summary
