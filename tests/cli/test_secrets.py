"""The command line never prints a secret, and refuses one it cannot send before connecting.

* A password that is not valid UTF-8 (a Latin-1 byte in an environment variable, which
  Python reads as a lone surrogate such as ``"\\udce9"``) is a configuration error (78)
  that names where the password came from, shows nothing of it, and opens no connection.
* A malformed netrc file is reported by file and line only: Python's parser quotes the
  offending token, which may be (part of) a password.

The server is a loopback socket that never accepts: a connection to it would sit in its
backlog, so each test can tell that none was opened.
"""

from __future__ import annotations

import locale
import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import trio_sendmail._cli._send as cli_module

from ..cli_support import CLI, Run, in_process

REPO = Path(__file__).resolve().parents[2]
MESSAGE = b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nHello.\r\n"
#: The parts of the secrets below that must never show.
SECRET_PARTS = ("SeCrEt", "tail-of-it", "horse-battery", "\udce9", "\\udce9", "\xe9")
UNENCODABLE = "SeCrEt-\udce9-tail-of-it"  # os.environ's view of the bytes b"SeCrEt-\xe9-..."


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> CLI:
    return in_process(monkeypatch, capsys, MESSAGE)


@pytest.fixture
def port() -> Iterator[int]:
    """A loopback port that never accepts; after the test, no connection may be queued."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    try:
        yield sock.getsockname()[1]
        with pytest.raises(BlockingIOError):
            sock.accept()  # nobody connected
    finally:
        sock.close()


def server(port: int, *more: str) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(port), "--tls", "starttls", "--timeout", "1",
            "--user", "alice", *more]  # fmt: skip


def assert_no_secret(result: Run, *, internal_error: bool = False) -> None:
    for part in SECRET_PARTS:
        assert part not in result.out + result.err, (part, result)
    assert ("internal error" in result.err) is internal_error


def private_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


# ------------------------------------------------------------ passwords that cannot be sent


@pytest.mark.parametrize("debug", [False, True], ids=["quiet", "debug"])
@pytest.mark.parametrize("command", ["send", "bulk"])
def test_unencodable_password_from_the_environment(
    cli: CLI,
    port: int,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    command: str,
    debug: bool,
) -> None:
    monkeypatch.setenv("TRIO_SENDMAIL_PASSWORD", UNENCODABLE)
    argv = server(port, "-f", "alice@example.test", *(["--debug"] if debug else []))
    if command == "bulk":
        folder = tmp_path / "mails"
        folder.mkdir()
        (folder / "1.eml").write_bytes(MESSAGE)
        result = cli("bulk", *argv, "--progress", "none", str(folder))
    else:
        result = cli(*argv, "bob@example.test")
    assert result.status == 78, result
    assert "environment variable TRIO_SENDMAIL_PASSWORD is not valid UTF-8" in result.err
    assert_no_secret(result)


def test_unencodable_password_from_a_named_variable(
    cli: CLI, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_SMTP_SECRET", UNENCODABLE)
    result = cli(*server(port, "--password-env", "MY_SMTP_SECRET", "bob@example.test"))
    assert result.status == 78
    assert "environment variable MY_SMTP_SECRET is not valid UTF-8" in result.err
    assert_no_secret(result)


def test_unencodable_password_from_a_command(cli: CLI, port: int) -> None:
    """The command's output was decoded with "replace": the password was silently
    changed. Now the bytes that are not UTF-8 are reported, and not shown."""
    code = "import sys; sys.stdout.buffer.write(b'SeCrEt-\\xe9-tail-of-it\\n')"
    command = shlex.join([sys.executable, "-c", code])
    result = cli(*server(port, "--password-command", command, "bob@example.test"))
    assert result.status == 78
    assert "the password command" in result.err and "not valid UTF-8" in result.err
    assert_no_secret(result)


@pytest.mark.parametrize("token", [UNENCODABLE, "SeCrEt tail-of-it"], ids=["latin1", "space"])
def test_oauth_token_that_cannot_be_sent(
    cli: CLI, port: int, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    monkeypatch.setenv("MY_TOKEN", token)
    result = cli(*server(port, "--auth", "xoauth2", "--password-env", "MY_TOKEN", "b@x.test"))
    assert result.status == 78
    assert_no_secret(result)


def test_unencodable_user_name(cli: CLI, port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIO_SENDMAIL_PASSWORD", "pw")
    result = cli(*server(port, "--user", "al\udce9ce", "bob@example.test"))
    assert result.status == 64
    assert "username cannot be encoded as UTF-8" in result.err
    assert_no_secret(result)


def test_an_unexpected_unicode_error_does_not_echo_its_text(
    cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: a codec error quotes the character it could not convert, and
    its value may be a secret; the one-line report shows only the reason."""

    async def broken(*args: object) -> None:
        raise UnicodeEncodeError("utf-8", UNENCODABLE, 7, 8, "surrogates not allowed")

    monkeypatch.setattr(cli_module, "_submit", broken)
    result = cli("--host", "h.test", "b@x.test")
    assert result.status == 70
    assert result.err == (
        "trio-sendmail: internal error: UnicodeEncodeError: surrogates not allowed "
        "(run with --debug)\n"
    )
    assert_no_secret(result, internal_error=True)


