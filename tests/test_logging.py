"""The ``trio_sendmail`` logger tree (docs/logging.rst): the transcript at DEBUG
under ``trio_sendmail.transcript``, pool events under ``trio_sendmail.pool`` and
bulk events under ``trio_sendmail.bulk``, at the levels the docs give, and never
a secret."""

from __future__ import annotations

import base64
import logging

import pytest
import trio
import trio.testing

import trio_sendmail as ts
from trio_sendmail.testing import FakeSMTPServer, TestCertificates, serve_fake_smtp

from . import defaults
from .helpers import ServerVariant
from .test_pool import DROP, LOCAL, SENDER, Action, Conn, StubServer, body, pool_at, serve_tcp

POOL = "trio_sendmail.pool"
BULK = "trio_sendmail.bulk"
TRANSCRIPT = "trio_sendmail.transcript"


def records(caplog: pytest.LogCaptureFixture, name: str) -> list[tuple[str, str]]:
    """(level name, message) of each record of logger *name*."""
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == name]


def bulk_message(key: int, recipient: str = "b@example.com") -> ts.BulkMessage:
    return ts.BulkMessage(SENDER, [recipient], body(key), key=key)


def test_the_package_logger_has_a_null_handler() -> None:
    """Without logging configured, nothing is printed (no "last resort" output)."""
    handlers = logging.getLogger("trio_sendmail").handlers
    assert any(isinstance(handler, logging.NullHandler) for handler in handlers)


async def test_pool_logs_opened_and_retired_connections(
    caplog: pytest.LogCaptureFixture, server_variant: ServerVariant
) -> None:
    caplog.set_level(logging.INFO, logger="trio_sendmail")
    server = FakeSMTPServer(extensions=server_variant.extensions())
    async with (
        serve_fake_smtp(server) as port,
        pool_at(port, max_messages_per_connection=2) as pool,
    ):
        for key in range(3):
            await pool.send(SENDER, ["b@example.com"], body(key))
    assert len(server.messages) == 3
    logged = records(caplog, POOL)
    opened = [m for level, m in logged if m.startswith("opened connection")]
    closed = [m for level, m in logged if m.startswith("closing connection")]
    assert {level for level, _ in logged} == {"INFO"}
    assert len(opened) == 2 and len(closed) == 2, logged
    assert f"to {LOCAL} port {port} (1 open, no TLS)" in opened[0]
    assert "it sent 2 messages (max_messages_per_connection)" in closed[0]
    assert "the pool is closing" in closed[1]
    # Nothing per accepted message, and the transcript stays off below DEBUG.
    assert len(logged) == 4
    assert records(caplog, TRANSCRIPT) == []


