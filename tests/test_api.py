"""``sendmail()``: once the end of the data is answered, the answer reaches the caller.

A scripted server on loopback (implicit TLS, or STARTTLS) takes one message and then
stalls: on QUIT (the message is queued; the caller's deadline fires while the client waits
for the 221), or on the end of the data (no answer: the caller's cancellation wins).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import pytest
import trio

from trio_sendmail import (
    ForwardPath,
    Outcome,
    SendResult,
    SMTPResponseError,
    Timeouts,
    sendmail,
    sendmail_with_starttls,
)
from trio_sendmail.testing import TestCertificates

SendFunction = Callable[..., Awaitable[SendResult]]

MESSAGE = b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nHello.\r\n"
QUIT_TIMEOUT = 0.5
TIMEOUTS = Timeouts(connect=5, tls_handshake=5, greeting=5, command=5, quit=QUIT_TIMEOUT)


@attrs.define
class StallingServer:
    """Serves one message, then stalls at *stall_at* ("quit" or "end") and calls *on_stall*."""

    certs: TestCertificates
    implicit_tls: bool
    stall_at: str
    final_reply: bytes = b"250 2.0.0 Ok: queued as 1234\r\n"
    on_stall: Callable[[], None] = lambda: None
    stalled: trio.Event = attrs.field(factory=trio.Event)
    closed: trio.Event = attrs.field(factory=trio.Event)
    received: list[bytes] = attrs.field(factory=list)
    _stream: trio.abc.Stream | None = None
    _buffer: bytearray = attrs.field(factory=bytearray)

    async def _receive(self) -> bytes:
        assert self._stream is not None
        try:
            return bytes(await self._stream.receive_some())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def _until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            data = await self._receive()
            if not data:
                raise EOFError
            self._buffer += data
        end = self._buffer.index(marker) + len(marker)
        chunk = bytes(self._buffer[:end])
        del self._buffer[:end]
        return chunk

    async def _expect(self, verb: bytes, reply: bytes) -> None:
        line = await self._until(b"\r\n")
        self.received.append(line)
        assert line.upper().startswith(verb), line
        if reply:
            assert self._stream is not None
            await self._stream.send_all(reply)

    async def _tls(self, transport: trio.abc.Stream) -> None:
        stream = trio.SSLStream(transport, self.certs.server_context, server_side=True)
        await stream.do_handshake()
        self._stream = stream

    async def _stall(self) -> None:
        self.stalled.set()
        self.on_stall()
        while await self._receive():  # no answer: wait until the client hangs up
            pass

    async def handle(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        try:
            await self._serve(stream)
        except EOFError:
            pass
        finally:
            self.closed.set()

    async def _serve(self, stream: trio.SocketStream) -> None:
        if self.implicit_tls:
            await self._tls(stream)
        assert self._stream is not None
        await self._stream.send_all(b"220 srv ESMTP\r\n")
        if self.implicit_tls:
            await self._expect(b"EHLO ", b"250-srv\r\n250 8BITMIME\r\n")
        else:
            await self._expect(b"EHLO ", b"250-srv\r\n250 STARTTLS\r\n")
            await self._expect(b"STARTTLS", b"220 2.0.0 go ahead\r\n")
            assert not self._buffer
            await self._tls(stream)
            await self._expect(b"EHLO ", b"250-srv\r\n250 8BITMIME\r\n")
        await self._expect(b"MAIL FROM:", b"250 2.1.0 Ok\r\n")
        await self._expect(b"RCPT TO:", b"250 2.1.5 Ok\r\n")
        await self._expect(b"DATA", b"354 go on\r\n")
        self.received.append(await self._until(b"\r\n.\r\n"))
        if self.stall_at == "end":
            await self._stall()
            return
        await self._stream.send_all(self.final_reply)
        await self._expect(b"QUIT", b"")
        await self._stall()


@contextlib.asynccontextmanager
async def serving(server: StallingServer) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            trio.serve_listeners,
            server.handle,
            await trio.open_tcp_listeners(0, host="127.0.0.1"),
        )
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


@pytest.fixture(params=[sendmail, sendmail_with_starttls], ids=["implicit", "starttls"])
def function(request: pytest.FixtureRequest) -> SendFunction:
    send: SendFunction = request.param
    return send


def arguments(port: int, certs: TestCertificates) -> dict[str, Any]:
    return {
        "hostname": "127.0.0.1",
        "port": port,
        "sender": "alice@example.test",
        "recipients": ["bob@example.test"],
        "mail": MESSAGE,
        "domain": "client.example.test",
        "ssl_context": certs.client_context,
        "timeouts": TIMEOUTS,
    }


async def test_deadline_during_quit_keeps_the_result(
    function: SendFunction, certs: TestCertificates
) -> None:
    caller = trio.move_on_after(60)
    server = StallingServer(certs, function is sendmail, "quit")
    # The caller's deadline fires while the client waits for the reply to QUIT.
    server.on_stall = lambda: setattr(caller, "deadline", trio.current_time())
    result: SendResult | None = None
    async with serving(server) as port:
        with caller:
            result = await function(**arguments(port, certs))
        returned = trio.current_time()
        with trio.fail_after(5):
            await server.closed.wait()  # the connection is closed, not left open
    assert caller.cancel_called
    assert result is not None, "the queued message's result was thrown away"
    assert result.reply.code == 250 and result.reply.lines == ("Ok: queued as 1234",)
    assert result.accepted == (ForwardPath.parse("bob@example.test"),)
    # QUIT was bounded by Timeouts.quit (with some slack for the TLS close).
    assert returned - caller.deadline < QUIT_TIMEOUT + 2
    assert server.received[-1] == b"QUIT\r\n"


async def test_quit_that_never_answers_is_bounded(
    function: SendFunction, certs: TestCertificates
) -> None:
    server = StallingServer(certs, function is sendmail, "quit")
    async with serving(server) as port:
        with trio.fail_after(QUIT_TIMEOUT + 5):
            result = await function(**arguments(port, certs))
            await server.closed.wait()
    assert result.reply.code == 250


async def test_deadline_during_quit_keeps_the_refusal(
    function: SendFunction, certs: TestCertificates
) -> None:
    """A message refused after its end of data: the refusal is its answer (outcome
    REFUSED: resending cannot duplicate it), and the caller gets it too."""
    caller = trio.move_on_after(60)
    server = StallingServer(
        certs, function is sendmail, "quit", final_reply=b"554 5.7.1 Rejected as spam\r\n"
    )
    server.on_stall = lambda: setattr(caller, "deadline", trio.current_time())
    error: SMTPResponseError | None = None
    async with serving(server) as port:
        with caller:
            try:
                await function(**arguments(port, certs))
            except SMTPResponseError as exc:
                error = exc
        with trio.fail_after(5):
            await server.closed.wait()
    assert error is not None, "the refusal was thrown away"
    assert error.code == 554 and error.outcome is Outcome.REFUSED


async def test_deadline_before_the_answer_cancels_and_closes(
    function: SendFunction, certs: TestCertificates
) -> None:
    """No answer to the end of data yet: the caller's cancellation wins at once, the
    connection is dropped without QUIT (the error path is unchanged)."""
    caller = trio.move_on_after(60)
    server = StallingServer(certs, function is sendmail, "end")
    server.on_stall = lambda: setattr(caller, "deadline", trio.current_time())
    result: SendResult | None = None
    async with serving(server) as port:
        with caller:
            result = await function(**arguments(port, certs))
        with trio.fail_after(5):
            await server.closed.wait()
    assert caller.cancelled_caught and result is None
    assert not any(line.startswith(b"QUIT") for line in server.received)
