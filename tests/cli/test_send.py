"""``trio-sendmail`` as a ``sendmail(8)`` replacement: the flags callers pass, the
header fields a sendmail adds, bare local recipients, the TLS mode from the port,
messages in CLI words, and the sysadmin conventions (system profile file,
``--version``, ``--pretend``, ``--serverinfo``, ``--log``, ``--password-command``).

The callers' own command lines (mutt's ``-oem -oi``, Vixie cron's ``-FCronDaemon
-odi -oem -oi -t``) run the real program as a subprocess against the fake server,
in each PIPELINING/CHUNKING variant; the breadth of flags runs in-process through
``main(argv)``. Delivery through Postfix, mutt and msmtp is in
``tests/interop/test_postfix_cli.py``.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import json
import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest
import trio
import trustme

from trio_sendmail import __version__
from trio_sendmail._cli._message import add_missing_headers, qualify
from trio_sendmail.testing import DEFAULT_EXTENSIONS, FakeSMTPServer, TestCertificates

from ..cli_support import (
    CLI,
    PROGRAM,
    REPO,
    SYSTEM_CONFIG_ENV,
    RawHandler,
    in_process,
    plain,
    run_program,
    serving_in_thread,
    subprocess_env,
)
from ..helpers import RawServer, ServerVariant, variants
from ..interop.free_ports import free_port_ending

PASSWORD = "s3cret-Pa55word!"
USERS = {"alice": PASSWORD}

#: What Vixie cron (Debian's cron 3.0pl1) writes to its sendmail: no Date, no
#: Message-ID, a From with a bare local part, To a bare local part, LF line ends.
CRON_MESSAGE = (
    b"From: root (Cron Daemon)\n"
    b"To: root\n"
    b"Subject: Cron <root@box> /usr/local/bin/backup\n"
    b"MIME-Version: 1.0\n"
    b"Content-Type: text/plain; charset=UTF-8\n"
    b"Content-Transfer-Encoding: 8bit\n"
    b"X-Cron-Env: <SHELL=/bin/sh>\n"
    b"X-Cron-Env: <HOME=/root>\n"
    b"X-Cron-Env: <LOGNAME=root>\n"
    b"\n"
    b"backup: 3 files copied\n"
    b".hidden file skipped\n"
)
CRON_ARGV = ["-FCronDaemon", "-odi", "-oem", "-oi", "-t"]
#: What mutt writes (it adds Date and Message-ID itself) with ``sendmail -oem -oi``.
MUTT_MESSAGE = (
    b"Date: Wed, 2 Dec 2026 03:00:00 +0000\n"
    b"From: Alice <alice@example.test>\n"
    b"To: bob@example.test\n"
    b"Subject: from mutt\n"
    b"Message-ID: <mutt.1@example.test>\n"
    b"\n"
    b"Hi Bob.\n"
)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> CLI:
    return in_process(monkeypatch, capsys, CRON_MESSAGE)


def headers_of(data: bytes) -> list[tuple[str, str]]:
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    return [
        (name, value.strip())
        for name, _, value in (line.partition(":") for line in head.split("\r\n"))
    ]


def received_rcpts(server: FakeSMTPServer) -> list[bytes]:
    return [line for side, line in server.transcript if line.startswith(b"RCPT TO:")]


# ----------------------------------------------------------------- real callers


@variants()
def test_cron_invocation(server_variant: ServerVariant, isolated_home: Path) -> None:
    """Vixie cron's exact argv: -F names the sender in no header (cron wrote From),
    root is qualified, Date and Message-ID are added at the end of the header."""
    server = FakeSMTPServer(extensions=server_variant.extensions())
    with serving_in_thread(server) as port:
        done = run_program(
            [*CRON_ARGV, *plain(port, "--domain", "example.test")], CRON_MESSAGE, isolated_home
        )
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    [received] = server.messages
    assert received.sender == "root@example.test"
    assert received.recipients == ("root@example.test",)
    head, body = received.data.split(b"\r\n\r\n", 1)
    original_head = CRON_MESSAGE.split(b"\n\n", 1)[0].replace(b"\n", b"\r\n")
    assert head.startswith(original_head + b"\r\n")  # the caller's fields, untouched
    added = head[len(original_head) + 2 :].split(b"\r\n")
    assert [line.split(b":")[0] for line in added] == [b"Date", b"Message-ID"]
    assert email.utils.parsedate_to_datetime(added[0].split(b": ", 1)[1].decode())
    assert re.fullmatch(rb"Message-ID: <\d{14}\.[0-9a-f]{16}@example\.test>", added[1])
    assert body == b"backup: 3 files copied\r\n.hidden file skipped\r\n"
    if not server_variant.chunking:
        assert b"\r\n..hidden file" in received.raw  # stuffed on the wire


@variants()
def test_mutt_invocation(server_variant: ServerVariant, isolated_home: Path) -> None:
    """mutt's default ``sendmail -oem -oi`` with recipients as arguments: the message
    already has every field, and is sent exactly as given (CRLF on the wire)."""
    server = FakeSMTPServer(extensions=server_variant.extensions())
    with serving_in_thread(server) as port:
        done = run_program(
            ["-oem", "-oi", *plain(port), "--", "bob@example.test"], MUTT_MESSAGE, isolated_home
        )
    assert done.returncode == 0, done.stderr
    [received] = server.messages
    assert received.data == MUTT_MESSAGE.replace(b"\n", b"\r\n")
    assert (received.sender, received.recipients) == ("alice@example.test", ("bob@example.test",))


@variants()
def test_full_name_in_a_generated_from(cli: CLI, server_variant: ServerVariant) -> None:
    server = FakeSMTPServer(extensions=server_variant.extensions())
    message = b"To: bob@example.test\nSubject: no From\n\nbody\n"
    with serving_in_thread(server) as port:
        result = cli(
            *plain(port, "-F", "Jöhn Doe, Jr.", "-f", "john@example.test", "-t"), stdin=message
        )
        plain_name = cli(
            *plain(port, "-FCronDaemon", "-f", "root@example.test", "-t"), stdin=message
        )
        account_from = cli(*plain(port, "-f", "ops@example.test", "-t"), stdin=message)
    assert (result.status, plain_name.status, account_from.status) == (0, 0, 0), result.err
    fields = [dict(headers_of(m.data)) for m in server.messages]
    assert fields[0]["From"] == "=?utf-8?b?SsO2aG4gRG9lLCBKci4=?= <john@example.test>"
    parsed = email.message_from_bytes(server.messages[0].data, policy=email.policy.default)
    [address] = parsed["From"].addresses
    assert (address.display_name, address.addr_spec) == ("Jöhn Doe, Jr.", "john@example.test")
    assert fields[1]["From"] == "CronDaemon <root@example.test>"
    assert fields[2]["From"] == "ops@example.test"
    assert all("Date" in f and "Message-ID" in f for f in fields)


@variants()
def test_from_of_the_account_and_name_with_a_newline(
    cli: CLI, tmp_path: Path, server_variant: ServerVariant
) -> None:
    server = FakeSMTPServer(extensions=server_variant.extensions())
    with serving_in_thread(server) as port:
        config = tmp_path / "c.toml"
        config.write_text(
            f'[accounts.default]\nhost = "127.0.0.1"\nport = {port}\n'
            'tls = "none"\nfrom = "cron@example.test"\n'
        )
        ok = cli("-C", str(config), "-t", stdin=b"To: bob@example.test\n\nhi\n")
        bad = cli("-C", str(config), "-F", "x\nBcc: eve@example.test", "-t")
    assert ok.status == 0, ok.err
    assert dict(headers_of(server.messages[0].data))["From"] == "cron@example.test"
    assert bad.status == 64 and "control characters" in bad.err
    assert len(server.messages) == 1


def test_add_missing_headers_keeps_what_is_there() -> None:
    full = b"From: a@b.test\r\nDate: x\r\nMessage-ID: <1@b>\r\n\r\nbody\r\n"
    assert add_missing_headers(full, sender="a@b.test", full_name="A", id_domain="b") == full
    bare = add_missing_headers(
        b"no header here\n", sender="a@b.test", full_name=None, id_domain="b", now=0
    )
    assert bare.startswith(b"Date: Thu, 01 Jan 1970 ")
    assert bare.endswith(b"\nFrom: a@b.test\n\nno header here\n")
    cut = add_missing_headers(b"Subject: x", sender="a@b.test", full_name=None, id_domain="b")
    assert cut.startswith(b"Subject: x\nDate: ") and cut.endswith(b"\nFrom: a@b.test\n")


# ----------------------------------------------------------------- flags


@pytest.mark.parametrize(
    "flags",
    [
        ["-oem", "-oi"],
        ["-odi", "-oem"],
        ["-odb", "-oQ/var/spool"],
        ["-o", "em"],
        ["-O", "DeliveryMode=b"],
        ["-bm"],
        ["-B8BITMIME"],
        ["-B", "7BIT"],
        ["-Am"],
        ["-Ac"],
        ["-L", "cron"],
        ["-Lmytag"],
        ["-h", "17"],
        ["-m", "-n", "-G", "-U"],
        ["-i", "-oi", "-v"],
        ["-FCronDaemon"],
        ["-F", "Cron Daemon"],
    ],
    ids=lambda flags: " ".join(flags),
)
@variants()
def test_accepted_and_ignored_flags(
    cli: CLI, server_variant: ServerVariant, flags: list[str]
) -> None:
    server = FakeSMTPServer(extensions=server_variant.extensions())
    with serving_in_thread(server) as port:
        result = cli(*flags, *plain(port, "--domain", "example.test", "-t"))
    assert result.status == 0, result.err
    assert [m.recipients for m in server.messages] == [("root@example.test",)]


def test_h_is_the_hop_count_and_alone_asks_for_help(cli: CLI) -> None:
    alone = cli("-h")
    assert alone.status == 0 and "accepted for sendmail compatibility" in alone.out
    assert cli("--help").out == alone.out
    missing = cli("-h", "--pretend")  # -h takes a value: --pretend is its N
    assert missing.status == 64 and "-h: expected one argument" in missing.err


@pytest.mark.parametrize("flags", [["-q"], ["-q30m"], ["-qf"], ["-bp"], ["-q", "-v"]])
def test_queue_runs_and_listings_have_nothing_to_do(cli: CLI, flags: list[str]) -> None:
    """sendmail -q (run the queue, from cron) and -bp (list it): there is no queue,
    so nothing to do, and nothing is read from stdin or sent."""
    result = cli(*flags, stdin=b"")
    assert result.status == 0, result.err
    assert "no mail queue" in result.out


def test_a_dash_q_after_double_dash_is_a_recipient(cli: CLI) -> None:
    result = cli("--", "-q", stdin=b"")
    assert result.status == 65 and "no mail queue" not in result.out  # stdin was empty


def test_a_dash_q_as_an_option_value_is_not_a_queue_run(cli: CLI) -> None:
    """``-F -quentin``: a word that starts with -q after the first is not a queue
    request: the call fails loudly (argparse takes ``-quentin`` for an option), it
    never exits 0 having silently dropped the message."""
    result = cli("-F", "-quentin", "--host", "h.test", "root@example.test", stdin=b"x")
    assert result.status == 64 and "no mail queue" not in result.out


def test_other_sendmail_modes_are_refused(cli: CLI) -> None:
    for mode in ("-bs", "-bv", "-bi"):
        result = cli(mode, "--host", "h.test", "root@example.test")
        assert result.status == 64, result.err
        assert f"{mode} is not supported: only -bm" in result.err


@variants()
def test_envid_with_v(cli: CLI, server_variant: ServerVariant) -> None:
    server = FakeSMTPServer(extensions=server_variant.extensions((*DEFAULT_EXTENSIONS, "DSN")))
    with serving_in_thread(server) as port:
        result = cli(
            *plain(
                port,
                "-V",
                "cron-42",
                "-N",
                "failure",
                "-R",
                "hdrs",
                "--domain",
                "example.test",
                "-t",
            )
        )
        attached = cli(*plain(port, "-Vjob+1", "--domain", "example.test", "-t"))
    assert (result.status, attached.status) == (0, 0), result.err
    assert "ENVID=cron-42" in server.messages[0].mail_options
    assert "RET=HDRS" in server.messages[0].mail_options
    assert server.messages[0].rcpt_options["root@example.test"] == ("NOTIFY=FAILURE",)
    assert "ENVID=job+2B1" in server.messages[1].mail_options  # xtext


# ----------------------------------------------------------------- recipients


@variants()
def test_bare_recipient_without_a_domain_is_sent_as_is(
    cli: CLI, server_variant: ServerVariant
) -> None:
    """``RCPT TO:<root>`` for the server to complete (msmtp does the same); this
    strict fake server refuses it, so the refusal is reported."""
    server = FakeSMTPServer(extensions=server_variant.extensions())
    with serving_in_thread(server) as port:
        result = cli(*plain(port, "-f", "alice@example.test", "root", "bob@example.test"))
    assert result.status == 67, result.err  # bob got it, root was refused
    assert received_rcpts(server) == [b"RCPT TO:<root>", b"RCPT TO:<bob@example.test>"]
    assert "recipient refused: <root>: 501" in result.err


@variants()
def test_domain_qualifies_recipients_and_sender(
    cli: CLI, tmp_path: Path, server_variant: ServerVariant
) -> None:
    server = FakeSMTPServer(extensions=server_variant.extensions())
    message = b"From: root\nTo: root, ops\nCc: postmaster\n\nhi\n"
    with serving_in_thread(server) as port:
        config = tmp_path / "c.toml"
        config.write_text(
            f'[defaults]\nhost = "127.0.0.1"\nport = {port}\ntls = "none"\n'
            'domain = "example.test"\n'
        )
        result = cli("-C", str(config), "-t", "admin", stdin=message)
        no_domain = cli(*plain(port, "-t"), stdin=message)
    assert result.status == 0, result.err
    [received] = server.messages
    assert received.sender == "root@example.test"
    assert received.recipients == (
        "admin@example.test",
        "root@example.test",
        "ops@example.test",
        "Postmaster",
    )
    assert received.data.startswith(b"From: root\r\nTo: root, ops\r\n")  # headers as written
    assert no_domain.status == 64
    assert "the sender 'root' has no domain: give --domain" in no_domain.err


@pytest.mark.parametrize("stdin", [b"", b"\n", b"\r\n\r\n"], ids=["empty", "lf", "crlf"])
def test_empty_message_is_refused(cli: CLI, stdin: bytes) -> None:
    server = FakeSMTPServer()
    with serving_in_thread(server) as port:
        result = cli(*plain(port, "-f", "a@example.test", "b@example.test"), stdin=stdin)
    assert result.status == 65
    assert "the message on stdin is empty: nothing was sent" in result.err
    assert server.connections == 0


def test_qualify_and_null_sender() -> None:
    assert qualify("<root>", "example.test") == "root@example.test"
    assert qualify("root", None) == "root"
    assert qualify("<>", "example.test") == qualify("", "example.test") == ""
    assert qualify("Postmaster", "example.test") == "Postmaster"
    bounce = add_missing_headers(b"To: a@b.test\n\nx\n", sender="", full_name="X", id_domain="b")
    assert b"From:" not in bounce and b"\nDate: " in bounce


def test_a_recipient_without_at_is_not_a_command(cli: CLI) -> None:
    result = cli("--host", "h.test", "--pretend", "--domain", "example.test", "root")
    assert result.status == 0, result.err
    assert re.search(r"^recipients +root@example\.test$", result.out, re.MULTILINE)


# ----------------------------------------------------------------- TLS from the port


@pytest.mark.parametrize(
    ("port", "tls"),
    [
        ("465", "implicit"),
        ("587", "starttls"),
        ("25", "starttls"),
        ("2525", "starttls"),
        (None, "implicit"),
    ],
)
def test_tls_mode_from_the_port(cli: CLI, port: str | None, tls: str) -> None:
    result = cli("--host", "h.test", *(["--port", port] if port else []), "--pretend")
    assert result.status == 0, result.err
    assert re.search(rf"^tls +{tls}$", result.out, re.MULTILINE), result.out
    assert re.search(rf"^port +{port or 465}$", result.out, re.MULTILINE), result.out


def test_silent_implicit_tls_port_fails_fast_with_a_hint(
    certs: TestCertificates, isolated_home: Path
) -> None:
    """STARTTLS on a port that speaks implicit TLS: the server waits for a ClientHello,
    the client for a greeting. After a short first bound: 69 and ``--tls implicit``."""
    port = free_port_ending("465")
    listening = threading.Event()
    stop = threading.Event()

    def silent_server() -> None:
        import socket

        with socket.create_server(("127.0.0.1", port)) as listener:
            listening.set()
            connection, _ = listener.accept()
            with connection:
                stop.wait(60)  # says nothing, as a TLS server before the ClientHello

    thread = threading.Thread(target=silent_server, daemon=True)
    thread.start()
    assert listening.wait(10)
    try:
        done = run_program(
            [
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--tls",
                "starttls",
                "-f",
                "a@example.test",
                "b@example.test",
            ],
            b"Subject: x\n\nhi\n",
            isolated_home,
        )
    finally:
        stop.set()
        thread.join(10)
    assert done.returncode == 69, done.stderr
    err = done.stderr.decode()
    assert "looks like implicit TLS" in err and "try --tls implicit" in err
    assert err.count("\n") == 1


def test_implicit_tls_on_a_plaintext_port_suggests_starttls(
    cli: CLI, certs: TestCertificates
) -> None:
    server = FakeSMTPServer(ssl_context=certs.server_context)
    with serving_in_thread(server) as port:
        result = cli(
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--tls",
            "implicit",
            "-f",
            "a@example.test",
            "b@example.test",
        )
    assert result.status == 69, result.err
    assert "does not speak implicit TLS; try --tls starttls" in result.err


# ----------------------------------------------------------------- messages speak CLI


def test_messages_name_flags_not_python(
    cli: CLI, certs: TestCertificates, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIO_SENDMAIL_PASSWORD", PASSWORD)
    no_starttls = FakeSMTPServer(ssl_context=certs.server_context, starttls=False)
    with serving_in_thread(no_starttls) as port:
        starttls = cli(
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--tls",
            "starttls",
            "-f",
            "a@example.test",
            "b@example.test",
        )
    plaintext_auth = FakeSMTPServer(users=USERS, auth_requires_tls=False)
    with serving_in_thread(plaintext_auth) as port:
        auth = cli(*plain(port, "--user", "alice", "-f", "a@example.test", "b@example.test"))
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(trustme.CA().cert_pem.bytes())
    tls_server = FakeSMTPServer(ssl_context=certs.server_context)
    with serving_in_thread(tls_server, implicit_tls=True) as port:
        cafile = cli(
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--tls",
            "implicit",
            "--cafile",
            str(other_ca),
            "-f",
            "a@example.test",
            "b@example.test",
        )
    assert (
        starttls.status == 69 and "use --tls none only for a trusted local relay" in starttls.err
    )
    assert auth.status == 69 and "use --insecure-plaintext-auth to allow it" in auth.err
    assert cafile.status == 69, cafile.err
    assert f"the certificate is not signed by a CA in {other_ca}" in cafile.err
    for result in (starttls, auth, cafile):
        assert "TLSMode" not in result.err and "=True" not in result.err
        assert "use --cafile" not in result.err
    assert no_starttls.messages == plaintext_auth.messages == tls_server.messages == []


# ----------------------------------------------------------------- Ctrl-C in bulk


def silent_after_end_of_data(
    variant: ServerVariant, ended: threading.Event, *, close: bool = False
) -> RawHandler:
    """A server that takes one message up to its end of data, sets *ended*, and never
    answers it: it waits forever, or with *close* closes the connection."""

    async def handler(stream: trio.SocketStream) -> None:
        raw = RawServer(stream)
        await raw.greet_and_ehlo(variant.ehlo())
        await raw.expect(b"MAIL FROM:", b"" if variant.pipelining else b"250 ok\r\n")
        await raw.expect(b"RCPT TO:", b"" if variant.pipelining else b"250 ok\r\n")
        if variant.pipelining:
            await raw.send(b"250 ok\r\n250 ok\r\n")
        await raw.message(variant)
        ended.set()
        if close:
            await stream.aclose()
        else:
            await trio.sleep_forever()

    return handler


def interrupt_when(ended: threading.Event, process: subprocess.Popen[bytes]) -> tuple[str, str]:
    """SIGINT *process* once *ended* is set; its stdout and stderr."""
    try:
        assert ended.wait(30), "the message never reached its end of data"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return out.decode(), err.decode()


@variants()
def test_an_unknown_outcome_is_not_status_75(cli: CLI, server_variant: ServerVariant) -> None:
    """The end of data went out and the connection was lost before its reply: the
    server may have the message, so the status must not ask for a retry (75)."""
    ended = threading.Event()
    handler = silent_after_end_of_data(server_variant, ended, close=True)
    with serving_in_thread(handler=handler) as port:
        result = cli(*plain(port, "-f", "a@example.test"), "b@example.test")
    assert ended.is_set()
    assert result.status == 76, result.err
    assert "may have the message" in result.err and "not status 75" in result.err


@variants()
def test_ctrl_c_in_send_logs_the_outcome(server_variant: ServerVariant, tmp_path: Path) -> None:
    ended = threading.Event()
    log = tmp_path / "send.log"
    message = tmp_path / "message.eml"
    message.write_bytes(b"Subject: x\n\nhello\n")
    with (
        serving_in_thread(handler=silent_after_end_of_data(server_variant, ended)) as port,
        message.open("rb") as stdin,
    ):
        process = subprocess.Popen(
            [*PROGRAM, *plain(port, "--log", str(log), "-f", "a@example.test", "b@example.test")],
            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
            env=subprocess_env(tmp_path),
        )  # fmt: skip
        out, err = interrupt_when(ended, process)
    assert process.returncode == 130, err
    assert err == "trio-sendmail: interrupted\n" and out == ""
    [line] = log.read_text().splitlines()
    assert 'outcome="interrupted, unknown" exitcode=130 reply=interrupted' in line


@pytest.mark.parametrize("chunking", [False, True], ids=["data", "chunk"])
@pytest.mark.parametrize("pipelining", [False, True], ids=["lock", "pipe"])
def test_ctrl_c_in_bulk_reports_the_messages_in_flight(
    tmp_path: Path, pipelining: bool, chunking: bool
) -> None:
    """The server takes the first message's end of data and never answers it: Ctrl-C
    then reports that message as unknown (interrupted, may have been delivered), the
    others as not sent, and no 'internal error: Cancelled'."""
    variant = ServerVariant(pipelining=pipelining, chunking=chunking)
    ended = threading.Event()
    handler = silent_after_end_of_data(variant, ended)
    folder = tmp_path / "out"
    folder.mkdir()
    for number in (1, 2, 3):
        (folder / f"{number}.eml").write_bytes(
            f"From: a@example.test\nTo: b@example.test\nMessage-ID: <{number}@x>\n\n"
            f"message {number}\n".encode()
        )
    report = tmp_path / "report.json"
    with serving_in_thread(handler=handler) as port:
        process = subprocess.Popen(
            [
                *PROGRAM,
                "bulk",
                str(folder),
                *plain(port),
                "-c",
                "1",
                "--report",
                str(report),
                "--progress",
                "lines",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env=subprocess_env(tmp_path / "home"),
        )
        out, err = interrupt_when(ended, process)
    assert process.returncode == 130, err
    assert "Cancelled" not in out + err and "internal error" not in out + err
    assert "trio-sendmail: interrupted" in err
    rows = json.loads(report.read_text())["messages"]
    first = rows[0]
    assert first["status"] == "unknown"
    assert first["detail"].startswith("interrupted after its end of data was sent")
    assert "unknown  " in out and "interrupted after its end of data" in out
    assert [row["status"] for row in rows[1:]] == ["not sent", "not sent"]


# ----------------------------------------------------------------- sysadmin conventions


def test_version(cli: CLI, isolated_home: Path) -> None:
    done = run_program(["--version"], b"", isolated_home)
    assert done.returncode == 0
    assert done.stdout.decode().startswith(f"trio-sendmail {__version__} (trio ")
    assert cli("bulk", "--version").status == 0


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@variants()
def test_system_config_is_read_before_the_users(
    cli: CLI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    isolated_home: Path,
    server_variant: ServerVariant,
) -> None:
    server = FakeSMTPServer(
        extensions=server_variant.extensions(), users=USERS, auth_requires_tls=False
    )
    with serving_in_thread(server) as port:
        system = _write(
            tmp_path / "system.toml",
            f"""
