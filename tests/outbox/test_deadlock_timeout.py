"""A URL that sets ``deadlock_timeout`` keeps the documented 30 s
``lock_timeout`` (two settings; one name holds the other)."""

from __future__ import annotations

from urllib.parse import quote

from trio_sendmail.outbox import open_outbox
from trio_sendmail.outbox._engines import PostgresStore


async def test_deadlock_timeout_in_the_url_keeps_the_lock_timeout(postgres_url: str) -> None:
    # postgres_url's options select a fresh schema; add the deadlock timeout.
    assert "?options=" in postgres_url
    url = postgres_url.replace("?options=", "?options=" + quote("-c deadlock_timeout=2s "))
    async with open_outbox(url) as outbox:
        store = outbox._store
        assert isinstance(store, PostgresStore)
        with store._pool.connection() as conn:
            deadlock = conn.execute("SHOW deadlock_timeout").fetchone()
            lock = conn.execute("SHOW lock_timeout").fetchone()
    assert deadlock == ("2s",)  # the URL's value wins
    assert lock == ("30s",)  # the default the docs promise, since the URL does not set it
