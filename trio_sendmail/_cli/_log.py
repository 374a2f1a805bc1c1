"""The send log (``--log FILE``, a profile's ``log``): one line per message, like
msmtp's ``logfile``.

Each line is ``TIME key=value …`` with the time in ISO 8601 and values quoted when
they hold a space: the server, the message id, the sender, the recipients, the
outcome (``accepted``, ``refused``, ``unknown``, ``not sent``), the exit status
and the server's reply (or the one-line error). Credentials never appear: the
line is built from the envelope and the replies only. The file is created with
mode 0600 (it lists who wrote to whom) and each line is written with one
``write`` in append mode, so that concurrent runs do not mix their lines.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence

from ._common import EX_CANTCREAT, CLIError

__all__ = ["LogLine", "append_log", "log_line"]

LogLine = Sequence[tuple[str, str]]


def _value(text: str) -> str:
    text = " ".join(text.split())  # one line, whatever the server said
    if text and not any(char in text for char in ' "\\'):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def log_line(fields: LogLine, *, now: datetime.datetime | None = None) -> str:
    """``2026-12-02T03:30:00+00:00 host=… message_id=<…> … reply="250 2.0.0 Ok"``."""
    moment = now or datetime.datetime.now().astimezone()
    parts = [moment.isoformat(timespec="seconds")]
    parts.extend(f"{key}={_value(value)}" for key, value in fields)
    return " ".join(parts) + "\n"


def append_log(path: str, fields: LogLine) -> None:
    """Append one line to the log file *path* (created with mode 0600)."""
    line = log_line(fields).encode("utf-8", "backslashreplace")
    location = os.path.expanduser(path)
    try:
        fd = os.open(location, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as exc:
        raise CLIError(
            EX_CANTCREAT, f"cannot write the log file {location}: {exc.strerror or exc}"
        ) from exc
