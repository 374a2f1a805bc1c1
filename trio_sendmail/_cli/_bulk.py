"""``trio-sendmail bulk``: send a folder of ``.eml`` files or an mbox over a pool.

Each message gets one row in the report, in the order of the source, whatever
happens: sent, refused, never sent because the run stopped, or not even
readable. The exit status sums the rows up (see :func:`bulk_exit_status`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import mailbox
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

import attrs
import trio

from .. import (
    BulkMessage,
    BulkProgress,
    BulkResult,
    ForwardPath,
    Outcome,
    PoolLimits,
    Reply,
    SMTPInputError,
    SMTPRecipientsRefused,
    SMTPResponseError,
    open_pool,
    send_bulk,
)
from ._common import (
    EX_CANTCREAT,
    EX_INTERRUPTED,
    EX_NOINPUT,
    EX_NOUSER,
    EX_OK,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    EX_USAGE,
    NO_HINTS,
    PROG,
    TLS_CHOICES,
    CLIError,
    Hints,
    UsageParser,
    add_connection_options,
    exit_status,
    refusals,
    transcript_to,
)
from ._config import Settings, describe, resolve_settings
from ._log import append_log
from ._message import forward_paths, parse_message, qualify, unique

__all__ = ["ProgressView", "bulk_exit_status", "bulk_parser", "run_bulk"]

#: Seconds between two redraws of the progress bar.
BAR_INTERVAL = 0.1
#: Seconds between two progress lines when stdout is not a terminal.
LINE_INTERVAL = 10.0
REPORT_FIELDS = (
    "index",
    "source",
    "message_id",
    "sender",
    "recipients",
    "status",
    "attempts",
    "code",
    "enhanced_status",
    "detail",
    "refused",
)


def bulk_parser() -> argparse.ArgumentParser:
    parser = UsageParser(
        prog=f"{PROG} bulk",
        description="Send every message of SOURCE (a folder of .eml files, an mbox file, or "
        "one .eml file) concurrently. Recipients come from each message's To/Cc/Bcc (Bcc is "
        "removed) unless RECIPIENTs are given; the sender from -f, the account's 'from', "
        "or the From header.",
        epilog="Exit status: 0 if every message was accepted; 69 if one failed permanently "
        "(67 if only recipients were refused); else 75 if one failed temporarily or is of "
        "unknown outcome. A failure that stops the run (authentication, TLS) gives its own "
        "status, as for a single message.",
        allow_abbrev=False,
    )
    parser.add_argument("source", metavar="SOURCE", help="folder of .eml files, or mbox file")
    parser.add_argument(
        "recipients", nargs="*", metavar="RECIPIENT", help="send every message to these instead"
    )
    parser.add_argument(
        "-f", "-r", "--from", dest="sender", metavar="ADDRESS",
        help="envelope sender (default: the account's 'from', else each From header)",
    )  # fmt: skip
    run = parser.add_argument_group("bulk")
    run.add_argument(
        "-c", "--concurrency", type=int, default=4, metavar="N",
        help="connections sending at once, two messages in flight on each (default: 4)",
    )  # fmt: skip
    run.add_argument(
        "--rate", type=float, metavar="PER_SECOND", help="most messages started per second"
    )
    run.add_argument(
        "--max-retries", type=int, default=3, metavar="N",
        help="retries of a temporarily failing message (default: 3)",
    )  # fmt: skip
    run.add_argument(
        "--retry-backoff", type=float, default=1.0, metavar="SECONDS",
        help="the first retry waits up to this long, then twice as long (default: 1)",
    )  # fmt: skip
    run.add_argument(
        "--report", metavar="FILE", help="write each message's outcome to FILE.csv or FILE.json"
    )
    run.add_argument(
        "--progress",
        choices=("auto", "bar", "lines", "none"),
        default="auto",
        help="a live bar (default when stdout is a terminal), plain lines (default "
        "otherwise), or nothing",
    )
    add_connection_options(parser)
    return parser


# ------------------------------------------------------------------ sources


@attrs.frozen
class _Source:
    name: str
    load: Callable[[], bytes]


def _read_bytes(path: Path) -> Callable[[], bytes]:
    return path.read_bytes


def _sources(location: str, cleanup: contextlib.ExitStack) -> list[_Source]:
    path = Path(location)
    if path.is_dir():
        files = sorted(
            (p for p in path.iterdir() if p.suffix.lower() == ".eml" and p.is_file()),
            key=lambda p: p.name,
        )
        if not files:
            raise CLIError(EX_NOINPUT, f"no .eml files in {path}")
        return [_Source(str(p), _read_bytes(p)) for p in files]
    if not path.is_file():
        raise CLIError(EX_NOINPUT, f"cannot read {path}: no such file or folder")
    if path.suffix.lower() == ".eml":
        return [_Source(str(path), _read_bytes(path))]
    try:
        box = mailbox.mbox(path, create=False)
        cleanup.callback(box.close)
        keys = list(box.keys())
    except (OSError, mailbox.Error) as exc:
        raise CLIError(EX_NOINPUT, f"cannot read mbox {path}: {exc}") from exc
    if not keys:
        raise CLIError(EX_NOINPUT, f"no messages in {path} (is it an mbox?)")

    def loader(key: str) -> Callable[[], bytes]:
        return lambda: box.get_bytes(key)

    return [_Source(f"{path}#{number}", loader(key)) for number, key in enumerate(keys, 1)]


# ------------------------------------------------------------------ rows


@attrs.define
class _Row:
    index: int
    source: str
    message_id: str = ""
    sender: str = ""
    recipients: str = ""
    status: str = Outcome.NOT_SENT.value
    attempts: int = 0
    code: int | None = None
    enhanced_status: str = ""
    detail: str = ""
    refused: str = ""
    #: The sysexits.h status this message alone would give.
    exit: int = EX_TEMPFAIL

    def record(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in REPORT_FIELDS}


#: What an interrupted message's outcome means, for its row.
_INTERRUPTED = {
    Outcome.NOT_SENT: "interrupted before its end of data was sent: not sent",
    Outcome.UNKNOWN: "interrupted after its end of data was sent, before the reply: "
    "it may have been delivered (check before sending it again)",
    Outcome.REFUSED: "interrupted: refused",
    Outcome.ACCEPTED: "interrupted: accepted",
    Outcome.PARTIAL: "interrupted: delivered to some recipients only (LMTP)",
}


def _fill_row(row: _Row, result: BulkResult, hints: Hints = NO_HINTS) -> None:
    row.status = result.status.value
    row.attempts = result.attempts
    refused: Mapping[ForwardPath, Reply] = {}
    if result.result is not None:
        reply = result.result.reply
        row.code = reply.code
        row.enhanced_status = str(reply.enhanced_status or "")
        row.detail = str(reply)
        refused = result.result.refused
        row.exit = EX_NOUSER if refused else EX_OK
    error = result.error
    if error is not None:
        if isinstance(error, SMTPResponseError):
            row.code = error.code
            row.enhanced_status = str(error.enhanced_status or "")
        if isinstance(error, SMTPRecipientsRefused):
            refused = error.refused
            first = next(iter(refused.values()))
            row.code = first.code
            row.enhanced_status = str(first.enhanced_status or "")
        status, row.detail = exit_status(error, hints)
        if not isinstance(error, Exception):  # Ctrl-C, or the run cancelled
            row.detail = _INTERRUPTED[result.status]
        if result.status is Outcome.UNKNOWN or not isinstance(error, Exception):
            row.exit = EX_TEMPFAIL  # perhaps delivered, or the run was cut short
        else:  # refused, or not sent for good: as the error of a single message
            row.exit = status
    row.refused = "; ".join(refusals(refused))


def _log_row(settings: Settings, row: _Row) -> None:
    """One line of the send log for *row* (``--log``)."""
    tls_names = {mode: name for name, mode in TLS_CHOICES.items()}
    reply = f"{row.detail}; refused: {row.refused}" if row.refused else row.detail
    assert settings.log is not None
    append_log(
        settings.log,
        [
            ("host", settings.host),
            ("tls", tls_names[settings.tls]),
            ("account", settings.profile.name or "-"),
            ("source", row.source),
            ("message_id", row.message_id or "-"),
            ("from", row.sender),
            ("recipients", ",".join(row.recipients.split())),
            ("outcome", row.status),
            ("exitcode", str(row.exit)),
            ("reply", reply),
        ],
    )


def bulk_exit_status(codes: set[int]) -> int:
    """Sum up the statuses of every message: a permanent failure (69) outranks refused
    recipients (67), which outrank temporary failures (75)."""
    if codes - {EX_OK, EX_NOUSER, EX_TEMPFAIL}:
        return EX_UNAVAILABLE
    for code in (EX_NOUSER, EX_TEMPFAIL):
        if code in codes:
            return code
    return EX_OK


# ------------------------------------------------------------------ progress


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


class ProgressView:
    """Shows a bulk run: a bar redrawn in place on a terminal, plain lines elsewhere.

    Args:
        out: where to write.
        total: the number of messages.
        mode: ``"bar"``, ``"lines"`` or ``"none"``.
        clock: seconds, for throttling the redraws.
    """

    def __init__(
        self,
        out: TextIO,
        total: int,
        mode: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._out = out
        self._total = total
        self._mode = mode
        self._clock = clock
        self._started = clock()
        self._last_draw = -float("inf")
        self._drawn = False
        self._progress = BulkProgress(0, 0, 0, 0, 0, 0, 0.0)
        #: Messages not sent because they failed before reaching the sender
        #: (unreadable, no recipient).
        self.local_failures = 0

    def _counts(self) -> tuple[int, int, int, int, int, int]:
        p = self._progress
        not_sent = p.not_sent + self.local_failures
        done = p.done + self.local_failures
        return done, p.accepted, p.refused, not_sent, p.retried, p.unknown

    def status_text(self, *, final: bool = False) -> str:
        """``12/20  sent 11  refused 1  retried 0  34.5 msg/s  ETA 0:01``."""
        done, sent, refused, not_sent, retried, unknown = self._counts()
        elapsed = self._progress.elapsed
        rate = sent / elapsed if elapsed > 0 else 0.0
        parts = [f"{done}/{self._total}", f"sent {sent}", f"refused {refused}"]
        if not_sent:
            parts.append(f"not sent {not_sent}")
        parts.append(f"retried {retried}")
        if unknown:
            parts.append(f"unknown {unknown}")
        parts.append(f"{rate:.1f} msg/s")
        if final:
            parts.append(f"in {elapsed:.1f} s")
        else:
            per_message = elapsed / done if done else None
            eta = "?" if per_message is None else _duration((self._total - done) * per_message)
            parts.append(f"ETA {eta}")
        return "  ".join(parts)

    def _bar(self, *, final: bool = False) -> str:
        done = self._counts()[0]
        width = 20
        filled = width * done // self._total if self._total else width
        line = f"[{'#' * filled}{'-' * (width - filled)}] {self.status_text(final=final)}"
        columns = shutil.get_terminal_size((80, 24)).columns
        return line[: max(columns - 1, 10)]  # never wrap: a wrapped line cannot be redrawn

    def _draw(self, *, final: bool = False) -> None:
        self._out.write("\r\x1b[2K" + self._bar(final=final))
        self._out.flush()
        self._drawn = True
        self._last_draw = self._clock()

    def update(self, progress: BulkProgress) -> None:
        """Take a new snapshot; redraw if it is time to."""
        self._progress = progress
        now = self._clock()
        if self._mode == "bar" and now - self._last_draw >= BAR_INTERVAL:
            self._draw()
        elif self._mode == "lines" and now - self._last_draw >= LINE_INTERVAL:
            if self._drawn:  # not at the very start
                self._out.write(f"progress: {self.status_text()}\n")
                self._out.flush()
            self._drawn = True
            self._last_draw = now

    def message(self, text: str) -> None:
        """Print one line about one message (above the bar, on a terminal)."""
        if self._mode == "none":
            return
        if self._mode == "bar":
            self._out.write("\r\x1b[2K" + text + "\n")
            self._draw()
        else:
            self._out.write(text + "\n")
            self._out.flush()

    def finish(self) -> None:
        """The final state: the bar drawn complete, or a summary line."""
        if self._mode == "bar":
            self._draw(final=True)
            self._out.write("\n")
        elif self._mode == "lines":
            self._out.write(self.status_text(final=True) + "\n")
        self._out.flush()


# ------------------------------------------------------------------ report


def _write_report(file: TextIO, kind: str, rows: list[_Row], status: int) -> None:
    records = [row.record() for row in rows]
    if kind == ".csv":
        writer = csv.DictWriter(file, fieldnames=REPORT_FIELDS)
        writer.writeheader()
        writer.writerows(records)
    else:
        counts: dict[str, int] = {}
        for row in rows:
            counts[row.status] = counts.get(row.status, 0) + 1
        json.dump({"exit_status": status, "counts": counts, "messages": records}, file, indent=2)
        file.write("\n")


def _open_report(path: str | None) -> tuple[TextIO, str] | None:
    if path is None:
        return None
    kind = Path(path).suffix.lower()
    if kind not in (".csv", ".json"):
        raise CLIError(EX_USAGE, f"--report must name a .csv or .json file, not {path!r}")
    try:
        return open(path, "w", encoding="utf-8", newline=""), kind
    except OSError as exc:
        raise CLIError(EX_CANTCREAT, f"cannot write {path}: {exc.strerror or exc}") from exc


# ------------------------------------------------------------------ the run


def _messages(
    sources: list[_Source],
    rows: list[_Row],
    args: argparse.Namespace,
    settings: Settings,
    view: ProgressView,
) -> Iterator[BulkMessage]:
    """Read each message when a worker is ready for it (memory stays flat)."""

    def fail(row: _Row, detail: str) -> None:
        row.status, row.detail, row.exit = Outcome.NOT_SENT.value, detail, EX_USAGE
        view.local_failures += 1
        view.message(f"{row.status:<8} {row.source}: {detail}")

    for source, row in zip(sources, rows, strict=True):
        try:
            raw = source.load()
        except (OSError, KeyError) as exc:
            fail(row, f"cannot read: {exc}")
            continue
        parsed = parse_message(raw)
        row.message_id = parsed.message_id
        recipients = list(args.recipients) or list(parsed.recipients)
        recipients = unique([qualify(address, settings.domain) for address in recipients])
        sender = settings.sender if settings.sender is not None else parsed.sender
        if sender is not None:
            sender = qualify(sender, settings.domain)
        row.sender = sender or ""
        row.recipients = " ".join(recipients)
        if not recipients:
            fail(row, "no recipients: no To/Cc/Bcc address, and none given")
            continue
        if sender is None:
            fail(row, "no sender: give -f, or a From header with one address")
            continue
        try:
            paths = forward_paths(recipients)
            message = BulkMessage(sender, paths, parsed.data, key=row.index, dsn=settings.dsn)
        except SMTPInputError as exc:  # a malformed address: this message only
            fail(row, f"bad address: {exc}")
            continue
        yield message


async def _run(
    settings: Settings,
    args: argparse.Namespace,
    messages: Iterator[BulkMessage],
    on_result: Callable[[BulkResult], None],
    view: ProgressView,
) -> None:
    async with open_pool(
        settings.connection(), limits=PoolLimits(max_connections=args.concurrency)
    ) as pool:
        await send_bulk(
            messages,
            pool=pool,
            concurrency=args.concurrency,
            max_retries=args.max_retries,
            retry_backoff=args.retry_backoff,
            rate=args.rate,
            on_result=on_result,
            progress=view.update,
        )


def run_bulk(args: argparse.Namespace) -> int:
    """Run ``trio-sendmail bulk``; return the exit status (or raise a fatal error)."""
    with contextlib.ExitStack() as cleanup:
        return _run_bulk(args, cleanup)


def _run_bulk(args: argparse.Namespace, cleanup: contextlib.ExitStack) -> int:
    if args.concurrency < 1 or args.max_retries < 0 or not args.retry_backoff >= 0:
        raise CLIError(EX_USAGE, "--concurrency must be >= 1, --max-retries and "
                       "--retry-backoff >= 0")  # fmt: skip
    if args.rate is not None and not args.rate > 0:
        raise CLIError(EX_USAGE, "--rate must be a positive number of messages per second")
    if args.pretend:
        settings = resolve_settings(args, args.sender, secrets=False)
        described = describe(settings)
        width = max(len(name) for name, _ in described)
        for name, value in described:
            print(f"{name:<{width}}  {value}")
        return EX_OK
    settings = resolve_settings(args, args.sender)
    sources = _sources(args.source, cleanup)
    report = _open_report(args.report)
    rows = [_Row(index, source.name) for index, source in enumerate(sources, 1)]
    mode = args.progress
    if mode == "auto":
        mode = "bar" if sys.stdout.isatty() else "lines"
    view = ProgressView(sys.stdout, len(rows), mode)

    def on_result(result: BulkResult) -> None:
        key = result.message.key
        assert isinstance(key, int)
        row = rows[key - 1]
        _fill_row(row, result, settings.hints)
        if settings.log is not None:
            _log_row(settings, row)
        if result.status is Outcome.ACCEPTED and not row.refused:
            if mode == "lines":
                view.message(f"sent     {row.source}: {row.detail}")
        else:
            detail = f"{row.detail}; refused: {row.refused}" if row.refused else row.detail
            view.message(f"{row.status:<8} {row.source}: {detail}")

    status = EX_TEMPFAIL
    try:
        with transcript_to(args.transcript):
            trio.run(_run, settings, args, _messages(sources, rows, args, settings, view),
                     on_result, view)  # fmt: skip
        status = bulk_exit_status({row.exit for row in rows})
    except BaseException as exc:  # stopped early: every message gets a row all the same
        status, text = exit_status(exc, settings.hints)
        if not isinstance(exc, Exception):
            status = EX_INTERRUPTED
        for row in rows:
            if row.status == Outcome.NOT_SENT.value and not row.detail:
                row.detail = "not sent: the run stopped"
        if isinstance(exc, Exception) and not isinstance(exc, CLIError):
            raise CLIError(status, text) from exc
        raise
    finally:
        view.finish()
        if report is not None:
            file, kind = report
            with file:
                _write_report(file, kind, rows, status)
    return status
