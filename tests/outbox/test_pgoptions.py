"""``$PGOPTIONS`` (libpq reads it only when the URL has no ``options``) still
selects the outbox's schema: the outbox sends no ``options`` of its own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import trio_sendmail as ts
from trio_sendmail.outbox import open_outbox

from ..postgres_plugin import PostgresEnv


@pytest.fixture
def own_database(postgres: PostgresEnv) -> Iterator[str]:
    """A database of its own (so that a wrong schema harms no other test)."""
    import psycopg

    name = f"outbox_pgoptions_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = f"postgresql://{postgres.user}@{postgres.host}:{postgres.port}/{name}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA mail")
    try:
        yield url
    finally:
        with psycopg.connect(postgres.url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def test_pgoptions_search_path_is_honoured(
    own_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    monkeypatch.setenv("PGOPTIONS", "-c search_path=mail")
    with psycopg.connect(own_database) as conn:  # the control: libpq honours it
        assert conn.execute("SHOW search_path").fetchone() == ("mail",)
    async with open_outbox(own_database) as outbox:
        await outbox.enqueue([ts.BulkMessage("a@example.com", ["b@example.com"], b"x")])
    monkeypatch.delenv("PGOPTIONS")
    with psycopg.connect(own_database) as conn:
        where = conn.execute(
            "SELECT table_schema FROM information_schema.tables"
            " WHERE table_name = 'outbox_messages'"
        ).fetchall()
    assert where == [("mail",)]
