"""The session driver: one stream, one pump, one error boundary.

Theory of operation
-------------------
A :class:`Driver` owns one ``trio.abc.Stream`` and one sans-io
:class:`~trio_sendmail._core.ClientCore`. SMTP submission is request/reply, so
it needs no background task: :meth:`Driver.write` hands the core's bytes to the
stream, :meth:`Driver.event` writes what is queued and then reads until the
oldest command has its reply.

* **One error boundary.** :meth:`Driver._send` and :meth:`Driver._receive`
  are the only places that touch the stream. They turn trio and OS errors into
  :class:`~trio_sendmail.SMTPConnectionError`, :class:`~trio_sendmail.SMTPTLSError`
  or :class:`~trio_sendmail.SMTPTimeoutError` (``raise … from exc``); anything
  that interrupts them (cancellation included) breaks the core and closes the
  transport at once, so that nothing queued is ever written later.
* **Timeouts.** One cancel scope per operation (:meth:`Driver.timed`), armed
  before each write or read with its phase's bound (RFC 5321 §4.5.3.2), and
  one write of at most ``send_size`` bytes per bound, so a slow but
  steady server never trips the data-block bound.
* **Nothing unasked.** Replies pair with commands by order alone (RFC 2920
  §3.1), so a reply the server sends unasked would shift every later pairing.
  Before a write starts a new exchange (no command on the wire awaits a
  reply), the driver looks at the socket without waiting (:meth:`Driver._probe`):
  a ``421`` there closes the session, any other byte is a protocol error, and
  either way nothing of the new commands has been written. Only a ``421`` may
  come unasked (RFC 5321 §3.8).
* **A refusal before a reset.** A server may refuse a message while it is
  still flowing (``552`` to a BDAT chunk, or mid-DATA) and then reset the
  connection. Between two writes of message data the driver takes in any reply
  that arrived, and after a failed write on a plain socket it reads what the
  server had sent before the reset: the caller gets the server's reply, not
  "connection reset".
"""

from __future__ import annotations

import contextlib
import logging
import math
import select
import ssl
from collections.abc import Iterator
from types import TracebackType

import trio

from ._core import ClientCore, Event, State, Verb
from ._errors import (
    SMTPConnectionError,
    SMTPError,
    SMTPProtocolError,
    SMTPTimeoutError,
    SMTPTLSError,
)
from ._reply import ReplyParser
from ._reply_errors import SMTPResponseError, SMTPServiceClosing
from ._settings import Timeouts

__all__ = ["Driver", "phase_timeout"]

logger = logging.getLogger("trio_sendmail.transcript")

#: How long a look at bytes that are already there may wait for the rest of
#: them (a TLS record that held only a session ticket yields nothing).
PROBE_GRACE = 0.05


def phase_timeout(timeouts: Timeouts, verb: Verb) -> tuple[str, float]:
    """The phase name and bound of the wait for *verb*'s reply."""
    match verb:
        case Verb.CONNECT:
            return "greeting", timeouts.greeting
        case Verb.MAIL:
            return "mail", timeouts.mail
        case Verb.RCPT:
            return "rcpt", timeouts.rcpt
        case Verb.DATA:
            return "data_init", timeouts.data_init
        case Verb.BDAT:
            return "data_block", timeouts.data_block
        case Verb.END_DATA | Verb.BDAT_LAST:
            return "data_end", timeouts.data_end
        case Verb.QUIT:
            return "quit", timeouts.quit
        case _:
            return "command", timeouts.command


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        return stream.socket
    return None


class _Timed:
    """:meth:`Driver.timed`: one cancel scope, installed as the driver's timer."""

    __slots__ = ("_driver", "_scope")

    def __init__(self, driver: Driver) -> None:
        self._driver = driver
        self._scope = trio.CancelScope()

    def __enter__(self) -> None:
        driver = self._driver
        assert driver.timer is None, "timed() inside a timed operation"
        driver.timer = self._scope.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        driver = self._driver
        driver.timer = None
        scope = self._scope
        swallowed = scope.__exit__(exc_type, exc, traceback)
        if scope.cancelled_caught:
            raise driver.timeout_error() from None
        return swallowed


