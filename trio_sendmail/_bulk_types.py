"""What a bulk run takes and gives back: the messages, read from the caller's input as
workers need them, and one result per message, with progress snapshots and a summary.

Theory of operation
-------------------
:func:`~trio_sendmail.send_bulk` (``_bulk.py``) reads its input through a
:class:`Source`. Workers read a sync iterable themselves (``next`` never waits);
an async one (e.g. a :class:`trio.MemoryReceiveChannel`) is pulled by a feeder
task into an unbuffered channel, so that at most one message per worker is held.
Either way the input is read only as fast as messages go out, so memory stays
bounded however long it is. A message taken from the input is a :class:`Job`
until its :class:`BulkResult` is reported: the job counts the attempts, keeps
the :class:`~trio_sendmail._transaction.OutcomeTracker` of the latest one, and
holds a streamed message's :class:`~trio_sendmail._message.OneShotStream`, which
can be read only once (so such a message is retried only until its first chunk
was read). A message the feeder took but could not hand over is reported
``NOT_SENT``.
"""

from __future__ import annotations

import email.message
import enum
import functools
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator

import attrs
import trio

from ._dsn import DSN
from ._errors import Outcome
from ._inputs import Recipient, Sender, check_recipients, message_envelope
from ._message import Mail, OneShotStream, close_early, prepare_mail
from ._transaction import OutcomeTracker, SendResult

__all__ = [
    "END",
    "LATER",
    "BulkMessage",
    "BulkProgress",
    "BulkResult",
    "BulkSummary",
    "Job",
    "Marker",
    "Source",
]


def _recipients(value: Iterable[Recipient]) -> tuple[Recipient, ...]:
    return tuple(check_recipients(value))


@attrs.frozen(init=False)
class BulkMessage:
    """One message of a bulk run: its envelope, its content, and your key.

    Args:
        sender: the reverse-path. Omitted (``None``) when *mail* is an
            :class:`email.message.Message`: its ``Sender`` field, else the one
            mailbox of its ``From`` field (see :meth:`Session.send`).
        recipients: the forward-paths. Omitted (``None``) when *mail* is an
            :class:`email.message.Message`: the addresses of its ``To``,
            ``Cc`` and ``Bcc`` fields.
        mail: the message (bytes or an :class:`email.message.EmailMessage` can be
            retried; a stream only until its first chunk was read). A message
            object is sent without its ``Bcc`` fields; bytes and streams as given.
        key: anything that identifies the message for you (returned in its result).
        dsn: DSN options for this message.
        requiretls: ask for REQUIRETLS (RFC 8689) for this message.
        binary: send this message unaltered as ``BODY=BINARYMIME`` (RFC 3030).

    ``dsn``, ``requiretls`` and ``binary`` are the options of :meth:`Session.send`.
    The sender and recipients read from the headers are read here, once, so
    :attr:`sender` and :attr:`recipients` always hold the envelope. (One
    signature, not overloads as on :meth:`Session.send`, so that
    :func:`attrs.evolve` type-checks.)

    Raises:
        SMTPInputError: the sender or recipients are omitted and *mail* is not
            an :class:`email.message.Message`, or its header fields name none.
        TypeError: *recipients* is a single address, or *mail* is missing.
    """

    sender: Sender
    recipients: tuple[Recipient, ...] = attrs.field(converter=_recipients)
    mail: Mail = attrs.field(repr=False)
    key: object = None
    dsn: DSN | None = None
    requiretls: bool = False
    binary: bool = False

    def __init__(
        self,
        sender: Sender | None = None,
        recipients: Iterable[Recipient] | None = None,
        mail: Mail | None = None,
        key: object = None,
        dsn: DSN | None = None,
        requiretls: bool = False,
        binary: bool = False,
    ) -> None:
        sender, recipients, mail = message_envelope(sender, recipients, mail)
        self.__attrs_init__(sender, recipients, mail, key, dsn, requiretls, binary)


@attrs.frozen
class BulkResult:
    """The outcome of one message.

    Attributes:
        message: the message.
        status: what became of it, an :class:`~trio_sendmail.Outcome`:
            ``ACCEPTED``, the server took it; ``REFUSED``, the server refused it
            (a 5xx reply to ``MAIL``, to every ``RCPT``, to ``DATA``, ``BDAT``
            or the end of data, or a 4xx one still after the retries);
            ``NOT_SENT``, the server cannot have it and refused none of it (a
            malformed message, or one it cannot take, found before it went
            out; a connection lost or timed out still after the retries; or the
            run stopped first), so sending it again cannot duplicate it;
            ``UNKNOWN``, its end of data went out and no reply proves it was
            not accepted; ``PARTIAL`` (LMTP only), the server delivered it to
            some recipients and refused it for others (never retried: the
            :class:`~trio_sendmail.SMTPPartialDelivery` in ``error`` says
            who has it). ``error`` tells why.
        result: the server's final reply and refused recipients, when accepted
            or partly delivered (its ``final_replies`` has each recipient's
            reply to the end of data).
        error: the last error, when not accepted.
        attempts: how many times it was tried.
    """

    message: BulkMessage
    status: Outcome
    result: SendResult | None = None
    error: BaseException | None = None
    attempts: int = 0


