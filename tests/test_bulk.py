"""send_bulk over a pool on loopback TCP: one result per message, retries with
back-off, unknown outcomes, fatal errors, cancellation, progress, rate and
bounded memory."""

from __future__ import annotations

import collections
import itertools
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import aclosing
from typing import Any, Final, cast

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing

import trio_sendmail as ts
from trio_sendmail.testing import FakeSMTPServer, TestCertificates, serve_fake_smtp

from . import defaults
from .helpers import PASSWORD, USERS, ServerVariant
from .test_pool import (
    DROP,
    HANG,
    LOCAL,
    PLAIN,
    SENDER,
    Action,
    Conn,
    Counting,
    StubServer,
    body,
    pool_at,
    serve_tcp,
    tls_pool,
    until,
)

Status = ts.Outcome
RCPT_RE: Final = re.compile(r"RCPT TO:<([^>]*)>")


def message(key: int, recipient: str = "b@example.com") -> ts.BulkMessage:
    return ts.BulkMessage(SENDER, [recipient], body(key), key=key)


def key_of(data: bytes) -> int:
    match = re.search(rb"key=(\d+)", data)
    assert match is not None
    return int(match.group(1))


def keys(results: list[ts.BulkResult]) -> list[Any]:
    return sorted(cast(int, result.message.key) for result in results)


def by_key(results: list[ts.BulkResult]) -> dict[object, ts.BulkResult]:
    table = {result.message.key: result for result in results}
    assert len(table) == len(results), "a message was reported twice"
    return table


@attrs.define
class Source:
    """A lazy input that counts the messages taken from it."""

    limit: int | None = None
    make: Callable[[int], ts.BulkMessage] = message
    pulled: int = 0
    on_pull: Callable[[int], None] | None = None

    #: The input ends when this returns True (checked before each message).
    stop: Callable[[], bool] = lambda: False

    async def generate(self) -> AsyncGenerator[ts.BulkMessage]:
        for message in self.iterate():
            yield message
            await trio.lowlevel.checkpoint()

    def iterate(self) -> Iterator[ts.BulkMessage]:
        key = 0
        while (self.limit is None or key < self.limit) and not self.stop():
            self.pulled += 1
            if self.on_pull is not None:
                self.on_pull(self.pulled)
            yield self.make(key)
            key += 1


def rcpt_times(stub: StubServer, address: str) -> list[float]:
    return [t for t, _, line in stub.commands("RCPT") if f"<{address}>" in line]


# --------------------------------------------------------------------------------------------
# One result per message, whatever the input


@pytest.mark.parametrize("kind", ["iterable", "async generator", "memory channel"])
async def test_one_result_per_message(kind: str, server_variant: ServerVariant) -> None:
    server = FakeSMTPServer(extensions=server_variant.extensions())
    counting = Counting(server)
    source = Source(limit=25)
    async with (
        serve_tcp(counting.handle) as port,
        pool_at(port, max_connections=3) as pool,
        trio.open_nursery() as nursery,
    ):
        if kind == "iterable":
            summary = await ts.send_bulk(source.iterate(), pool=pool, concurrency=3)
        elif kind == "async generator":
            async with aclosing(source.generate()) as generated:
                summary = await ts.send_bulk(generated, pool=pool, concurrency=3)
        else:
            send, receive = trio.open_memory_channel[ts.BulkMessage](0)

            async def produce() -> None:
                async with send:
                    for message in source.iterate():
                        await send.send(message)

            nursery.start_soon(produce)
            summary = await ts.send_bulk(receive, pool=pool, concurrency=3)
    assert source.pulled == 25
    assert (summary.accepted, summary.refused, summary.unknown, summary.not_sent) == (25, 0, 0, 0)
    assert summary.retried == 0
    assert keys(summary.results) == list(range(25))
    table = by_key(summary.results)
    for key, result in table.items():
        assert result.status is Status.ACCEPTED and result.attempts == 1
        assert result.error is None and result.result is not None
        assert result.result.reply.code == 250
        assert result.message.key == key
    assert sorted(key_of(m.data) for m in server.messages) == list(range(25))  # each once
    assert counting.max_active <= 3