class Driver:
    """Moves the core's bytes over one stream (see the module's docstring)."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        session_id: int,
        hostname: str,
        timeouts: Timeouts,
        send_size: int,
        receive_size: int,
    ) -> None:
        self.stream = stream
        self.session_id = session_id
        self.hostname = hostname
        self.timeouts = timeouts
        # phase_timeout() of every verb, looked up once per wait.
        self._phases = {verb: phase_timeout(timeouts, verb) for verb in Verb}
        self.send_size = send_size
        self.receive_size = receive_size
        self.core = ClientCore(
            transcript=self.log if logger.isEnabledFor(logging.DEBUG) else None,
            parser=ReplyParser(),
        )
        self.timer: trio.CancelScope | None = None
        self._clock = trio.lowlevel.current_clock()  # fixed for the whole run
        # _readable(): the stream it looked at, its TLS layers and socket.
        self._layers_of: trio.abc.Stream | None = None
        self._layers: tuple[trio.SSLStream[trio.abc.Stream], ...] = ()
        self._layers_socket: trio.socket.SocketType | None = None
        self._poller: select.poll | None = None
        self._poll_fd = -1
        self.phase = ""
        self.waiting_for = ""
        self.timeout = 0.0
        self.transport_closed = False
        self.round_trips = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self._unanswered_write = True  # the greeting is the first wait
        # The first write after a TLS handshake is not probed: the server's
        # post-handshake records (session tickets) may still be on the way.
        self._skip_probe = False

    def log(self, line: str) -> None:
        logger.debug("[%d] %s", self.session_id, line)

    # ------------------------------------------------------------- timing

    def timed(self) -> _Timed:
        """Bound one operation's I/O with a single cancel scope, armed with
        each I/O's phase bound (:meth:`arm`). Between two I/Os the last bound
        still runs: a message source slower than the data-block bound ends the
        send, as the server would end it. A timeout is raised as
        :class:`SMTPTimeoutError`. (A plain class, not a generator: it runs
        once per message.)"""
        return _Timed(self)

    @contextlib.contextmanager
    def timer_scope(self, what: str) -> Iterator[trio.CancelScope]:
        """The cancel scope of one timed block, installed as :attr:`timer`
        while the block runs (*what* names the caller in the assertion that
        timed blocks never nest)."""
        assert self.timer is None, f"{what} inside a timed operation"
        with trio.CancelScope() as scope:
            self.timer = scope
            try:
                yield scope
            finally:
                self.timer = None

    def timeout_error(self) -> SMTPTimeoutError:
        return SMTPTimeoutError(
            f"timed out waiting for {self.waiting_for} ({self.phase}) after {self.timeout:g} s",
            phase=self.phase,
        )

    def arm(self, phase: str, timeout: float, waiting_for: str) -> None:
        """Bound the next I/O by *timeout* seconds (its phase's bound)."""
        timer = self.timer
        assert timer is not None, "I/O outside a timed operation"
        self.phase = phase
        self.waiting_for = waiting_for
        self.timeout = timeout
        deadline = self._clock.current_time() + timeout
        # Moving a deadline costs a heap update: keep one that is already
        # within a thousandth of the bound (consecutive I/Os of one message).
        if not deadline - timeout / 1000 <= timer.deadline <= deadline:
            timer.deadline = deadline

    # --------------------------------------------------------------- pump

    async def write(self, phase: str, timeout: float) -> None:
        """Write everything the core queued, in writes of at most ``send_size``."""
        core = self.core
        out = core._out  # the core's output buffer (has_output, without a call)
        if not out:
            return
        if core.wire_idle and not core.body_open:
            if self._skip_probe:
                self._skip_probe = False
            else:
                await self._probe()
        size = self.send_size
        # A message's end of data waiting at its gate: the bytes before it wait
        # too (they are at most a block, write_data sends the others), so that
        # they leave in the same write as the end (and the next envelope).
        while core._marks and core.gate is not None and len(out) <= size:
            await self._open_gate()
        while out:
            data = core.take_output(size)
            if not data:
                await self._open_gate()
                continue
            await self._send(data, phase, timeout)

    async def write_data(self) -> None:
        """Write the message data queued so far, once there is a block of it;
        first take in any reply that arrived meanwhile (a refusal mid-message)."""
        core = self.core
        if core.output_size < self.send_size:
            return
        if self._readable():
            await self._take_in()
        timeout = self.timeouts.data_block
        while core.output_size >= self.send_size:
            data = core.take_output(self.send_size)
            if not data:
                await self._open_gate()
                continue
            await self._send(data, "data_block", timeout)

    async def _open_gate(self) -> None:
        """Await the gate that holds back a message's end of data (see
        :class:`~trio_sendmail.OutcomeTracker`'s ``before_end_of_data``), then
        let the end go. The wait is not the server's: no bound runs meanwhile.
        If the gate raises or is cancelled, the end is never written and the
        connection is closed."""
        core = self.core
        txn = core.gate
        assert txn is not None and txn.gate is not None
        timer = self.timer
        if timer is not None:
            timer.deadline = math.inf
        try:
            await txn.gate()
        except BaseException:
            await self.fail()
            raise
        core.open_gate()

    async def event(self) -> Event:
        """Write what is queued, then the reply to the oldest command in flight.

        Raises:
            SMTPServiceClosing: the reply was 421; the session is closed.
        """
        core = self.core
        out = core._out  # the core's output buffer (has_output, without a call)
        event = None
        if not out:  # under PIPELINING, the reply is often here already
            try:
                event = core.next_event()
            except SMTPError:
                await self.fail()
                raise
        if event is None:
            phase, timeout = self._phases[core._inflight[0].verb]
            if out:
                if phase == "data_end":
                    # Writing the end of data is a write of data like any other
                    # (RFC 5321 §4.5.3.2.5); the wait for its reply is data_end.
                    await self.write("data_block", self.timeouts.data_block)
                else:
                    await self.write(phase, timeout)
            event = await self._receive(phase, timeout)
        if event.reply.code == 421:
            await self.fail()
            raise SMTPServiceClosing.from_reply(event.reply, event.verb.value)
        return event

    async def drain(self) -> None:
        """Read the reply of every command in flight (the core records each
        one), as :meth:`event` would one by one; a reply that has already
        arrived is taken without a call of its own (four per message under
        PIPELINING)."""
        core = self.core
        inflight, out = core._inflight, core._out  # awaiting_reply, has_output
        while inflight:
            event = None
            if not out:
                try:
                    event = core.next_event()
                except SMTPError:
                    await self.fail()
                    raise
            if event is None:
                # event() without its call: write what is queued, then wait.
                phase, timeout = self._phases[inflight[0].verb]
                if out:
                    if phase == "data_end":  # see event()
                        await self.write("data_block", self.timeouts.data_block)
                    else:
                        await self.write(phase, timeout)
                event = await self._receive(phase, timeout)
            if event.reply.code == 421:
                await self.fail()
                raise SMTPServiceClosing.from_reply(event.reply, event.verb.value)

    def ready_event(self) -> Event | None:
        """A reply that has already arrived, or ``None`` (never waits)."""
        core = self.core
        if not core.in_reply:
            return None
        event = core.next_event()
        if event is not None and event.reply.code == 421:
            raise SMTPServiceClosing.from_reply(event.reply, event.verb.value)
        return event

    async def _send(self, data: bytes, phase: str, timeout: float) -> None:
        self.arm(phase, timeout, "the server to take our data")
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, OSError) as exc:
            refusal = await self._salvage()
            await self.fail()
            if refusal is not None:
                raise refusal from exc
            raise SMTPConnectionError(f"connection lost while sending ({phase}): {exc}") from exc
        except BaseException:
            await self.fail()
            raise
        self.bytes_sent += len(data)
        self._unanswered_write = True

    async def _receive(self, phase: str, timeout: float) -> Event:
        """Read until the oldest command in flight has its reply."""
        core = self.core
        try:
            # Nothing buffered is no reply (the look costs no call).
            event = core.next_event() if core._parser._buf else None
            if event is None:
                self.arm(phase, timeout, "a reply from the server")
                if self._unanswered_write:
                    # A round trip: we wait for the server after sending.
                    self.round_trips += 1
                    self._unanswered_write = False
                while event is None:
                    data = await self.stream.receive_some(self.receive_size)
                    if not data:
                        core.receive_eof()
                        raise SMTPConnectionError(
                            f"the server closed the connection (waiting for: {phase})"
                        )
                    self.bytes_received += len(data)
                    core.receive_data(data)
                    event = core.next_event()
        except (trio.BrokenResourceError, OSError) as exc:
            raise await self._lost(f"connection lost ({phase})", exc) from exc
        except BaseException:
            await self.fail()
            raise
        return event

    async def _lost(self, what: str, exc: BaseException) -> SMTPConnectionError:
        """End the session after a lost connection; the error to raise."""
        await self.fail()
        return SMTPConnectionError(f"{what}: {exc}")

    # --------------------------------------------- what the server said unasked

    def _readable(self) -> bool:
        """True when the server sent something that was not read yet (looked
        up without waiting; always False for streams without a socket)."""
        stream = self.stream
        if stream is not self._layers_of:
            # The TLS layers and the socket under them, found once per stream
            # (this runs per message; isinstance() on trio's ABCs is not free).
            layers = []
            while isinstance(stream, trio.SSLStream):
                layers.append(stream)
                stream = stream.transport_stream
            self._layers = tuple(layers)
            self._layers_socket = _socket_of(stream)
            self._layers_of = self.stream
        for layer in self._layers:
            incoming = getattr(layer, "_incoming", None)  # read, not decrypted yet
            if layer.pending() or getattr(incoming, "pending", 0):
                return True
        sock = self._layers_socket
        if sock is None:
            return False
        fd = sock.fileno()
        if fd < 0:
            return False
        # One poll object per socket, registered once (this runs per message).
        poller = self._poller
        if poller is None or self._poll_fd != fd:
            poller = self._poller = select.poll()
            poller.register(fd, select.POLLIN | select.POLLPRI)
            self._poll_fd = fd
        return bool(poller.poll(0))

    async def _probe(self) -> None:
        """Before a new exchange: whatever the server sent unasked ends the
        session, before any byte of the queued commands is written."""
        core = self.core
        if core.in_reply:
            await self.fail()
            raise SMTPProtocolError("the server sent bytes that answer no command")
        if not self._readable():
            return
        self.arm("command", self.timeouts.command, "what the server sent unasked")
        data: bytes | bytearray = b""
        try:
            with trio.move_on_after(PROBE_GRACE):
                data = await self.stream.receive_some(self.receive_size)
                if not data:
                    raise SMTPConnectionError("the server had closed the connection")
        except (trio.BrokenResourceError, OSError) as exc:
            raise await self._lost("the server had closed the connection", exc) from exc
        except BaseException:
            await self.fail()
            raise
        if not data:
            return  # TLS housekeeping only
        self.bytes_received += len(data)
        parser = ReplyParser()
        try:
            parser.feed(data)
            reply = parser.next_reply()
        except SMTPProtocolError:
            reply = None
        if reply is not None and reply.code == 421:
            command = core.oldest.value  # the first command that never went out
            core.closing(reply)
            await self.fail()
            raise SMTPServiceClosing.from_reply(reply, command)
        await self.fail()
        shown = f": {reply}" if reply is not None else ""
        raise SMTPProtocolError(f"the server sent a reply nobody asked for{shown}")

    async def _take_in(self) -> None:
        """Between writes of message data: read what arrived (without waiting
        for more) and raise a refusal that came before the end of data."""
        core = self.core
        try:
            with trio.move_on_after(PROBE_GRACE):
                data = await self.stream.receive_some(self.receive_size)
                if not data:
                    return  # the next write or read reports the closed connection
                self.bytes_received += len(data)
                core.receive_data(data)
        except (trio.BrokenResourceError, OSError):
            return  # likewise
        except BaseException:
            await self.fail()
            raise
        if not core.awaiting_reply:  # DATA: a reply now refuses the message
            try:
                event = core.next_event()
            except SMTPError:
                await self.fail()
                raise
            if event is not None:
                await self.fail()
                raise SMTPResponseError.from_reply(event.reply, ".")

    async def _salvage(self) -> SMTPError | None:
        """After a failed write on a plain socket: the refusal the server sent
        before it reset the connection, if one had arrived."""
        stream = self.stream
        core = self.core
        if not isinstance(stream, trio.SocketStream) or core.state is State.BROKEN:
            return None
        try:
            with trio.move_on_after(PROBE_GRACE):
                while True:
                    data = await stream.receive_some(self.receive_size)
                    if not data:
                        break
                    core.receive_data(data)
        except (trio.BrokenResourceError, OSError, SMTPError):
            pass
        try:
            while (event := core.next_event()) is not None:
                if not event.reply.is_positive:
                    verb = "BDAT" if event.verb is Verb.BDAT_LAST else event.verb.value
                    kind = SMTPServiceClosing if event.reply.code == 421 else SMTPResponseError
                    return kind.from_reply(event.reply, verb)
        except SMTPError:
            pass
        return None

    # ------------------------------------------------------------ TLS, end

    async def handshake(self, ssl_context: ssl.SSLContext) -> None:
        """Run TLS over the current stream (implicit TLS, or after STARTTLS's 220)."""
        stream = trio.SSLStream(
            self.stream, ssl_context, server_hostname=self.hostname, https_compatible=False
        )
        self.stream = stream
        timeout = self.timeouts.tls_handshake
        try:
            with trio.fail_after(timeout):
                await stream.do_handshake()
        except trio.TooSlowError as exc:
            await self.fail()
            raise SMTPTimeoutError(f"TLS handshake took longer than {timeout:g} s",
                                   phase="tls_handshake") from exc  # fmt: skip
        except (trio.BrokenResourceError, OSError) as exc:
            await self.fail()
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            raise SMTPTLSError(f"TLS handshake with {self.hostname} failed: {cause}") from exc
        except BaseException:
            await self.fail()
            raise
        self._skip_probe = True

    async def fail(self) -> None:
        """A command was interrupted (or the server closed): the session is over.

        The core is marked broken (unless the server closed it with 421), so
        nothing queued goes out, and the transport is closed at once.
        """
        if self.core.state is not State.CLOSED:
            self.core.broken()
        await self.close_transport()

    async def close_transport(self) -> None:
        """Close the stream at once (never blocks, never raises Cancelled: a
        cleanup path must run to its end)."""
        if self.transport_closed:
            return
        self.transport_closed = True
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self.stream)
