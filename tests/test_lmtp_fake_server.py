"""The fake server's LMTP mode (RFC 2033), driven by a raw client (no trio_sendmail
client code): LHLO instead of EHLO, 503 for DATA without a recipient, one reply per
accepted recipient after the end of data (DATA and BDAT), in one write, and a
message recorded with the recipients answered 2xx only."""

from __future__ import annotations

import pytest

from trio_sendmail.testing import FakeSMTPServer

from .testing.raw_client import connected

BODY = b"Subject: x\r\n\r\nhello\r\n"
FULL = (552, "5.2.2 <b@example.test> Mailbox is full")


def lmtp(**kwargs: object) -> FakeSMTPServer:
    return FakeSMTPServer(
        lmtp=True,
        extensions=("PIPELINING", "ENHANCEDSTATUSCODES", "CHUNKING", "SIZE 1000"),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_greeting_and_lhlo() -> None:
    server = lmtp()
    async with connected(server, greeting=None) as client:
        greeting = await client.reply()
        assert greeting.code == 220 and " LMTP " in greeting.text
        for verb in ("EHLO", "HELO"):
            reply = await client.cmd(f"{verb} client.example.test")
            assert (reply.code, reply.text) == (500, "5.5.1 This is an LMTP server: use LHLO")
        assert (await client.cmd("MAIL FROM:<a@example.test>")).code == 503  # no LHLO yet
        reply = await client.cmd("LHLO client.example.test")
        assert reply.code == 250 and "PIPELINING" in reply.lines
        assert (await client.cmd("QUIT")).code == 221


async def test_lhlo_is_unknown_to_an_smtp_server() -> None:
    async with connected(FakeSMTPServer()) as client:
        assert (await client.cmd("LHLO client.example.test")).code == 500


@pytest.mark.parametrize("bdat", [False, True], ids=["data", "bdat"])
async def test_one_reply_per_recipient_in_one_write(bdat: bool) -> None:
    server = lmtp(
        lmtp_replies={"b@example.test": FULL}, refuse_recipients={"x@example.test": (550, "no")}
    )
    async with connected(server) as client:
        await client.cmd("LHLO client.example.test")
        assert (await client.cmd("MAIL FROM:<s@example.test>")).code == 250
        for rcpt, code in (("a@", 250), ("x@", 550), ("b@", 250), ("c@", 250)):
            assert (await client.cmd(f"RCPT TO:<{rcpt}example.test>")).code == code
        if bdat:
            await client.send(b"BDAT %d LAST\r\n" % len(BODY) + BODY)
        else:
            assert (await client.cmd("DATA")).code == 354
            await client.send(BODY + b".\r\n")
        replies = [await client.reply() for _ in range(3)]
        assert not client.buffer  # the three came in one write, nothing more
        assert (await client.cmd("NOOP")).code == 250
    assert [r.code for r in replies] == [250, 552, 250]
    assert replies[0].text.startswith("2.0.0 <a@example.test> Ok: delivered as FAKE")
    assert replies[1].text == FULL[1]
    assert replies[2].text.startswith("2.0.0 <c@example.test> ")
    [message] = server.messages
    assert message.recipients == ("a@example.test", "c@example.test")
    assert set(message.rcpt_options) == {"a@example.test", "c@example.test"}
    assert message.data == BODY


async def test_data_without_recipient_is_503_and_nothing_delivered_is_not_recorded() -> None:
    server = lmtp(lmtp_replies={"a@example.test": FULL})
    async with connected(server) as client:
        await client.cmd("LHLO client.example.test")
        assert (await client.cmd("MAIL FROM:<s@example.test>")).code == 250
        assert (await client.cmd("DATA")).code == 503  # RFC 2033 §4.2
        assert (await client.cmd("RCPT TO:<a@example.test>")).code == 250
        assert (await client.cmd("DATA")).code == 354
        await client.send(BODY + b".\r\n")
        assert (await client.reply()).code == 552
    assert server.messages == []


async def test_over_the_size_limit_every_recipient_is_refused() -> None:
    server = lmtp()
    async with connected(server) as client:
        await client.cmd("LHLO client.example.test")
        await client.cmd("MAIL FROM:<s@example.test>")
        await client.cmd("RCPT TO:<a@example.test>")
        await client.cmd("RCPT TO:<b@example.test>")
        assert (await client.cmd("DATA")).code == 354
        await client.send(b"x" * 600 + b"\r\n" + b"y" * 600 + b"\r\n.\r\n")
        replies = [await client.reply() for _ in range(2)]
    assert [(r.code, r.text[:5]) for r in replies] == [(552, "5.3.4")] * 2
    assert server.messages == []


def test_lmtp_replies_are_checked() -> None:
    with pytest.raises(ValueError, match="lmtp_replies"):
        lmtp(lmtp_replies={"a@example.test": (99, "no")})