@attrs.frozen
class BulkProgress:
    """A snapshot of a bulk run, given to the ``progress`` callback."""

    accepted: int
    refused: int
    unknown: int
    not_sent: int
    retried: int
    in_flight: int
    elapsed: float
    #: LMTP: messages delivered to some recipients and refused for others.
    partial: int = 0

    @property
    def done(self) -> int:
        """Messages with a final result."""
        return self.accepted + self.refused + self.unknown + self.not_sent + self.partial

    @property
    def rate(self) -> float:
        """Accepted messages per second so far."""
        return self.accepted / self.elapsed if self.elapsed > 0 else 0.0


@attrs.define
class BulkSummary:
    """What :func:`send_bulk` returns."""

    accepted: int = 0
    refused: int = 0
    unknown: int = 0
    not_sent: int = 0
    retried: int = 0
    #: LMTP: messages delivered to some recipients and refused for others.
    partial: int = 0
    #: Every result, in completion order, when no ``on_result`` was given.
    results: list[BulkResult] = attrs.field(factory=list)


class Marker(enum.Enum):
    """What a :class:`Source` gives instead of a message."""

    END = "the input is exhausted"
    LATER = "nothing can be taken without waiting"


END = Marker.END
LATER = Marker.LATER


class Source:
    """The caller's messages, taken by the workers as they need them.

    A sync iterable is read by the workers themselves (``next`` never waits);
    an async one by a feeder task through an unbuffered channel, so that at
    most one message per worker is held.
    """

    def __init__(
        self,
        report: Callable[[BulkResult], None],
        messages: Iterable[BulkMessage] | AsyncIterable[BulkMessage],
    ) -> None:
        self._report = report
        self._messages = messages
        self._iterator: Iterator[BulkMessage] | None = None
        self._channel: trio.MemoryReceiveChannel[BulkMessage] | None = None
        if not isinstance(messages, AsyncIterable):
            self._iterator = iter(messages)

    def start(self, nursery: trio.Nursery) -> None:
        if self._iterator is None:
            send, self._channel = trio.open_memory_channel[BulkMessage](0)
            nursery.start_soon(self._feed, send)

    async def _feed(self, send_channel: trio.MemorySendChannel[BulkMessage]) -> None:
        async with send_channel:
            assert isinstance(self._messages, AsyncIterable)
            iterator = aiter(self._messages)
            try:
                async for message in iterator:
                    try:
                        await send_channel.send(message)
                    except BaseException as exc:  # taken from the input: it must be reported
                        self._report(BulkResult(message, Outcome.NOT_SENT, error=exc))
                        raise
            except BaseException:
                await close_early(iterator)
                raise

    def take_nowait(self) -> BulkMessage | Marker:
        """The next message, :data:`LATER` or :data:`END`."""
        if self._iterator is not None:
            return next(self._iterator, END)
        assert self._channel is not None
        try:
            return self._channel.receive_nowait()
        except trio.WouldBlock:
            return LATER
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return END

    async def take(self) -> BulkMessage | Marker:
        """The next message, or :data:`END`."""
        if self._iterator is not None:
            await trio.lowlevel.checkpoint()
            return next(self._iterator, END)
        assert self._channel is not None
        try:
            return await self._channel.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return END

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()


@attrs.define(eq=False)
class Job:
    """A message taken from the input, until its result is reported."""

    message: BulkMessage
    attempts: int = 0
    #: Follows the current attempt (a new one for each attempt).
    tracker: OutcomeTracker = attrs.field(factory=OutcomeTracker)
    #: The message's stream, when it is one: it can be read only once.
    stream: OneShotStream | None = None
    reported: bool = False
    #: An earlier attempt ended with an unknown outcome (``retry_unknown``).
    was_unknown: bool = False
    #: send_bulk's ``before_end_of_data``, awaited with this message.
    gate: Callable[[BulkMessage], Awaitable[None]] | None = None

    def body(self) -> Mail:
        """What to send: the message, or its stream (noting when it is read)."""
        mail = self.message.mail
        if self.stream is None and not isinstance(mail, bytes | email.message.Message):
            body = prepare_mail(mail)
            if body.chunks is None:
                assert body.data is not None
                return body.data
            self.stream = OneShotStream(body.chunks)
        if self.stream is not None:
            return self.stream
        return mail

    def attempt(self) -> OutcomeTracker:
        self.attempts += 1
        gate = self.gate
        if gate is None:
            self.tracker = OutcomeTracker()
        else:
            self.tracker = OutcomeTracker(before_end_of_data=functools.partial(gate, self.message))
        return self.tracker
