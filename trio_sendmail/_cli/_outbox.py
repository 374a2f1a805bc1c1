"""``trio-sendmail outbox``: a durable outbox from the command line.

Subcommands: ``init`` (create the database), ``enqueue FILES…`` (``.eml`` files,
folders of them, or mboxes; the Message-ID is the idempotency key, so enqueueing
a file twice stores it once; with ``--to`` or ``--from``, the key is the
Message-ID and a digest of that envelope, so the same file queued for other
recipients is another message), ``work`` (send until interrupted, or until the
outbox is empty, with a progress display), ``status`` and ``resolve-unknown``.

The database is ``--db URL`` (or ``$TRIO_SENDMAIL_OUTBOX``), by default the
SQLite file ``$XDG_DATA_HOME/trio-sendmail/outbox.db``
(``~/.local/share/trio-sendmail/outbox.db``). A URL's password is never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import trio

from .. import BulkMessage, BulkProgress, PoolLimits
from ..outbox import Outbox, OutboxStatistics, State, WorkProgress, open_outbox
from ._bulk import ProgressView, _sources
from ._common import (
    EX_CANTCREAT,
    EX_DATAERR,
    EX_INTERRUPTED,
    EX_NOINPUT,
    EX_OK,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    EX_USAGE,
    PROG,
    CLIError,
    UsageParser,
    add_connection_options,
    exit_status,
    transcript_to,
)
from ._config import resolve_settings
from ._message import parse_message

__all__ = ["default_outbox_url", "outbox_parser", "redact_url", "run_outbox"]

ENV_URL = "TRIO_SENDMAIL_OUTBOX"


def default_outbox_url() -> str:
    """``sqlite:///`` + the outbox file in the user's data folder (XDG)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return "sqlite:///" + os.path.join(base, "trio-sendmail", "outbox.db")


#: Query parameters of a PostgreSQL URL that hold a secret (libpq's names).
_SECRET_PARAMETERS = frozenset({"password", "sslpassword", "passfile", "sslkey"})


def redact_url(url: str) -> str:
    """*url* with its secrets masked: the password of its netloc, and the query
    parameters that hold one (``?password=…``, ``sslpassword``, …)."""
    parts = original = urlsplit(url)
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        parts = parts._replace(netloc=f"{user}:***@{host}")
    if parts.query:
        query = parse_qsl(parts.query, keep_blank_values=True)
        masked = [(k, "***" if k.lower() in _SECRET_PARAMETERS else v) for k, v in query]
        if masked != query:
            parts = parts._replace(query=urlencode(masked, safe="*"))
    # Rebuilt only when something was masked (urlunsplit drops sqlite:////'s "//").
    return url if parts is original else urlunsplit(parts)


