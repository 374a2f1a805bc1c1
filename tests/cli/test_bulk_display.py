"""The bulk progress display as a person sees it: in a pseudo-terminal, and piped.

``trio-sendmail bulk`` runs as a subprocess whose stdout is a pty; what it writes
is fed to a tiny terminal-screen emulator, and the assertions are about the
screen, not the bytes.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from trio_sendmail.testing import FakeSMTPServer

from ..cli_support import serving_in_thread
from .test_main import REPO, write_messages

_CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


class Screen:
    """A terminal screen: enough of a VT100 for what the progress bar emits.

    Handles printable characters (overwriting, with auto-wrap at the right
    margin), ``\\r``, ``\\n`` (down one line, as a terminal does; the pty's
    ONLCR adds the ``\\r``), ``\\b``, and the
    CSI sequences erase-line (``K``, ``2K``, ``1K``), cursor up/down/forward/back
    (``A``/``B``/``C``/``D``) and column (``G``). Other CSI sequences are ignored.
    """

    def __init__(self, columns: int = 100) -> None:
        self.columns = columns
        self.lines: list[list[str]] = [[]]
        self.row = 0
        self.col = 0
        self.wrap_pending = False  # the last column was written: the next char wraps

    def _line(self) -> list[str]:
        while len(self.lines) <= self.row:
            self.lines.append([])
        return self.lines[self.row]

    def feed(self, text: str) -> None:
        index = 0
        while index < len(text):
            match = _CSI.match(text, index)
            if match is not None:
                self._csi(match[1], match[2])
                index = match.end()
                continue
            char = text[index]
            index += 1
            if char >= " " and self.wrap_pending:
                self.row, self.col = self.row + 1, 0
            self.wrap_pending = False
            if char == "\r":
                self.col = 0
            elif char == "\n":
                self.row += 1
                self._line()
            elif char == "\b":
                self.col = max(0, self.col - 1)
            elif char >= " ":
                line = self._line()
                line.extend(" " * (self.col - len(line) + 1))
                line[self.col] = char
                if self.col == self.columns - 1:
                    self.wrap_pending = True
                else:
                    self.col += 1

    def _csi(self, params: str, final: str) -> None:
        self.wrap_pending = False
        number = int(params) if params.isdigit() else None
        line = self._line()
        if final == "K":
            if number in (None, 0):
                del line[self.col :]
            elif number == 1:
                line[: self.col + 1] = [" "] * min(len(line), self.col + 1)
            else:
                line.clear()
        elif final == "A":
            self.row = max(0, self.row - (number or 1))
        elif final == "B":
            self.row += number or 1
        elif final == "C":
            self.col = min(self.columns - 1, self.col + (number or 1))
        elif final == "D":
            self.col = max(0, self.col - (number or 1))
        elif final == "G":
            self.col = max(0, (number or 1) - 1)

    def text(self) -> list[str]:
        """The screen's lines, trailing blanks and empty trailing lines removed."""
        lines = ["".join(line).rstrip() for line in self.lines]
        while lines and not lines[-1]:
            lines.pop()
        return lines


def test_screen_emulator() -> None:
    screen = Screen(10)
    screen.feed("hello\rHE\n\x1b[2Kxx\rab\x1b[Kc\r\nline\x1b[1A\x1b[3G!\x1b[2B\r")
    assert screen.text() == ["HEllo", "ab!", "line"]
    screen.feed("0123456789abc\r\x1b[K")
    assert screen.text() == ["HEllo", "ab!", "line", "0123456789"]


def _bulk_command(folder: Path, port: int, *more: str) -> list[str]:
    return [
        sys.executable, "-m", "trio_sendmail", "bulk", str(folder),
        "--host", "127.0.0.1", "--port", str(port), "--tls", "none", *more,
    ]  # fmt: skip


def _environment(home: Path) -> dict[str, str]:
    env = {**os.environ, "HOME": str(home), "TERM": "xterm"}
    for name in ("COLUMNS", "LINES", "TRIO_SENDMAIL_PASSWORD", "XDG_CONFIG_HOME"):
        env.pop(name, None)
    return env


def run_in_pty(command: list[str], env: dict[str, str], columns: int) -> tuple[int, str]:
    """Run *command* with stdout and stderr on a pty of *columns*; return status and output."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
            cwd=REPO,
            env=env,
        )
    finally:
        os.close(slave)
    output = bytearray()
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer has closed the pty
                break
            if not data:
                break
            output += data
        status = process.wait(timeout=10)
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
    return status, output.decode("utf-8", "replace")


def test_progress_bar_in_a_terminal(tmp_path: Path) -> None:
    write_messages(tmp_path / "out", 20)
    server = FakeSMTPServer()
    with serving_in_thread(server) as port:
        status, output = run_in_pty(
            _bulk_command(tmp_path / "out", port, "--rate", "40", "-c", "4"),
            _environment(tmp_path),
            columns=100,
        )
    assert status == 0, output
    assert len(server.messages) == 20
    screen = Screen(100)
    screen.feed(output)
    lines = screen.text()
    # One screen line, redrawn in place, not one line per update.
    assert len(lines) == 1, lines
    [bar] = lines
    assert bar.startswith("[" + "#" * 20 + "] 20/20")
    assert "sent 20" in bar and "refused 0" in bar and "retried 0" in bar
    assert "not sent" not in bar and "unknown" not in bar  # shown only when there are some
    assert re.search(r"\b\d+\.\d msg/s\b", bar), bar
    assert re.search(r"in \d+\.\d s$", bar), bar
    # It was drawn several times over the 0.5 s run, each time over the last one.
    assert output.count("\r\x1b[2K") >= 3
    assert output.count("\n") == 1


def test_progress_bar_shows_failures_above_it(tmp_path: Path) -> None:
    write_messages(tmp_path / "out", 5)
    server = FakeSMTPServer(refuse_recipients={"user3@example.test": (550, "5.1.1 Unknown")})
    with serving_in_thread(server) as port:
        status, output = run_in_pty(
            _bulk_command(tmp_path / "out", port, "-c", "1"), _environment(tmp_path), columns=60
        )
    assert status == 67, output
    screen = Screen(60)
    screen.feed(output)
    *above, bar = screen.text()
    message = "".join(above)  # one long line, wrapped by the terminal
    assert message.startswith("refused") and "003.eml" in message
    assert "user3@example.test: 550 5.1.1 Unknown" in message
    assert "sent 4" in bar and "refused 1" in bar
    assert len(bar) <= 59  # cut to the terminal's width: a wrapped bar cannot be redrawn


def test_plain_lines_when_not_a_terminal(tmp_path: Path) -> None:
    write_messages(tmp_path / "out", 5)
    server = FakeSMTPServer()
    with serving_in_thread(server) as port:
        done = subprocess.run(
            _bulk_command(tmp_path / "out", port),
            capture_output=True,
            cwd=REPO,
            env=_environment(tmp_path),
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 6
    assert all(line.startswith("sent     ") and "queued as" in line for line in lines[:5])
    assert lines[-1].startswith("5/5  sent 5  refused 0  retried 0")
