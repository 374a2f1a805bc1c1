"""The fuzz target of ``fuzz_reply.py``: the reply stream, through ReplyParser,
Capabilities and ClientCore.

One input is decoded as: byte 0 chooses the parser's bounds, byte 1 the client's
path (AUTH mechanism, STARTTLS, pipelining), byte 2 how the rest is cut into
reads, and the rest is what the server sends. For every input:

* the bytes are parsed by :class:`ReplyParser` in that chunking and whole, and
  both give the same replies as an independent reference parser, raising
  :class:`SMTPProtocolError` exactly when the reference rejects the stream;
* memory stays bounded (never more than one line's bound buffered);
* every reply is well-formed and :meth:`Capabilities.from_reply` accepts it;
* the same bytes drive a :class:`ClientCore` through greeting, EHLO,
  (STARTTLS,) (AUTH,) MAIL/RCPT/DATA and QUIT, reacting to every event.

Only :class:`SMTPError` subclasses may escape from the library; anything else,
or a broken invariant, is a crash. Every crash found is kept as a regression
test in ``tests/hardening/test_fuzz_regressions.py``.
"""

from __future__ import annotations

import base64
import random
import re
from collections.abc import Sequence
from pathlib import Path

from trio_sendmail._address import Domain, ForwardPath, ReversePath
from trio_sendmail._capabilities import Capabilities
from trio_sendmail._core import ClientCore, State
from trio_sendmail._errors import SMTPError, SMTPProtocolError, SMTPUsageError
from trio_sendmail._reply import (
    MAX_REPLY_LINE_LENGTH,
    MAX_REPLY_LINES,
    MAX_REPLY_SIZE,
    EnhancedStatus,
    Reply,
    ReplyParser,
)
from trio_sendmail._sasl import MECHANISMS, Authentication, Mechanism, ScramSha256Mechanism

# ------------------------------------------------------------------ the reference parser

#: (max_line_length, max_lines, max_size) chosen by the first byte of an input.
LIMITS: Sequence[tuple[int, int, int]] = (
    (MAX_REPLY_LINE_LENGTH, MAX_REPLY_LINES, MAX_REPLY_SIZE),
    (8, 4, 40),
    (16, 2, 64),
    (5, 1, 5),
    (32, 8, 100),
    (1, 1, 1),
    (64, 256, 300),
    (4, 3, 10),
)

_LINE = re.compile(rb"(?P<code>[2-5][0-5][0-9])(?P<sep>[ -]?)(?P<text>.*)", re.DOTALL)
_STATUS = re.compile(r"([245])\.(0|[1-9][0-9]?[0-9]?)\.(0|[1-9][0-9]?[0-9]?)( +|$)")
_CONTROL = frozenset(range(0x20)) - {0x09} | {0x7F}

ParsedReply = tuple[int, tuple[str, ...], tuple[int, int, int] | None]


def reference_parse(stream: bytes, limits: tuple[int, int, int]) -> tuple[list[ParsedReply], bool]:
    """Parse a whole stream the slow, obvious way: (replies, rejected?).

    Written apart from ReplyParser, from RFC 5321 §4.2 and the documented bounds:
    a line (LF included, a CR before the LF dropped) may be ``max_line`` bytes; a
    reply may have ``max_lines`` lines and ``max_size`` bytes; an unfinished line
    that already reached ``max_line`` bytes can only become too long.
    """
    max_line, max_lines, max_size = limits
    replies: list[ParsedReply] = []
    lines: list[str] = []
    code = -1
    size = 0
    status: tuple[int, int, int] | None = None
    for raw in stream.split(b"\n")[:-1]:
        if len(raw) + 1 > max_line:
            return replies, True
        size += len(raw) + 1
        line = raw[:-1] if raw.endswith(b"\r") else raw
        match = _LINE.fullmatch(line)
        if match is None or (lines and int(match["code"]) != code):
            return replies, True
        if match["sep"] == b"" and match["text"]:
            return replies, True
        try:
            text = match["text"].decode("utf-8")
        except UnicodeDecodeError:
            return replies, True
        if any(ord(char) in _CONTROL for char in text):
            return replies, True
        if len(lines) >= max_lines or size > max_size:
            return replies, True
        code = int(match["code"])
        found = _STATUS.match(text)
        if found is not None and int(found[1]) == code // 100:
            if status is None:
                status = (int(found[1]), int(found[2]), int(found[3]))
            text = text[found.end() :]
        lines.append(text)
        if match["sep"] != b"-":
            replies.append((code, tuple(lines), status))
            lines, size, status = [], 0, None
    tail = stream.rsplit(b"\n", 1)[-1] if b"\n" in stream else stream
    return replies, len(tail) >= max_line