default = "relay"
[defaults]
host = "127.0.0.1"
port = {port}
tls = "none"
domain = "system.test"
[accounts.relay]
from = "relay@system.test"
[accounts.work]
from = "me@work.test"
user = "nobody"
""",
            0o644,
        )
        monkeypatch.setenv(SYSTEM_CONFIG_ENV, str(system))
        system_only = cli("-t")
        user = _write(
            isolated_home / "user.toml",
            f"""
[defaults]
domain = "user.test"
[accounts.work]
host = "127.0.0.1"
port = {port}
tls = "none"
from = "*@work.test"
user = "alice"
insecure_plaintext_auth = true
password = "{PASSWORD}"
""",
        )
        by_sender = cli("-C", str(user), "-f", "boss@work.test", "-t")
        named = cli("-C", str(user), "-a", "relay", "-t")
        by_header = cli("-C", str(user), "-t", stdin=b"From: Eve <eve@work.test>\nTo: x\n\n.\n")
    assert (system_only.status, by_sender.status, named.status) == (0, 0, 0), by_sender.err
    assert by_header.status == 0, by_header.err
    first, second, third, fourth = server.messages
    assert (first.sender, first.recipients) == ("relay@system.test", ("root@system.test",))
    # The user's account "work" replaced the system's, and was chosen by the sender.
    assert (second.sender, second.authenticated_as) == ("boss@work.test", "alice")
    assert second.recipients == ("root@user.test",)  # the user's [defaults] win
    assert (third.sender, third.recipients) == ("relay@system.test", ("root@user.test",))
    # The From header chose "work" by its pattern; the pattern is not an address.
    assert (fourth.sender, fourth.authenticated_as) == ("eve@work.test", "alice")
    assert fourth.recipients == ("x@user.test",)


def test_system_config_with_a_password_must_be_private(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = _write(
        tmp_path / "system.toml", '[defaults]\nhost = "h.test"\npassword = "x"\n', 0o644
    )
    monkeypatch.setenv(SYSTEM_CONFIG_ENV, str(system))
    result = cli("--pretend")
    assert result.status == 78 and "chmod 600" in result.err


def test_an_unreadable_system_config_is_skipped_with_a_warning(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root's 0600 system file (it holds a password): another user cannot read it,
    and still sends with their own settings (the test runs as root, so the
    permission check is what it sees)."""
    system = _write(
        tmp_path / "system.toml", '[defaults]\nhost = "h.test"\npassword = "x"\n', 0o600
    )
    monkeypatch.setenv(SYSTEM_CONFIG_ENV, str(system))
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: path != system and real_access(path, mode)
    )
    result = cli("--pretend", "--host", "mine.test")
    assert result.status == 0, result.err
    assert f"warning: {system} is not readable by this user; it is skipped" in result.err
    assert re.search(r"^host +mine\.test", result.out, re.MULTILINE)


