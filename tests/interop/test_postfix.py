"""trio_sendmail against a real Postfix on loopback (started by tests/interop/postfix.sh).

Every test sends through the library and reads the result back from the
Maildir Postfix delivers to, comparing bytes. What Postfix does to a message is
documented in README.md ("What Postfix does to the message"): it prepends
Return-Path, Delivered-To and Received, and stores each CRLF as LF. Our client
turns bare CR and bare LF into CRLF before Postfix sees them, so a stored
message never contains a CR (Postfix would have turned a bare one into a space).

Each test uses its own recipient local part (a uuid), or a unique Message-ID
where the mailbox is shared, so runs and tests never see each other's mail.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import random
import re
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
import trustme

import trio_sendmail as ts

from .. import defaults
from ..helpers import CLIENT_NAME
from ..postfix_plugin import PostfixEnv

pytestmark = pytest.mark.postfix

#: Tighter than the RFC defaults, so that a stuck exchange fails the test quickly.
TIMEOUTS = ts.Timeouts(
    connect=10,
    tls_handshake=10,
    greeting=30,
    command=30,
    mail=30,
    rcpt=30,
    data_init=30,
    data_block=60,
    data_end=60,
    quit=5,
)
DELIVERY_TIMEOUT = 20.0
POLL_INTERVAL = 0.05
#: How long to wait after the expected deliveries before asserting there are no more.
SETTLE = 0.5
CHUNK = 64 * 1024
PREPENDED = ("return-path", "delivered-to", "received")

Chunk = bytes | bytearray | memoryview

TLS_MODES = pytest.mark.parametrize(
    "tls", [ts.TLSMode.IMPLICIT, ts.TLSMode.STARTTLS], ids=lambda mode: str(mode.value)
)


# --------------------------------------------------------------- messages --


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def new_message_id(env: PostfixEnv) -> str:
    return f"<{uuid.uuid4().hex}@trio-sendmail.{env.domain}>"


def make_message(
    *, sender: str, to: str, message_id: str, subject: str, body: bytes = b"Hello.\r\n"
) -> bytes:
    head = (
        f"From: <{sender}>\r\n"
        f"To: <{to}>\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: {message_id}\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
    )
    return head.encode("utf-8") + body


def stored_form(message: bytes) -> bytes:
    """What Postfix stores for *message* as our client submits it.

    Written independently of the library's encoder: every line break (CRLF,
    bare CR, bare LF) is one CRLF on the wire and one LF in the Maildir; a final
    line break is added when missing; dot-stuffing is undone by Postfix.
    """
    out = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if out and not out.endswith(b"\n"):
        out += b"\n"
    return out


def assert_same_bytes(got: bytes, want: bytes) -> None:
    """Like ``assert got == want``, with a short report for megabyte values."""
    if got == want:
        return
    offset = next(
        (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
        min(len(got), len(want)),
    )
    lo = max(0, offset - 40)
    pytest.fail(
        f"delivered message differs at byte {offset} (got {len(got)} bytes, "
        f"expected {len(want)}):\n  got      {got[lo : offset + 40]!r}\n"
        f"  expected {want[lo : offset + 40]!r}",
        pytrace=False,
    )


# ---------------------------------------------------------------- maildir --


@attrs.frozen
class Delivered:
    """A Maildir file split into Postfix's prepended fields and the message."""

    path: Path
    return_path: str
    delivered_to: str
    received: str  # unfolded
    message: bytes

    @property
    def protocol(self) -> str:
        """ESMTP, ESMTPS, ESMTPSA, UTF8SMTPSA, … from the Received field."""
        match = re.search(r" with (\S+) id ", self.received)
        assert match is not None, self.received
        return match[1]

    @property
    def queue_id(self) -> str:
        match = re.search(r" id ([0-9A-Za-z]+)", self.received)
        assert match is not None, self.received
        return match[1]


def split_delivered(path: Path, data: bytes) -> Delivered:
    """Strip Return-Path, Delivered-To and Received (maybe folded), in that order."""
    values: list[str] = []
    pos = 0
    for name in PREPENDED:
        end = data.index(b"\n", pos)
        field, colon, value = data[pos:end].partition(b":")
        assert colon and field.decode().lower() == name, (
            f"{path}: expected a {name} field first, got {data[pos:end]!r}"
        )
        pos = end + 1
        while data[pos : pos + 1] in (b" ", b"\t"):  # a folded continuation line
            end = data.index(b"\n", pos)
            value += b" " + data[pos:end].strip()
            pos = end + 1
        values.append(value.strip().decode("utf-8"))
    return Delivered(path, values[0], values[1], values[2], data[pos:])


