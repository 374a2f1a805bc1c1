"""SMTP smuggling proof: no early end of data, whatever the body and its chunking.

Bodies hold the 2023 smuggling sequences (``\\n.\\n``, ``\\r.\\r\\n``, ``\\n.\\r\\n``,
``\\r\\n.\\r``), NULs and long lines. Each is split at every possible chunk boundary
(and sent one byte at a time, and whole), and:

* on the wire, no sequence that even a lenient server could take for the end of
  data (any line ending, a dot, any line ending) appears before the real end; with
  BDAT, every chunk is framed with its exact size and nothing follows a chunk but a
  command;
* what the server stores is exactly the normalised body: the strict fake server,
  aiosmtpd (strict about CRLF), and Postfix (which accepts a bare LF as a line end,
  so a smuggled ``\\n.\\n`` would end the message there and run what follows as
  commands), over DATA and over BDAT (CHUNKING).
"""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from functools import partial
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AioSMTP
from aiosmtpd.smtp import Envelope
from aiosmtpd.smtp import Session as AioSession
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trio_sendmail as ts
from trio_sendmail._data import DataEncoder
from trio_sendmail.testing import FakeSMTPServer

from .. import defaults
from ..helpers import VARIANTS, ServerVariant
from ..postfix_plugin import PostfixEnv
from ..test_data import reference_normalize
from .support import RecordingStream

PLAIN = ts.TLSMode.INSECURE_PLAINTEXT
SMUGGLERS = [b"\n.\n", b"\r.\r\n", b"\n.\r\n", b"\r\n.\r", b"\r.\r", b"\r\n.\n", b"\r\n.\r\n"]
ATOMS = [*SMUGGLERS, b"\x00", b"\r", b"\n", b".", b"..", b"a", b"\xff", b"MAIL FROM:<e@x>"]
SHORT_BODIES = st.lists(st.one_of(st.sampled_from(ATOMS), st.binary(max_size=2)), max_size=12).map(
    b"".join
)
#: With at most one long line (1200 bytes, longer than RFC 5321's 1000).
BODIES = st.builds(
    lambda head, long, tail: head + long + tail,
    SHORT_BODIES,
    st.sampled_from([b"", b"L" * 1200, b"\x00" * 1100]),
    SHORT_BODIES,
)
#: Bodies that every server test uses, whatever Hypothesis draws.
TRICKY = [
    b"a\n.\nMAIL FROM:<evil@example.test>\nRCPT TO:<victim@example.test>\nDATA\nx\n.\nb",
    b"\r.\r\n\n.\r\n\r\n.\r.\x00\r\n..\r\n.",
    b".\r\n",
    b"\n.",
    b"x" * 1500 + b"\r.\r" + b"y" * 1500,
]

#: Anything a lenient server could read as the end of data: a line ending (CRLF, CR
#: or LF), a dot, a line ending; or a dot and a line ending at the very start.
_LENIENT_END = re.compile(rb"(?=(?:\r\n|\r|\n)\.(?:\r\n|\r|\n))")
_START_END = re.compile(rb"\.(?:\r\n|\r|\n)")


def normalise(body: bytes) -> bytes:
    return reference_normalize(body)


def check_data_wire(wire: bytes) -> None:
    """*wire* (after 354, final dot included) has one end of data, at its end, even for a
    server that takes a bare CR or LF for a line ending."""
    if wire == b".\r\n":
        return
    assert wire.endswith(b"\r\n.\r\n"), wire[-10:]
    early = [m.start() for m in _LENIENT_END.finditer(wire) if m.start() < len(wire) - 5]
    assert early == [], (early, wire)
    assert _START_END.match(wire) is None, wire[:10]


