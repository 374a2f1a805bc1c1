"""The command line's settings, and where passwords come from.

Settings are resolved in one order, whatever the command: a flag on the command
line, then the chosen account of the profile files (:mod:`._profiles`), then
their ``[defaults]`` tables, then the built-in default. Passwords never come from
a flag: they come from a command (``--password-command``, msmtp's
``passwordeval``, run by ``/bin/sh -c``), the account's ``password`` (only in a
file no one else can read), an environment variable, or ``~/.netrc``.
"""

from __future__ import annotations

import ast
import netrc
import os
import re
import ssl
import subprocess
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
from ._common import (
    EX_CONFIG,
    EX_NOINPUT,
    EX_NOPERM,
    EX_USAGE,
    TLS_CHOICES,
    CLIError,
    Hints,
)
from ._profiles import Profile, check_private, load_account, read_file

__all__ = [
    "Settings",
    "describe",
    "looks_like_implicit_tls",
    "resolve_settings",
    "run_password_command",
]

DEFAULT_PASSWORD_ENV = "TRIO_SENDMAIL_PASSWORD"  # noqa: S105 (a variable name)
#: The wait for the reply to the final dot is never shortened below RFC 5321's
#: 10 minutes by ``--timeout`` (giving up sooner risks duplicates).
DATA_END_TIMEOUT = 600.0
#: How long a password command may take.
PASSWORD_COMMAND_TIMEOUT = 120.0
#: The shell that runs the password command (``sh -c``, as msmtp's passwordeval).
PASSWORD_COMMAND_SHELL = "/bin/sh"  # noqa: S105 (a program, not a password)

# ---------------------------------------------------------------- resolved settings


#: Ports where the server speaks TLS from the first byte (RFC 8314 §3.3: 465).
IMPLICIT_TLS_PORTS = frozenset({465})
#: The TLS mode of a well-known port when none is given (RFC 8314 §3.3, RFC 6409 §3.1,
#: RFC 5321 §4.5.4 with STARTTLS required, never plaintext).
PORT_TLS = {465: "implicit", 587: "starttls", 25: "starttls"}
#: The port of each TLS mode when none is given (as the library chooses it).
PORT_BY_TLS = {TLSMode.IMPLICIT: 465, TLSMode.STARTTLS: 587, TLSMode.INSECURE_PLAINTEXT: 25}
#: Seconds to wait for the greeting without TLS on a port that looks like implicit TLS,
#: where a TLS server says nothing until it gets a ClientHello.
IMPLICIT_PROBE_TIMEOUT = 10.0