def outbox_parser() -> argparse.ArgumentParser:
    parser = UsageParser(
        prog=f"{PROG} outbox",
        description="A durable outbox (SQLite or PostgreSQL) that survives restarts: "
        "enqueue messages, then run one or more workers.",
        epilog="Exit status: 0 on success; for work, 69 if a message was refused or "
        "failed for good, else 75 if one has an unknown outcome; 130 when interrupted.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--db",
        metavar="URL",
        help=f"sqlite:///path or postgresql://… (default: ${ENV_URL}, else "
        f"{redact_url(default_outbox_url())})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("init", help="create (or upgrade) the outbox database")
    enqueue = commands.add_parser("enqueue", help="queue .eml files, folders or mboxes")
    enqueue.add_argument("files", nargs="+", metavar="FILE")
    enqueue.add_argument(
        "-f",
        "--from",
        dest="sender",
        metavar="ADDRESS",
        help="envelope sender (default: each From header)",
    )
    enqueue.add_argument(
        "--to",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="send to these instead of To/Cc/Bcc (repeatable)",
    )
    enqueue.add_argument(
        "--no-key", action="store_true", help="do not use the Message-ID as idempotency key"
    )
    work = commands.add_parser("work", help="send the queued messages")
    work.add_argument(
        "--until-empty",
        action="store_true",
        help="stop when nothing is left to send (default: run until interrupted)",
    )
    work.add_argument(
        "-c",
        "--concurrency",
        type=int,
        default=4,
        metavar="N",
        help="connections sending at once (default: 4)",
    )
    work.add_argument(
        "--rate", type=float, metavar="PER_SECOND", help="most messages per second for this worker"
    )
    work.add_argument(
        "--progress",
        choices=("auto", "bar", "lines", "none"),
        default="auto",
        help="a live bar (default on a terminal), plain lines, or nothing",
    )
    add_connection_options(work)
    work.set_defaults(sender=None)  # the sender is each message's own
    status = commands.add_parser("status", help="counts per state")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument(
        "--list",
        choices=[s.value for s in State],
        metavar="STATE",
        help="also list the rows in this state",
    )
    resolve = commands.add_parser("resolve-unknown", help="decide rows of unknown outcome")
    resolve.add_argument("ids", nargs="*", type=int, metavar="ID")
    resolve.add_argument("--all", action="store_true", help="every unknown row")
    what = resolve.add_mutually_exclusive_group(required=True)
    what.add_argument("--resend", action="store_true", help="send them again (may duplicate)")
    what.add_argument("--give-up", action="store_true", help="mark them failed, never resend")
    return parser


def _check_file(url: str, *, create: bool) -> None:
    """An SQLite outbox's folder is created by ``init``; the other commands
    need the file to be there already."""
    if not url.lower().startswith("sqlite:"):
        return
    path = Path(urlsplit(url).path[1:])
    if create:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CLIError(EX_CANTCREAT, f"cannot create {path.parent}: {exc}") from exc
    elif not path.exists():
        raise CLIError(EX_NOINPUT, f"no outbox at {url}: run `{PROG} outbox init` first")


@contextlib.asynccontextmanager
async def _opened(url: str, *, create: bool) -> AsyncIterator[Outbox]:
    shown = redact_url(url)
    _check_file(url, create=create)
    entered = False
    try:
        async with open_outbox(url) as outbox:
            entered = True
            yield outbox
    except (CLIError, KeyboardInterrupt):
        raise
    except ValueError as exc:
        if entered:
            raise
        raise CLIError(EX_USAGE, str(exc)) from exc
    except ImportError as exc:
        if entered:
            raise
        raise CLIError(EX_UNAVAILABLE, str(exc)) from exc
    except Exception as exc:  # sqlite3.Error, psycopg.Error: the database is unusable
        if entered:
            raise
        code = EX_CANTCREAT if create else EX_UNAVAILABLE
        raise CLIError(code, f"cannot open the outbox {shown}: {exc}") from exc


def _status_lines(stats: OutboxStatistics) -> list[str]:
    counts = "  ".join(f"{state.value} {stats.counts[state]}" for state in State)
    age = stats.oldest_pending_age
    lines = [counts, f"attempts {stats.attempts}  retried rows {stats.retried}"]
    if age is not None:
        lines.append(f"oldest pending: {age:.0f} s")
    return lines


async def _init(args: argparse.Namespace, url: str) -> int:
    async with _opened(url, create=True) as outbox:
        stats = await outbox.statistics()
    print(f"outbox ready: {redact_url(url)} ({stats.total} messages)")
    return EX_OK


def _address_key(address: str) -> str:
    local, at, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}" if at else address


def _envelope_digest(sender: str, recipients: list[str]) -> str:
    """A short digest of an envelope given on the command line: part of the
    idempotency key, so that a file queued again for other recipients (or
    from another sender) is not taken for the message already queued."""
    # Domains are case-insensitive, local parts are not (RFC 5321 §2.4).
    text = "\n".join([_address_key(sender), *sorted(_address_key(r) for r in recipients)])
    return "env:" + hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _messages(args: argparse.Namespace) -> list[BulkMessage]:
    messages = []
    with contextlib.ExitStack() as cleanup:
        for name in args.files:
            for source in _sources(name, cleanup):
                try:
                    raw = source.load()
                except (OSError, KeyError) as exc:
                    raise CLIError(EX_NOINPUT, f"cannot read {source.name}: {exc}") from exc
                parsed = parse_message(raw)
                recipients = list(args.to) or list(parsed.recipients)
                sender = args.sender if args.sender is not None else parsed.sender
                if not recipients:
                    raise CLIError(EX_DATAERR, f"{source.name}: no recipients (give --to)")
                if sender is None:
                    raise CLIError(EX_DATAERR, f"{source.name}: no sender (give -f)")
                key = None if args.no_key or not parsed.message_id else parsed.message_id
                if key is not None and (args.to or args.sender is not None):
                    key = f"{key} {_envelope_digest(sender, recipients)}"
                messages.append(BulkMessage(sender, recipients, parsed.data, key=key))
    return messages


async def _enqueue(args: argparse.Namespace, url: str) -> int:
    messages = _messages(args)  # every file read and checked before the database
    async with _opened(url, create=False) as outbox:
        before = (await outbox.statistics()).total
        try:
            ids = await outbox.enqueue(messages)
        except (TypeError, ValueError) as exc:
            raise CLIError(EX_DATAERR, f"nothing enqueued: {exc}") from exc
        added = (await outbox.statistics()).total - before
    print(f"enqueued {added} messages ({len(ids) - added} were already there)")
    return EX_OK


