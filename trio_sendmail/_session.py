"""The trio layer: connections, TLS, timeouts, and the session driver.

Theory of operation
-------------------
A :class:`Session` owns one ``trio.abc.Stream`` and one sans-io
:class:`~trio_sendmail._core.ClientCore`. SMTP submission is request/reply, so
the driver needs no background task: it flushes what the core queued, then
reads until the core has the reply it waits for. Every wait is bounded by the
phase's timeout from :class:`Timeouts` (RFC 5321 §4.5.3.2), inside the caller's
own cancel scopes.

* **One error boundary.** :meth:`Session._write` and :meth:`Session._read` are
  the only places that touch the stream; they turn trio and OS errors into
  :class:`SMTPConnectionError`, :class:`SMTPTLSError` or
  :class:`SMTPTimeoutError` (``raise … from exc``). The core raises protocol
  errors; it never sees a trio exception.
* **Sticky failure.** Anything that interrupts a command (a timeout, a lost
  connection, a protocol error, cancellation, an exception from the message
  source mid-DATA) breaks the session: it is closed without QUIT and refuses
  every later call. A message whose DATA phase was interrupted is never
  followed by RSET and another message on that connection.
* **STARTTLS** (RFC 3207) upgrades the *same* stream in place: the plaintext
  stream becomes the transport of a :class:`trio.SSLStream`, certificates and
  host name checked (with SNI), then EHLO is sent again.
* **AUTH** (RFC 4954) is refused over a connection without TLS before any
  credential is sent, unless the caller opted in with
  ``insecure_auth_over_plaintext=True``.
* **Streaming.** The message is read one chunk at a time, encoded, and written
  in blocks of at most ``Buffers.send_size`` bytes (small chunks are coalesced,
  big ones written as they are), so memory is bounded whatever the size.
* **Pipelining across messages** (RFC 2920 §3.1: message content may open a
  pipelined group). For the bulk sender, a small message sent with DATA can be
  left *pending*: its body and final dot wait in the command buffer and go out
  with the next message's envelope, and the first reply read answers it
  (:class:`_Pending`, :meth:`Session._send_op`, :meth:`Session._settle`).
  Until it is answered the session refuses a plain :meth:`Session.send`; if
  the run is interrupted first, the session is abandoned so that the buffered
  bytes never go out.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import itertools
import logging
import math
import socket
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from email.headerregistry import Address
from typing import NoReturn

import attrs
import trio

from ._address import Domain, ForwardPath, Mailbox, ReversePath, domain, forward_path, reverse_path
from ._capabilities import Capabilities
from ._core import ClientCore, Event, State, Verb, check_argument
from ._data import DataEncoder, measure
from ._dsn import DSN
from ._errors import (
    Outcome,
    SMTPAuthenticationError,
    SMTPConnectionError,
    SMTPError,
    SMTPInputError,
    SMTPMessageTooLarge,
    SMTPNotSupportedError,
    SMTPProtocolError,
    SMTPRecipientsRefused,
    SMTPResponseError,
    SMTPSenderRefused,
    SMTPServiceClosing,
    SMTPTimeoutError,
    SMTPTLSError,
)
from ._message import Mail, MailBody, close_early, prepare_mail
from ._reply import Reply, ReplyParser
from ._sasl import Authentication, OAuthBearerMechanism, choose_mechanism, usable_mechanisms

__all__ = [
    "Buffers",
    "SendResult",
    "Session",
    "SessionStatistics",
    "TLSMode",
    "Timeouts",
    "open_session",
]

logger = logging.getLogger("trio_sendmail.transcript")

#: RFC 8314 §3.3: submission over implicit TLS.
SUBMISSIONS_PORT = 465
#: RFC 6409 §3.1: message submission (with STARTTLS).
SUBMISSION_PORT = 587
#: RFC 5321 §4.5.4.2: relay between MTAs (a local relay listens here).
SMTP_PORT = 25

#: Most commands written in one pipelined batch before their replies are read
#: (RFC 2920 §3.1 asks the client not to let the send window deadlock).
PIPELINE_BATCH = 100


class TLSMode(enum.Enum):
    """How the connection is secured."""

    #: TLS from the first byte (RFC 8314), port 465 by default.
    IMPLICIT = "implicit"
    #: Plain TCP, then STARTTLS, required (RFC 3207), port 587 by default.
    STARTTLS = "starttls"
    #: No TLS at all, for a trusted local relay (port 25 by default). Anyone on
    #: the path can read and change the mail. AUTH is refused on such a
    #: connection unless ``insecure_auth_over_plaintext=True``.
    INSECURE_PLAINTEXT = "insecure-plaintext"


@attrs.frozen
class Timeouts:
    """Bounds, in seconds, on each phase of the dialogue.

    The defaults are those of RFC 5321 §4.5.3.2. Use ``math.inf`` to disable one.
    The caller's own cancel scopes apply on top of these.
    """

    #: Opening the TCP connection (not set by the RFC).
    connect: float = 60.0
    #: The TLS handshake, implicit or after STARTTLS (not set by the RFC).
    tls_handshake: float = 60.0
    #: §4.5.3.2.1: waiting for the 220 greeting.
    greeting: float = 300.0
    #: EHLO, STARTTLS, AUTH, RSET and NOOP (the RFC's 5 minutes).
    command: float = 300.0
    #: §4.5.3.2.2: the reply to MAIL.
    mail: float = 300.0
    #: §4.5.3.2.3: the reply to each RCPT.
    rcpt: float = 300.0
    #: §4.5.3.2.4: the 354 reply to DATA.
    data_init: float = 120.0
    #: §4.5.3.2.5: writing one block of message data.
    data_block: float = 180.0
    #: §4.5.3.2.6: the reply after the final dot (10 minutes: the server may
    #: be delivering; giving up sooner risks duplicates).
    data_end: float = 600.0
    #: The polite QUIT when closing (not set by the RFC).
    quit: float = 10.0

    def __attrs_post_init__(self) -> None:
        for field in attrs.fields(Timeouts):
            value = getattr(self, field.name)
            if not isinstance(value, int | float) or math.isnan(value) or value <= 0:
                raise ValueError(f"Timeouts.{field.name} must be a positive number, not {value!r}")


class Buffers:
    """Reusable I/O buffers, the counterpart of the seed's pre-allocated
    encoder and decoder.

    A :class:`Buffers` can be handed to many sessions in turn; a session holds
    it from the moment it connects until it is closed. Using it in two sessions
    at once raises :class:`trio.BusyResourceError`.

    Args:
        send_size: the most message bytes gathered before one write; small
            chunks are coalesced up to this size, and a chunk larger than it is
            written on its own. With the chunk being encoded, this bounds the
            memory a message costs, whatever its length.
        receive_size: the most bytes asked of the stream in one read. Replies
            are also bounded by the parser (see :data:`MAX_REPLY_SIZE`).
    """

    def __init__(self, *, send_size: int = 64 * 1024, receive_size: int = 16 * 1024) -> None:
        if send_size < 512 or receive_size < 512:
            raise ValueError("buffer sizes must be at least 512 bytes")
        self.send_size = send_size
        self.receive_size = receive_size
        #: Message data gathered before a write.
        self.send_buffer = bytearray()
        #: Commands queued by the core before a write.
        self.command_buffer = bytearray()
        #: Received bytes not yet parsed into replies.
        self.receive_buffer = bytearray()
        self._in_use = False

    def __repr__(self) -> str:
        return f"<Buffers send_size={self.send_size} receive_size={self.receive_size}>"

    def _acquire(self) -> None:
        if self._in_use:
            raise trio.BusyResourceError("these Buffers are in use by another session")
        self._in_use = True

    def _release(self) -> None:
        self._in_use = False
        del self.send_buffer[:]
        del self.command_buffer[:]
        del self.receive_buffer[:]


@attrs.frozen(hash=False)
class SendResult:
    """The outcome of a message the server accepted.

    Attributes:
        reply: the server's reply to the end of data (``250 2.0.0 Ok: queued as …``).
        accepted: the recipients the server accepted.
        refused: the recipients the server refused, each with its reply (the
            message went to the others).
    """

    reply: Reply
    accepted: tuple[ForwardPath, ...]
    refused: dict[ForwardPath, Reply] = attrs.field(factory=dict)


@attrs.frozen
class SessionStatistics:
    """Counters of one session (see :meth:`Session.statistics`)."""

    state: str
    tls: bool
    authenticated: bool
    messages_sent: int
    messages_failed: int
    #: Times the session waited for the server after writing (with PIPELINING,
    #: one wait covers every command sent together).
    round_trips: int
    bytes_sent: int
    bytes_received: int


_session_ids = itertools.count(1)
_NO_CAPABILITIES = Capabilities()

#: Most BDAT chunks written before the oldest one's reply is read (RFC 3030
#: §4.2 allows BDAT to be pipelined; the window bounds the unread replies).
BDAT_WINDOW = 8


@attrs.frozen
class _Options:
    dsn: DSN | None
    requiretls: bool
    binary: bool


@attrs.frozen
class _Plan:
    mail_params: list[str]
    dsn: DSN | None
    chunking: bool
    binary: bool
    #: The whole message has only CRLF line endings: no need to normalise it.
    clean: bool = False

    def rcpt_params(self, path: ForwardPath) -> list[str]:
        return self.dsn.rcpt_params(path) if self.dsn is not None else []


class _Envelope:
    """The replies to one transaction's commands, gathered in order."""

    __slots__ = ("accepted", "data_reply", "final_reply", "refused", "sender_reply")

    def __init__(self) -> None:
        self.sender_reply: Reply | None = None
        self.data_reply: Reply | None = None
        self.final_reply: Reply | None = None
        self.accepted: list[ForwardPath] = []
        self.refused: dict[ForwardPath, Reply] = {}

    @property
    def sender_ok(self) -> bool:
        return self.sender_reply is not None and self.sender_reply.is_positive

    def record(self, event: Event) -> None:
        if event.verb is Verb.MAIL:
            self.sender_reply = event.reply
        elif event.verb is Verb.RCPT:
            assert isinstance(event.subject, ForwardPath)
            if event.reply.is_positive:
                self.accepted.append(event.subject)
            else:
                self.refused[event.subject] = event.reply
        elif event.verb is Verb.DATA:
            self.data_reply = event.reply
        elif event.verb is Verb.BDAT_LAST:
            self.final_reply = event.reply


