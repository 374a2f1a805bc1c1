"""A worker that outlived its own lease (a stalled process: its heartbeat did
not run in time) claims again a row it still has in flight: the second copy is
not sent, so the message is delivered once."""

from __future__ import annotations

import pytest
import trio

import trio_sendmail as ts
from trio_sendmail.outbox import State, open_outbox
from trio_sendmail.outbox._worker import Worker

from ..helpers import CLIENT_NAME, ServerVariant
from ..test_pool import Action, Conn, StubServer, serve_tcp


async def test_a_message_is_never_delivered_twice_by_one_worker(
    outbox_url: str, server_variant: ServerVariant, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def stalled_heartbeat(self: Worker) -> None:
        await trio.sleep_forever()  # the process stalled past its lease

    monkeypatch.setattr(Worker, "heartbeat", stalled_heartbeat)

    async def greeting(server: StubServer, conn: Conn) -> Action:
        if conn.index == 1:
            await trio.sleep(1.6)  # the claim (lease 0.3 s) expires meanwhile
        return None

    stub = StubServer(variant=server_variant, greeting=greeting)
    async with serve_tcp(stub.handle) as port, open_outbox(outbox_url) as outbox:
        [row] = await outbox.enqueue(
            [ts.BulkMessage("a@example.com", ["b@example.com"], b"Subject: once\r\n\r\nx\r\n")]
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: outbox.work(
                "127.0.0.1", port=port, tls=ts.TLSMode.INSECURE_PLAINTEXT,
                domain=CLIENT_NAME, limits=ts.PoolLimits(max_connections=1),
                concurrency=1, batch_size=1, prefetch=1, lease=0.3, poll_interval=0.05,
            ))  # fmt: skip
            await trio.sleep(4.0)
            nursery.cancel_scope.cancel()
        [entry] = await outbox.entries([row])
    assert len(stub.received) <= 1, (entry, stub.received)
    assert entry.state is State.SENT or len(stub.received) == 0, entry
