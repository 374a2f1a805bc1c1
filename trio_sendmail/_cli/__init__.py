"""The ``trio-sendmail`` command (also ``python -m trio_sendmail``).

Commands:

* ``trio-sendmail [send] [options] [RECIPIENT ...]``: submit one RFC 5322
  message read from stdin (or ``--message FILE``), like ``sendmail(8)``, with
  the flags mutt and cron pass (:mod:`._send`); ``--serverinfo``
  (:mod:`._serverinfo`), ``--pretend``, ``--version``;
* ``trio-sendmail bulk [options] SOURCE``: send a folder of ``.eml`` files or an
  mbox concurrently, with a progress display and a report (:mod:`._bulk`);
* ``trio-sendmail demo``: the README's demo over an embedded loopback server.

What the commands share (the sysexits codes, the usage parser, the connection
options, :func:`~._common.exit_status`) is in :mod:`._common`; the settings
and passwords in :mod:`._config`; reading a message in :mod:`._message`; the
send log in :mod:`._log`.
:mod:`._common` and :mod:`._message` import no other module of the command line,
:mod:`._profiles` (the profile files) and :mod:`._log` only :mod:`._common`,
:mod:`._config` only those; no module imports this one (which holds
:func:`main`), so there is no import cycle.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence

import trio

from ._bulk import bulk_parser, run_bulk
from ._common import (
    EX_INTERRUPTED,
    EX_OK,
    EX_SOFTWARE,
    EX_USAGE,
    PROG,
    CLIError,
    UsageParser,
    exit_status,
)
from ._send import run_send, send_parser

__all__ = ["main"]

COMMANDS = ("send", "bulk", "outbox", "demo")

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
    parser = UsageParser(
        prog=f"{PROG} demo",
        description="Send two mails through an embedded loopback server (implicit TLS and "
        "STARTTLS) and show the redacted transcript.",
    )
    parser.parse_args(argv)
    from .._demo import run_demo

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
        return _guarded(run_bulk, bulk_parser().parse_args(arguments[1:]))
    if command == "outbox":
        from ._outbox import outbox_parser, run_outbox

        return _guarded(run_outbox, outbox_parser().parse_args(arguments[1:]))
    if command == "send":
        arguments = arguments[1:]
    if arguments == ["-h"]:  # -h N is sendmail's hop count; -h alone asks for help
        arguments = ["--help"]
    if _queue_request(arguments):
        # sendmail -q (run the queue, as cron jobs do) and -bp (list it): mail is
        # handed to the server at once, so there is never a queue to run or list.
        print(f"{PROG}: no mail queue (mail is handed to the server at once): nothing to do")
        return EX_OK
    # Any other first word is a recipient, as for sendmail (``trio-sendmail root``).
    return _guarded(run_send, send_parser().parse_args(sendmail_arguments(arguments)))


def _queue_request(arguments: Sequence[str]) -> bool:
    """``-q``, ``-q30m``, ``-qf`` … or ``-bp`` as the first argument (``sendmail -q``,
    as cron jobs call it): a request about the queue. Elsewhere such a word may be
    an option's value (``-F -quentin``), so only the first one counts."""
    if not arguments:
        return False
    first = arguments[0]
    return first == "-bp" or (first.startswith("-q") and not first.startswith("--"))


def sendmail_arguments(arguments: Sequence[str]) -> list[str]:
    """The arguments of ``send`` with sendmail's spellings that argparse cannot parse
    made plain: ``-oi`` is ``-i`` (read up to end of file; there is no other way)."""
    translated: list[str] = []
    for index, arg in enumerate(arguments):
        if arg == "--":
            return translated + list(arguments[index:])
        translated.append("-i" if arg == "-oi" else arg)
    return translated