def read_delivered(path: Path) -> Delivered:
    return split_delivered(path, path.read_bytes())


def mailbox_files(env: PostfixEnv, local: str, marker: bytes | None = None) -> list[Path]:
    """Files in ``<local>/new/``; with *marker*, only those whose head contains it."""
    new = env.maildir_base / local.lower() / "new"
    if not new.is_dir():
        return []
    files = sorted(new.iterdir())
    if marker is None:
        return files
    found = []
    for path in files:
        with path.open("rb") as f:
            if marker in f.read(16 * 1024):
                found.append(path)
    return found


def id_marker(message_id: str) -> bytes:
    return f"\nMessage-ID: {message_id}\n".encode()


async def wait_for_delivery(
    env: PostfixEnv,
    local: str,
    *,
    count: int = 1,
    message_id: str | None = None,
    timeout: float = DELIVERY_TIMEOUT,
) -> list[Path]:
    """Poll ``new/`` until *count* messages (with *message_id*, if given) arrived.

    Fails at once when there are more than *count* (a duplicate delivery).
    """
    marker = None if message_id is None else id_marker(message_id)
    deadline = trio.current_time() + timeout
    while True:
        files = mailbox_files(env, local, marker)
        assert len(files) <= count, f"{len(files)} messages for {local}, expected {count}"
        if len(files) == count:
            return files
        if trio.current_time() > deadline:
            pytest.fail(
                f"{len(files)} of {count} messages delivered to {local} within {timeout} s "
                f"(Postfix log: {env.log_file})",
                pytrace=False,
            )
        await trio.sleep(POLL_INTERVAL)


async def wait_for_one(env: PostfixEnv, local: str, message_id: str | None = None) -> Delivered:
    [path] = await wait_for_delivery(env, local, message_id=message_id)
    return read_delivered(path)


async def sasl_login(env: PostfixEnv, queue_id: str) -> tuple[str, str]:
    """(sasl_method, sasl_username) that smtpd logged for the message *queue_id*."""
    pattern = re.compile(
        rf": {queue_id}: client=[^,]+, sasl_method=(\S+), sasl_username=(.+)$", re.MULTILINE
    )
    deadline = trio.current_time() + DELIVERY_TIMEOUT
    while True:
        with env.log_file.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4 * 1024 * 1024))
            log = f.read().decode("utf-8", "replace")
        matches = pattern.findall(log)
        if matches:
            method, username = matches[-1]
            return str(method), str(username)
        if trio.current_time() > deadline:
            pytest.fail(f"no SASL login logged for {queue_id} in {env.log_file}", pytrace=False)
        await trio.sleep(POLL_INTERVAL)


# --------------------------------------------------------------- sessions --


def port_for(env: PostfixEnv, tls: ts.TLSMode) -> int:
    return {
        ts.TLSMode.IMPLICIT: env.smtps_port,
        ts.TLSMode.STARTTLS: env.submission_port,
        ts.TLSMode.INSECURE_PLAINTEXT: env.plain_port,
    }[tls]


def credentials(env: PostfixEnv, user: str) -> tuple[str, str]:
    if user == "ascii":
        return env.user, env.password
    assert user == "utf8"
    return env.utf8_user, env.utf8_password


@asynccontextmanager
async def submission_session(
    env: PostfixEnv,
    context: ssl.SSLContext,
    *,
    tls: ts.TLSMode = ts.TLSMode.IMPLICIT,
    pipelining: bool = True,
) -> AsyncIterator[ts.Session]:
    """A TLS session authenticated as the ASCII user."""
    async with defaults.open_session(
        env.tls_hostname,
        port=port_for(env, tls),
        tls=tls,
        ssl_context=context,
        authentication=ts.Authentication(env.user, env.password),
        timeouts=TIMEOUTS,
        pipelining=pipelining,
    ) as session:
        assert session.tls
        assert session.authenticated
        yield session


async def send_streamed(
    session: ts.Session,
    sender: str,
    recipients: list[str],
    chunks: Iterable[Chunk],
    *,
    capacity: int = 0,
) -> ts.SendResult:
    """``session.send`` with the message fed through a trio memory channel."""
    send_channel, receive_channel = trio.open_memory_channel[Chunk](capacity)

    async def produce() -> None:
        async with send_channel:
            with contextlib.suppress(trio.BrokenResourceError):  # the consumer gave up
                for chunk in chunks:
                    await send_channel.send(chunk)

    result: ts.SendResult | None = None
    error: ts.SMTPError | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce)
        async with receive_channel:
            try:
                result = await session.send(sender, recipients, receive_channel)
            except ts.SMTPError as exc:  # re-raised outside the nursery: no ExceptionGroup
                error = exc
    if error is not None:
        raise error
    assert result is not None
    return result