async def test_on_result_gets_the_results_instead_of_the_summary(
    server_variant: ServerVariant,
) -> None:
    server = FakeSMTPServer(extensions=server_variant.extensions())
    seen: list[ts.BulkResult] = []
    async with serve_fake_smtp(server) as port, pool_at(port) as pool:
        summary = await ts.send_bulk(
            [message(k) for k in range(5)], pool=pool, on_result=seen.append
        )
    assert summary.results == []
    assert summary.accepted == 5
    assert keys(seen) == list(range(5))


# --------------------------------------------------------------------------------------------
# Refusals and retries


async def test_permanent_and_transient_refusals(
    loopback_clock: trio.testing.MockClock, server_variant: ServerVariant
) -> None:
    tries: collections.Counter[str] = collections.Counter()

    async def rcpt(conn: Conn, line: str) -> Action:
        match = RCPT_RE.match(line)
        if match is None:
            return None
        address = match.group(1)
        tries[address] += 1
        if address.startswith("perm"):
            return b"550 5.1.1 no such user\r\n"
        if address.startswith("temp"):
            return b"450 4.2.1 mailbox busy\r\n"
        if address.startswith("flaky") and tries[address] <= 2:
            return b"451 4.3.0 try again later\r\n"
        return None

    stub = StubServer(variant=server_variant, command=rcpt)
    kinds = ["perm", "temp", "flaky", "good"]
    batch = [
        message(key, f"{kinds[key % 4]}{key}@example.com") for key in range(12)
    ]  # 3 of each kind
    async with serve_tcp(stub.handle) as port, pool_at(port, max_connections=4) as pool:
        summary = await ts.send_bulk(
            batch, pool=pool, concurrency=4, max_retries=3, retry_backoff=1.0
        )  # no exception: per-message failures are results
    table = by_key(summary.results)
    assert len(table) == 12
    first_gaps = []
    for key, result in table.items():
        assert isinstance(key, int)
        kind, address = kinds[key % 4], f"{kinds[key % 4]}{key}@example.com"
        times = rcpt_times(stub, address)
        assert len(times) == result.attempts == tries[address]
        if kind == "perm":
            assert (result.status, result.attempts) == (Status.REFUSED, 1)
            assert isinstance(result.error, ts.SMTPRecipientsRefused)
            assert isinstance(result.error, ts.SMTPPermanentError)
        elif kind == "temp":
            assert (result.status, result.attempts) == (Status.REFUSED, 4)  # max_retries + 1
            assert isinstance(result.error, ts.SMTPRecipientsRefused)
            assert isinstance(result.error, ts.SMTPTransientError)
        elif kind == "flaky":
            assert (result.status, result.attempts) == (Status.ACCEPTED, 3)
            assert result.error is None and result.result is not None
        else:
            assert (result.status, result.attempts) == (Status.ACCEPTED, 1)
        # Retry k waits at most retry_backoff * 2**(k-1) (full jitter).
        gaps = [b - a for a, b in itertools.pairwise(times)]
        for k, gap in enumerate(gaps, 1):
            assert 0 <= gap <= 1.0 * 2 ** (k - 1) + 1e-6, (address, gaps)
        first_gaps += gaps[:1]
    assert len(set(first_gaps)) > 1  # jittered, not in lockstep
    assert (summary.accepted, summary.refused, summary.unknown, summary.not_sent) == (6, 6, 0, 0)
    assert summary.retried == 3 * 3 + 3 * 2
    accepted = sorted(key_of(data) for _, data in stub.accepted)
    assert accepted == [k for k in range(12) if kinds[k % 4] in ("flaky", "good")]


@pytest.mark.parametrize(
    ("reply", "attempts"),
    [((451, "4.3.0 queue full, try later"), 3), ((554, "5.7.1 rejected as spam"), 1)],
)
async def test_refusal_of_the_message_data_is_refused_not_unknown(
    loopback_clock: trio.testing.MockClock,
    reply: tuple[int, str],
    attempts: int,
    server_variant: ServerVariant,
) -> None:
    # A 4xx/5xx reply to the final dot means the server refused the message
    # (Outcome.REFUSED): it was not accepted, and a 4xx one can be retried.
    server = FakeSMTPServer(extensions=server_variant.extensions(), data_reply=reply)
    async with serve_fake_smtp(server) as port, pool_at(port) as pool:
        summary = await ts.send_bulk([message(1)], pool=pool, max_retries=2, retry_backoff=1)
    (result,) = summary.results
    assert isinstance(result.error, ts.SMTPResponseError)
    assert result.error.outcome is ts.Outcome.REFUSED
    assert (result.status, result.attempts) == (Status.REFUSED, attempts)
    assert server.messages == []


