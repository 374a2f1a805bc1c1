"""A server that streams 50 MB of reply costs the client a bounded amount of memory.

The server (on loopback, in this process) streams continuation lines, one endless
line, or a flood of unsolicited replies, 50 MB in all if the client kept reading.
The client must give up once its reply bounds are crossed (64 KiB, 256 lines,
4096-byte lines), so that neither what it read nor what it allocated grows with
what the server sends. tracemalloc measures the whole process, the server
included, so the bound is an upper bound on the client's share.
"""

from __future__ import annotations

import tracemalloc

import pytest
import trio

import trio_sendmail as ts

from .. import defaults
from ..helpers import Certificates
from .hostile import IMPLICIT, PLAIN, Dialogue, HostileServer, Step, stream
from .support import LOOPBACK, RecordingStream

BIG = 50 * 1024 * 1024
BUDGET = 3 * 1024 * 1024
SHAPES = {
    "continuation-lines": b"250-" + b"x" * 994 + b"\r\n",
    "one-endless-line": b"250-" + b"y" * 1020,
    "unsolicited-replies": b"250 2.0.0 ok\r\n",
}


@pytest.mark.parametrize("mode", [PLAIN, IMPLICIT], ids=["plain", "tls"])
@pytest.mark.parametrize("step", ["ehlo", "mail"])
@pytest.mark.parametrize("shape", list(SHAPES))
async def test_fifty_megabytes_of_reply_cost_little(
    certs: Certificates, mode: ts.TLSMode, step: Step, shape: str
) -> None:
    line = SHAPES[shape]
    chunk = line * (65536 // len(line))
    server = HostileServer(Dialogue({step: stream(chunk, BIG)}), mode, certs.server_context)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve)
        wire = RecordingStream(await trio.open_tcp_stream(LOOPBACK, port))
        tracemalloc.start()
        try:
            with pytest.raises(ts.SMTPProtocolError), trio.fail_after(30):
                async with defaults.open_session(
                    LOOPBACK, tls=mode, ssl_context=certs.client_context, stream=wire
                ) as session:
                    await session.send("a@example.com", ["b@example.com"], b"x")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        nursery.cancel_scope.cancel()
    assert peak < BUDGET, f"peak {peak} bytes"
    # What the client read (TLS records included) is bounded by the reply bounds plus
    # one read, whether it gave up while opening the session (EHLO) or in a transaction.
    assert 0 < wire.received < 256 * 1024, wire.received
