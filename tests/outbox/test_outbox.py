"""The durable outbox on both engines against the fake server (PIPELINING and
CHUNKING on and off): exact bytes, idempotent keys, spooled streams, refusals
with their replies, the retry schedule, unknown outcomes and their resolution,
cancellation, fatal connection errors, statistics and purging."""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import AsyncGenerator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_sendmail as ts
from trio_sendmail.outbox import (
    SCHEMA_VERSION,
    OutboxEntry,
    RetryPolicy,
    State,
    WorkProgress,
    open_outbox,
)
from trio_sendmail.testing import FakeSMTPServer, serve_fake_smtp

from ..helpers import CLIENT_NAME, ServerVariant
from ..test_pool import Action, Conn, StubServer, serve_tcp

SENDER = "news@example.com"
PLAIN = ts.TLSMode.INSECURE_PLAINTEXT
NO_WAIT = RetryPolicy(max_attempts=3, backoff=0.0, max_backoff=0.0)


def body(n: int) -> bytes:
    return b"Subject: issue %d\r\nMessage-ID: <m%d@example.com>\r\n\r\nHello %d.\r\n" % (n, n, n)


def message(n: int, *, to: str | None = None, key: str | None = None) -> ts.BulkMessage:
    return ts.BulkMessage(SENDER, [to or f"r{n}@example.com"], body(n), key=key)


def work_options(port: int, **extra: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "port": port,
        "tls": PLAIN,
        "domain": CLIENT_NAME,
        "limits": ts.PoolLimits(max_connections=3),
        "until_empty": True,
        "poll_interval": 0.05,
    }
    options.update(extra)
    return options


def by_state(entries: list[OutboxEntry]) -> dict[State, list[OutboxEntry]]:
    table: dict[State, list[OutboxEntry]] = {}
    for entry in entries:
        table.setdefault(entry.state, []).append(entry)
    return table


async def test_sends_every_message_once_with_exact_bytes(
    outbox_url: str, server_variant: ServerVariant
) -> None:
    server = FakeSMTPServer(extensions=server_variant.extensions())
    seen: list[WorkProgress] = []
    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        ids = await outbox.enqueue(message(n) for n in range(40))
        assert ids == sorted(ids) and len(set(ids)) == 40
        summary = await outbox.work("127.0.0.1", **work_options(port), progress=seen.append)
        entries = await outbox.entries()
        stats = await outbox.statistics()
    assert summary.sent == 40 and summary.failed == summary.unknown == 0
    assert [e.state for e in entries] == [State.SENT] * 40
    assert all(e.attempts == 1 and e.reply_code == 250 for e in entries)
    got = sorted(m.data for m in server.messages)
    assert got == sorted(body(n) for n in range(40))
    assert {m.recipients for m in server.messages} == {(f"r{n}@example.com",) for n in range(40)}
    assert stats.counts[State.SENT] == 40 and stats.attempts == 40 and stats.open == 0
    assert stats.oldest_pending_age is None
    assert seen and seen[-1].sent == 40 and seen[-1].in_flight == 0


async def test_keys_make_enqueue_idempotent_and_streams_are_spooled(
    outbox_url: str, server_variant: ServerVariant
) -> None:
    server = FakeSMTPServer(extensions=server_variant.extensions())
    big = b"Subject: big\r\n\r\n" + b"".join(b"line %06d\r\n" % i for i in range(20000))

    async def stream() -> AsyncGenerator[bytes]:
        for start in range(0, len(big), 7000):
            yield big[start : start + 7000]
            await trio.lowlevel.checkpoint()

    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        first = await outbox.enqueue([message(1, key="k1"), message(2, key="k2")])
        again = await outbox.enqueue([message(1, key="k1"), message(3, key="k3")])
        [streamed] = await outbox.enqueue([ts.BulkMessage(SENDER, ["s@example.com"], stream())])
        assert again[0] == first[0] and again[1] not in first
        assert (await outbox.statistics()).total == 4
        await outbox.work("127.0.0.1", **work_options(port))
        [entry] = await outbox.entries([streamed])
    assert entry.state is State.SENT
    data = sorted(m.data for m in server.messages)
    assert data == sorted([body(1), body(2), body(3), big])


