"""The TOML profile files: the system-wide one, then the user's; the chosen account.

The system-wide file (``/etc/trio-sendmail.toml``, or ``$TRIO_SENDMAIL_SYSTEM_CONFIG``)
is read before the user's (``-C FILE``, else the XDG location), as msmtp reads
``/etc/msmtprc`` before ``~/.msmtprc``. A file that holds a ``password`` must be
private; one that holds a ``password_command`` must not be writable by others
(the command runs as the user, through the shell).
"""

from __future__ import annotations

import fnmatch
import os
import shlex
import stat
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from ._common import EX_CONFIG, PROG, TLS_CHOICES, CLIError

__all__ = [
    "ACCOUNT_KEYS",
    "SYSTEM_CONFIG",
    "SYSTEM_CONFIG_ENV",
    "Profile",
    "check_private",
    "default_config_path",
    "load_account",
    "read_file",
    "system_config_path",
]

#: The system-wide profile file, read before the user's.
SYSTEM_CONFIG = "/etc/trio-sendmail.toml"
#: The environment variable that overrides :data:`SYSTEM_CONFIG`.
SYSTEM_CONFIG_ENV = "TRIO_SENDMAIL_SYSTEM_CONFIG"

#: Keys an account (or ``[defaults]``) may hold, with their type.
ACCOUNT_KEYS: Mapping[str, type | tuple[type, ...]] = {
    "host": str,
    "port": int,
    "tls": str,
    "cafile": str,
    "helo": str,
    "from": str,
    "user": str,
    "auth": str,
    "password": str,
    "password_command": str,
    "password_env": str,
    "netrc_file": str,
    "timeout": (int, float),
    "insecure_plaintext_auth": bool,
    "dsn_notify": str,
    "dsn_return": str,
    "domain": str,
    "log": str,
}


