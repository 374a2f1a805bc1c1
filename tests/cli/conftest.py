"""Fixtures of the CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..cli_support import isolate_home


@pytest.fixture(autouse=True)
def isolated_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No real ~/.netrc, profile file or password variable reaches a CLI test."""
    return isolate_home(monkeypatch, tmp_path)
