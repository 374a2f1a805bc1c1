"""A loopback TCP proxy that cuts connections with a TCP RST at random byte offsets.

For the chaos tests: every connection accepted on ``127.0.0.1`` (an ephemeral
port) is forwarded to the target, byte for byte, each read forwarded before the
next one is made (nothing is buffered beyond one read). When a connection is
accepted, a seeded :class:`random.Random` decides its fate (:class:`CutPolicy`):
either it is never cut, or it is cut when the bytes forwarded in one direction
reach an offset drawn for it. The bytes before the offset are forwarded, then
both sockets get ``SO_LINGER`` (on, 0 s) and are closed, so both peers see a
TCP RST (``ECONNRESET``), not an orderly close. An offset equal to the end of a
read cuts right after those bytes went out, e.g. after a client's end of data
and before the server's reply to it comes back.

An optional :class:`SmtpTap` follows the dialogue to name the phase each cut
landed in (for reports only; it never changes what is forwarded).

An optional ``reply_delay`` holds each read from the server that long before
forwarding it (the reads stay in order), so that a client waits longer for
every reply, e.g. to the end of its data (by default nothing is held).
"""

from __future__ import annotations

import collections
import contextlib
import enum
import random
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

__all__ = [
    "ConnectionRecord",
    "CutPlan",
    "CutPolicy",
    "Direction",
    "RstProxy",
    "SmtpTap",
    "open_rst_proxy",
]

#: ``struct linger`` with l_onoff=1, l_linger=0: close() sends a RST.
RST_LINGER = struct.pack("ii", 1, 0)
READ_SIZE = 64 * 1024
#: Longest SMTP line the tap keeps while it waits for the line's end.
MAX_TAP_LINE = 4096


class Direction(enum.Enum):
    CLIENT_TO_SERVER = "client->server"
    SERVER_TO_CLIENT = "server->client"


@attrs.frozen
class CutPlan:
    """Where one connection is cut: after *offset* bytes in *direction*, or never."""

    direction: Direction | None
    offset: int = 0

    def __str__(self) -> str:
        if self.direction is None:
            return "never cut"
        return f"cut after {self.offset} bytes {self.direction.value}"


@attrs.frozen
class CutPolicy:
    """How cut plans are drawn, one per accepted connection.

    Args:
        survive: the share of connections that are never cut (they live long).
        client_share: of the others, the share cut in the client->server stream
            (the rest are cut in the server->client stream).
        client_span: client->server offsets are uniform in ``[0, client_span)``.
        server_span: server->client offsets are uniform in ``[0, server_span)``.
    """

    survive: float = 0.2
    client_share: float = 0.6
    client_span: int = 32 * 1024
    server_span: int = 2 * 1024

    def __attrs_post_init__(self) -> None:
        if not (0 <= self.survive <= 1 and 0 <= self.client_share <= 1):
            raise ValueError("survive and client_share are probabilities")
        if self.client_span < 1 or self.server_span < 1:
            raise ValueError("the spans must be >= 1")

    def draw(self, rng: random.Random) -> CutPlan:
        # Always draw the same number of values, so that one connection's plan
        # does not shift the plans of the next ones.
        fate, side = rng.random(), rng.random()
        client_offset = rng.randrange(self.client_span)
        server_offset = rng.randrange(self.server_span)
        if fate < self.survive:
            return CutPlan(None)
        if side < self.client_share:
            return CutPlan(Direction.CLIENT_TO_SERVER, client_offset)
        return CutPlan(Direction.SERVER_TO_CLIENT, server_offset)


