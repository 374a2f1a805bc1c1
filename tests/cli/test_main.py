"""The ``trio-sendmail`` command, driven against the fake server on loopback.

``main()`` runs ``trio.run`` itself, so these are synchronous tests: the fake
server runs in a background thread with its own ``trio.run`` (see
:func:`serving_in_thread`), and ``main([...])`` runs in the test's thread.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import mailbox
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_sendmail._cli._send as cli_module
from trio_sendmail._cli._bulk import bulk_exit_status
from trio_sendmail._cli._message import parse_message, strip_headers
from trio_sendmail.testing import (
    DEFAULT_EXTENSIONS,
    FakeSMTPServer,
    TestCertificates,
)

from ..cli_support import CLI, in_process, plain, serving_in_thread, subprocess_env
from ..helpers import ServerVariant, variants

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-Pa55word!"
USERS = {"alice": PASSWORD}

MESSAGE = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: Bob <bob@example.test>\r\n"
    b"Subject: hello\r\n"
    b"Date: Wed, 02 Dec 2026 03:00:00 +0000\r\n"
    b"Message-ID: <1@example.test>\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
    b".A line with a leading dot.\r\n"
)

# ----------------------------------------------------------------- harness


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> CLI:
    return in_process(monkeypatch, capsys, MESSAGE)


@pytest.fixture
def cafile(certs: TestCertificates, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    path.write_bytes(certs.ca_pem)
    return str(path)


def private_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


# ----------------------------------------------------------------- sending one message


def test_send_from_stdin(cli: CLI) -> None:
    server = FakeSMTPServer()
    with serving_in_thread(server) as port:
        result = cli(*plain(port, "-f", "alice@example.test", "bob@example.test"))
    assert (result.status, result.out, result.err) == (0, "", "")
    [received] = server.messages
    assert received.sender == "alice@example.test"
    assert received.recipients == ("bob@example.test",)
    assert received.data == MESSAGE
    assert b"\r\n..A line" in received.raw  # stuffed on the wire


def test_send_from_file_with_bare_lf(cli: CLI, tmp_path: Path) -> None:
    path = tmp_path / "m.eml"
    path.write_bytes(MESSAGE.replace(b"\r\n", b"\n"))
    server = FakeSMTPServer()
    with serving_in_thread(server) as port:
        result = cli(*plain(port, "--message", str(path), "-v", "bob@example.test"), stdin=b"")
    assert result.status == 0, result.err
    assert "accepted: 250" in result.out
    assert server.messages[0].data == MESSAGE  # normalised to CRLF
    assert server.messages[0].sender == "alice@example.test"  # from the From header
    assert server.bare_line_endings == 0


def test_read_recipients_strips_bcc(cli: CLI) -> None:
    message = (
        b"From: alice@example.test\r\n"
        b"To: Bob <bob@example.test>, carol@example.test\r\n"
        b"Cc: undisclosed:;, dave@example.test\r\n"
        b"Bcc: Eve <eve@example.test>,\r\n"
        b"  frank@example.test\r\n"
        b"Subject: secret list\r\n"
        b"bcc: grace@example.test\r\n"
        b"\r\n"
        b"Bcc: this line is in the body and stays\r\n"
    )
    server = FakeSMTPServer()
    with serving_in_thread(server) as port:
        result = cli(*plain(port, "-t", "-oi", "extra@example.test"), stdin=message)
    assert result.status == 0, result.err
    [received] = server.messages
    assert set(received.recipients) == {
        "extra@example.test",
        "bob@example.test",
        "carol@example.test",
        "dave@example.test",
        "eve@example.test",
        "frank@example.test",
        "grace@example.test",
    }
    headers, _, body = received.data.partition(b"\r\n\r\n")
    assert b"bcc" not in headers.lower()
    assert b"eve@" not in headers and b"frank@" not in headers and b"grace@" not in headers
    assert b"Subject: secret list\r\n" in received.data
    assert body == b"Bcc: this line is in the body and stays\r\n"


@variants()
def test_read_recipients_of_a_resent_message(cli: CLI, server_variant: ServerVariant) -> None:
    """A resent message (RFC 5322 §3.6.6) goes where its Resent- fields say, not
    back to its original To and Cc; its Resent-Bcc list is never shown."""
    message = (
        b"Resent-From: list@example.test\r\n"
        b"Resent-Date: Wed, 02 Dec 2026 04:00:00 +0000\r\n"
        b"Resent-To: new@example.test\r\n"
        b"Resent-Bcc: hidden@example.test\r\n"
        b"From: alice@example.test\r\n"
        b"To: original@example.test\r\n"
        b"Subject: forwarded\r\n"
        b"\r\n"
        b"Hello.\r\n"
    )
    server = FakeSMTPServer(extensions=server_variant.extensions())
    with serving_in_thread(server) as port:
        result = cli(*plain(port, "-t"), stdin=message)
    assert result.status == 0, result.err
    [received] = server.messages
    assert received.sender == "list@example.test"
    assert set(received.recipients) == {"new@example.test", "hidden@example.test"}
    headers = received.data.partition(b"\r\n\r\n")[0].lower()
    assert b"resent-bcc" not in headers and b"hidden@" not in headers
    assert b"to: original@example.test" in headers  # kept as it is, not a recipient


def test_bcc_is_stripped_without_t_too() -> None:
    raw = b"To: a@example.test\nBcc: b@example.test,\n\tc@example.test\nX: y\n\nbody\n"
    assert strip_headers(raw) == b"To: a@example.test\nX: y\n\nbody\n"
    parsed = parse_message(raw)
    assert parsed.recipients == ("a@example.test", "b@example.test", "c@example.test")
    assert parsed.sender is None


_FIELD = st.sampled_from(["To", "Cc", "Bcc", "bcc", "BCC", "From", "Subject", "X-Bcc"])
_VALUE = st.text(alphabet='<>@,;:"()\\ .ab\xe9=?', max_size=30)


@settings(max_examples=200, deadline=None)
@given(
    fields=st.lists(st.tuples(_FIELD, _VALUE, st.booleans()), max_size=6),
    body=st.binary(max_size=30),
    newline=st.sampled_from([b"\r\n", b"\n"]),
)
def test_header_parsing_never_fails_and_bcc_never_survives(
    fields: list[tuple[str, str, bool]], body: bytes, newline: bytes
) -> None:
    head = b"".join(
        name.encode() + b": " + value.encode() + (newline + b" folded" if fold else b"") + newline
        for name, value, fold in fields
    )
    raw = head + newline + body
    parsed = parse_message(raw)  # never raises, however malformed the fields
    assert parsed.data.endswith(newline + body)  # the empty line and the body are untouched
    kept = parsed.data[: len(parsed.data) - len(newline + body)]
    for line in kept.split(newline):
        assert not line.lower().startswith(b"bcc:")
    assert kept.count(b"X-Bcc:") == sum(name == "X-Bcc" for name, _, _ in fields)


@pytest.mark.parametrize("mode", ["implicit", "starttls", "none"])
def test_tls_modes(cli: CLI, certs: TestCertificates, cafile: str, mode: str) -> None:
    server = FakeSMTPServer(ssl_context=certs.server_context)
    with serving_in_thread(server, implicit_tls=mode == "implicit") as port:
        result = cli(
            "--host", "127.0.0.1", "--port", str(port), "--tls", mode, "--cafile", cafile,
            "--helo", "client.example.test", "-f", "alice@example.test", "bob@example.test",
        )  # fmt: skip
    assert result.status == 0, result.err
    [received] = server.messages
    assert received.tls is (mode != "none")
    assert received.helo == "client.example.test"


def test_starttls_is_the_default_on_another_port(cli: CLI, certs: TestCertificates) -> None:
    server = FakeSMTPServer(ssl_context=certs.server_context, starttls=False)
    with serving_in_thread(server) as port:  # no STARTTLS offered: no plaintext fallback
        result = cli("--host", "127.0.0.1", "--port", str(port), "bob@example.test")
    assert result.status == 69
    assert "STARTTLS" in result.err and result.err.count("\n") == 1
    assert server.messages == []


def test_certificate_problem_is_named(cli: CLI, certs: TestCertificates) -> None:
    server = FakeSMTPServer(ssl_context=certs.server_context)
    with serving_in_thread(server, implicit_tls=True) as port:
        result = cli("--host", "127.0.0.1", "--port", str(port), "--tls", "implicit", "b@x.test")
    assert result.status == 69
    assert "certificate verification failed: unable to get local issuer certificate" in result.err
    assert result.err.count("\n") == 1 and "Traceback" not in result.err


# ----------------------------------------------------------------- credentials


def tls_args(port: int, cafile: str, *more: str) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(port), "--tls", "starttls",
            "--cafile", cafile, *more]  # fmt: skip


@pytest.mark.parametrize("source", ["default-env", "named-env", "netrc", "command", "auth-login"])
def test_password_sources(
    cli: CLI,
    certs: TestCertificates,
    cafile: str,
    monkeypatch: pytest.MonkeyPatch,
    isolated_home: Path,
    source: str,
) -> None:
    extra: list[str] = []
    if source in ("default-env", "auth-login"):
        monkeypatch.setenv("TRIO_SENDMAIL_PASSWORD", PASSWORD)
    if source == "auth-login":
        extra = ["--auth", "login"]
    elif source == "named-env":
        monkeypatch.setenv("MY_SMTP_SECRET", PASSWORD)
        extra = ["--password-env", "MY_SMTP_SECRET"]
    elif source == "netrc":
        private_file(
            isolated_home / ".netrc",
            f"machine other.test login alice password wrong\n"
            f"machine 127.0.0.1 login alice password {PASSWORD}\n",
        )
    elif source == "command":
        command = [sys.executable, "-c", f"print({PASSWORD!r}); print('second line')"]
        extra = ["--password-command", shlex.join(command)]
    server = FakeSMTPServer(ssl_context=certs.server_context, users=USERS)
    with serving_in_thread(server) as port:
        result = cli(*tls_args(port, cafile, "--user", "alice", "--transcript", *extra,
                               "-f", "alice@example.test", "bob@example.test"))  # fmt: skip
    assert result.status == 0, result.err
    assert server.messages[0].authenticated_as == "alice"
    mechanism = "LOGIN" if source == "auth-login" else "PLAIN"
    assert f"C: AUTH {mechanism}" in result.err
    assert PASSWORD not in result.out + result.err
    if mechanism == "PLAIN":
        assert "C: AUTH PLAIN <redacted>" in result.err


def test_oauth_token_from_the_password_sources(
    cli: CLI, certs: TestCertificates, cafile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIO_SENDMAIL_PASSWORD", "token-123")
    server = FakeSMTPServer(
        ssl_context=certs.server_context,
        tokens={"token-123": "alice"},
        auth_mechanisms=["XOAUTH2"],
    )
    with serving_in_thread(server) as port:
        result = cli(*tls_args(port, cafile, "--user", "alice", "--auth", "xoauth2", "b@x.test"))
    assert result.status == 0, result.err
    assert server.messages[0].authenticated_as == "alice"


def test_netrc_entry_for_another_user_is_not_used(cli: CLI, isolated_home: Path) -> None:
    private_file(isolated_home / ".netrc", "machine h.test login bob password x\n")
    result = cli("--host", "h.test", "--user", "alice", "b@x.test")
    assert result.status == 77 and "no password for alice" in result.err


def test_password_command_does_not_read_the_message(
    certs: TestCertificates, cafile: str, tmp_path: Path
) -> None:
    """The command's stdin is /dev/null: it cannot swallow the message on stdin."""
    greedy = f"import sys; sys.stdin.read(); print({PASSWORD!r})"
    server = FakeSMTPServer(ssl_context=certs.server_context, users=USERS)
    with serving_in_thread(server) as port:
        done = subprocess.run(
            [sys.executable, "-m", "trio_sendmail", *tls_args(port, cafile, "--user", "alice",
             "--password-command", shlex.join([sys.executable, "-c", greedy]), "b@x.test")],
            input=MESSAGE, capture_output=True, cwd=REPO, env=subprocess_env(tmp_path),
            timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert server.messages[0].data == MESSAGE


def test_transcript_shows_the_dialogue(cli: CLI) -> None:
    server = FakeSMTPServer()
    with serving_in_thread(server) as port:
        result = cli(*plain(port, "--transcript", "bob@example.test"))
    assert result.status == 0
    lines = result.err.splitlines()
    assert any("C: MAIL FROM:<alice@example.test> SIZE=" in line for line in lines)
    assert any("S: 220" in line for line in lines) and any("C: QUIT" in line for line in lines)


def test_password_is_never_accepted_as_a_flag(cli: CLI) -> None:
    for flag in (["--password", "hunter2-secret"], ["--password=hunter2-secret"],
                 ["-phunter2-secret"]):  # fmt: skip
        result = cli("--host", "h.test", *flag, "bob@example.test")
        assert result.status == 64
        assert "not accepted on the command line" in result.err
        assert "hunter2" not in result.err + result.out


def test_netrc_readable_by_others_is_refused(cli: CLI, isolated_home: Path) -> None:
    private_file(isolated_home / ".netrc", "machine h.test login alice password x\n", 0o644)
    result = cli("--host", "h.test", "--user", "alice", "bob@example.test")
    assert result.status == 78
    assert "chmod 600" in result.err and result.err.count("\n") == 1


def test_no_password_found(cli: CLI) -> None:
    result = cli("--host", "h.test", "--user", "alice", "bob@example.test")
    assert result.status == 77
    assert "no password for alice on h.test" in result.err


def test_failing_password_command(cli: CLI) -> None:
    command = shlex.join([sys.executable, "-c", "import sys; sys.exit(3)"])
    result = cli("--host", "h.test", "--user", "a", "--password-command", command, "b@x.test")
    assert result.status == 78
    assert "failed with status 3" in result.err


# ----------------------------------------------------------------- profiles


def config_text(port: int, cafile: str, secret: str) -> str:
    return f"""
default = "work"

[defaults]
tls = "starttls"
cafile = "{cafile}"

[accounts.work]
host = "127.0.0.1"
port = {port}
from = "alice@example.test"
user = "alice"
{secret}

[accounts.relay]
host = "127.0.0.1"
port = {port}
tls = "none"
from = "relay@example.test"
"""


def test_profiles_and_accounts(
    cli: CLI, certs: TestCertificates, cafile: str, tmp_path: Path
) -> None:
    server = FakeSMTPServer(ssl_context=certs.server_context, users=USERS)
    with serving_in_thread(server) as port:
        config = private_file(
            tmp_path / "config.toml", config_text(port, cafile, f'password = "{PASSWORD}"')
        )
        work = cli("--config", str(config), "bob@example.test")
        relay = cli("--config", str(config), "--account", "relay", "bob@example.test")
        override = cli("--config", str(config), "--account", "relay", "-f", "x@example.test",
                       "bob@example.test")  # fmt: skip
        missing = cli("--config", str(config), "--account", "nope", "bob@example.test")
    assert (work.status, relay.status, override.status) == (0, 0, 0), work.err + relay.err
    first, second, third = server.messages
    assert (first.sender, first.tls, first.authenticated_as) == (
        "alice@example.test",
        True,
        "alice",
    )
    assert (second.sender, second.tls, second.authenticated_as) == (
        "relay@example.test",
        False,
        None,
    )
    assert third.sender == "x@example.test"
    assert missing.status == 78 and "no account 'nope'" in missing.err
    assert PASSWORD not in work.err + relay.err + missing.err


def test_default_config_location_and_default_account(cli: CLI, isolated_home: Path) -> None:
    server = FakeSMTPServer()
    with serving_in_thread(server) as port:
        folder = isolated_home / ".config" / "trio-sendmail"
        folder.mkdir(parents=True)
        (folder / "config.toml").write_text(
            f'[accounts.default]\nhost = "127.0.0.1"\nport = {port}\ntls = "none"\n'
        )
        result = cli("bob@example.test")
    assert result.status == 0, result.err
    assert server.messages[0].sender == "alice@example.test"


def test_config_with_a_password_must_be_private(cli: CLI, tmp_path: Path, cafile: str) -> None:
    config = private_file(
        tmp_path / "config.toml", config_text(25, cafile, 'password = "hunter2"'), 0o640
    )
    result = cli("--config", str(config), "bob@example.test")
    assert result.status == 78
    assert result.err.count("\n") == 1
    assert "contains a password" in result.err and "mode 0640" in result.err
    assert "chmod 600" in result.err and "hunter2" not in result.err


def test_config_without_a_password_may_be_readable(
    cli: CLI, tmp_path: Path, cafile: str, certs: TestCertificates
) -> None:
    command = shlex.join([sys.executable, "-c", f"print({PASSWORD!r})"])
    server = FakeSMTPServer(ssl_context=certs.server_context, users=USERS)
    with serving_in_thread(server) as port:
        config = private_file(
            tmp_path / "config.toml",
            config_text(port, cafile, f"password_command = {json.dumps(command)}"),
            0o644,
        )
        result = cli("--config", str(config), "bob@example.test")
    assert result.status == 0, result.err
    assert server.messages[0].authenticated_as == "alice"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[accounts.a]\nhots = "x"\n', "unknown key 'hots'"),
        ("[accounts.a]\nport = '25'\n", "port in [accounts.a] has the wrong type"),
        ('[accounts.a]\ntls = "ssl"\n', "tls in [accounts.a] must be one of"),
        ("default = 'b'\n[accounts.a]\n", "default account 'b' is not defined"),
        ("this is not toml", "invalid TOML"),
    ],
)
def test_bad_config(cli: CLI, tmp_path: Path, text: str, message: str) -> None:
    config = private_file(tmp_path / "c.toml", text)
    result = cli("--config", str(config), "bob@example.test")
    assert result.status == 78
    assert message in result.err


