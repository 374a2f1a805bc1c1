"""A scripted SMTP server on loopback that injects faults, for the chaos tests.

:class:`ChaosServer` listens on ``127.0.0.1`` (port 0) and speaks the server side of
RFC 5321 (EHLO/HELO, MAIL, RCPT, DATA with dot-unstuffing, RSET, NOOP, QUIT), RFC 3030
(CHUNKING: ``BDAT n [LAST]``), RFC 2920 (PIPELINING), 8BITMIME, SIZE and
ENHANCEDSTATUSCODES, in plaintext or over implicit TLS. It shares no code with the client
(only the test certificates come from :mod:`trio_sendmail.testing`).

It records what it **stored**: a message is stored at the moment the server commits the
end of its data (the final dot, or ``BDAT … LAST``), *before* the reply is written, keyed
by the ``Message-ID`` header of its content. A refusal of the end of data never stores.

Apart from the injected faults it is a correct server. Faults are drawn from a seeded
:class:`random.Random` (one per connection, derived from the server's seed and the
connection's number) at every point of the dialogue:

* ``421`` instead of the normal reply to any command (the command has no effect), or
  sent unsolicited after the normal reply; the server then closes and reads nothing more
  (RFC 5321 §3.8);
* EOF (a clean close) or RST (``SO_LINGER`` 0) at any point: before a reply, in the
  middle of message data, after storing a message but before replying, after a reply;
* silence longer than the client's timeouts, then EOF;
* short delays before replies;
* 4xx/5xx refusals of MAIL, RCPT, DATA, of a BDAT chunk and of the end of data;
* a stray, unsolicited reply: before the greeting, or between transactions while the
  client is idle. A stray sent between transactions is written only when the client has
  sent nothing since the last reply and its socket holds nothing either (checked without
  yielding to other tasks), so a careful client can tell it from a real reply: it is in
  the client's socket before the client writes its next command. Strays between
  transactions are only sent on plaintext connections (under TLS the check would need the
  TLS layer's private buffers).

Each connection keeps a time-stamped story (every line received, every reply sent, every
fault and every message stored), printed by the tests when a check fails.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
import select
import socket
import ssl
import struct
from collections.abc import Sequence

import attrs
import trio

__all__ = [
    "VARIANTS",
    "Chaos",
    "ChaosServer",
    "ConnLog",
    "Stored",
    "Variant",
]

SERVER_NAME = "chaos.example.test"
SIZE_LIMIT = 10 * 1024 * 1024
MAX_COMMAND_LINE = 512  # RFC 5321 §4.5.3.1.4, CRLF included
_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*<([^>\r\n]+)>", re.IGNORECASE | re.MULTILINE)
_PATH = re.compile(r"^<([^<>\s]*)>((?: [^ ]+)*)$")


@attrs.frozen
class Variant:
    """Which of CHUNKING and PIPELINING the server offers."""

    name: str
    chunking: bool
    pipelining: bool

    @property
    def extensions(self) -> tuple[str, ...]:
        extensions = ["8BITMIME", f"SIZE {SIZE_LIMIT}", "ENHANCEDSTATUSCODES"]
        if self.pipelining:
            extensions.append("PIPELINING")
        if self.chunking:
            extensions.append("CHUNKING")
        return tuple(extensions)


VARIANTS = (
    Variant("lockstep", chunking=False, pipelining=False),
    Variant("pipelining", chunking=False, pipelining=True),
    Variant("chunking", chunking=True, pipelining=False),
    Variant("chunking-pipelining", chunking=True, pipelining=True),
)


@attrs.frozen
class Chaos:
    """How much chaos: probabilities, per connection, drawn from the seed."""

    #: A connection's fault rate (the probability of a fault at each fault point) is
    #: drawn from these; 0 gives clean connections.
    fault_rates: tuple[float, ...] = (0.0, 0.03, 0.08, 0.2)
    #: The probability of a short delay before each reply, and its bound in seconds.
    delay_rate: float = 0.25
    max_delay: float = 0.004
    #: The probability of a stray reply at each chance (before the greeting, when idle).
    stray_rate: float = 0.15
    #: How long the server waits for the client to stay quiet before a stray.
    stray_quiet: float = 0.002
    #: How long "silence" lasts (longer than the client's timeouts), then EOF.
    hang: float = 0.4
    #: Relative weight of silence among the faults (it costs the most time).
    hang_weight: float = 0.15
    #: Scales the fault rate at the greeting and EHLO (a pool backs off after a
    #: failed connection, which costs real time).
    opening_factor: float = 0.3


@attrs.frozen
class Stored:
    """A message the server committed."""

    message_id: str | None
    conn: int
    at: float
    via: str  # "DATA" or "BDAT"
    data: bytes


class ClientGone(Exception):
    """The client closed the connection, or it broke."""


class Hangup(Exception):
    """The server ended the connection (a fault, or after QUIT)."""


@attrs.define(eq=False)
class ConnLog:
    """The story of one connection."""

    number: int
    tls: bool
    started: float
    fault_rate: float
    events: list[tuple[float, str]] = attrs.field(factory=list)
    #: What identifies the messages this connection carried: the Message-IDs seen in
    #: message data (whole or partial) and the reverse-paths of MAIL commands.
    tags: set[str] = attrs.field(factory=set)
    ended: float | None = None
    open: bool = True

    def render(self, origin: float) -> str:
        head = (
            f"--- connection #{self.number} ({'TLS' if self.tls else 'plain'}, "
            f"fault rate {self.fault_rate}) opened at {1000 * (self.started - origin):.1f} ms"
        )
        lines = [head]
        lines += [f"  {1000 * (at - origin):8.1f} ms  {text}" for at, text in self.events]
        return "\n".join(lines)


@attrs.define(eq=False)
class _Transaction:
    sender: str
    body: str | None
    recipients: list[str] = attrs.field(factory=list)
    #: BDAT data so far (None until the first BDAT).
    chunks: bytearray | None = None
    #: A BDAT chunk was refused: every later chunk is discarded (RFC 3030 §2).
    failed: bool = False


_STRAYS = (
    b"250 2.0.0 Ok\r\n",
    b"250 2.0.0 Ok: queued as STRAY\r\n",
    b"220 chaos.example.test stray greeting\r\n",
    b"354 stray go ahead\r\n",
    b"550 5.7.1 stray refusal\r\n",
    b"250-stray\r\n250 2.0.0 multi-line stray\r\n",
)
_REFUSALS = {
    "MAIL": ((451, "4.3.0 sender temporarily refused"), (550, "5.7.1 sender refused")),
    "RCPT": ((450, "4.2.1 mailbox busy"), (550, "5.1.1 no such user")),
    "DATA": ((451, "4.3.0 not now"), (554, "5.5.1 no data for you")),
    "BDAT": ((451, "4.3.0 chunk refused"), (554, "5.6.0 chunk refused")),
    "END": ((451, "4.3.0 message deferred"), (554, "5.7.1 message refused")),
}


class _Connection:
    """The server side of one accepted connection."""

    def __init__(
        self,
        server: ChaosServer,
        sock: trio.SocketStream,
        log: ConnLog,
        rng: random.Random,
    ) -> None:
        self.server = server
        self.sock = sock
        self.stream: trio.abc.Stream = sock
        self.log = log
        self.rng = rng
        self.buffer = bytearray()
        self.txn: _Transaction | None = None
        self.greeted = False

    # ------------------------------------------------------------------ the story

    def note(self, text: str) -> None:
        self.log.events.append((trio.current_time(), text))

    # ------------------------------------------------------------------ fault draws

    def fault(self, point: str, kinds: Sequence[str], factor: float = 1.0) -> str | None:
        """One fault among *kinds* (silence weighs less), or None."""
        if not kinds or self.rng.random() >= self.log.fault_rate * factor:
            return None
        weights = [self.server.chaos.hang_weight if k == "hang" else 1.0 for k in kinds]
        kind = self.rng.choices(list(kinds), weights)[0]
        self.note(f"!! fault at {point}: {kind}")
        return kind

    async def maybe_delay(self) -> None:
        chaos = self.server.chaos
        if self.rng.random() < chaos.delay_rate:
            delay = self.rng.uniform(0, chaos.max_delay)
            self.note(f".. delay {1000 * delay:.1f} ms")
            await trio.sleep(delay)

    # ------------------------------------------------------------------ I/O

    async def send(self, data: bytes, *, delay: bool = True) -> None:
        if delay:
            await self.maybe_delay()
        for line in data.decode("utf-8", "replace").split("\r\n")[:-1]:
            self.note(f"S: {line}")
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.note("   (the reply could not be written: connection broken)")
            raise ClientGone from exc

    async def reply(self, code: int, text: str) -> None:
        await self.send(f"{code} {text}\r\n".encode())

    async def fill(self) -> None:
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.note(f"client connection broken: {exc!r}")
            raise ClientGone from exc
        if not data:
            self.note("client closed (EOF)")
            raise ClientGone
        self.buffer += data

    async def read_line(self, limit: int = MAX_COMMAND_LINE) -> bytes | None:
        """One line without its CRLF, or None if it was too long (the line is dropped)."""
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > 4 * limit:
                del self.buffer[:]
                return None
            await self.fill()
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        if end + 2 > limit:
            return None
        return line

    async def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            await self.data_fault("BDAT chunk")
            await self.fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def client_sent_more(self) -> bool:
        """Whether the client has sent anything not yet handled (never yields)."""
        if self.buffer:
            return True
        if self.stream is not self.sock:  # pragma: no cover - strays are plaintext only
            return True
        fd = self.sock.socket.fileno()
        if fd < 0:
            return True
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))

    # ------------------------------------------------------------------ ending it

    async def eof(self) -> None:
        self.note("!! EOF: the server closes the connection")
        if self.stream is not self.sock and self.rng.random() < 0.5:
            with trio.move_on_after(0.05):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.stream.aclose()  # close_notify, then FIN
        await self.sock.aclose()
        raise Hangup

    async def rst(self) -> None:
        self.note("!! RST: the server resets the connection")
        raw = self.sock.socket
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()
        raise Hangup

    async def hang(self) -> None:
        self.note(f"!! silence for {1000 * self.server.chaos.hang:.0f} ms, then EOF")
        await trio.sleep(self.server.chaos.hang)
        await self.eof()

    async def close_421(self, text: str = "4.3.2 Service shutting down") -> None:
        await self.reply(421, text)
        await self.eof()

    async def abort(self, kind: str) -> None:
        """Apply a fault that ends the connection."""
        if kind == "421":
            await self.close_421()
        elif kind == "eof":
            await self.eof()
        elif kind == "rst":
            await self.rst()
        elif kind == "hang":
            await self.hang()
        raise AssertionError(kind)  # pragma: no cover

    async def data_fault(self, where: str) -> None:
        """While message data flows: maybe end the connection."""
        kind = self.fault(f"reading {where}", ("eof", "rst"), 0.5)
        if kind is not None:
            await self.abort(kind)

    async def after_reply(self, verb: str) -> None:
        """After a reply: maybe an unsolicited 421 (own packet), EOF or RST."""
        kind = self.fault(f"after the reply to {verb}", ("421", "eof", "rst"))
        if kind == "421":
            await trio.sleep(self.rng.uniform(0, 0.002))
            await self.send(b"421 4.3.2 Shutting down now\r\n", delay=False)
            await self.eof()
        elif kind is not None:
            await self.abort(kind)

    async def maybe_stray(self, where: str) -> None:
        """Between transactions: a stray reply, only while the client is idle."""
        chaos = self.server.chaos
        if self.stream is not self.sock or self.rng.random() >= chaos.stray_rate:
            return
        stray = self.rng.choice(_STRAYS)
        await trio.sleep(chaos.stray_quiet)
        if self.client_sent_more():
            self.note(f".. no stray {where}: the client already sent its next command")
            return
        self.note(f"!! stray reply {where}, the client being idle:")
        await self.send(stray, delay=False)

    def violation(self, text: str) -> None:
        self.note(f"!! CLIENT VIOLATION: {text}")
        self.server.violations.append((self.log.number, text))

    def check_group_end(self, verb: str, *, last: bool) -> None:
        """RFC 2920: pipelining only when offered; some commands end a group."""
        if not self.buffer:
            return
        if not self.server.variant.pipelining:
            self.violation(f"more bytes after {verb} before its reply, without PIPELINING")
        elif last:
            self.violation(f"more bytes after {verb}, which must end a pipelined group")

    # ------------------------------------------------------------------ the dialogue

    async def run(self) -> None:
        server = self.server
        if self.log.tls:
            assert server.ssl_context is not None
            kind = self.fault(
                "before the TLS handshake", ("eof", "rst"), server.chaos.opening_factor
            )
            if kind is not None:
                await self.abort(kind)
            self.stream = trio.SSLStream(self.sock, server.ssl_context, server_side=True)
            try:
                await self.stream.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.note(f"TLS handshake failed: {exc!r}")
                raise ClientGone from exc
            self.note("TLS handshake done")
        factor = server.chaos.opening_factor
        if self.rng.random() < server.chaos.stray_rate * factor:
            self.note("!! stray reply before the greeting:")
            await self.send(self.rng.choice(_STRAYS), delay=False)
            await trio.sleep(0.002)
        kind = self.fault("the greeting", ("421", "eof", "rst", "hang"), factor)
        if kind is not None:
            await self.abort(kind)
        await self.send(f"220 {SERVER_NAME} ESMTP chaos\r\n".encode())
        while True:
            line = await self.read_line()
            if line is None:
                self.note("C: <a line longer than 512 octets>")
                self.check_group_end("a long line", last=False)
                await self.reply(500, "5.5.2 Line too long")
                continue
            text = line.decode("utf-8", "replace")
            self.note(f"C: {text}")
            verb, _, arg = text.partition(" ")
            verb = verb.upper()
            handler = getattr(self, f"cmd_{verb.lower()}", None) if verb.isalpha() else None
            if handler is None:
                self.check_group_end(verb, last=False)
                await self.command_fault(verb)
                await self.reply(500, "5.5.2 Command not recognized")
                await self.after_reply(verb)
                continue
            await handler(arg)

    async def command_fault(self, verb: str, *, factor: float = 1.0) -> bool:
        """Before a command takes effect: maybe end the connection, or (for MAIL,
        RCPT, DATA and BDAT) answer with a refusal. True when a refusal was sent."""
        kinds = ["421", "eof", "rst", "hang"]
        if verb in _REFUSALS:
            kinds += ["refuse", "refuse"]
        kind = self.fault(f"command {verb}", kinds, factor)
        if kind is None:
            return False
        if kind == "refuse":
            code, text = self.rng.choice(_REFUSALS[verb])
            await self.reply(code, text)
            return True
        await self.abort(kind)
        return False  # pragma: no cover

    async def finish(self, verb: str, code: int, text: str) -> None:
        """The normal reply to a command, and the faults around it."""
        kind = self.fault(f"after {verb} took effect, before its reply", ("eof", "rst", "hang"))
        if kind is not None:
            await self.abort(kind)
        await self.reply(code, text)
        await self.after_reply(verb)

    # ------------------------------------------------------------------ commands

    async def cmd_ehlo(self, arg: str) -> None:
        self.check_group_end("EHLO", last=True)
        if await self.command_fault("EHLO", factor=self.server.chaos.opening_factor):
            return  # pragma: no cover - EHLO is never refused
        if not arg:
            await self.reply(501, "5.5.4 Syntax: EHLO domain")
            return
        self.txn = None
        self.greeted = True
        lines = [SERVER_NAME, *self.server.variant.extensions]
        reply = "".join(
            f"250{' ' if i == len(lines) - 1 else '-'}{line}\r\n" for i, line in enumerate(lines)
        )
        await self.send(reply.encode())
        await self.after_reply("EHLO")
        await self.maybe_stray("after EHLO")

    async def cmd_helo(self, arg: str) -> None:
        self.check_group_end("HELO", last=True)
        await self.command_fault("HELO")
        self.txn = None
        self.greeted = True
        await self.finish("HELO", 250, SERVER_NAME)

    async def cmd_noop(self, arg: str) -> None:
        self.check_group_end("NOOP", last=True)
        await self.command_fault("NOOP")
        await self.finish("NOOP", 250, "2.0.0 Ok")

    async def cmd_rset(self, arg: str) -> None:
        self.check_group_end("RSET", last=False)
        await self.command_fault("RSET")
        self.txn = None
        await self.finish("RSET", 250, "2.0.0 Ok")
        await self.maybe_stray("after RSET")

    async def cmd_quit(self, arg: str) -> None:
        self.check_group_end("QUIT", last=True)
        await self.command_fault("QUIT")
        await self.reply(221, "2.0.0 Bye")
        self.note("closing after QUIT")
        if self.stream is not self.sock:
            with trio.move_on_after(0.05):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.stream.aclose()
        await self.sock.aclose()
        raise Hangup

    async def cmd_mail(self, arg: str) -> None:
        self.check_group_end("MAIL", last=False)
        if await self.command_fault("MAIL"):
            await self.after_reply("MAIL")
            return
        if not self.greeted:
            await self.finish("MAIL", 503, "5.5.1 Send EHLO first")
            return
        if self.txn is not None:
            await self.finish("MAIL", 503, "5.5.1 Nested MAIL command")
            return
        match = _PATH.match(arg[5:]) if arg[:5].upper() == "FROM:" else None
        if match is None:
            await self.finish("MAIL", 501, "5.5.4 Syntax: MAIL FROM:<address>")
            return
        body: str | None = None
        for param in match.group(2).split():
            key, _, value = param.partition("=")
            key = key.upper()
            if key == "SIZE" and value.isdigit():
                if int(value) > SIZE_LIMIT:
                    await self.finish("MAIL", 552, "5.3.4 Message too big")
                    return
            elif key == "BODY" and value.upper() in ("7BIT", "8BITMIME"):
                body = value.upper()
            else:
                await self.finish("MAIL", 555, f"5.5.4 Unsupported parameter {param[:30]}")
                return
        self.txn = _Transaction(sender=match.group(1), body=body)
        self.log.tags.add(match.group(1))
        await self.finish("MAIL", 250, "2.1.0 Ok")

    async def cmd_rcpt(self, arg: str) -> None:
        self.check_group_end("RCPT", last=False)
        if await self.command_fault("RCPT"):
            await self.after_reply("RCPT")
            return
        txn = self.txn
        if txn is None:
            await self.finish("RCPT", 503, "5.5.1 Need MAIL command")
            return
        match = _PATH.match(arg[3:]) if arg[:3].upper() == "TO:" else None
        if match is None or not match.group(1) or match.group(2):
            await self.finish("RCPT", 501, "5.5.4 Syntax: RCPT TO:<address>")
            return
        txn.recipients.append(match.group(1))
        await self.finish("RCPT", 250, "2.1.5 Ok")

    def transaction_refusal(self, verb: str) -> tuple[int, str] | None:
        txn = self.txn
        if txn is None:
            return 503, "5.5.1 Need MAIL command"
        if not txn.recipients:
            return 554, "5.5.1 No valid recipients"
        if verb == "DATA" and txn.chunks is not None:
            return 503, "5.5.1 DATA after BDAT"
        if verb == "BDAT" and txn.failed:
            return 503, "5.5.1 The transaction failed: RSET first"
        return None

    async def cmd_data(self, arg: str) -> None:
        self.check_group_end("DATA", last=True)
        if await self.command_fault("DATA"):
            await self.after_reply("DATA")
            return
        refusal = self.transaction_refusal("DATA")
        if arg:
            refusal = 501, "5.5.4 Syntax: DATA"
        if refusal is not None:
            await self.finish("DATA", *refusal)
            return
        await self.finish("DATA", 354, "End data with <CR><LF>.<CR><LF>")
        data = bytearray()
        seen_id = False
        while True:
            while (end := self.buffer.find(b"\r\n")) < 0:
                await self.data_fault("message data")
                await self.fill()
            line = bytes(self.buffer[:end])
            del self.buffer[: end + 2]
            if line == b".":
                break
            if b"\r" in line or b"\n" in line:
                self.violation(f"a bare CR or LF in the message data: {line[:60]!r}")
            data += (line[1:] if line.startswith(b".") else line) + b"\r\n"
            if not seen_id and (found := _MESSAGE_ID.search(data)):
                seen_id = True
                self.saw_message(found.group(1).decode("ascii", "replace"), "DATA")
        self.note(f"C: <message data: {len(data)} octets, then the final dot>")
        self.check_group_end("the final dot", last=False)
        await self.end_of_data(bytes(data), "DATA")

    async def cmd_bdat(self, arg: str) -> None:
        if not self.server.variant.chunking:
            self.check_group_end("BDAT", last=False)
            await self.finish("BDAT", 500, "5.5.2 Command not recognized")
            return
        words = arg.split(" ")
        last = len(words) == 2 and words[1].upper() == "LAST"
        if not (words[0].isdigit() and len(words[0]) < 12 and (len(words) == 1 or last)):
            self.check_group_end("BDAT", last=False)
            await self.finish("BDAT", 501, "5.5.4 Syntax: BDAT size [LAST]")
            return
        size = int(words[0])
        kind = self.fault("command BDAT, before its chunk", ("421", "eof", "rst", "hang"))
        if kind is not None:
            await self.abort(kind)
        # RFC 3030 §2: the chunk is read whether or not the command succeeds.
        chunk = await self.read_exactly(size)
        self.note(f"C: <chunk: {size} octets>")
        self.check_group_end("a BDAT chunk", last=False)
        refusal = self.transaction_refusal("BDAT")
        txn = self.txn
        if refusal is not None or txn is None:
            assert refusal is not None
            await self.finish("BDAT", *refusal)
            return
        if txn.chunks is None:
            txn.chunks = bytearray()
        had_id = _MESSAGE_ID.search(txn.chunks) is not None
        txn.chunks += chunk
        if not had_id and (found := _MESSAGE_ID.search(txn.chunks)):
            self.saw_message(found.group(1).decode("ascii", "replace"), "BDAT")
        if len(txn.chunks) > SIZE_LIMIT:
            txn.failed = True
            await self.finish("BDAT", 552, "5.3.4 Message too big")
            return
        if not last:
            kind = self.fault("a BDAT chunk", ("421", "eof", "rst", "hang", "refuse", "refuse"))
            if kind == "refuse":
                txn.failed = True
                await self.finish("BDAT", *self.rng.choice(_REFUSALS["BDAT"]))
            elif kind is not None:
                await self.abort(kind)
            else:
                await self.finish("BDAT", 250, f"2.0.0 {size} octets received")
            return
        data = bytes(txn.chunks)
        for line in data.split(b"\r\n")[:-1]:
            if b"\r" in line or b"\n" in line:
                self.violation(f"a bare CR or LF in the message data: {line[:60]!r}")
        if not data.endswith(b"\r\n"):
            self.violation("the BDAT data does not end with CRLF")
        await self.end_of_data(data, "BDAT")

    def saw_message(self, message_id: str, via: str) -> None:
        self.log.tags.add(message_id)
        self.note(f"   (data of <{message_id}> via {via})")

    async def end_of_data(self, data: bytes, via: str) -> None:
        """The whole message arrived: refuse it, or store it and say so."""
        txn = self.txn
        assert txn is not None
        self.txn = None
        if not data.isascii() and txn.body != "8BITMIME":
            self.violation("8-bit message data without BODY=8BITMIME")
        found = _MESSAGE_ID.search(data.split(b"\r\n\r\n", 1)[0])
        message_id = found.group(1).decode("ascii", "replace") if found else None
        verb = "BDAT LAST" if via == "BDAT" else "the final dot"
        kind = self.fault(f"the end of data of <{message_id}>", ("421", "eof", "rst", "hang"))
        if kind is not None:
            await self.abort(kind)  # nothing stored
        if self.rng.random() < self.log.fault_rate:
            code, text = self.rng.choice(_REFUSALS["END"])
            self.note(f"!! fault at the end of data: refused, <{message_id}> NOT stored")
            await self.reply(code, text)
            await self.after_reply(verb)
            await self.maybe_stray("after a refused message")
            return
        stored = Stored(message_id, self.log.number, trio.current_time(), via, data)
        self.server.stored.setdefault(message_id, []).append(stored)
        self.note(f"** STORED <{message_id}> ({len(data)} octets via {via})")
        kind = self.fault(
            f"after storing <{message_id}>, before the reply", ("eof", "rst", "hang")
        )
        if kind is not None:
            await self.abort(kind)
        await self.reply(250, f"2.0.0 Ok: queued as Q{len(self.server.stored)}")
        await self.after_reply(verb)
        await self.maybe_stray("after a stored message")


@attrs.define(eq=False)
class ChaosServer:
    """Serves the chaos dialogue on every connection, on loopback."""

    seed: str
    variant: Variant
    chaos: Chaos = attrs.field(factory=Chaos)
    #: For implicit TLS: the handshake comes first on every connection.
    ssl_context: ssl.SSLContext | None = None
    #: Every message stored, by Message-ID (None: stored without a Message-ID).
    stored: dict[str | None, list[Stored]] = attrs.field(factory=dict)
    conns: list[ConnLog] = attrs.field(factory=list)
    #: Client protocol violations: (connection number, what).
    violations: list[tuple[int, str]] = attrs.field(factory=list)
    origin: float = 0.0
    listener: trio.SocketListener | None = None
    _sockets: list[trio.SocketStream] = attrs.field(factory=list)
    _finished: list[trio.Event] = attrs.field(factory=list)

    def open_fds(self) -> int:
        """The descriptors the server holds: its listener and its open connections."""
        listening = self.listener is not None and self.listener.socket.fileno() != -1
        return int(listening) + sum(sock.socket.fileno() != -1 for sock in self._sockets)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        self.origin = trio.current_time()
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        assert isinstance(listener, trio.SocketListener)
        self.listener = listener
        port: int = listener.socket.getsockname()[1]
        async with listener, trio.open_nursery() as nursery:
            task_status.started(port)
            while True:
                sock = await listener.accept()
                assert isinstance(sock, trio.SocketStream)
                number = len(self.conns)
                rng = random.Random(f"{self.seed}/connection {number}")
                log = ConnLog(
                    number=number,
                    tls=self.ssl_context is not None,
                    started=trio.current_time(),
                    fault_rate=rng.choice(self.chaos.fault_rates),
                )
                self.conns.append(log)
                self._sockets.append(sock)
                finished = trio.Event()
                self._finished.append(finished)
                nursery.start_soon(self._handle, _Connection(self, sock, log, rng), finished)

    async def _handle(self, conn: _Connection, finished: trio.Event) -> None:
        conn.note("accepted")
        try:
            await conn.run()
        except (ClientGone, Hangup):
            pass
        finally:
            conn.log.ended = trio.current_time()
            conn.log.open = False
            finished.set()
            await trio.aclose_forcefully(conn.sock)

    async def settle(self, timeout: float = math.inf) -> bool:
        """Wait until every connection has ended (True), or *timeout* passed (False)."""
        with trio.move_on_after(timeout):
            for finished in self._finished:
                await finished.wait()
            return True
        return False

    def stories(
        self, *tags: str, start: float = -math.inf, end: float = math.inf, limit: int = 8
    ) -> str:
        """The stories of the connections that carried a message with one of *tags* (its
        Message-ID or its reverse-path), or else of the last ones open during [start, end]
        or shortly before (a client may find out late that the server closed)."""
        chosen = [log for log in self.conns if log.tags.intersection(tags)]
        if not chosen:
            chosen = [
                log
                for log in self.conns
                if log.started <= end and (log.ended is None or log.ended >= start - 0.25)
            ][-limit:]
        text = [log.render(self.origin) for log in chosen[:limit]]
        if len(chosen) > limit:
            text.append(f"--- ({len(chosen) - limit} more connections not shown)")
        return "\n".join(text) if text else "--- (no connection)"