@attrs.define(eq=False)
class _Pending:
    """A message whose end of data is queued (or written) but not answered yet.

    Cross-transaction pipelining (RFC 2920 §3.1: message content may begin a
    group): the body and final dot of a small message wait in the command
    buffer and go out in one write with the next message's MAIL, RCPT and
    DATA; the first reply read then answers this message.
    """

    envelope: _Envelope
    #: The end of data went out (or began to): without a reply, the outcome is unknown.
    written: bool = False
    #: The reply to the end of data, once read.
    reply: Reply | None = None

    def result(self) -> SendResult:
        """The message's result; raises its refusal (outcome REFUSED)."""
        assert self.reply is not None
        if not self.reply.is_positive:
            kind = SMTPServiceClosing if self.reply.code == 421 else SMTPResponseError
            error = kind.from_reply(self.reply, ".")
            error.outcome = Outcome.REFUSED
            raise error
        return SendResult(self.reply, tuple(self.envelope.accepted), self.envelope.refused)

    @property
    def outcome(self) -> Outcome:
        """What a failure before the reply means for this message."""
        return Outcome.UNKNOWN if self.written else Outcome.NOT_SENT


def _encode_whole(data: bytes, *, binary: bool, clean: bool) -> bytes:
    """A whole message for BDAT: line endings normalised, no dot-stuffing."""
    if binary:
        return data
    encoder = DataEncoder(stuff=False)
    return encoder.encode(data, clean=clean) + encoder.finish()


def _phase_timeout(timeouts: Timeouts, verb: Verb) -> tuple[str, float]:
    match verb:
        case Verb.CONNECT:
            return "greeting", timeouts.greeting
        case Verb.MAIL:
            return "mail", timeouts.mail
        case Verb.RCPT:
            return "rcpt", timeouts.rcpt
        case Verb.DATA:
            return "data_init", timeouts.data_init
        case Verb.END_DATA:
            return "data_end", timeouts.data_end
        case Verb.QUIT:
            return "quit", timeouts.quit
        case _:
            return "command", timeouts.command