# ----------------------------------------------------------------- DSN


def test_dsn_options(cli: CLI) -> None:
    server = FakeSMTPServer(extensions=(*DEFAULT_EXTENSIONS, "DSN"))
    with serving_in_thread(server) as port:
        result = cli(*plain(port, "-N", "success,failure", "-R", "hdrs", "--dsn-envid",
                            "job 42", "--dsn-orcpt", "bob@example.test"))  # fmt: skip
        bad = cli(*plain(port, "-N", "never,success", "bob@example.test"))
    assert result.status == 0, result.err
    [received] = server.messages
    assert "RET=HDRS" in received.mail_options
    assert "ENVID=job+2042" in received.mail_options
    assert received.rcpt_options["bob@example.test"] == (
        "NOTIFY=SUCCESS,FAILURE",
        "ORCPT=rfc822;bob@example.test",
    )
    assert bad.status == 64 and "NEVER" in bad.err


def test_dsn_not_offered(cli: CLI) -> None:
    server = FakeSMTPServer()
    with serving_in_thread(server) as port:
        result = cli(*plain(port, "-N", "failure", "bob@example.test"))
    assert result.status == 69
    assert "DSN" in result.err


# ----------------------------------------------------------------- exit statuses


async def garbage_greeting(stream: trio.SocketStream) -> None:
    with contextlib.suppress(trio.BrokenResourceError):
        await stream.send_all(b"hello, I am not an SMTP server\r\n")
        await stream.receive_some()
    await stream.aclose()


