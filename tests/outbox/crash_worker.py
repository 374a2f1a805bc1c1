"""A worker process for the outbox crash tests (``tests/outbox/test_crash.py``).

Usage: ``python -m tests.outbox.crash_worker URL HOST PORT WORKER_ID LEASE CHUNKING``.
It sends the outbox's messages to the server until the outbox is empty, and may be
killed with SIGKILL at any instant. At the end it prints ``SUMMARY {json}``: the
counts of its :class:`~trio_sendmail.outbox.WorkSummary`.
"""

from __future__ import annotations

import json
import sys

import attrs
import trio

import trio_sendmail as ts
from trio_sendmail.outbox import open_outbox

#: Connections of each worker.
CONNECTIONS = 4

TIMEOUTS = ts.Timeouts(
    connect=10, tls_handshake=10, greeting=20, command=20, mail=20, rcpt=20,
    data_init=20, data_block=20, data_end=60, quit=2,
)  # fmt: skip


async def main(url: str, host: str, port: int, worker_id: str, lease: float, chunk: bool) -> None:
    if url.startswith("postgres"):
        # Names this worker's database sessions, so that the test can wait
        # for them to end after killing it (see backends_gone).
        url += ("&" if "?" in url else "?") + f"application_name={worker_id}"
    async with open_outbox(url) as outbox:
        summary = await outbox.work(
            host, port=port, tls=ts.TLSMode.INSECURE_PLAINTEXT, domain="crash.example.test",
            limits=ts.PoolLimits(max_connections=CONNECTIONS), timeouts=TIMEOUTS, chunking=chunk,
            until_empty=True, lease=lease, poll_interval=0.1, worker_id=worker_id, batch_size=50,
        )  # fmt: skip
    print("SUMMARY", json.dumps(attrs.asdict(summary)), flush=True)


if __name__ == "__main__":
    url, host, port, worker_id, lease, chunking = sys.argv[1:7]
    trio.run(main, url, host, int(port), worker_id, float(lease), chunking == "1")
