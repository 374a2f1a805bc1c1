"""The ``trio-sendmail`` command (also ``python -m trio_sendmail``).

Commands:

* ``trio-sendmail [send] [options] [RECIPIENT ...]``: submit one RFC 5322
  message read from stdin (or ``--message FILE``), like ``sendmail(8)``
  (:mod:`._send`);
* ``trio-sendmail bulk [options] SOURCE``: send a folder of ``.eml`` files or an
  mbox concurrently, with a progress display and a report (:mod:`._bulk`);
* ``trio-sendmail demo``: the README's demo over an embedded loopback server.

What the commands share (the sysexits codes, the usage parser, the connection
options, :func:`~._common.exit_status`) is in :mod:`._common`; the profile file
and passwords in :mod:`._config`; reading a message in :mod:`._message`.
:mod:`._common` and :mod:`._message` import no other module of the command line,
:mod:`._config` only :mod:`._common`; no module imports this one (which holds
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

COMMANDS = ("send", "bulk", "demo")

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
    if command == "send":
        arguments = arguments[1:]
    elif command is not None and not command.startswith("-") and "@" not in command:
        send_parser().error(
            f"unknown command {command!r}: use send, bulk or demo (a recipient needs a domain)"
        )
    # sendmail's -oi (same as -i) is not an argparse-style option.
    arguments = ["-i" if arg == "-oi" else arg for arg in arguments]
    return _guarded(run_send, send_parser().parse_args(arguments))