async def test_pool_logs_back_off_and_giving_up(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_sendmail")
    server = FakeSMTPServer(greeting=(421, "4.3.2 too busy"))
    async with serve_fake_smtp(server) as port, pool_at(port, connect_retries=2) as pool:
        with pytest.raises(ts.SMTPServiceClosing):
            await pool.send(SENDER, ["b@example.com"], body(0))
    logged = records(caplog, POOL)
    assert [level for level, _ in logged] == ["WARNING", "ERROR"], logged
    assert "failed (CONNECT refused: 421 4.3.2 too busy); 0 open, target size 1" in logged[0][1]
    assert logged[1][1].startswith(f"cannot open a connection to {LOCAL} port {port} after 2")


async def test_pool_logs_an_unknown_outcome_as_a_warning(
    caplog: pytest.LogCaptureFixture, server_variant: ServerVariant
) -> None:
    caplog.set_level(logging.INFO, logger="trio_sendmail")

    async def drop(conn: Conn, data: bytes) -> Action:
        return DROP

    stub = StubServer(variant=server_variant, end_of_data=drop)
    async with serve_tcp(stub.handle) as port, pool_at(port) as pool:
        with pytest.raises(ts.SMTPConnectionError) as info:
            await pool.send(SENDER, ["b@example.com"], body(0))
    assert info.value.outcome is ts.Outcome.UNKNOWN
    warnings = [m for level, m in records(caplog, POOL) if level == "WARNING"]
    assert len(warnings) == 1 and "the message's outcome is unknown" in warnings[0]


async def test_pool_logs_a_resend_after_a_stale_connection(
    caplog: pytest.LogCaptureFixture, server_variant: ServerVariant
) -> None:
    caplog.set_level(logging.INFO, logger="trio_sendmail")

    async def mail(conn: Conn, line: str) -> Action:
        if line.startswith("MAIL") and conn.index == 1 and conn.messages:
            return b"421 4.3.2 shutting down\r\n"
        return None

    stub = StubServer(variant=server_variant, command=mail)
    async with serve_tcp(stub.handle) as port, pool_at(port) as pool:
        await pool.send(SENDER, ["b@example.com"], body(1))
        await pool.send(SENDER, ["b@example.com"], body(2))
        assert pool.statistics().retries == 1
    resends = [(lv, m) for lv, m in records(caplog, POOL) if "sending the message again" in m]
    assert len(resends) == 1 and resends[0][0] == "INFO", resends
    assert "421 4.3.2 shutting down" in resends[0][1]


async def test_bulk_logs_retries_refusals_and_a_summary(
    caplog: pytest.LogCaptureFixture, server_variant: ServerVariant
) -> None:
    caplog.set_level(logging.DEBUG, logger=BULK)
    server = FakeSMTPServer(
        extensions=server_variant.extensions(),
        refuse_recipients={
            "gone@example.com": (550, "5.1.1 no such user"),
            "full@example.com": (452, "4.2.2 mailbox full"),
        },
    )
    messages = [
        bulk_message(0),
        bulk_message(1, "gone@example.com"),
        bulk_message(2, "full@example.com"),
    ]
    async with serve_fake_smtp(server) as port, pool_at(port) as pool:
        summary = await ts.send_bulk(messages, pool=pool, max_retries=1, retry_backoff=0.01)
    assert (summary.accepted, summary.refused) == (1, 2)
    logged = records(caplog, BULK)
    concurrency = pool.limits.max_connections
    assert logged[0] == (
        "INFO",
        f"bulk run started: concurrency {concurrency}, max_retries 1, rate unlimited",
    )
    assert logged[-1][0] == "INFO"
    assert logged[-1][1].startswith("bulk run ended after ")
    assert logged[-1][1].endswith(": 1 accepted, 2 refused, 0 unknown, 0 not sent, 1 retries")
    full = "all recipients refused: <full@example.com>: 452 4.2.2 mailbox full"
    gone = "all recipients refused: <gone@example.com>: 550 5.1.1 no such user"
    middle = sorted(logged[1:-1])
    assert middle[0][0] == "DEBUG" and middle[0][1].startswith("message 2: retry in ")
    assert middle[1:] == [
        ("INFO", f"message 1: refused after 1 attempt: {gone}"),
        ("INFO", f"message 2: refused after 2 attempts: {full}"),
        ("WARNING", f"message 2: attempt 1 of 2 failed, to be retried: {full}"),
    ]
    assert not any("message 0" in m for _, m in logged)  # nothing for an accepted one


async def test_bulk_logs_an_unknown_outcome_as_a_warning(
    caplog: pytest.LogCaptureFixture, server_variant: ServerVariant
) -> None:
    caplog.set_level(logging.INFO, logger="trio_sendmail")

    async def drop(conn: Conn, data: bytes) -> Action:
        return DROP if b"key=1\r\n" in data else None

    stub = StubServer(variant=server_variant, end_of_data=drop)
    async with serve_tcp(stub.handle) as port, pool_at(port) as pool:
        summary = await ts.send_bulk([bulk_message(k) for k in range(3)], pool=pool)
    assert summary.unknown == 1
    warnings = [m for level, m in records(caplog, BULK) if level == "WARNING"]
    assert len(warnings) == 1
    assert warnings[0].startswith("message 1: outcome unknown (the server may have queued it")


async def test_bulk_logs_rate_limit_waits_at_debug(
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
    server_variant: ServerVariant,
) -> None:
    caplog.set_level(logging.DEBUG, logger=BULK)
    server = FakeSMTPServer(extensions=server_variant.extensions())
    async with serve_fake_smtp(server) as port, pool_at(port) as pool:
        await ts.send_bulk([bulk_message(k) for k in range(3)], pool=pool, rate=2)
    waits = [(lv, m) for lv, m in records(caplog, BULK) if "for the rate limit" in m]
    assert len(waits) == 2 and {lv for lv, _ in waits} == {"DEBUG"}, waits
    caplog.clear()
    caplog.set_level(logging.INFO, logger=BULK)
    async with serve_fake_smtp(server) as port, pool_at(port) as pool:
        await ts.send_bulk([bulk_message(k) for k in range(3)], pool=pool, rate=2)
    assert not any("rate limit" in m for _, m in records(caplog, BULK))


async def test_no_secret_in_any_log_record(
    caplog: pytest.LogCaptureFixture, certs: TestCertificates, server_variant: ServerVariant
) -> None:
    """Every logger of the tree at DEBUG, a failed and a good login: the
    password shows nowhere, nor its base64 forms."""
    caplog.set_level(logging.DEBUG, logger="trio_sendmail")
    password = "Very-Secret-Pa55-word"
    server = FakeSMTPServer(
        extensions=server_variant.extensions(),
        ssl_context=certs.server_context,
        users={"alice": password},
        auth_mechanisms=("PLAIN", "LOGIN"),
    )
    async with serve_fake_smtp(server, implicit_tls=True) as port:
        for secret in (password, password + "-wrong"):
            try:
                async with defaults.open_pool(
                    "localhost",
                    port=port,
                    ssl_context=certs.client_context,
                    authentication=ts.Authentication("alice", secret),
                ) as pool:
                    await ts.send_bulk([bulk_message(0)], pool=pool)
            except ts.SMTPAuthenticationError:
                assert secret != password
    text = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert records(caplog, TRANSCRIPT) and records(caplog, POOL) and records(caplog, BULK)
    assert {r.name for r in caplog.records} <= {TRANSCRIPT, POOL, BULK}
    assert {r.levelname for r in caplog.records if r.name == TRANSCRIPT} == {"DEBUG"}
    for secret in (password, password + "-wrong"):
        assert secret not in text
        for encoded in (secret.encode(), b"\0alice\0" + secret.encode()):
            assert base64.b64encode(encoded).decode() not in text


async def test_pool_logs_connect_rate_waits_at_debug(
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
    server_variant: ServerVariant,
) -> None:
    caplog.set_level(logging.DEBUG, logger=POOL)
    server = FakeSMTPServer(extensions=server_variant.extensions())
    async with (
        serve_fake_smtp(server) as port,
        pool_at(port, max_connections=2, max_connect_rate=0.5) as pool,
        pool.lease() as first,
        pool.lease() as second,  # a second connection, two seconds later
    ):
        assert first.session is not second.session
        await second.send(SENDER, ["b@example.com"], body(0))
    waits = [(lv, m) for lv, m in records(caplog, POOL) if "max_connect_rate" in m]
    assert len(waits) == 1 and waits[0][0] == "DEBUG", waits
    assert waits[0][1].startswith("waited 2.0")
    assert len(server.messages) == 1
