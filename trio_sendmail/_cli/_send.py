"""``trio-sendmail [send]``: submit one message, like ``sendmail(8)``."""

from __future__ import annotations

import argparse
import sys

import trio

from .. import SendResult, open_session
from ._common import (
    EX_NOINPUT,
    EX_NOUSER,
    EX_OK,
    EX_USAGE,
    PROG,
    CLIError,
    UsageParser,
    add_connection_options,
    refusals,
    transcript_to,
)
from ._config import Settings, resolve_settings
from ._message import parse_message

__all__ = ["run_send", "send_parser"]


def send_parser() -> argparse.ArgumentParser:
    parser = UsageParser(
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
    async with open_session(settings.connection()) as session:
        return await session.send(sender, recipients, data, dsn=settings.dsn)


def run_send(args: argparse.Namespace) -> int:
    """Run ``trio-sendmail send``; return the exit status (or raise the error)."""
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
        for line in refusals(result.refused):
            print(f"{PROG}: recipient refused: {line}", file=sys.stderr)
        # Sent to the others: a retry (75) would deliver it twice.
        return EX_NOUSER
    return EX_OK