# --------------------------------------------------------------------------------------------
# Unknown outcomes


@pytest.mark.parametrize("end", [DROP, HANG])
async def test_unknown_outcome_is_not_retried_by_default(
    loopback_clock: trio.testing.MockClock, end: Action, server_variant: ServerVariant
) -> None:
    async def after_dot(conn: Conn, data: bytes) -> Action:
        return end if key_of(data) == 1 else None

    stub = StubServer(variant=server_variant, end_of_data=after_dot)
    timeouts = ts.Timeouts(data_end=20)
    async with serve_tcp(stub.handle) as port, pool_at(port, timeouts=timeouts) as pool:
        start = trio.current_time()
        summary = await ts.send_bulk([message(k) for k in range(3)], pool=pool, max_retries=5)
        elapsed = trio.current_time() - start
    table = by_key(summary.results)
    assert (table[1].status, table[1].attempts) == (Status.UNKNOWN, 1)
    assert isinstance(table[1].error, ts.SMTPError)
    assert table[1].error.outcome is ts.Outcome.UNKNOWN
    if end == HANG:  # bounded by data_end, after the final dot or BDAT LAST
        assert isinstance(table[1].error, ts.SMTPTimeoutError)
        assert table[1].error.phase == "data_end"
        assert elapsed >= 20
    assert table[0].status is table[2].status is Status.ACCEPTED
    assert (summary.unknown, summary.accepted, summary.retried) == (1, 2, 0)
    assert [key_of(data) for _, data in stub.received].count(1) == 1  # sent once only


@pytest.mark.parametrize("end", [DROP, HANG])
async def test_unknown_outcome_is_retried_with_retry_unknown(
    loopback_clock: trio.testing.MockClock, end: Action, server_variant: ServerVariant
) -> None:
    async def after_dot(conn: Conn, data: bytes) -> Action:
        first = [key_of(d) for _, d in stub.received].count(key_of(data)) == 1
        return end if first else None

    stub = StubServer(variant=server_variant, end_of_data=after_dot)
    timeouts = ts.Timeouts(data_end=20)
    async with serve_tcp(stub.handle) as port, pool_at(port, timeouts=timeouts) as pool:
        summary = await ts.send_bulk(
            [message(k) for k in range(3)], pool=pool, retry_unknown=True, retry_backoff=0.5
        )
    for result in summary.results:
        assert (result.status, result.attempts) == (Status.ACCEPTED, 2)
    assert summary.retried == 3
    # The price of retry_unknown: every message reached the server twice.
    assert sorted(key_of(data) for _, data in stub.received) == [0, 0, 1, 1, 2, 2]


# --------------------------------------------------------------------------------------------
# Fatal errors and cancellation


@pytest.mark.parametrize("when", ["at once", "after five messages"])
async def test_fatal_error_ends_the_run_with_the_plain_exception(
    loopback_clock: trio.testing.MockClock,
    certs: TestCertificates,
    when: str,
    server_variant: ServerVariant,
) -> None:
    server = FakeSMTPServer(
        extensions=server_variant.extensions(), ssl_context=certs.server_context, users=USERS
    )
    if when == "at once":
        server.users = {"alice": "another password"}
    seen: list[ts.BulkResult] = []

    def on_result(result: ts.BulkResult) -> None:
        seen.append(result)
        server.users = {"alice": "changed"}  # the next connection's AUTH fails

    source = Source(limit=50)
    async with (
        serve_fake_smtp(server, implicit_tls=True) as port,
        tls_pool(
            port, certs.client_context, PASSWORD, max_connections=1, max_messages_per_connection=5
        ) as pool,
    ):
        with pytest.raises(ts.SMTPAuthenticationError):  # not an ExceptionGroup
            async with aclosing(source.generate()) as generated:
                await ts.send_bulk(generated, pool=pool, concurrency=3, on_result=on_result)
    assert len(seen) == source.pulled  # every message taken from the input is reported
    table = by_key(seen)
    accepted = sorted(cast(int, k) for k, r in table.items() if r.status is Status.ACCEPTED)
    assert len(accepted) == (0 if when == "at once" else 5)
    assert sorted(key_of(m.data) for m in server.messages) == accepted
    rest = [r for r in seen if r.status is not Status.ACCEPTED]
    assert rest and all(r.status is Status.NOT_SENT for r in rest)
    assert any(isinstance(r.error, ts.SMTPAuthenticationError) for r in rest)


