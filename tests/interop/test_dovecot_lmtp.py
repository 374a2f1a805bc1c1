"""LMTP against a real Dovecot (``tests/interop/dovecot.sh start``): LHLO, one
reply per recipient after the end of data (DATA and BDAT, with and without
PIPELINING), a quota failure after the data (552 5.2.2) as a partial delivery,
TCP, STARTTLS and the Unix socket, and the bytes Dovecot wrote to its Maildirs.
"""

from __future__ import annotations

import re
import ssl
import uuid
from pathlib import Path

import pytest
import trio

import trio_sendmail as ts

from ..defaults import ConnectionSettings, open_session, send_bulk
from ..dovecot_plugin import DovecotEnv

pytestmark = pytest.mark.interop

PLAIN = ts.TLSMode.INSECURE_PLAINTEXT
SENDER = "sender@example.test"

CLIENT_MODES = [
    pytest.param({"pipelining": True, "chunking": True}, id="pipe-chunk"),
    pytest.param({"pipelining": True, "chunking": False}, id="pipe-data"),
    pytest.param({"pipelining": False, "chunking": True}, id="lock-chunk"),
    pytest.param({"pipelining": False, "chunking": False}, id="lock-data"),
]


def message(token: str, extra: bytes = b"") -> bytes:
    return (
        b"From: sender@example.test\r\n"
        b"To: alice@example.test\r\n"
        b"Subject: lmtp " + token.encode() + b"\r\n"
        b"Message-ID: <" + token.encode() + b"@example.test>\r\n"
        b"\r\n"
        b"Hello over LMTP.\r\n"
        b".A line that starts with a dot.\r\n"
        b"..and one with two.\r\n" + extra
    )


def delivered(dovecot: DovecotEnv, local: str, token: str) -> list[bytes]:
    """Every file in *local*'s Maildir that holds the message *token*."""
    folder = dovecot.maildir(local)
    if not folder.is_dir():
        return []
    needle = f"Message-ID: <{token}@example.test>".encode()
    return [path.read_bytes() for path in sorted(folder.iterdir()) if needle in path.read_bytes()]


HEADER_RE = re.compile(
    rb"Return-Path: <sender@example\.test>\n"
    rb"(?:Delivered-To: (?P<rcpt>[^\n]+)\n)?"
    rb"(?P<received>Received: from client\.example\.test(?: \(\[127\.0\.0\.1\]\))?\n"
    rb"(?:\t[^\n]+\n)+)"
)


def check_stored(stored: bytes, sent: bytes, alone: str | None = None) -> bytes:
    """Dovecot stores the message with LF line endings, after the headers it adds
    (Return-Path, Received, and Delivered-To when the message had one recipient,
    *alone*): the rest is the sent bytes exactly, dots unstuffed."""
    match = HEADER_RE.match(stored)
    assert match is not None, stored[:300]
    assert match["rcpt"] == (alone.encode() if alone is not None else None)
    assert stored[match.end() :] == sent.replace(b"\r\n", b"\n")
    received: bytes = match["received"]
    return received


def settings(
    dovecot: DovecotEnv, *, pipelining: bool = True, chunking: bool = True
) -> ts.ConnectionSettings:
    return ConnectionSettings(
        dovecot.host,
        port=dovecot.lmtp_port,
        tls=PLAIN,
        protocol="lmtp",
        pipelining=pipelining,
        chunking=chunking,
    )


@pytest.mark.parametrize("mode", CLIENT_MODES)
async def test_delivers_to_each_recipient(dovecot: DovecotEnv, mode: dict[str, bool]) -> None:
    token = uuid.uuid4().hex
    sent = message(token)
    alice, bob = dovecot.address("alice"), dovecot.address("bob")
    async with open_session(settings(dovecot, **mode)) as session:
        assert session.capabilities.chunking and session.capabilities.pipelining
        result = await session.send(SENDER, [alice, bob], sent)
    assert [str(p) for p in result.accepted] == [f"<{alice}>", f"<{bob}>"]
    for path, reply in result.final_replies.items():
        assert reply.code == 250 and str(reply.enhanced_status) == "2.0.0"
        assert reply.lines[0].startswith(f"{path} ") and reply.lines[0].endswith(" Saved")
    for local in ("alice", "bob"):
        [stored] = delivered(dovecot, local, token)
        assert b"\tby lmtp.example.test with LMTP\n" in check_stored(stored, sent)


