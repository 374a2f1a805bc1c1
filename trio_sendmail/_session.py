"""The public session: one SMTP connection, many messages in turn.

Theory of operation
-------------------
A :class:`Session` is the public face of three layers:

* the :class:`~trio_sendmail._driver.Driver` owns the stream, the read/write
  pump and the one place where trio and OS errors become SMTP errors;
* :func:`~trio_sendmail._runner.run_transaction` sends one message through it;
* the sans-io :class:`~trio_sendmail._core.ClientCore` below them checks every
  command against the state table, frames the body, and records what each
  reply and each write means for the message in its
  :class:`~trio_sendmail._transaction.Transaction`.

:meth:`Session.send` is the error boundary of a message: every
:class:`SMTPError` it raises gets its :attr:`~SMTPError.outcome` from the
transaction record (:func:`~trio_sendmail._transaction.settle_error`), and a
send that raised while its transaction was open, other than by a clean refusal,
drops the connection (a message whose data was interrupted is never followed by
another on the same connection). Input is checked before any I/O.

**Pipelining across messages** (RFC 2920 §3.1: message content may open a
pipelined group). For the bulk sender, a small message sent with DATA can be
left *pending*: its body and final dot wait in the command buffer and go out
with the next message's envelope, and the first reply read answers it. Until
it is answered the session refuses a plain :meth:`Session.send`; if the run is
interrupted first, the connection is dropped so that the buffered bytes never
go out.
"""

from __future__ import annotations

import contextlib
import email.message
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from email.headerregistry import Address
from typing import Unpack, overload

import attrs
import trio

from ._address import ForwardPath, Mailbox, ReversePath
from ._capabilities import Capabilities
from ._core import State
from ._driver import Driver
from ._dsn import DSN
from ._errors import (
    Outcome,
    SMTPConnectionError,
    SMTPError,
    SMTPTimeoutError,
    SMTPUsageError,
)
from ._inputs import Recipient, Sender, envelope, message_envelope
from ._message import Mail, MailBody, prepare_mail
from ._opening import open_steps
from ._plan import Options, PlanMemo, message_options, plan
from ._reply import Reply
from ._runner import run_transaction
from ._settings import (
    ConnectionOptions,
    ConnectionSettings,
    Connector,
    Timeouts,
    TLSMode,
    connection_settings,
)
from ._transaction import OutcomeTracker, SendResult, Transaction, settle_error

__all__ = [
    "SendResult",
    "Session",
    "SessionStatistics",
    "TLSMode",
    "Timeouts",
    "open_session",
]

logger = logging.getLogger("trio_sendmail.transcript")

_session_ids = itertools.count(1)
_NO_CAPABILITIES = Capabilities()


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


