"""The command line's settings: the TOML profile file, and where passwords come from.

Settings are resolved in one order, whatever the command: a flag on the command
line, then the chosen account of the profile file, then its ``[defaults]`` table,
then the built-in default. Passwords never come from a flag: they come from a
command (``--password-command``, msmtp's ``passwordeval``), the account's
``password`` (only in a file no one else can read), an environment variable, or
``~/.netrc``.
"""

from __future__ import annotations

import ast
import netrc
import os
import re
import shlex
import ssl
import stat
import subprocess
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from .. import (
    DSN,
    Authentication,
    ConnectionSettings,
    OAuth2Token,
    SMTPInputError,
    Timeouts,
    TLSMode,
)
from .._sasl import OAUTH_MECHANISMS
from .._settings import DEFAULT_TIMEOUTS
from ._common import EX_CONFIG, EX_NOINPUT, EX_NOPERM, EX_USAGE, TLS_CHOICES, CLIError

__all__ = [
    "Settings",
    "default_config_path",
    "load_account",
    "resolve_settings",
    "run_password_command",
]

DEFAULT_PASSWORD_ENV = "TRIO_SENDMAIL_PASSWORD"  # noqa: S105 (a variable name)
#: The wait for the reply to the final dot is never shortened below RFC 5321's
#: 10 minutes by ``--timeout`` (giving up sooner risks duplicates).
DATA_END_TIMEOUT = 600.0
#: How long a password command may take.
PASSWORD_COMMAND_TIMEOUT = 120.0

# ---------------------------------------------------------------- the profile file

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
}