@pytest.mark.parametrize("mode", CLIENT_MODES)
async def test_quota_failure_is_a_partial_delivery(
    dovecot: DovecotEnv, mode: dict[str, bool]
) -> None:
    token = uuid.uuid4().hex
    sent = message(token)
    alice, full = dovecot.address("alice"), dovecot.address(dovecot.full_user)
    tracker = ts.OutcomeTracker()
    async with open_session(settings(dovecot, **mode)) as session:
        with pytest.raises(ts.SMTPPartialDelivery) as caught:
            await session.send(SENDER, [alice, full], sent, tracker=tracker)
        # The transaction is over; the same connection delivers the next one.
        again = await session.send(SENDER, [alice], message(token + "-2"))
    error = caught.value
    assert error.outcome is ts.Outcome.PARTIAL and tracker.outcome is ts.Outcome.PARTIAL
    assert [str(p) for p in error.delivered] == [f"<{alice}>"]
    [(refused, reply)] = error.refused.items()
    assert str(refused) == f"<{full}>"
    assert (reply.code, str(reply.enhanced_status)) == (552, "5.2.2")
    assert "Quota exceeded" in reply.text
    assert [r.code for r in again.final_replies.values()] == [250]
    [stored] = delivered(dovecot, "alice", token)
    check_stored(stored, sent)
    assert delivered(dovecot, dovecot.full_user, token) == []


async def test_unknown_user_refused_at_rcpt(dovecot: DovecotEnv) -> None:
    token = uuid.uuid4().hex
    alice = dovecot.address("alice")
    async with open_session(settings(dovecot)) as session:
        result = await session.send(SENDER, [alice, dovecot.address("nobody")], message(token))
    [(path, reply)] = result.refused.items()
    assert str(path) == "<nobody@example.test>" and reply.code == 550
    assert list(result.final_replies) == list(result.accepted)


async def test_unix_socket(dovecot: DovecotEnv) -> None:
    token = uuid.uuid4().hex
    sent = message(token)
    carol = dovecot.address("carol")
    config = ConnectionSettings(
        "localhost", tls=PLAIN, protocol="lmtp", unix_socket=dovecot.lmtp_socket
    )
    async with open_session(config) as session:
        result = await session.send(SENDER, [carol], sent)
    assert result.reply.code == 250
    [stored] = delivered(dovecot, "carol", token)
    received = check_stored(stored, sent, carol)
    assert b"127.0.0.1" not in received and b"\tby lmtp.example.test with LMTP\n" in received


async def test_starttls(dovecot: DovecotEnv) -> None:
    token = uuid.uuid4().hex
    sent = message(token)
    context = ssl.create_default_context(cafile=str(dovecot.ca_file))
    config = ConnectionSettings(
        dovecot.tls_hostname,
        port=dovecot.lmtp_port,
        tls=ts.TLSMode.STARTTLS,
        ssl_context=context,
        protocol="lmtp",
    )
    async with open_session(config) as session:
        assert session.tls
        await session.send(SENDER, [dovecot.address("dave")], sent)
    [stored] = delivered(dovecot, "dave", token)
    received = check_stored(stored, sent, "dave@example.test")
    assert b"(using TLSv1." in received and b"with LMTPS\n" in received


async def test_send_bulk(dovecot: DovecotEnv) -> None:
    token = uuid.uuid4().hex
    alice, bob = dovecot.address("alice"), dovecot.address("bob")
    full = dovecot.address(dovecot.full_user)
    messages = [
        ts.BulkMessage(SENDER, [alice, bob], message(f"{token}-all"), key="all"),
        ts.BulkMessage(SENDER, [bob, full], message(f"{token}-partial"), key="partial"),
        ts.BulkMessage(SENDER, [full], message(f"{token}-refused"), key="refused"),
    ]
    with trio.fail_after(60):
        summary = await send_bulk(messages, server=settings(dovecot), max_retries=1)
    statuses = {r.message.key: r.status for r in summary.results}
    assert statuses == {
        "all": ts.Outcome.ACCEPTED,
        "partial": ts.Outcome.PARTIAL,
        "refused": ts.Outcome.REFUSED,
    }
    assert (summary.accepted, summary.partial, summary.refused) == (1, 1, 1)
    assert all(r.attempts == 1 for r in summary.results)
    assert len(delivered(dovecot, "bob", f"{token}-partial")) == 1
    assert delivered(dovecot, dovecot.full_user, token) == []


def test_maildir_paths_are_private(dovecot: DovecotEnv) -> None:
    # The instance delivers only into its own state folder.
    assert Path(dovecot.maildir_base).is_relative_to(dovecot.state_dir)