def error_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def verify_error(exc: BaseException) -> ssl.SSLCertVerificationError:
    for link in error_chain(exc):
        if isinstance(link, ssl.SSLCertVerificationError):
            return link
    pytest.fail(f"no SSLCertVerificationError behind {exc!r}", pytrace=False)


def commands_sent(transcript: pytest.LogCaptureFixture) -> list[str]:
    """The client lines of the transcript ("EHLO …", "AUTH …", …)."""
    lines = []
    for record in transcript.records:
        _, sep, line = record.getMessage().partition("] C: ")
        if sep:
            lines.append(line)
    return lines


# ---------------------------------------------- 1. submission with AUTH --


@pytest.mark.parametrize("mechanism", [None, "PLAIN", "LOGIN"], ids=["auto", "PLAIN", "LOGIN"])
@pytest.mark.parametrize("user", ["ascii", "utf8"])
@pytest.mark.parametrize("api", ["sendmail", "sendmail_with_starttls"])
async def test_submission_with_auth(
    postfix: PostfixEnv,
    tls_context: ssl.SSLContext,
    api: str,
    user: str,
    mechanism: str | None,
) -> None:
    username, password = credentials(postfix, user)
    auth = ts.Authentication(username, password, mechanism=mechanism)
    local = unique("auth")
    rcpt = postfix.address(local)
    message = make_message(
        sender=postfix.user,
        to=rcpt,
        message_id=new_message_id(postfix),
        subject=f"{api} {user} {mechanism}",
    )
    if api == "sendmail":
        result = await defaults.sendmail(
            hostname=postfix.tls_hostname,
            port=postfix.smtps_port,
            sender=postfix.user,
            recipients=[rcpt],
            mail=message,
            ssl_context=tls_context,
            authentication=auth,
            timeouts=TIMEOUTS,
        )
    else:
        result = await defaults.sendmail_with_starttls(
            hostname=postfix.tls_hostname,
            port=postfix.submission_port,
            sender=postfix.user,
            recipients=[rcpt],
            mail=message,
            ssl_context=tls_context,
            authentication=auth,
            timeouts=TIMEOUTS,
        )
    assert result.reply.code == 250
    assert result.accepted == (ts.ForwardPath.parse(rcpt),)
    assert result.refused == {}

    delivered = await wait_for_one(postfix, local)
    assert_same_bytes(delivered.message, stored_form(message))
    assert delivered.return_path == f"<{postfix.user}>"
    assert delivered.delivered_to == rcpt
    assert delivered.received.startswith(f"from {CLIENT_NAME} (unknown [")
    assert delivered.protocol == "ESMTPSA"  # TLS and AUTH, no SMTPUTF8 needed
    assert f"queued as {delivered.queue_id}" in result.reply.text
    method, logged_user = await sasl_login(postfix, delivered.queue_id)
    assert method == (mechanism or "PLAIN")  # the automatic choice prefers PLAIN
    assert logged_user == username


async def test_ip_literal_hostnames(postfix: PostfixEnv, tls_context: ssl.SSLContext) -> None:
    """The certificate carries 127.0.0.1 and ::1, so IP literals verify too."""
    hosts = [postfix.host, *([postfix.host6] if postfix.host6 else [])]
    for host in hosts:
        async with defaults.open_session(
            host,
            port=postfix.smtps_port,
            ssl_context=tls_context,
            authentication=ts.Authentication(postfix.user, postfix.password),
            timeouts=TIMEOUTS,
        ) as session:
            assert session.tls and session.authenticated
            assert (await session.noop()).code == 250


# ------------------------------------------------- 2. plaintext local relay --


async def test_plaintext_relay_without_auth(postfix: PostfixEnv) -> None:
    local = unique("plain")
    rcpt = postfix.address(local)
    message = make_message(
        sender=postfix.user, to=rcpt, message_id=new_message_id(postfix), subject="plaintext"
    )
    async with ts.open_session(
        postfix.tls_hostname,
        port=postfix.plain_port,
        tls=ts.TLSMode.INSECURE_PLAINTEXT,
        timeouts=TIMEOUTS,  # and the default EHLO name
    ) as session:
        assert not session.tls
        assert not session.authenticated
        assert not session.capabilities.starttls
        assert session.capabilities.auth_mechanisms == frozenset()
        result = await session.send(postfix.user, [rcpt], message)
    assert result.reply.code == 250
    delivered = await wait_for_one(postfix, local)
    assert_same_bytes(delivered.message, stored_form(message))
    assert delivered.protocol == "ESMTP"