def as_tuple(reply: Reply) -> ParsedReply:
    status = reply.enhanced_status
    return (
        reply.code,
        reply.lines,
        None if status is None else (status.klass, status.subject, status.detail),
    )


def cut(stream: bytes, seed: int) -> list[bytes]:
    """Cut *stream* into reads, the way byte 2 of an input says."""
    if seed == 0:
        return [stream]
    if seed == 1:
        return [stream[i : i + 1] for i in range(len(stream))]
    rng = random.Random(seed)
    pieces = []
    start = 0
    while start < len(stream):
        size = rng.choice((1, 2, 3, 5, 8, 13, 64, 1000))
        pieces.append(stream[start : start + size])
        start += size
    return pieces


def check_reply(reply: Reply) -> None:
    assert 200 <= reply.code < 600, reply
    assert reply.lines, reply
    for line in reply.lines:
        assert not any(ord(char) in _CONTROL for char in line), reply
    status = reply.enhanced_status
    if status is not None:
        assert status.klass == reply.code // 100, reply
        assert EnhancedStatus.parse(str(status)) == status
    str(reply)
    check_capabilities(Capabilities.from_reply(reply))


_KEYWORD = re.compile(r"[A-Z0-9][A-Z0-9-]*")


def check_capabilities(caps: Capabilities) -> None:
    for keyword, params in caps.items():
        assert _KEYWORD.fullmatch(keyword), keyword
        assert keyword in caps and keyword.lower() in caps
        assert caps[keyword.lower()] == params
        assert all(param and not any(c.isspace() for c in param) for param in params)
    assert all(name == name.upper() for name in caps.auth_mechanisms)
    limit = caps.size_limit
    assert limit is None or limit > 0
    assert isinstance(caps.starttls, bool) and isinstance(caps.pipelining, bool)


def parse_stream(
    chunks: Sequence[bytes], limits: tuple[int, int, int]
) -> tuple[list[ParsedReply], bool]:
    """Run ReplyParser over *chunks*: (replies, rejected?); checks the memory bound."""
    parser = ReplyParser(max_line_length=limits[0], max_lines=limits[1], max_size=limits[2])
    replies: list[ParsedReply] = []
    try:
        for chunk in chunks:
            parser.feed(chunk)
            while (reply := parser.next_reply()) is not None:
                check_reply(reply)
                replies.append(as_tuple(reply))
            assert parser.buffered < max(limits[0], 1), (parser.buffered, limits)
    except SMTPProtocolError:
        return replies, True
    return replies, False


# ------------------------------------------------------------------ the client core


async def _token() -> str:
    return "ya29.fuzz-token"


def _prepare(mechanism: Mechanism) -> None:
    """Run the mechanism's async prepare() (it never suspends here)."""
    coroutine = mechanism.prepare()
    try:
        coroutine.send(None)
    except StopIteration:
        pass
    else:  # pragma: no cover - prepare() never suspends with this token provider
        coroutine.close()
        raise AssertionError("prepare() suspended")


MECHANISM_NAMES: Sequence[str | None] = (None, *MECHANISMS)


