"""Postfix support: the ``postfix`` fixture and its settings, :class:`PostfixEnv`.

A pytest plugin, registered once by ``pytest_plugins`` in ``tests/conftest.py``, so
that the interop suite (``tests/interop/``) and the hardening suite
(``tests/hardening/``) both use it without one conftest importing the other.

The Postfix instance is started outside pytest, by ``tests/interop/postfix.sh
start``, which writes its settings to ``$POSTFIX_STATE/env.json``. When that
file is missing or the instance does not answer, the tests are skipped, unless
``TRIO_SENDMAIL_REQUIRE_POSTFIX=1`` (set on CI), in which case they fail.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any, NoReturn

import attrs
import pytest

START_HINT = (
    "start it with `bash tests/interop/postfix.sh start` (needs root), "
    "or set TRIO_SENDMAIL_REQUIRE_POSTFIX=1 to make this a failure"
)
GREETING_MARK = b"trio_sendmail test instance"


@attrs.frozen
class PostfixEnv:
    """The settings ``postfix.sh start`` wrote to ``env.json`` (see tests/interop/README.md)."""

    state_dir: Path
    host: str
    host6: str
    tls_hostname: str
    plain_port: int
    submission_port: int
    smtps_port: int
    ca_file: Path
    domain: str
    maildir_base: Path
    user: str
    password: str
    utf8_user: str
    utf8_password: str
    size_limit: int
    log_file: Path

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PostfixEnv:
        return cls(
            state_dir=Path(str(data["state_dir"])),
            host=str(data["host"]),
            host6=str(data["host6"]),
            tls_hostname=str(data["tls_hostname"]),
            plain_port=int(data["plain_port"]),
            submission_port=int(data["submission_port"]),
            smtps_port=int(data["smtps_port"]),
            ca_file=Path(str(data["ca_file"])),
            domain=str(data["domain"]),
            maildir_base=Path(str(data["maildir_base"])),
            user=str(data["user"]),
            password=str(data["password"]),
            utf8_user=str(data["utf8_user"]),
            utf8_password=str(data["utf8_password"]),
            size_limit=int(data["size_limit"]),
            log_file=Path(str(data["log_file"])),
        )

    def address(self, local: str) -> str:
        return f"{local}@{self.domain}"


def env_json_path() -> Path:
    """Where ``postfix.sh`` writes its settings (not ``tempfile.gettempdir()``)."""
    explicit = os.environ.get("POSTFIX_ENV_JSON")
    if explicit:
        return Path(explicit)
    state = os.environ.get("POSTFIX_STATE") or os.path.join(
        os.environ.get("TMPDIR") or "/tmp", "trio_sendmail_postfix"
    )
    return Path(state) / "env.json"


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("TRIO_SENDMAIL_REQUIRE_POSTFIX") == "1":
        pytest.fail(
            f"Postfix interop tests required (TRIO_SENDMAIL_REQUIRE_POSTFIX=1) but {reason}",
            pytrace=False,
        )
    pytest.skip(f"Postfix test instance not available: {reason}; {START_HINT}")


def _check_reachable(env: PostfixEnv) -> str | None:
    """None when every port accepts a connection and the plain port greets as ours."""
    for port in (env.plain_port, env.submission_port, env.smtps_port):
        try:
            with socket.create_connection((env.host, port), timeout=5) as sock:
                if port == env.plain_port:
                    sock.settimeout(10)
                    greeting = sock.recv(512)
                    if not greeting.startswith(b"220 ") or GREETING_MARK not in greeting:
                        return (
                            f"{env.host}:{port} greeted with {greeting!r}, not the test instance"
                        )
                    sock.sendall(b"QUIT\r\n")
        except OSError as exc:
            return f"{env.host}:{port} is not reachable ({exc})"
    return None


@pytest.fixture(scope="session")
def postfix() -> PostfixEnv:
    """The running Postfix test instance, or skip (fail on CI) when there is none."""
    path = env_json_path()
    if not path.is_file():
        _unavailable(f"{path} does not exist")
    env = PostfixEnv.from_json(json.loads(path.read_text(encoding="utf-8")))
    problem = _check_reachable(env)
    if problem is not None:
        _unavailable(f"the instance described by {path} is not running: {problem}")
    return env