class Session(trio.abc.AsyncResource):
    """One SMTP connection, ready to send any number of messages in turn.

    Get one from :func:`open_session`. A session is not safe for concurrent use:
    a second task calling :meth:`send` while one is running gets
    :class:`trio.BusyResourceError` (use a pool for concurrency).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        hostname: str,
        tls_mode: TLSMode,
        ssl_context: ssl.SSLContext | None,
        timeouts: Timeouts,
        buffers: Buffers,
        pipelining: bool = True,
        chunking: bool = True,
    ) -> None:
        self._id = next(_session_ids)
        self._stream = stream
        self._hostname = hostname
        self._tls_mode = tls_mode
        self._ssl_context = ssl_context
        self._timeouts = timeouts
        self._buffers = buffers
        self._pipelining = pipelining
        self._chunking = chunking
        self._core = ClientCore(
            transcript=self._log if logger.isEnabledFor(logging.DEBUG) else None,
            parser=ReplyParser(buffer=buffers.receive_buffer),
            out_buffer=buffers.command_buffer,
        )
        self._busy = False
        self._timer: trio.CancelScope | None = None
        self._data_started = False
        self._end_answered = False
        self._phase = ""
        self._waiting_for = ""
        self._timeout = 0.0
        self._outcome_unknown = False
        self._closed = False  # aclose() was called
        self._transport_closed = False
        self._sent = 0
        self._failed = 0
        self._round_trips = 0
        self._unanswered_write = True  # the greeting is the first wait
        self._bytes_sent = 0
        self._bytes_received = 0
        self._pending: _Pending | None = None

    def __repr__(self) -> str:
        return (
            f"<trio_sendmail.Session #{self._id} {self._hostname} "
            f"{self._tls_mode.value} state={self._core.state.value}>"
        )

    def _log(self, line: str) -> None:
        logger.debug("[%d] %s", self._id, line)

    # ------------------------------------------------------------ properties

    @property
    def capabilities(self) -> Capabilities:
        """What the server announced in its last EHLO reply (after TLS, if any)."""
        caps = self._core.capabilities
        return caps if caps is not None else _NO_CAPABILITIES

    @property
    def tls(self) -> bool:
        """True when the connection runs TLS."""
        return self._core.tls

    @property
    def authenticated(self) -> bool:
        """True after a successful AUTH."""
        return self._core.authenticated

    @property
    def is_usable(self) -> bool:
        """True when the session can send another message."""
        if self._transport_closed:
            return False
        state = self._core.state
        # A pipelined message's end of data may wait in the buffer (DATA).
        return state is State.READY or (state is State.DATA and self._pending is not None)

    @property
    def data_started(self) -> bool:
        """True once the latest :meth:`send` began to send message data (after
        354, or with the first BDAT chunk)."""
        return self._data_started

    @property
    def outcome_unknown(self) -> bool:
        """True when the latest :meth:`send` wrote the end of its message (the
        final dot, or ``BDAT … LAST``) but did not read the reply: after a
        cancelled send, the server may or may not have accepted the message."""
        return self._outcome_unknown

    @property
    def greeting(self) -> Reply | None:
        """The server's 220 greeting."""
        return self._core.greeting

    def statistics(self) -> SessionStatistics:
        """Counters of this session."""
        return SessionStatistics(
            state=self._core.state.value,
            tls=self._core.tls,
            authenticated=self._core.authenticated,
            messages_sent=self._sent,
            messages_failed=self._failed,
            round_trips=self._round_trips,
            bytes_sent=self._bytes_sent,
            bytes_received=self._bytes_received,
        )

    # --------------------------------------------------- the error boundary

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this SMTP session is closed")
        if self._core.state is State.BROKEN:
            raise SMTPConnectionError("this SMTP session is broken by an earlier error")
        if self._core.state is State.CLOSED:
            raise SMTPConnectionError("the server closed this SMTP session")

    @contextlib.contextmanager
    def _timed(self) -> Iterator[None]:
        """Bound one public operation's I/O with a single cancel scope.

        Each write or read arms the scope with its phase's bound (RFC 5321
        §4.5.3.2). Between two I/Os the last bound still runs: in the DATA
        phase, a message source slower than the data-block bound (3 minutes)
        ends the send, as the server would end it. One scope per operation
        instead of one per I/O keeps the per-message cost low.
        """
        assert self._timer is None, "_timed() inside a timed operation"
        with trio.CancelScope() as scope:
            self._timer = scope
            try:
                yield
            finally:
                self._timer = None
        if scope.cancelled_caught:
            raise self._timeout_error()

    @contextlib.contextmanager
    def _batch(self) -> Iterator[None]:
        """One cancel scope for a run of sends (a bulk worker's messages on
        this session), instead of one per send: each I/O still arms it with
        its phase's bound, and each send turns its own timeout into
        :class:`SMTPTimeoutError` (see :meth:`_send_op`)."""
        assert self._timer is None, "_batch() inside a timed operation"
        with trio.CancelScope() as scope:
            self._timer = scope
            try:
                yield
            finally:
                self._timer = None
        if scope.cancelled_caught:  # pragma: no cover - the sends convert their timeouts
            raise self._timeout_error()

    def _timeout_error(self) -> SMTPTimeoutError:
        error = SMTPTimeoutError(
            f"timed out waiting for {self._waiting_for} ({self._phase}) after {self._timeout:g} s",
            phase=self._phase,
        )
        if self._busy:
            error.outcome = self._failure_outcome()
        return error

    def _failure_outcome(self) -> Outcome:
        """What a failed send means for its message: no answer after the end
        of the data is unknown; an answer (even 421) refused it; before the
        end of the data, nothing was sent."""
        if self._outcome_unknown:
            return Outcome.UNKNOWN
        return Outcome.REFUSED if self._end_answered else Outcome.NOT_SENT

    def _arm(self, phase: str, timeout: float, waiting_for: str) -> None:
        """Bound the next I/O by *timeout* seconds (its phase's bound)."""
        timer = self._timer
        assert timer is not None, "I/O outside a timed operation"
        self._phase = phase
        self._waiting_for = waiting_for
        self._timeout = timeout
        deadline = trio.current_time() + timeout
        # Moving a deadline costs a heap update: keep one that is already
        # within a thousandth of the bound (consecutive I/Os of one message).
        if not deadline - timeout / 1000 <= timer.deadline <= deadline:
            timer.deadline = deadline

    async def _write(
        self, data: bytes | bytearray | memoryview, phase: str, timeout: float
    ) -> None:
        self._arm(phase, timeout, "the server to take our data")
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, OSError) as exc:
            await self._io_failed()
            raise SMTPConnectionError(f"connection lost while sending ({phase}): {exc}") from exc
        except BaseException:
            await self._io_failed()
            raise
        self._bytes_sent += len(data)
        self._unanswered_write = True

    def _take_output(self) -> bytes:
        """The bytes the core queued; a pending message's end of data among them."""
        data = self._core.data_to_send()
        if data and self._pending is not None:
            self._pending.written = True
        return data

    async def _flush(self, phase: str, timeout: float) -> None:
        data = self._take_output()
        if data:
            await self._write(data, phase, timeout)

    async def _read(self) -> Event:
        """Flush, then read the reply to the oldest command of the current
        operation (answering a pending message's end of data on the way)."""
        core = self._core
        while True:
            event = None
            if not core.has_output:  # under PIPELINING, the reply is often here already
                try:
                    event = core.next_event()
                except SMTPError:
                    await self._io_failed()
                    raise
            if event is None:
                event = await self._receive_event()
            if self._pending is None or event.verb is not Verb.END_DATA:
                break
            if self._answer_pending(event.reply):
                # The server refused the pending message and closed: whatever
                # followed it was not sent.
                await self._io_failed()
                raise SMTPServiceClosing.from_reply(event.reply, ".")
        if event.verb in (Verb.END_DATA, Verb.BDAT_LAST):
            self._outcome_unknown = False  # the message has its answer
            self._end_answered = True
        if event.reply.code == 421:
            await self._io_failed()
            raise SMTPServiceClosing.from_reply(event.reply, event.verb.value)
        return event

    def _abandon(self) -> None:
        """Mark the session unusable at once (a send was interrupted with a
        message's end of data still queued): the pool closes it, and nothing
        queued is ever written."""
        self._core.broken()

    def _answer_pending(self, reply: Reply) -> bool:
        """Give the pending message its reply; True when it was a 421 (the
        server closes: the session must be closed)."""
        pending = self._pending
        assert pending is not None
        self._pending = None
        pending.reply = reply
        if reply.is_positive:
            self._sent += 1
        else:
            self._failed += 1
        return reply.code == 421

    async def _settle(self) -> None:
        """Write a pending message's end of data, if still queued, and read its reply.

        Raises:
            SMTPConnectionError, SMTPTimeoutError, SMTPProtocolError: no reply;
                the pending message's :attr:`_Pending.outcome` says what that means.
        """
        if self._pending is None:
            return
        with self._timed():
            event = await self._receive_event()
        assert event.verb is Verb.END_DATA
        if self._answer_pending(event.reply):  # a 421 is its answer, and the end
            await self._io_failed()

    async def _receive_event(self) -> Event:
        """Flush, then read until the oldest command in flight has its reply."""
        core = self._core
        phase, timeout = _phase_timeout(self._timeouts, core.oldest)
        await self._flush(phase, timeout)
        try:
            event = core.next_event()  # under PIPELINING, often already here
            if event is None:
                self._arm(phase, timeout, "a reply from the server")
                if self._unanswered_write:
                    # A round trip: we wait for the server after sending.
                    self._round_trips += 1
                    self._unanswered_write = False
                while event is None:
                    data = await self._stream.receive_some(self._buffers.receive_size)
                    if not data:
                        core.receive_eof()
                        raise SMTPConnectionError(
                            f"the server closed the connection (waiting for: {phase})"
                        )
                    self._bytes_received += len(data)
                    core.receive_data(data)
                    event = core.next_event()
        except (trio.BrokenResourceError, OSError) as exc:
            await self._io_failed()
            raise SMTPConnectionError(f"connection lost ({phase}): {exc}") from exc
        except BaseException:
            await self._io_failed()
            raise
        return event

    async def _io_failed(self) -> None:
        """A command was interrupted (or the server closed): the session is over.

        The core is marked broken (unless the server closed it with 421) and the
        transport is closed at once, without QUIT.
        """
        if self._core.state is not State.CLOSED:
            self._core.broken()
        await self._close_transport()

    async def _close_transport(self) -> None:
        if self._transport_closed:
            return
        self._transport_closed = True
        self._buffers._release()
        await trio.aclose_forcefully(self._stream)

    async def _command(self, method_name: str, *args: object) -> Event:
        getattr(self._core, method_name)(*args)
        return await self._read()

    # ---------------------------------------------------------- opening

    async def _open(
        self,
        ehlo_name: Domain | None,
        authentication: Authentication | None,
        insecure_auth_over_plaintext: bool,
    ) -> None:
        try:
            with self._timed():
                await self._open_steps(ehlo_name, authentication, insecure_auth_over_plaintext)
        except BaseException:
            await self.aclose()
            raise

    async def _open_steps(
        self,
        ehlo_name: Domain | None,
        authentication: Authentication | None,
        insecure_auth_over_plaintext: bool,
    ) -> None:
        if self._tls_mode is TLSMode.IMPLICIT:
            self._stream = await self._handshake(self._stream)
            self._core.tls = True
        greeting = await self._read()
        if not greeting.reply.is_positive:
            raise SMTPResponseError.from_reply(greeting.reply, "CONNECT")
        name = ehlo_name or await _default_ehlo_name(self._stream)
        await self._ehlo(name)
        if self._tls_mode is TLSMode.STARTTLS:
            if not self.capabilities.starttls:
                raise SMTPNotSupportedError(
                    "the server does not offer STARTTLS (no plaintext fallback: "
                    "use TLSMode.INSECURE_PLAINTEXT only for a trusted local relay)"
                )
            event = await self._command("starttls")
            if not event.reply.is_positive:
                raise SMTPResponseError.from_reply(event.reply, "STARTTLS")
            self._stream = await self._handshake(self._stream)
            self._core.tls_established()
            await self._ehlo(name)
        if authentication is not None:
            await self._auth(authentication, insecure_auth_over_plaintext)

    async def _ehlo(self, name: Domain) -> None:
        event = await self._command("ehlo", name)
        if event.reply.is_positive:
            return
        if event.reply.code in (500, 502):  # EHLO unknown: an RFC 821 server
            event = await self._command("helo", name)
            if event.reply.is_positive:
                return
        raise SMTPResponseError.from_reply(event.reply, event.verb.value)

    async def _handshake(self, transport: trio.abc.Stream) -> trio.SSLStream[trio.abc.Stream]:
        if self._ssl_context is None:
            # Loading the system's CAs costs milliseconds: only when TLS is used.
            self._ssl_context = _default_ssl_context()
        stream = trio.SSLStream(
            transport,
            self._ssl_context,
            server_hostname=self._hostname,
            https_compatible=False,
        )
        timeout = self._timeouts.tls_handshake
        try:
            with trio.fail_after(timeout):
                await stream.do_handshake()
        except trio.TooSlowError as exc:
            await self._io_failed()
            raise SMTPTimeoutError(f"TLS handshake took longer than {timeout:g} s",
                                   phase="tls_handshake") from exc  # fmt: skip
        except (trio.BrokenResourceError, OSError) as exc:
            await self._io_failed()
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            raise SMTPTLSError(f"TLS handshake with {self._hostname} failed: {cause}") from exc
        except BaseException:
            await self._io_failed()
            raise
        return stream

    async def _auth(self, authentication: Authentication, insecure_plaintext: bool) -> None:
        if not self._core.tls and not insecure_plaintext:
            raise SMTPNotSupportedError(
                "refusing to send credentials over a connection without TLS "
                "(pass insecure_auth_over_plaintext=True to allow it)"
            )
        offered = self.capabilities.auth_mechanisms
        if not offered:
            raise SMTPNotSupportedError("the server does not offer AUTH")
        mechanism = choose_mechanism(authentication, offered, tls=self._core.tls)
        if mechanism is None:
            wanted = " or ".join(usable_mechanisms(authentication, tls=self._core.tls))
            raise SMTPNotSupportedError(
                f"the server offers AUTH {' '.join(sorted(offered))}, not {wanted}"
            )
        step = mechanism(authentication)
        if isinstance(step, OAuthBearerMechanism):
            step.host = self._hostname
        await step.prepare()
        try:
            event = await self._command("auth", step)
            while event.reply.code == 334:
                event = await self._read()
        except SMTPAuthenticationError as exc:  # 235, but the server did not prove itself
            exc.details = step.error_details
            raise
        if event.reply.code != 235:
            step.failed()
            error = SMTPAuthenticationError.from_reply(event.reply, "AUTH")
            assert isinstance(error, SMTPAuthenticationError)
            error.details = step.error_details
            raise error

    # ------------------------------------------------------------ sending

    async def send(
        self,
        sender: ReversePath | Mailbox | str | Address,
        recipients: Iterable[ForwardPath | Mailbox | str | Address],
        mail: Mail,
        *,
        dsn: DSN | None = None,
        requiretls: bool = False,
        binary: bool = False,
    ) -> SendResult:
        """Send one message.

        Args:
            sender: the reverse-path (``""`` or ``"<>"`` for the null path).
            recipients: the forward-paths; duplicates are sent once.
            mail: the message: bytes, an :class:`email.message.EmailMessage`, a
                :class:`trio.MemoryReceiveChannel` of bytes or any async iterable
                of bytes-like chunks. Line endings are normalised to CRLF and
                lines starting with ``.`` are stuffed, whatever the chunk
                boundaries.
            dsn: delivery status notification options (RFC 3461); the server
                must offer DSN.
            requiretls: ask for REQUIRETLS (RFC 8689): every hop must use TLS.
                Needs a TLS session and a server that offers it.
            binary: send the message unaltered as ``BODY=BINARYMIME`` over BDAT
                (RFC 3030); the server must offer CHUNKING and BINARYMIME.

        Returns:
            The server's final reply, with the recipients accepted and refused.

        Raises:
            SMTPInputError: a bad address or argument (nothing was sent).
            TypeError: *mail* or one of its chunks is not bytes-like.
            SMTPNotSupportedError: the message needs SMTPUTF8 or 8BITMIME and the
                server lacks it, or it exceeds the server's SIZE (nothing was sent).
            SMTPSenderRefused: MAIL was refused; the transaction was reset and the
                session is still usable.
            SMTPRecipientsRefused: every recipient was refused; the transaction
                was reset and the session is still usable.
            SMTPResponseError: DATA or the message was refused. The session is
                still usable.
            SMTPServiceClosing: the server answered 421; the session is closed.
            SMTPConnectionError, SMTPTimeoutError, SMTPProtocolError: the session
                is broken and closed. :attr:`SMTPError.outcome` tells whether
                the message can have been accepted.

        Every :class:`SMTPError` raised here has its ``outcome`` set. If the
        message source raises, or the call is cancelled, during DATA, the
        connection is dropped without the final dot, so the server discards
        the partial message.
        """
        if self._pending is not None:
            raise trio.BusyResourceError("a pipelined send is in progress on this session")
        result = await self._send_op(sender, recipients, mail, _Options(dsn, requiretls, binary))
        assert isinstance(result, SendResult)
        return result

    async def _send_op(
        self,
        sender: ReversePath | Mailbox | str | Address,
        recipients: Iterable[ForwardPath | Mailbox | str | Address],
        mail: Mail | MailBody,
        options: _Options,
        *,
        defer: bool = False,
    ) -> SendResult | _Pending:
        """:meth:`send`; with *defer*, a small message sent with DATA under
        PIPELINING comes back as a :class:`_Pending` whose end of data waits
        in the command buffer for the next operation (or :meth:`_settle`).

        A pending message from an earlier call is answered by the first reply
        this call reads: if this call raises, :attr:`_Pending.reply` tells
        whether it was (else :attr:`_Pending.outcome` applies to it).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        if self._busy:
            raise trio.BusyResourceError("another task is sending on this session")
        self._busy = True
        self._outcome_unknown = False
        self._end_answered = False
        self._data_started = False
        # Format transcript lines only when someone reads them.
        self._core.transcript = self._log if logger.isEnabledFor(logging.DEBUG) else None
        try:
            timer = self._timer
            if timer is None:
                with self._timed():
                    result = await self._send(sender, recipients, mail, options, defer)
            else:  # inside _batch()
                try:
                    result = await self._send(sender, recipients, mail, options, defer)
                except trio.Cancelled:
                    if not timer.cancel_called:
                        raise  # someone else's cancellation
                    raise self._timeout_error() from None
        except SMTPError as exc:
            self._failed += 1
            if exc.outcome is None:
                exc.outcome = self._failure_outcome()
            raise
        except BaseException:
            self._failed += 1
            raise
        finally:
            self._busy = False
        if isinstance(result, SendResult):
            self._sent += 1
        return result

    async def _send(
        self,
        sender: ReversePath | Mailbox | str | Address,
        recipients: Iterable[ForwardPath | Mailbox | str | Address],
        mail: Mail | MailBody,
        options: _Options,
        defer: bool,
    ) -> SendResult | _Pending:
        if not self.is_usable:
            raise SMTPProtocolError(f"session not ready (state: {self._core.state.value})")
        rpath = reverse_path(sender)
        if isinstance(recipients, str | bytes | Address | ForwardPath | Mailbox):
            raise TypeError("recipients must be an iterable of addresses, not a single address")
        fpaths = [forward_path(r) for r in recipients]
        if len(fpaths) > 1:
            fpaths = list(dict.fromkeys(fpaths))  # duplicates are sent once
        elif not fpaths:
            raise SMTPInputError("at least one recipient is required")
        body = mail if isinstance(mail, MailBody) else prepare_mail(mail)
        plan = self._plan(rpath, fpaths, body, options)
        return await self._transaction(rpath, fpaths, body, plan, defer)

    def _plan(
        self, rpath: ReversePath, fpaths: list[ForwardPath], body: MailBody, options: _Options
    ) -> _Plan:
        """Decide the transaction's parameters; raise before anything is sent."""
        caps = self.capabilities
        chunking = self._chunking and caps.chunking
        params: list[str] = []
        clean = False
        if options.binary:
            if not (caps.chunking and "BINARYMIME" in caps):
                raise SMTPNotSupportedError(
                    "binary=True needs CHUNKING and BINARYMIME (RFC 3030), "
                    "which the server does not offer"
                )
            chunking = True
            params.append("BODY=BINARYMIME")
        elif body.data is not None:
            if not body.data.isascii():
                if not caps.eightbitmime:
                    raise SMTPNotSupportedError(
                        "the message has 8-bit bytes and the server does not offer 8BITMIME "
                        "(encode it as 7-bit, e.g. with base64 or quoted-printable)"
                    )
                params.append("BODY=8BITMIME")
        elif caps.eightbitmime:
            # A stream of unknown content: declaring 8BITMIME is always safe.
            params.append("BODY=8BITMIME")
        if body.data is not None:
            if options.binary:
                size = len(body.data)
            else:
                size, clean = measure(body.data)
            limit = caps.size_limit
            if limit is not None and size > limit:
                raise SMTPMessageTooLarge(
                    f"the message is {size} bytes; the server accepts at most {limit}",
                    size=size,
                    limit=limit,
                )
            if "SIZE" in caps:
                params.append(f"SIZE={size}")
        if rpath.needs_smtputf8 or any(f.needs_smtputf8 for f in fpaths):
            if not caps.smtputf8:
                raise SMTPNotSupportedError(
                    "a non-ASCII address needs SMTPUTF8, which the server does not offer"
                )
            params.append("SMTPUTF8")
        if options.dsn is not None:
            if not caps.dsn:
                raise SMTPNotSupportedError("DSN options were given; the server lacks DSN")
            params.extend(options.dsn.mail_params())
        if options.requiretls:
            if not self._core.tls:
                raise SMTPNotSupportedError("REQUIRETLS needs a session that runs TLS")
            if "REQUIRETLS" not in caps:
                raise SMTPNotSupportedError("the server does not offer REQUIRETLS (RFC 8689)")
            params.append("REQUIRETLS")
        return _Plan(params, options.dsn, chunking, options.binary, clean)

    async def _transaction(
        self,
        rpath: ReversePath,
        fpaths: list[ForwardPath],
        body: MailBody,
        plan: _Plan,
        defer: bool = False,
    ) -> SendResult | _Pending:
        core = self._core
        pipelining = self._pipelining and self.capabilities.pipelining
        envelope = _Envelope()
        # With CHUNKING, a whole message that fits one chunk rides with the
        # envelope: BDAT n LAST and its data (RFC 3030 §4.2 allows pipelining it).
        single: bytes | None = None
        if plan.chunking and body.data is not None:
            encoded = _encode_whole(body.data, binary=plan.binary, clean=plan.clean)
            if len(encoded) <= self._buffers.send_size:
                single = encoded

        core.mail(rpath, plan.mail_params)
        if not pipelining:
            envelope.record(await self._read())
            if envelope.sender_ok:
                for fpath in fpaths:
                    core.rcpt(fpath, plan.rcpt_params(fpath))
                    envelope.record(await self._read())
        else:
            # RFC 2920: MAIL, RCPT… and DATA go out together; replies come in order.
            for i, fpath in enumerate(fpaths, 1):
                core.rcpt(fpath, plan.rcpt_params(fpath))
                if i % PIPELINE_BATCH == 0:
                    while core.awaiting_reply:
                        envelope.record(await self._read())
        if pipelining or envelope.accepted:
            if single is not None:
                core.bdat(len(single), last=True)
                await self._write_with_data(single, last=True)
            elif not plan.chunking:
                core.data()
        while core.awaiting_reply:
            envelope.record(await self._read())

        if envelope.sender_reply is not None and not envelope.sender_ok:
            error: SMTPError = SMTPSenderRefused.from_reply(envelope.sender_reply, "MAIL")
            await self._refuse(error, envelope.data_reply)
        if not envelope.accepted:
            await self._refuse(SMTPRecipientsRefused.from_replies(envelope.refused),
                               envelope.data_reply)  # fmt: skip
        if single is not None:
            final = envelope.final_reply
            assert final is not None
        elif plan.chunking:
            final = await self._send_chunks(body, plan)
        else:
            assert envelope.data_reply is not None
            if envelope.data_reply.code != 354:
                error = SMTPResponseError.from_reply(envelope.data_reply, "DATA")
                await self._refuse(error, None)
            data = body.data
            if defer and pipelining and data is not None and len(data) <= self._buffers.send_size:
                # The body and the final dot wait for the next message's
                # envelope: one write and one wait for both (RFC 2920 §3.1).
                self._data_started = True
                self._core.end_data(data, clean=plan.clean)
                self._pending = _Pending(envelope)
                return self._pending
            await self._send_data(body, plan.clean)
            final = await self._final_reply()
        if not final.is_positive:
            error = SMTPResponseError.from_reply(final, "BDAT" if plan.chunking else ".")
            error.outcome = Outcome.REFUSED
            if plan.chunking:  # a refused BDAT leaves the transaction open
                await self._refuse(error, None)
            raise error
        return SendResult(final, tuple(envelope.accepted), envelope.refused)

    async def _final_reply(self) -> Reply:
        """The reply to the end of the message (see :meth:`send` for the outcome
        of an error raised here)."""
        event = await self._read()
        return event.reply

    async def _write_with_data(self, data: bytes, *, last: bool) -> None:
        """Write the queued BDAT command followed by its *data*."""
        command = self._take_output()
        phase = "data_end" if last else "data_block"
        self._data_started = True
        if last:
            self._outcome_unknown = True
        try:
            if len(data) <= self._buffers.send_size:
                await self._write(command + data, phase, self._timeouts.data_block)
            else:  # pragma: no cover - chunks are at most send_size
                await self._write(command, phase, self._timeouts.data_block)
                await self._write(data, phase, self._timeouts.data_block)
        except SMTPError as exc:
            exc.outcome = Outcome.UNKNOWN if last else Outcome.NOT_SENT
            raise

    async def _refuse(self, error: SMTPError, data_reply: Reply | None) -> NoReturn:
        """Raise *error* after ending the refused transaction.

        If ending it fails too (a 421, a lost connection), the session is
        closed or broken, but *error* is what the caller needs to know.
        """
        if error.outcome is None:
            # Refused before the message itself was answered (sender, every
            # recipient, DATA, a BDAT chunk): as if nothing had been sent, even
            # when a pipelined BDAT carried the data along.
            error.outcome = Outcome.NOT_SENT
        try:
            await self._end_transaction(data_reply)
        except SMTPError as exc:
            error.__context__ = exc
            await self._io_failed()
        raise error

    async def _end_transaction(self, data_reply: Reply | None) -> None:
        """After a refusal: end a pipelined DATA that got 354, then RSET."""
        core = self._core
        if data_reply is not None and data_reply.code == 354:
            # RFC 2920 §3.1: DATA was accepted although nothing else was; send
            # an empty message's end so that the server refuses it.
            core.end_data()
            event = await self._read()
            if event.reply.is_positive:
                raise SMTPProtocolError("the server accepted a message with no valid recipient")
        if core.state in (State.MAIL, State.RCPT, State.BDAT):
            await self._command("rset")  # the table admits only 2xx to RSET

    async def _send_data(self, body: MailBody, clean: bool = False) -> None:
        """Send the message after 354 (dot-stuffed), then the final dot."""
        self._data_started = True
        core = self._core
        size = self._buffers.send_size
        timeout = self._timeouts.data_block
        buf = self._buffers.send_buffer
        del buf[:]
        if body.data is not None and len(body.data) <= size:
            # A small whole message: body and final dot go out in one write.
            core.end_data(body.data, clean=clean)
            self._outcome_unknown = True
            try:
                await self._flush("data_end", timeout)
            except SMTPError as exc:
                exc.outcome = Outcome.UNKNOWN
                raise
            return
        try:
            async with contextlib.aclosing(self._chunks(body)) as chunks:
                async for chunk in chunks:
                    encoded = core.encode_data(chunk)
                    if len(buf) + len(encoded) < size:
                        buf += encoded
                        continue
                    if buf:
                        await self._write(buf, "data_block", timeout)
                        del buf[:]
                    if len(encoded) >= size:
                        await self._write(encoded, "data_block", timeout)
                    else:
                        buf += encoded
        except BaseException as exc:
            # The final dot never went out: drop the connection so that the
            # server discards the partial message.
            if isinstance(exc, SMTPError):
                exc.outcome = Outcome.NOT_SENT
            await self._io_failed()
            raise
        await self._end_data(buf)

    async def _end_data(self, buf: bytearray) -> None:
        """Write what is left of the message with the final dot."""
        self._core.end_data()
        buf += self._take_output()
        tail = bytes(buf)
        del buf[:]
        self._outcome_unknown = True
        try:
            await self._write(tail, "data_end", self._timeouts.data_block)
        except SMTPError as exc:
            exc.outcome = Outcome.UNKNOWN
            raise

    async def _send_chunks(self, body: MailBody, plan: _Plan) -> Reply:
        """Send the message as BDAT chunks of at most ``send_size`` bytes, up to
        :data:`BDAT_WINDOW` of them in flight with PIPELINING (one without);
        returns the reply to the last."""
        core = self._core
        size = self._buffers.send_size
        # RFC 3030 §4.2: BDAT may be pipelined only when PIPELINING is in use.
        window = BDAT_WINDOW if self._pipelining and self.capabilities.pipelining else 1
        encoder = None if plan.binary else DataEncoder(stuff=False)
        buf = self._buffers.send_buffer
        del buf[:]

        async def check(event: Event) -> None:
            if not event.reply.is_positive:
                error = SMTPResponseError.from_reply(event.reply, "BDAT")
                while core.awaiting_reply:  # RFC 3030 §4.2: read every reply
                    await self._read()
                await self._refuse(error, None)

        try:
            async with contextlib.aclosing(self._chunks(body)) as chunks:
                async for chunk in chunks:
                    buf += chunk if encoder is None else encoder.encode(chunk)
                    while len(buf) >= size:
                        piece = bytes(buf[:size])
                        del buf[:size]
                        core.bdat(len(piece), last=False)
                        await self._write_with_data(piece, last=False)
                        if core.inflight_count >= window:
                            await check(await self._read())
        except BaseException as exc:
            if isinstance(exc, SMTPError):
                exc.outcome = Outcome.NOT_SENT
            if self._core.state is not State.READY and not isinstance(exc, SMTPResponseError):
                await self._io_failed()
            raise
        if encoder is not None:
            buf += encoder.finish()
        last = bytes(buf)
        del buf[:]
        core.bdat(len(last), last=True)
        await self._write_with_data(last, last=True)
        while core.inflight_count > 1:
            try:
                await check(await self._read())
            except SMTPError as exc:
                if exc.outcome is None:
                    exc.outcome = Outcome.UNKNOWN
                raise
        return await self._final_reply()

    async def _chunks(self, body: MailBody) -> AsyncGenerator[bytes | bytearray | memoryview]:
        """The message's chunks, checked; a whole message comes in slices."""
        eight_bit_ok = self.capabilities.eightbitmime
        if body.data is not None:
            view = memoryview(body.data)
            for start in range(0, len(view), self._buffers.send_size):
                yield view[start : start + self._buffers.send_size]
            return
        assert body.chunks is not None
        iterator = aiter(body.chunks)
        try:
            async for chunk in iterator:
                if not isinstance(chunk, bytes | bytearray | memoryview):
                    raise TypeError(
                        f"message chunks must be bytes-like, not {type(chunk).__name__}"
                    )
                if not eight_bit_ok and not _isascii(chunk):
                    raise SMTPNotSupportedError(
                        "the message has 8-bit bytes and the server does not offer "
                        "8BITMIME; the connection was dropped before the end of data"
                    )
                yield chunk
        except BaseException:
            await close_early(iterator)
            raise

    async def noop(self) -> Reply:
        """Send NOOP (e.g. to check an idle connection) and return the reply."""
        self._check_open()
        with self._timed():
            event = await self._command("noop")
        return event.reply

    async def rset(self) -> Reply:
        """Send RSET and return the reply."""
        self._check_open()
        with self._timed():
            event = await self._command("rset")
        return event.reply

    # ------------------------------------------------------------ closing

    async def aclose(self) -> None:
        """Close the session: QUIT (bounded by ``Timeouts.quit``) when it is
        healthy, then close the stream. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self._transport_closed:
            return
        try:
            if self._core.state in (State.GREETED, State.READY) and not self._core.awaiting_reply:
                with trio.move_on_after(self._timeouts.quit):
                    try:
                        with self._timed():
                            self._core.quit()
                            await self._read()
                    except SMTPError:
                        pass
                    else:
                        await self._stream.aclose()
        finally:
            await self._close_transport()


_shared_context: ssl.SSLContext | None = None


def _default_ssl_context() -> ssl.SSLContext:
    """``ssl.create_default_context()``, made once per process (it verifies
    certificates and host names, and loads the system's CAs)."""
    global _shared_context
    if _shared_context is None:
        _shared_context = ssl.create_default_context()
    return _shared_context


def _isascii(data: bytes | bytearray | memoryview) -> bool:
    if isinstance(data, memoryview):
        return bytes(data).isascii()
    return data.isascii()


_default_name: Domain | None = None


async def _default_ehlo_name(stream: trio.abc.Stream) -> Domain:
    """The local FQDN when it is a valid domain name, else an address literal
    of the local end of the connection (RFC 5321 §4.1.4)."""
    global _default_name
    if _default_name is not None:
        return _default_name
    candidates = [socket.gethostname()]
    with trio.move_on_after(2):
        candidates.append(await trio.to_thread.run_sync(socket.getfqdn, abandon_on_cancel=True))
    for name in reversed(candidates):
        if "." in name and not name.endswith((".localdomain", ".local", ".localhost")):
            try:
                _default_name = domain(name)
            except SMTPInputError:
                continue
            return _default_name
    return _local_literal(stream)


def _local_literal(stream: trio.abc.Stream) -> Domain:
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        host = stream.socket.getsockname()[0]
        return Domain.from_ip(ipaddress.ip_address(host.split("%", 1)[0]))
    return Domain.from_ip(ipaddress.ip_address("127.0.0.1"))


def _check_hostname(hostname: str) -> str:
    if not isinstance(hostname, str) or not hostname:
        raise SMTPInputError("hostname must be a non-empty str")
    check_argument(hostname, "the hostname", utf8=True)
    if " " in hostname:
        raise SMTPInputError(f"hostname {hostname!r} contains a space")
    return hostname


def _default_port(tls: TLSMode) -> int:
    return {
        TLSMode.IMPLICIT: SUBMISSIONS_PORT,
        TLSMode.STARTTLS: SUBMISSION_PORT,
        TLSMode.INSECURE_PLAINTEXT: SMTP_PORT,
    }[tls]


def _raise_connect_error(hostname: str, port: int, exc: OSError) -> NoReturn:
    raise SMTPConnectionError(f"cannot connect to {hostname} port {port}: {exc}") from exc


@asynccontextmanager
async def open_session(
    hostname: str,
    *,
    port: int | None = None,
    tls: TLSMode = TLSMode.IMPLICIT,
    ssl_context: ssl.SSLContext | None = None,
    domain: Domain | str | None = None,
    authentication: Authentication | None = None,
    insecure_auth_over_plaintext: bool = False,
    buffers: Buffers | None = None,
    timeouts: Timeouts = Timeouts(),
    pipelining: bool = True,
    chunking: bool = True,
    stream: trio.abc.Stream | None = None,
) -> AsyncIterator[Session]:
    """Open an SMTP session, ready to :meth:`~Session.send` messages.

    The connection is opened, secured (implicit TLS or required STARTTLS),
    greeted with EHLO and authenticated before the block starts. When the block
    ends, the session sends QUIT if it is healthy and closes the connection.

    Args:
        hostname: the server's domain name or IP address; also the name its
            certificate must carry (checked, with SNI).
        port: defaults to 465 (implicit TLS), 587 (STARTTLS) or 25 (plaintext).
        tls: :class:`TLSMode`.
        ssl_context: trust and TLS settings, the seed's *authenticator*; the
            default is :func:`ssl.create_default_context`, which verifies the
            certificate against the system's CAs (made once per process, when
            TLS is first used: pass your own context to pick up a CA bundle
            that changed since).
        domain: the EHLO name; by default the local FQDN, or else an address
            literal of the local end of the connection.
        authentication: credentials for AUTH, or ``None`` to skip AUTH.
        insecure_auth_over_plaintext: allow AUTH on a connection without TLS.
            Anyone on the path can read the password. Off by default.
        buffers: reusable I/O buffers; a new pair is made when ``None``.
        timeouts: the bound of each phase (RFC 5321 §4.5.3.2 by default).
        pipelining: use PIPELINING (RFC 2920) when the server offers it.
        chunking: send messages with BDAT (CHUNKING, RFC 3030) when the server
            offers it: no dot-stuffing, and a small message costs one round trip
            with pipelining.
        stream: an already-connected stream to use instead of opening a TCP
            connection (for tests, proxies, or Unix sockets); *hostname* is
            then only used for the certificate check.

    Raises:
        SMTPInputError: a malformed hostname or EHLO domain.
        SMTPConnectionError: the connection could not be opened.
        SMTPTLSError: the TLS handshake or the certificate check failed.
        SMTPTimeoutError: a phase timed out.
        SMTPNotSupportedError: STARTTLS or a usable AUTH mechanism is missing,
            or AUTH would go over plaintext.
        SMTPAuthenticationError: the credentials were refused.
        SMTPResponseError: the greeting, EHLO or STARTTLS was refused
            (:class:`SMTPServiceClosing` for 421).
        trio.BusyResourceError: *buffers* is in use by another session.

    The connection is closed whenever this raises.
    """
    config = _SessionConfig.make(
        hostname,
        port=port,
        tls=tls,
        ssl_context=ssl_context,
        domain=domain,
        authentication=authentication,
        insecure_auth_over_plaintext=insecure_auth_over_plaintext,
        timeouts=timeouts,
        pipelining=pipelining,
        chunking=chunking,
    )
    session = await _connect(config, buffers=buffers, stream=stream)
    async with session:
        yield session


@attrs.frozen
class _SessionConfig:
    """Validated connection parameters (shared by open_session and the pool)."""

    hostname: str
    port: int
    tls: TLSMode
    ssl_context: ssl.SSLContext | None = attrs.field(repr=False)
    ehlo_name: Domain | None
    authentication: Authentication | None = attrs.field(repr=False)
    insecure_auth_over_plaintext: bool
    timeouts: Timeouts
    pipelining: bool
    chunking: bool

    @classmethod
    def make(
        cls,
        hostname: str,
        *,
        port: int | None,
        tls: TLSMode,
        ssl_context: ssl.SSLContext | None,
        domain: Domain | str | None,
        authentication: Authentication | None,
        insecure_auth_over_plaintext: bool,
        timeouts: Timeouts,
        pipelining: bool,
        chunking: bool,
    ) -> _SessionConfig:
        _check_hostname(hostname)
        if not isinstance(tls, TLSMode):
            raise TypeError("tls must be a TLSMode")
        if port is None:
            port = _default_port(tls)
        if not isinstance(port, int) or not 0 < port < 65536:
            raise SMTPInputError(f"invalid port {port!r}")
        return cls(
            hostname=hostname,
            port=port,
            tls=tls,
            ssl_context=ssl_context,
            ehlo_name=None if domain is None else _coerce_domain(domain),
            authentication=authentication,
            insecure_auth_over_plaintext=insecure_auth_over_plaintext,
            timeouts=timeouts,
            pipelining=pipelining,
            chunking=chunking,
        )


async def _connect(
    config: _SessionConfig,
    *,
    buffers: Buffers | None = None,
    stream: trio.abc.Stream | None = None,
) -> Session:
    """Open, secure, greet and authenticate one session (closed if this raises)."""
    if buffers is None:
        buffers = Buffers()
    buffers._acquire()
    hostname, port, timeouts = config.hostname, config.port, config.timeouts
    try:
        if stream is None:
            try:
                with trio.fail_after(timeouts.connect):
                    stream = await trio.open_tcp_stream(hostname, port)
            except trio.TooSlowError as exc:
                raise SMTPTimeoutError(
                    f"connecting to {hostname} port {port} took longer than "
                    f"{timeouts.connect:g} s",
                    phase="connect",
                ) from exc
            except OSError as exc:
                _raise_connect_error(hostname, port, exc)
    except BaseException:
        buffers._release()
        raise
    session = Session(
        stream,
        hostname=hostname,
        tls_mode=config.tls,
        ssl_context=config.ssl_context,
        timeouts=timeouts,
        buffers=buffers,
        pipelining=config.pipelining,
        chunking=config.chunking,
    )
    await session._open(
        config.ehlo_name, config.authentication, config.insecure_auth_over_plaintext
    )
    return session


def _coerce_domain(value: Domain | str) -> Domain:
    return domain(value)