@pytest.mark.parametrize("insecure_auth", [False, True], ids=["default", "insecure-allowed"])
async def test_plaintext_relay_never_sends_credentials(
    postfix: PostfixEnv, transcript: pytest.LogCaptureFixture, insecure_auth: bool
) -> None:
    expected = "without TLS" if not insecure_auth else "does not offer AUTH"
    with pytest.raises(ts.SMTPNotSupportedError, match=expected):
        async with defaults.open_session(
            postfix.tls_hostname,
            port=postfix.plain_port,
            tls=ts.TLSMode.INSECURE_PLAINTEXT,
            authentication=ts.Authentication(postfix.user, postfix.password),
            insecure_auth_over_plaintext=insecure_auth,
            timeouts=TIMEOUTS,
        ):
            pytest.fail("the session opened although AUTH is impossible")
    sent = commands_sent(transcript)
    assert sent[0] == f"EHLO {CLIENT_NAME}"
    assert not any(line.upper().startswith("AUTH") for line in sent), sent
    assert not any(postfix.password in r.getMessage() for r in transcript.records)


# ------------------------------------------ 3. bad credentials, bad TLS --


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@TLS_MODES
async def test_wrong_password(
    postfix: PostfixEnv, tls_context: ssl.SSLContext, tls: ts.TLSMode, mechanism: str
) -> None:
    wrong = "not-" + postfix.password
    with pytest.raises(ts.SMTPAuthenticationError) as info:
        async with defaults.open_session(
            postfix.tls_hostname,
            port=port_for(postfix, tls),
            tls=tls,
            ssl_context=tls_context,
            authentication=ts.Authentication(postfix.user, wrong, mechanism=mechanism),
            timeouts=TIMEOUTS,
        ):
            pytest.fail("authenticated with a wrong password")
    exc = info.value
    assert exc.code == 535
    assert str(exc.enhanced_status) == "5.7.8"
    assert exc.command == "AUTH"
    assert not exc.is_transient
    assert isinstance(exc, ts.SMTPPermanentError)
    assert wrong not in str(exc)
    assert wrong not in repr(exc)


@TLS_MODES
async def test_untrusted_certificate(
    postfix: PostfixEnv, transcript: pytest.LogCaptureFixture, tls: ts.TLSMode
) -> None:
    other_ca_context = ssl.create_default_context()
    trustme.CA().configure_trust(other_ca_context)
    with pytest.raises(ts.SMTPTLSError) as info:
        async with defaults.open_session(
            postfix.tls_hostname,
            port=port_for(postfix, tls),
            tls=tls,
            ssl_context=other_ca_context,
            authentication=ts.Authentication(postfix.user, postfix.password),
            timeouts=TIMEOUTS,
        ):
            pytest.fail("TLS succeeded with an untrusted certificate")
    assert "unable to get local issuer certificate" in verify_error(info.value).verify_message
    assert not any(line.startswith("AUTH") for line in commands_sent(transcript))


@TLS_MODES
async def test_hostname_mismatch(
    postfix: PostfixEnv,
    tls_context: ssl.SSLContext,
    transcript: pytest.LogCaptureFixture,
    tls: ts.TLSMode,
) -> None:
    # The certificate carries localhost, 127.0.0.1 and ::1, so connect to the
    # loopback address ourselves and expect a name the certificate lacks.
    stream = await trio.open_tcp_stream(postfix.host, port_for(postfix, tls))
    async with stream:
        with pytest.raises(ts.SMTPTLSError) as info:
            async with defaults.open_session(
                "wrong.example.test",
                port=port_for(postfix, tls),
                tls=tls,
                ssl_context=tls_context,
                authentication=ts.Authentication(postfix.user, postfix.password),
                timeouts=TIMEOUTS,
                stream=stream,
            ):
                pytest.fail("TLS succeeded with a certificate for another name")
    assert "Hostname mismatch" in verify_error(info.value).verify_message
    assert not any(line.startswith("AUTH") for line in commands_sent(transcript))


