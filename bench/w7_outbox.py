"""W7: the durable outbox against plain ``send_bulk``, side by side in one run.

Usage::

    python bench/w7_outbox.py                 # 4,000 x 2 KiB, 3 repetitions
    python bench/w7_outbox.py --quick         # tiny: keeps the script working (CI)
    python bench/w7_outbox.py --postgres URL  # also PostgreSQL (default: the test
                                              # cluster of tests/interop/postgres.sh)

Each repetition runs, interleaved and each in fresh processes, against one
private ``smtp-sink`` on loopback:

* ``plain``: ``send_bulk`` over a pool of 8 connections, from a list;
* ``sqlite``: one worker, ``Outbox.work`` on an SQLite outbox over the same
  kind of pool (8 connections);
* ``postgres``: 4 worker processes sharing a PostgreSQL outbox, 2 connections
  each (8 in all).

The outbox rows are enqueued before the clock starts; every client warms up on
its pool first, and the order of the clients rotates from one repetition to
the next. The rate counts messages from the first worker's start to the
last one's end; CPU time is summed over the processes and reported per
message. The ratios (outbox / plain) are taken inside each repetition, and
the figures are medians (min-max). Goal (issue #16): SQLite >= 0.5x plain.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HOST = "127.0.0.1"
CONNECTIONS = 8
PG_WORKERS = 4
SENDER = "bench@example.com"


def message(size: int) -> bytes:
    head = b"From: bench@example.com\r\nTo: sink@example.com\r\nSubject: w7\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    body = line * ((size - len(head)) // len(line) + 1)
    return (head + body)[: size - 2] + b"\r\n"


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------ clients


def client(kind: str, port: int, params: dict[str, Any]) -> dict[str, Any]:
    """One client run in this process; returns its timings."""
    import trio

    import trio_sendmail as ts
    from trio_sendmail.outbox import open_outbox

    count, size, connections = params["messages"], params["size"], params["connections"]
    data = message(size)

    def batch(n: int) -> list[ts.BulkMessage]:
        return [ts.BulkMessage(SENDER, ["sink@example.com"], data) for _ in range(n)]

    async def run() -> dict[str, Any]:
        async with ts.open_pool(
            HOST, port=port, tls=ts.TLSMode.INSECURE_PLAINTEXT, domain="bench.example.com",
            limits=ts.PoolLimits(max_connections=connections),
        ) as pool:  # fmt: skip
            await ts.send_bulk(batch(50), pool=pool)  # warm up
            if kind == "plain":
                start, cpu = time.time(), cpu_now()
                summary = await ts.send_bulk(batch(count), pool=pool)
                sent = summary.accepted
            else:
                async with open_outbox(params["url"]) as outbox:
                    if params.get("go"):  # the parent's signal: all workers start together
                        await trio.to_thread.run_sync(sys.stdin.readline)
                    start, cpu = time.time(), cpu_now()
                    work = await outbox.work(pool=pool, until_empty=True, poll_interval=0.05)
                    sent = work.sent
            return {"start": start, "end": time.time(), "cpu": cpu_now() - cpu, "sent": sent}

    return trio.run(run)


# ------------------------------------------------------------------ servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def smtp_sink() -> Iterator[int]:
    binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([binary, *user, "-m", "1000", f"{HOST}:{port}", "1000"])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def default_postgres_url() -> str | None:
    state = os.environ.get("POSTGRES_STATE") or os.path.join(
        os.environ.get("TMPDIR") or "/tmp", "trio_sendmail_postgres"
    )
    path = Path(state) / "env.json"
    if path.is_file():
        url: str = json.loads(path.read_text())["url"]
        return url
    return None


# ------------------------------------------------------------------ one repetition


def spawn(kind: str, port: int, params: dict[str, Any]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, __file__, "--client", kind, "--port", str(port),
            "--params", json.dumps(params)]  # fmt: skip
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)


def collect(procs: list[subprocess.Popen[bytes]]) -> dict[str, Any]:
    runs = []
    for proc in procs:
        if proc.stdin is not None:
            proc.stdin.close()
        out = proc.stdout.read() if proc.stdout is not None else b""
        proc.wait(timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"a client failed with status {proc.returncode}")
        runs.append(json.loads(out.decode().strip().splitlines()[-1]))
    elapsed = max(r["end"] for r in runs) - min(r["start"] for r in runs)
    sent = sum(r["sent"] for r in runs)
    return {"rate": sent / elapsed, "cpu_us": 1e6 * sum(r["cpu"] for r in runs) / sent,
            "sent": sent}  # fmt: skip


def fill(url: str, params: dict[str, Any]) -> None:
    import trio

    import trio_sendmail as ts
    from trio_sendmail.outbox import open_outbox

    async def run() -> None:
        data = message(params["size"])
        async with open_outbox(url) as outbox:
            await outbox.enqueue(
                ts.BulkMessage(SENDER, ["sink@example.com"], data)
                for _ in range(params["messages"])
            )

    trio.run(run)


def pg_schema(url: str, action: str, name: str) -> str:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        if action == "create":
            conn.execute(f"CREATE SCHEMA {name}")
        else:
            conn.execute(f"DROP SCHEMA {name} CASCADE")
    return f"{url}?options=-csearch_path%3D{name}"


def run_plain(port: int, params: dict[str, Any]) -> dict[str, Any]:
    return collect([spawn("plain", port, params)])


def run_sqlite(port: int, params: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/w7.db"
        fill(url, params)
        return collect([spawn("sqlite", port, {**params, "url": url})])


def run_postgres(port: int, params: dict[str, Any], pg_url: str) -> dict[str, Any]:
    schema = f"w7_{uuid.uuid4().hex[:12]}"
    url = pg_schema(pg_url, "create", schema)
    try:
        fill(url, params)
        each = {**params, "url": url, "go": True,
                "connections": params["connections"] // PG_WORKERS}  # fmt: skip
        procs = [spawn("postgres", port, each) for _ in range(PG_WORKERS)]
        time.sleep(3.0)  # the workers open their pools and warm up
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        return collect(procs)
    finally:
        pg_schema(pg_url, "drop", schema)


def repetition(
    port: int, params: dict[str, Any], pg_url: str | None, index: int
) -> dict[str, Any]:
    """One repetition: every client once, in an order rotated by *index* (so
    that no client always runs first, or right after the same one)."""
    kinds = ["plain", "sqlite"] + ([] if pg_url is None else ["postgres"])
    shift = index % len(kinds)
    row: dict[str, Any] = {}
    for kind in kinds[shift:] + kinds[:shift]:
        if kind == "plain":
            row[kind] = run_plain(port, params)
        elif kind == "sqlite":
            row[kind] = run_sqlite(port, params)
        else:
            assert pg_url is not None
            row[kind] = run_postgres(port, params, pg_url)
    return {kind: row[kind] for kind in kinds}


def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="tiny workload (CI)")
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--postgres", metavar="URL", help="PostgreSQL URL (default: test cluster)")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    if args.client:
        print(json.dumps(client(args.client, args.port, json.loads(args.params))))
        return 0
    params = {"messages": 200 if args.quick else args.messages, "size": 2048,
              "connections": CONNECTIONS}  # fmt: skip
    reps = 1 if args.quick else args.repetitions
    pg_url = None if args.no_postgres else (args.postgres or default_postgres_url())
    rows = []
    with smtp_sink() as port:
        for n in range(reps):
            row = repetition(port, params, pg_url, n)
            rows.append(row)
            print(f"repetition {n + 1}: " + ", ".join(
                f"{k} {v['rate']:.0f} msgs/s {v['cpu_us']:.0f} us cpu/msg" for k, v in row.items()
            ), flush=True)  # fmt: skip
    print(f"\nW7: {params['messages']:,} x 2 KiB, {CONNECTIONS} connections, smtp-sink, "
          f"{reps} repetitions (median, min-max)\n")  # fmt: skip
    print("| client | rate (msgs/s) | CPU per message (us) | ratio to plain |")
    print("|---|---|---|---|")
    for kind in rows[0]:
        rates = [r[kind]["rate"] for r in rows]
        cpu = [r[kind]["cpu_us"] for r in rows]
        ratio = "-" if kind == "plain" else spread(
            [r[kind]["rate"] / r["plain"]["rate"] for r in rows], ".2f") + "x"  # fmt: skip
        print(f"| {kind} | {spread(rates, '.0f')} | {spread(cpu, '.0f')} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
