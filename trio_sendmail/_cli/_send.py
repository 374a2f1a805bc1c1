"""``trio-sendmail [send]``: submit one message, like ``sendmail(8)``.

What a ``sendmail`` does besides sending, as Postfix's ``sendmail`` and msmtp do:
the flags that callers such as mutt (``-oem -oi``) and cron (``-FCronDaemon -odi
-oem -oi -t``) pass are accepted (most of them ignored); ``Date:``,
``Message-ID:`` and ``From:`` are added when missing; bare local recipients
(``root``) are qualified with ``--domain``, or sent as ``<root>`` for the server
to complete (RFC 6409 §6.2); an empty message is refused. ``--serverinfo`` and
``--pretend`` send nothing.
"""

from __future__ import annotations

import argparse
import sys
import unicodedata
from collections.abc import Sequence

import trio

from .. import (
    ForwardPath,
    Outcome,
    OutcomeTracker,
    ReversePath,
    SendResult,
    SMTPInputError,
    open_session,
)
from ._common import (
    EX_CANTCREAT,
    EX_DATAERR,
    EX_NOINPUT,
    EX_NOUSER,
    EX_OK,
    EX_PROTOCOL,
    EX_USAGE,
    PROG,
    TLS_CHOICES,
    CLIError,
    UsageParser,
    add_connection_options,
    exit_status,
    refusals,
    transcript_to,
)
from ._config import Settings, describe, resolve_settings
from ._log import append_log
from ._message import (
    add_missing_headers,
    forward_paths,
    is_unqualified,
    parse_message,
    qualify,
    unique,
)

__all__ = ["run_send", "send_parser"]

#: The sendmail modes (``-b``) accepted: only "deliver mail", the default.
_MODES = ("m",)