# ------------------------------------------------- 4. refused recipients --


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "no-pipelining"])
async def test_refused_recipients(
    postfix: PostfixEnv, tls_context: ssl.SSLContext, pipelining: bool
) -> None:
    fp = ts.ForwardPath.parse
    sender = postfix.user

    def msg(to: str) -> bytes:
        return make_message(
            sender=sender, to=to, message_id=new_message_id(postfix), subject="refusals"
        )

    async with submission_session(postfix, tls_context, pipelining=pipelining) as session:
        # Every recipient refused permanently.
        rejected = [postfix.address(unique("reject")) for _ in range(2)]
        with pytest.raises(ts.SMTPRecipientsRefused) as permanent:
            await session.send(sender, rejected, msg(rejected[0]))
        assert not permanent.value.is_transient
        assert isinstance(permanent.value, ts.SMTPPermanentError)
        assert permanent.value.outcome is ts.Outcome.NOT_SENT
        assert set(permanent.value.refused) == {fp(r) for r in rejected}
        for reply in permanent.value.refused.values():
            assert (reply.code, str(reply.enhanced_status)) == (550, "5.1.1")
        assert session.is_usable

        # Every recipient refused temporarily.
        tempfailed = [postfix.address(unique("tempfail")) for _ in range(2)]
        with pytest.raises(ts.SMTPRecipientsRefused) as transient:
            await session.send(sender, tempfailed, msg(tempfailed[0]))
        assert transient.value.is_transient
        assert isinstance(transient.value, ts.SMTPTransientError)
        assert set(transient.value.refused) == {fp(r) for r in tempfailed}
        for reply in transient.value.refused.values():
            assert (reply.code, str(reply.enhanced_status)) == (450, "4.2.0")
        assert session.is_usable

        # Both kinds: not retryable as a whole.
        with pytest.raises(ts.SMTPRecipientsRefused) as both:
            await session.send(sender, [rejected[0], tempfailed[0]], msg(rejected[0]))
        assert not both.value.is_transient
        assert isinstance(both.value, ts.SMTPPermanentError)

        # A good recipient among refused ones: the message goes to it alone.
        good_local = unique("mixed")
        good = postfix.address(good_local)
        elsewhere = "someone@example.org"  # no relaying: 550 5.7.1
        message = msg(good)
        result = await session.send(sender, [rejected[0], good, tempfailed[0], elsewhere], message)
        assert result.reply.code == 250
        assert result.accepted == (fp(good),)
        assert {str(k): (v.code, str(v.enhanced_status)) for k, v in result.refused.items()} == {
            str(fp(rejected[0])): (550, "5.1.1"),
            str(fp(tempfailed[0])): (450, "4.2.0"),
            str(fp(elsewhere)): (550, "5.7.1"),
        }
        assert session.statistics().messages_sent == 1
        assert session.statistics().messages_failed == 3

    delivered = await wait_for_one(postfix, good_local)
    assert_same_bytes(delivered.message, stored_form(message))
    assert f"for <{good}>" in delivered.received  # one accepted recipient
    for local in (r.split("@")[0] for r in [*rejected, *tempfailed]):
        assert mailbox_files(postfix, local) == []


# ------------------------------------------------ 5. round-trip fidelity --

TRICKY_HEAD = b"".join(
    [
        b"Plain first line\r\n",
        b".leading dot\r\n",
        b"..two leading dots\r\n",
        b".\r\n",  # a lone dot: the end of data if it were not stuffed
        b"before a fake end\r\n.\r\nafter a fake end\r\n",
        b"bare CR\rin the middle\r\n",
        b"bare LF\nin the middle\r\n",
        b"LF dot LF\n.\nafter\r\n",
        b"CR dot CRLF\r.\r\nafter\r\n",
        b"LF dot CRLF\n.\r\nafter\r\n",
        b"CRLF dot CR\r\n.\rafter\r\n",
        b"CR CR LF\r\r\n",
        b"LF CR\n\rafter\r\n",
        b"\r\n",
        b"an empty line above\r\n",
        b"8-bit Latin-1: caf\xe9 na\xefve \xff\xfe\x80\r\n",
        "UTF-8: jöran, ünïcode, 日本語, 🙂\r\n".encode(),
        b"NUL \x00 inside\r\n",
        b"trailing blanks   \t\r\n",
        b"\tleading tab\r\n",
        b". dot space\r\n",
        b"dot at the end.\r\n",
        b"\r\n.",  # the next line (the blob) starts with a dot
    ]
)
TRICKY_TAIL = b"\r\n.\r\n\r\nlast line without a final newline"


def line_free_blob(size: int = 2 * 1024 * 1024) -> bytes:
    """*size* random bytes (NUL and 8-bit included) without CR or LF."""
    data = random.Random(5321).randbytes(size)
    return data.translate(bytes.maketrans(b"\r\n", b"Rn"))


BLOB = line_free_blob()


