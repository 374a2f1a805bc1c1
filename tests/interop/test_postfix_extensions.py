"""ESMTP extensions against the real Postfix (started by tests/interop/postfix.sh).

The same features as tests/test_plan.py, this time against Postfix
3.7, which offers PIPELINING, SIZE, ENHANCEDSTATUSCODES, 8BITMIME, DSN,
SMTPUTF8 and CHUNKING, but neither BINARYMIME nor REQUIRETLS:

1. round trips per message for PIPELINING x CHUNKING (``statistics().round_trips``);
2. CHUNKING: BDAT for small, multi-chunk, streamed and empty messages (no
   dot-stuffing on the wire), refusals after ``BDAT … LAST``, ``chunking=False``;
3. DSN: ``RET``/``ENVID``/``NOTIFY``/``ORCPT`` and the success report Postfix
   delivers to the sender's Maildir;
4. ENHANCEDSTATUSCODES on every refusal and on the final reply;
5. SMTPUTF8 and 8BITMIME over BDAT, pipelined or not;
6. BINARYMIME and 7. REQUIRETLS: refused by the library before anything is sent.

Every delivered message is compared byte for byte with what Postfix must store
(see README.md, "What Postfix does to the message"), and counted, so that a
lost or duplicated message fails the test.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import re
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import trio_sendmail as ts

from .. import defaults
from ..postfix_plugin import PostfixEnv
from .test_postfix import (
    BLOB,
    DELIVERY_TIMEOUT,
    POLL_INTERVAL,
    SETTLE,
    TIMEOUTS,
    TRICKY_HEAD,
    TRICKY_TAIL,
    Chunk,
    assert_same_bytes,
    awkward_split,
    commands_sent,
    id_marker,
    mailbox_files,
    make_message,
    new_message_id,
    read_delivered,
    send_streamed,
    stored_form,
    unique,
    wait_for_delivery,
    wait_for_one,
)

pytestmark = pytest.mark.postfix

#: ``send_size`` by default: the size of every BDAT chunk but the last.
SEND_SIZE = 64 * 1024

PIPELINING = pytest.mark.parametrize(
    "pipelining", [True, False], ids=["pipelining", "no-pipelining"]
)


# ---------------------------------------------------------------- helpers --


@asynccontextmanager
async def extension_session(
    env: PostfixEnv,
    context: ssl.SSLContext,
    *,
    pipelining: bool = True,
    chunking: bool = True,
) -> AsyncIterator[ts.Session]:
    """An implicit-TLS session authenticated as the ASCII user."""
    async with defaults.open_session(
        env.tls_hostname,
        port=env.smtps_port,
        tls=ts.TLSMode.IMPLICIT,
        ssl_context=context,
        authentication=ts.Authentication(env.user, env.password),
        timeouts=TIMEOUTS,
        pipelining=pipelining,
        chunking=chunking,
    ) as session:
        assert session.tls and session.authenticated
        caps = session.capabilities
        assert caps.pipelining and caps.chunking and caps.dsn
        assert caps.smtputf8 and caps.eightbitmime and caps.enhancedstatuscodes
        yield session


def wire_size(message: bytes) -> int:
    """The size of *message* on the wire over BDAT: every line break one CRLF,
    a final one added when missing, no dot-stuffing (computed from
    ``stored_form``, independently of the library's encoder)."""
    stored = stored_form(message)
    return len(stored) + stored.count(b"\n")


def bdat_sizes(commands: list[str]) -> list[tuple[int, bool]]:
    """(size, last) of every BDAT command in a transcript."""
    sizes = []
    for line in commands:
        match = re.fullmatch(r"BDAT (\d+)( LAST)?", line)
        if match is not None:
            sizes.append((int(match[1]), match[2] is not None))
    assert len(sizes) == sum(line.startswith("BDAT") for line in commands), commands
    return sizes


def expected_chunks(size: int) -> list[tuple[int, bool]]:
    """The BDAT commands for *size* bytes: full chunks of SEND_SIZE, then the
    rest with LAST. A message that fits one chunk goes as one ``BDAT n LAST``;
    a longer one whose size is a multiple of SEND_SIZE ends with ``BDAT 0 LAST``."""
    if size <= SEND_SIZE:
        return [(size, True)]
    return [(SEND_SIZE, False)] * (size // SEND_SIZE) + [(size % SEND_SIZE, True)]


def mail_commands(commands: list[str]) -> list[str]:
    return [line for line in commands if line.startswith("MAIL FROM:")]


def mail_params(line: str) -> set[str]:
    return set(line.split(" ")[2:])


def dotted_lines(count: int, *, start: int = 0) -> bytes:
    """CRLF lines, one in three starting with a dot (one in nine with two), with
    8-bit text, for multi-chunk messages."""
    text = "Grüße, jöran; the quick brown fox. ".encode()
    lines = []
    for i in range(start, start + count):
        dots = b".." if i % 9 == 0 else b"." if i % 3 == 0 else b""
        lines.append(dots + b"%07d " % i + text[: i % len(text)] + b"\r\n")
    return b"".join(lines)


def big_message(env: PostfixEnv, rcpt: str, size: int, subject: str) -> bytes:
    """A message of about *size* bytes whose wire size is not a multiple of SEND_SIZE."""
    head = make_message(
        sender=env.user, to=rcpt, message_id=new_message_id(env), subject=subject, body=b""
    )
    body = bytearray(TRICKY_HEAD + b"x\r\n")
    start = 0
    while len(head) + len(body) < size:
        body += dotted_lines(1000, start=start)
        start += 1000
    message = head + bytes(body) + TRICKY_TAIL
    if wire_size(message) % SEND_SIZE == 0:
        message += b"!"
    return message


def small_message(env: PostfixEnv, rcpt: str, subject: str, *, extra_header: str = "") -> bytes:
    """A tricky message (dots, bare CR and LF, 8-bit, no final newline) that fits one chunk."""
    message = make_message(
        sender=env.user,
        to=rcpt,
        message_id=new_message_id(env),
        subject=subject,
        body=TRICKY_HEAD + BLOB[:3000] + TRICKY_TAIL,
    )
    if extra_header:
        message = extra_header.encode() + b"\r\n" + message
    assert wire_size(message) < SEND_SIZE
    return message


def message_id_of(message: bytes) -> str:
    match = re.search(rb"(?:^|\n)Message-ID: (<[^>\r\n]+>)\r\n", message)
    assert match is not None
    return match[1].decode()


def message_ids(paths: list[Path]) -> list[str]:
    ids = []
    for path in paths:
        match = re.search(rb"\nMessage-ID: (<[^>\n]+>)\n", path.read_bytes())
        assert match is not None, path
        ids.append(match[1].decode())
    return ids


async def assert_delivered_once(
    env: PostfixEnv, expected: dict[str, dict[str, bytes]], *, shared: Iterable[str] = ()
) -> None:
    """For each local part of *expected*, every one of its messages (Message-ID
    → bytes sent) arrived exactly once in its Maildir, byte for byte, and
    nothing else did (in a *shared* mailbox, only these Message-IDs are counted)."""
    for local, messages in expected.items():
        for message_id, message in messages.items():
            paths = await wait_for_delivery(env, local, message_id=message_id)
            delivered = read_delivered(paths[0])
            assert b"\r" not in delivered.message
            assert_same_bytes(delivered.message, stored_form(message))
    await trio.sleep(SETTLE)  # once for all: time for a duplicate to show up
    for local, messages in expected.items():
        if local in shared:
            for message_id in messages:
                assert len(mailbox_files(env, local, id_marker(message_id))) == 1
        else:
            assert sorted(message_ids(mailbox_files(env, local))) == sorted(messages)


# ------------------------------------------- 1. round trips per message --

#: (pipelining, chunking) → round trips of one message to n recipients.
ROUND_TRIPS: dict[tuple[bool, bool], Callable[[int], int]] = {
    (False, False): lambda n: 1 + n + 1 + 1,  # MAIL, each RCPT, DATA, the final dot
    (True, False): lambda n: 2,  # MAIL+RCPT…+DATA, then the body and the dot
    (False, True): lambda n: 1 + n + 1,  # MAIL, each RCPT, BDAT n LAST with the body
    (True, True): lambda n: 1,  # MAIL+RCPT…+BDAT n LAST+body in one write
}


@pytest.mark.parametrize("recipients", [1, 3])
@pytest.mark.parametrize("chunking", [True, False], ids=["chunking", "no-chunking"])
@PIPELINING
async def test_round_trips_per_message(
    postfix: PostfixEnv,
    tls_context: ssl.SSLContext,
    transcript: pytest.LogCaptureFixture,
    pipelining: bool,
    chunking: bool,
    recipients: int,
) -> None:
    count = 4
    locals_ = [unique("rtt") for _ in range(recipients)]
    rcpts = [postfix.address(local) for local in locals_]
    sent: dict[str, bytes] = {}
    per_message = []
    async with extension_session(
        postfix, tls_context, pipelining=pipelining, chunking=chunking
    ) as session:
        start = session.statistics().round_trips
        for i in range(count):
            message = small_message(postfix, rcpts[0], f"round trips {i}")
            before = session.statistics().round_trips
            result = await session.send(postfix.user, rcpts, message)
            per_message.append(session.statistics().round_trips - before)
            assert result.reply.code == 250
            assert str(result.reply.enhanced_status) == "2.0.0"
            assert result.accepted == tuple(ts.ForwardPath.parse(r) for r in rcpts)
            sent[message_id_of(message)] = message
        total = session.statistics().round_trips - start
        assert session.statistics().messages_sent == count

    expected = ROUND_TRIPS[pipelining, chunking](recipients)
    assert per_message == [expected] * count
    assert total == expected * count

    commands = commands_sent(transcript)
    if chunking:
        assert "DATA" not in commands
        assert bdat_sizes(commands) == [(wire_size(m), True) for m in sent.values()]
    else:
        assert commands.count("DATA") == count
        assert bdat_sizes(commands) == []
    await assert_delivered_once(postfix, dict.fromkeys(locals_, sent))


# ------------------------------------------------------ 2. CHUNKING/BDAT --

MODES = pytest.mark.parametrize(
    ("pipelining", "chunking"),
    [(True, True), (False, True), (True, False)],
    ids=["bdat-pipelining", "bdat-no-pipelining", "data"],
)


def exact_multiple_stream(env: PostfixEnv, rcpt: str, chunks: int) -> bytes:
    """A CRLF-only message of exactly *chunks* x SEND_SIZE bytes: the stream
    must end with ``BDAT 0 LAST``."""
    head = make_message(
        sender=env.user, to=rcpt, message_id=new_message_id(env), subject="exact", body=b""
    )
    body = bytearray(head)
    start = 0
    while len(body) < chunks * SEND_SIZE:
        body += dotted_lines(100, start=start)
        start += 100
    del body[chunks * SEND_SIZE - 2 :]
    body += b"\r\n"
    message = bytes(body)
    assert len(message) == chunks * SEND_SIZE and wire_size(message) == len(message)
    return message


def odd_chunks(message: bytes, size: int = 10_007) -> list[Chunk]:
    return [message[i : i + size] for i in range(0, len(message), size)]


@pytest.mark.parametrize(
    "kind",
    [
        "small",
        "5MB-bytes",
        "channel-awkward-cuts",
        "channel-exact-multiple",
        "empty",
        "empty-channel",
        "headers-only",
    ],
)
@MODES
async def test_chunking_messages(
    postfix: PostfixEnv,
    tls_context: ssl.SSLContext,
    transcript: pytest.LogCaptureFixture,
    pipelining: bool,
    chunking: bool,
    kind: str,
) -> None:
    local = unique("bdat")
    rcpt = postfix.address(local)
    streamed: list[Chunk] | None = None
    if kind == "small":
        message = small_message(postfix, rcpt, "small BDAT")
    elif kind == "5MB-bytes":
        message = big_message(postfix, rcpt, 5_000_000, "5 MB as bytes")
    elif kind == "channel-awkward-cuts":
        message = make_message(
            sender=postfix.user,
            to=rcpt,
            message_id=new_message_id(postfix),
            subject="streamed",
            body=TRICKY_HEAD + BLOB[:300_000] + dotted_lines(2000) + TRICKY_TAIL,
        )
        streamed = awkward_split(message)
    elif kind == "channel-exact-multiple":
        message = exact_multiple_stream(postfix, rcpt, 3)
        streamed = odd_chunks(message)
    elif kind == "empty":
        message = b""
    elif kind == "empty-channel":
        message = b""
        streamed = []
    else:
        assert kind == "headers-only"
        message = make_message(
            sender=postfix.user,
            to=rcpt,
            message_id=new_message_id(postfix),
            subject="no body",
            body=b"",
        )
    async with extension_session(
        postfix, tls_context, pipelining=pipelining, chunking=chunking
    ) as session:
        before = session.statistics()
        if streamed is None:
            result = await session.send(postfix.user, [rcpt], message)
        else:
            assert b"".join(streamed) == message
            result = await send_streamed(session, postfix.user, [rcpt], streamed, capacity=2)
        after = session.statistics()
    assert result.reply.code == 250
    assert str(result.reply.enhanced_status) == "2.0.0"
    size = wire_size(message)

    commands = commands_sent(transcript)
    [mail] = mail_commands(commands)
    params = mail_params(mail)
    if streamed is None:
        assert f"SIZE={size}" in params
        assert ("BODY=8BITMIME" in params) == (not message.isascii())
    else:
        assert "BODY=8BITMIME" in params  # a stream of unknown content
        assert not any(p.startswith("SIZE=") for p in params)
    if chunking:
        assert "DATA" not in commands
        # No dot-stuffing: the chunks add up to the CRLF form of the message.
        assert bdat_sizes(commands) == expected_chunks(size)
        if streamed is None and size <= SEND_SIZE:
            # Envelope and the whole message in one round trip when pipelined.
            assert after.round_trips - before.round_trips == (1 if pipelining else 3)
    else:
        assert "DATA" in commands
        assert bdat_sizes(commands) == []
        # Dot-stuffing: lines starting with a dot cost one more byte each.
        stuffed = stored_form(message).count(b"\n.") + stored_form(message).startswith(b".")
        assert after.bytes_sent - before.bytes_sent >= size + stuffed + 3

    delivered = await wait_for_one(postfix, local)
    assert delivered.delivered_to == rcpt
    assert b"\r" not in delivered.message
    assert_same_bytes(delivered.message, stored_form(message))
    await trio.sleep(SETTLE)
    assert len(mailbox_files(postfix, local)) == 1


REJECT = ("X-Trio-Test-Reject", 550, "5.7.1")
TEMPFAIL = ("X-Trio-Test-Tempfail", 451, "4.7.1")


@pytest.mark.parametrize(
    ("kind", "header", "code", "status"),
    [("small", *REJECT), ("small", *TEMPFAIL), ("multi-chunk", *REJECT), ("channel", *REJECT)],
    ids=["small-reject", "small-tempfail", "multi-chunk-reject", "channel-reject"],
)
@PIPELINING
async def test_bdat_message_refused_after_last_chunk(
    postfix: PostfixEnv,
    tls_context: ssl.SSLContext,
    transcript: pytest.LogCaptureFixture,
    pipelining: bool,
    kind: str,
    header: str,
    code: int,
    status: str,
) -> None:
    local = unique("bdatrefused")
    rcpt = postfix.address(local)
    if kind == "small":
        refused = small_message(postfix, rcpt, "refused", extra_header=f"{header}: yes")
    else:
        refused = f"{header}: yes\r\n".encode() + big_message(postfix, rcpt, 300_000, "refused")
    following = small_message(postfix, rcpt, "after the refusal")
    async with extension_session(postfix, tls_context, pipelining=pipelining) as session:
        with pytest.raises(ts.SMTPResponseError) as info:
            if kind == "channel":
                await send_streamed(session, postfix.user, [rcpt], odd_chunks(refused))
            else:
                await session.send(postfix.user, [rcpt], refused)
        exc = info.value
        assert exc.command == "BDAT"
        assert exc.outcome is ts.Outcome.REFUSED
        assert (exc.code, str(exc.enhanced_status)) == (code, status)
        assert exc.is_transient == (code < 500)
        flavour = ts.SMTPResponseError.Transient if code < 500 else ts.SMTPResponseError.Permanent
        assert type(exc) is flavour
        assert header in exc.reply.text
        assert session.is_usable
        result = await session.send(postfix.user, [rcpt], following)
        assert result.reply.code == 250
        stats = session.statistics()
        assert (stats.messages_sent, stats.messages_failed) == (1, 1)

    commands = commands_sent(transcript)
    size = wire_size(refused)
    # The refused message went out whole (ending in BDAT … LAST), then RSET.
    assert bdat_sizes(commands)[: len(expected_chunks(size))] == expected_chunks(size)
    assert "RSET" in commands
    assert "DATA" not in commands
    delivered = await wait_for_one(postfix, local)
    assert_same_bytes(delivered.message, stored_form(following))
    await trio.sleep(SETTLE)
    assert len(mailbox_files(postfix, local)) == 1


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
async def test_streamed_message_over_size_limit(
    postfix: PostfixEnv,
    tls_context: ssl.SSLContext,
    transcript: pytest.LogCaptureFixture,
    chunking: bool,
) -> None:
    """A stream declares no SIZE=: Postfix reads past its limit and refuses with
    552 5.3.4, at the first BDAT chunk past it ("Chunk exceeds message size
    limit": the LAST chunk never goes out) or at the final dot; the session
    goes on."""
    local = unique("bdatsize")
    rcpt = postfix.address(local)
    head = make_message(
        sender=postfix.user, to=rcpt, message_id=new_message_id(postfix), subject="too big",
        body=b"",
    )  # fmt: skip
    block = dotted_lines(20_000)

    def chunks() -> Iterator[Chunk]:
        yield head
        sent = len(head)
        while sent <= postfix.size_limit + 1_000_000:
            for i in range(0, len(block), SEND_SIZE):
                yield block[i : i + SEND_SIZE]
            sent += len(block)

    following = small_message(postfix, rcpt, "after the refusal")
    async with extension_session(postfix, tls_context, chunking=chunking) as session:
        with pytest.raises(ts.SMTPResponseError) as info:
            await send_streamed(session, postfix.user, [rcpt], chunks(), capacity=4)
        exc = info.value
        assert (exc.code, str(exc.enhanced_status)) == (552, "5.3.4")
        assert exc.enhanced_status is not None
        assert exc.enhanced_status.meaning == "Message too big for system"
        if chunking:
            assert exc.command == "BDAT"
            assert "Chunk exceeds message size limit" in exc.reply.text
            assert exc.outcome is ts.Outcome.NOT_SENT
        else:
            assert exc.command == "."
            assert exc.outcome is ts.Outcome.REFUSED
        assert session.is_usable
        await session.send(postfix.user, [rcpt], following)
    commands = commands_sent(transcript)
    assert ("DATA" in commands) != chunking
    if chunking:
        assert bdat_sizes(commands)[-1] == (wire_size(following), True)  # the next message
        assert all(not last for _, last in bdat_sizes(commands)[:-1])
        assert commands.index("RSET") < len(commands) - 3
    delivered = await wait_for_one(postfix, local)
    assert_same_bytes(delivered.message, stored_form(following))
    await trio.sleep(SETTLE)
    assert len(mailbox_files(postfix, local)) == 1


# ------------------------------------------------------------------ 3. DSN --


async def wait_for_report(env: PostfixEnv, local: str, envid: str) -> bytes:
    """The one delivery report in *local*'s Maildir naming *envid*."""
    marker = f"\nOriginal-Envelope-Id: {envid}\n".encode()
    deadline = trio.current_time() + DELIVERY_TIMEOUT
    while True:
        found = [p for p in mailbox_files(env, local) if marker in p.read_bytes()]
        assert len(found) <= 1, f"{len(found)} reports for ENVID {envid}"
        if found:
            return found[0].read_bytes()
        if trio.current_time() > deadline:
            pytest.fail(
                f"no delivery report for ENVID {envid} in {local}'s Maildir within "
                f"{DELIVERY_TIMEOUT} s (Postfix log: {env.log_file})",
                pytrace=False,
            )
        await trio.sleep(POLL_INTERVAL)


def report_parts(data: bytes) -> tuple[email.message.Message, list[str]]:
    report = email.message_from_bytes(data, policy=email.policy.compat32)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    payload = report.get_payload()
    assert isinstance(payload, list)
    parts = [part for part in payload if isinstance(part, email.message.Message)]
    assert len(parts) == len(payload)
    return report, [part.get_content_type() for part in parts]


def report_fields(data: bytes, name: str) -> list[str]:
    """The values of every *name* field in the report (status groups included)."""
    text = data.decode("utf-8")
    return [m.strip() for m in re.findall(rf"^{name}: ?(.*)$", text, re.MULTILINE)]


@pytest.mark.parametrize(
    "envid_extra", ["", "+x=y"], ids=["envid-plain", "envid-xtext"]
)  # "+" and "=" must be xtext-encoded (+2B, +3D) or Postfix refuses MAIL with 501
@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
async def test_dsn_success_report(
    postfix: PostfixEnv,
    tls_context: ssl.SSLContext,
    transcript: pytest.LogCaptureFixture,
    chunking: bool,
    envid_extra: str,
) -> None:
    envid = f"trio-{uuid.uuid4()}{envid_extra}"
    local = unique("dsn+tag")  # "+" in ORCPT is xtext too
    rcpt = postfix.address(local)
    message_id = new_message_id(postfix)
    body_marker = f"body {uuid.uuid4().hex}".encode()
    message = make_message(
        sender=postfix.user,
        to=rcpt,
        message_id=message_id,
        subject="DSN",
        body=body_marker + b"\r\n",
    )
    dsn = ts.DSN(ret="HDRS", envid=envid, notify={"SUCCESS", "FAILURE"}, orcpt=True)
    async with extension_session(postfix, tls_context, chunking=chunking) as session:
        result = await session.send(postfix.user, [rcpt], message, dsn=dsn)
    assert result.reply.code == 250

    commands = commands_sent(transcript)
    [mail] = mail_commands(commands)
    encoded_envid = envid.replace("+", "+2B").replace("=", "+3D")
    assert {"RET=HDRS", f"ENVID={encoded_envid}"} <= mail_params(mail)
    encoded_rcpt = rcpt.replace("+", "+2B")
    assert f"RCPT TO:<{rcpt}> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;{encoded_rcpt}" in commands

    delivered = await wait_for_one(postfix, local)
    assert_same_bytes(delivered.message, stored_form(message))

    sender_local = postfix.user.split("@")[0]
    data = await wait_for_report(postfix, sender_local, envid)
    report, parts = report_parts(data)
    assert report["Subject"] == "Successful Mail Delivery Report"
    assert parts == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert report_fields(data, "Original-Envelope-Id") == [envid]  # xtext decoded
    assert report_fields(data, "Original-Recipient") == [f"rfc822;{rcpt}"]
    assert report_fields(data, "Final-Recipient") == [f"rfc822; {rcpt}"]
    assert report_fields(data, "Action") == ["delivered"]
    assert report_fields(data, "Status") == ["2.0.0"]
    assert f"Message-ID: {message_id}".encode() in data  # RET=HDRS: the headers…
    assert body_marker not in data  # …and not the body


async def test_dsn_utf8_recipient_with_orcpt(
    postfix: PostfixEnv, tls_context: ssl.SSLContext, transcript: pytest.LogCaptureFixture
) -> None:
    utf8_rcpt = postfix.utf8_user  # jöran@example.test, a shared mailbox
    utf8_local = utf8_rcpt.split("@")[0]
    ascii_local = unique("dsnascii")
    ascii_rcpt = postfix.address(ascii_local)
    # xtext corner cases: "+" and "=" in a UTF-8 address, spaces in a quoted one.
    tagged_local = unique("jöran+tag=")
    tagged_rcpt = postfix.address(tagged_local)
    quoted_local = unique("dsn quoted")
    quoted_rcpt = postfix.address(f'"{quoted_local}"')
    rcpts = [utf8_rcpt, ascii_rcpt, tagged_rcpt, quoted_rcpt]
    envid = f"trio-{uuid.uuid4()}"
    message_id = new_message_id(postfix)
    message = make_message(
        sender=postfix.user, to=utf8_rcpt, message_id=message_id, subject="DSN, jöran"
    )
    dsn = ts.DSN(envid=envid, notify=["SUCCESS"], orcpt=True)
    async with extension_session(postfix, tls_context) as session:
        result = await session.send(postfix.user, rcpts, message, dsn=dsn)
    assert result.reply.code == 250
    assert result.accepted == tuple(ts.ForwardPath.parse(r) for r in rcpts)
    assert result.refused == {}

    commands = commands_sent(transcript)
    [mail] = mail_commands(commands)
    assert "SMTPUTF8" in mail_params(mail)
    assert f"RCPT TO:<{utf8_rcpt}> NOTIFY=SUCCESS ORCPT=utf-8;j\\x{{F6}}ran@example.test" in (
        commands
    )
    assert f"RCPT TO:<{ascii_rcpt}> NOTIFY=SUCCESS ORCPT=rfc822;{ascii_rcpt}" in commands
    tagged_xtext = tagged_local.replace("ö", "\\x{F6}").replace("+", "\\x{2B}")
    tagged_xtext = tagged_xtext.replace("=", "\\x{3D}")
    assert (
        f"RCPT TO:<{tagged_rcpt}> NOTIFY=SUCCESS ORCPT=utf-8;{tagged_xtext}@{postfix.domain}"
        in commands
    )
    quoted_xtext = quoted_rcpt.replace(" ", "+20")
    assert f"RCPT TO:<{quoted_rcpt}> NOTIFY=SUCCESS ORCPT=rfc822;{quoted_xtext}" in commands

    locals_ = [utf8_local, ascii_local, tagged_local, quoted_local]
    await assert_delivered_once(
        postfix, {local: {message_id: message} for local in locals_}, shared=[utf8_local]
    )
    data = await wait_for_report(postfix, postfix.user.split("@")[0], envid)
    _, parts = report_parts(data)
    # SMTPUTF8 mail gets an RFC 6533 report, which carries UTF-8 as is.
    assert parts == ["text/plain", "message/global-delivery-status", "message/global-headers"]
    # Postfix decoded both xtext forms: the addresses are as given.
    assert sorted(report_fields(data, "Original-Recipient")) == sorted(
        [f"utf-8;{utf8_rcpt}", f"rfc822;{ascii_rcpt}", f"utf-8;{tagged_rcpt}",
         f"rfc822;{quoted_rcpt}"]
    )  # fmt: skip
    assert report_fields(data, "Action") == ["delivered"] * 4


# -------------------------------------------------- 4. ENHANCEDSTATUSCODES --


def assert_status(reply: ts.Reply, code: int, status: str, meaning: str) -> None:
    assert reply.code == code, reply
    assert reply.enhanced_status is not None, reply
    assert str(reply.enhanced_status) == status
    assert reply.enhanced_status.klass == code // 100
    assert reply.enhanced_status.meaning == meaning
    assert (
        reply.enhanced_status.class_meaning
        == {
            2: "Success",
            4: "Persistent transient failure",
            5: "Permanent failure",
        }[code // 100]
    )
    assert str(reply).startswith(f"{code} {status} ")
    assert not reply.text.startswith(status)  # split off the text


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
@PIPELINING
async def test_enhanced_status_codes(
    postfix: PostfixEnv,
    tls_context: ssl.SSLContext,
    transcript: pytest.LogCaptureFixture,
    pipelining: bool,
    chunking: bool,
) -> None:
    fp = ts.ForwardPath.parse
    local = unique("esc")
    good = postfix.address(local)
    rejected = postfix.address(unique("reject"))
    tempfailed = postfix.address(unique("tempfail"))
    elsewhere = f"{unique('nowhere')}@example.org"
    # Lines that are SMTP commands: had Postfix not swallowed the data of a
    # pipelined BDAT after a refused MAIL or RCPT, the replies would be out of step.
    smuggled = b"RSET\r\nMAIL FROM:<x@example.test>\r\nRCPT TO:<y@example.test>\r\nDATA\r\n"

    def msg(subject: str) -> bytes:
        return make_message(
            sender=postfix.user, to=good, message_id=new_message_id(postfix),
            subject=subject, body=smuggled,
        )  # fmt: skip

    sent = {}
    async with extension_session(
        postfix, tls_context, pipelining=pipelining, chunking=chunking
    ) as session:
        # Refused recipients among accepted ones.
        message = msg("mixed")
        result = await session.send(postfix.user, [rejected, good, tempfailed, elsewhere], message)
        sent[message_id_of(message)] = message
        assert result.accepted == (fp(good),)
        assert_status(result.reply, 250, "2.0.0", "Other undefined status")
        assert_status(
            result.refused[fp(rejected)], 550, "5.1.1", "Bad destination mailbox address"
        )
        assert_status(
            result.refused[fp(tempfailed)], 450, "4.2.0", "Other or undefined mailbox status"
        )
        assert_status(
            result.refused[fp(elsewhere)], 550, "5.7.1", "Delivery not authorized, message refused"
        )

        # Every recipient refused.
        with pytest.raises(ts.SMTPRecipientsRefused) as all_refused:
            await session.send(postfix.user, [rejected, tempfailed], msg("all refused"))
        assert set(all_refused.value.refused) == {fp(rejected), fp(tempfailed)}
        assert_status(
            all_refused.value.refused[fp(rejected)],
            550,
            "5.1.1",
            "Bad destination mailbox address",
        )
        assert session.is_usable

        # Sender refused, permanently and temporarily.
        for prefix, code, status, meaning in [
            ("reject", 550, "5.7.1", "Delivery not authorized, message refused"),
            ("tempfail", 451, "4.3.0", "Other or undefined mail system status"),
        ]:
            with pytest.raises(ts.SMTPSenderRefused) as sender_refused:
                await session.send(postfix.address(unique(prefix)), [good], msg(prefix))
            exc = sender_refused.value
            assert exc.command == "MAIL"
            assert exc.outcome is ts.Outcome.NOT_SENT
            assert exc.enhanced_status == exc.reply.enhanced_status
            assert_status(exc.reply, code, status, meaning)
            assert session.is_usable

        # The session is in step: one more message goes through.
        message = msg("last")
        result = await session.send(postfix.user, [good], message)
        sent[message_id_of(message)] = message
        assert_status(result.reply, 250, "2.0.0", "Other undefined status")
        stats = session.statistics()
        assert (stats.messages_sent, stats.messages_failed) == (2, 3)

    commands = commands_sent(transcript)
    if chunking and pipelining:  # the refused transactions sent their data too
        assert sum(line.startswith("BDAT") for line in commands) == 5
    await assert_delivered_once(postfix, {local: sent})


# ------------------------------------------ 5. SMTPUTF8 + 8BITMIME over BDAT --


@pytest.mark.parametrize("kind", ["small", "multi-chunk", "channel"])
@PIPELINING
async def test_smtputf8_8bitmime_over_bdat(
    postfix: PostfixEnv,
    tls_context: ssl.SSLContext,
    transcript: pytest.LogCaptureFixture,
    pipelining: bool,
    kind: str,
) -> None:
    sender = postfix.utf8_user  # jöran@example.test
    local = f"ünï-{uuid.uuid4().hex[:12]}"
    rcpt = postfix.address(local)
    message_id = new_message_id(postfix)
    body = (
        "Grüße an Jöran: ünïcode, 日本語, 🙂\r\n".encode()
        + b".a dot line with Latin-1 caf\xe9\r\n"
        + b"\x80\xff raw 8-bit\r\n"
    )
    if kind != "small":
        body += dotted_lines(6000)
    message = make_message(
        sender=sender, to=rcpt, message_id=message_id, subject="SMTPUTF8 über BDAT", body=body
    )
    size = wire_size(message)
    assert (size > SEND_SIZE) == (kind != "small")
    async with extension_session(postfix, tls_context, pipelining=pipelining) as session:
        before = session.statistics().round_trips
        if kind == "channel":
            result = await send_streamed(session, sender, [rcpt], odd_chunks(message, 4099))
        else:
            result = await session.send(sender, [rcpt], message)
        if kind == "small":
            round_trips = session.statistics().round_trips - before
            assert round_trips == (1 if pipelining else 3)
    assert result.accepted == (ts.ForwardPath.parse(rcpt),)

    commands = commands_sent(transcript)
    [mail] = mail_commands(commands)
    assert mail.startswith(f"MAIL FROM:<{sender}> ")
    params = mail_params(mail)
    assert {"BODY=8BITMIME", "SMTPUTF8"} <= params
    assert (f"SIZE={size}" in params) == (kind != "channel")
    assert f"RCPT TO:<{rcpt}>" in commands
    assert "DATA" not in commands
    assert bdat_sizes(commands) == expected_chunks(size)

    delivered = await wait_for_one(postfix, local)
    assert delivered.return_path == f"<{sender}>"
    assert delivered.delivered_to == rcpt
    assert delivered.protocol == "UTF8SMTPSA"
    assert_same_bytes(delivered.message, stored_form(message))
    await trio.sleep(SETTLE)
    assert len(mailbox_files(postfix, local)) == 1


# ------------------------------------------- 6. BINARYMIME, 7. REQUIRETLS --


async def assert_refused_before_mail(
    session: ts.Session,
    transcript: pytest.LogCaptureFixture,
    env: PostfixEnv,
    rcpt: str,
    match: str,
    *,
    binary: bool = False,
    requiretls: bool = False,
) -> None:
    before = session.statistics()
    lines_before = len(commands_sent(transcript))
    with pytest.raises(ts.SMTPNotSupportedError, match=match) as info:
        await session.send(
            env.user,
            [rcpt],
            make_message(sender=env.user, to=rcpt, message_id=new_message_id(env), subject="no"),
            binary=binary,
            requiretls=requiretls,
        )
    assert info.value.outcome is ts.Outcome.NOT_SENT
    after = session.statistics()
    assert after.bytes_sent == before.bytes_sent  # not even MAIL
    assert after.round_trips == before.round_trips
    assert after.messages_failed == before.messages_failed + 1
    assert len(commands_sent(transcript)) == lines_before
    assert session.is_usable


async def test_binarymime_not_offered(
    postfix: PostfixEnv, tls_context: ssl.SSLContext, transcript: pytest.LogCaptureFixture
) -> None:
    local = unique("binary")
    rcpt = postfix.address(local)
    following = small_message(postfix, rcpt, "after binary=True")
    async with extension_session(postfix, tls_context) as session:
        assert "BINARYMIME" not in session.capabilities
        await assert_refused_before_mail(
            session, transcript, postfix, rcpt, "BINARYMIME", binary=True
        )
        assert (await session.noop()).code == 250
        await session.send(postfix.user, [rcpt], following)
    assert not any("BINARYMIME" in line for line in commands_sent(transcript))
    await assert_delivered_once(postfix, {local: {message_id_of(following): following}})


async def test_requiretls_not_offered(
    postfix: PostfixEnv, tls_context: ssl.SSLContext, transcript: pytest.LogCaptureFixture
) -> None:
    local = unique("requiretls")
    rcpt = postfix.address(local)
    following = small_message(postfix, rcpt, "after requiretls=True")
    async with extension_session(postfix, tls_context) as session:
        # Postfix 3.7 does not implement RFC 8689; the library must not try.
        assert "REQUIRETLS" not in session.capabilities
        await assert_refused_before_mail(
            session, transcript, postfix, rcpt, "does not offer REQUIRETLS", requiretls=True
        )
        await session.send(postfix.user, [rcpt], following)
    # Without TLS the library refuses whatever the server offers.
    async with defaults.open_session(
        postfix.tls_hostname,
        port=postfix.plain_port,
        tls=ts.TLSMode.INSECURE_PLAINTEXT,
        timeouts=TIMEOUTS,
    ) as plain:
        await assert_refused_before_mail(
            plain, transcript, postfix, rcpt, "needs a session that runs TLS", requiretls=True
        )
    assert not any("REQUIRETLS" in line for line in commands_sent(transcript))
    await assert_delivered_once(postfix, {local: {message_id_of(following): following}})
