"""The trio-sendmail command against Postfix (run as a real subprocess), with the
real callers: Vixie cron's argv, mutt in batch mode, and msmtp for comparison.

The delivered Maildir files are checked byte for byte: this Postfix adds no header
field of its own to the message (only Return-Path, Delivered-To and Received in
front, see ``split_delivered``), so what follows them is exactly what the command
sent, with LF line ends. The delivered bytes of the cron-style invocation (ours and
msmtp's) are also written to ``$TRIO_SENDMAIL_CLI_REPORT`` (default
``/tmp/cli_report``) for the record.

mutt and msmtp come from Debian (``apt-get install mutt msmtp``); without them their
tests are skipped, unless ``TRIO_SENDMAIL_REQUIRE_POSTFIX=1``, which makes that a
failure.
"""

from __future__ import annotations

import email.utils
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from ..cli_support import PROGRAM, subprocess_env
from ..postfix_plugin import PostfixEnv
from .test_postfix import Delivered, make_message, new_message_id, unique, wait_for_one

pytestmark = pytest.mark.postfix

REPORT_DIR = Path(os.environ.get("TRIO_SENDMAIL_CLI_REPORT") or "/tmp/cli_report")
CRON_ARGV = ["-FCronDaemon", "-odi", "-oem", "-oi", "-t"]