def test_pretend_masks_secrets_and_sends_nothing(cli: CLI, isolated_home: Path) -> None:
    server = FakeSMTPServer()
    with serving_in_thread(server) as port:
        config = _write(
            isolated_home / "c.toml",
            f"""
[accounts.work]
host = "127.0.0.1"
port = {port}
tls = "starttls"
from = "me@example.test"
user = "alice"
password = "{PASSWORD}"
log = "~/mail.log"
""",
        )
        result = cli("-C", str(config), "-f", "me@example.test", "--pretend", "bob@example.test")
        command = cli(
            "-C",
            str(config),
            "-a",
            "work",
            "--pretend",
            "--password-command",
            "echo hunter2-secret",
        )
    assert result.status == 0, result.err
    assert PASSWORD not in result.out + result.err
    out = result.out
    assert re.search(r"^account +work \(chosen by from address\)$", out, re.MULTILINE), out
    assert re.search(r"^password +password in the config file \(not shown\)$", out, re.M)
    assert re.search(r"^tls +starttls$", out, re.MULTILINE)
    assert re.search(r"^log +~/mail.log$", out, re.MULTILINE)
    # The command's program is named, its arguments (often a secret) are not.
    assert "--password-command 'echo' (not run; arguments not shown)" in command.out
    assert "hunter2" not in command.out + command.err
    assert server.connections == 0


