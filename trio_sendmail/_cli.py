"""The ``trio-sendmail`` command (also ``python -m trio_sendmail``).

Commands:

* ``trio-sendmail [send] [options] [RECIPIENT ...]``: submit one RFC 5322
  message read from stdin (or ``--message FILE``), like ``sendmail(8)``;
* ``trio-sendmail bulk [options] SOURCE``: send a folder of ``.eml`` files or an
  mbox concurrently, with a progress display and a report;
* ``trio-sendmail demo``: the README's demo over an embedded loopback server.

Exit statuses follow ``sysexits.h`` (see :func:`exit_status`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NoReturn

import trio

from ._address import ForwardPath
from ._cli_config import (
    EX_CONFIG,
    EX_NOINPUT,
    EX_NOPERM,
    EX_USAGE,
    TLS_CHOICES,
    CLIError,
    Settings,
    resolve_settings,
)
from ._cli_message import parse_message
from ._errors import (
    SMTPAuthenticationError,
    SMTPConnectionError,
    SMTPError,
    SMTPInputError,
    SMTPNotSupportedError,
    SMTPProtocolError,
    SMTPRecipientsRefused,
    SMTPResponseError,
    SMTPSenderRefused,
    SMTPTimeoutError,
    SMTPTLSError,
    SMTPTransientError,
)
from ._reply import Reply
from ._session import SendResult, open_session

__all__ = ["main"]

PROG = "trio-sendmail"

# sysexits.h
EX_OK = 0
EX_DATAERR = 65
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_PROTOCOL = 76
#: Not in sysexits.h: the shell's convention for SIGINT.
EX_INTERRUPTED = 130

__all__ += [
    "EX_CONFIG",
    "EX_DATAERR",
    "EX_NOINPUT",
    "EX_NOPERM",
    "EX_NOUSER",
    "EX_OK",
    "EX_PROTOCOL",
    "EX_SOFTWARE",
    "EX_TEMPFAIL",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "exit_status",
]

COMMANDS = ("send", "bulk", "demo")
TRANSCRIPT_LOGGER = "trio_sendmail.transcript"


# ------------------------------------------------------------------ errors


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _certificate_problem(exc: BaseException) -> str | None:
    """The verification message of an SSLCertVerificationError in *exc*'s causes."""
    import ssl

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return str(current.verify_message or current.reason or current)
        current = current.__cause__ or current.__context__
    return None


def exit_status(exc: BaseException) -> tuple[int, str]:
    """The sysexits.h status for *exc*, and a one-line message for a person.

    The order matters: the first matching line of the table in docs/cli.rst wins.
    """
    if isinstance(exc, CLIError):
        return exc.code, exc.message
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return exit_status(exc.exceptions[0])
    text = _one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, SMTPAuthenticationError):
        return EX_NOPERM, f"authentication failed: {_detail(exc)}"
    if isinstance(exc, SMTPRecipientsRefused):
        status = EX_TEMPFAIL if exc.is_transient else EX_NOUSER
        return status, f"recipients refused: {'; '.join(_refusals(exc.refused))}"
    if isinstance(exc, SMTPSenderRefused) and not exc.is_transient:
        enhanced = exc.reply.enhanced_status
        if exc.code == 530 or (enhanced is not None and enhanced.subject == 7):
            return EX_NOPERM, f"sender refused (permission): {_detail(exc)}"
        return EX_UNAVAILABLE, f"sender refused: {_detail(exc)}"
    if isinstance(exc, SMTPResponseError):
        text = _response_text(exc)
    if isinstance(exc, SMTPTransientError):
        return EX_TEMPFAIL, f"temporary failure, try again later: {text}"
    if isinstance(exc, SMTPTimeoutError):
        return EX_TEMPFAIL, f"timed out: {text}"
    if isinstance(exc, SMTPTLSError):
        problem = _certificate_problem(exc)
        if problem is not None:
            return (
                EX_UNAVAILABLE,
                f"TLS certificate verification failed: {_one_line(problem)} "
                "(use --cafile to trust a private CA)",
            )
        return EX_UNAVAILABLE, f"TLS failed: {text}"
    if isinstance(exc, SMTPConnectionError):
        return EX_UNAVAILABLE, text
    if isinstance(exc, SMTPProtocolError):
        return EX_PROTOCOL, f"protocol error: {text}"
    if isinstance(exc, SMTPNotSupportedError):
        return EX_UNAVAILABLE, f"not supported: {text}"
    if isinstance(exc, SMTPResponseError):
        return EX_UNAVAILABLE, text
    if isinstance(exc, SMTPInputError):
        return EX_USAGE, text
    if isinstance(exc, SMTPError):  # pragma: no cover - every concrete error is above
        return EX_SOFTWARE, text
    if isinstance(exc, UnicodeError):
        # Its text quotes the offending character, and its value may be a secret
        # (e.g. a password read with surrogateescape): show only the reason.
        text = _one_line(str(getattr(exc, "reason", ""))) or "cannot convert text"
    return EX_SOFTWARE, f"internal error: {type(exc).__name__}: {text} (run with --debug)"


