"""The fake server's mail dialogue (``trio_sendmail/testing/_dialogue.py`` and
``_mail.py``): MAIL, RCPT, DATA, transparency, PIPELINING and CHUNKING."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_sendmail.testing import (
    DEFAULT_EXTENSIONS,
    FakeSMTPServer,
    ReceivedMessage,
)

from .raw_client import (
    PLAIN_OK,
    Reply,
    b64,
    connected,
)

# --- MAIL, RCPT, DATA ---------------------------------------------------------------------------


async def test_simple_transaction_records_everything() -> None:
    server = FakeSMTPServer()
    async with connected(server) as client:
        await client.ehlo()
        assert (await client.cmd("MAIL FROM:<a@b.test> BODY=8BITMIME SIZE=20")) == Reply(
            250, ("2.1.0 Ok",)
        )
        assert await client.cmd("RCPT TO:<c@d.test>") == Reply(250, ("2.1.5 Ok",))
        assert (await client.cmd("RCPT TO:<Postmaster>")).code == 250
        assert await client.cmd("DATA") == Reply(354, ("End data with <CR><LF>.<CR><LF>",))
        await client.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n")
        reply = await client.reply()
        assert reply.code == 250
        assert reply.text.startswith("2.0.0 Ok: queued as ")
    assert server.messages == [
        ReceivedMessage(
            sender="a@b.test",
            recipients=("c@d.test", "Postmaster"),
            mail_options=("BODY=8BITMIME", "SIZE=20"),
            rcpt_options={"c@d.test": (), "Postmaster": ()},
            data=b"Subject: hi\r\n\r\nbody\r\n",
            raw=b"Subject: hi\r\n\r\nbody\r\n.\r\n",
            tls=False,
            authenticated_as=None,
            helo="client.example.test",
        )
    ]
    assert server.bare_line_endings == server.undeclared_8bit == 0
    assert server.pipelining_violations == 0


async def test_refusals() -> None:
    server = FakeSMTPServer(
        refuse_senders={"Spammer@Evil.test": (550, "5.7.1 go away")},
        refuse_recipients={
            "nobody@d.test": (550, "5.1.1 no such user"),
            "later@d.test": (450, "4.2.1 try\nlater"),
        },
    )
    async with connected(server) as client:
        await client.ehlo()
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 503
        assert (await client.cmd("DATA")).code == 503
        assert await client.cmd("MAIL FROM:<spammer@evil.TEST>") == Reply(550, ("5.7.1 go away",))
        assert (await client.cmd("MAIL FROM:<>")).code == 250
        assert (await client.cmd("MAIL FROM:<a@b.test>")) == Reply(
            503, ("5.5.1 Nested MAIL command",)
        )
        assert (await client.cmd("RCPT TO:<nobody@d.test>")).code == 550
        assert await client.cmd("RCPT TO:<later@d.test>") == Reply(450, ("4.2.1 try", "later"))
        assert await client.cmd("DATA") == Reply(554, ("5.5.1 No valid recipients",))
        assert (await client.cmd("RCPT TO:<c@d.test> NOTIFY=NEVER")).code == 555
        assert (await client.cmd("RCPT TO:<>")).code == 501
        assert (await client.cmd("RCPT TO: <c@d.test>")).code == 501
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 250
        assert (await client.cmd("DATA now")).code == 501
        assert (await client.cmd("DATA")).code == 354
        await client.send(b"x\r\n.\r\n")
        assert (await client.reply()).code == 250
    [message] = server.messages
    assert message.sender == ""
    assert message.recipients == ("c@d.test",)


@pytest.mark.parametrize(
    "command",
    [
        "MAIL FROM: <a@b.test>",
        "MAIL FROM:a@b.test",
        "MAIL FROM:<a@b.test",
        "MAIL TO:<a@b.test>",
        "MAIL FROM:<a@b.test>  SIZE=1",
        "MAIL FROM:<a@b.test>SIZE=1",
        "MAIL FROM:<a b@c.test>",
        "MAIL FROM:<a@>",
        "MAIL FROM:<@b.test>",
        "MAIL FROM:<a..b@c.test>",
        "MAIL FROM:<a@b.test> SIZE=x",
        "MAIL FROM:<a@b.test> SIZE=1 SIZE=2",
        "MAIL FROM:<a@b.test> BODY=9BIT",
        "MAIL FROM:<a@b.test> SMTPUTF8=yes",
        'MAIL FROM:<"a"b"@c.test>',
        'MAIL FROM:<"abc@c.test>',
        'MAIL FROM:<"a\\"@c.test>',
        "MAIL FROM:<a@-b.test>",
        "MAIL FROM:<a@[]>",
        "MAIL FROM:<@x.test,b.test:a@c.test>",
    ],
)
async def test_mail_syntax_errors(command: str) -> None:
    server = FakeSMTPServer()
    async with connected(server) as client:
        await client.ehlo()
        assert (await client.cmd(command)).code == 501
        assert (await client.cmd("MAIL FROM:<a@b.test>")).code == 250


async def test_unusual_but_valid_addresses() -> None:
    server = FakeSMTPServer()
    async with connected(server) as client:
        await client.ehlo()
        assert (await client.cmd('MAIL FROM:<"john >doe\\"x"@b.test>')).code == 250
        assert (await client.cmd("RCPT TO:<@relay.test:c@[192.0.2.1]>")).code == 250
        assert (await client.cmd("RCPT TO:<x+tag@d.test> ORCPT=rfc822;x@d.test")).code == 555
        assert (await client.cmd("DATA")).code == 354
        await client.send(b".\r\n")
        assert (await client.reply()).code == 250
    [message] = server.messages
    assert message.sender == '"john >doe\\"x"@b.test'
    assert message.recipients == ("@relay.test:c@[192.0.2.1]",)
    assert message.data == b""


async def test_rcpt_options_are_recorded_with_dsn() -> None:
    server = FakeSMTPServer(extensions=["DSN", "8BITMIME"])
    async with connected(server) as client:
        await client.ehlo()
        assert (await client.cmd("MAIL FROM:<a@b.test> RET=HDRS ENVID=x1")).code == 250
        assert (await client.cmd("RCPT TO:<c@d.test> NOTIFY=NEVER")).code == 250
        assert (await client.send_message_body(b"hi\r\n.\r\n")).code == 250
    [message] = server.messages
    assert message.mail_options == ("RET=HDRS", "ENVID=x1")
    assert message.rcpt_options == {"c@d.test": ("NOTIFY=NEVER",)}


async def test_data_reply_override() -> None:
    server = FakeSMTPServer(data_reply=(451, "4.3.0 try later"))
    async with connected(server) as client:
        await client.ehlo()
        reply = await client.send_message("a@b.test", ["c@d.test"], b"x\r\n.\r\n")
        assert reply == Reply(451, ("4.3.0 try later",))
        # The transaction is over whatever the reply.
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 503
        server.data_reply = (250, "custom ok")
        reply = await client.send_message("a@b.test", ["c@d.test"], b"y\r\n.\r\n")
        assert reply == Reply(250, ("custom ok",))
    assert [m.data for m in server.messages] == [b"y\r\n"]


async def test_size_limits() -> None:
    server = FakeSMTPServer(extensions=["ENHANCEDSTATUSCODES", "SIZE 100", "PIPELINING"])
    async with connected(server) as client:
        await client.ehlo()
        assert await client.cmd("MAIL FROM:<a@b.test> SIZE=101") == Reply(
            552, ("5.3.4 Message size exceeds fixed maximum message size",)
        )
        assert (await client.cmd("MAIL FROM:<a@b.test> SIZE=100")).code == 250
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 250
        assert (await client.cmd("DATA")).code == 354
        await client.send(b"x" * 99 + b"\r\n" + b"y" * 99 + b"\r\n.\r\n")
        assert (await client.reply()).code == 552
        # Exactly at the limit, dot-stuffing not counted.
        body = b"..".ljust(99, b"z") + b"\r\n.\r\n"
        assert (await client.send_message("a@b.test", ["c@d.test"], body)).code == 250
    assert len(server.messages) == 1
    assert len(server.messages[0].data) == 100


async def test_smtputf8() -> None:
    server = FakeSMTPServer()
    async with connected(server) as client:
        await client.ehlo()
        assert await client.cmd("MAIL FROM:<jörg@b.test>") == Reply(
            553, ("5.6.7 Non-ASCII address requires SMTPUTF8",)
        )
        assert (await client.cmd("MAIL FROM:<jörg@bücher.test> SMTPUTF8")).code == 250
        assert (await client.cmd("RCPT TO:<用户@例子.test>")).code == 250
        assert (await client.cmd(b"RCPT TO:<\xff@b.test>")).code == 500
        assert (await client.cmd("DATA")).code == 354
        await client.send("Subject: grüße\r\n.\r\n".encode())
        assert (await client.reply()).code == 250
    assert server.messages[0].sender == "jörg@bücher.test"
    assert server.messages[0].recipients == ("用户@例子.test",)
    assert server.undeclared_8bit == 1

    no_utf8 = FakeSMTPServer(extensions=["8BITMIME"])
    async with connected(no_utf8) as client:
        await client.ehlo()
        assert (await client.cmd("MAIL FROM:<jörg@b.test> SMTPUTF8")).code == 555
        assert (await client.cmd("MAIL FROM:<a@b.test>")).code == 250
        assert (await client.cmd("RCPT TO:<jörg@b.test>")).code == 553
        assert (await client.cmd("EHLO bücher.test")).code == 500


async def test_undeclared_8bit_counted_declared_not() -> None:
    server = FakeSMTPServer()
    async with connected(server) as client:
        await client.ehlo()
        assert (await client.send_message("a@b.test", ["c@d.test"], b"\xe9\r\n.\r\n")).code == 250
        assert (await client.cmd("MAIL FROM:<a@b.test> BODY=8BITMIME")).code == 250
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 250
        assert (await client.send_message_body(b"\xe9\r\n.\r\n")).code == 250
    assert server.undeclared_8bit == 1
    assert [m.data for m in server.messages] == [b"\xe9\r\n", b"\xe9\r\n"]


# --- DATA transparency and line endings ---------------------------------------------------------


async def test_dot_unstuffing() -> None:
    server = FakeSMTPServer()
    raw = b"..hidden\r\n.\r\n"
    async with connected(server) as client:
        await client.ehlo()
        assert (await client.send_message("a@b.test", ["c@d.test"], raw)).code == 250
        body = b"a\r\n..\r\n...x\r\nb.\r\n.c\r\n.\r\n"
        assert (await client.send_message("a@b.test", ["c@d.test"], body)).code == 250
    first, second = server.messages
    assert first.raw == b"..hidden\r\n.\r\n"
    assert first.data == b".hidden\r\n"
    assert second.raw == body
    assert second.data == b"a\r\n.\r\n..x\r\nb.\r\nc\r\n"


async def test_bare_line_endings_are_counted_and_never_terminate() -> None:
    server = FakeSMTPServer()
    smuggled = b"a\n.\nMAIL FROM:<x@y.test>\r\nb\r.\r\nc\n.\r\n..\n\r\n.\r\n"
    async with connected(server) as client:
        await client.ehlo()
        reply = await client.send_message("a@b.test", ["c@d.test"], smuggled)
        assert reply.code == 250
    [message] = server.messages
    assert message.raw == smuggled
    assert message.data == smuggled[:-3].replace(b"\r\n..\n", b"\r\n.\n")
    # a\n .\n  b\r  c\n  ..\n  -> 2 + 1 + 1 + 1 bare endings
    assert server.bare_line_endings == 5
    assert server.pipelining_violations == 0


async def test_command_line_errors() -> None:
    server = FakeSMTPServer(max_line_length=40)
    async with connected(server) as client:
        await client.ehlo()
        await client.send(b"NOOP\n")
        assert await client.reply() == Reply(500, ("5.5.2 Bare CR or LF in command line",))
        await client.send(b"NO\rOP\r\n")
        assert (await client.reply()).code == 500
        assert await client.cmd("NOOP " + "x" * 40) == Reply(500, ("5.5.2 Line too long",))
        # A long line that arrives over several reads is skipped as a whole.
        await client.send(b"NOOP " + b"y" * 100)
        await trio.testing.wait_all_tasks_blocked()
        await client.send(b"y" * 100 + b"\r\n")
        assert (await client.reply()).code == 500
        assert (await client.cmd("NOOP " + "x" * 33)).code == 250  # 40 octets with CRLF
        assert (await client.cmd(b"\xc3\x28")).code == 500
        assert (await client.cmd("NO\tOP")).code == 500
        assert (await client.cmd("")).code == 500
        assert await client.cmd("FROB") == Reply(500, ("5.5.2 Command not recognized",))
        assert (await client.cmd("BDAT 3 LAST")).code == 500  # CHUNKING not offered
        assert (await client.cmd("NOOP")).code == 250
    assert ("C", b"NOOP\n") in server.transcript
    assert ("C", b"<line too long>") in server.transcript


async def test_rset_noop_vrfy_help_expn_quit() -> None:
    server = FakeSMTPServer()
    async with connected(server) as client:
        await client.ehlo()
        assert (await client.cmd("MAIL FROM:<a@b.test>")).code == 250
        assert await client.cmd("RSET") == Reply(250, ("2.0.0 Ok",))
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 503
        assert (await client.cmd("MAIL FROM:<a@b.test>")).code == 250
        assert (await client.ehlo()).code == 250  # EHLO resets the transaction too
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 503
        assert (await client.cmd("RSET x")).code == 501
        assert (await client.cmd("noop hello")) == Reply(250, ("2.0.0 Ok",))
        assert (await client.cmd("VRFY bob")).code == 252
        assert (await client.cmd("VRFY")).code == 501
        assert (await client.cmd("EXPN list")).code == 502
        assert (await client.cmd("HELP")).code == 214
        assert (await client.cmd("QUIT now")).code == 501
        assert (await client.cmd("quit")) == Reply(221, ("2.0.0 Bye",))
        await client.expect_eof()
    assert server.messages == []


async def test_no_enhanced_status_codes_unless_advertised() -> None:
    server = FakeSMTPServer(extensions=["PIPELINING"])
    async with connected(server) as client:
        await client.ehlo()
        assert await client.cmd("MAIL FROM:<a@b.test>") == Reply(250, ("Ok",))
        assert await client.cmd("RCPT TO:<c@d.test>") == Reply(250, ("Ok",))
        assert (await client.cmd("DATA")).code == 354
        await client.send(b".\r\n")
        assert (await client.reply()).text.startswith("Ok: queued as ")
        assert await client.cmd("QUIT") == Reply(221, ("Bye",))


# --- PIPELINING and odd segmentation ------------------------------------------------------------


async def test_pipelined_commands_in_one_write() -> None:
    server = FakeSMTPServer()
    async with connected(server) as client:
        await client.ehlo()
        await client.send(
            b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nRCPT TO:<e@f.test>\r\nDATA\r\n"
        )
        assert [(await client.reply()).code for _ in range(4)] == [250, 250, 250, 354]
        # Message content may be followed by the next group.
        await client.send(b"one\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<g@h.test>\r\nDATA\r\n")
        assert [(await client.reply()).code for _ in range(4)] == [250, 250, 250, 354]
        await client.send(b"two\r\n.\r\nQUIT\r\n")
        assert [(await client.reply()).code for _ in range(2)] == [250, 221]
        await client.expect_eof()
    assert [m.recipients for m in server.messages] == [("c@d.test", "e@f.test"), ("g@h.test",)]
    assert server.pipelining_violations == 0


@pytest.mark.parametrize(
    ("extensions", "group", "violations"),
    [
        (["PIPELINING"], b"DATA\r\nhello\r\n.\r\n", 1),  # data before the 354
        (["PIPELINING"], b"NOOP\r\nNOOP\r\n", 1),
        (["PIPELINING"], b"RSET\r\nRSET\r\n", 0),
        ([], b"RSET\r\nRSET\r\n", 1),
        (["PIPELINING"], b"EHLO a\r\nRSET\r\n", 1),
    ],
)
async def test_pipelining_violations(extensions: list[str], group: bytes, violations: int) -> None:
    server = FakeSMTPServer(extensions=extensions)
    async with connected(server) as client:
        await client.ehlo()
        await client.send(group)
        await client.cmd("NOOP")
    assert server.pipelining_violations == violations


async def test_auth_plain_pipelined_with_mail_is_allowed_but_login_is_not(
    auth_server: FakeSMTPServer,
) -> None:
    async with connected(auth_server) as client:
        await client.ehlo()
        await client.send(f"AUTH PLAIN {PLAIN_OK}\r\nMAIL FROM:<a@b.test>\r\n".encode())
        assert [(await client.reply()).code for _ in range(2)] == [235, 250]
    assert auth_server.pipelining_violations == 0
    async with connected(auth_server) as client:
        await client.ehlo()
        await client.send(f"AUTH LOGIN\r\n{b64('alice')}\r\n".encode())
        assert (await client.reply()).code == 334
        assert (await client.reply()).code == 334
    assert auth_server.pipelining_violations == 1


async def test_one_byte_at_a_time() -> None:
    server = FakeSMTPServer()
    session = (
        b"EHLO slow.example.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"
        b"..dot\r\nline\r\n.\r\nQUIT\r\n"
    )
    async with connected(server) as client:
        for index in range(len(session)):
            await client.send(session[index : index + 1])
            await trio.testing.wait_all_tasks_blocked()
        codes = [(await client.reply()).code for _ in range(6)]
        assert codes == [250, 250, 250, 354, 250, 221]
        await client.expect_eof()
    [message] = server.messages
    assert message.data == b".dot\r\nline\r\n"
    assert message.helo == "slow.example.test"
    assert server.bare_line_endings == 0


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(
        st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
    ),
    cuts=st.lists(st.integers(min_value=1, max_value=50), max_size=20),
)
async def test_dot_stuffed_bodies_round_trip_whatever_the_segmentation(
    lines: list[bytes], cuts: list[int]
) -> None:
    server = FakeSMTPServer()
    message = b"".join(line + b"\r\n" for line in lines)
    stuffed = b"".join((b"." if line.startswith(b".") else b"") + line + b"\r\n" for line in lines)
    wire = stuffed + b".\r\nQUIT\r\n"
    async with connected(server) as client:
        await client.ehlo()
        assert (await client.cmd("MAIL FROM:<a@b.test> BODY=8BITMIME")).code == 250
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 250
        assert (await client.cmd("DATA")).code == 354
        position = 0
        for cut in [*cuts, len(wire)]:
            await client.send(wire[position : position + cut])
            position += cut
        assert (await client.reply()).code == 250
        assert (await client.reply()).code == 221
    [received] = server.messages
    assert received.data == message
    assert received.raw == stuffed + b".\r\n"
    assert server.bare_line_endings == server.undeclared_8bit == 0


async def test_long_data_lines_are_kept_whole() -> None:
    server = FakeSMTPServer()
    body = b"." + b"x" * 200_000 + b"\r\n" + b"y" * 70_000 + b"\r" + b"\n.\r\n"
    async with connected(server) as client:
        await client.ehlo()
        reply = await client.send_message("a@b.test", ["c@d.test"], body)
        assert reply.code == 250
    assert server.messages[0].data == body[1:-3]
    assert server.bare_line_endings == 0


# --- CHUNKING -----------------------------------------------------------------------------------


async def test_bdat() -> None:
    server = FakeSMTPServer(extensions=[*DEFAULT_EXTENSIONS, "CHUNKING", "BINARYMIME"])
    async with connected(server) as client:
        await client.ehlo()
        await client.send(b"BDAT 3\r\nabc")  # no transaction: refused, chunk still consumed
        assert (await client.reply()).code == 503
        assert (await client.cmd("NOOP")).code == 250
        assert (await client.cmd("MAIL FROM:<a@b.test> BODY=BINARYMIME")).code == 250
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 250
        await client.send(b"BDAT 5\r\nab\r\nc")
        assert await client.reply() == Reply(250, ("2.0.0 5 octets received",))
        await client.send(b"BDAT 5 LAST\r\n\n.\n\r\n")
        assert (await client.reply()).text.startswith("2.0.0 Ok: queued as")
        assert (await client.cmd("BDAT x")).code == 501
    [message] = server.messages
    assert message.data == message.raw == b"ab\r\nc\n.\n\r\n"
    assert server.bare_line_endings == 0  # BINARYMIME: bare LFs are fine
    assert server.transcript.count(("C", b"BDAT 5")) == 1


async def test_bdat_size_limit_bare_line_endings_and_mixing() -> None:
    server = FakeSMTPServer(extensions=["PIPELINING", "CHUNKING", "SIZE 10"])
    async with connected(server) as client:
        await client.ehlo()
        assert (await client.cmd("MAIL FROM:<a@b.test> BODY=BINARYMIME")).code == 555
        assert (await client.cmd("MAIL FROM:<a@b.test>")).code == 250
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 250
        await client.send(b"BDAT 6\r\na\nbcdeBDAT 6 LAST\r\nfghijk")
        assert (await client.reply()).code == 250
        assert await client.reply() == Reply(
            552, ("Message size exceeds fixed maximum message size",)
        )
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 503  # transaction aborted
        assert (await client.cmd("MAIL FROM:<a@b.test>")).code == 250
        assert (await client.cmd("RCPT TO:<c@d.test>")).code == 250
        assert (await client.cmd("BDAT 1 FOO")).code == 501
        await client.send(b"BDAT 3\r\na\nb")
        assert (await client.reply()).code == 250
        assert await client.cmd("DATA") == Reply(503, ("DATA after BDAT",))
        await client.send(b"BDAT 0 LAST\r\n")
        assert (await client.reply()).code == 250
    [message] = server.messages
    assert message.data == b"a\nb"
    assert server.bare_line_endings == 2  # one in the refused message, one in the accepted one
    assert server.pipelining_violations == 0
