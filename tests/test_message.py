"""Messages given as ``email.message.Message``: blind copies stay blind, and the
envelope comes from the header fields when the caller gives none.

Every entry point (``sendmail``, ``sendmail_with_starttls``, ``Session.send``,
``Pool.send``, ``Lease.send``, ``send_bulk`` with a ``BulkMessage``) sends to a
fake server over loopback TLS, in the four PIPELINING/CHUNKING variants, and
the bytes the server received are compared with a literal: what the message
says, without its ``Bcc`` line.
"""

from __future__ import annotations

import email
import email.message
import email.policy
from collections.abc import AsyncIterator
from typing import Any, Final

import attrs
import pytest

import trio_sendmail as ts
from trio_sendmail._message import header_recipients, header_sender, message_bytes
from trio_sendmail.testing import FakeSMTPServer, TestCertificates, serve_fake_smtp

from . import defaults
from .helpers import ServerVariant

#: The message of :func:`message` as it must arrive: no ``Bcc`` line.
WIRE: Final = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.com\r\n"
    b"Cc: Carol <carol@example.com>\r\n"
    b"Subject: Hi\r\n"
    b'Content-Type: text/plain; charset="utf-8"\r\n'
    b"Content-Transfer-Encoding: 7bit\r\n"
    b"MIME-Version: 1.0\r\n"
    b"\r\n"
    b"Hello.\r\n"
)
TO_CC_BCC: Final = ("bob@example.com", "carol@example.com", "dave@example.com")
TIMEOUTS: Final = ts.Timeouts(connect=10, greeting=10, command=10, quit=2)


def message() -> email.message.EmailMessage:
    message = email.message.EmailMessage()
    message["From"] = "Alice <alice@example.com>"
    message["To"] = "bob@example.com"
    message["Cc"] = "Carol <carol@example.com>"
    message["Bcc"] = "dave@example.com"
    message["Subject"] = "Hi"
    message.set_content("Hello.\n")
    return message


ENTRY_POINTS = ["sendmail", "sendmail_with_starttls", "session", "pool", "lease", "bulk"]


async def send_through(
    entry: str, server: FakeSMTPServer, certs: TestCertificates, **envelope: Any
) -> None:
    """Send ``envelope["mail"]`` (with the sender and recipients in *envelope*, if
    any) through *entry*, to *server* on loopback."""
    implicit = entry == "sendmail"
    tls = ts.TLSMode.IMPLICIT if implicit else ts.TLSMode.STARTTLS
    connection: dict[str, Any] = {"ssl_context": certs.client_context, "timeouts": TIMEOUTS}
    async with serve_fake_smtp(server, implicit_tls=implicit) as port:
        if entry == "sendmail":
            await defaults.sendmail(hostname="localhost", port=port, **connection, **envelope)
        elif entry == "sendmail_with_starttls":
            await defaults.sendmail_with_starttls(
                hostname="localhost", port=port, **connection, **envelope
            )
        elif entry == "session":
            async with defaults.open_session("localhost", port=port, tls=tls, **connection) as s:
                await s.send(**envelope)
        else:
            async with defaults.open_pool("localhost", port=port, tls=tls, **connection) as pool:
                if entry == "pool":
                    await pool.send(**envelope)
                elif entry == "lease":
                    async with pool.lease() as lease:
                        assert await lease.send(**envelope) is not None
                else:
                    assert entry == "bulk"
                    summary = await ts.send_bulk([ts.BulkMessage(**envelope)], pool=pool)
                    [result] = summary.results
                    assert result.status is ts.Outcome.ACCEPTED, result


def fake(variant: ServerVariant, certs: TestCertificates) -> FakeSMTPServer:
    return FakeSMTPServer(extensions=variant.extensions(), ssl_context=certs.server_context)


# ------------------------------------------------------------------ Bcc never leaks


@pytest.mark.parametrize("entry", ENTRY_POINTS)
async def test_bcc_never_leaks_and_the_envelope_comes_from_the_headers(
    entry: str, server_variant: ServerVariant, certs: TestCertificates
) -> None:
    server = fake(server_variant, certs)
    original = message()
    before = original.as_bytes()
    await send_through(entry, server, certs, mail=original)
    [received] = server.messages
    assert received.data == WIRE
    assert received.sender == "alice@example.com"
    assert received.recipients == TO_CC_BCC  # Bcc's recipient gets it, unnamed
    # The caller's object is left as it was.
    assert original["Bcc"] == "dave@example.com"
    assert original.as_bytes() == before


@pytest.mark.parametrize("entry", ENTRY_POINTS)
async def test_bcc_is_removed_with_an_explicit_envelope(
    entry: str, server_variant: ServerVariant, certs: TestCertificates
) -> None:
    server = fake(server_variant, certs)
    original = message()
    await send_through(
        entry, server, certs, sender="list@example.com", recipients=["eve@example.com"],
        mail=original,
    )  # fmt: skip
    [received] = server.messages
    assert received.data == WIRE
    assert (received.sender, received.recipients) == ("list@example.com", ("eve@example.com",))
    assert original["Bcc"] == "dave@example.com"