@pytest.mark.parametrize("scenario", ["slow server", "in back-off", "rate limited"])
async def test_cancelled_run_reports_every_pulled_message_exactly_once(
    loopback_clock: trio.testing.MockClock, scenario: str, server_variant: ServerVariant
) -> None:
    async def slow_dot(conn: Conn, data: bytes) -> Action:
        await trio.sleep(1)
        return None

    async def busy_rcpt(conn: Conn, line: str) -> Action:
        return b"450 4.2.1 mailbox busy\r\n" if line.startswith("RCPT") else None

    if scenario == "slow server":
        stub = StubServer(variant=server_variant, end_of_data=slow_dot)
    elif scenario == "in back-off":
        stub = StubServer(variant=server_variant, command=busy_rcpt)
    else:
        stub = StubServer(variant=server_variant)
    seen: list[ts.BulkResult] = []
    source = Source()
    async with serve_tcp(stub.handle) as port, pool_at(port, max_connections=4) as pool:
        with trio.move_on_after(5.5) as scope:
            async with aclosing(source.generate()) as generated:
                await ts.send_bulk(
                    generated,
                    pool=pool,
                    concurrency=4,
                    on_result=seen.append,
                    max_retries=100,
                    retry_backoff=10,
                    rate=1 if scenario == "rate limited" else None,
                )
        assert scope.cancelled_caught
    assert source.pulled > 4
    assert len(seen) == source.pulled  # none lost...
    table = by_key(seen)  # ...none reported twice
    assert sorted(cast(int, k) for k in table) == list(range(source.pulled))
    statuses = collections.Counter(result.status for result in seen)
    assert set(statuses) <= {Status.ACCEPTED, Status.NOT_SENT, Status.UNKNOWN}
    server_side = {key_of(data) for _, data in stub.accepted}
    client_side = {k for k, r in table.items() if r.status is Status.ACCEPTED}
    maybe = {k for k, r in table.items() if r.status is Status.UNKNOWN}
    assert client_side <= server_side <= client_side | maybe
    # A message whose end of data reached the server may be stored: never NOT_SENT.
    reached = {key_of(data) for _, data in stub.received}
    assert {k: table[k].status for k in reached if table[k].status is Status.NOT_SENT} == {}
    if scenario == "slow server":
        assert statuses[Status.ACCEPTED] >= 16 and statuses[Status.UNKNOWN] >= 1


# --------------------------------------------------------------------------------------------
# Progress, rate, memory