def default_config_path() -> Path:
    """``$XDG_CONFIG_HOME/trio-sendmail/config.toml``, else ``~/.config/…``."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "trio-sendmail" / "config.toml"


def system_config_path() -> Path:
    """The system-wide profile file, read before the user's (``$TRIO_SENDMAIL_SYSTEM_CONFIG``
    overrides its location, for tests and unusual layouts)."""
    return Path(os.environ.get(SYSTEM_CONFIG_ENV) or SYSTEM_CONFIG)


def check_private(path: Path, st: os.stat_result, what: str, *, system: bool = False) -> None:
    """Refuse a file holding secrets that others can read or that someone else owns
    (the system file may belong to root)."""
    if os.name != "posix":  # pragma: no cover - POSIX permissions only
        return
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise CLIError(
            EX_CONFIG,
            f"{what} {path} contains a password but is accessible by group/others "
            f"(mode {mode:04o}); run: chmod 600 {shlex.quote(str(path))}",
        )
    if st.st_uid != os.getuid() and not (system and st.st_uid == 0):
        raise CLIError(EX_CONFIG, f"{what} {path} contains a password but is not owned by you")


def _check_not_writable(path: Path, st: os.stat_result, *, system: bool) -> None:
    """Refuse a file with a ``password_command`` that someone else could change: the
    command runs as you, through the shell."""
    if os.name != "posix":  # pragma: no cover - POSIX permissions only
        return
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise CLIError(
            EX_CONFIG,
            f"config file {path} has a password_command but is writable by group/others "
            f"(mode {mode:04o}); run: chmod go-w {shlex.quote(str(path))}",
        )
    if st.st_uid != os.getuid() and st.st_uid != 0:
        owner = "you or root" if system else "you (or root)"
        raise CLIError(
            EX_CONFIG,
            f"config file {path} has a password_command but is not owned by {owner}",
        )


def read_file(path: Path, what: str) -> tuple[bytes, os.stat_result]:
    """The bytes of *path* and the status of the very file they were read from."""
    try:
        with open(path, "rb") as file:
            st = os.fstat(file.fileno())
            return file.read(), st
    except OSError as exc:
        raise CLIError(EX_CONFIG, f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def _tables(document: Mapping[str, Any]) -> list[object]:
    tables: list[object] = [document.get("defaults")]
    accounts = document.get("accounts")
    if isinstance(accounts, Mapping):
        tables.extend(accounts.values())
    return tables


def _contains(document: Mapping[str, Any], key: str) -> bool:
    return any(isinstance(table, Mapping) and key in table for table in _tables(document))


def _check_table(table: object, where: str, path: Path) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise CLIError(EX_CONFIG, f"{path}: {where} must be a table")
    for key, value in table.items():
        expected = ACCOUNT_KEYS.get(key)
        if expected is None:
            known = ", ".join(ACCOUNT_KEYS)
            raise CLIError(EX_CONFIG, f"{path}: unknown key {key!r} in {where} (known: {known})")
        wrong_bool = isinstance(value, bool) and expected is not bool
        if not isinstance(value, expected) or wrong_bool:
            raise CLIError(EX_CONFIG, f"{path}: {key} in {where} has the wrong type")
    if "tls" in table and table["tls"] not in TLS_CHOICES:
        raise CLIError(
            EX_CONFIG, f"{path}: tls in {where} must be one of {', '.join(TLS_CHOICES)}"
        )
    return dict(table)


@attrs.frozen
class _Document:
    path: Path
    defaults: dict[str, Any]
    accounts: dict[str, dict[str, Any]]
    default_name: str | None


def _load_document(path: Path, *, system: bool) -> _Document:
    raw, st = read_file(path, "config file")
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CLIError(EX_CONFIG, f"{path}: invalid TOML: {exc}") from exc
    if _contains(document, "password"):
        check_private(path, st, "config file", system=system)
    if _contains(document, "password_command"):
        _check_not_writable(path, st, system=system)
    unknown = set(document) - {"default", "defaults", "accounts"}
    if unknown:
        raise CLIError(
            EX_CONFIG, f"{path}: unknown top-level key(s): {', '.join(sorted(unknown))}"
        )
    defaults = _check_table(document.get("defaults", {}), "[defaults]", path)
    accounts = document.get("accounts", {})
    if not isinstance(accounts, Mapping):
        raise CLIError(EX_CONFIG, f"{path}: accounts must be a table of tables")
    checked = {
        str(name): _check_table(table, f"[accounts.{name}]", path)
        for name, table in accounts.items()
    }
    default_name = document.get("default")
    if default_name is not None and not isinstance(default_name, str):
        raise CLIError(EX_CONFIG, f"{path}: default must be the name of an account")
    return _Document(path, defaults, checked, default_name)


@attrs.frozen
class Profile:
    """The chosen account, merged over ``[defaults]``, and where it came from."""

    #: The account's keys (``[defaults]`` of the system file, then of the user's
    #: file, then the account's own table).
    values: dict[str, Any]
    #: The account's name, or ``None`` for ``[defaults]`` alone (or no file).
    name: str | None
    #: The files read, system-wide first.
    files: tuple[Path, ...]
    #: Why this account: ``"--account"``, ``"default"``, ``"from address"``.
    reason: str = ""


def _sender_matches(pattern: str, sender: str) -> bool:
    return fnmatch.fnmatchcase(sender.lower(), pattern.lower())


def load_account(path: Path | None, account: str | None, sender: str | None = None) -> Profile:
    """Read the system-wide and the user's profile files; return the chosen account
    merged over ``[defaults]``.

    *path* ``None`` means the user's default location, which may be missing (then
    there are no profiles). An explicit file must exist. The system file
    (:func:`system_config_path`) is read first when it exists: the user's
    ``[defaults]`` override its ``[defaults]``, and an account of the user's file
    replaces the system's account of the same name.

    Without *account*, the account whose ``from`` is *sender* (or matches it as a
    glob pattern, such as ``*@example.com``) is used, as msmtp does; else the file's
    ``default`` account (or the one named ``default``); else ``[defaults]`` alone.
    """
    documents: list[_Document] = []
    system = system_config_path()
    if system.exists():
        if os.access(system, os.R_OK):
            documents.append(_load_document(system, system=True))
        else:
            # Root's own file (0600, as a password in it must be): other users
            # cannot read it, and must not be stopped by it.
            print(
                f"{PROG}: warning: {system} is not readable by this user; it is skipped",
                file=sys.stderr,
            )
    explicit = path is not None
    if path is None:
        path = default_config_path()
    if explicit or path.exists():
        documents.append(_load_document(path, system=False))
    files = tuple(document.path for document in documents)
    if not documents:
        if account is not None:
            raise CLIError(EX_CONFIG, f"no account {account!r}: {path} does not exist")
        return Profile({}, None, files)
    defaults: dict[str, Any] = {}
    accounts: dict[str, dict[str, Any]] = {}
    default_name: str | None = None
    for document in documents:
        defaults.update(document.defaults)
        accounts.update(document.accounts)
        if document.default_name is not None:
            default_name = document.default_name
    name, reason = account, "--account"
    if name is None and sender is not None:
        exact = [
            n for n, t in accounts.items() if str(t.get("from", "")).lower() == sender.lower()
        ]
        matching = exact or [
            n for n, t in accounts.items() if _sender_matches(str(t.get("from", "")), sender)
        ]
        if matching:
            name, reason = matching[0], "from address"
    if name is None:
        name, reason = (default_name if default_name is not None else "default"), "default"
        if name not in accounts:
            if default_name is not None:
                last = documents[-1].path
                raise CLIError(EX_CONFIG, f"{last}: default account {name!r} is not defined")
            return Profile(defaults, None, files)
    if name not in accounts:
        names = ", ".join(sorted(accounts)) or "none"
        where = " and ".join(str(p) for p in files)
        if not explicit and path.exists():
            where += " (default location)"
        raise CLIError(EX_CONFIG, f"no account {name!r} in {where}; accounts: {names}")
    merged = dict(defaults)
    merged.update(accounts[name])
    return Profile(merged, name, files, reason)