class SmtpTap:
    """Follows one SMTP connection's byte streams to name where a cut lands.

    The client stream is parsed as commands, DATA content (up to the final
    dot) and BDAT chunks; the server stream only for replies to an end of data
    (``... queued as ...``, as Postfix words them). Best effort, for reports:
    it assumes every DATA gets its 354 and every BDAT is sent in full.
    """

    def __init__(self, verbs: collections.Counter[str] | None = None) -> None:
        #: Where to count the client's command verbs (MAIL, DATA, BDAT, ...).
        self.verbs = verbs
        self._mode = "command"  # "command", "data" or "bdat"
        self._line = bytearray()
        self._server_line = bytearray()
        self._data_tail = b""
        self._bdat_left = 0
        self._bdat_last = False
        self.mail_commands = 0
        self.ends_of_data = 0
        self.final_replies = 0
        self.last_command = b""

    def feed(self, direction: Direction, data: bytes) -> None:
        if direction is Direction.SERVER_TO_CLIENT:
            self._feed_server(data)
            return
        view = memoryview(data)
        while view:
            if self._mode == "bdat":
                take = min(self._bdat_left, len(view))
                self._bdat_left -= take
                view = view[take:]
                if self._bdat_left == 0:
                    self._mode = "command"
                    if self._bdat_last:
                        self.ends_of_data += 1
            elif self._mode == "data":
                chunk = bytes(view)
                window = self._data_tail + chunk
                end = window.find(b"\r\n.\r\n")
                if end < 0:
                    self._data_tail = window[-4:]
                    return
                used = end + 5 - len(self._data_tail)
                view = view[used:]
                self._mode = "command"
                self.ends_of_data += 1
            else:
                newline = bytes(view).find(b"\n")
                if newline < 0:
                    self._line += view
                    del self._line[:-MAX_TAP_LINE]
                    return
                self._line += view[: newline + 1]
                view = view[newline + 1 :]
                self._command(bytes(self._line).rstrip(b"\r\n"))
                self._line.clear()

    def _command(self, line: bytes) -> None:
        self.last_command = line[:64]
        words = line.split()
        verb = words[0].upper() if words else b""
        if self.verbs is not None:
            self.verbs[verb[:16].decode("ascii", "replace")] += 1
        if verb == b"MAIL":
            self.mail_commands += 1
        elif verb == b"DATA" and len(words) == 1:
            self._mode = "data"
            self._data_tail = b"\r\n"  # a lone "." first ends an empty message
        elif verb == b"BDAT" and len(words) >= 2 and words[1].isdigit():
            self._bdat_left = int(words[1])
            self._bdat_last = len(words) > 2 and words[2].upper() == b"LAST"
            self._mode = "bdat"
            if self._bdat_left == 0:
                self._mode = "command"
                if self._bdat_last:
                    self.ends_of_data += 1

    def _feed_server(self, data: bytes) -> None:
        lines = (bytes(self._server_line) + data).split(b"\n")
        self._server_line = bytearray(lines.pop()[-MAX_TAP_LINE:])
        self.final_replies += sum(1 for line in lines if b" queued as " in line)

    def phase(self, direction: Direction) -> str:
        """Where the dialogue was when it was cut in *direction*."""
        if self.mail_commands == 0 and self._mode == "command":
            return "greeting/EHLO"
        if direction is Direction.CLIENT_TO_SERVER and self._mode != "command":
            return "message data"
        if self.ends_of_data > self.final_replies:
            return "after end of data, before its reply"
        if direction is Direction.CLIENT_TO_SERVER:
            return "envelope/commands"
        return "reply stream"


@attrs.define(eq=False)
class ConnectionRecord:
    """What happened to one proxied connection."""

    number: int
    plan: CutPlan
    forwarded: dict[Direction, int] = attrs.field(factory=lambda: dict.fromkeys(Direction, 0))
    #: The proxy's local port towards the target (to match the server's logs).
    server_side_port: int | None = None
    cut: bool = False
    #: The phase the cut landed in (with a tap), else None.
    phase: str | None = None
    #: How it ended: "cut", "closed", "reset by peer", "target unreachable", "stopped".
    ending: str | None = None


class _Link:
    """One proxied connection: two pumps and the cut."""

    def __init__(
        self,
        proxy: RstProxy,
        record: ConnectionRecord,
        client: trio.SocketStream,
        server: trio.SocketStream,
        scope: trio.CancelScope,
    ) -> None:
        self._proxy = proxy
        self._record = record
        self._client = client
        self._server = server
        self._scope = scope
        self._tap = SmtpTap(proxy.verbs) if proxy.tap_smtp else None

    async def pump(self, direction: Direction) -> None:
        if direction is Direction.CLIENT_TO_SERVER:
            source, sink = self._client, self._server
            delay = 0.0
        else:
            source, sink = self._server, self._client
            delay = self._proxy.reply_delay
        record = self._record
        limit = record.plan.offset if record.plan.direction is direction else None
        try:
            while True:
                data = await source.receive_some(READ_SIZE)
                if delay > 0:
                    await trio.sleep(delay)
                if not data:  # an orderly close: pass it on, keep the other direction
                    await sink.send_eof()
                    return
                done = record.forwarded[direction]
                if limit is not None and done + len(data) >= limit:
                    data = data[: limit - done]
                    await self._forward(sink, direction, data)
                    self._cut(direction)
                    return
                await self._forward(sink, direction, data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # A peer reset its connection (or the other pump closed ours):
            # the whole link goes, like a real middlebox's would.
            record.ending = record.ending or "reset by peer"
            self._scope.cancel()

    async def _forward(self, sink: trio.SocketStream, direction: Direction, data: bytes) -> None:
        if data:
            await sink.send_all(data)
            self._record.forwarded[direction] += len(data)
            if self._tap is not None:
                self._tap.feed(direction, data)

    def _cut(self, direction: Direction) -> None:
        for stream in (self._client, self._server):
            with contextlib.suppress(OSError):  # already reset by the peer: closing will do
                stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST_LINGER)
        record = self._record
        record.cut = True
        record.ending = "cut"
        if self._tap is not None:
            record.phase = self._tap.phase(direction)
            self._proxy.phases[record.phase] += 1
        self._proxy.cuts += 1
        # Leaving the link's nursery closes both sockets: with the linger above, a RST.
        self._scope.cancel()