async def test_progress_is_monotonic_and_in_flight_bounded(
    loopback_clock: trio.testing.MockClock,
    server_variant: ServerVariant,
) -> None:
    tries: collections.Counter[str] = collections.Counter()

    async def rcpt(conn: Conn, line: str) -> Action:
        match = RCPT_RE.match(line)
        if match is None:
            return None
        tries[match.group(1)] += 1
        if match.group(1).startswith("retry") and tries[match.group(1)] == 1:
            return b"450 4.2.1 mailbox busy\r\n"
        return None

    async def slow_dot(conn: Conn, data: bytes) -> Action:
        await trio.sleep(0.1)
        return None

    stub = StubServer(variant=server_variant, command=rcpt, end_of_data=slow_dot)
    snapshots: list[ts.BulkProgress] = []
    batch = [message(k, f"{'retry' if k % 7 == 0 else 'r'}{k}@example.com") for k in range(30)]
    async with serve_tcp(stub.handle) as port, pool_at(port, max_connections=3) as pool:
        # concurrency defaults to the pool's max_connections
        summary = await ts.send_bulk(batch, pool=pool, progress=snapshots.append)
    assert (summary.accepted, summary.retried) == (30, 5)
    done = [snapshot.done for snapshot in snapshots]
    assert done == sorted(done) and done[-1] == 30
    # Each of the 3 connections carries at most two messages: one waiting for
    # the reply to its end of data, the next one's envelope (RFC 2920 §3.1).
    assert all(0 <= snapshot.in_flight <= 2 * 3 for snapshot in snapshots)
    if server_variant.defers:
        assert max(snapshot.in_flight for snapshot in snapshots) > 3
    else:  # nothing to pipeline across messages: one message per connection at a time
        assert max(snapshot.in_flight for snapshot in snapshots) == 3
    elapsed = [snapshot.elapsed for snapshot in snapshots]
    assert elapsed == sorted(elapsed)
    retried = [snapshot.retried for snapshot in snapshots]
    assert retried == sorted(retried) and retried[-1] == summary.retried
    last = snapshots[-1]
    assert last.accepted == summary.accepted and last.rate == pytest.approx(
        last.accepted / last.elapsed
    )


async def test_rate_spaces_message_starts(
    loopback_clock: trio.testing.MockClock, server_variant: ServerVariant
) -> None:
    stub = StubServer(variant=server_variant)
    async with serve_tcp(stub.handle) as port, pool_at(port, max_connections=3) as pool:
        start = trio.current_time()
        summary = await ts.send_bulk(
            [message(k) for k in range(9)], pool=pool, concurrency=3, rate=4
        )
    assert summary.accepted == 9
    starts = sorted(t for t, _, _ in stub.commands("MAIL"))
    assert len(starts) == 9
    assert all(b - a >= 0.25 - 1e-9 for a, b in itertools.pairwise(starts))
    assert starts[-1] - start >= (9 - 1) / 4 - 1e-9


async def test_endless_input_is_read_lazily(server_variant: ServerVariant) -> None:
    concurrency = 4
    seen: list[ts.BulkResult] = []
    ahead: list[int] = []
    # An input of unknown length, read lazily; it ends once 400 results are in.
    source = Source(
        on_pull=lambda pulled: ahead.append(pulled - len(seen)), stop=lambda: len(seen) >= 400
    )
    server = FakeSMTPServer(extensions=server_variant.extensions())
    async with (
        serve_fake_smtp(server) as port,
        pool_at(port, max_connections=4) as pool,
        aclosing(source.generate()) as generated,
    ):
        summary = await ts.send_bulk(
            generated, pool=pool, concurrency=concurrency, on_result=seen.append
        )
    # Never read far ahead of the results: two messages per connection (one
    # being answered, the next being sent), plus one held by the feeder.
    assert max(ahead) <= 2 * concurrency + 2
    assert 400 <= source.pulled <= 400 + 2 * concurrency + 1
    assert len(seen) == source.pulled == summary.accepted
    assert keys(seen) == list(range(source.pulled))
    assert sorted(key_of(m.data) for m in server.messages) == list(range(source.pulled))


async def test_message_taken_just_before_a_cancel_is_reported(
    server_variant: ServerVariant,
) -> None:
    # A sync iterable is read by the workers themselves, one message at a time:
    # the first is sent (without PIPELINING, or with CHUNKING, where its BDAT LAST
    # goes out with its envelope, it is answered at once), the second is taken
    # and the run is cancelled right then.
    stub = StubServer(variant=server_variant, extensions=["8BITMIME"])
    seen: list[ts.BulkResult] = []
    async with serve_tcp(stub.handle) as port, pool_at(port) as pool:
        with trio.CancelScope() as scope:
            source = Source(on_pull=lambda pulled: scope.cancel() if pulled == 2 else None)
            await ts.send_bulk(source.iterate(), pool=pool, concurrency=1, on_result=seen.append)
        assert scope.cancelled_caught
    assert source.pulled == 2
    if server_variant.defers:
        # PIPELINING with DATA: message 0's body and dot waited in the buffer for
        # message 1's envelope, and neither went out (see test_bulk_pipelining.py).
        assert [(r.message.key, r.status) for r in seen] == [
            (0, Status.NOT_SENT),
            (1, Status.NOT_SENT),
        ]
        assert stub.received == []
        return
    assert [(r.message.key, r.status) for r in seen] == [
        (0, Status.ACCEPTED),
        (1, Status.NOT_SENT),
    ]
    assert [data for _, data in stub.received] == [b"Subject: m0\r\n\r\nkey=0\r\n"]


