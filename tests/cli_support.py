"""What the CLI tests share: an isolated home folder and an in-process runner."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

from trio_sendmail.__main__ import main


@attrs.frozen
class Run:
    status: int
    out: str
    err: str


CLI = Callable[..., Run]


def isolate_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No real ~/.netrc, config file or password variable leaks into a test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("XDG_CONFIG_HOME", "TRIO_SENDMAIL_PASSWORD", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)
    return home


def in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], message: bytes
) -> CLI:
    """Run ``main(argv)`` in-process with *stdin* (default *message*); return
    status, stdout and stderr."""

    def run(*argv: str, stdin: bytes = message) -> Run:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        capsys.readouterr()
        try:
            status = main(list(argv))
        except SystemExit as exc:  # argparse's usage errors and --help
            status = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return Run(status, captured.out, captured.err)

    return run