def cli(args: list[str], message: bytes, password: str) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, TRIO_SENDMAIL_PASSWORD=password)
    return subprocess.run(
        [sys.executable, "-m", "trio_sendmail", *args],
        input=message, capture_output=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def need(program: str) -> str:
    """The path of *program*, or skip (fail with TRIO_SENDMAIL_REQUIRE_POSTFIX=1)."""
    path = shutil.which(program)
    if path is not None:
        return path
    reason = f"{program} is not installed (apt-get install -y mutt msmtp)"
    if os.environ.get("TRIO_SENDMAIL_REQUIRE_POSTFIX") == "1":
        pytest.fail(f"required (TRIO_SENDMAIL_REQUIRE_POSTFIX=1) but {reason}", pytrace=False)
    pytest.skip(reason)


def cron_message(local: str, marker: str) -> bytes:
    """What Vixie cron writes to sendmail: LF line ends, bare local names, no Date
    and no Message-ID (*marker* in the body tells the runs apart)."""
    return (
        "From: root (Cron Daemon)\n"
        f"To: {local}\n"
        "Subject: Cron <root@box> /usr/local/bin/backup\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=UTF-8\n"
        "Content-Transfer-Encoding: 8bit\n"
        "X-Cron-Env: <SHELL=/bin/sh>\n"
        "X-Cron-Env: <HOME=/root>\n"
        "X-Cron-Env: <LOGNAME=root>\n"
        "\n"
        f"backup {marker}: 3 files copied\n"
        ".hidden skipped\n"
        "Grüße aus cron\n"
    ).encode()


async def run(
    command: list[str], stdin: bytes, env: dict[str, str]
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(60):
        return await trio.run_process(
            command, stdin=stdin, capture_stdout=True, capture_stderr=True, env=env,
            check=False,
        )  # fmt: skip


def save(name: str, delivered: Delivered) -> None:
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / name).write_bytes(delivered.path.read_bytes())


def split_added(message: bytes, sent: bytes) -> list[bytes]:
    """The header lines added between *sent*'s header block and its body, checking
    that everything else of *message* is *sent* byte for byte."""
    head, body = sent.split(b"\n\n", 1)
    assert message.startswith(head + b"\n"), message
    assert message.endswith(b"\n\n" + body), message
    return message[len(head) + 1 : len(message) - len(body) - 2].split(b"\n")


def check_added(added: list[bytes], domain: str) -> str:
    """Date and Message-ID, in that order and well formed; return the Message-ID."""
    assert [line.split(b": ")[0] for line in added] == [b"Date", b"Message-ID"], added
    assert email.utils.parsedate_to_datetime(added[0][len(b"Date: ") :].decode())
    match = re.fullmatch(rb"Message-ID: (<\d{14}\.[0-9a-f]{16}@([^>]+)>)", added[1])
    assert match is not None and match[2].decode() == domain, added[1]
    return match[1].decode()


def profile(postfix: PostfixEnv, home: Path, **extra: str) -> Path:
    """An account for Postfix's submission port in *home*'s default profile file,
    as a cron user would have it (the password from the environment)."""
    lines = [
        "[accounts.default]",
        f'host = "{postfix.tls_hostname}"',
        f"port = {postfix.submission_port}",
        f'cafile = "{postfix.ca_file}"',
        f'user = "{postfix.user}"',
        *(f'{key} = "{value}"' for key, value in extra.items()),
    ]
    path = home / ".config" / "trio-sendmail" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
async def test_send_with_the_command(postfix: PostfixEnv, tls: str) -> None:
    local = unique(f"cli-{tls}")
    rcpt = postfix.address(local)
    hidden = postfix.address(unique("cli-bcc"))
    mid = new_message_id(postfix)
    message = make_message(sender=postfix.user, to=rcpt, message_id=mid, subject="cli")
    message = message.replace(b"\r\n\r\n", f"\r\nBcc: {hidden}\r\n\r\n".encode(), 1)
    port = postfix.smtps_port if tls == "implicit" else postfix.submission_port
    done = cli(
        ["-t", "-f", postfix.user, "--host", postfix.tls_hostname, "--port", str(port),
         "--tls", tls, "--cafile", str(postfix.ca_file), "--user", postfix.user,
         "--transcript"],
        message, postfix.password,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    transcript = done.stderr.decode() + done.stdout.decode()
    assert "AUTH" in transcript and postfix.password not in transcript
    delivered = await wait_for_one(postfix, local, mid)
    assert b"Bcc:" not in delivered.message  # stripped, as sendmail -t does
    await wait_for_one(postfix, hidden.split("@")[0], mid)  # but the Bcc got it


def test_exit_codes(postfix: PostfixEnv, tmp_path: Path) -> None:
    rcpt = postfix.address(unique("reject-cli"))
    message = make_message(
        sender=postfix.user, to=rcpt, message_id=new_message_id(postfix), subject="x"
    )
    base = ["-f", postfix.user, "--host", postfix.tls_hostname, "--port",
            str(postfix.smtps_port), "--tls", "implicit", "--cafile", str(postfix.ca_file),
            "--user", postfix.user]  # fmt: skip
    refused = cli([*base, rcpt], message, postfix.password)
    assert refused.returncode == 67, refused.stderr  # EX_NOUSER
    wrong = cli([*base, postfix.address("x")], message, "wrong password")
    assert wrong.returncode == 77, wrong.stderr  # EX_NOPERM
    assert b"wrong password" not in wrong.stderr + wrong.stdout
    later = cli([*base, postfix.address(unique("tempfail-cli"))], message, postfix.password)
    assert later.returncode == 75, later.stderr  # EX_TEMPFAIL


async def test_cron_invocation_with_a_domain(postfix: PostfixEnv, tmp_path: Path) -> None:
    """Vixie cron's argv and message; ``domain`` qualifies root and the recipient.
    Delivered: cron's bytes, plus Date and Message-ID at the end of the header."""
    home = tmp_path / "home"
    home.mkdir()
    profile(postfix, home, domain=postfix.domain)
    local = unique("cron")
    sent = cron_message(local, "with-domain")
    log = tmp_path / "send.log"
    env = subprocess_env(home, TRIO_SENDMAIL_PASSWORD=postfix.password)
    done = await run([*PROGRAM, *CRON_ARGV, "--log", str(log)], sent, env)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    delivered = await wait_for_one(postfix, local)
    message_id = check_added(split_added(delivered.message, sent), postfix.domain)
    assert delivered.return_path == f"<root@{postfix.domain}>"
    assert delivered.delivered_to == postfix.address(local)
    assert " with ESMTPSA " in delivered.received  # STARTTLS and AUTH, from port 10587
    line = log.read_text()
    assert f"message_id={message_id} from=root@{postfix.domain} " in line
    assert f"recipients={postfix.address(local)} outcome=accepted exitcode=0" in line
    assert postfix.password not in line
    save("cron-trio-sendmail-domain.eml", delivered)


async def test_cron_invocation_and_msmtp_deliver_the_same(
    postfix: PostfixEnv, tmp_path: Path
) -> None:
    """The same cron input through our command and through msmtp 1.8, configured
    alike (the account's from, no domain): both send ``RCPT TO:<local>`` for Postfix
    to complete, both add Date and Message-ID, neither adds From (cron wrote one)."""
    msmtp = need("msmtp")
    home = tmp_path / "home"
    home.mkdir()
    sender = f"root@{postfix.domain}"
    profile(postfix, home, **{"from": sender})
    ours_local, theirs_local = unique("cron-ours"), unique("cron-msmtp")
    ours_sent = cron_message(ours_local, "compare")
    theirs_sent = cron_message(theirs_local, "compare")
    env = subprocess_env(home, TRIO_SENDMAIL_PASSWORD=postfix.password)
    ours = await run([*PROGRAM, *CRON_ARGV, "--transcript"], ours_sent, env)
    assert ours.returncode == 0, ours.stderr.decode()
    assert f"C: RCPT TO:<{ours_local}>" in ours.stderr.decode()  # completed by Postfix
    msmtprc = tmp_path / "msmtprc"
    msmtprc.write_text(
        f"account default\nhost {postfix.tls_hostname}\nport {postfix.submission_port}\n"
        f"tls on\ntls_starttls on\ntls_trust_file {postfix.ca_file}\nauth on\n"
        f"user {postfix.user}\npassword {postfix.password}\nfrom {sender}\n"
    )
    msmtprc.chmod(0o600)
    theirs = await run([msmtp, "-C", str(msmtprc), *CRON_ARGV], theirs_sent, env)
    assert theirs.returncode == 0, theirs.stderr.decode()
    ours_delivered = await wait_for_one(postfix, ours_local)
    theirs_delivered = await wait_for_one(postfix, theirs_local)
    save("cron-trio-sendmail.eml", ours_delivered)
    save("cron-msmtp.eml", theirs_delivered)
    check_added(split_added(ours_delivered.message, ours_sent), postfix.domain)
    assert ours_delivered.return_path == theirs_delivered.return_path == f"<{sender}>"
    # msmtp adds the same two fields (its own formats), in front of the header.
    theirs_head = theirs_delivered.message.split(b"\n\n", 1)[0].split(b"\n")
    cron_head = theirs_sent.split(b"\n\n", 1)[0].split(b"\n")
    theirs_added = theirs_head[: len(theirs_head) - len(cron_head)]
    assert theirs_head[len(theirs_added) :] == cron_head
    assert [line.split(b":")[0] for line in theirs_added] == [b"Date", b"Message-ID"]
    assert (
        ours_delivered.message.split(b"\n\n", 1)[1]
        == theirs_delivered.message.split(b"\n\n", 1)[1]
    )  # the same body, dots and 8-bit text intact


async def test_mutt_in_batch_mode(postfix: PostfixEnv, tmp_path: Path) -> None:
    """mutt with ``set sendmail=".../trio-sendmail -oem -oi"``: its message arrives
    exactly as mutt wrote it (a wrapper records mutt's argv and bytes on the way)."""
    mutt = need("mutt")
    home = tmp_path / "home"
    home.mkdir()
    profile(postfix, home, **{"from": postfix.user})
    capture, argv = tmp_path / "mutt-message", tmp_path / "mutt-argv"
    wrapper = tmp_path / "sendmail-wrapper"
    wrapper.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > {argv}\ntee {capture} | exec {" ".join(PROGRAM)} "$@"\n'
    )
    wrapper.chmod(0o755)
    muttrc = tmp_path / "muttrc"
    muttrc.write_text(
        f'set sendmail="{wrapper} -oem -oi"\n'
        f'set from="Mutt User <{postfix.user}>"\nset use_from=yes\nset record=""\n'
        'set charset="utf-8"\nset send_charset="us-ascii:utf-8"\nset copy=no\n'
        f'set folder="{tmp_path}"\nset spoolfile="{tmp_path}/spool"\n'
    )
    local = unique("mutt")
    done = await run(
        [mutt, "-n", "-F", str(muttrc), "-s", "from mutt", "--", postfix.address(local)],
        "Hello from mutt.\n.a dotted line\nGrüße\n".encode(),
        subprocess_env(home, TRIO_SENDMAIL_PASSWORD=postfix.password),
    )
    assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()
    assert argv.read_text().split("\n")[:2] == ["-oem", "-oi"]
    assert postfix.address(local) in argv.read_text()
    delivered = await wait_for_one(postfix, local)
    written = capture.read_bytes()
    assert b"\nMessage-ID: " in b"\n" + written and b"\nDate: " in b"\n" + written
    assert delivered.message == written.replace(b"\r\n", b"\n")  # nothing added
    assert delivered.return_path == f"<{postfix.user}>"
    assert b".a dotted line\n" in delivered.message
    save("mutt-trio-sendmail.eml", delivered)
    # And with no wrapper: set sendmail="<venv>/bin/trio-sendmail -oem -oi".
    direct = tmp_path / "muttrc-direct"
    direct.write_text(
        muttrc.read_text().replace(f'"{wrapper} -oem -oi"', f'"{" ".join(PROGRAM)} -oem -oi"')
    )
    local = unique("mutt-direct")
    done = await run(
        [mutt, "-n", "-F", str(direct), "-s", "direct", "--", postfix.address(local)],
        b"Straight from mutt.\n",
        subprocess_env(home, TRIO_SENDMAIL_PASSWORD=postfix.password),
    )
    assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()
    delivered = await wait_for_one(postfix, local)
    assert b"\nSubject: direct\n" in delivered.message
    assert delivered.message.endswith(b"\n\nStraight from mutt.\n")


async def test_wrong_tls_mode_fails_fast_with_a_hint(postfix: PostfixEnv, tmp_path: Path) -> None:
    """Postfix's implicit-TLS port (10465) says nothing to a STARTTLS client: after
    the short first bound, 69 and ``try --tls implicit`` (not 75 after 5 minutes).
    The other way round, its submission port answers a ClientHello in plain text."""
    assert str(postfix.smtps_port).endswith("465"), (
        "the CLI takes a port ending in 465 for an implicit-TLS one: start Postfix "
        "with such an smtps port (tests/interop/free_ports.py --ending 465)"
    )
    home = tmp_path / "home"
    home.mkdir()
    env = subprocess_env(home, TRIO_SENDMAIL_PASSWORD=postfix.password)
    never = postfix.address(unique("never"))
    base = ["--host", postfix.tls_hostname, "--cafile", str(postfix.ca_file),
            "--user", postfix.user, "-f", postfix.user, never]  # fmt: skip
    message = b"Subject: never sent\n\nx\n"
    silent = await run([*PROGRAM, *base, "--port", str(postfix.smtps_port), "--tls", "starttls"],
                       message, env)  # fmt: skip
    assert silent.returncode == 69, silent.stderr
    assert b"looks like implicit TLS" in silent.stderr and b"try --tls implicit" in silent.stderr
    plaintext = await run(
        [*PROGRAM, *base, "--port", str(postfix.submission_port), "--tls", "implicit"],
        message, env,
    )  # fmt: skip
    assert plaintext.returncode == 69, plaintext.stderr
    assert b"try --tls starttls" in plaintext.stderr


async def test_serverinfo(postfix: PostfixEnv, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    profile(postfix, home, password_command=f"touch {tmp_path / 'ran'}; echo x")
    done = await run([*PROGRAM, "--serverinfo"], b"", subprocess_env(home))
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert re.search(r"^greeting +220 .*trio_sendmail test instance$", out, re.MULTILINE), out
    assert re.search(r"^tls +starttls \(on\)$", out, re.MULTILINE)
    assert re.search(r"^capability +AUTH( \S+)* PLAIN", out, re.MULTILINE), out
    assert re.search(r"^certificate names +.*\blocalhost\b", out, re.MULTILINE), out
    assert re.search(r"^certificate expires +\w{3} +\d+ [\d:]+ \d{4} GMT$", out, re.MULTILINE)
    assert not (tmp_path / "ran").exists()  # no AUTH: the password command never ran