# --------------------------------------------------------------------------------------------
# Messages that cannot be sent fail alone


@pytest.mark.parametrize("problem", ["too large", "8-bit without 8BITMIME"])
async def test_a_message_the_server_cannot_take_fails_alone(
    problem: str, server_variant: ServerVariant
) -> None:
    if problem == "too large":
        server = FakeSMTPServer(extensions=server_variant.extensions(("8BITMIME", "SIZE 1000")))
        odd = ts.BulkMessage(SENDER, ["b@example.com"], b"x" * 5000 + body(1), key=1)
    else:
        server = FakeSMTPServer(extensions=server_variant.extensions(()))
        odd = ts.BulkMessage(SENDER, ["b@example.com"], b"caf\xc3\xa9 " + body(1), key=1)
    batch = [message(0), odd, message(2), message(3)]
    async with serve_fake_smtp(server) as port, pool_at(port, max_connections=1) as pool:
        summary = await ts.send_bulk(batch, pool=pool, concurrency=1)
    table = by_key(summary.results)
    # Raised before the message went out: nothing to refuse, nothing to duplicate.
    assert (table[1].status, table[1].attempts) == (Status.NOT_SENT, 1)
    assert isinstance(table[1].error, ts.SMTPNotSupportedError)
    assert all(table[k].status is Status.ACCEPTED for k in (0, 2, 3))
    assert sorted(key_of(m.data) for m in server.messages) == [0, 2, 3]


async def test_malformed_messages_fail_alone(server_variant: ServerVariant) -> None:
    server = FakeSMTPServer(extensions=server_variant.extensions())
    batch = [
        message(0),
        ts.BulkMessage(SENDER, ["b@example.com"], cast(Any, "a str, not bytes"), key=1),
        ts.BulkMessage(SENDER, ["not an address"], body(2), key=2),
        message(3),
    ]
    async with serve_fake_smtp(server) as port, pool_at(port) as pool:
        summary = await ts.send_bulk(batch, pool=pool, concurrency=2)
    table = by_key(summary.results)
    assert (table[1].status, table[1].attempts) == (Status.NOT_SENT, 1)
    assert isinstance(table[1].error, TypeError)
    assert (table[2].status, table[2].attempts) == (Status.NOT_SENT, 1)
    assert isinstance(table[2].error, ts.SMTPInputError)
    assert table[0].status is table[3].status is Status.ACCEPTED
    assert (summary.not_sent, summary.refused, summary.retried) == (2, 0, 0)


async def test_streamed_message_is_not_retried_once_read(
    loopback_clock: trio.testing.MockClock, server_variant: ServerVariant
) -> None:
    datas = mails = bdats = 0

    async def first_data_drops(conn: Conn, line: str) -> Action:
        nonlocal datas, mails, bdats
        if line.startswith("MAIL"):
            mails += 1
            if server_variant.chunking and mails == 1:
                # With CHUNKING the bytes message has no DATA to fail at: its MAIL
                # fails instead, with a 421 (under PIPELINING its BDAT LAST went
                # out along, and only a reply proves that it was not taken).
                return b"421 4.3.2 closing\r\n"
            return None
        if line.startswith("BDAT"):
            bdats += 1
            # The streamed message's first chunk (the bytes message's BDAT LAST
            # is the first BDAT): its data began to flow.
            return DROP if bdats == 2 else None
        if line != "DATA":
            return None
        datas += 1
        if datas == 1:
            return DROP  # before 354: nothing of the message went out
        if datas == 3:
            await conn.stream.send_all(b"354 go ahead\r\n")
            return DROP
        return None

    read: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        yield b"Subject: streamed\r\n\r\nkey=1\r\n"
        for _ in range(200):  # far more than the socket buffers hold
            read.append(1)
            yield b"0123456789" * 10_000 + b"\r\n"

    stub = StubServer(variant=server_variant, command=first_data_drops)
    # The bytes message fails first (before its data) and is retried; the
    # streamed one fails after its chunks were read, and is not.
    streamed = ts.BulkMessage(SENDER, ["b@example.com"], chunks(), key=1)
    async with serve_tcp(stub.handle) as port, pool_at(port, max_connections=1) as pool:
        summary = await ts.send_bulk([message(0), streamed], pool=pool, concurrency=1)
    table = by_key(summary.results)
    assert (table[0].status, table[0].attempts) == (Status.ACCEPTED, 2)
    assert (table[1].status, table[1].attempts) == (Status.NOT_SENT, 1)
    assert isinstance(table[1].error, ts.SMTPConnectionError)
    assert table[1].error.outcome is ts.Outcome.NOT_SENT
    assert read  # its chunks were read
    assert len(stub.conns) == 2