async def test_refusals_keep_the_reply_and_the_refused_recipients(
    outbox_url: str, server_variant: ServerVariant
) -> None:
    server = FakeSMTPServer(
        extensions=server_variant.extensions(),
        refuse_recipients={"gone@example.com": (550, "5.1.1 No such user")},
        refuse_senders={"spam@example.com": (553, "5.7.1 Not you")},
    )
    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        ids = await outbox.enqueue(
            [
                ts.BulkMessage(SENDER, ["gone@example.com"], body(1)),
                ts.BulkMessage(SENDER, ["ok@example.com", "gone@example.com"], body(2)),
                ts.BulkMessage("spam@example.com", ["ok@example.com"], body(3)),
            ]
        )
        summary = await outbox.work("127.0.0.1", **work_options(port))
        alone, partly, sender = await outbox.entries(ids)
    assert (summary.sent, summary.refused) == (1, 2)
    assert alone.state is State.REFUSED and alone.attempts == 1
    assert alone.refused_recipients == {"<gone@example.com>": (550, "No such user")}
    assert partly.state is State.SENT
    assert partly.refused_recipients == {"<gone@example.com>": (550, "No such user")}
    assert sender.state is State.REFUSED
    assert (sender.reply_code, sender.reply_text) == (553, "Not you")
    assert [m.data for m in server.messages] == [body(2)]


async def test_transient_failures_follow_the_persisted_schedule(
    outbox_url: str, server_variant: ServerVariant
) -> None:
    server = FakeSMTPServer(
        extensions=server_variant.extensions(),
        refuse_recipients={"later@example.com": (451, "4.3.0 Try again later")},
    )
    async with (
        serve_fake_smtp(server) as port,
        open_outbox(outbox_url, retry=NO_WAIT) as outbox,
    ):
        [later, _fine] = await outbox.enqueue(
            [message(1, to="later@example.com"), message(2, to="ok@example.com")]
        )
        summary = await outbox.work("127.0.0.1", **work_options(port))
        [entry] = await outbox.entries([later])
        stats = await outbox.statistics()
    # Tried max_attempts times (each recorded), then failed with the last reply.
    assert entry.state is State.FAILED and entry.attempts == 3
    assert entry.refused_recipients == {"<later@example.com>": (451, "Try again later")}
    assert (summary.sent, summary.failed, summary.retried) == (1, 1, 2)
    assert stats.retried == 1 and stats.attempts == 4
    rcpts = [line for side, line in server.transcript if side == "C" and b"later@" in line]
    assert len(rcpts) == 3


async def test_a_retry_waits_for_its_time(outbox_url: str) -> None:
    server = FakeSMTPServer(data_reply=(452, "4.3.1 Insufficient storage"))
    policy = RetryPolicy(max_attempts=5, backoff=3600.0, max_backoff=3600.0)
    async with (
        serve_fake_smtp(server) as port,
        open_outbox(outbox_url, retry=policy) as outbox,
    ):
        [row] = await outbox.enqueue([message(1)])
        with trio.move_on_after(1.5):
            await outbox.work("127.0.0.1", **work_options(port, until_empty=False))
        [entry] = await outbox.entries([row])
    # Sent once, then scheduled up to an hour later: not sent again meanwhile.
    assert entry.state is State.PENDING and entry.attempts == 1
    assert entry.reply_code == 452 and entry.next_attempt_at > entry.created_at
    assert server.connections >= 1
    assert (
        sum(1 for side, line in server.transcript if side == "C" and line.startswith(b"MAIL")) == 1
    )


async def test_max_age_ends_retries(outbox_url: str) -> None:
    server = FakeSMTPServer(data_reply=(452, "4.3.1 Insufficient storage"))
    policy = RetryPolicy(max_attempts=50, backoff=10.0, max_backoff=10.0, max_age=1e-3)
    async with (
        serve_fake_smtp(server) as port,
        open_outbox(outbox_url, retry=policy) as outbox,
    ):
        [row] = await outbox.enqueue([message(1)])
        await outbox.work("127.0.0.1", **work_options(port))
        [entry] = await outbox.entries([row])
    assert entry.state is State.FAILED and entry.attempts == 1 and entry.reply_code == 452


