"""The trio-sendmail command against Postfix (run as a real subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..postfix_plugin import PostfixEnv
from .test_postfix import make_message, new_message_id, unique, wait_for_one

pytestmark = pytest.mark.postfix


def cli(args: list[str], message: bytes, password: str) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, TRIO_SENDMAIL_PASSWORD=password)
    return subprocess.run(
        [sys.executable, "-m", "trio_sendmail", *args],
        input=message, capture_output=True, env=env, timeout=60, check=False,
    )  # fmt: skip


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