async def silent(stream: trio.SocketStream) -> None:
    with contextlib.suppress(trio.BrokenResourceError):
        await stream.receive_some()
    await stream.aclose()


REFUSE_BOB = {"bob@example.test": (550, "5.1.1 No such user")}


@pytest.mark.parametrize(
    ("config", "recipients", "status", "message"),
    [
        pytest.param({"refuse_recipients": REFUSE_BOB}, ["bob@example.test"], 67,
                     "recipients refused: bob@example.test: 550 5.1.1 No such user",
                     id="recipient-550"),
        pytest.param({"refuse_recipients": {"bob@example.test": (450, "4.2.1 Try later")}},
                     ["bob@example.test"], 75, "recipients refused", id="recipient-450"),
        pytest.param({"refuse_recipients": REFUSE_BOB}, ["bob@example.test", "carol@example.test"],
                     67, "recipient refused: bob@example.test", id="one-recipient-of-two"),
        pytest.param({"data_reply": (451, "4.3.0 Queue full")}, ["b@example.test"], 75,
                     "temporary failure", id="data-451"),
        pytest.param({"data_reply": (554, "5.6.0 Spam")}, ["b@example.test"], 69,
                     "message refused: 554 5.6.0 Spam", id="data-554"),
        pytest.param({"refuse_senders": {"alice@example.test": (553, "5.1.8 Bad sender")}},
                     ["b@example.test"], 69, "sender refused", id="sender-553"),
        pytest.param({"refuse_senders": {"alice@example.test": (553, "5.7.1 Not yours")}},
                     ["b@example.test"], 77, "sender refused (permission)", id="sender-5.7.1"),
        pytest.param({"refuse_senders": {"alice@example.test": (451, "4.3.0 Later")}},
                     ["b@example.test"], 75, "temporary failure", id="sender-451"),
        pytest.param({"require_auth": True}, ["b@example.test"], 77,
                     "530 5.7.0 Authentication required", id="auth-required-530"),
        pytest.param({"greeting": (421, "4.3.2 Too busy")}, ["b@example.test"], 75,
                     "server greeting refused: 421 4.3.2 Too busy", id="greeting-421"),
        pytest.param({"greeting": (554, "5.3.2 No service")}, ["b@example.test"], 69,
                     "No service", id="greeting-554"),
        pytest.param({}, ["not an address"], 64, "", id="bad-address"),
    ],
)  # fmt: skip
def test_exit_status_of_server_replies(
    cli: CLI, config: dict[str, Any], recipients: list[str], status: int, message: str
) -> None:
    server = FakeSMTPServer(**config)
    with serving_in_thread(server) as port:
        result = cli(*plain(port, *recipients))
    assert result.status == status, result.err
    assert result.err.count("\n") == 1, result.err
    assert message in result.err
    if len(recipients) == 2:  # sent to the other one
        assert server.messages[0].recipients == ("carol@example.test",)