async def test_unknown_outcomes_are_never_resent_until_resolved(
    outbox_url: str, server_variant: ServerVariant
) -> None:
    """The connection drops after the end of data and before its reply: unknown."""
    server = FakeSMTPServer(extensions=server_variant.extensions())
    dropped = 0

    async def drop_after_data(stream: trio.SocketStream) -> None:
        # A proxy that forwards everything, but closes at the first end of data.
        nonlocal dropped
        upstream = await trio.open_tcp_stream("127.0.0.1", real_port)
        seen = b""

        async def down() -> None:
            while data := await upstream.receive_some(65536):
                await stream.send_all(data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(down)
            while data := await stream.receive_some(65536):
                seen += data
                if dropped == 0 and (b"\r\n.\r\n" in seen or b" LAST\r\n" in seen):
                    dropped += 1
                    nursery.cancel_scope.cancel()  # no reply reaches the client any more
                    with trio.CancelScope(shield=True):
                        await upstream.send_all(data)
                        await trio.sleep(0.2)  # the server answers (and stores it)
                    break
                await upstream.send_all(data)
            nursery.cancel_scope.cancel()
        await stream.aclose()
        await upstream.aclose()

    async with (
        serve_fake_smtp(server) as real_port,
        trio.open_nursery() as nursery,
        open_outbox(outbox_url) as outbox,
    ):
        [listener] = await nursery.start(
            partial(trio.serve_tcp, drop_after_data, 0, host="127.0.0.1")
        )
        port = listener.socket.getsockname()[1]
        [row] = await outbox.enqueue([message(1)])
        summary = await outbox.work("127.0.0.1", **work_options(port))
        assert summary.unknown == 1
        [entry] = await outbox.entries([row])
        assert entry.state is State.UNKNOWN and entry.attempts == 1
        # Not resent by another worker.
        assert (await outbox.work("127.0.0.1", **work_options(port))).sent == 0
        assert await outbox.resolve_unknown([row], resend=True) == [row]
        assert (await outbox.work("127.0.0.1", **work_options(port))).sent == 1
        [entry] = await outbox.entries([row])
        nursery.cancel_scope.cancel()
    assert entry.state is State.SENT and entry.attempts == 2
    assert len(server.messages) == 2  # the server did have the first one: the operator's call


async def test_resolve_unknown_without_resend_fails_the_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    async with open_outbox(url) as outbox:
        ids = await outbox.enqueue([message(1), message(2)])
    with sqlite3.connect(tmp_path / "o.db") as db:
        db.execute("UPDATE outbox_messages SET state = 'unknown' WHERE id = ?", (ids[0],))
    async with open_outbox(url) as outbox:
        assert await outbox.resolve_unknown(ids, resend=False) == [ids[0]]
        first, second = await outbox.entries(ids)
    assert first.state is State.FAILED and second.state is State.PENDING
    assert first.error is not None and "chose not to resend" in first.error


async def test_cancelled_work_leaves_every_row_exact(
    outbox_url: str, server_variant: ServerVariant
) -> None:
    server = FakeSMTPServer(extensions=server_variant.extensions())
    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        await outbox.enqueue(message(n) for n in range(300))
        seen: list[WorkProgress] = []
        with trio.CancelScope() as scope:

            def progress(snapshot: WorkProgress) -> None:
                seen.append(snapshot)
                if snapshot.sent >= 30:
                    scope.cancel()

            await outbox.work("127.0.0.1", **work_options(port), progress=progress)
        entries = await outbox.entries()
        states = by_state(entries)
    assert set(states) <= {State.SENT, State.PENDING, State.UNKNOWN}, states.keys()
    stored = {m.data for m in server.messages}
    sent = {body(int(e.key or e.id) - 1) for e in states[State.SENT]}
    assert sent <= stored
    for entry in states.get(State.PENDING, []):
        assert body(entry.id - 1) not in stored
        assert entry.worker is None
    assert len(stored) == len(server.messages)  # nothing twice
    assert 30 <= len(states[State.SENT]) < 300


async def test_a_fatal_connection_error_gives_the_rows_back(outbox_url: str) -> None:
    """No connection can be opened (AUTH is required and the server lacks it):
    work() raises, and no message lost an attempt."""
    server = FakeSMTPServer()
    wrong = ts.Authentication("alice", "wrong")
    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        await outbox.enqueue(message(n) for n in range(5))
        with pytest.raises(ts.SMTPNotSupportedError, match="AUTH"):
            await outbox.work(
                "127.0.0.1",
                **work_options(port),
                authentication=wrong,
                insecure_auth_over_plaintext=True,
            )
        entries = await outbox.entries()
    assert {e.state for e in entries} == {State.PENDING}
    assert {e.attempts for e in entries} == {0}


async def test_bad_input_is_refused_before_any_io(outbox_url: str) -> None:
    async with open_outbox(outbox_url) as outbox:
        with pytest.raises(ts.SMTPAddressError):
            await outbox.enqueue([message(1), ts.BulkMessage(SENDER, ["not an address"], b"x")])
        with pytest.raises(TypeError, match="key"):
            await outbox.enqueue([ts.BulkMessage(SENDER, ["a@example.com"], b"x", key=1)])
        with pytest.raises(TypeError):
            await outbox.enqueue(["not a message"])  # type: ignore[list-item]
        with pytest.raises(TypeError):
            await outbox.entries(["1"])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="rate"):
            await outbox.set_rate_limit(0)
        with pytest.raises(TypeError, match="pool or a server"):
            await outbox.work()
        assert (await outbox.statistics()).total == 0
        assert "@" not in repr(outbox) and "postgres" not in repr(outbox).split()[0][1:]


