"""LMTP (RFC 2033): LHLO, one reply per accepted recipient after the end of data
(DATA and BDAT), partial deliveries, Unix sockets, pools and send_bulk.

The fake server runs in LMTP mode in every variant (PIPELINING and CHUNKING on
and off); scripted servers play the hostile cases, where the outcome must be
exact: a recipient answered 2xx has the message, one not answered may.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.lowlevel
import trio.testing

import trio_sendmail as ts
from trio_sendmail._address import Domain, ForwardPath, ReversePath
from trio_sendmail._core import ClientCore, Event, State, Verb
from trio_sendmail._transaction import Transaction
from trio_sendmail.testing import FakeSMTPServer, TestCertificates, serve_fake_smtp

from . import defaults
from .helpers import HOST, RawServer, ServerVariant, fake_session, raw_server, serving

PLAIN = ts.TLSMode.INSECURE_PLAINTEXT
SENDER = "sender@example.test"
ALICE, BOB, CAROL = "alice@example.test", "bob@example.test", "carol@example.test"
BODY = b"From: sender@example.test\r\nSubject: lmtp\r\n\r\nHello,\r\n.dot line\r\n"
QUOTA = (552, "5.2.2 <carol@example.test> Mailbox is full")


def lmtp_server(variant: ServerVariant, **kwargs: object) -> FakeSMTPServer:
    return FakeSMTPServer(lmtp=True, extensions=variant.extensions(), **kwargs)  # type: ignore[arg-type]


def paths(*addresses: str) -> tuple[ts.ForwardPath, ...]:
    return tuple(ts.ForwardPath.parse(a) for a in addresses)


# --------------------------------------------------------------------------- the fake server


async def test_lhlo_and_one_reply_per_recipient(
    server_variant: ServerVariant, certs: TestCertificates
) -> None:
    server = lmtp_server(server_variant)
    async with fake_session(server, certs, tls=PLAIN, protocol="lmtp") as session:
        result = await session.send(SENDER, [ALICE, BOB, CAROL], BODY)
        assert session.is_usable
    assert next(c for c in server.transcript if c[0] == "C") == ("C", b"LHLO client.example.test")
    assert result.accepted == paths(ALICE, BOB, CAROL)
    assert list(result.final_replies) == list(paths(ALICE, BOB, CAROL))
    for path, reply in result.final_replies.items():
        assert reply.code == 250 and f"<{path.mailbox}>" in reply.text
    assert result.reply == result.final_replies[paths(ALICE)[0]]
    [received] = server.messages
    assert received.recipients == (ALICE, BOB, CAROL)
    assert received.data == BODY
    assert server.pipelining_violations == 0
    assert server.bare_line_endings == 0
    # Three replies to the end of data, one per recipient, in RCPT order.
    replies = [
        line for kind, line in server.transcript if kind == "S" and b"Ok: delivered" in line
    ]
    assert [line.split(b"<")[1].split(b">")[0] for line in replies] == [
        ALICE.encode(),
        BOB.encode(),
        CAROL.encode(),
    ]


async def test_large_message_in_chunks(
    server_variant: ServerVariant, certs: TestCertificates
) -> None:
    big = BODY + b"x" * 998 + b"\r\n" + b"".join(b"line %d\r\n" % i for i in range(30000))
    server = lmtp_server(server_variant, lmtp_replies={CAROL: QUOTA})
    async with fake_session(server, certs, tls=PLAIN, protocol="lmtp") as session:
        with pytest.raises(ts.SMTPPartialDelivery) as caught:
            await session.send(SENDER, [ALICE, CAROL], big)
        result = await session.send(SENDER, [BOB], big)
    assert caught.value.delivered == paths(ALICE)
    assert [r.code for r in result.final_replies.values()] == [250]
    assert [(m.recipients, m.data == big) for m in server.messages] == [
        ((ALICE,), True),
        ((BOB,), True),
    ]
    if server_variant.chunking:  # several BDAT chunks, the last one answered per recipient
        assert sum(1 for kind, line in server.transcript if line.startswith(b"BDAT ")) > 4


async def test_partial_delivery_is_not_accepted(
    server_variant: ServerVariant, certs: TestCertificates
) -> None:
    server = lmtp_server(server_variant, lmtp_replies={CAROL: QUOTA})
    tracker = ts.OutcomeTracker()
    async with fake_session(server, certs, tls=PLAIN, protocol="lmtp") as session:
        with pytest.raises(ts.SMTPPartialDelivery) as caught:
            await session.send(SENDER, [ALICE, BOB, CAROL], BODY, tracker=tracker)
        error = caught.value
        assert error.outcome is ts.Outcome.PARTIAL
        assert tracker.outcome is ts.Outcome.PARTIAL
        assert not session.outcome_unknown
        assert error.delivered == paths(ALICE, BOB)
        [(refused, reply)] = error.refused.items()
        assert refused == paths(CAROL)[0]
        assert (reply.code, str(reply.enhanced_status)) == (552, "5.2.2")
        assert not error.is_transient
        assert tracker.result == error.result
        assert list(error.result.final_replies) == list(paths(ALICE, BOB, CAROL))
        # The transaction is over: the session goes on.
        assert session.is_usable
        again = await session.send(SENDER, [BOB], BODY)
        assert again.accepted == paths(BOB)
    assert [m.recipients for m in server.messages] == [(ALICE, BOB), (BOB,)]


async def test_refused_for_every_recipient(
    server_variant: ServerVariant, certs: TestCertificates
) -> None:
    server = lmtp_server(
        server_variant,
        lmtp_replies={ALICE: (451, "4.3.0 Temporary failure"), BOB: QUOTA},
    )
    tracker = ts.OutcomeTracker()
    async with fake_session(server, certs, tls=PLAIN, protocol="lmtp") as session:
        with pytest.raises(ts.SMTPResponseError) as caught:
            await session.send(SENDER, [ALICE, BOB], BODY, tracker=tracker)
        assert session.is_usable
    error = caught.value
    assert error.outcome is ts.Outcome.REFUSED
    assert error.code == 552  # the permanent refusal says why
    assert isinstance(error, ts.SMTPPermanentError)
    txn = tracker.transaction
    assert txn is not None and txn.recipient_replies is not None
    assert [r.code for r in txn.recipient_replies.values()] == [451, 552]
    assert server.messages == []


async def test_rcpt_refusals_get_no_reply_after_the_data(
    server_variant: ServerVariant, certs: TestCertificates
) -> None:
    server = lmtp_server(
        server_variant,
        refuse_recipients={BOB: (550, "5.1.1 User unknown")},
        lmtp_replies={CAROL: QUOTA},
    )
    async with fake_session(server, certs, tls=PLAIN, protocol="lmtp") as session:
        with pytest.raises(ts.SMTPPartialDelivery) as caught:
            await session.send(SENDER, [ALICE, BOB, CAROL], BODY)
    result = caught.value.result
    assert result.accepted == paths(ALICE, CAROL)
    assert list(result.refused) == list(paths(BOB))
    assert [r.code for r in result.final_replies.values()] == [250, 552]
    assert server.messages[0].recipients == (ALICE,)


async def test_no_recipient_accepted(
    server_variant: ServerVariant, certs: TestCertificates
) -> None:
    server = lmtp_server(server_variant, refuse_recipients={ALICE: (550, "5.1.1 User unknown")})
    async with fake_session(server, certs, tls=PLAIN, protocol="lmtp") as session:
        with pytest.raises(ts.SMTPRecipientsRefused) as caught:
            await session.send(SENDER, [ALICE], BODY)
        assert caught.value.outcome is ts.Outcome.NOT_SENT
        assert (await session.send(SENDER, [BOB], BODY)).accepted == paths(BOB)


async def test_smtp_client_against_lmtp_server_fails_at_the_greeting() -> None:
    server = FakeSMTPServer(lmtp=True)
    async with serving(server) as client:
        with pytest.raises(ts.SMTPResponseError) as caught:
            async with defaults.open_session(HOST, tls=PLAIN, stream=client):
                pass  # pragma: no cover
    assert caught.value.command == "HELO" and caught.value.code == 500


async def test_lmtp_client_against_smtp_server_has_no_helo_fallback() -> None:
    server = FakeSMTPServer()
    async with serving(server) as client:
        with pytest.raises(ts.SMTPResponseError) as caught:
            async with defaults.open_session(HOST, tls=PLAIN, stream=client, protocol="lmtp"):
                pass  # pragma: no cover
    assert caught.value.command == "LHLO"
    assert [line for kind, line in server.transcript if kind == "C"][:2] == [
        b"LHLO client.example.test",
        b"QUIT",
    ]


def test_settings() -> None:
    settings = ts.ConnectionSettings("localhost", protocol="lmtp", unix_socket=Path("/run/lmtp"))
    assert settings.resolved_port == 24
    assert settings.unix_socket == "/run/lmtp"
    assert ts.ConnectionSettings("localhost").protocol == "smtp"
    with pytest.raises(ts.SMTPInputError):
        ts.ConnectionSettings("localhost", protocol="esmtp")  # type: ignore[arg-type]
    with pytest.raises(ts.SMTPInputError):
        ts.ConnectionSettings("localhost", unix_socket="")
    with pytest.raises(TypeError):
        ts.ConnectionSettings("localhost", unix_socket=5)  # type: ignore[arg-type]

    async def connect(host: str, port: int) -> trio.abc.Stream:
        raise AssertionError  # pragma: no cover

    with pytest.raises(ts.SMTPInputError):
        ts.ConnectionSettings("localhost", unix_socket="/x", connect=connect)


# --------------------------------------------------------------------------- Unix sockets


@pytest.fixture
def socket_path() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="ts-lmtp-") as folder:
        yield os.path.join(folder, "lmtp.sock")


@asynccontextmanager
async def serve_unix(server: FakeSMTPServer, path: str) -> AsyncIterator[None]:
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen()
    listener = trio.SocketListener(sock)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.serve_listeners, server.handle_stream, [listener]))
        yield
        nursery.cancel_scope.cancel()


async def test_unix_socket(server_variant: ServerVariant, socket_path: str) -> None:
    server = lmtp_server(server_variant, lmtp_replies={CAROL: QUOTA})
    async with (
        serve_unix(server, socket_path),
        defaults.open_session(
            "localhost", protocol="lmtp", tls=PLAIN, unix_socket=socket_path
        ) as session,
    ):
        result = await session.send(SENDER, [ALICE], BODY)
        with pytest.raises(ts.SMTPPartialDelivery):
            await session.send(SENDER, [BOB, CAROL], BODY)
    assert result.accepted == paths(ALICE)
    assert [m.recipients for m in server.messages] == [(ALICE,), (BOB,)]
    assert all(m.data == BODY for m in server.messages)


async def test_missing_unix_socket(socket_path: str) -> None:
    with pytest.raises(ts.SMTPConnectionError, match="Unix socket"):
        async with defaults.open_session(
            "localhost", protocol="lmtp", tls=PLAIN, unix_socket=socket_path
        ):
            pass  # pragma: no cover


# --------------------------------------------------------------------------- pool and bulk


async def test_pool_and_send_bulk(server_variant: ServerVariant) -> None:
    server = lmtp_server(
        server_variant,
        lmtp_replies={CAROL: QUOTA, "temp@example.test": (451, "4.2.0 Try later")},
    )
    async with serve_fake_smtp(server) as port:
        settings = defaults.ConnectionSettings("127.0.0.1", port=port, tls=PLAIN, protocol="lmtp")
        async with ts.open_pool(settings) as pool:
            result = await pool.send(SENDER, [ALICE, BOB], BODY)
            assert [r.code for r in result.final_replies.values()] == [250, 250]
            with pytest.raises(ts.SMTPPartialDelivery):
                await pool.send(SENDER, [ALICE, CAROL], BODY)
        messages = [
            ts.BulkMessage(SENDER, [ALICE], BODY, key="all"),
            ts.BulkMessage(SENDER, [BOB, CAROL], BODY, key="partial"),
            ts.BulkMessage(SENDER, [CAROL], BODY, key="refused"),
            ts.BulkMessage(SENDER, [ALICE, "temp@example.test"], BODY, key="transient"),
        ]
        summary = await ts.send_bulk(messages, server=settings, max_retries=2, retry_backoff=0.01)
    results = {r.message.key: r for r in summary.results}
    assert results["all"].status is ts.Outcome.ACCEPTED
    for key in ("partial", "transient"):  # never retried: the first recipient has it
        partial = results[key]
        assert partial.status is ts.Outcome.PARTIAL and partial.attempts == 1
        assert isinstance(partial.error, ts.SMTPPartialDelivery)
        assert partial.result is not None and len(partial.result.final_replies) == 2
    assert results["refused"].status is ts.Outcome.REFUSED
    assert (summary.accepted, summary.partial, summary.refused) == (1, 2, 1)
    delivered = sorted(r for m in server.messages for r in m.recipients)
    assert delivered == sorted([ALICE, BOB, ALICE, ALICE, BOB, ALICE])


# --------------------------------------------------------------------------- hostile servers


async def lmtp_envelope(srv: RawServer, variant: ServerVariant, count: int) -> bytes:
    """Greet, answer LHLO, MAIL and *count* RCPT with 250, read the message."""
    await srv.send(b"220 lmtp.example.test LMTP ready\r\n")
    await srv.expect(b"LHLO ", variant.ehlo())
    await srv.expect(b"MAIL FROM:", b"250 2.1.0 Ok\r\n")
    for _ in range(count):
        await srv.expect(b"RCPT TO:", b"250 2.1.5 Ok\r\n")
    return await srv.message(variant)


HOSTILE: dict[str, tuple[bytes, type[ts.SMTPError], ts.Outcome, int]] = {
    # name: (what the server sends after the data, the error, the outcome,
    #        how many recipient replies the transaction records)
    "missing": (b"250 2.0.0 alice ok\r\n", ts.SMTPConnectionError, ts.Outcome.UNKNOWN, 1),
    "none": (b"", ts.SMTPConnectionError, ts.Outcome.UNKNOWN, 0),
    "extra": (
        b"250 2.0.0 alice ok\r\n250 2.0.0 bob ok\r\n250 2.0.0 who?\r\n",
        ts.SMTPProtocolError, ts.Outcome.UNKNOWN, 2,
    ),
    "garbled": (b"250 2.0.0 alice ok\r\n2x0 bob\r\n", ts.SMTPProtocolError, ts.Outcome.UNKNOWN, 1),
    "354": (b"250 2.0.0 alice ok\r\n354 bob\r\n", ts.SMTPProtocolError, ts.Outcome.UNKNOWN, 1),
    "421": (
        b"250 2.0.0 alice ok\r\n421 4.3.2 shutting down\r\n",
        ts.SMTPServiceClosing, ts.Outcome.UNKNOWN, 2,
    ),
    "cut": (b"250 2.0.0 alice ok\r\n250-bob", ts.SMTPProtocolError, ts.Outcome.UNKNOWN, 1),
    "421-first": (b"421 4.3.2 shutting down\r\n", ts.SMTPServiceClosing, ts.Outcome.UNKNOWN, 1),
    "421-none-delivered": (
        b"550 5.2.1 alice disabled\r\n421 4.3.2 shutting down\r\n",
        ts.SMTPServiceClosing, ts.Outcome.REFUSED, 2,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_hostile_recipient_replies(server_variant: ServerVariant, case: str) -> None:
    after, kind, outcome, recorded = HOSTILE[case]

    async def script(srv: RawServer) -> None:
        await lmtp_envelope(srv, server_variant, 2)
        await srv.send(after)
        if case == "extra":
            await srv.eof()
        else:
            await srv.stream.aclose()

    tracker = ts.OutcomeTracker()
    async with (
        raw_server(script) as (client, _),
        defaults.open_session(HOST, tls=PLAIN, stream=client, protocol="lmtp") as session,
    ):
        with pytest.raises(kind) as caught:
            await session.send(SENDER, [ALICE, BOB], BODY, tracker=tracker)
        assert not session.is_usable
        assert session.outcome_unknown is (outcome is ts.Outcome.UNKNOWN)
    assert caught.value.outcome is outcome
    assert tracker.outcome is outcome
    txn = tracker.transaction
    assert txn is not None and txn.recipient_replies is not None
    assert len(txn.recipient_replies) == recorded
    if recorded:  # the first recipient's reply is kept (a 250: it has the message)
        assert txn.recipient_replies[paths(ALICE)[0]].code == int(after[:3])


async def test_second_reply_never_comes(
    server_variant: ServerVariant, autojump_clock: trio.testing.MockClock
) -> None:
    async def script(srv: RawServer) -> None:
        await lmtp_envelope(srv, server_variant, 2)
        await srv.send(b"250 2.0.0 alice ok\r\n")
        await trio.sleep_forever()

    tracker = ts.OutcomeTracker()
    timeouts = ts.Timeouts(data_end=30)
    async with (
        raw_server(script) as (client, _),
        defaults.open_session(
            HOST, tls=PLAIN, stream=client, protocol="lmtp", timeouts=timeouts
        ) as session,
    ):
        with pytest.raises(ts.SMTPTimeoutError) as caught:
            await session.send(SENDER, [ALICE, BOB], BODY, tracker=tracker)
    assert caught.value.phase == "data_end"
    assert caught.value.outcome is ts.Outcome.UNKNOWN
    txn = tracker.transaction
    assert txn is not None and txn.recipient_replies is not None
    assert [r.code for r in txn.recipient_replies.values()] == [250]


async def test_replies_trickling_in(server_variant: ServerVariant) -> None:
    async def script(srv: RawServer) -> None:
        data = await lmtp_envelope(srv, server_variant, 3)
        assert data.rstrip(b".\r\n").endswith(b"dot line")
        for reply in (b"250 2.0.0 a\r\n", b"452 4.2.2 b over quota\r\n", b"250 2.0.0 c\r\n"):
            for byte in reply:
                await srv.send(bytes([byte]))
                await trio.lowlevel.checkpoint()
        await srv.expect(b"QUIT", b"221 bye\r\n")

    async with (
        raw_server(script) as (client, _),
        defaults.open_session(HOST, tls=PLAIN, stream=client, protocol="lmtp") as session,
    ):
        with pytest.raises(ts.SMTPPartialDelivery) as caught:
            await session.send(SENDER, [ALICE, BOB, CAROL], BODY)
    assert caught.value.delivered == paths(ALICE, CAROL)
    assert caught.value.is_transient


# --------------------------------------------------------------------------- the sans-io core


def outcome_of(txn: Transaction) -> ts.Outcome:
    return txn.outcome


def lmtp_core() -> ClientCore:
    core = ClientCore()
    core.lmtp = True
    list(feed(core, b"220 lmtp\r\n"))
    core.lhlo(Domain.parse("client.example.test"))
    list(feed(core, b"250-lmtp\r\n250 PIPELINING\r\n"))
    return core


def feed(core: ClientCore, data: bytes) -> Iterator[Event]:
    core.data_to_send()
    for i in range(len(data)):  # one byte at a time
        core.receive_data(data[i : i + 1])
        while (event := core.next_event()) is not None:
            yield event


def test_core_pairs_each_reply_with_its_recipient() -> None:
    core = lmtp_core()
    txn = core.mail(ReversePath.parse(SENDER))
    for address in (ALICE, BOB):
        core.rcpt(ForwardPath.parse(address))
    core.data()
    events = list(feed(core, b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n"))
    assert [e.verb for e in events] == [Verb.MAIL, Verb.RCPT, Verb.RCPT, Verb.DATA]
    core.end_data(b"hi\r\n")
    assert core.data_to_send() == b"hi\r\n.\r\n"
    first = list(feed(core, b"250 2.0.0 alice\r\n"))
    assert [(e.verb, e.subject) for e in first] == [(Verb.END_DATA, paths(ALICE)[0])]
    assert core.inflight == (Verb.END_DATA,) and outcome_of(txn) is ts.Outcome.UNKNOWN
    second = list(feed(core, b"552 5.2.2 bob full\r\n"))
    assert [(e.verb, e.subject) for e in second] == [(Verb.END_DATA, paths(BOB)[0])]
    assert core.state is State.READY and not core.awaiting_reply
    assert outcome_of(txn) is ts.Outcome.PARTIAL
    assert txn.final_reply is not None and txn.final_reply.lines == ("alice",)


def test_core_bdat_last_replies_per_recipient_and_ends_the_transaction() -> None:
    core = lmtp_core()
    txn = core.mail(ReversePath.parse(SENDER))
    core.rcpt(ForwardPath.parse(ALICE))
    core.rcpt(ForwardPath.parse(BOB))
    core.begin_bdat(chunk_size=100)
    core.body(b"hi\r\n")
    core.end_body()
    replies = b"250 ok\r\n250 ok\r\n250 ok\r\n550 5.7.1 no\r\n451 4.3.0 later\r\n"
    events = list(feed(core, replies))
    assert [e.verb for e in events][-2:] == [Verb.BDAT_LAST, Verb.BDAT_LAST]
    assert txn.outcome is ts.Outcome.REFUSED
    assert core.state is State.READY  # no RSET needed: the transaction is over


def test_core_smtp_end_of_data_is_one_reply() -> None:
    core = ClientCore()
    list(feed(core, b"220 smtp\r\n"))
    core.ehlo(Domain.parse("client.example.test"))
    list(feed(core, b"250-smtp\r\n250 PIPELINING\r\n"))
    txn = core.mail(ReversePath.parse(SENDER))
    core.rcpt(ForwardPath.parse(ALICE))
    core.rcpt(ForwardPath.parse(BOB))
    core.data()
    list(feed(core, b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n"))
    core.end_data(b"hi\r\n")
    [event] = feed(core, b"250 queued\r\n")
    assert event.subject is None and txn.recipient_replies is None
    assert txn.outcome is ts.Outcome.ACCEPTED
    assert txn.result().final_replies == dict.fromkeys(paths(ALICE, BOB), txn.final_reply)