# --------------------------------------------------------------------------------------------
# A pool of its own, and arguments


async def test_send_bulk_can_open_a_pool_of_its_own(server_variant: ServerVariant) -> None:
    server = FakeSMTPServer(extensions=server_variant.extensions())
    counting = Counting(server)
    async with serve_tcp(counting.handle) as port:
        summary = await defaults.send_bulk(
            [message(k) for k in range(6)],
            server=LOCAL,
            port=port,
            tls=PLAIN,
            limits=ts.PoolLimits(max_connections=2),
        )
        await until(lambda: counting.active == 0)  # its pool is closed when it returns
    assert summary.accepted == 6
    assert sorted(key_of(m.data) for m in server.messages) == list(range(6))
    assert server.connections == counting.max_active == 2
    assert [line for who, line in server.transcript if who == "C"].count(b"QUIT") == 2


async def test_send_bulk_needs_a_pool_or_a_server_not_both() -> None:
    stub = StubServer()
    async with serve_tcp(stub.handle) as port, pool_at(port) as pool:
        with pytest.raises(TypeError, match="pool or a server"):
            await ts.send_bulk([message(0)])
        with pytest.raises(TypeError, match="not both"):
            await ts.send_bulk([message(0)], pool=pool, server=LOCAL)
        with pytest.raises(TypeError, match="not both"):
            await ts.send_bulk([message(0)], pool=pool, port=port)
        with pytest.raises(TypeError, match="not both"):
            await ts.send_bulk([message(0)], pool=pool, limits=ts.PoolLimits())
    assert stub.conns == []


def test_bulk_message_wants_a_list_of_recipients() -> None:
    with pytest.raises(TypeError, match="iterable of addresses"):
        ts.BulkMessage(SENDER, "b@example.com", b"x")
    assert ts.BulkMessage(SENDER, ["b@example.com"], b"x").recipients == ("b@example.com",)


@pytest.mark.parametrize(
    "bad", [{"concurrency": 0}, {"max_retries": -1}, {"retry_backoff": -1.0}, {"rate": 0.0}]
)
async def test_bad_arguments_are_refused(bad: dict[str, Any]) -> None:
    stub = StubServer()
    async with serve_tcp(stub.handle) as port, pool_at(port) as pool:
        with pytest.raises(ValueError, match="must be"):
            await ts.send_bulk([message(0)], pool=pool, **bad)
    assert stub.conns == []


async def test_unreachable_server_ends_the_run(loopback_clock: trio.testing.MockClock) -> None:
    """No connection at all after the pool's retries: every send is pointless."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here
    results: list[ts.BulkResult] = []
    messages = [ts.BulkMessage("a@example.com", ["b@example.com"], b"x", key=i) for i in range(5)]
    async with ts.open_pool(
        "127.0.0.1", port=port, tls=ts.TLSMode.INSECURE_PLAINTEXT, domain="client.example.test",
        limits=ts.PoolLimits(max_connections=2, connect_retries=2),
    ) as pool:  # fmt: skip
        with pytest.raises(ts.SMTPConnectionError):
            await ts.send_bulk(messages, pool=pool, on_result=results.append)
    assert results and all(r.status is ts.Outcome.NOT_SENT for r in results)
    assert len({r.message.key for r in results}) == len(results)