@pytest.mark.parametrize(
    "url", ["mysql://x/y", "sqlite://host/file.db", "sqlite:///", "sqlite:///a.db?mode=ro"]
)
async def test_unsupported_urls(url: str) -> None:
    with pytest.raises(ValueError, match=r"URL|database"):
        async with open_outbox(url):
            pass  # pragma: no cover


async def test_schema_is_versioned(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    async with open_outbox(url):
        pass
    async with open_outbox(url):  # opening again migrates nothing
        pass
    with sqlite3.connect(tmp_path / "o.db") as db:
        versions = db.execute("SELECT version FROM outbox_schema ORDER BY version").fetchall()
        assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        db.execute("INSERT INTO outbox_schema VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    with pytest.raises(RuntimeError, match="newer"):
        async with open_outbox(url):
            pass  # pragma: no cover


async def test_statistics_and_purge(outbox_url: str) -> None:
    server = FakeSMTPServer()
    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        await outbox.enqueue(message(n) for n in range(4))
        stats = await outbox.statistics()
        assert stats.counts[State.PENDING] == 4 and stats.oldest_pending_age is not None
        await outbox.work("127.0.0.1", **work_options(port))
        await outbox.enqueue([message(9)])
        assert await outbox.purge_sent(1.0) == 0  # sent just now
        await trio.sleep(0.05)
        assert await outbox.purge_sent(0.0) == 4
        stats = await outbox.statistics()
    assert stats.total == 1 and stats.counts[State.PENDING] == 1


async def test_options_survive_the_round_trip(outbox_url: str) -> None:
    server = FakeSMTPServer(extensions=("DSN", "8BITMIME", "SIZE 1000000", "PIPELINING"))
    dsn = ts.DSN(ret="HDRS", envid="job-1", notify={"FAILURE", "DELAY"}, orcpt=True)
    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        await outbox.enqueue([ts.BulkMessage(SENDER, ["a@example.com"], body(1), dsn=dsn)])
        await outbox.work("127.0.0.1", **work_options(port))
    [got] = server.messages
    assert "RET=HDRS" in got.mail_options and "ENVID=job-1" in got.mail_options
    notify, orcpt = sorted(got.rcpt_options["a@example.com"])
    assert sorted(notify.removeprefix("NOTIFY=").split(",")) == ["DELAY", "FAILURE"]
    assert orcpt == "ORCPT=rfc822;a@example.com"


def test_rows_store_plain_json(tmp_path: Path) -> None:
    async def fill() -> None:
        async with open_outbox(f"sqlite:///{tmp_path}/o.db") as outbox:
            await outbox.enqueue([message(1)])

    trio.run(fill)
    with sqlite3.connect(tmp_path / "o.db") as db:
        recipients, options = db.execute(
            "SELECT recipients, options FROM outbox_messages"
        ).fetchone()
    assert json.loads(recipients) == ["<r1@example.com>"]
    assert json.loads(options) == {"dsn": None, "requiretls": False, "binary": False}


async def test_a_message_the_server_cannot_take_fails_at_once(
    outbox_url: str, server_variant: ServerVariant
) -> None:
    """A message that needs an extension the server lacks (SMTPUTF8 here) is not a
    connection failure: its row fails after one attempt, and work(until_empty)
    returns (it once held the result until the end of a run that never ended)."""
    extensions = [e for e in server_variant.extensions() if e != "SMTPUTF8"]
    server = FakeSMTPServer(extensions=extensions)
    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        [needs_utf8, plain] = await outbox.enqueue(
            [ts.BulkMessage(SENDER, ["jörg@example.com"], body(1)), message(2)]
        )
        with trio.fail_after(60):
            summary = await outbox.work("127.0.0.1", **work_options(port))
        utf8_entry, plain_entry = await outbox.entries([needs_utf8, plain])
    assert (summary.sent, summary.failed) == (1, 1)
    assert utf8_entry.state is State.FAILED and utf8_entry.attempts == 1
    assert "SMTPUTF8" in (utf8_entry.error or "")
    assert plain_entry.state is State.SENT
    assert [m.data for m in server.messages] == [body(2)]


@pytest.mark.parametrize("seed", range(4))
async def test_work_cancelled_from_outside_records_every_answered_message(
    outbox_url: str, server_variant: ServerVariant, seed: int
) -> None:
    """A worker (service mode) cancelled from outside at random moments, not only
    right after a commit: every message the server stored ends ``sent`` or
    ``unknown``, none stays ``sending``, and one it did not store is never ``sent``."""
    server = FakeSMTPServer(extensions=server_variant.extensions())
    delay = random.Random(seed).uniform(0.05, 0.5)
    async with serve_fake_smtp(server) as port, open_outbox(outbox_url) as outbox:
        await outbox.enqueue(message(n) for n in range(400))
        with trio.move_on_after(delay):
            await outbox.work("127.0.0.1", **work_options(port, until_empty=False), batch_size=50)
        entries = await outbox.entries()
    states = by_state(entries)
    assert State.SENDING not in states
    stored = {m.data for m in server.messages}
    assert len(stored) == len(server.messages)  # nothing twice
    for entry in states.get(State.SENT, []):
        assert body(entry.id - 1) in stored
    for entry in states.get(State.PENDING, []):
        assert body(entry.id - 1) not in stored
    answered = {body(e.id - 1) for e in states.get(State.SENT, [])}
    unknown = {body(e.id - 1) for e in states.get(State.UNKNOWN, [])}
    assert stored <= answered | unknown


async def test_recipients_refused_with_4xx_are_sent_again_in_a_follow_up(
    outbox_url: str, server_variant: ServerVariant
) -> None:
    """The server takes the message for one recipient and says 450 to the
    other, once: the row is ``sent`` with the refusal kept, and a follow-up row
    (key ``…#retry-1``) delivers it to the refused recipient. Each row counts
    its own attempts: ``statistics().attempts`` counts each attempt once."""
    busy = {"n": 0}

    async def command(conn: Conn, line: str) -> Action:
        if line.upper().startswith("RCPT TO:<BUSY@"):
            busy["n"] += 1
            if busy["n"] == 1:
                return b"450 4.2.1 mailbox busy, try later\r\n"
        return None

    stub = StubServer(variant=server_variant, command=command)
    mail = ts.BulkMessage(SENDER, ["ok@example.com", "busy@example.com"], body(1), key="k1")
    async with (
        serve_tcp(stub.handle) as port,
        open_outbox(outbox_url, retry=NO_WAIT) as outbox,
    ):
        (first,) = await outbox.enqueue([mail])
        await outbox.work("127.0.0.1", **work_options(port))
        entries = await outbox.entries()
        stats = await outbox.statistics()
    original, follow_up = entries
    assert original.id == first and original.state is State.SENT
    assert original.refused_recipients == {"<busy@example.com>": (450, "mailbox busy, try later")}
    assert (follow_up.key, follow_up.state, follow_up.attempts) == ("k1#retry-1", State.SENT, 1)
    rcpts = [line for _, _, line in stub.log if line.upper().startswith("RCPT")]
    assert rcpts == [
        "RCPT TO:<ok@example.com>", "RCPT TO:<busy@example.com>", "RCPT TO:<busy@example.com>"
    ]  # fmt: skip
    assert [data for _, data in stub.received] == [body(1), body(1)]
    # The follow-up counts its own attempts: each of the two is counted once.
    assert stats.attempts == len(stub.received) == 2, (stats, entries)
