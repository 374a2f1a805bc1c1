"""Many worker processes on PostgreSQL share one queue: no row is claimed twice.

Four worker processes (:mod:`.crash_worker`) send the outbox's messages to a
private ``smtp-sink`` (Postfix's benchmark sink, started here on a free
loopback port). Every row must end ``sent`` after exactly one attempt (a row
armed twice would show two: arming needs the claim), and the workers' own
counts add up to the number of rows. The default size keeps CI short; the
issue's size is ``TRIO_SENDMAIL_OUTBOX_MANY_MESSAGES=10000``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import trio_sendmail as ts
from trio_sendmail.outbox import State, open_outbox

MESSAGES = int(os.environ.get("TRIO_SENDMAIL_OUTBOX_MANY_MESSAGES", "2000"))
WORKERS = 4
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def smtp_sink() -> Iterator[int]:
    """A private smtp-sink on a free loopback port (skipped when not installed)."""
    binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not Path(binary).exists():
        pytest.skip("smtp-sink (Debian package postfix) is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    user = (
        ["-u", "nobody"]
        if hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0
        else []
    )
    proc = subprocess.Popen([binary, *user, f"127.0.0.1:{port}", "256"])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.timeout(600)
async def test_four_workers_claim_each_row_once(
    postgres_url: str, smtp_sink: int, tmp_path: Path
) -> None:
    body = b"Subject: many\r\n\r\n" + b"x" * 70 + b"\r\n"
    messages = [
        ts.BulkMessage("news@example.com", [f"r{n}@example.com"], body) for n in range(MESSAGES)
    ]
    async with open_outbox(postgres_url) as outbox:
        await outbox.enqueue(messages)
        started = time.perf_counter()
        procs = []
        for n in range(WORKERS):
            argv = [sys.executable, "-m", "tests.outbox.crash_worker", postgres_url,
                    "127.0.0.1", str(smtp_sink), f"w{n}", "30", "1"]  # fmt: skip
            with (tmp_path / f"w{n}.log").open("wb") as log:
                procs.append(
                    await trio.lowlevel.open_process(argv, cwd=ROOT, stdout=log, stderr=log)
                )
        codes = [await proc.wait() for proc in procs]
        elapsed = time.perf_counter() - started
        entries = await outbox.entries()
    logs = [(tmp_path / f"w{n}.log").read_text(errors="replace") for n in range(WORKERS)]
    assert codes == [0] * WORKERS, logs
    summaries = [
        json.loads(line.split(" ", 1)[1])
        for log in logs
        for line in log.splitlines()
        if line.startswith("SUMMARY ")
    ]
    per_worker = [s["sent"] for s in summaries]
    print(f"\n{MESSAGES} rows, {WORKERS} workers: {per_worker} sent, {elapsed:.2f} s,"
          f" {MESSAGES / elapsed:.0f} msgs/s")  # fmt: skip
    assert [e.state for e in entries] == [State.SENT] * MESSAGES
    assert {e.attempts for e in entries} == {1}
    assert sum(per_worker) == MESSAGES
    assert len({e.worker for e in entries}) == len([s for s in per_worker if s]) >= 2