#: What each refused command was, for a person.
_COMMAND_LABELS = {
    ".": "message",
    "BDAT": "message",
    "CONNECT": "server greeting",
    "MAIL": "sender",
    "RCPT": "recipient",
    "AUTH": "authentication",
}


def _detail(exc: SMTPResponseError) -> str:
    """The server's reply, unless the library's message says more than it."""
    text = _one_line(str(exc))
    return str(exc.reply) if text == _one_line(f"{exc.command} refused: {exc.reply}") else text


def _response_text(exc: SMTPResponseError) -> str:
    """``message refused: 554 5.6.0 …`` rather than ``. refused: 554 5.6.0 …``."""
    label = _COMMAND_LABELS.get(exc.command, exc.command)
    return f"{label} refused: {_detail(exc)}"


def _refusals(refused: Mapping[ForwardPath, Reply]) -> list[str]:
    """``bob@example.com: 550 5.1.1 No such user`` for each refused recipient."""
    return [
        _one_line(f"{path.mailbox if path.mailbox is not None else path}: {reply}")
        for path, reply in refused.items()
    ]


class _UsageParser(argparse.ArgumentParser):
    """An argument parser whose errors exit with EX_USAGE (64), not 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


# ------------------------------------------------------------------ transcript


class _LineHandler(logging.Handler):
    def __init__(self, write: Callable[[str], object]) -> None:
        super().__init__(logging.DEBUG)
        self._write = write

    def emit(self, record: logging.LogRecord) -> None:
        self._write(record.getMessage() + "\n")


@contextlib.contextmanager
def transcript_to(enabled: bool) -> Iterator[None]:
    """Print the library's (already redacted) SMTP transcript to stderr while the
    block runs, if *enabled*."""
    if not enabled:
        yield
        return
    logger = logging.getLogger(TRANSCRIPT_LOGGER)
    handler = _LineHandler(lambda text: sys.stderr.write(text))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


# ------------------------------------------------------------------ options


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """The options shared by ``send`` and ``bulk``."""
    server = parser.add_argument_group("server")
    server.add_argument("--host", metavar="HOST", help="the SMTP server")
    server.add_argument(
        "--port", type=int, metavar="PORT", help="default: 465 (implicit), 587 (starttls), 25"
    )
    server.add_argument(
        "--tls",
        choices=list(TLS_CHOICES),
        help="implicit TLS, required STARTTLS, or none (default: implicit, or "
        "starttls when --port is not 465)",
    )
    server.add_argument(
        "--cafile", metavar="FILE", help="trust only the CA certificates in this PEM file"
    )
    server.add_argument("--helo", metavar="NAME", help="the EHLO name (default: this host's FQDN)")
    server.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="bound on each network phase (the wait after the final dot stays >= 600 s)",
    )
    auth = parser.add_argument_group("authentication (never a password on the command line)")
    auth.add_argument("--user", metavar="NAME", help="authenticate as NAME")
    auth.add_argument(
        "--auth",
        metavar="MECH",
        help="SASL mechanism: PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-256, XOAUTH2, "
        "OAUTHBEARER (default: the strongest offered)",
    )
    auth.add_argument(
        "--password-env",
        metavar="VAR",
        help="read the password from this environment variable "
        "(checked by default: TRIO_SENDMAIL_PASSWORD)",
    )
    auth.add_argument(
        "--password-command",
        metavar="CMD",
        help="run CMD (no shell) and use the first line of its output as the password",
    )
    auth.add_argument("--netrc-file", metavar="FILE", help="netrc file (default: ~/.netrc)")
    auth.add_argument(
        "--insecure-plaintext-auth",
        action="store_true",
        help="allow AUTH without TLS (anyone on the path can read the password)",
    )
    profile = parser.add_argument_group("profiles")
    profile.add_argument(
        "--config",
        metavar="FILE",
        help="profile file (default: ~/.config/trio-sendmail/config.toml)",
    )
    profile.add_argument("--account", metavar="NAME", help="use this account of the profile file")
    dsn = parser.add_argument_group("delivery status notifications (RFC 3461)")
    dsn.add_argument(
        "-N",
        "--dsn-notify",
        metavar="WHEN",
        help="never, or a comma-separated list of success, failure, delay",
    )
    dsn.add_argument(
        "-R", "--dsn-return", metavar="WHAT", help="full or hdrs: what a bounce carries"
    )
    dsn.add_argument("--dsn-envid", metavar="ID", help="envelope identifier returned in reports")
    dsn.add_argument("--dsn-orcpt", action="store_true", help="send each recipient as ORCPT")
    output = parser.add_argument_group("output")
    output.add_argument(
        "--transcript",
        action="store_true",
        help="print the SMTP dialogue to stderr (credentials redacted)",
    )
    output.add_argument("--debug", action="store_true", help="print the traceback of an error")


def _send_parser() -> argparse.ArgumentParser:
    parser = _UsageParser(
        prog=PROG,
        usage=f"{PROG} [send] [options] [RECIPIENT ...]\n"
        f"       {PROG} bulk [options] SOURCE [RECIPIENT ...]\n"
        f"       {PROG} demo",
        description="Submit one RFC 5322 message, read from stdin or --message, to an SMTP "
        "server (like sendmail(8)). Other commands: 'bulk' sends a folder of .eml files "
        "or an mbox (see 'bulk --help'); 'demo' runs the embedded loopback demo.",
        epilog="Exit statuses follow sysexits.h: 0 sent, 64 usage, 66 unreadable input, "
        "67 recipient refused, 69 unavailable, 70 internal error, 75 temporary failure, "
        "76 protocol error, 77 permission/authentication, 78 configuration.",
        allow_abbrev=False,
    )
    parser.add_argument("recipients", nargs="*", metavar="RECIPIENT", help="envelope recipients")
    message = parser.add_argument_group("message")
    message.add_argument(
        "-f", "-r", "--from", dest="sender", metavar="ADDRESS",
        help="envelope sender (default: the account's 'from', else the From header)",
    )  # fmt: skip
    message.add_argument(
        "-t",
        "--read-recipients",
        action="store_true",
        help="also send to the To/Cc/Bcc addresses of the message (Bcc is always removed)",
    )
    message.add_argument(
        "--message", metavar="FILE", help="read the message from FILE instead of stdin"
    )
    message.add_argument(
        "-i", dest="ignore_dots", action="store_true",
        help="accepted for sendmail compatibility (-oi too): input always ends at EOF",
    )  # fmt: skip
    message.add_argument(
        "-v", "--verbose", action="store_true", help="print the server's final reply"
    )
    add_connection_options(parser)
    return parser


_PASSWORD_FLAGS = ("--password", "--passwd", "--pass", "-p")


def _refuse_password_flags(argv: Sequence[str]) -> None:
    """Refuse a password flag without echoing its value (argparse would print it)."""
    for arg in argv:
        if arg == "--":
            return
        name = arg.split("=", 1)[0]
        if name in _PASSWORD_FLAGS or (arg.startswith("-p") and not arg.startswith("--")):
            raise CLIError(
                EX_USAGE,
                "passwords are not accepted on the command line (they would show in ps and "
                "shell history): use --password-command, --password-env, ~/.netrc or the "
                "config file",
            )


# ------------------------------------------------------------------ send


def _read_input(path: str | None) -> bytes:
    if path is None or path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise CLIError(EX_NOINPUT, f"cannot read {path}: {exc.strerror or exc}") from exc


async def _submit(
    settings: Settings, sender: str, recipients: list[str], data: bytes
) -> SendResult:
    async with open_session(
        settings.host,
        port=settings.port,
        tls=settings.tls,
        ssl_context=settings.ssl_context,
        domain=settings.helo,
        authentication=settings.authentication,
        insecure_auth_over_plaintext=settings.insecure_plaintext_auth,
        timeouts=settings.timeouts,
    ) as session:
        return await session.send(sender, recipients, data, dsn=settings.dsn)


def _run_send(args: argparse.Namespace) -> int:
    settings = resolve_settings(args)
    raw = _read_input(args.message)
    message = parse_message(raw)
    recipients = list(args.recipients)
    if args.read_recipients:
        recipients.extend(message.recipients)
    recipients = list(dict.fromkeys(recipients))
    if not recipients:
        hint = "" if args.read_recipients else " (or use -t to read them from the headers)"
        raise CLIError(EX_USAGE, f"no recipients given{hint}")
    sender = settings.sender if settings.sender is not None else message.sender
    if sender is None:
        raise CLIError(EX_USAGE, "no sender: give -f ADDRESS, or a From header with one address")
    with transcript_to(args.transcript):
        result = trio.run(_submit, settings, sender, recipients, message.data)
    if args.verbose:
        print(f"{PROG}: accepted: {result.reply}")
    if result.refused:
        for line in _refusals(result.refused):
            print(f"{PROG}: recipient refused: {line}", file=sys.stderr)
        # Sent to the others: a retry (75) would deliver it twice.
        return EX_NOUSER
    return EX_OK


# ------------------------------------------------------------------ main


def _report(exc: BaseException, debug: bool) -> int:
    status, message = exit_status(exc)
    if debug and not isinstance(exc, CLIError):
        traceback.print_exception(exc, file=sys.stderr)
    elif debug and exc.__cause__ is not None:
        traceback.print_exception(exc.__cause__, file=sys.stderr)
    print(f"{PROG}: {message}", file=sys.stderr)
    return status


def _guarded(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EX_INTERRUPTED
    except Exception as exc:  # one line per error; --debug for the rest
        return _report(exc, getattr(args, "debug", False))


def _demo(argv: list[str]) -> int:
    parser = _UsageParser(
        prog=f"{PROG} demo",
        description="Send two mails through an embedded loopback server (implicit TLS and "
        "STARTTLS) and show the redacted transcript.",
    )
    parser.parse_args(argv)
    from ._demo import run_demo

    delivered = trio.run(run_demo)
    return EX_OK if delivered == 2 else EX_SOFTWARE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with *argv* (default ``sys.argv[1:]``); return the exit status.

    Usage errors found by argparse raise :class:`SystemExit` with status 64
    (``--help`` with 0), as argparse does.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        _refuse_password_flags(arguments)
    except CLIError as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        return exc.code
    command = arguments[0] if arguments else None
    if command == "demo":
        return _demo(arguments[1:])
    if command == "bulk":
        from ._cli_bulk import bulk_parser, run_bulk

        args = bulk_parser().parse_args(arguments[1:])
        return _guarded(run_bulk, args)
    if command == "send":
        arguments = arguments[1:]
    elif command is not None and not command.startswith("-") and "@" not in command:
        _send_parser().error(
            f"unknown command {command!r}: use send, bulk or demo (a recipient needs a domain)"
        )
    # sendmail's -oi (same as -i) is not an argparse-style option.
    arguments = ["-i" if arg == "-oi" else arg for arg in arguments]
    args = _send_parser().parse_args(arguments)
    return _guarded(_run_send, args)
