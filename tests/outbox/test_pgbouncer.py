"""The outbox through PgBouncer, the usual pooler in front of a PostgreSQL
shared by many workers: a real PgBouncer (Debian's ``pgbouncer``) in session
pool mode, in front of the PostgreSQL test cluster, on a port and in a folder of
its own, stopped after the test. PgBouncer refuses the ``options`` startup
parameter, so the outbox's statement and lock timeouts must be set otherwise
(``SET`` on each new connection). Skipped when pgbouncer is not installed,
unless ``TRIO_SENDMAIL_REQUIRE_POSTGRES=1`` (CI installs it)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import trio_sendmail as ts
from trio_sendmail.outbox import State, open_outbox
from trio_sendmail.testing import FakeSMTPServer, serve_fake_smtp

from ..helpers import CLIENT_NAME, ServerVariant
from ..interop.free_ports import free_ports
from ..postgres_plugin import PostgresEnv

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


@pytest.fixture
def bouncer_url(postgres: PostgresEnv, tmp_path: Path) -> Iterator[str]:
    if not os.path.exists(PGBOUNCER):
        reason = "pgbouncer is not installed (apt-get install pgbouncer)"
        if os.environ.get("TRIO_SENDMAIL_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    import psycopg

    database = f"outbox_bouncer_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    # Readable by the user pgbouncer switches to (tmp_path's parents are not).
    folder = Path(tempfile.mkdtemp(prefix="outbox_bouncer_bouncer_"))
    (port,) = free_ports(1)
    (folder / "users.txt").write_text(f'"{postgres.user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={postgres.host} port={postgres.port}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {folder}/users.txt\n"
        "pool_mode = session\n"
    )
    os.chmod(folder, 0o755)  # noqa: S103 - readable by pgbouncer's user
    command = [PGBOUNCER, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "postgres"]
    log = folder / "pgbouncer.out"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail(f"pgbouncer did not start: {log.read_text()}")
                time.sleep(0.05)
        yield f"postgresql://{postgres.user}@127.0.0.1:{port}/{database}"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
        with psycopg.connect(postgres.url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


async def test_an_outbox_works_through_pgbouncer(
    bouncer_url: str, server_variant: ServerVariant
) -> None:
    server = FakeSMTPServer(extensions=server_variant.extensions())
    async with serve_fake_smtp(server) as port, open_outbox(bouncer_url) as outbox:
        await outbox.enqueue(
            ts.BulkMessage("a@example.com", [f"r{n}@example.com"], b"Subject: %d\r\n\r\nx\r\n" % n)
            for n in range(20)
        )
        store = outbox._store

        def show() -> list[str]:
            with store.transaction() as cur:
                return [
                    str(cur.execute(f"SHOW {n}").fetchone()[0])
                    for n in ("statement_timeout", "lock_timeout")
                ]

        assert await trio.to_thread.run_sync(show) == ["30s", "30s"]
        await outbox.work(
            "127.0.0.1", port=port, tls=ts.TLSMode.INSECURE_PLAINTEXT, domain=CLIENT_NAME,
            limits=ts.PoolLimits(max_connections=2), until_empty=True, poll_interval=0.05,
        )  # fmt: skip
        entries = await outbox.entries()
    assert [e.state for e in entries] == [State.SENT] * 20
    assert sorted(m.recipients[0] for m in server.messages) == sorted(
        f"r{n}@example.com" for n in range(20)
    )
