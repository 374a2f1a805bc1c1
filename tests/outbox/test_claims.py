"""Claims as leases, the crash rule and the shared rate limit, on both engines,
driven through the store (the transactions a worker makes), and many workers
sharing one outbox with no row claimed twice."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio

import trio_sendmail as ts
from trio_sendmail.outbox import Outbox, State, open_outbox
from trio_sendmail.outbox._model import Settlement
from trio_sendmail.outbox._store import Store
from trio_sendmail.testing import FakeSMTPServer, serve_fake_smtp

from ..helpers import CLIENT_NAME, ServerVariant
from ..test_pool import HANG, Action, Conn, StubServer, serve_tcp

SENDER = "news@example.com"


def message(n: int, sender: str = SENDER) -> ts.BulkMessage:
    return ts.BulkMessage(sender, [f"r{n}@example.com"], b"Subject: %d\r\n\r\nx\r\n" % n)


@asynccontextmanager
async def store_of(url: str) -> AsyncIterator[tuple[Outbox, Store]]:
    async with open_outbox(url) as outbox:
        yield outbox, outbox._store


async def call(outbox: Outbox, fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await outbox._call(fn, *args, **kwargs)


async def test_expired_claims_go_back_by_what_the_database_proves(outbox_url: str) -> None:
    """Claimed but not armed: pending (never reached the end of data).
    Armed: unknown. Only the worker that holds a claim can arm it."""
    async with store_of(outbox_url) as (outbox, store):
        ids = await outbox.enqueue(message(n) for n in range(6))
        claimed = await call(outbox, store.claim, "w1", 6, 1.0, recover=False)
        assert [int(r[0]) for r in claimed.rows] == ids
        assert await call(outbox, store.arm, "w1", ids[:2]) == {ids[0]: 1, ids[1]: 1}
        assert await call(outbox, store.arm, "w2", ids[2:4]) == {}  # not w2's claim
        # Nothing is recovered while the lease runs; the heartbeat extends it.
        await call(outbox, store.claim, "w2", 6, 60, recover=True)
        assert await call(outbox, store.heartbeat, "w1", 1.0) == 6
        await trio.sleep(1.2)
        again = await call(outbox, store.claim, "w2", 10, 60, recover=True)
        entries = {e.id: e for e in await outbox.entries(ids)}
        # w1 died: its armed rows are unknown, its other rows went to w2.
        assert [entries[i].state for i in ids[:2]] == [State.UNKNOWN] * 2
        error = entries[ids[0]].error
        assert error is not None and "end of data" in error
        assert sorted(int(r[0]) for r in again.rows) == ids[2:]
        assert all(entries[i].state is State.CLAIMED for i in ids[2:])
        assert all(entries[i].attempts == 0 for i in ids[2:])
        # A late w1 can no longer arm them; w2 can.
        assert await call(outbox, store.arm, "w1", ids[2:]) == {}
        assert set(await call(outbox, store.arm, "w2", ids[2:])) == set(ids[2:])
        # w2 gives back what it did not arm when it stops.
        assert await call(outbox, store.release, "w2") == 0


async def test_a_late_outcome_replaces_unknown_but_not_an_operator_decision(
    outbox_url: str,
) -> None:
    """A worker that only stalled past its lease records what the wire told it."""
    async with store_of(outbox_url) as (outbox, store):
        ids = await outbox.enqueue(message(n) for n in range(2))
        await call(outbox, store.claim, "w1", 2, 0.05, recover=False)
        await call(outbox, store.arm, "w1", ids)
        await trio.sleep(0.2)
        await outbox.recover()
        assert [e.state for e in await outbox.entries(ids)] == [State.UNKNOWN] * 2
        assert await outbox.resolve_unknown(ids[1:], resend=True) == ids[1:]
        late = [Settlement(i, State.SENT, reply_code=250, reply_text="ok") for i in ids]
        await call(outbox, store.settle, "w1", late)
        first, second = await outbox.entries(ids)
    assert (first.state, first.reply_code) == (State.SENT, 250)
    assert second.state is State.PENDING  # the operator's decision stands


async def test_release_gives_back_only_unarmed_rows(outbox_url: str) -> None:
    async with store_of(outbox_url) as (outbox, store):
        ids = await outbox.enqueue(message(n) for n in range(3))
        await call(outbox, store.claim, "w1", 3, 60, recover=False)
        await call(outbox, store.arm, "w1", ids[:1])
        assert await call(outbox, store.release, "w1") == 2
        states = [e.state for e in await outbox.entries(ids)]
    assert states == [State.SENDING, State.PENDING, State.PENDING]


async def test_shared_rate_limit_for_the_whole_outbox(outbox_url: str) -> None:
    async with store_of(outbox_url) as (outbox, store):
        await outbox.enqueue(message(n) for n in range(10))
        await outbox.set_rate_limit(0.2, burst=3)
        first = await call(outbox, store.claim, "w1", 10, 60, recover=False)
        second = await call(outbox, store.claim, "w2", 10, 60, recover=False)
        assert len(first.rows) == 3  # the burst
        # The next token comes in at most 5 s (at 0.2/s); the claim says when.
        assert second.rows == [] and second.wait is not None and 0 < second.wait <= 5
        await outbox.set_rate_limit(None)
        rest = await call(outbox, store.claim, "w2", 10, 60, recover=False)
        assert len(first.rows) + len(rest.rows) == 10


async def test_shared_rate_limit_per_sender_domain(outbox_url: str) -> None:
    async with store_of(outbox_url) as (outbox, store):
        await outbox.enqueue(message(n, "a@slow.example") for n in range(5))
        await outbox.enqueue(message(n, "b@fast.example") for n in range(5))
        await outbox.enqueue(message(n, "c@other.example") for n in range(2))
        await outbox.set_rate_limit(0.01, domain="*", burst=1)  # each domain: one now
        await outbox.set_rate_limit(0.1, domain="fast.example", burst=4)
        claimed = await call(outbox, store.claim, "w1", 20, 60, recover=False)
        rows = await outbox.entries(state=State.CLAIMED)
        assert len(rows) == len(claimed.rows)
        by_domain: dict[str, int] = {}
        for e in rows:
            domain = "slow" if e.id <= 5 else "fast" if e.id <= 10 else "other"
            by_domain[domain] = by_domain.get(domain, 0) + 1
        assert by_domain == {"slow": 1, "fast": 4, "other": 1}
        again = await call(outbox, store.claim, "w2", 20, 60, recover=False)
        assert again.rows == []  # every bucket is empty (the next token is seconds away)


async def test_work_honours_the_shared_rate(outbox_url: str) -> None:
    server = FakeSMTPServer()
    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        await outbox.enqueue(message(n) for n in range(6))
        await outbox.set_rate_limit(10.0, burst=1)
        start = time.monotonic()
        await outbox.work(
            "127.0.0.1", port=port, tls=ts.TLSMode.INSECURE_PLAINTEXT, domain=CLIENT_NAME,
            until_empty=True, poll_interval=0.05,
        )  # fmt: skip
        elapsed = time.monotonic() - start
    assert len(server.messages) == 6
    assert elapsed >= 0.45  # 5 tokens at 10/s after the first (a lower bound only)


async def test_work_honours_its_own_rate(outbox_url: str) -> None:
    """``work(rate=…)`` limits one worker, however many send_bulk rounds it takes
    (with ``prefetch=1`` each message may be a round of its own)."""
    server = FakeSMTPServer()
    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        await outbox.enqueue(message(n) for n in range(5))
        start = time.monotonic()
        await outbox.work(
            "127.0.0.1", port=port, tls=ts.TLSMode.INSECURE_PLAINTEXT, domain=CLIENT_NAME,
            until_empty=True, poll_interval=0.05, rate=10.0, prefetch=1, concurrency=1,
        )  # fmt: skip
        elapsed = time.monotonic() - start
    assert len(server.messages) == 5
    assert elapsed >= 0.35  # 4 intervals of 0.1 s after the first (a lower bound only)


async def test_many_workers_claim_each_row_once(
    outbox_url: str, server_variant: ServerVariant
) -> None:
    """Six workers, each with an outbox (connections) of its own, share one queue."""
    server = FakeSMTPServer(extensions=server_variant.extensions())
    count = 240
    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        await outbox.enqueue(message(n) for n in range(count))

        async def one_worker(n: int) -> None:
            async with open_outbox(outbox_url) as own:
                await own.work(
                    "127.0.0.1", port=port, tls=ts.TLSMode.INSECURE_PLAINTEXT,
                    domain=CLIENT_NAME, limits=ts.PoolLimits(max_connections=2),
                    until_empty=True, poll_interval=0.05, batch_size=7, worker_id=f"w{n}",
                )  # fmt: skip

        async with trio.open_nursery() as nursery:
            for n in range(6):
                nursery.start_soon(one_worker, n)
        entries = await outbox.entries()
    assert [e.state for e in entries] == [State.SENT] * count
    assert [e.attempts for e in entries] == [1] * count
    assert sorted(m.recipients[0] for m in server.messages) == sorted(
        f"r{n}@example.com" for n in range(count)
    )
    assert len({e.worker for e in entries}) > 1


@pytest.mark.parametrize("connections", [1, 3])
async def test_rows_are_armed_at_their_end_of_data(
    tmp_path: Any, server_variant: ServerVariant, connections: int
) -> None:
    """Arming waits for the end of data: each commit arms at most one row per
    connection (group commit), and every row is armed once."""
    server = FakeSMTPServer(extensions=server_variant.extensions())
    groups: list[int] = []
    async with serve_fake_smtp(server) as port, open_outbox(f"sqlite:///{tmp_path}/o.db") as ob:
        await ob.enqueue(message(n) for n in range(30))
        store = ob._store
        original = store.record

        def record(
            worker: str, arm: Sequence[int], settlements: Sequence[Settlement]
        ) -> dict[int, int]:
            if arm:
                groups.append(len(arm))
            return original(worker, arm, settlements)

        store.record = record  # type: ignore[method-assign]
        await ob.work(
            "127.0.0.1", port=port, tls=ts.TLSMode.INSECURE_PLAINTEXT, domain=CLIENT_NAME,
            until_empty=True, concurrency=connections, prefetch=20,
        )  # fmt: skip
        entries = await ob.entries()
    assert len(server.messages) == 30
    assert [e.state for e in entries] == [State.SENT] * 30
    assert [e.attempts for e in entries] == [1] * 30
    assert sum(groups) == 30 and max(groups) <= connections


@pytest.mark.parametrize("stall", ["envelope", "end"])
async def test_only_rows_past_their_end_of_data_are_sending(
    outbox_url: str, server_variant: ServerVariant, stall: str
) -> None:
    """The crash rule's proof: while the server stalls, the rows ``sending``
    (``unknown`` if the worker died now) are those whose end of data was
    written. Stalled at RCPT: none, although many rows are claimed and ready
    (with PIPELINING and CHUNKING a small message's ``BDAT … LAST`` goes out
    with its envelope: one per connection). Stalled after the end of data:
    one per connection, the very messages the server received."""
    connections = 3

    async def command(conn: Conn, line: str) -> Action:
        if stall == "envelope" and line.upper().startswith("RCPT"):
            return HANG
        return None

    async def end_of_data(conn: Conn, data: bytes) -> Action:
        return HANG

    stub = StubServer(variant=server_variant, command=command, end_of_data=end_of_data)
    with_envelope = server_variant.pipelining and server_variant.chunking
    expected = connections if stall == "end" or with_envelope else 0
    async with serve_tcp(stub.handle) as port, open_outbox(outbox_url) as outbox:
        ids = await outbox.enqueue(message(n) for n in range(20))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(
                outbox.work, "127.0.0.1", port=port, tls=ts.TLSMode.INSECURE_PLAINTEXT,
                domain=CLIENT_NAME, limits=ts.PoolLimits(max_connections=connections),
                prefetch=10, lease=60,
            ))  # fmt: skip
            with trio.fail_after(10):
                while True:
                    await trio.sleep(0.05)
                    claimed = await outbox.entries(state=State.CLAIMED)
                    hung = len(stub.received) if stall == "end" else len(stub.log)
                    if (
                        len(stub.conns) == connections
                        and hung >= connections
                        and len(claimed) >= 10
                    ):
                        break
            await trio.sleep(0.3)  # nothing else moves
            sending = await outbox.entries(state=State.SENDING)
            assert len(sending) == expected
            if stall == "end":
                assert sorted(e.id for e in sending) == sorted(
                    ids[_number(data)] for _, data in stub.received
                )
            nursery.cancel_scope.cancel()
        entries = await outbox.entries()
    # Cancelled: the unanswered ends are recorded unknown; every other row is
    # pending again, without an attempt.
    assert sum(e.state is State.UNKNOWN for e in entries) == expected
    assert sum(e.state is State.PENDING for e in entries) == 20 - expected
    assert all(e.attempts == 0 for e in entries if e.state is State.PENDING)


def _number(data: bytes) -> int:
    match = re.search(rb"Subject: (\d+)", data)
    assert match is not None
    return int(match.group(1))


async def test_a_refusal_at_rcpt_arms_its_row_only_when_the_end_rode_along(
    outbox_url: str, server_variant: ServerVariant
) -> None:
    """A message refused at RCPT never reached its end of data, and its row is
    never armed; except under PIPELINING with CHUNKING, where a small
    message's ``BDAT … LAST`` goes out with its envelope (docs/design.rst)."""
    server = FakeSMTPServer(
        extensions=server_variant.extensions(),
        refuse_recipients={"gone@example.com": (550, "5.1.1 No such user")},
    )
    armed: list[int] = []
    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        good, gone = await outbox.enqueue(
            [message(1), ts.BulkMessage(SENDER, ["gone@example.com"], b"Subject: 2\r\n\r\nx\r\n")]
        )
        store = outbox._store
        original = store.record

        def record(
            worker: str, arm: Sequence[int], settlements: Sequence[Settlement]
        ) -> dict[int, int]:
            armed.extend(arm)
            return original(worker, arm, settlements)

        store.record = record  # type: ignore[method-assign]
        await outbox.work(
            "127.0.0.1", port=port, tls=ts.TLSMode.INSECURE_PLAINTEXT, domain=CLIENT_NAME,
            until_empty=True, concurrency=1, poll_interval=0.05,
        )  # fmt: skip
        entries = {e.id: e for e in await outbox.entries()}
    assert (entries[good].state, entries[gone].state) == (State.SENT, State.REFUSED)
    assert entries[gone].attempts == 1
    rides_along = server_variant.pipelining and server_variant.chunking
    assert (gone in armed) is rides_along
    assert armed.count(good) == 1