def default_config_path() -> Path:
    """``$XDG_CONFIG_HOME/trio-sendmail/config.toml``, else ``~/.config/…``."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "trio-sendmail" / "config.toml"


def _check_private(path: Path, st: os.stat_result, what: str) -> None:
    """Refuse a file holding secrets that others can read or that someone else owns."""
    if os.name != "posix":  # pragma: no cover - POSIX permissions only
        return
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise CLIError(
            EX_CONFIG,
            f"{what} {path} contains a password but is accessible by group/others "
            f"(mode {mode:04o}); run: chmod 600 {shlex.quote(str(path))}",
        )
    if st.st_uid != os.getuid():
        raise CLIError(EX_CONFIG, f"{what} {path} contains a password but is not owned by you")


def _read_file(path: Path, what: str) -> tuple[bytes, os.stat_result]:
    """The bytes of *path* and the status of the very file they were read from."""
    try:
        with open(path, "rb") as file:
            st = os.fstat(file.fileno())
            return file.read(), st
    except OSError as exc:
        raise CLIError(EX_CONFIG, f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def _contains_password(document: Mapping[str, Any]) -> bool:
    tables = [document.get("defaults")]
    accounts = document.get("accounts")
    if isinstance(accounts, Mapping):
        tables.extend(accounts.values())
    return any(isinstance(table, Mapping) and "password" in table for table in tables)


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


def load_account(path: Path | None, account: str | None) -> dict[str, Any]:
    """Read the profile file and return the chosen account merged over ``[defaults]``.

    *path* ``None`` means the default location, which may be missing (then there
    are no profiles). An explicit file must exist.
    """
    explicit = path is not None
    if path is None:
        path = default_config_path()
        if not path.exists():
            if account is not None:
                raise CLIError(EX_CONFIG, f"no account {account!r}: {path} does not exist")
            return {}
    raw, st = _read_file(path, "config file")
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CLIError(EX_CONFIG, f"{path}: invalid TOML: {exc}") from exc
    if _contains_password(document):
        _check_private(path, st, "config file")
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
    name = account
    if name is None:
        name = default_name if default_name is not None else "default"
        if name not in checked:
            if default_name is not None:
                raise CLIError(EX_CONFIG, f"{path}: default account {name!r} is not defined")
            return defaults
    if name not in checked:
        names = ", ".join(sorted(checked)) or "none"
        where = str(path) if explicit else f"{path} (default location)"
        raise CLIError(EX_CONFIG, f"no account {name!r} in {where}; accounts: {names}")
    merged = dict(defaults)
    merged.update(checked[name])
    return merged


# ---------------------------------------------------------------- resolved settings


@attrs.frozen
class Settings:
    """Everything needed to open a connection, from flags and the profile."""

    host: str
    port: int | None
    tls: TLSMode
    ssl_context: ssl.SSLContext | None = attrs.field(repr=False)
    helo: str | None
    sender: str | None
    authentication: Authentication | None = attrs.field(repr=False)
    insecure_plaintext_auth: bool
    timeouts: Timeouts
    dsn: DSN | None

    def connection(self) -> ConnectionSettings:
        """How to connect to :attr:`host`: ``open_session(settings.connection())``."""
        return ConnectionSettings(
            self.host,
            port=self.port,
            tls=self.tls,
            ssl_context=self.ssl_context,
            domain=self.helo,
            authentication=self.authentication,
            insecure_auth_over_plaintext=self.insecure_plaintext_auth,
            timeouts=self.timeouts,
        )


def _pick(args: Any, account: Mapping[str, Any], flag: str, key: str | None = None) -> Any:
    value = getattr(args, flag, None)
    if value is not None:
        return value
    return account.get(key or flag)


def _ssl_context(cafile: str | None, tls: TLSMode) -> ssl.SSLContext | None:
    if cafile is None or tls is TLSMode.INSECURE_PLAINTEXT:
        return None
    path = os.path.expanduser(cafile)
    try:
        # With cafile, only that file is trusted (not the system store).
        return ssl.create_default_context(cafile=path)
    except FileNotFoundError as exc:
        raise CLIError(EX_NOINPUT, f"cannot read CA file {path}: {exc.strerror}") from exc
    except (OSError, ssl.SSLError) as exc:
        raise CLIError(EX_NOINPUT, f"cannot load CA file {path}: {exc}") from exc


def _timeouts(value: float | None) -> Timeouts:
    if value is None:
        return DEFAULT_TIMEOUTS
    if not value > 0:
        raise CLIError(EX_USAGE, "--timeout must be a positive number of seconds")
    return Timeouts(
        connect=value,
        tls_handshake=value,
        greeting=value,
        command=value,
        mail=value,
        rcpt=value,
        data_init=value,
        data_block=value,
        data_end=max(value, DATA_END_TIMEOUT),
        quit=min(value, DEFAULT_TIMEOUTS.quit),
    )


def _dsn(notify: str | None, ret: str | None, envid: str | None, orcpt: bool) -> DSN | None:
    if notify is None and ret is None and envid is None and not orcpt:
        return None
    conditions = None
    if notify is not None:
        conditions = [word.strip() for word in notify.split(",") if word.strip()]
    ret_value = None
    if ret is not None:
        ret_value = {"full": "FULL", "hdrs": "HDRS", "headers": "HDRS"}.get(ret.lower())
        if ret_value is None:
            raise CLIError(EX_USAGE, f"DSN return must be 'full' or 'hdrs', not {ret!r}")
    try:
        return DSN(ret=ret_value, envid=envid, notify=conditions, orcpt=orcpt)
    except SMTPInputError as exc:
        raise CLIError(EX_USAGE, str(exc)) from exc


def run_password_command(command: str) -> str:
    """Run *command* without a shell; the first line of its output is the password."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise CLIError(EX_CONFIG, f"cannot parse the password command: {exc}") from exc
    if not argv:
        raise CLIError(EX_CONFIG, "the password command is empty")
    try:
        # shell=False: the words of the command are run as given, nothing is expanded.
        done = subprocess.run(  # noqa: S603
            argv,
            shell=False,
            stdin=subprocess.DEVNULL,  # stdin may be the message being sent
            stdout=subprocess.PIPE,
            check=False,
            timeout=PASSWORD_COMMAND_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise CLIError(EX_CONFIG, f"cannot run the password command {argv[0]!r}: {exc}") from exc
    if done.returncode != 0:
        raise CLIError(
            EX_CONFIG, f"the password command {argv[0]!r} failed with status {done.returncode}"
        )
    # Not "replace": a password with bytes that are not UTF-8 would be silently
    # changed (and refused by the server); _checked() reports it instead.
    text = done.stdout.decode("utf-8", "surrogateescape")
    password = text.splitlines()[0] if text else ""
    if not password:
        raise CLIError(EX_CONFIG, f"the password command {argv[0]!r} printed no password")
    return _checked(password, f"the password command {argv[0]!r}")


def _checked(secret: str, source: str) -> str:
    """*secret* if it can be sent (encoded as UTF-8), else a configuration error
    that names its *source* and shows nothing of it.

    Environment variables and files are decoded with ``surrogateescape`` (or the
    password command's output here): a byte that is not UTF-8 becomes a lone
    surrogate, which SASL cannot encode.
    """
    if any("\ud800" <= char <= "\udfff" for char in secret):
        raise CLIError(
            EX_CONFIG,
            f"the password from {source} is not valid UTF-8 text (it has bytes in another "
            "encoding, such as Latin-1); it is not shown",
        )
    return secret


def _netrc_error_line(exc: netrc.NetrcParseError, raw: bytes) -> int | None:
    """The line of the token *exc* complains about.

    Python's parser counts the newline that ends a token before it finds the
    token wrong, so its line number is often one too far: take the line before
    when the token is there and not on the reported one. Only the number is used.
    """
    lineno = exc.lineno
    quoted = re.search(r"(?:token|missing) ('.*'|\".*\")", exc.msg)
    if lineno is None or quoted is None:
        return lineno
    try:
        token = ast.literal_eval(quoted[1])
    except (ValueError, SyntaxError):  # pragma: no cover - the parser quotes with repr()
        return lineno
    lines = raw.decode("utf-8", "replace").splitlines()
    for candidate in (lineno, lineno - 1):
        if 1 <= candidate <= len(lines) and str(token) in lines[candidate - 1]:
            return candidate
    return lineno


def _parse_netrc(path: Path, raw: bytes) -> netrc.netrc:
    """Parse the netrc file *path* (whose bytes are *raw*); its errors name the
    file and line, never its content.

    Python's parser quotes the offending token in its message (which may be a
    password, or part of one), so its message is never shown.
    """
    try:
        return netrc.netrc(str(path))
    except netrc.NetrcParseError as exc:
        lineno = _netrc_error_line(exc, raw)
        problem = f"malformed netrc file {path}" + ("" if lineno is None else f", line {lineno}")
    except UnicodeDecodeError:
        problem = f"netrc file {path} is not valid text (neither UTF-8 nor the locale's encoding)"
    except OSError as exc:
        problem = f"cannot read netrc file {path}: {exc.strerror or type(exc).__name__}"
    # Raised outside the handler, so that no __context__ carries the parser's message.
    raise CLIError(EX_CONFIG, f"{problem} (its content is not shown: it may hold passwords)")


def _netrc_password(host: str, user: str, netrc_file: str | None) -> str | None:
    path = Path(os.path.expanduser(netrc_file or "~/.netrc"))
    if not path.exists():
        if netrc_file is not None:
            raise CLIError(EX_CONFIG, f"cannot read netrc file {path}: it does not exist")
        return None
    raw, st = _read_file(path, "netrc file")
    _check_private(path, st, "netrc file")
    entry = _parse_netrc(path, raw).authenticators(host)
    if entry is None:
        return None
    login, _account, password = entry
    if login and login != user:
        return None
    return _checked(password, f"netrc file {path}") if password else None


def _environment_password(name: str) -> str:
    """The password in the environment variable *name*, which must be set."""
    value = os.environ.get(name)
    if not value:
        raise CLIError(EX_NOPERM, f"environment variable {name} is not set")
    return _checked(value, f"environment variable {name}")


def _password(args: Any, account: Mapping[str, Any], host: str, user: str) -> str:
    """Find the password of *user*; the first source that is configured wins."""
    if args.password_command is not None and args.password_env is not None:
        raise CLIError(EX_USAGE, "give --password-command or --password-env, not both")
    if args.password_command is not None:
        return run_password_command(args.password_command)
    if args.password_env is not None:
        return _environment_password(args.password_env)
    if "password_command" in account:
        return run_password_command(account["password_command"])
    if "password" in account:
        password: str = account["password"]
        return password
    if "password_env" in account:
        return _environment_password(account["password_env"])
    value = os.environ.get(DEFAULT_PASSWORD_ENV)
    if value:
        return _checked(value, f"environment variable {DEFAULT_PASSWORD_ENV}")
    found = _netrc_password(host, user, _pick(args, account, "netrc_file"))
    if found is not None:
        return found
    raise CLIError(
        EX_NOPERM,
        f"no password for {user} on {host}: use --password-command, --password-env, "
        f"${DEFAULT_PASSWORD_ENV}, ~/.netrc, or the config file",
    )


def _oauth_token(secret: str) -> OAuth2Token:
    """The OAuth access token given as the password, checked before any connection."""
    try:
        return OAuth2Token(secret)
    except SMTPInputError:
        pass
    # Raised outside the handler; the message shows nothing of the token.
    raise CLIError(
        EX_CONFIG,
        "the OAuth access token (given as the password) is not a bearer token "
        "(RFC 6750 §2.1 b64token characters only); it is not shown",
    )


def _authentication(args: Any, account: Mapping[str, Any], host: str) -> Authentication | None:
    user = _pick(args, account, "user")
    mechanism = _pick(args, account, "auth")
    if user is None:
        if mechanism is not None:
            raise CLIError(EX_USAGE, "--auth needs a user (--user or the account's user)")
        return None
    secret = _password(args, account, host, user)
    try:
        if mechanism is not None and mechanism.upper() in OAUTH_MECHANISMS:
            # For OAuth the secret is the access token (as msmtp's passwordeval gives it).
            token = _oauth_token(secret)

            async def provider() -> OAuth2Token:
                return token

            return Authentication(user, mechanism=mechanism, token_provider=provider)
        return Authentication(user, secret, mechanism=mechanism)
    except SMTPInputError as exc:
        # The library's messages never show a secret (and its errors carry no
        # chained error that would): a bad --user or --auth.
        raise CLIError(EX_USAGE, str(exc)) from exc


def resolve_settings(args: Any) -> Settings:
    """Merge the flags in *args* with the profile file; find the credentials."""
    account = load_account(
        None if args.config is None else Path(os.path.expanduser(args.config)), args.account
    )
    host = _pick(args, account, "host")
    if host is None:
        raise CLIError(EX_USAGE, "no SMTP server: give --host, or an account in the config file")
    tls_name = _pick(args, account, "tls")
    port = _pick(args, account, "port")
    if tls_name is None:
        # Implicit TLS (RFC 8314) unless another port says otherwise; never plaintext.
        tls_name = "implicit" if port in (None, 465) else "starttls"
    tls = TLS_CHOICES[tls_name]
    if port is not None and not 0 < port < 65536:
        raise CLIError(EX_USAGE, f"invalid port {port}")
    timeout = _pick(args, account, "timeout")
    insecure = bool(args.insecure_plaintext_auth or account.get("insecure_plaintext_auth"))
    return Settings(
        host=host,
        port=port,
        tls=tls,
        ssl_context=_ssl_context(_pick(args, account, "cafile"), tls),
        helo=_pick(args, account, "helo"),
        sender=_pick(args, account, "sender", "from"),
        authentication=_authentication(args, account, host),
        insecure_plaintext_auth=insecure,
        timeouts=_timeouts(None if timeout is None else float(timeout)),
        dsn=_dsn(
            _pick(args, account, "dsn_notify"),
            _pick(args, account, "dsn_return"),
            args.dsn_envid,
            args.dsn_orcpt,
        ),
    )