def test_serverinfo(
    cli: CLI, certs: TestCertificates, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cafile = tmp_path / "ca.pem"
    cafile.write_bytes(certs.ca_pem)
    ran = tmp_path / "password-command-ran"
    server = FakeSMTPServer(ssl_context=certs.server_context, users=USERS)
    with serving_in_thread(server) as port:
        result = cli(
            "--host",
            "localhost",
            "--port",
            str(port),
            "--tls",
            "starttls",
            "--cafile",
            str(cafile),
            "--user",
            "alice",
            "--password-command",
            f"touch {ran}; echo {PASSWORD}",
            "--serverinfo",
        )
    assert result.status == 0, result.err
    out = result.out
    assert re.search(r"^greeting +220 mail\.example\.test ESMTP", out, re.MULTILINE), out
    assert re.search(r"^capability +STARTTLS$", out, re.MULTILINE) is None  # after TLS
    assert re.search(r"^capability +AUTH PLAIN", out, re.MULTILINE), out
    assert re.search(r"^capability +SIZE \d+$", out, re.MULTILINE)
    assert re.search(r"^certificate issuer +.*O=trustme", out, re.MULTILINE), out
    assert re.search(r"^certificate expires +\w{3} +\d+ [\d:]+ \d{4} GMT$", out, re.MULTILINE)
    assert re.search(r"^certificate names +.*localhost", out, re.MULTILINE)
    assert server.messages == [] and not ran.exists()  # no AUTH, no password looked up
    assert not any(line.startswith(b"AUTH") for _, line in server.transcript)


@variants()
def test_log_file(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server_variant: ServerVariant
) -> None:
    log = tmp_path / "send.log"
    monkeypatch.setenv("TRIO_SENDMAIL_PASSWORD", PASSWORD)
    server = FakeSMTPServer(
        extensions=server_variant.extensions(),
        users=USERS,
        auth_requires_tls=False,
        refuse_recipients={"nobody@example.test": (550, "5.1.1 No such user")},
    )
    with serving_in_thread(server) as port:
        args = plain(port, "--user", "alice", "--insecure-plaintext-auth", "--log", str(log))
        sent = cli(*args, "--domain", "example.test", "-t")
        refused = cli(*args, "-f", "a@example.test", "nobody@example.test")
    assert (sent.status, refused.status) == (0, 67)
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    [message_id] = [v for n, v in headers_of(server.messages[0].data) if n == "Message-ID"]
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d host=127\.0\.0\.1 tls=none account=- "
        rf"message_id={re.escape(message_id)} from=root@example\.test "
        r"recipients=root@example\.test outcome=accepted exitcode=0 "
        r'reply="250 2\.0\.0 Ok: queued as FAKE\w+"',
        lines[0],
    ), lines[0]
    assert "recipients=nobody@example.test outcome=not\\ sent" not in lines[1]
    assert 'outcome="not sent" exitcode=67' in lines[1]
    assert "550 5.1.1 No such user" in lines[1]
    assert PASSWORD not in log.read_text()
    assert (log.stat().st_mode & 0o777) == 0o600
    with serving_in_thread(server) as port:
        unwritable = plain(port, "--log", str(tmp_path), "--domain", "example.test", "-t")
        sent_unlogged = cli(*unwritable)  # a folder: sent, then the log fails
        refused_unlogged = cli(*unwritable, "nobody@example.test")
    assert (
        sent_unlogged.status == 73 and f"cannot write the log file {tmp_path}" in sent_unlogged.err
    )
    assert refused_unlogged.status == 67  # the send's status, and both lines
    assert "cannot write the log file" in refused_unlogged.err
    assert "recipient refused: nobody@example.test" in refused_unlogged.err
    with serving_in_thread(server) as port:
        failed_unlogged = cli(*plain(port, "--log", str(tmp_path), "-f", "a@example.test",
                                     "nobody@example.test"))  # fmt: skip
    assert failed_unlogged.status == 67  # every recipient refused: the send's error wins
    assert "cannot write the log file" in failed_unlogged.err
    assert "recipients refused: nobody@example.test: 550" in failed_unlogged.err