def test_unencodable_password_in_a_real_environment(tmp_path: Path) -> None:
    """``python -m trio_sendmail`` with a Latin-1 byte in the variable's raw bytes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    env = {key: value for key, value in os.environ.items() if key != "XDG_CONFIG_HOME"}
    env.update(HOME=str(tmp_path), PYTHONUTF8="1", COLUMNS="80")
    env_bytes = {os.fsencode(key): os.fsencode(value) for key, value in env.items()}
    env_bytes[b"TRIO_SENDMAIL_PASSWORD"] = b"SeCrEt-\xe9-tail-of-it"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "trio_sendmail",
             *server(sock.getsockname()[1], "bob@example.test")],
            input=MESSAGE, capture_output=True, cwd=REPO, env=env_bytes,
            timeout=60, check=False,
        )  # fmt: skip
        with pytest.raises(BlockingIOError):
            sock.accept()
    finally:
        sock.close()
    assert done.returncode == 78, done.stderr
    for part in (b"SeCrEt", b"tail-of-it", b"\xe9", b"udce9"):
        assert part not in done.stdout + done.stderr


# ------------------------------------------------------------ malformed netrc


@pytest.mark.parametrize(
    ("content", "line"),
    [
        # A password with a space: Python says "bad follower token 'horse-battery…'".
        (b"machine 127.0.0.1 login alice password correct horse-battery-SeCrEt\n", 1),
        # A stray token where a keyword should be: "bad toplevel token 'SeCrEt…'".
        (b"default login alice password x\nSeCrEt-tail-of-it\n", 2),
        (b"machine other.test login bob password ok\n"
         b"machine 127.0.0.1 login alice passwd SeCrEt-tail-of-it\n", 2),
    ],
    ids=["space-in-password", "stray-token", "bad-keyword"],
)  # fmt: skip
@pytest.mark.parametrize("debug", [False, True], ids=["quiet", "debug"])
def test_malformed_netrc_shows_file_and_line_only(
    cli: CLI, port: int, isolated_home: Path, content: bytes, line: int, debug: bool
) -> None:
    netrc = private_file(isolated_home / ".netrc", content)
    result = cli(*server(port, *(["--debug"] if debug else []), "bob@example.test"))
    assert result.status == 78, result
    assert f"malformed netrc file {netrc}, line {line} " in result.err
    assert "content is not shown" in result.err
    assert_no_secret(result)
    assert "follower" not in result.err and "toplevel" not in result.err  # not the parser's


def test_netrc_that_is_not_text(cli: CLI, port: int, isolated_home: Path) -> None:
    content = b"machine 127.0.0.1 login alice password SeCrEt-\xff\xfe-tail-of-it\n"
    try:  # Python's netrc falls back to the locale's encoding when UTF-8 fails
        content.decode(locale.getencoding())
    except UnicodeDecodeError:
        pass
    else:
        pytest.skip(f"the locale's encoding ({locale.getencoding()}) reads any byte")
    netrc = private_file(isolated_home / ".netrc", content)
    result = cli(*server(port, "bob@example.test"))
    assert result.status == 78, result
    assert f"netrc file {netrc} is not valid text" in result.err
    assert_no_secret(result)
    assert "\xff" not in result.err and "0xff" not in result.err
