"""Dovecot support: the ``dovecot`` fixture and its settings, :class:`DovecotEnv`.

A pytest plugin, registered by ``pytest_plugins`` in ``tests/conftest.py``. The
Dovecot instance (LMTP on TCP and on a Unix socket, and a submission service
whose AUTH checks OAuth tokens) is started outside pytest, by
``tests/interop/dovecot.sh start``, which writes its settings to
``$DOVECOT_STATE/env.json``. When that file is missing or the instance does
not answer, the tests are skipped, unless ``TRIO_SENDMAIL_REQUIRE_DOVECOT=1``
(set on CI), in which case they fail.
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
    "start it with `bash tests/interop/dovecot.sh start` (needs root), "
    "or set TRIO_SENDMAIL_REQUIRE_DOVECOT=1 to make this a failure"
)


@attrs.frozen
class DovecotEnv:
    """The settings ``dovecot.sh start`` wrote to ``env.json``."""

    state_dir: Path
    host: str
    tls_hostname: str
    lmtp_port: int
    lmtp_socket: Path
    submission_port: int
    oauth_port: int
    relay_port: int
    ca_file: Path
    domain: str
    maildir_base: Path
    full_user: str
    user: str
    password: str
    log_file: Path

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DovecotEnv:
        fields = {field.name: field.type for field in attrs.fields(cls)}
        values: dict[str, Any] = {}
        for name, kind in fields.items():
            raw = data[name]
            values[name] = (
                int(raw)
                if kind in ("int", int)
                else (Path(str(raw)) if kind in ("Path", Path) else str(raw))
            )
        return cls(**values)

    def address(self, local: str) -> str:
        return f"{local}@{self.domain}"

    def maildir(self, local: str) -> Path:
        """Where Dovecot delivers *local*'s new messages."""
        return self.maildir_base / local / "Maildir" / "new"


def env_json_path() -> Path:
    explicit = os.environ.get("DOVECOT_ENV_JSON")
    if explicit:
        return Path(explicit)
    state = os.environ.get("DOVECOT_STATE") or os.path.join(
        os.environ.get("TMPDIR") or "/tmp", "trio_sendmail_dovecot"
    )
    return Path(state) / "env.json"


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("TRIO_SENDMAIL_REQUIRE_DOVECOT") == "1":
        pytest.fail(
            f"Dovecot interop tests required (TRIO_SENDMAIL_REQUIRE_DOVECOT=1) but {reason}",
            pytrace=False,
        )
    pytest.skip(f"Dovecot test instance not available: {reason}; {START_HINT}")


def _check_reachable(env: DovecotEnv) -> str | None:
    """None when LMTP (TCP and socket) and submission greet."""
    for port in (env.lmtp_port, env.submission_port):
        try:
            with socket.create_connection((env.host, port), timeout=5) as sock:
                sock.settimeout(10)
                greeting = sock.recv(512)
                if not greeting.startswith(b"220 "):
                    return f"{env.host}:{port} greeted with {greeting!r}"
                sock.sendall(b"QUIT\r\n")
        except OSError as exc:
            return f"{env.host}:{port} is not reachable ({exc})"
    if not env.lmtp_socket.is_socket():
        return f"{env.lmtp_socket} is not a socket"
    return None


@pytest.fixture(scope="session")
def dovecot() -> DovecotEnv:
    """The running Dovecot test instance, or skip (fail on CI) when there is none."""
    path = env_json_path()
    if not path.is_file():
        _unavailable(f"{path} does not exist")
    env = DovecotEnv.from_json(json.loads(path.read_text(encoding="utf-8")))
    problem = _check_reachable(env)
    if problem is not None:
        _unavailable(f"the instance described by {path} is not running: {problem}")
    return env