def check_data_wire_fast(wire: bytes) -> None:
    """The same as :func:`check_data_wire`, by counting: with no bare CR and no bare LF
    on the wire, the only possible end of data is CRLF . CRLF."""
    if wire == b".\r\n":
        return
    crlf = wire.count(b"\r\n")
    assert wire.count(b"\r") == crlf == wire.count(b"\n"), "a bare CR or LF"
    assert wire.find(b"\r\n.\r\n") == len(wire) - 5 and not wire.startswith(b".\r\n")


def splits(body: bytes) -> Iterator[list[bytes]]:
    """The body whole, one byte at a time, and cut in two at every boundary."""
    yield [body]
    yield [body[i : i + 1] for i in range(len(body))]
    for i in range(len(body) + 1):
        yield [body[:i], body[i:]]


def window_splits(body: bytes, radius: int = 3) -> Iterator[list[bytes]]:
    """For long bodies: every boundary near a CR, LF, dot or NUL, and near the ends."""
    yield [body]
    points: set[int] = set()
    for i, byte in enumerate(body):
        if byte in b"\r\n.\x00" or i < radius or i > len(body) - radius:
            points.update(range(max(0, i - radius), min(len(body), i + radius) + 1))
    for i in sorted(points):
        yield [body[:i], body[i:]]


# ------------------------------------------------------------------ the encoder alone


@settings(max_examples=40, deadline=None)
@given(body=BODIES)
def test_encoder_never_emits_an_early_end_of_data(body: bytes) -> None:
    expected = normalise(body)
    whole = None
    for chunks in splits(body):
        data = DataEncoder()
        wire = b"".join(data.encode(c) for c in chunks) + data.finish()
        if whole is None:
            check_data_wire(wire)
            whole = wire
        check_data_wire_fast(wire)
        assert wire == whole
        bdat = DataEncoder(stuff=False)
        assert b"".join(bdat.encode(c) for c in chunks) + bdat.finish() == expected


@pytest.mark.parametrize("body", TRICKY, ids=range(len(TRICKY)))
def test_encoder_on_the_tricky_bodies_in_every_split(body: bytes) -> None:
    for chunks in splits(body):
        data = DataEncoder()
        wire = b"".join(data.encode(c) for c in chunks) + data.finish()
        check_data_wire(wire)
        check_data_wire_fast(wire)


# ------------------------------------------------------------------ the client's wire


@attrs.frozen
class WireMessage:
    kind: str  # "DATA" or "BDAT"
    payload: bytes  # DATA: what follows 354, final dot included; BDAT: the chunks joined
    chunks: int


def parse_client_wire(wire: bytes) -> list[WireMessage]:
    """Split what the client sent into commands and message data, checking the framing."""
    messages: list[WireMessage] = []
    pos = 0
    bdat: list[bytes] = []
    while pos < len(wire):
        end = wire.index(b"\r\n", pos)
        line = wire[pos:end]
        pos = end + 2
        verb = line.split(b" ", 1)[0].upper()
        assert verb in {b"EHLO", b"MAIL", b"RCPT", b"DATA", b"BDAT", b"RSET", b"QUIT"}, line
        if verb == b"DATA":
            at_once = wire.startswith(b".\r\n", pos)
            stop = pos + 3 if at_once else wire.index(b"\r\n.\r\n", pos) + 5
            messages.append(WireMessage("DATA", wire[pos:stop], 1))
            pos = stop
        elif verb == b"BDAT":
            words = line.split(b" ")
            size = int(words[1])
            bdat.append(wire[pos : pos + size])
            assert len(bdat[-1]) == size
            pos += size
            if len(words) == 3:
                assert words[2] == b"LAST"
                messages.append(WireMessage("BDAT", b"".join(bdat), len(bdat)))
                bdat = []
    return messages