def awkward_split(data: bytes) -> list[Chunk]:
    """Cut *data* at every awkward place: between CR and LF, before and after a
    dot that follows a line break, before every CR; long runs at odd sizes.
    The chunks alternate between bytes, bytearray and memoryview; one is empty."""
    cuts = {0, len(data)}
    for match in re.finditer(rb"\r|\n|\.", data):
        cuts.update((match.start(), match.end()))
    points = sorted(cuts)
    chunks: list[Chunk] = []
    for start, end in itertools.pairwise(points):
        for piece_start in range(start, end, CHUNK + 1):
            piece = data[piece_start : min(end, piece_start + CHUNK + 1)]
            kind = len(chunks) % 3
            chunks.append(
                piece if kind == 0 else bytearray(piece) if kind == 1 else memoryview(piece)
            )
    chunks.insert(10, b"")
    return chunks


def bytewise_head_split(data: bytes, head: int) -> list[Chunk]:
    """One-byte chunks for the first *head* bytes, then 64 KiB chunks."""
    chunks: list[Chunk] = [data[i : i + 1] for i in range(head)]
    chunks += [data[i : i + CHUNK] for i in range(head, len(data), CHUNK)]
    return chunks


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "no-pipelining"])
@pytest.mark.parametrize("source", ["bytes", "channel-awkward-cuts", "channel-bytewise-head"])
async def test_round_trip_fidelity(
    postfix: PostfixEnv, tls_context: ssl.SSLContext, source: str, pipelining: bool
) -> None:
    local = unique("fidelity")
    rcpt = postfix.address(local)
    message = make_message(
        sender=postfix.user,
        to=rcpt,
        message_id=new_message_id(postfix),
        subject=f"fidelity {source} pipelining={pipelining}",
        body=TRICKY_HEAD + BLOB + TRICKY_TAIL,
    )
    head_size = message.index(BLOB) + 1
    async with submission_session(postfix, tls_context, pipelining=pipelining) as session:
        if source == "bytes":
            result = await session.send(postfix.user, [rcpt], message)
        elif source == "channel-awkward-cuts":
            chunks = awkward_split(message)
            assert b"".join(chunks) == message
            result = await send_streamed(session, postfix.user, [rcpt], chunks)
        else:
            chunks = bytewise_head_split(message, head_size)
            assert b"".join(chunks) == message
            result = await send_streamed(session, postfix.user, [rcpt], chunks)
    assert result.reply.code == 250

    delivered = await wait_for_one(postfix, local)
    assert b"\r" not in delivered.message  # Postfix never saw a bare CR
    assert_same_bytes(delivered.message, stored_form(message))


@pytest.mark.parametrize(
    "body",
    [
        b"no final newline",
        b"ends with a bare CR\r",
        b"ends with a bare LF\n",
        b"ends with a lone dot\r\n.",
        b"ends with a dot after LF\n.",
        b"ends with CRLF CR\r\n\r",
        b"",
    ],
    ids=["no-newline", "bare-cr", "bare-lf", "crlf-dot", "lf-dot", "crlf-cr", "empty-body"],
)
@pytest.mark.parametrize("source", ["bytes", "channel-bytewise"])
async def test_message_endings(
    postfix: PostfixEnv, tls_context: ssl.SSLContext, body: bytes, source: str
) -> None:
    local = unique("ending")
    rcpt = postfix.address(local)
    message = make_message(
        sender=postfix.user,
        to=rcpt,
        message_id=new_message_id(postfix),
        subject="ending",
        body=body,
    )
    async with submission_session(postfix, tls_context) as session:
        if source == "bytes":
            await session.send(postfix.user, [rcpt], message)
        else:
            chunks = [message[i : i + 1] for i in range(len(message))]
            await send_streamed(session, postfix.user, [rcpt], chunks)
    delivered = await wait_for_one(postfix, local)
    assert b"\r" not in delivered.message
    assert_same_bytes(delivered.message, stored_form(message))


@pytest.mark.parametrize("source", ["bytes", "channel"])
async def test_empty_message(
    postfix: PostfixEnv, tls_context: ssl.SSLContext, source: str
) -> None:
    local = unique("empty")
    rcpt = postfix.address(local)
    async with submission_session(postfix, tls_context) as session:
        if source == "bytes":
            await session.send(postfix.user, [rcpt], b"")
        else:
            await send_streamed(session, postfix.user, [rcpt], [])
    delivered = await wait_for_one(postfix, local)
    assert delivered.message == b""  # the three prepended fields only


# ------------------------------------------------- 6. SMTPUTF8 and SIZE --