def test_exit_status_of_transport_failures(cli: CLI) -> None:
    with serving_in_thread(handler=garbage_greeting) as port:
        protocol = cli(*plain(port, "b@example.test"))
    with serving_in_thread(handler=silent) as port:
        timeout = cli(*plain(port, "--timeout", "0.3", "b@example.test"))
    with serving_in_thread(handler=silent) as port:
        pass  # now nothing listens on that port
    refused = cli(*plain(port, "b@example.test"))
    assert (protocol.status, timeout.status, refused.status) == (76, 75, 69)
    assert "protocol error" in protocol.err
    assert "timed out" in timeout.err and "greeting" in timeout.err
    assert "cannot connect to 127.0.0.1" in refused.err


def test_auth_failure(
    cli: CLI, certs: TestCertificates, cafile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIO_SENDMAIL_PASSWORD", "wrong")
    server = FakeSMTPServer(ssl_context=certs.server_context, users=USERS)
    with serving_in_thread(server) as port:
        result = cli(*tls_args(port, cafile, "--user", "alice", "b@example.test"))
        no_tls = cli(*plain(port, "--user", "alice", "b@example.test"))
    assert result.status == 77
    assert "authentication failed: 535" in result.err
    assert no_tls.status == 69 and "without TLS" in no_tls.err


def test_usage_errors(cli: CLI, tmp_path: Path) -> None:
    assert cli("--host", "h.test", "--tls", "ssl", "b@x.test").status == 64
    assert cli("--host", "h.test").status == 64  # no recipient
    assert "no recipients" in cli("--host", "h.test").err
    assert cli("-t", "--host", "h.test", stdin=b"Subject: x\r\n\r\n").status == 64
    assert "no SMTP server" in cli("b@x.test").err
    assert cli("nonsense").status == 64
    missing = cli("--host", "h.test", "--message", str(tmp_path / "nope.eml"), "b@x.test")
    assert missing.status == 66 and "cannot read" in missing.err
    no_sender = cli("--host", "h.test", "b@x.test", stdin=b"Subject: x\r\n\r\nhi\r\n")
    assert no_sender.status == 64 and "no sender" in no_sender.err
    assert cli("--help").status == 0
    assert cli("--auth", "PLAIN", "--host", "h.test", "b@x.test").status == 64


def test_unexpected_error_and_debug(cli: CLI, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli_module, "_submit", broken)
    quiet = cli("--host", "h.test", "b@x.test")
    loud = cli("--host", "h.test", "--debug", "b@x.test")
    assert quiet.status == loud.status == 70
    assert quiet.err == "trio-sendmail: internal error: RuntimeError: boom (run with --debug)\n"
    assert "Traceback" in loud.err and loud.err.endswith("(run with --debug)\n")


# ----------------------------------------------------------------- bulk


def write_messages(folder: Path, count: int, *, bcc: bool = False) -> None:
    folder.mkdir()
    for number in range(1, count + 1):
        extra = f"Bcc: hidden{number}@example.test\r\n" if bcc else ""
        (folder / f"{number:03}.eml").write_bytes(
            (
                f"From: alice@example.test\r\nTo: user{number}@example.test\r\n{extra}"
                f"Subject: message {number}\r\nMessage-ID: <{number}@example.test>\r\n\r\n"
                f"Body {number}\r\n"
            ).encode()
        )


def test_bulk_folder_with_csv_report(cli: CLI, tmp_path: Path) -> None:
    write_messages(tmp_path / "out", 6)
    (tmp_path / "out" / "notes.txt").write_text("not a message")
    (tmp_path / "out" / "004.eml").write_bytes(b"Subject: no recipients\r\n\r\nx\r\n")
    server = FakeSMTPServer(refuse_recipients={"user2@example.test": (550, "5.1.1 Unknown")})
    report = tmp_path / "report.csv"
    with serving_in_thread(server) as port:
        result = cli("bulk", str(tmp_path / "out"), *plain(port, "-c", "3", "--report",
                                                          str(report)))  # fmt: skip
    assert result.status == 69  # 004.eml is unusable; user2 was refused
    assert len(server.messages) == 4
    rows = list(csv.DictReader(io.StringIO(report.read_text())))
    assert [Path(row["source"]).name for row in rows] == [f"{n:03}.eml" for n in range(1, 7)]
    statuses = [row["status"] for row in rows]
    assert statuses == ["accepted", "refused", "accepted", "not sent", "accepted", "accepted"]
    assert rows[1]["code"] == "550" and rows[1]["enhanced_status"] == "5.1.1"
    assert rows[1]["refused"] == "user2@example.test: 550 5.1.1 Unknown"
    assert "no recipients" in rows[3]["detail"]
    assert rows[0]["message_id"] == "<1@example.test>" and rows[0]["attempts"] == "1"
    assert rows[0]["code"] == "250" and "queued as" in rows[0]["detail"]
    # plain lines, since stdout is not a terminal
    assert "\r" not in result.out and "\x1b" not in result.out
    lines = result.out.splitlines()
    assert sum(line.startswith("sent     ") for line in lines) == 4
    assert any(line.startswith("refused  ") and "002.eml" in line for line in lines)
    assert any(line.startswith("not sent ") and "004.eml" in line for line in lines)
    assert lines[-1].startswith("6/6  sent 4  refused 1  not sent 1  retried 0")
    assert "msg/s" in lines[-1]


def test_bulk_mbox_with_json_report(cli: CLI, tmp_path: Path) -> None:
    path = tmp_path / "box.mbox"
    box = mailbox.mbox(path)
    for number in range(1, 4):
        box.add(
            f"From: alice@example.test\nTo: user{number}@example.test\n"
            f"Bcc: hidden@example.test\nSubject: {number}\n\nFrom the mbox {number}\n"
        )
    box.flush()
    box.close()
    server = FakeSMTPServer()
    report = tmp_path / "report.json"
    with serving_in_thread(server) as port:
        result = cli("bulk", str(path), *plain(port, "--report", str(report), "--progress", "none",
                                               "-f", "bounces@example.test"))  # fmt: skip
    assert result.status == 0, result.err
    assert result.out == ""
    assert sorted(m.recipients for m in server.messages) == [
        (f"user{n}@example.test", "hidden@example.test") for n in range(1, 4)
    ]
    assert all(m.sender == "bounces@example.test" for m in server.messages)
    assert all(b"Bcc" not in m.data and b"hidden" not in m.data for m in server.messages)
    document = json.loads(report.read_text())
    assert document["exit_status"] == 0
    assert document["counts"] == {"accepted": 3}
    assert [row["source"] for row in document["messages"]] == [f"{path}#{n}" for n in (1, 2, 3)]


def test_bulk_recipients_given(cli: CLI, tmp_path: Path) -> None:
    write_messages(tmp_path / "out", 2, bcc=True)
    server = FakeSMTPServer()
    with serving_in_thread(server) as port:
        result = cli("bulk", str(tmp_path / "out"), "list@example.test", *plain(port))
    assert result.status == 0, result.err
    assert [m.recipients for m in server.messages] == [("list@example.test",)] * 2
    assert all(b"Bcc" not in m.data for m in server.messages)


def test_bulk_temporary_failures(cli: CLI, tmp_path: Path) -> None:
    write_messages(tmp_path / "out", 3)
    server = FakeSMTPServer(data_reply=(451, "4.3.0 Queue full"))
    report = tmp_path / "r.csv"
    with serving_in_thread(server) as port:
        result = cli("bulk", str(tmp_path / "out"), *plain(port, "--max-retries", "1",
                     "--retry-backoff", "0", "--report", str(report)))  # fmt: skip
    assert result.status == 75
    rows = list(csv.DictReader(io.StringIO(report.read_text())))
    assert [row["attempts"] for row in rows] == ["2", "2", "2"]
    assert {row["status"] for row in rows} == {"refused"}
    assert "retried 3" in result.out.splitlines()[-1]


def test_bulk_only_refused_recipients(cli: CLI, tmp_path: Path) -> None:
    write_messages(tmp_path / "out", 2)
    server = FakeSMTPServer(refuse_recipients={"user1@example.test": (550, "5.1.1 Unknown")})
    with serving_in_thread(server) as port:
        result = cli("bulk", str(tmp_path / "out"), *plain(port))
    assert result.status == 67


def test_bulk_fatal_error_stops_the_run(
    cli: CLI, tmp_path: Path, certs: TestCertificates, cafile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_messages(tmp_path / "out", 5)
    monkeypatch.setenv("TRIO_SENDMAIL_PASSWORD", "wrong")
    server = FakeSMTPServer(ssl_context=certs.server_context, users=USERS)
    report = tmp_path / "r.json"
    with serving_in_thread(server) as port:
        result = cli("bulk", str(tmp_path / "out"), *tls_args(port, cafile, "--user", "alice",
                     "-c", "1", "--report", str(report)))  # fmt: skip
    assert result.status == 77
    assert "authentication failed" in result.err
    document = json.loads(report.read_text())
    assert document["exit_status"] == 77
    assert len(document["messages"]) == 5
    assert {row["status"] for row in document["messages"]} == {"not sent"}


def test_bulk_usage_errors(cli: CLI, tmp_path: Path) -> None:
    write_messages(tmp_path / "out", 1)
    (tmp_path / "empty").mkdir()
    out = str(tmp_path / "out")
    assert cli("bulk", out, "--host", "h.test", "--report", "r.txt").status == 64
    assert cli("bulk", out, "--host", "h.test", "-c", "0").status == 64
    assert cli("bulk", str(tmp_path / "empty"), "--host", "h.test").status == 66
    assert cli("bulk", str(tmp_path / "nope"), "--host", "h.test").status == 66
    assert cli("bulk").status == 64


def test_bulk_exit_status_rule() -> None:
    assert bulk_exit_status({0}) == 0
    assert bulk_exit_status({0, 75}) == 75
    assert bulk_exit_status({0, 75, 67}) == 67
    assert bulk_exit_status({0, 75, 67, 77}) == 69
    assert bulk_exit_status({64}) == 69


# ----------------------------------------------------------------- demo and the entry point


def test_demo(cli: CLI) -> None:
    result = cli("demo")
    assert result.status == 0
    assert "2 messages delivered" in result.out


def test_python_m_trio_sendmail(tmp_path: Path) -> None:
    server = FakeSMTPServer()
    env = subprocess_env(tmp_path)
    with serving_in_thread(server) as port:
        done = subprocess.run(
            [sys.executable, "-m", "trio_sendmail", *plain(port, "-t")],
            input=MESSAGE,
            capture_output=True,
            cwd=REPO,
            env=env,
            timeout=60,
            check=False,
        )
        demo = subprocess.run(
            [sys.executable, "-m", "trio_sendmail", "demo"],
            capture_output=True,
            cwd=REPO,
            env=env,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert server.messages[0].data == MESSAGE
    assert demo.returncode == 0, demo.stderr
    assert b"2 messages delivered; the password appeared nowhere above." in demo.stdout


def test_exit_status_of_a_usage_error_is_an_internal_error() -> None:
    # A call made at the wrong time is a bug in the caller (here, the CLI itself).
    from trio_sendmail import SMTPUsageError
    from trio_sendmail._cli._common import EX_SOFTWARE, exit_status

    code, text = exit_status(SMTPUsageError("the session is not ready"))
    assert code == EX_SOFTWARE
    assert text.startswith("internal error: the session is not ready")