def send_parser() -> argparse.ArgumentParser:
    parser = UsageParser(
        prog=PROG,
        usage=f"{PROG} [send] [options] [RECIPIENT ...]\n"
        f"       {PROG} bulk [options] SOURCE [RECIPIENT ...]\n"
        f"       {PROG} demo",
        description="Submit one RFC 5322 message, read from stdin or --message, to an SMTP "
        "server (like sendmail(8)). Other commands: 'bulk' sends a folder of .eml files "
        "or an mbox (see 'bulk --help'); 'demo' runs the embedded loopback demo.",
        epilog="Exit statuses follow sysexits.h: 0 sent, 64 usage, 65 empty message, "
        "66 unreadable input, 67 recipient refused, 69 unavailable, 70 internal error, "
        "73 log file, 75 temporary failure, 76 protocol error, 77 permission/authentication, "
        "78 configuration.",
        allow_abbrev=False,
        add_help=False,  # -h is sendmail's hop count; --help stays
    )
    parser.add_argument("--help", action="help", help="show this help message and exit")
    parser.add_argument(
        "recipients",
        nargs="*",
        metavar="RECIPIENT",
        help="envelope recipients (a bare name such as root is qualified with --domain)",
    )
    message = parser.add_argument_group("message")
    message.add_argument(
        "-f", "-r", "--from", dest="sender", metavar="ADDRESS",
        help="envelope sender (default: the account's 'from', else the From header)",
    )  # fmt: skip
    message.add_argument(
        "-F", "--full-name", dest="full_name", metavar="NAME",
        help="the sender's full name, used in a generated From: header",
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
    message.add_argument(
        "--serverinfo",
        action="store_true",
        help="print the server's greeting, capabilities and certificate; send nothing",
    )
    compat = parser.add_argument_group(
        "accepted for sendmail compatibility and ignored (as msmtp does)"
    )
    ignored = argparse.SUPPRESS
    compat.add_argument("-o", metavar="OPTION", action="append", default=ignored,
                        help="-oem, -odi, -oX…: sendmail options")  # fmt: skip
    compat.add_argument("-O", metavar="OPTION=VALUE", action="append", default=ignored,
                        help="long sendmail options")  # fmt: skip
    compat.add_argument("-b", dest="mode", metavar="MODE", default="m",
                        help="-bm (deliver mail) only")  # fmt: skip
    compat.add_argument("-B", metavar="TYPE", action="append", default=ignored,
                        help="body type (-B8BITMIME): the message is sent as it is")  # fmt: skip
    compat.add_argument("-A", metavar="c|m", action="append", default=ignored,
                        help="-Ac, -Am: configuration file choice")  # fmt: skip
    compat.add_argument("-L", metavar="TAG", action="append", default=ignored,
                        help="syslog tag")  # fmt: skip
    compat.add_argument("-h", metavar="N", action="append", default=ignored,
                        help="hop count")  # fmt: skip
    switches = (
        ("-m", "also send to me"),
        ("-n", "no aliasing"),
        ("-G", "gateway submission"),
        ("-U", "initial user submission"),
    )
    for flag, text in switches:
        compat.add_argument(flag, action="append_const", const=True, default=ignored, help=text)
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


# ------------------------------------------------------------------ the envelope


def _check_name(name: str | None) -> str | None:
    if name is not None and any(unicodedata.category(char)[0] == "C" for char in name):
        raise CLIError(EX_USAGE, "-F: the full name must not contain control characters")
    return name


def _sender(settings: Settings, header_sender: str | None) -> str:
    sender = settings.sender if settings.sender is not None else header_sender
    if sender is None:
        raise CLIError(
            EX_USAGE, "no sender: give -f ADDRESS, the account's from, or a From header"
        )
    sender = qualify(sender, settings.domain)
    if is_unqualified(sender) and sender not in ("", "<>"):
        raise CLIError(
            EX_USAGE,
            f"the sender {sender!r} has no domain: give --domain DOMAIN (or domain in the "
            "config file), or -f with a full address",
        )
    try:
        ReversePath.parse(sender)  # before it goes into a From: header
    except SMTPInputError as exc:
        raise CLIError(EX_USAGE, str(exc)) from exc
    return sender


def _id_domain(settings: Settings, sender: str) -> str:
    if settings.domain is not None:
        return settings.domain
    return sender.rpartition("@")[2] or settings.host


# ------------------------------------------------------------------ sending


async def _submit(
    settings: Settings,
    sender: str,
    recipients: list[ForwardPath | str],
    data: bytes,
    tracker: OutcomeTracker,
) -> SendResult:
    async with open_session(settings.connection()) as session:
        return await session.send(sender, recipients, data, dsn=settings.dsn, tracker=tracker)


def _log(
    settings: Settings,
    message_id: str,
    sender: str,
    recipients: Sequence[str],
    outcome: str,
    status: int,
    reply: str,
) -> None:
    if settings.log is None:
        return
    tls_names = {mode: name for name, mode in TLS_CHOICES.items()}
    append_log(
        settings.log,
        [
            ("host", settings.host),
            ("tls", tls_names[settings.tls]),
            ("account", settings.profile.name or "-"),
            ("message_id", message_id or "-"),
            ("from", sender),
            ("recipients", ",".join(recipients)),
            ("outcome", outcome),
            ("exitcode", str(status)),
            ("reply", reply),
        ],
    )


def _pretend(args: argparse.Namespace) -> int:
    settings = resolve_settings(args, args.sender, secrets=False)
    rows = describe(settings)
    if args.recipients:
        rows.append(("recipients", " ".join(qualify(r, settings.domain) for r in args.recipients)))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return EX_OK


def run_send(args: argparse.Namespace) -> int:
    """Run ``trio-sendmail send``; return the exit status (or raise the error)."""
    if args.mode not in _MODES:
        raise CLIError(EX_USAGE, f"-b{args.mode} is not supported: only -bm (deliver a message)")
    _check_name(args.full_name)
    if args.serverinfo:
        from ._serverinfo import run_serverinfo

        return run_serverinfo(args)
    if args.pretend:
        return _pretend(args)
    raw = _read_input(args.message)
    if not raw.strip():
        where = "stdin" if args.message in (None, "-") else args.message
        raise CLIError(EX_DATAERR, f"the message on {where} is empty: nothing was sent")
    message = parse_message(raw)
    settings = resolve_settings(args, args.sender or message.sender)
    recipients = list(args.recipients)
    if args.read_recipients:
        recipients.extend(message.recipients)
    recipients = unique([qualify(r, settings.domain) for r in recipients])
    if not recipients:
        hint = "" if args.read_recipients else " (or use -t to read them from the headers)"
        raise CLIError(EX_USAGE, f"no recipients given{hint}")
    sender = _sender(settings, message.sender)
    data = add_missing_headers(
        message.data,
        sender=sender,
        full_name=args.full_name,
        id_domain=_id_domain(settings, sender),
    )
    message_id = parse_message(data).message_id
    tracker = OutcomeTracker()
    try:
        with transcript_to(args.transcript):
            result = trio.run(_submit, settings, sender, forward_paths(recipients), data, tracker)
    except BaseException as exc:
        status, text = exit_status(exc, settings.hints)
        if isinstance(exc, Exception) and tracker.outcome is Outcome.UNKNOWN:
            # The end of data went out and its reply never came: the server may
            # have the message. 75 would ask the caller to try again, which could
            # deliver it twice; one status tells this case apart.
            status = EX_PROTOCOL
            text += (
                " (the server may have the message: its reply to the end of data never "
                "came; not status 75, so that a retry does not send it twice)"
            )
        outcome = tracker.outcome.value
        if not isinstance(exc, Exception):
            outcome = f"interrupted, {outcome}"
        try:
            _log(settings, message_id, sender, recipients, outcome, status, text)
        except CLIError as problem:  # the send's own error matters more
            print(f"{PROG}: {problem.message}", file=sys.stderr)
        if isinstance(exc, Exception) and not isinstance(exc, CLIError):
            raise CLIError(status, text) from exc
        raise
    status = EX_NOUSER if result.refused else EX_OK
    reply = str(result.reply)
    if result.refused:
        reply += "; refused: " + "; ".join(refusals(result.refused))
    unlogged = False
    try:
        _log(settings, message_id, sender, recipients, Outcome.ACCEPTED.value, status, reply)
    except CLIError as problem:  # sent all the same: never 75, a retry would duplicate it
        print(f"{PROG}: {problem.message}", file=sys.stderr)
        unlogged = True
    if args.verbose:
        print(f"{PROG}: accepted: {result.reply}")
    if result.refused:
        for line in refusals(result.refused):
            print(f"{PROG}: recipient refused: {line}", file=sys.stderr)
        # Sent to the others: a retry (75) would deliver it twice.
        return EX_NOUSER
    return EX_CANTCREAT if unlogged else EX_OK