async def test_smtputf8_addresses(postfix: PostfixEnv, tls_context: ssl.SSLContext) -> None:
    utf8_address = postfix.utf8_user  # jöran@example.test, also a SASL user
    local = utf8_address.split("@")[0]
    message_id = new_message_id(postfix)
    message = make_message(
        sender=utf8_address,
        to=utf8_address,
        message_id=message_id,
        subject="SMTPUTF8: grüße, jöran",
        body="Hallo Jöran, ünïcode everywhere.\r\n".encode(),
    )
    result = await defaults.sendmail_with_starttls(
        hostname=postfix.tls_hostname,
        port=postfix.submission_port,
        sender=utf8_address,
        recipients=[utf8_address],
        mail=message,
        ssl_context=tls_context,
        authentication=ts.Authentication(postfix.utf8_user, postfix.utf8_password),
        timeouts=TIMEOUTS,
    )
    assert result.accepted == (ts.ForwardPath.parse(utf8_address),)
    # The mailbox is shared between runs: find this message by its Message-ID.
    delivered = await wait_for_one(postfix, local, message_id)
    assert_same_bytes(delivered.message, stored_form(message))
    assert delivered.return_path == f"<{utf8_address}>"
    assert delivered.delivered_to == utf8_address
    assert delivered.protocol == "UTF8SMTPSA"  # SMTPUTF8 was declared on MAIL