async def as_stream(chunks: Sequence[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


# ------------------------------------------------------------------ the fake server


async def send_all_splits(
    server: FakeSMTPServer, cases: list[list[bytes]], *, chunking: bool
) -> list[WireMessage]:
    client, server_stream = trio.testing.memory_stream_pair()
    recorder = RecordingStream(client)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, server_stream)
        async with defaults.open_session(
            "mail.example.test", tls=PLAIN, stream=recorder,
            chunking=chunking,
        ) as session:  # fmt: skip
            for chunks in cases:
                mail = chunks[0] if len(chunks) == 1 else as_stream(chunks)
                await session.send("a@example.com", ["b@example.com"], mail)
    return parse_client_wire(bytes(recorder.written))


def check_fake_server(
    server: FakeSMTPServer, wire: list[WireMessage], bodies: list[bytes], kind: str
) -> None:
    assert len(server.messages) == len(bodies) == len(wire)
    assert server.bare_line_endings == 0
    assert not any(b"evil" in line for _, line in server.transcript)
    for message, on_wire, body in zip(server.messages, wire, bodies, strict=True):
        assert message.data == normalise(body)
        assert on_wire.kind == kind
        if kind == "DATA":
            check_data_wire(on_wire.payload)
            assert on_wire.payload == message.raw
        else:
            assert on_wire.payload == message.data == normalise(body)


def _fake_server(variant: ServerVariant) -> FakeSMTPServer:
    return FakeSMTPServer(extensions=variant.extensions())


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=SHORT_BODIES)
def test_fake_server_receives_exactly_the_normalised_body(
    body: bytes, variant: ServerVariant
) -> None:
    cases = list(splits(body))
    server = _fake_server(variant)
    wire = trio.run(partial(send_all_splits, server, cases, chunking=variant.chunking))
    check_fake_server(server, wire, [body] * len(cases), "BDAT" if variant.chunking else "DATA")


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
@pytest.mark.parametrize("body", TRICKY, ids=range(len(TRICKY)))
async def test_fake_server_tricky_bodies(body: bytes, variant: ServerVariant) -> None:
    cases = list(splits(body) if len(body) < 200 else window_splits(body))
    server = _fake_server(variant)
    wire = await send_all_splits(server, cases, chunking=variant.chunking)
    check_fake_server(server, wire, [body] * len(cases), "BDAT" if variant.chunking else "DATA")


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
async def test_a_line_longer_than_the_send_buffer(variant: ServerVariant) -> None:
    """A 200 KiB line with smuggling sequences around the 64 KiB write boundaries."""
    body = bytearray(b"z" * (200 * 1024))
    for at in (65536 - 2, 2 * 65536 - 1, 3 * 65536 - 3):
        body[at : at + 3] = b"\n.\n"
    data = bytes(body)
    cases = [[data], *([data[:i], data[i:]] for i in (65534, 65535, 65536, 65537, 131071))]
    server = _fake_server(variant)
    wire = await send_all_splits(server, cases, chunking=variant.chunking)
    check_fake_server(server, wire, [data] * len(cases), "BDAT" if variant.chunking else "DATA")
    if variant.chunking:
        assert all(message.chunks > 1 for message in wire)


# ------------------------------------------------------------------ aiosmtpd


class _LongLinesSMTP(AioSMTP):
    line_length_limit = 1 << 20


@attrs.define
class _Collector:
    contents: list[bytes] = attrs.field(factory=list)

    async def handle_DATA(self, server: AioSMTP, session: AioSession, envelope: Envelope) -> str:
        assert isinstance(envelope.original_content, bytes)
        self.contents.append(envelope.original_content)
        return "250 2.0.0 OK queued"