@variants()
def test_password_command_runs_through_the_shell(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server_variant: ServerVariant
) -> None:
    """msmtp's passwordeval lines work as they are: a pipe, a variable, a quote."""
    monkeypatch.setenv("SECRET_PART", "Pa55word!")
    server = FakeSMTPServer(
        extensions=server_variant.extensions(), users=USERS, auth_requires_tls=False
    )
    command = "printf '%s\\n' \"s3cret-$SECRET_PART\" 'second line' | head -n 2"
    with serving_in_thread(server) as port:
        result = cli(
            *plain(
                port,
                "--user",
                "alice",
                "--insecure-plaintext-auth",
                "--password-command",
                command,
                "--domain",
                "example.test",
                "-t",
            )
        )
    assert result.status == 0, result.err
    assert server.messages[0].authenticated_as == "alice"


def test_password_command_in_a_file_others_can_write_is_refused(
    cli: CLI, isolated_home: Path
) -> None:
    config = _write(
        isolated_home / "c.toml",
        '[defaults]\nhost = "h.test"\nuser = "a"\npassword_command = "pass x"\n',
        0o664,
    )
    result = cli("-C", str(config), "root@example.test")
    assert result.status == 78
    assert "has a password_command but is writable by group/others (mode 0664)" in result.err
    assert "chmod go-w" in result.err
    config.chmod(0o644)  # readable by others is fine: it holds no secret
    assert cli("-C", str(config), "--pretend").status == 0