def drive_core(chunks: Sequence[bytes], choice: int) -> None:
    """A client dialogue that reacts to whatever the server sends."""
    name = MECHANISM_NAMES[choice % len(MECHANISM_NAMES)]
    use_starttls = bool(choice & 0x08)
    pipelined = bool(choice & 0x10)
    lines: list[str] = []
    core = ClientCore(transcript=lines.append)
    mechanism: Mechanism | None = None
    if name is not None:
        auth = Authentication("user", "pencil-Secret", mechanism=name, token_provider=_token)
        if name == "SCRAM-SHA-256":  # a fixed nonce, so that the fuzzer can extend it
            mechanism = ScramSha256Mechanism(auth, nonce="fuzznonce")
        else:
            mechanism = MECHANISMS[name](auth)
        _prepare(mechanism)
    me = Domain.parse("client.example.test")
    stage = {"auth": False, "mail": False, "quit": False}

    def next_commands() -> None:
        if core.awaiting_reply:
            return
        state = core.state
        if state is State.GREETED:
            core.ehlo(me)
        elif state is State.TLS:
            core.tls_established()
            core.ehlo(me)
        elif state is State.READY:
            if use_starttls and not core.tls:
                core.starttls()
            elif mechanism is not None and not stage["auth"]:
                stage["auth"] = True
                core.auth(mechanism)
            elif not stage["mail"]:
                stage["mail"] = True
                core.mail(ReversePath.parse("a@example.com"), ["BODY=8BITMIME"])
                if not pipelined:
                    return
                core.rcpt(ForwardPath.parse("b@example.com"))
                core.rcpt(ForwardPath.parse("<c@example.com>"))
                core.data()
            elif not stage["quit"]:
                stage["quit"] = True
                core.quit()
        elif state is State.MAIL and not pipelined:
            core.rcpt(ForwardPath.parse("b@example.com"))
        elif state is State.RCPT and not pipelined:
            core.data()
        elif state is State.DATA:
            core.encode_data(b"Subject: fuzz\r\n\r\n.hello\n")
            core.end_data()

    try:
        for chunk in chunks:
            if core.state in (State.BROKEN, State.CLOSED):
                break
            core.receive_data(chunk)
            while (event := core.next_event()) is not None:
                assert event.reply.code // 100 in (2, 3, 4, 5)
                next_commands()
            core.data_to_send()
        core.receive_eof()
    except SMTPError:
        pass
    # A broken core stays broken: issuing a command on it is the caller's mistake.
    if core.state is State.BROKEN:
        try:
            core.noop()
        except SMTPUsageError:
            pass
        else:  # pragma: no cover - would be a bug
            raise AssertionError("a broken core accepted a command")
    for line in lines:
        assert "pencil-Secret" not in line and "fuzz-token" not in line, line


# ------------------------------------------------------------------ one input


def one_input(data: bytes) -> None:
    """The fuzz target: any exception but SMTPError from the library is a bug."""
    if len(data) < 3:
        return
    limits = LIMITS[data[0] % len(LIMITS)]
    stream = data[3:]
    expected, rejected = reference_parse(stream, limits)
    chunks = cut(stream, data[2])
    for pieces in (chunks, [stream]):
        replies, failed = parse_stream(pieces, limits)
        assert failed == rejected, (failed, rejected, limits, stream)
        assert replies == expected, (replies, expected, limits, stream)
    drive_core(chunks, data[1])


# ------------------------------------------------------------------ seeds

#: A starting corpus: greetings, EHLO, AUTH exchanges (SCRAM with the fixed nonce),
#: an OAuth error challenge, a 421, pipelined transactions, bytes that are not UTF-8.
SEEDS: Sequence[bytes] = (
    b"\x00\x00\x00220 mail.example ESMTP\r\n250-mail.example\r\n250-PIPELINING\r\n"
    b"250-AUTH PLAIN LOGIN\r\n250 SIZE 1000\r\n250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n"
    b"250 2.0.0 queued\r\n221 bye\r\n",
    b"\x00\x10\x00220 x\r\n250-x\r\n250 PIPELINING\r\n250 ok\r\n250 ok\r\n550 5.1.1 no\r\n"
    b"354 go\r\n554 5.5.1 no valid recipients\r\n221 2.0.0 bye\r\n",
    b"\x01\x02\x05220-a\r\n220 b\n250 x\r\n334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 ok\r\n",
    b"\x00\x18\x03220 x\r\n250-x\r\n250 STARTTLS\r\n220 go\r\n250 x\r\n",
    b"\x02\x04\x07220 x\r\n250 AUTH SCRAM-SHA-256\r\n"
    b"334 cj1mdXp6bm9uY2VTRVJWRVIscz1RU0E9LGk9NDA5Ng==\r\n",
    b"\x00\x05\x00220 x\r\n250 AUTH XOAUTH2\r\n334 eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIn0=\r\n"
    b"535 5.7.8 no\r\n",
    b"\x03\x00\x01421 4.3.2 bye\r\n",
    b"\x00\x00\x00250-\xc3\xa9\r\n250 \xff\r\n",
)


#: The corpus that the 10⁶-input atheris run built (one base64 input a line).
CORPUS_FILE = Path(__file__).with_name("corpus.b64")


def corpus() -> list[bytes]:
    """The inputs of :data:`CORPUS_FILE`."""
    lines = CORPUS_FILE.read_text(encoding="ascii").splitlines()
    return [base64.b64decode(line) for line in lines if line and not line.startswith("#")]
