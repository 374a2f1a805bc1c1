"""A library of scripted, misbehaving SMTP servers on loopback sockets.

A :class:`HostileServer` listens on ``127.0.0.1`` (port 0) and plays the server
side of a submission dialogue over raw sockets: TLS first for implicit TLS,
``STARTTLS`` and a handshake for STARTTLS, nothing for plaintext. The dialogue
is the well-behaved one of :class:`Dialogue`, except at the *hooks*: at a named
step (``"greeting"``, ``"mail"``, ``"dot"``, …) a :data:`Behaviour` replaces
the server's normal answer. A behaviour either stops the dialogue (the server
then reads whatever the client still sends until it closes, answering a QUIT)
or hangs (silence), or returns :data:`CONTINUE` to carry on as if it had
answered normally. With CHUNKING among its extensions the dialogue takes the
message as BDAT chunks (RFC 3030) instead of DATA; with PIPELINING, the commands
that may be pipelined are read before they are answered.

Everything the client sent is recorded per connection, so a test can check
what the client did *after* the misbehaviour (nothing, or only QUIT).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Literal

import attrs
import trio

import trio_sendmail as ts

PLAIN = ts.TLSMode.INSECURE_PLAINTEXT
IMPLICIT = ts.TLSMode.IMPLICIT
STARTTLS = ts.TLSMode.STARTTLS
ALL_MODES = frozenset({PLAIN, IMPLICIT, STARTTLS})
TLS_MODES = frozenset({IMPLICIT, STARTTLS})

#: A behaviour returns this to let the dialogue go on after it.
CONTINUE: Literal[True] = True

Step = Literal[
    "handshake",  # the TLS handshake (implicit: before the greeting; STARTTLS: after 220)
    "greeting",
    "ehlo",  # the reply to the first EHLO (plaintext in STARTTLS mode)
    "starttls",
    "ehlo_tls",  # the reply to the EHLO after the STARTTLS handshake
    "tls_first",  # the first reply under TLS: greeting (implicit) or ehlo_tls (STARTTLS)
    "auth",
    "mail",
    "rcpt",
    "data",
    # With PIPELINING: MAIL, RCPT and DATA (with CHUNKING: MAIL, RCPT, and BDAT LAST with a
    # small message's data) were read, none answered. Without an "envelope" hook, each is
    # answered in turn at its own step ("mail", "rcpt", "data" or "dot").
    "envelope",
    "body",  # 354 sent, or the first BDAT command read: the message data flows
    "dot",  # the final dot was read, or the BDAT LAST chunk
]


class ClientGone(Exception):
    """The client closed its side, or the connection broke."""


class StopDialogue(Exception):
    """The client sent something else than what the dialogue expected (e.g. QUIT)."""


Behaviour = Callable[["Conn"], Awaitable[bool | None]]


class Conn:
    """One accepted connection, seen from the scripted server."""

    def __init__(self, sock: trio.SocketStream, mode: ts.TLSMode, context: ssl.SSLContext) -> None:
        self.sock = sock
        self.stream: trio.abc.Stream = sock
        self.mode = mode
        self.context = context
        self.buffer = bytearray()
        #: Every command line received (without CRLF).
        self.lines: list[bytes] = []
        #: The lines received after the dialogue stopped (a hook fired, or an unexpected line).
        self.after: list[bytes] = []
        self.stopped = False
        self.hung = False
        self.finished = trio.Event()
        #: The message data, up to and including the final dot (BDAT: the chunks).
        self.data = b""

    # -------------------------------------------------------------- state

    @property
    def fd_open(self) -> bool:
        return self.sock.socket.fileno() != -1

    # -------------------------------------------------------------- I/O

    async def send(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ClientGone from exc

    async def _fill(self) -> None:
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ClientGone from exc
        if not data:
            raise ClientGone
        self.buffer += data

    async def line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            await self._fill()
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        self.lines.append(line)
        if self.stopped:
            self.after.append(line)
        return line

    async def expect(self, verb: bytes) -> bytes:
        line = await self.line()
        if not line.upper().startswith(verb):
            self.after.append(line)
            if line.upper() == b"QUIT":
                await self.send(b"221 2.0.0 Bye\r\n")
            raise StopDialogue(line)
        return line

    async def read_data(self) -> bytes:
        """Read message data up to and including the final dot."""
        while True:
            if self.buffer.startswith(b".\r\n"):
                end = 3
            else:
                found = self.buffer.find(b"\r\n.\r\n")
                end = found + 5 if found >= 0 else -1
            if end > 0:
                data = bytes(self.buffer[:end])
                del self.buffer[:end]
                return data
            await self._fill()

    async def read_exactly(self, count: int) -> bytes:
        """Read exactly *count* bytes (a BDAT chunk)."""
        while len(self.buffer) < count:
            await self._fill()
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    async def read_chunk(self, line: bytes) -> bool:
        """Read the chunk of the BDAT command *line* into :attr:`data`; True if LAST."""
        words = line.split()
        if len(words) not in (2, 3) or not words[1].isdigit():
            self.after.append(line)
            raise StopDialogue(line)
        self.data += await self.read_exactly(int(words[1]))
        return len(words) == 3 and words[2].upper() == b"LAST"

    async def read_some(self, at_least: int) -> None:
        """Read (and drop) at least *at_least* bytes."""
        seen = len(self.buffer)
        while seen < at_least:
            before = len(self.buffer)
            await self._fill()
            seen += len(self.buffer) - before
        self.buffer.clear()

    async def handshake(self) -> None:
        self.stream = trio.SSLStream(self.sock, self.context, server_side=True)
        try:
            await self.stream.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ClientGone from exc

    async def hang(self) -> None:
        self.hung = True
        await trio.sleep_forever()

    async def close(self) -> None:
        """A clean close: TLS close_notify (when under TLS), then FIN."""
        if self.stream is not self.sock:
            with trio.move_on_after(5):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.stream.aclose()
        await trio.aclose_forcefully(self.sock)

    async def close_tcp(self) -> None:
        """Close the TCP socket under the TLS layer: no close_notify (a truncation)."""
        await self.sock.aclose()

    def reset(self) -> None:
        """Close with SO_LINGER 0: the client gets an RST."""
        self.sock.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.socket.close()

    async def drain(self) -> None:
        """After the dialogue stopped: read until the client closes, answering QUIT."""
        self.stopped = True
        while True:
            line = await self.line()
            if line.upper() == b"QUIT":
                await self.send(b"221 2.0.0 Bye\r\n")


# ------------------------------------------------------------------ the dialogue


def ehlo_reply(caps: Sequence[str], name: str = "hostile.example.test") -> bytes:
    lines = [name, *caps]
    return b"".join(
        b"250%s%s\r\n" % (b" " if i == len(lines) - 1 else b"-", line.encode())
        for i, line in enumerate(lines)
    )


DEFAULT_CAPS: tuple[str, ...] = ("8BITMIME", "SIZE 10485760", "ENHANCEDSTATUSCODES")


@attrs.frozen
class Dialogue:
    """The well-behaved dialogue, and the hooks that replace parts of it."""

    hooks: Mapping[Step, Behaviour] = attrs.field(factory=dict)
    #: The extensions of the EHLO reply that the transaction uses (post-TLS in STARTTLS mode).
    caps: tuple[str, ...] = DEFAULT_CAPS
    #: The extensions offered before STARTTLS (STARTTLS mode only).
    pre_tls_caps: tuple[str, ...] = ("STARTTLS",)
    #: Expect AUTH (answered 235) before the transaction.
    auth: bool = False
    #: The message is small: with CHUNKING it comes as one ``BDAT n LAST`` (pipelined
    #: with MAIL and RCPT under PIPELINING); else as chunks after the envelope's replies.
    single: bool = True

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.caps

    @property
    def chunking(self) -> bool:
        return "CHUNKING" in self.caps

    async def _hook(self, conn: Conn, *names: Step) -> bool:
        """Run the hook of the first of *names* that has one: True when the dialogue stops."""
        for name in names:
            behaviour = self.hooks.get(name)
            if behaviour is not None:
                return await behaviour(conn) is not CONTINUE
        return False

    async def step(self, conn: Conn, names: Sequence[Step], reply: bytes) -> bool:
        """At a step: the hook, or the normal *reply*. True when the dialogue stops."""
        behaviour = next((self.hooks[n] for n in names if n in self.hooks), None)
        if behaviour is None:
            await conn.send(reply)
            return False
        return await behaviour(conn) is not CONTINUE

    async def run(self, conn: Conn) -> None:
        mode = conn.mode
        if mode is IMPLICIT:
            if await self._hook(conn, "handshake"):
                return
            await conn.handshake()
        greeting: list[Step] = ["greeting", "tls_first"] if mode is IMPLICIT else ["greeting"]
        if await self.step(conn, greeting, b"220 hostile.example.test ESMTP\r\n"):
            return
        await conn.expect(b"EHLO")
        if mode is STARTTLS:
            if await self.step(conn, ["ehlo"], ehlo_reply(self.pre_tls_caps)):
                return
            await conn.expect(b"STARTTLS")
            if await self.step(conn, ["starttls"], b"220 2.0.0 Ready to start TLS\r\n"):
                return
            if await self._hook(conn, "handshake"):
                return
            await conn.handshake()
            await conn.expect(b"EHLO")
            if await self.step(conn, ["ehlo_tls", "tls_first"], ehlo_reply(self.caps)):
                return
        elif await self.step(conn, ["ehlo"], ehlo_reply(self.caps)):
            return
        if self.auth:
            await conn.expect(b"AUTH")
            if await self.step(conn, ["auth"], b"235 2.7.0 Authentication successful\r\n"):
                return
        if self.chunking:
            if await self._bdat_transaction(conn):
                return
        elif await self._data_transaction(conn):
            return
        await conn.expect(b"QUIT")
        await conn.send(b"221 2.0.0 Bye\r\n")
        conn.stopped = True

    async def _envelope(self, conn: Conn, *steps: tuple[Step, bytes]) -> bool:
        """Answer pipelined commands already read: the "envelope" hook, or each *step*
        in turn. True when the dialogue stops."""
        if "envelope" in self.hooks:
            return await self._hook(conn, "envelope")
        for name, answer in steps:
            if await self.step(conn, [name], answer):
                return True
        return False

    async def _data_transaction(self, conn: Conn) -> bool:
        """MAIL, RCPT, DATA and the message; True when the dialogue stops."""
        if self.pipelining:
            await conn.expect(b"MAIL")
            await conn.expect(b"RCPT")
            await conn.expect(b"DATA")
            if await self._envelope(conn, ("mail", MAIL_OK), ("rcpt", RCPT_OK), ("data", GO)):
                return True
        else:
            await conn.expect(b"MAIL")
            if await self.step(conn, ["mail"], MAIL_OK):
                return True
            await conn.expect(b"RCPT")
            if await self.step(conn, ["rcpt"], RCPT_OK):
                return True
            await conn.expect(b"DATA")
            if await self.step(conn, ["data"], GO):
                return True
        if await self._hook(conn, "body"):
            return True
        conn.data = await conn.read_data()
        return await self.step(conn, ["dot"], QUEUED)

    async def _bdat_transaction(self, conn: Conn) -> bool:
        """MAIL, RCPT and the message in BDAT chunks (RFC 3030); True when the dialogue
        stops. A pipelined small message's ``BDAT n LAST`` and data are read with the
        envelope, before any reply (the client wrote them all at once)."""
        await conn.expect(b"MAIL")
        if not self.pipelining and await self.step(conn, ["mail"], MAIL_OK):
            return True
        await conn.expect(b"RCPT")
        if not self.pipelining and await self.step(conn, ["rcpt"], RCPT_OK):
            return True
        last = False
        if self.pipelining:
            if self.single:
                last = await conn.read_chunk(await conn.expect(b"BDAT"))
            if await self._envelope(conn, ("mail", MAIL_OK), ("rcpt", RCPT_OK)):
                return True
        first = True
        while not last:
            line = await conn.expect(b"BDAT")
            if first and await self._hook(conn, "body"):
                return True
            first = False
            last = await conn.read_chunk(line)
            if not last:
                await conn.send(b"250 2.0.0 Chunk received\r\n")
        return await self.step(conn, ["dot"], QUEUED)


MAIL_OK = b"250 2.1.0 Ok\r\n"
RCPT_OK = b"250 2.1.5 Ok\r\n"
GO = b"354 Go ahead\r\n"
QUEUED = b"250 2.0.0 Ok: queued as HOSTILE\r\n"


# ------------------------------------------------------------------ behaviours


def hang() -> Behaviour:
    """Silence: answer nothing, ever (and read nothing more)."""

    async def behave(conn: Conn) -> None:
        await conn.hang()

    return behave


def reply(data: bytes) -> Behaviour:
    """Send *data* instead of the normal answer, then stop."""

    async def behave(conn: Conn) -> None:
        await conn.send(data)

    return behave


def reply_and_continue(data: bytes) -> Behaviour:
    """Send *data* instead of the normal answer, then carry on."""

    async def behave(conn: Conn) -> bool:
        await conn.send(data)
        return CONTINUE

    return behave


def answer_every_line(data: bytes) -> Behaviour:
    """Send *data* now and after every line the client sends, forever."""

    async def behave(conn: Conn) -> None:
        conn.hung = True  # never reads to the end: what follows is not checked
        while True:
            await conn.send(data)
            await conn.line()

    return behave


def send_then_hang(data: bytes) -> Behaviour:
    """Send part of a reply, then fall silent (mid-reply silence)."""

    async def behave(conn: Conn) -> None:
        await conn.send(data)
        await conn.hang()

    return behave


def drip(data: bytes, interval: float, *, then: Behaviour | None = None) -> Behaviour:
    """Send *data* one byte every *interval* seconds, then carry on (or run *then*)."""

    async def behave(conn: Conn) -> bool | None:
        for byte in data:
            await conn.send(bytes([byte]))
            await trio.sleep(interval)
        return CONTINUE if then is None else await then(conn)

    return behave


def drip_forever(head: bytes, filler: bytes, interval: float) -> Behaviour:
    """Send *head*, then *filler* one byte every *interval* seconds, forever."""

    async def behave(conn: Conn) -> None:
        await conn.send(head)
        while True:
            for byte in filler:
                await trio.sleep(interval)
                await conn.send(bytes([byte]))

    return behave


def stream(chunk: bytes, total: int) -> Behaviour:
    """Send *chunk* again and again, *total* bytes in all (or until the client leaves)."""

    async def behave(conn: Conn) -> None:
        sent = 0
        while sent < total:
            await conn.send(chunk)
            sent += len(chunk)
        await conn.hang()

    return behave


def close() -> Behaviour:
    """A clean disconnect (close_notify under TLS, then FIN)."""

    async def behave(conn: Conn) -> None:
        await conn.close()

    return behave


def send_then_close(data: bytes) -> Behaviour:
    async def behave(conn: Conn) -> None:
        await conn.send(data)
        await conn.close()

    return behave


def send_then_close_tcp(data: bytes) -> Behaviour:
    """Under TLS: send *data*, then close the TCP socket without close_notify."""

    async def behave(conn: Conn) -> None:
        await conn.send(data)
        await conn.close_tcp()

    return behave


def reset() -> Behaviour:
    """Disconnect with an RST."""

    async def behave(conn: Conn) -> None:
        conn.reset()

    return behave


def read_then(at_least: int, then: Behaviour) -> Behaviour:
    """Read at least *at_least* bytes of what the client sends, then run *then*."""

    async def behave(conn: Conn) -> bool | None:
        await conn.read_some(at_least)
        return await then(conn)

    return behave


def raw_garbage(garbage: bytes) -> Behaviour:
    """Under TLS: write *garbage* straight to the TCP socket, under the TLS layer."""

    async def behave(conn: Conn) -> None:
        await conn.sock.send_all(garbage)

    return behave


# ------------------------------------------------------------------ the server


@attrs.define(eq=False)
class HostileServer:
    """Serves :class:`Dialogue` on every connection, on loopback."""

    dialogue: Dialogue
    mode: ts.TLSMode
    context: ssl.SSLContext
    conns: list[Conn] = attrs.field(factory=list)
    listener: trio.SocketListener | None = None

    def open_fds(self) -> int:
        """The descriptors the server holds: its listener and the connections not closed."""
        listening = self.listener is not None and self.listener.socket.fileno() != -1
        return int(listening) + sum(conn.fd_open for conn in self.conns)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.listener = listener
        port: int = listener.socket.getsockname()[1]
        async with listener, trio.open_nursery() as nursery:
            task_status.started(port)
            while True:
                sock = await listener.accept()
                assert isinstance(sock, trio.SocketStream)
                conn = Conn(sock, self.mode, self.context)
                self.conns.append(conn)
                nursery.start_soon(self._handle, conn)

    async def _handle(self, conn: Conn) -> None:
        try:
            with contextlib.suppress(StopDialogue):
                await self.dialogue.run(conn)
            if conn.fd_open:
                await conn.drain()
        except ClientGone:
            pass
        finally:
            conn.finished.set()
            await trio.aclose_forcefully(conn.sock)

    async def settle(self) -> None:
        """Wait until every connection that is not hung has seen the client leave."""
        for conn in self.conns:
            if not conn.hung:
                await conn.finished.wait()


async def endless_body() -> AsyncIterator[bytes]:
    """A message that never ends (ASCII, 64 KiB chunks)."""
    chunk = (b"All work and no play makes Jack a dull boy.\r\n" * 1500)[:65536]
    while True:
        yield chunk