async def test_size_limit_refused_before_sending(
    postfix: PostfixEnv, tls_context: ssl.SSLContext
) -> None:
    local = unique("size")
    rcpt = postfix.address(local)
    line = b"x" * 998 + b"\r\n"
    too_big = make_message(
        sender=postfix.user,
        to=rcpt,
        message_id=new_message_id(postfix),
        subject="too big",
        body=line * (postfix.size_limit // len(line) + 1),
    )
    assert len(too_big) > postfix.size_limit
    small_id = new_message_id(postfix)
    small = make_message(sender=postfix.user, to=rcpt, message_id=small_id, subject="small")
    async with submission_session(postfix, tls_context) as session:
        assert session.capabilities.size_limit == postfix.size_limit
        before = session.statistics()
        with pytest.raises(ts.SMTPMessageTooLarge) as info:
            await session.send(postfix.user, [rcpt], too_big)
        assert info.value.size == len(too_big)  # already CRLF, ends in CRLF
        assert info.value.limit == postfix.size_limit
        assert info.value.outcome is ts.Outcome.NOT_SENT
        assert session.statistics().bytes_sent == before.bytes_sent  # not even MAIL
        assert session.is_usable
        result = await session.send(postfix.user, [rcpt], small)
        assert result.reply.code == 250
    delivered = await wait_for_one(postfix, local)
    assert_same_bytes(delivered.message, stored_form(small))
    await trio.sleep(SETTLE)
    assert len(mailbox_files(postfix, local)) == 1


def line_block() -> bytes:
    """About 1 MiB of CRLF lines of varying length; some start with a dot, some are 8-bit."""
    text = "The quick brown fox jumps over the lazy dog; grüße, jöran. ".encode() * 4
    lines = []
    for i in range(12_000):
        dot = b"." if i % 7 == 0 else b""
        lines.append(dot + b"%06d " % i + text[: i % len(text)] + b"\r\n")
    return b"".join(lines)


def streamed_message(
    head: bytes, total: int, stored_hash: Callable[[bytes], object]
) -> Iterator[bytes]:
    """*head* then repeated line blocks up to at least *total* bytes, in 64 KiB
    chunks (CRLF pairs and dots fall across chunk boundaries). Updates
    *stored_hash* (a hash's ``update``) with the form Postfix stores (CRLF as
    LF) as it goes."""
    block = line_block()
    assert b"\r" not in block.replace(b"\r\n", b"")  # CRLF only: stored form = minus CR
    pending = bytearray(head)
    sent = 0
    while sent + len(pending) < total:
        pending += block
        while len(pending) >= CHUNK:
            chunk = bytes(pending[:CHUNK])
            del pending[:CHUNK]
            stored_hash(chunk.replace(b"\r", b""))
            sent += len(chunk)
            yield chunk
    if pending:
        stored_hash(bytes(pending).replace(b"\r", b""))
        yield bytes(pending)


def stored_digest(path: Path) -> tuple[Delivered, str, int]:
    """Split the prepended fields off a large Maildir file and hash the rest."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        delivered = split_delivered(path, f.read(CHUNK))
        digest.update(delivered.message)
        size = len(delivered.message)
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return delivered, digest.hexdigest(), size


async def test_30_megabytes_streamed(postfix: PostfixEnv, tls_context: ssl.SSLContext) -> None:
    local = unique("big")
    rcpt = postfix.address(local)
    head = make_message(
        sender=postfix.user,
        to=rcpt,
        message_id=new_message_id(postfix),
        subject="30 MB streamed",
        body=b"",
    )
    want = hashlib.sha256()
    stored_size = 0

    def counted(chunks: Iterator[bytes]) -> Iterator[bytes]:
        nonlocal stored_size
        for chunk in chunks:
            stored_size += len(chunk) - chunk.count(b"\r")
            yield chunk

    async with submission_session(postfix, tls_context) as session:
        chunks = counted(streamed_message(head, 30_000_000, want.update))
        result = await send_streamed(session, postfix.user, [rcpt], chunks, capacity=4)
        assert result.reply.code == 250
        assert session.statistics().bytes_sent > 30_000_000
    [path] = await wait_for_delivery(postfix, local)
    delivered, got_hash, got_size = await trio.to_thread.run_sync(stored_digest, path)
    assert delivered.delivered_to == rcpt
    assert got_size == stored_size
    assert got_hash == want.hexdigest()


async def test_streamed_message_over_size_limit_is_refused(
    postfix: PostfixEnv, tls_context: ssl.SSLContext
) -> None:
    """A stream has no SIZE= to declare: Postfix reads it all and answers 552."""
    local = unique("oversize")
    rcpt = postfix.address(local)
    head = make_message(
        sender=postfix.user,
        to=rcpt,
        message_id=new_message_id(postfix),
        subject="over the limit",
        body=b"",
    )
    small = make_message(
        sender=postfix.user, to=rcpt, message_id=new_message_id(postfix), subject="small"
    )
    async with submission_session(postfix, tls_context) as session:
        chunks = streamed_message(head, postfix.size_limit + 1_000_000, hashlib.sha256().update)
        with pytest.raises(ts.SMTPResponseError) as info:
            await send_streamed(session, postfix.user, [rcpt], chunks, capacity=4)
        assert (info.value.code, str(info.value.enhanced_status)) == (552, "5.3.4")
        if session.capabilities.chunking:
            # A BDAT chunk over the limit is refused before BDAT … LAST went out.
            assert info.value.command == "BDAT"
            assert info.value.outcome is ts.Outcome.NOT_SENT
        else:
            assert info.value.command == "."
            assert info.value.outcome is ts.Outcome.REFUSED
        assert session.is_usable
        await session.send(postfix.user, [rcpt], small)
    delivered = await wait_for_one(postfix, local)
    assert_same_bytes(delivered.message, stored_form(small))
    await trio.sleep(SETTLE)
    assert len(mailbox_files(postfix, local)) == 1


# ---------------------------------------- 7. many messages, one session --


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "no-pipelining"])
async def test_many_messages_one_session(
    postfix: PostfixEnv, tls_context: ssl.SSLContext, pipelining: bool
) -> None:
    local = unique("many")
    rcpt = postfix.address(local)
    delivered_ids: list[str] = []
    refused_ids: list[str] = []
    async with submission_session(
        postfix, tls_context, tls=ts.TLSMode.STARTTLS, pipelining=pipelining
    ) as session:
        for i in range(20):
            message_id = new_message_id(postfix)
            sender = postfix.user
            recipients = [rcpt]
            if i == 6:
                sender = postfix.address(unique("reject"))
            elif i == 13:
                recipients = [postfix.address(unique("reject")) for _ in range(2)]
            message = make_message(
                sender=sender, to=rcpt, message_id=message_id, subject=f"message {i}"
            )
            if i == 6:
                with pytest.raises(ts.SMTPSenderRefused) as sender_refused:
                    await session.send(sender, recipients, message)
                assert sender_refused.value.code == 550
                assert sender_refused.value.command == "MAIL"
                assert not sender_refused.value.is_transient
                assert sender_refused.value.outcome is ts.Outcome.NOT_SENT
                refused_ids.append(message_id)
            elif i == 13:
                with pytest.raises(ts.SMTPRecipientsRefused) as rcpts_refused:
                    await session.send(sender, recipients, message)
                assert len(rcpts_refused.value.refused) == 2
                assert not rcpts_refused.value.is_transient
                assert rcpts_refused.value.outcome is ts.Outcome.NOT_SENT
                refused_ids.append(message_id)
            else:
                result = await session.send(sender, recipients, message)
                assert result.reply.code == 250
                delivered_ids.append(message_id)
            assert session.is_usable
        stats = session.statistics()
        assert (stats.messages_sent, stats.messages_failed) == (18, 2)

    paths = await wait_for_delivery(postfix, local, count=18)
    await trio.sleep(SETTLE)
    assert len(mailbox_files(postfix, local)) == 18
    seen = []
    for path in paths:
        match = re.search(rb"\nMessage-ID: (<[^>\n]+>)\n", path.read_bytes())
        assert match is not None, path
        seen.append(match[1].decode())
    assert sorted(seen) == sorted(delivered_ids)  # each exactly once
    assert not set(seen) & set(refused_ids)