class RstProxy:
    """The proxy's state; run it with :func:`open_rst_proxy`."""

    def __init__(
        self,
        target: tuple[str, int],
        *,
        seed: int,
        policy: CutPolicy,
        tap_smtp: bool = True,
        reply_delay: float = 0.0,
    ) -> None:
        if not reply_delay >= 0:
            raise ValueError("reply_delay must be >= 0")
        self.target = target
        self.policy = policy
        self.tap_smtp = tap_smtp
        #: Seconds each read from the server is held before it is forwarded.
        self.reply_delay = reply_delay
        self.rng = random.Random(seed)
        self.port = 0
        self.cuts = 0
        self.records: list[ConnectionRecord] = []
        #: How many cuts landed in each phase (with ``tap_smtp``).
        self.phases: collections.Counter[str] = collections.Counter()
        #: The client commands seen, by verb (with ``tap_smtp``).
        self.verbs: collections.Counter[str] = collections.Counter()

    @property
    def connections(self) -> int:
        return len(self.records)

    def summary(self) -> dict[str, object]:
        endings = collections.Counter(record.ending or "open" for record in self.records)
        return {
            "connections": self.connections,
            "cuts": self.cuts,
            "never_cut_plans": sum(1 for r in self.records if r.plan.direction is None),
            "cuts_by_phase": dict(sorted(self.phases.items())),
            "client_commands": dict(sorted(self.verbs.items())),
            "endings": dict(sorted(endings.items())),
        }

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        async with listener, trio.open_nursery() as nursery:
            while True:
                client = await listener.accept()
                record = ConnectionRecord(len(self.records), self.policy.draw(self.rng))
                self.records.append(record)
                nursery.start_soon(self._handle, client, record)

    async def _handle(self, client: trio.SocketStream, record: ConnectionRecord) -> None:
        async with client:
            try:
                server = await trio.open_tcp_stream(*self.target)
            except OSError:
                record.ending = "target unreachable"
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST_LINGER)
                return
            async with server:
                record.server_side_port = server.socket.getsockname()[1]
                try:
                    async with trio.open_nursery() as nursery:
                        link = _Link(self, record, client, server, nursery.cancel_scope)
                        nursery.start_soon(link.pump, Direction.CLIENT_TO_SERVER)
                        nursery.start_soon(link.pump, Direction.SERVER_TO_CLIENT)
                    record.ending = record.ending or "closed"  # both sides closed
                finally:
                    record.ending = record.ending or "stopped"  # the proxy was stopped


@asynccontextmanager
async def open_rst_proxy(
    target_host: str,
    target_port: int,
    *,
    seed: int,
    policy: CutPolicy | None = None,
    tap_smtp: bool = True,
    reply_delay: float = 0.0,
) -> AsyncIterator[RstProxy]:
    """Run a :class:`RstProxy` to *target_host*:*target_port* for the block.

    It listens on ``127.0.0.1`` (``proxy.port``). Leaving the block stops it:
    its listener and every connection still open are closed, and none of its
    tasks outlives the block. *reply_delay*: seconds each read from the server
    is held before it is forwarded (0: none).
    """
    proxy = RstProxy(
        (target_host, target_port),
        seed=seed,
        policy=policy or CutPolicy(),
        tap_smtp=tap_smtp,
        reply_delay=reply_delay,
    )
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    assert isinstance(listener, trio.SocketListener)
    proxy.port = listener.socket.getsockname()[1]
    # The block's own exception is kept out of the nursery (which would wrap it
    # in a group) and raised as it was.
    error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proxy._accept_loop, listener)
        try:
            yield proxy
        except BaseException as exc:
            error = exc
        finally:
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error
