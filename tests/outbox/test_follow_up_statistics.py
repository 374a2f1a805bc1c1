"""A follow-up row (recipients refused with a 4xx) counts its own attempts:
``Outbox.statistics().attempts`` counts each attempt once."""

from __future__ import annotations

import trio_sendmail as ts
from trio_sendmail.outbox import State, open_outbox

from ..helpers import ServerVariant
from ..outbox.test_outbox import NO_WAIT, SENDER, body, work_options
from ..test_pool import Action, Conn, StubServer, serve_tcp


async def test_statistics_count_each_attempt_once_with_a_follow_up(
    outbox_url: str, server_variant: ServerVariant
) -> None:
    busy = {"n": 0}

    async def command(conn: Conn, line: str) -> Action:
        if line.upper().startswith("RCPT TO:<BUSY@"):
            busy["n"] += 1
            if busy["n"] == 1:
                return b"450 4.2.1 mailbox busy, try later\r\n"
        return None

    stub = StubServer(variant=server_variant, command=command)
    mail = ts.BulkMessage(SENDER, ["ok@example.com", "busy@example.com"], body(1), key="k1")
    async with serve_tcp(stub.handle) as port, open_outbox(outbox_url, retry=NO_WAIT) as outbox:
        await outbox.enqueue([mail])
        await outbox.work("127.0.0.1", **work_options(port))
        entries = await outbox.entries()
        stats = await outbox.statistics()
    assert [e.state for e in entries] == [State.SENT, State.SENT]
    transactions = len(stub.received)
    assert transactions == 2  # two attempts were made in all
    assert stats.attempts == transactions, (stats, entries)
