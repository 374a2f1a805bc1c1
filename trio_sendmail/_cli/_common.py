"""What every command of the command line shares.

The ``sysexits.h`` codes, the error every command reports in one line
(:class:`CLIError`), the argument parser whose usage errors exit with 64, the
connection options of ``send`` and ``bulk`` (:func:`add_connection_options`),
the mapping of an exception to an exit status and a message
(:func:`exit_status`), and the ``--transcript`` switch.

It imports nothing else of the command line: the other modules import it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import NoReturn

from .. import (
    ForwardPath,
    Reply,
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
    TLSMode,
)

__all__ = [
    "EX_CANTCREAT",
    "EX_CONFIG",
    "EX_DATAERR",
    "EX_INTERRUPTED",
    "EX_NOINPUT",
    "EX_NOPERM",
    "EX_NOUSER",
    "EX_OK",
    "EX_PROTOCOL",
    "EX_SOFTWARE",
    "EX_TEMPFAIL",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "PROG",
    "TLS_CHOICES",
    "CLIError",
    "UsageParser",
    "add_connection_options",
    "exit_status",
    "refusals",
    "transcript_to",
]

PROG = "trio-sendmail"

# sysexits.h
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_PROTOCOL = 76
EX_NOPERM = 77
EX_CONFIG = 78
#: Not in sysexits.h: the shell's convention for SIGINT.
EX_INTERRUPTED = 130

TRANSCRIPT_LOGGER = "trio_sendmail.transcript"

#: The values of ``--tls`` (and of a profile's ``tls``).
TLS_CHOICES: Mapping[str, TLSMode] = {
    "implicit": TLSMode.IMPLICIT,
    "starttls": TLSMode.STARTTLS,
    "none": TLSMode.INSECURE_PLAINTEXT,
}


class CLIError(Exception):
    """A failure to report in one line, with its exit status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class UsageParser(argparse.ArgumentParser):
    """An argument parser whose errors exit with EX_USAGE (64), not 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


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
        return status, f"recipients refused: {'; '.join(refusals(exc.refused))}"
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
    if isinstance(exc, SMTPError):  # SMTPUsageError: a call made at the wrong time, a bug
        return EX_SOFTWARE, f"internal error: {text} (run with --debug)"
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


def refusals(refused: Mapping[ForwardPath, Reply]) -> list[str]:
    """``bob@example.com: 550 5.1.1 No such user`` for each refused recipient."""
    return [
        _one_line(f"{path.mailbox if path.mailbox is not None else path}: {reply}")
        for path, reply in refused.items()
    ]


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