class Session(trio.abc.AsyncResource):
    """One SMTP connection, ready to send any number of messages in turn.

    Get one from :func:`open_session`. A session is not safe for concurrent use:
    a second task calling :meth:`send` while one is running gets
    :class:`trio.BusyResourceError` (use a pool for concurrency).
    """

    def __init__(self, driver: Driver, *, pipelining: bool = True, chunking: bool = True) -> None:
        self._driver = driver
        self._core = driver.core
        self._pipelining = pipelining
        self._chunking = chunking
        self._busy = False
        self._closed = False  # aclose() was called
        self._sent = 0
        self._failed = 0
        #: The transaction of the latest send, once it began, and whether that
        #: send raised (a reply the session could not trust is no answer).
        self._last: Transaction | None = None
        self._last_raised = False
        self._last_error: Outcome | None = None  # the outcome of the error it raised
        #: A message whose end of data is queued or written, not answered yet.
        self._pending: Transaction | None = None
        self._plans = PlanMemo()

    def __repr__(self) -> str:
        driver = self._driver
        tls = "tls" if self._core.tls else "plain"
        return (
            f"<trio_sendmail.Session #{driver.session_id} {driver.hostname} "
            f"{tls} state={self._core.state.value}>"
        )

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
        if self._driver.transport_closed:
            return False
        state = self._core.state
        # A pipelined message's end of data may wait in the buffer (DATA).
        return state is State.READY or (state is State.DATA and self._pending is not None)

    @property
    def data_started(self) -> bool:
        """True once the latest :meth:`send` began to send message data."""
        return self._last is not None and self._last.data_written

    @property
    def outcome_unknown(self) -> bool:
        """True when the latest :meth:`send` wrote the end of its message (the
        final dot, or ``BDAT … LAST``) and no reply proves what became of it:
        after a cancelled send, the server may or may not have accepted it."""
        last = self._last
        if last is None:
            return False
        if self._last_raised:
            return (self._last_error or last.failure_outcome) is Outcome.UNKNOWN
        return last.outcome is Outcome.UNKNOWN

    @property
    def greeting(self) -> Reply | None:
        """The server's 220 greeting."""
        return self._core.greeting

    def statistics(self) -> SessionStatistics:
        """Counters of this session."""
        driver = self._driver
        return SessionStatistics(
            state=self._core.state.value,
            tls=self._core.tls,
            authenticated=self._core.authenticated,
            messages_sent=self._sent,
            messages_failed=self._failed,
            round_trips=driver.round_trips,
            bytes_sent=driver.bytes_sent,
            bytes_received=driver.bytes_received,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this SMTP session is closed")
        if self._core.state is State.BROKEN:
            raise SMTPConnectionError("this SMTP session is broken by an earlier error")
        if self._core.state is State.CLOSED:
            raise SMTPConnectionError("the server closed this SMTP session")

    # ------------------------------------------------------------ sending

    @overload
    async def send(
        self,
        sender: Sender,
        recipients: Iterable[Recipient],
        mail: Mail,
        *,
        dsn: DSN | None = None,
        requiretls: bool = False,
        binary: bool = False,
        tracker: OutcomeTracker | None = None,
    ) -> SendResult: ...

    @overload
    async def send(
        self,
        sender: Sender | None = None,
        recipients: Iterable[Recipient] | None = None,
        *,
        mail: email.message.Message,
        dsn: DSN | None = None,
        requiretls: bool = False,
        binary: bool = False,
        tracker: OutcomeTracker | None = None,
    ) -> SendResult: ...

    async def send(
        self,
        sender: Sender | None = None,
        recipients: Iterable[Recipient] | None = None,
        mail: Mail | None = None,
        *,
        dsn: DSN | None = None,
        requiretls: bool = False,
        binary: bool = False,
        tracker: OutcomeTracker | None = None,
    ) -> SendResult:
        """Send one message.

        Args:
            sender: the reverse-path (``""`` or ``"<>"`` for the null path).
                ``None`` (or omitted) with an :class:`email.message.Message`:
                its ``Sender`` field, else the one mailbox of its ``From``
                field (``Resent-Sender``/``Resent-From`` in a resent message).
            recipients: the forward-paths; duplicates are sent once. ``None``
                (or omitted) with an :class:`email.message.Message`: the
                addresses of its ``To``, ``Cc`` and ``Bcc`` fields (the
                ``Resent-`` ones in a resent message), as
                :meth:`smtplib.SMTP.send_message` does.
            mail: the message: bytes, an :class:`email.message.EmailMessage`, a
                :class:`trio.MemoryReceiveChannel` of bytes or any async iterable
                of bytes-like chunks. Line endings are normalised to CRLF and
                lines starting with ``.`` are stuffed, whatever the chunk
                boundaries. A message object is sent without its ``Bcc`` and
                ``Resent-Bcc`` fields (your object is not changed); bytes and
                streams are sent exactly as given, headers included.
            dsn: delivery status notification options (RFC 3461); the server
                must offer DSN.
            requiretls: ask for REQUIRETLS (RFC 8689): every hop must use TLS.
                Needs a TLS session and a server that offers it.
            binary: send the message unaltered as ``BODY=BINARYMIME`` over BDAT
                (RFC 3030); the server must offer CHUNKING and BINARYMIME.
            tracker: an :class:`OutcomeTracker` that tells the message's
                outcome however this call ends, cancellation included.

        Returns:
            The server's final reply, with the recipients accepted and refused.

        Raises:
            SMTPInputError: a bad address or argument, or no sender or
                recipients given with bytes or a stream (nothing was sent).
            SMTPUsageError: the session cannot take a message now (nothing was sent).
            TypeError: *mail* or one of its chunks is not bytes-like.
            SMTPNotSupportedError: the message needs SMTPUTF8 or 8BITMIME and the
                server lacks it, or it exceeds the server's SIZE (nothing was sent).
            SMTPSenderRefused: MAIL was refused; the transaction was reset and the
                session is still usable.
            SMTPRecipientsRefused: every recipient was refused; the transaction
                was reset and the session is still usable.
            SMTPResponseError: DATA or the message was refused (under LMTP:
                for every recipient). The session is still usable.
            SMTPPartialDelivery: LMTP only: the message was delivered to some
                recipients and refused for others (:attr:`Outcome.PARTIAL`);
                the error tells which. The session is still usable.
            SMTPServiceClosing: the server answered 421; the session is closed.
            SMTPConnectionError, SMTPTimeoutError, SMTPProtocolError: the session
                is broken and closed. :attr:`SMTPError.outcome` tells whether
                the message can have been accepted.

        Every :class:`SMTPError` raised here has its ``outcome`` set, derived
        from what went over the wire (see :class:`Outcome`). If the
        message source raises, or the call is cancelled, during DATA, the
        connection is dropped without the final dot, so the server discards
        the partial message.
        """
        if self._pending is not None:
            raise trio.BusyResourceError("a pipelined send is in progress on this session")
        sender, recipients, mail = message_envelope(sender, recipients, mail)
        options = message_options(dsn, requiretls, binary)
        result = await self._send_op(sender, recipients, mail, options, tracker=tracker)
        assert result is not None
        return result

    async def _send_op(
        self,
        sender: ReversePath | Mailbox | str | Address,
        recipients: Iterable[ForwardPath | Mailbox | str | Address],
        mail: Mail | MailBody,
        options: Options,
        *,
        tracker: OutcomeTracker | None = None,
        defer: bool = False,
    ) -> SendResult | None:
        """:meth:`send`; with *defer*, a small message sent with DATA under
        PIPELINING may leave its end of data queued for the next operation
        (or :meth:`_settle`): it then returns ``None``, and *tracker* follows it.

        A pending message from an earlier call is answered by the first reply
        this call reads; its own transaction records it.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        driver = self._driver
        core = self._core
        if self._closed or core.state is State.BROKEN or core.state is State.CLOSED:
            self._check_open()  # raises
        if self._busy:
            raise trio.BusyResourceError("another task is sending on this session")
        if tracker is None:
            tracker = OutcomeTracker()
        opened = tracker._transaction
        # LMTP answers each recipient after the end of data: no deferring it.
        defer = defer and not core.lmtp
        self._busy = True
        self._last = None
        # Format transcript lines only when someone reads them.
        core.transcript = driver.log if logger.isEnabledFor(logging.DEBUG) else None
        try:
            rpath, fpaths = envelope(sender, recipients)
            body = mail if isinstance(mail, MailBody) else prepare_mail(mail)
            # is_usable and capabilities, without their calls:
            state = core.state
            if driver.transport_closed or not (
                state is State.READY or (state is State.DATA and self._pending is not None)
            ):
                raise SMTPUsageError(f"session not ready (state: {core.state.value})")
            caps = core.capabilities
            if caps is None:
                caps = _NO_CAPABILITIES
            decided = plan(
                caps,
                tls=core.tls,
                use_chunking=self._chunking,
                sender=rpath,
                recipients=fpaths,
                body=body,
                options=options,
                memo=self._plans,
            )
            pipelining = self._pipelining and caps.pipelining
            timer = driver.timer
            if timer is None:
                with driver.timed():
                    result = await run_transaction(driver, tracker, rpath, fpaths, body, decided,
                                                   pipelining=pipelining, defer=defer)  # fmt: skip
            else:  # inside batch()
                try:
                    result = await run_transaction(driver, tracker, rpath, fpaths, body, decided,
                                                   pipelining=pipelining, defer=defer)  # fmt: skip
                except trio.Cancelled:
                    if not timer.cancel_called:
                        raise  # someone else's cancellation
                    raise driver.timeout_error() from None
        except BaseException as exc:
            txn = tracker._transaction if tracker._transaction is not opened else None
            if isinstance(exc, SMTPError):
                settle_error(exc, txn, tracker)
            self._failed += 1
            if txn is not None:
                self._last = txn
                self._last_raised = True
                self._last_error = exc.outcome if isinstance(exc, SMTPError) else None
                if not self._clean():
                    await driver.fail()
            raise
        finally:
            self._busy = False
            if self._pending is not None:
                self._answered()
        txn = tracker._transaction
        self._last = txn
        self._last_raised = False
        if result is None:
            self._pending = txn
        else:
            self._sent += 1
        return result

    def _clean(self) -> bool:
        """True when nothing of a transaction is left queued or unanswered."""
        core = self._core
        return core.state is State.READY and not core.awaiting_reply and not core.has_output

    def _answered(self) -> None:
        """Count the pending message once its end of data has its reply."""
        pending = self._pending
        if pending is not None and pending.final_reply is not None:
            self._pending = None
            if pending.final_reply.is_positive:
                self._sent += 1
            else:
                self._failed += 1

    async def _settle(self, tracker: OutcomeTracker | None = None) -> None:
        """Write a pending message's end of data, if still queued, and read its
        reply (the pending transaction records it, or tells why not; *tracker*
        follows it)."""
        pending = self._pending
        if pending is None:
            return
        try:
            with self._driver.timed():
                await self._driver.event()
        except SMTPError as exc:
            settle_error(exc, pending, tracker)
            raise
        finally:
            self._answered()

    @contextlib.contextmanager
    def _batch(self) -> Iterator[None]:
        """One cancel scope for a run of sends (a bulk worker's messages on
        this session), instead of one per send: each I/O still arms it with
        its phase's bound, and each send turns its own timeout into
        :class:`SMTPTimeoutError`."""
        with self._driver.timer_scope("_batch()"):
            yield

    async def noop(self) -> Reply:
        """Send NOOP (e.g. to check an idle connection) and return the reply."""
        return await self._simple_command(self._core.noop)

    async def rset(self) -> Reply:
        """Send RSET and return the reply."""
        return await self._simple_command(self._core.rset)

    async def _simple_command(self, queue: Callable[[], None]) -> Reply:
        """Queue one command with *queue* (a :class:`ClientCore` method), send
        it and return its reply."""
        self._check_open()
        with self._driver.timed():
            queue()
            event = await self._driver.event()
        return event.reply

    # ------------------------------------------------------------ closing

    async def aclose(self) -> None:
        """Close the session: QUIT (bounded by ``Timeouts.quit``) when it is
        healthy, then close the stream. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        driver = self._driver
        if driver.transport_closed:
            return
        try:
            core = self._core
            if core.state in (State.GREETED, State.READY) and self._clean_for_quit():
                with trio.move_on_after(driver.timeouts.quit):
                    try:
                        with driver.timed():
                            core.quit()
                            await driver.event()
                    except SMTPError:
                        pass
                    else:
                        await driver.stream.aclose()
        finally:
            await driver.close_transport()

    def _clean_for_quit(self) -> bool:
        core = self._core
        return not core.awaiting_reply and not core.has_output


@asynccontextmanager
async def open_session(
    server: str | ConnectionSettings,
    /,
    *,
    stream: trio.abc.Stream | None = None,
    **options: Unpack[ConnectionOptions],
) -> AsyncIterator[Session]:
    """Open an SMTP session, ready to :meth:`~Session.send` messages.

    The connection is opened, secured (implicit TLS or required STARTTLS),
    greeted with EHLO and authenticated before the block starts. When the block
    ends, the session sends QUIT if it is healthy and closes the connection.

    Args:
        server: the server's host name (or IP address), or a
            :class:`ConnectionSettings` that says everything about the connection.
        stream: an already-connected stream to use instead of opening a TCP
            connection (for tests or Unix sockets); the host name is then only
            used for the certificate check. To go through a proxy, pass
            ``connect`` instead (it also works for pools).
        options: the keyword arguments of :class:`ConnectionSettings`
            (:class:`ConnectionOptions`: ``port``, ``tls``, ``ssl_context``,
            ``domain``, ``authentication``, ``insecure_auth_over_plaintext``,
            ``timeouts``, ``pipelining``, ``chunking``, ``connect``, ``protocol``,
            ``unix_socket``, ``send_size``, ``receive_size``); given with a
            :class:`ConnectionSettings`, they replace its values.

    Raises:
        SMTPInputError: a malformed hostname, port or EHLO domain.
        TypeError: an option of the wrong type.
        SMTPConnectionError: the connection could not be opened.
        SMTPTLSError: the TLS handshake or the certificate check failed.
        SMTPTimeoutError: a phase timed out.
        SMTPNotSupportedError: STARTTLS or a usable AUTH mechanism is missing,
            or AUTH would go over plaintext.
        SMTPAuthenticationError: the credentials were refused.
        SMTPResponseError: the greeting, EHLO or STARTTLS was refused
            (:class:`SMTPServiceClosing` for 421).

    The connection is closed whenever this raises.
    """
    config = connection_settings(server, options)
    session = await _connect(config, stream=stream)
    async with session:
        yield session


def _unix_connector(path: str) -> Connector:
    """A connector to the Unix-domain socket at *path* (host and port unused)."""

    async def connect(_hostname: str, _port: int) -> trio.abc.Stream:
        try:
            return await trio.open_unix_socket(path)
        except OSError as exc:
            raise OSError(exc.errno, f"Unix socket {path}: {exc.strerror or exc}") from exc

    return connect


async def _connect(
    config: ConnectionSettings,
    *,
    stream: trio.abc.Stream | None = None,
) -> Session:
    """Open, secure, greet and authenticate one session (closed if this raises)."""
    hostname, port, timeouts = config.hostname, config.resolved_port, config.timeouts
    if stream is None:
        # A proxy (config.connect) returns the tunnel; the library still does
        # TLS over it, for *hostname*. Looked up at each call, so that a patched
        # trio.open_tcp_stream is honoured.
        connect = config.connect or trio.open_tcp_stream
        if config.unix_socket is not None:
            connect = _unix_connector(config.unix_socket)
        try:
            with trio.fail_after(timeouts.connect):
                stream = await connect(hostname, port)
        except trio.TooSlowError as exc:
            raise SMTPTimeoutError(
                f"connecting to {hostname} port {port} took longer than {timeouts.connect:g} s",
                phase="connect",
            ) from exc
        except (OSError, trio.BrokenResourceError) as exc:
            raise SMTPConnectionError(f"cannot connect to {hostname} port {port}: {exc}") from exc
        if not isinstance(stream, trio.abc.Stream):
            raise TypeError(f"connect returned a {type(stream).__name__}, not a trio.abc.Stream")
    driver = Driver(
        stream,
        session_id=next(_session_ids),
        hostname=hostname,
        timeouts=timeouts,
        send_size=config.send_size,
        receive_size=config.receive_size,
    )
    session = Session(driver, pipelining=config.pipelining, chunking=config.chunking)
    try:
        with driver.timed():
            await open_steps(driver, config)
    except BaseException:
        await session.aclose()
        raise
    return session