class _Controller(Controller):
    def factory(self) -> AioSMTP:
        return _LongLinesSMTP(self.handler, **self.SMTP_kwargs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def aiosmtpd_collector() -> Iterator[tuple[int, _Collector]]:
    collector = _Collector()
    controller = _Controller(collector, hostname="127.0.0.1", port=_free_port(),
                             decode_data=False)  # fmt: skip
    controller.start()
    try:
        yield controller.port, collector
    finally:
        controller.stop()


@pytest.mark.interop
@pytest.mark.parametrize("body", TRICKY, ids=range(len(TRICKY)))
async def test_aiosmtpd_receives_exactly_the_normalised_body(
    aiosmtpd_collector: tuple[int, _Collector], body: bytes
) -> None:
    port, collector = aiosmtpd_collector
    cases = list(splits(body) if len(body) < 200 else window_splits(body))
    async with defaults.open_session("127.0.0.1", port=port, tls=PLAIN) as session:
        for chunks in cases:
            mail = chunks[0] if len(chunks) == 1 else as_stream(chunks)
            await session.send("a@example.com", ["b@example.com"], mail)
    assert collector.contents == [normalise(body)] * len(cases)


# ------------------------------------------------------------------ Postfix

POSTFIX_TIMEOUTS = ts.Timeouts(connect=10, greeting=30, command=30, mail=30, rcpt=30,
                               data_init=30, data_block=60, data_end=60, quit=5)  # fmt: skip
DELIVERY_TIMEOUT = 30.0
PREPENDED = (b"return-path", b"delivered-to", b"received")


def _stored(path: Path) -> bytes:
    """A Maildir file without the three fields Postfix prepends."""
    data = path.read_bytes()
    pos = 0
    for name in PREPENDED:
        end = data.index(b"\n", pos)
        assert data[pos:end].split(b":", 1)[0].lower() == name, data[pos:end]
        pos = end + 1
        while data[pos : pos + 1] in (b" ", b"\t"):
            pos = data.index(b"\n", pos) + 1
    return data[pos:]


def _maildir(env: PostfixEnv, local: str) -> list[Path]:
    new = env.maildir_base / local.lower() / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


async def _wait_for(env: PostfixEnv, local: str, count: int) -> list[Path]:
    with trio.move_on_after(DELIVERY_TIMEOUT):
        while True:
            if len(_maildir(env, local)) >= count:
                break
            await trio.sleep(0.05)
    files = _maildir(env, local)
    assert len(files) == count, f"{len(files)} of {count} delivered (log: {env.log_file})"
    return files


@pytest.mark.postfix
@pytest.mark.parametrize("chunking", [False, True], ids=["DATA", "BDAT"])
async def test_postfix_stores_exactly_the_normalised_body(
    postfix: PostfixEnv, chunking: bool
) -> None:
    tag = uuid.uuid4().hex[:12]
    local, victim = f"smuggle-{tag}", f"victim-{tag}"
    attack = (
        b"before\n.\nMAIL FROM:<attacker@example.test>\nRCPT TO:<%s>\nDATA\n"
        b"Subject: smuggled\n\nsmuggled\n.\nQUIT\nafter\r.\r\n\n.\r\n\r\n.\r.\x00 end"
    ) % postfix.address(victim).encode()
    cases: list[tuple[bytes, list[bytes]]] = []
    for n, chunks in enumerate(splits(attack)):
        head = b"Subject: smuggling proof\r\nX-Case: %d\r\n\r\n" % n
        cases.append((head + b"".join(chunks), [head, *chunks]))
    async with defaults.open_session(
        postfix.host, port=postfix.plain_port, tls=PLAIN,
        timeouts=POSTFIX_TIMEOUTS, chunking=chunking,
    ) as session:  # fmt: skip
        for _, chunks in cases:
            await session.send(
                postfix.address("sender"), [postfix.address(local)], as_stream(chunks)
            )
    files = await _wait_for(postfix, local, len(cases))
    stored: dict[bytes, bytes] = {}
    for path in files:
        message = _stored(path)
        case = re.search(rb"\nX-Case: (\d+)\n", message)
        assert case is not None, message[:200]
        stored[case[1]] = message
    for n, (whole, _) in enumerate(cases):
        assert stored[b"%d" % n] == normalise(whole).replace(b"\r\n", b"\n")
    # Nothing was smuggled in: the would-be victim got nothing.
    await trio.sleep(0.5)
    assert _maildir(postfix, victim) == []