def test_unqualified_forward_path() -> None:
    """The library's path for ``<root>``: checked as a local part, never Postmaster's."""
    from trio_sendmail import ForwardPath, SMTPAddressError

    root = ForwardPath.unqualified("root")
    assert (str(root), root.is_postmaster, root.mailbox) == ("<root>", False, None)
    assert root == ForwardPath.unqualified("root") != ForwardPath.unqualified("admin")
    assert ForwardPath.unqualified("PostMaster").is_postmaster
    assert ForwardPath.unqualified("jöran").needs_smtputf8
    for bad in ("a b", "root>\r\nRSET", "", "a" * 65):
        with pytest.raises(SMTPAddressError):
            ForwardPath.unqualified(bad)


@variants()
def test_bulk_log_has_a_line_per_message(
    cli: CLI, server_variant: ServerVariant, tmp_path: Path
) -> None:
    server = FakeSMTPServer(
        extensions=server_variant.extensions(),
        refuse_recipients={"nobody@example.test": (550, "5.1.1 No such user")},
    )
    folder = tmp_path / "out"
    folder.mkdir()
    for number, to in ((1, "bob@example.test"), (2, "nobody@example.test")):
        (folder / f"{number}.eml").write_bytes(
            f"From: a@example.test\nTo: {to}\nMessage-ID: <{number}@x>\n\nhi\n".encode()
        )
    log = tmp_path / "bulk.log"
    with serving_in_thread(server) as port:
        result = cli("bulk", str(folder), *plain(port, "--log", str(log), "--progress", "none"))
    assert result.status == 67, result.err
    lines = sorted(log.read_text().splitlines(), key=lambda line: "<2@x>" in line)
    assert len(lines) == 2
    assert f"source={folder / '1.eml'} message_id=<1@x> from=a@example.test" in lines[0]
    assert "recipients=bob@example.test outcome=accepted exitcode=0" in lines[0]
    assert "message_id=<2@x>" in lines[1] and "outcome=refused exitcode=67" in lines[1]
    assert "550 5.1.1 No such user" in lines[1]


@variants()
def test_bulk_qualifies_bare_names_and_reports_bad_addresses(
    cli: CLI, server_variant: ServerVariant, tmp_path: Path
) -> None:
    server = FakeSMTPServer(extensions=server_variant.extensions())
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "1.eml").write_bytes(b"From: cron\nTo: root\n\nqualified\n")
    (folder / "2.eml").write_bytes(b"From: a@example.test\nTo: x@example.test\n\nbad name\n")
    report = tmp_path / "report.json"
    with serving_in_thread(server) as port:
        good = cli("bulk", str(folder / "1.eml"), *plain(port, "--domain", "example.test"))
        bad = cli("bulk", str(folder / "2.eml"), "a b", *plain(port, "--report", str(report)))
    assert good.status == 0, good.out + good.err
    [received] = server.messages
    assert (received.sender, received.recipients) == ("cron@example.test", ("root@example.test",))
    assert bad.status == 69  # a message that could not be sent for good
    [row] = json.loads(report.read_text())["messages"]
    assert row["status"] == "not sent" and row["detail"].startswith(
        "bad address: local part 'a b'"
    )