async def test_bytes_and_streams_are_sent_as_given(
    server_variant: ServerVariant, certs: TestCertificates
) -> None:
    """Only a message object is edited: bytes carry their Bcc line, as documented."""
    with_bcc = bytes(message())
    assert b"\nBcc: dave@example.com\n" in with_bcc

    async def chunks() -> AsyncIterator[bytes]:
        yield with_bcc[:40]
        yield with_bcc[40:]

    server = fake(server_variant, certs)
    envelope = {"sender": "alice@example.com", "recipients": ["bob@example.com"]}
    await send_through("session", server, certs, mail=with_bcc, **envelope)
    await send_through("session", server, certs, mail=chunks(), **envelope)
    wanted = with_bcc.replace(b"\n", b"\r\n")
    assert [m.data for m in server.messages] == [wanted, wanted]


async def test_resent_fields_replace_the_original_ones(
    server_variant: ServerVariant, certs: TestCertificates
) -> None:
    resent = message()
    resent["Resent-Date"] = "Mon, 30 Nov 2026 10:00:00 +0000"
    resent["Resent-From"] = "Frank <frank@example.com>"
    resent["Resent-To"] = "grace@example.com"
    resent["Resent-Bcc"] = "heidi@example.com"
    server = fake(server_variant, certs)
    await send_through("session", server, certs, mail=resent)
    [received] = server.messages
    assert received.sender == "frank@example.com"
    assert received.recipients == ("grace@example.com", "heidi@example.com")
    assert b"Bcc" not in received.data  # neither Bcc nor Resent-Bcc
    assert received.data.startswith(WIRE.split(b"\r\n\r\n")[0])
    assert b"\r\nResent-To: grace@example.com\r\n" in received.data
    assert resent["Resent-Bcc"] == "heidi@example.com"


async def test_the_sender_field_names_the_sender(
    server_variant: ServerVariant, certs: TestCertificates
) -> None:
    on_behalf = message()
    del on_behalf["From"]
    on_behalf["From"] = "Alice <alice@example.com>, Bob <bob@example.com>"
    on_behalf["Sender"] = "Secretary <secretary@example.com>"
    server = fake(server_variant, certs)
    await send_through("pool", server, certs, recipients=["carol@example.com"], mail=on_behalf)
    [received] = server.messages
    assert received.sender == "secretary@example.com"
    assert received.recipients == ("carol@example.com",)


# ------------------------------------------------------------------ no envelope, no I/O


@pytest.mark.parametrize("entry", ["session", "pool", "lease"])
@pytest.mark.parametrize("missing", ["recipients", "sender"])
async def test_bytes_without_an_envelope_fail_before_any_io(
    entry: str, missing: str, certs: TestCertificates
) -> None:
    server = FakeSMTPServer(ssl_context=certs.server_context)
    envelope: dict[str, Any] = {"sender": "a@example.com", "recipients": ["b@example.com"]}
    del envelope[missing]
    async with serve_fake_smtp(server) as port:
        connection: dict[str, Any] = {
            "tls": ts.TLSMode.STARTTLS,
            "ssl_context": certs.client_context,
            "timeouts": TIMEOUTS,
        }
        if entry == "session":
            async with defaults.open_session("localhost", port=port, **connection) as session:
                with pytest.raises(ts.SMTPInputError, match=f"{missing} must be given") as info:
                    await session.send(mail=WIRE, **envelope)
                assert session.is_usable
        else:
            async with defaults.open_pool("localhost", port=port, **connection) as pool:
                with pytest.raises(ts.SMTPInputError, match=f"{missing} must be given") as info:
                    if entry == "pool":
                        await pool.send(mail=WIRE, **envelope)
                    else:
                        async with pool.lease() as lease:
                            await lease.send(mail=WIRE, **envelope)
    assert info.value.outcome is ts.Outcome.NOT_SENT
    commands = [line.split()[0] for side, line in server.transcript if side == "C"]
    assert b"MAIL" not in commands
    if entry == "pool":  # the pool checks the message before it takes a connection
        assert server.connections == 0


async def test_a_message_naming_no_recipient_fails_before_any_io(certs: TestCertificates) -> None:
    server = FakeSMTPServer(ssl_context=certs.server_context)
    nobody = message()
    for name in ("To", "Cc", "Bcc"):
        del nobody[name]
    nobody["To"] = "undisclosed-recipients:;"
    async with (
        serve_fake_smtp(server) as port,
        defaults.open_pool(
            "localhost", port=port, ssl_context=certs.client_context, timeouts=TIMEOUTS
        ) as pool,
    ):
        with pytest.raises(ts.SMTPInputError, match="no recipients given"):
            await pool.send(mail=nobody)
    assert server.connections == 0


