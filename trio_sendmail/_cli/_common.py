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
import ssl
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import NoReturn

import attrs
import trio

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
    "NO_HINTS",
    "PROG",
    "TLS_CHOICES",
    "CLIError",
    "Hints",
    "UsageParser",
    "add_connection_options",
    "cli_words",
    "exit_status",
    "refusals",
    "transcript_to",
    "version_text",
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


@attrs.frozen
class Hints:
    """What an error message may suggest, from the settings in use."""

    #: The CA file given, if any (then ``--cafile`` is not suggested again).
    cafile: str | None = None
    tls: TLSMode | None = None
    #: Not implicit TLS, on a port that looks like implicit TLS (465).
    implicit_port: bool = False


NO_HINTS = Hints()

#: The library's Python names, as the command line's flags (messages speak CLI).
_CLI_WORDS = (
    ("pass insecure_auth_over_plaintext=True", "use --insecure-plaintext-auth"),
    ("insecure_auth_over_plaintext=True", "--insecure-plaintext-auth"),
    ("TLSMode.INSECURE_PLAINTEXT", "--tls none"),
    ("TLSMode.STARTTLS", "--tls starttls"),
    ("TLSMode.IMPLICIT", "--tls implicit"),
    ("ssl_context", "--cafile"),
)


def cli_words(text: str) -> str:
    """*text* with the library's Python names replaced by the flags that set them."""
    for python, flag in _CLI_WORDS:
        text = text.replace(python, flag)
    return text


class UsageParser(argparse.ArgumentParser):
    """An argument parser whose errors exit with EX_USAGE (64), not 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


# ------------------------------------------------------------------ errors


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _certificate_problem(exc: BaseException) -> str | None:
    """The verification message of an SSLCertVerificationError in *exc*'s causes."""
    for current in _causes(exc):
        if isinstance(current, ssl.SSLCertVerificationError):
            return str(current.verify_message or current.reason or current)
    return None


def _not_tls(exc: BaseException) -> bool:
    """Whether the server answered the TLS handshake with something that is not TLS
    (an SMTP greeting in plain text: ``wrong version number``)."""
    return any(
        isinstance(current, ssl.SSLError) and current.reason == "WRONG_VERSION_NUMBER"
        for current in _causes(exc)
    )


def exit_status(exc: BaseException, hints: Hints = NO_HINTS) -> tuple[int, str]:
    """The sysexits.h status for *exc*, and a one-line message for a person.

    The order matters: the first matching line of the table in docs/cli.rst wins.
    *hints* says what the message may suggest (no ``--cafile`` when one was given).
    """
    status, message = _exit_status(exc, hints)
    return status, cli_words(message)


def _exit_status(exc: BaseException, hints: Hints) -> tuple[int, str]:
    if isinstance(exc, CLIError):
        return exc.code, exc.message
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _exit_status(exc.exceptions[0], hints)
    if isinstance(exc, trio.Cancelled | KeyboardInterrupt):
        return EX_INTERRUPTED, "interrupted"
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
        if exc.phase == "greeting" and hints.implicit_port:
            # Not 75: trying again later would wait in silence just the same.
            return (
                EX_UNAVAILABLE,
                f"no greeting from the server ({text}): this port looks like implicit TLS, "
                "where the server waits for a TLS handshake; try --tls implicit",
            )
        return EX_TEMPFAIL, f"timed out: {text}"
    if isinstance(exc, SMTPTLSError):
        problem = _certificate_problem(exc)
        if problem is not None:
            advice = (
                f"the certificate is not signed by a CA in {hints.cafile}"
                if hints.cafile is not None
                else "use --cafile to trust a private CA"
            )
            return (
                EX_UNAVAILABLE,
                f"TLS certificate verification failed: {_one_line(problem)} ({advice})",
            )
        if hints.tls is TLSMode.IMPLICIT and _not_tls(exc):
            return (
                EX_UNAVAILABLE,
                f"TLS failed: {text} (the server answered in plain text: this port does "
                "not speak implicit TLS; try --tls starttls)",
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


def version_text() -> str:
    """``trio-sendmail 0.1.0 (trio 0.27.0, Python 3.11.2, OpenSSL 3.0.x)``."""
    import platform

    from .. import __version__

    return (
        f"{PROG} {__version__} (trio {trio.__version__}, Python {platform.python_version()}, "
        f"{ssl.OPENSSL_VERSION})"
    )


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
        help="implicit TLS, required STARTTLS, or none (default: from the port: implicit "
        "for 465 or no port, starttls for 587, 25 and any other port)",
    )
    server.add_argument(
        "--cafile", metavar="FILE", help="trust only the CA certificates in this PEM file"
    )
    server.add_argument("--helo", metavar="NAME", help="the EHLO name (default: this host's FQDN)")
    server.add_argument(
        "--domain",
        metavar="DOMAIN",
        help="qualify bare local addresses (root becomes root@DOMAIN); "
        "default: none, they are sent as <root>",
    )
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
        help="run CMD with /bin/sh -c (like msmtp's passwordeval) and use the first line "
        "of its output as the password",
    )
    auth.add_argument("--netrc-file", metavar="FILE", help="netrc file (default: ~/.netrc)")
    auth.add_argument(
        "--insecure-plaintext-auth",
        action="store_true",
        help="allow AUTH without TLS (anyone on the path can read the password)",
    )
    profile = parser.add_argument_group("profiles")
    profile.add_argument(
        "-C",
        "--config",
        metavar="FILE",
        help="profile file (default: ~/.config/trio-sendmail/config.toml; "
        "/etc/trio-sendmail.toml is read before it)",
    )
    profile.add_argument(
        "-a",
        "--account",
        metavar="NAME",
        help="use this account of the profile file (default: the account whose 'from' is "
        "the sender, else the default account)",
    )
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
    dsn.add_argument(
        "-V", "--dsn-envid", metavar="ID", help="envelope identifier returned in reports"
    )
    dsn.add_argument("--dsn-orcpt", action="store_true", help="send each recipient as ORCPT")
    output = parser.add_argument_group("output")
    output.add_argument(
        "--transcript",
        action="store_true",
        help="print the SMTP dialogue to stderr (credentials redacted)",
    )
    output.add_argument("--debug", action="store_true", help="print the traceback of an error")
    output.add_argument(
        "--log",
        metavar="FILE",
        help="append one line per message to FILE: time, message id, recipients, outcome, "
        "reply (like msmtp's logfile)",
    )
    output.add_argument(
        "--pretend",
        action="store_true",
        help="print the effective settings (secrets masked) and send nothing",
    )
    output.add_argument("--version", action="version", version=version_text())
