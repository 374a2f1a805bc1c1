"""Nothing waits for ever on PostgreSQL: the outbox's connections carry a
connect timeout, statement and lock timeouts, and TCP keepalives with a user
timeout; values given in the URL win."""

from __future__ import annotations

import os
import socket
from urllib.parse import quote

import pytest
import trio

from trio_sendmail.outbox import open_outbox
from trio_sendmail.outbox._engines import POSTGRES_DEFAULTS, _bounded

psycopg = pytest.importorskip("psycopg")


def test_defaults_are_added_and_the_url_and_environment_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    url = "postgresql://u@127.0.0.1:5432/db?keepalives_idle=3&options=" + quote("-csearch_path=s")
    info = psycopg.conninfo.conninfo_to_dict(_bounded(url))
    assert info["keepalives_idle"] == "3"
    for key in ("connect_timeout", "keepalives", "keepalives_interval", "tcp_user_timeout"):
        assert info[key] == POSTGRES_DEFAULTS[key][0]
    # No options of ours (PgBouncer refuses the startup parameter; $PGOPTIONS
    # is read only without one): the URL's own stay as they are.
    assert info["options"] == "-csearch_path=s"
    assert "options" not in psycopg.conninfo.conninfo_to_dict(
        _bounded("postgresql://u@127.0.0.1:5432/db")
    )
    assert (info["user"], info["host"], info["port"], info["dbname"]) == (
        "u",
        "127.0.0.1",
        "5432",
        "db",
    )
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "4")
    assert "connect_timeout" not in psycopg.conninfo.conninfo_to_dict(
        _bounded("postgresql://u@127.0.0.1:5432/db")
    )


async def test_a_server_that_never_answers_fails_within_the_connect_timeout() -> None:
    """A listener that accepts and says nothing (a hung database): opening the
    outbox raises instead of hanging."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    accepted: list[trio.SocketStream] = []

    async def hold(stream: trio.SocketStream) -> None:
        accepted.append(stream)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, hold, listeners)
        started = trio.current_time()
        with trio.fail_after(30), pytest.raises(psycopg.OperationalError):
            async with open_outbox(f"postgresql://u@127.0.0.1:{port}/db?connect_timeout=2"):
                pass  # pragma: no cover - the connection never opens
        assert trio.current_time() - started >= 1.5
        assert accepted
        nursery.cancel_scope.cancel()


async def test_each_connection_has_the_bounds(postgres_url: str) -> None:
    async with open_outbox(postgres_url) as outbox:
        store = outbox._store

        def show() -> tuple[list[str], int, int]:
            with store.transaction() as cur:
                settings = [
                    str(cur.execute(f"SHOW {name}").fetchone()[0])
                    for name in ("statement_timeout", "lock_timeout", "deadlock_timeout")
                ]
                # The client's socket itself (TCP_USER_TIMEOUT is option 18 on Linux).
                fd = socket.socket(fileno=os.dup(cur.connection.fileno()))
                with fd:
                    keepalive = fd.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
                    user_timeout = fd.getsockopt(socket.IPPROTO_TCP, 18)
                return settings, keepalive, user_timeout

        assert await trio.to_thread.run_sync(show) == (["30s", "30s", "1s"], 1, 30000)


async def test_the_session_settings_of_the_url_stay(postgres_url: str) -> None:
    """A statement or lock timeout of the URL's (or of $PGOPTIONS, or of the
    role) is not replaced; one it lacks is still set. ``deadlock_timeout`` is
    another setting: its name holding "lock_timeout" changes nothing."""
    extra = quote("-c lock_timeout=5s -c deadlock_timeout=2s ")
    url = postgres_url.replace("options=", "options=" + extra, 1)
    async with open_outbox(url) as outbox:
        store = outbox._store

        def show() -> list[str]:
            with store.transaction() as cur:
                return [
                    str(cur.execute(f"SHOW {name}").fetchone()[0])
                    for name in ("statement_timeout", "lock_timeout", "deadlock_timeout")
                ]

        assert await trio.to_thread.run_sync(show) == ["30s", "5s", "2s"]


@pytest.mark.parametrize(
    "url",
    [
        # A password with a literal "%" (not percent-encoded): libpq's parser
        # quotes the token it cannot read.
        "postgresql://user:Sup3r%Secret@127.0.0.1:1/outbox",
        "postgresql://user@127.0.0.1:1/outbox?password=Sup3r%Secret",
    ],
)
async def test_an_error_never_shows_the_password(url: str) -> None:
    with pytest.raises(Exception) as info:  # noqa: PT011 - whatever it is, no secret in it
        async with open_outbox(url):
            pass  # pragma: no cover - it never opens
    assert "Secret" not in f"{info.value!s} {info.value!r}"
    assert "***" in str(info.value)


async def test_a_statement_past_its_timeout_is_cancelled(postgres_url: str) -> None:
    url = postgres_url.replace("options=", "options=" + quote("-c statement_timeout=200 "), 1)
    async with open_outbox(url) as outbox:
        store = outbox._store

        def sleep() -> None:
            with store.transaction() as cur:
                cur.execute("SELECT pg_sleep(5)")

        with trio.fail_after(20), pytest.raises(psycopg.errors.QueryCanceled):
            await trio.to_thread.run_sync(sleep)
        # The outbox still works after it.
        assert (await outbox.statistics()).attempts == 0