def looks_like_implicit_tls(port: int | None) -> bool:
    """465, or a port that ends in 465 (such as 10465), as test and private setups use."""
    return port is not None and (port in IMPLICIT_TLS_PORTS or str(port).endswith("465"))


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
    #: The domain that qualifies bare local addresses (``root``).
    domain: str | None = None
    #: The send log (``--log``), one line per message.
    log: str | None = None
    #: The account used, and the files read.
    profile: Profile = attrs.field(factory=lambda: Profile({}, None, ()))
    #: The CA file given (``--cafile`` or ``cafile``), for messages.
    cafile: str | None = None
    #: The user, and where the password comes from, for ``--pretend``.
    user: str | None = None
    password_source: str | None = None

    @property
    def hints(self) -> Hints:
        """What error messages may suggest."""
        port = self.port if self.port is not None else PORT_BY_TLS[self.tls]
        return Hints(
            cafile=self.cafile,
            tls=self.tls,
            implicit_port=self.tls is not TLSMode.IMPLICIT and looks_like_implicit_tls(port),
        )

    def connection(self) -> ConnectionSettings:
        """How to connect to :attr:`host`: ``open_session(settings.connection())``."""
        timeouts = self.timeouts
        if self.hints.implicit_port:  # fail fast: a TLS server waits for us in silence
            timeouts = attrs.evolve(
                timeouts, greeting=min(timeouts.greeting, IMPLICIT_PROBE_TIMEOUT)
            )
        return ConnectionSettings(
            self.host,
            port=self.port,
            tls=self.tls,
            ssl_context=self.ssl_context,
            domain=self.helo,
            authentication=self.authentication,
            insecure_auth_over_plaintext=self.insecure_plaintext_auth,
            timeouts=timeouts,
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
    """Run *command* with ``/bin/sh -c`` (as msmtp's ``passwordeval``); the first line
    of its output is the password."""
    if not command.strip():
        raise CLIError(EX_CONFIG, "the password command is empty")
    try:
        # Through the shell on purpose, like msmtp's passwordeval: pipes, variables
        # and ~ work, so migrated configurations keep working. The command comes from
        # the user's own flag or from a file no one else can write (_check_not_writable).
        done = subprocess.run(  # noqa: S602
            command,
            shell=True,
            executable=PASSWORD_COMMAND_SHELL,
            stdin=subprocess.DEVNULL,  # stdin may be the message being sent
            stdout=subprocess.PIPE,
            check=False,
            timeout=PASSWORD_COMMAND_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise CLIError(
            EX_CONFIG, f"cannot run the password command: {type(exc).__name__}"
        ) from exc
    if done.returncode != 0:
        raise CLIError(EX_CONFIG, f"the password command failed with status {done.returncode}")
    # Not "replace": a password with bytes that are not UTF-8 would be silently
    # changed (and refused by the server); _checked() reports it instead.
    text = done.stdout.decode("utf-8", "surrogateescape")
    password = text.splitlines()[0] if text else ""
    if not password:
        raise CLIError(EX_CONFIG, "the password command printed no password")
    return _checked(password, "the password command")


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
    raw, st = read_file(path, "netrc file")
    check_private(path, st, "netrc file")
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


def _program(command: str) -> str:
    """The program a password command runs, without its arguments (which often
    hold a secret: ``echo hunter2``, ``gpg --passphrase …``)."""
    words = command.split(maxsplit=1)
    return repr(words[0] if words else "")


def _password_source(args: Any, account: Mapping[str, Any], host: str) -> str:
    """Where :func:`_password` would look first, without running or reading anything."""
    if args.password_command is not None:
        command = _program(args.password_command)
        return f"--password-command {command} (not run; arguments not shown)"
    if args.password_env is not None:
        return f"--password-env {args.password_env}"
    if "password_command" in account:
        command = _program(str(account["password_command"]))
        return f"password_command {command} (not run; arguments not shown)"
    if "password" in account:
        return "password in the config file (not shown)"
    if "password_env" in account:
        return f"password_env {account['password_env']}"
    if os.environ.get(DEFAULT_PASSWORD_ENV):
        return f"environment variable {DEFAULT_PASSWORD_ENV} (set, not shown)"
    netrc_file = _pick(args, account, "netrc_file") or "~/.netrc"
    return f"netrc file {netrc_file}, entry for {host}"


def _sender(args: Any, account: Mapping[str, Any]) -> str | None:
    """``-f``, else the account's ``from`` unless it is a pattern (``*@example.com``
    chooses the account; the address then comes from the message)."""
    sender: str | None = getattr(args, "sender", None)
    if sender is not None:
        return sender
    address = account.get("from")
    if address is None or any(char in address for char in "*?["):
        return None
    return str(address)


def resolve_settings(args: Any, sender: str | None = None, *, secrets: bool = True) -> Settings:
    """Merge the flags in *args* with the profile file; find the credentials.

    *sender* (the ``-f`` address, or the message's ``From``) picks the account when
    none is named. With *secrets* false (``--pretend``), no password is looked up:
    :attr:`Settings.password_source` says where it would come from.
    """
    profile = load_account(
        None if args.config is None else Path(os.path.expanduser(args.config)),
        args.account,
        sender,
    )
    account = profile.values
    host = _pick(args, account, "host")
    if host is None:
        raise CLIError(EX_USAGE, "no SMTP server: give --host, or an account in the config file")
    tls_name = _pick(args, account, "tls")
    port = _pick(args, account, "port")
    if port is not None and not 0 < port < 65536:
        raise CLIError(EX_USAGE, f"invalid port {port}")
    if tls_name is None:
        # From the port: 465 implicit TLS (RFC 8314), 587 and 25 STARTTLS (required);
        # implicit TLS without a port; never plaintext unless asked for.
        tls_name = "implicit" if port is None else PORT_TLS.get(port, "starttls")
    tls = TLS_CHOICES[tls_name]
    timeout = _pick(args, account, "timeout")
    insecure = bool(args.insecure_plaintext_auth or account.get("insecure_plaintext_auth"))
    cafile = _pick(args, account, "cafile")
    user = _pick(args, account, "user")
    if secrets:
        authentication = _authentication(args, account, host)
        source = None
    else:
        authentication = None
        source = None if user is None else _password_source(args, account, host)
    domain = _pick(args, account, "domain")
    if domain is not None:
        domain = domain.strip().lstrip("@")
        if not domain or any(char.isspace() or char in "@<>" for char in domain):
            raise CLIError(EX_USAGE, f"--domain must be a domain name, not {domain!r}")
    return Settings(
        host=host,
        port=port,
        tls=tls,
        ssl_context=_ssl_context(cafile, tls),
        helo=_pick(args, account, "helo"),
        sender=_sender(args, account),
        authentication=authentication,
        insecure_plaintext_auth=insecure,
        timeouts=_timeouts(None if timeout is None else float(timeout)),
        dsn=_dsn(
            _pick(args, account, "dsn_notify"),
            _pick(args, account, "dsn_return"),
            args.dsn_envid,
            args.dsn_orcpt,
        ),
        domain=domain,
        log=_pick(args, account, "log"),
        profile=profile,
        cafile=None if cafile is None or tls is TLSMode.INSECURE_PLAINTEXT else cafile,
        user=user,
        password_source=source,
    )


def describe(settings: Settings) -> list[tuple[str, str]]:
    """The effective settings, for ``--pretend``: no secret, only where each comes from."""
    profile = settings.profile
    files = ", ".join(str(path) for path in profile.files) or "none"
    account = "none ([defaults] only)" if profile.name is None else profile.name
    if profile.name is not None and profile.reason:
        account += f" (chosen by {profile.reason})"
    tls_names = {mode: name for name, mode in TLS_CHOICES.items()}
    port = settings.connection().resolved_port
    dsn = settings.dsn
    plaintext = settings.tls is TLSMode.INSECURE_PLAINTEXT
    rows = [
        ("config files", files),
        ("account", account),
        ("host", settings.host),
        ("port", str(port)),
        ("tls", tls_names[settings.tls]),
        ("cafile", "-" if plaintext else settings.cafile or "the system's trust store"),
        ("helo", settings.helo or "this host's name"),
        ("from", settings.sender or "the message's From header"),
        ("domain", settings.domain or "none (bare local names are sent as they are)"),
        ("user", settings.user or "none (no authentication)"),
    ]
    if settings.user is not None:
        rows.append(("password", settings.password_source or "-"))
    rows += [
        ("insecure plaintext auth", "yes" if settings.insecure_plaintext_auth else "no"),
        (
            "timeouts",
            f"greeting {settings.connection().timeouts.greeting:g} s, "
            f"command {settings.timeouts.command:g} s, "
            f"after the final dot {settings.timeouts.data_end:g} s",
        ),
        ("dsn", "none" if dsn is None else " ".join(dsn.mail_params()) or "notify only"),
        ("log", settings.log or "none"),
    ]
    return rows
