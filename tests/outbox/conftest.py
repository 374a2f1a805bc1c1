"""Fixtures of the outbox tests: an outbox URL for each engine."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(params=["sqlite", "postgres"])
def outbox_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``sqlite:////tmp/…/outbox.db``, or a fresh PostgreSQL schema (skipped,
    with the reason, when the test cluster is not running)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/outbox.db"
    url: str = request.getfixturevalue("postgres_url")
    return url