def test_bulk_message_reads_the_envelope_once() -> None:
    source = message()
    bulk = ts.BulkMessage(mail=source, key=7)
    source.replace_header("To", "zed@example.com")  # read when made, not later
    assert bulk.sender == header_sender(message())
    assert [str(r) for r in bulk.recipients] == [
        "bob@example.com",
        "Carol <carol@example.com>",
        "dave@example.com",
    ]
    assert bulk.key == 7
    explicit = ts.BulkMessage("a@example.com", ["b@example.com"], WIRE, 8)
    assert (explicit.sender, explicit.recipients, explicit.key) == (
        "a@example.com", ("b@example.com",), 8,
    )  # fmt: skip
    assert attrs.evolve(explicit, key=9).key == 9  # evolve() goes through __init__
    assert attrs.evolve(bulk, key=1).recipients == bulk.recipients
    with pytest.raises(ts.SMTPInputError, match="recipients must be given"):
        ts.BulkMessage("a@example.com", mail=WIRE)
    with pytest.raises(TypeError, match="mail="):
        ts.BulkMessage("a@example.com", ["b@example.com"])
    with pytest.raises(TypeError, match="not a single address"):
        ts.BulkMessage("a@example.com", "b@example.com", WIRE)


# ------------------------------------------------------------------ reading the headers


def compat32(text: str) -> email.message.Message:
    return email.message_from_bytes(text.encode(), policy=email.policy.compat32)


def specs(message: email.message.Message) -> list[str]:
    return [address.addr_spec for address in header_recipients(message)]


def test_recipients_from_every_address_field_and_group() -> None:
    parsed = compat32(
        "From: a@example.com\r\n"
        "To: Team: b@example.com, =?utf-8?q?J=C3=B6rg?= <c@example.com>;,\r\n"
        "  d@example.com (comment)\r\n"
        "Cc: undisclosed-recipients:;\r\n"
        "Bcc: e@example.com\r\n"
        "Bcc: f@example.com\r\n"
        "\r\nbody\r\n"
    )
    assert specs(parsed) == [f"{c}@example.com" for c in "bcdef"]
    assert [a.display_name for a in header_recipients(parsed)][1] == "Jörg"
    assert header_sender(parsed).addr_spec == "a@example.com"
    # The same text in a modern message gives the same envelope.
    modern = email.message_from_bytes(parsed.as_bytes(), policy=email.policy.default)
    assert specs(modern) == specs(parsed)


def test_international_addresses_are_kept() -> None:
    modern = email.message.EmailMessage()
    modern["From"] = "jöran@exämple.test"
    modern["To"] = "ünïcode@exämple.test"
    assert specs(modern) == ["ünïcode@exämple.test"]
    assert header_sender(modern).addr_spec == "jöran@exämple.test"


@pytest.mark.parametrize(
    ("head", "error"),
    [
        ("To: b@example.com\r\n", "no From field"),
        ("From: a@example.com, c@example.com\r\nTo: b@example.com\r\n", "names 2 mailboxes"),
        ("From: a@example.com\r\n", "no recipients given"),
        ("From: a@example.com\r\nTo: b@example.com, <<<\r\n", "cannot read the addresses"),
        ("From: a@example.com\r\nTo: bob\r\n", "cannot read the addresses"),
        (
            "Resent-Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n"
            "Resent-Date: Mon, 30 Nov 2026 11:00:00 +0000\r\n"
            "From: a@example.com\r\nTo: b@example.com\r\n",
            "several Resent- blocks",
        ),
        (
            "Resent-Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n"
            "From: a@example.com\r\nTo: b@example.com\r\n",
            "none in its Resent-To, Resent-Cc, Resent-Bcc fields",
        ),
    ],
)
def test_unusable_headers_raise_input_errors(head: str, error: str) -> None:
    for policy in (email.policy.compat32, email.policy.default):
        parsed = email.message_from_bytes(f"{head}\r\nbody\r\n".encode(), policy=policy)
        with pytest.raises(ts.SMTPInputError, match=error) as info:
            header_recipients(parsed)
            header_sender(parsed)
        assert info.value.outcome is ts.Outcome.NOT_SENT


def test_message_bytes_removes_only_blind_fields() -> None:
    original = message()
    original["Resent-Bcc"] = "x@example.com"
    original["X-Bcc-Note"] = "kept"
    before = original.as_bytes()
    wire = message_bytes(original)
    assert b"\r\nBcc:" not in wire and b"Resent-Bcc" not in wire
    assert b"\r\nX-Bcc-Note: kept\r\n" in wire
    assert original.as_bytes() == before
    assert message_bytes(email.message.EmailMessage()) == b"\r\n"
