"""``trio-sendmail outbox``: init, enqueue, work, status, resolve-unknown, with
sysexits codes, the default database in the user's data folder, and no password
of a database URL in any output."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from trio_sendmail.testing import FakeSMTPServer

from ..cli_support import (
    CLI,
    PROGRAM,
    in_process,
    isolate_home,
    run_program,
    serving_in_thread,
    subprocess_env,
)
from ..helpers import ServerVariant


@pytest.fixture(autouse=True)
def data_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    isolate_home(monkeypatch, tmp_path)
    monkeypatch.delenv("TRIO_SENDMAIL_OUTBOX", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> CLI:
    return in_process(monkeypatch, capsys, b"")


def eml(folder: Path, n: int, to: str = "bob@example.com") -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / f"m{n}.eml"
    path.write_bytes(
        b"From: alice@example.com\r\nTo: %s\r\nMessage-ID: <n%d@example.com>\r\n"
        b"Subject: n%d\r\n\r\nHello %d.\r\n" % (to.encode(), n, n, n)
    )
    return path


def plain(port: int, progress: str = "none") -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(port), "--tls", "none", "--progress", progress]


def test_init_enqueue_work_status(
    cli: CLI, data_home: Path, tmp_path: Path, server_variant: ServerVariant
) -> None:
    assert cli("outbox", "status").status == 66  # EX_NOINPUT: no outbox yet
    run = cli("outbox", "init")
    assert run.status == 0, run.err
    assert (data_home / "trio-sendmail" / "outbox.db").is_file()
    folder = tmp_path / "mails"
    files = [str(eml(folder, n)) for n in range(3)]
    run = cli("outbox", "enqueue", *files)
    assert run.status == 0 and "enqueued 3 messages" in run.out
    run = cli("outbox", "enqueue", str(folder))  # the same Message-IDs: stored once
    assert run.status == 0 and "enqueued 0 messages (3 were already there)" in run.out
    # The same file for other recipients is another message; for the same, it is not.
    run = cli("outbox", "enqueue", "--to", "carol@example.com", files[0])
    assert run.status == 0 and "enqueued 1 message" in run.out, run.out
    run = cli("outbox", "enqueue", "--to", "carol@EXAMPLE.com", files[0])
    assert run.status == 0 and "enqueued 0 messages (1 were already there)" in run.out, run.out
    server = FakeSMTPServer(extensions=server_variant.extensions())
    with serving_in_thread(server) as port:
        run = cli("outbox", "work", "--until-empty", *plain(port))
    assert run.status == 0, run.err
    assert sorted(m.recipients for m in server.messages) == [("bob@example.com",)] * 3 + [
        ("carol@example.com",)
    ]
    assert b"Hello 2." in b"".join(m.data for m in server.messages)
    run = cli("outbox", "status", "--json")
    assert json.loads(run.out)["counts"]["sent"] == 4


def test_work_exit_status_when_refused(cli: CLI, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    assert cli("outbox", "--db", url, "init").status == 0
    cli("outbox", "--db", url, "enqueue", str(eml(tmp_path / "m", 1, "gone@example.com")))
    cli("outbox", "--db", url, "enqueue", str(eml(tmp_path / "m", 2)))
    server = FakeSMTPServer(refuse_recipients={"gone@example.com": (550, "5.1.1 No such user")})
    with serving_in_thread(server) as port:
        run = cli("outbox", "--db", url, "work", "--until-empty", *plain(port, "lines"))
    assert run.status == 69  # EX_UNAVAILABLE: a message was refused for good
    assert "2/2  sent 1  refused 1" in run.out  # the final progress line
    run = cli("outbox", "--db", url, "status", "--list", "refused")
    assert "refused 1" in run.out and "sent 1" in run.out
    assert "<n1@example.com>" in run.out
    with sqlite3.connect(tmp_path / "o.db") as db:
        (refused,) = db.execute("SELECT refused FROM outbox_messages WHERE state = 'refused'")
    assert json.loads(refused[0]) == {"<gone@example.com>": [550, "No such user"]}


def test_resolve_unknown(cli: CLI, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    cli("outbox", "--db", url, "init")
    cli("outbox", "--db", url, "enqueue", str(eml(tmp_path / "m", 1)), str(eml(tmp_path / "m", 2)))
    with sqlite3.connect(tmp_path / "o.db") as db:
        db.execute("UPDATE outbox_messages SET state = 'unknown' WHERE id = 1")
    run = cli("outbox", "--db", url, "resolve-unknown", "1", "2", "--resend")
    assert run.status == 65 and "1 rows queued again" in run.out and "2" in run.err
    with sqlite3.connect(tmp_path / "o.db") as db:
        db.execute("UPDATE outbox_messages SET state = 'unknown'")
    run = cli("outbox", "--db", url, "resolve-unknown", "--all", "--give-up")
    assert run.status == 0 and "2 rows marked failed" in run.out
    assert cli("outbox", "--db", url, "resolve-unknown", "--resend").status == 64


def test_bad_input(cli: CLI, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    cli("outbox", "--db", url, "init")
    no_rcpt = tmp_path / "x.eml"
    no_rcpt.write_bytes(b"From: a@example.com\r\nSubject: x\r\n\r\nx\r\n")
    assert cli("outbox", "--db", url, "enqueue", str(no_rcpt)).status == 65  # EX_DATAERR
    assert cli("outbox", "--db", url, "enqueue", str(tmp_path / "missing")).status == 66
    assert cli("outbox", "--db", "mysql://x/y", "status").status == 64


def test_a_database_password_is_never_shown(cli: CLI) -> None:
    url = "postgresql://user:Sup3r-Secret@127.0.0.1:1/outbox"
    run = cli("outbox", "--db", url, "status")
    assert run.status != 0
    assert "Sup3r-Secret" not in run.out + run.err
    run = cli("outbox", "--help")
    assert "Sup3r-Secret" not in run.out


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://user:Sup3r-Secret@db/outbox", "postgresql://user:***@db/outbox"),
        (
            "postgresql://user@db/outbox?password=Sup3r-Secret&sslmode=require",
            "postgresql://user@db/outbox?password=***&sslmode=require",
        ),
        (
            "postgresql://db/outbox?sslpassword=Sup3r-Secret",
            "postgresql://db/outbox?sslpassword=***",
        ),
        ("sqlite:////var/lib/outbox.db", "sqlite:////var/lib/outbox.db"),
    ],
)
def test_redacted_urls(url: str, shown: str) -> None:
    from trio_sendmail._cli._outbox import redact_url

    assert redact_url(url) == shown


def test_a_query_password_is_never_shown(cli: CLI) -> None:
    run = cli(
        "outbox", "--db", "postgresql://user@127.0.0.1:1/outbox?password=Sup3r-Secret", "status"
    )
    assert run.status != 0
    assert "Sup3r-Secret" not in run.out + run.err


def test_sigterm_stops_a_worker_as_ctrl_c_does(
    tmp_path: Path, server_variant: ServerVariant
) -> None:
    """``systemctl stop`` sends SIGTERM: the worker stops, records what it knows and
    gives its claims back (no row stays claimed or sending), and exits 130."""
    url = f"sqlite:///{tmp_path}/o.db"
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = subprocess_env(home, XDG_DATA_HOME=str(tmp_path / "data"))
    folder = tmp_path / "mails"
    files = [str(eml(folder, n)) for n in range(5)]
    for args in (["init"], ["enqueue", *files]):
        done = run_program(
            ["outbox", "--db", url, *args], b"", home, XDG_DATA_HOME=env["XDG_DATA_HOME"]
        )
        assert done.returncode == 0, done.stderr
    server = FakeSMTPServer(extensions=server_variant.extensions())
    with serving_in_thread(server) as port:
        worker = subprocess.Popen(
            [*PROGRAM, "outbox", "--db", url, "work", *plain(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        try:
            deadline = time.monotonic() + 60
            while len(server.messages) < 5 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(server.messages) == 5
            time.sleep(0.3)  # the worker now waits for more work
            worker.send_signal(signal.SIGTERM)
            _, err = worker.communicate(timeout=60)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    assert worker.returncode == 130, err.decode()
    with sqlite3.connect(tmp_path / "o.db") as db:
        states = sorted(row[0] for row in db.execute("SELECT state FROM outbox_messages"))
    assert states == ["sent"] * 5