async def _work(args: argparse.Namespace, url: str) -> int:
    if args.concurrency < 1 or (args.rate is not None and not args.rate > 0):
        raise CLIError(EX_USAGE, "--concurrency must be >= 1 and --rate > 0")
    settings = resolve_settings(args, None)
    mode = args.progress
    if mode == "auto":
        mode = "bar" if sys.stdout.isatty() else "lines"
    async with _opened(url, create=False) as outbox:
        view = ProgressView(sys.stdout, (await outbox.statistics()).open, mode)

        def progress(p: WorkProgress) -> None:
            view.update(
                BulkProgress(
                    accepted=p.sent,
                    refused=p.refused,
                    unknown=p.unknown,
                    not_sent=p.failed,
                    retried=p.retried,
                    in_flight=p.in_flight,
                    elapsed=p.elapsed,
                )
            )

        try:
            with transcript_to(args.transcript):
                summary = await outbox.work(
                    settings.connection(),
                    limits=PoolLimits(max_connections=args.concurrency),
                    concurrency=args.concurrency,
                    rate=args.rate,
                    until_empty=args.until_empty,
                    progress=progress,
                )
        finally:
            view.finish()
    if summary.refused or summary.failed:
        return EX_UNAVAILABLE
    return EX_TEMPFAIL if summary.unknown else EX_OK


async def _status(args: argparse.Namespace, url: str) -> int:
    async with _opened(url, create=False) as outbox:
        stats = await outbox.statistics()
        rows = [] if args.list is None else await outbox.entries(state=State(args.list))
    if args.json:
        document: dict[str, Any] = {
            "counts": {s.value: n for s, n in stats.counts.items()},
            "oldest_pending_age": stats.oldest_pending_age,
            "attempts": stats.attempts,
            "retried": stats.retried,
        }
        if args.list is not None:
            document["rows"] = [
                {
                    "id": e.id,
                    "key": e.key,
                    "attempts": e.attempts,
                    "reply_code": e.reply_code,
                    "reply_text": e.reply_text,
                    "error": e.error,
                }
                for e in rows
            ]
        print(json.dumps(document, indent=2))
        return EX_OK
    for line in _status_lines(stats):
        print(line)
    for e in rows:
        detail = e.error or (f"{e.reply_code} {e.reply_text}" if e.reply_code else "")
        print(f"{e.id}\t{e.key or '-'}\tattempts {e.attempts}\t{detail}")
    return EX_OK


async def _resolve(args: argparse.Namespace, url: str) -> int:
    if bool(args.ids) == bool(args.all):
        raise CLIError(EX_USAGE, "give the ids of the rows, or --all")
    async with _opened(url, create=False) as outbox:
        ids: Sequence[int] = args.ids
        if args.all:
            ids = [e.id for e in await outbox.entries(state=State.UNKNOWN)]
        changed = await outbox.resolve_unknown(ids, resend=args.resend)
    verb = "queued again" if args.resend else "marked failed"
    print(f"{len(changed)} rows {verb}")
    missed = sorted(set(ids) - set(changed))
    if missed:
        print(f"{PROG}: not unknown (left alone): {' '.join(map(str, missed))}", file=sys.stderr)
        return EX_DATAERR
    return EX_OK


_COMMANDS = {
    "init": _init,
    "enqueue": _enqueue,
    "work": _work,
    "status": _status,
    "resolve-unknown": _resolve,
}


async def _until_terminated(
    command: Callable[[argparse.Namespace, str], Awaitable[int]],
    args: argparse.Namespace,
    url: str,
) -> int:
    """Run *command*; SIGTERM (``systemctl stop``, ``docker stop``, Kubernetes)
    stops it as Ctrl-C does, so that a worker records what it knows and gives
    its claims back before it exits, instead of dying with them."""
    outcome: list[int] = []
    terminated = False
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        try:
            async with trio.open_nursery() as nursery:

                async def run() -> None:
                    outcome.append(await command(args, url))
                    nursery.cancel_scope.cancel()

                async def watch() -> None:
                    nonlocal terminated
                    async for _ in signals:
                        terminated = True
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(run)
                nursery.start_soon(watch)
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:  # the command's own error, as it raised it
                raise group.exceptions[0] from group.exceptions[0].__cause__
            raise
    if terminated or not outcome:
        raise KeyboardInterrupt  # reported as an interruption (exit 130)
    return outcome[0]


def run_outbox(args: argparse.Namespace) -> int:
    """Run ``trio-sendmail outbox …``; return the exit status (or raise CLIError)."""
    url = args.db or os.environ.get(ENV_URL) or default_outbox_url()
    try:
        return trio.run(_until_terminated, _COMMANDS[args.command], args, url)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (every outcome so far is recorded)", file=sys.stderr)
        return EX_INTERRUPTED
    except CLIError:
        raise
    except Exception as exc:
        status, text = exit_status(exc)
        raise CLIError(status, text) from exc
