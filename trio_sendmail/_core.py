"""The sans-io SMTP client core: one state table, a FIFO of commands in flight.

Theory of operation
-------------------
:class:`ClientCore` turns method calls named after SMTP verbs into bytes to
send, and bytes received into :class:`Event`\\ s (a reply paired with the
command it answers). It does no I/O and does not import trio: the session
driver moves the bytes.

* **One state table.** :data:`~trio_sendmail._table.TABLE` (``_table.py``)
  states, for every command, the states in which it may be issued, and the
  state each reply class (2xx … 5xx) leads to (RFC 5321 §4.1.4, §4.2, §4.3.2;
  RFC 3207; RFC 4954). A reply class the table does not list for that command
  breaks the protocol. A ``421`` answer to any command closes the session
  (RFC 5321 §3.8).
* **A FIFO of commands in flight** (:class:`~trio_sendmail._pipeline.CommandPipeline`,
  ``_pipeline.py``, the lower half of the core). Replies come back in the order
  the commands went out, also when several are sent in one write (PIPELINING,
  RFC 2920 §3.1). A command is checked against the state the session will be
  in once every earlier command in flight succeeds; the confirmed state follows
  the replies.
* **Whose fault.** A command the table does not allow in the state the
  session will be in, or message data outside DATA, is the caller's mistake:
  :class:`~trio_sendmail.SMTPUsageError`, with nothing queued and the state
  unchanged. A reply the table does not allow is the server's:
  :class:`~trio_sendmail.SMTPProtocolError` (h11's Local/RemoteProtocolError).
* **A failure is sticky.** A protocol violation sets :attr:`State.BROKEN` and
  every later command raises :class:`~trio_sendmail.SMTPUsageError`; the driver
  also breaks the core when I/O fails or is cancelled mid-command. A broken
  session is never reused.
* **STARTTLS** (RFC 3207 §4.2, §4.2.1 and §6): bytes that arrived after the 220
  and before the handshake are injected, not trusted: a protocol error. After
  :meth:`ClientCore.tls_established`, every capability learned before is
  forgotten and EHLO must be sent again.
* **Injection.** No command argument may hold CR, LF, NUL or any other control
  character (RFC 5321 §2.3.8, §4.1.1): it raises before anything is queued.
* **Body framing.** The message body goes through the core too, so that the
  driver has one path from the core's bytes to the stream: after 354,
  :meth:`ClientCore.body` normalises line endings and dot-stuffs (RFC 5321
  §4.5.2, :class:`~trio_sendmail._data.DataEncoder`) and :meth:`ClientCore.end_body`
  adds ``CRLF.CRLF``; with CHUNKING (RFC 3030 §2), :meth:`ClientCore.begin_bdat`
  switches the same two calls to ``BDAT n`` chunks of at most *chunk_size*
  octets, the last one sent as ``BDAT n LAST``.
* **LMTP** (RFC 2033): with :attr:`ClientCore.lmtp`, :meth:`ClientCore.lhlo`
  greets instead of EHLO (§4.1), and the end of data (the final dot, or
  ``BDAT … LAST``) gets one reply per recipient accepted at RCPT, in RCPT order
  (§4.2, §4.3 for BDAT). That command stays at the head of the FIFO until the
  last of them, so pipelined replies still pair by order; each is recorded
  against its recipient, and the transaction ends with the last one. With no
  recipient accepted, the end of data gets its one refusal as under SMTP.
* **Outcomes.** :meth:`ClientCore.mail` opens a
  :class:`~trio_sendmail._transaction.Transaction`. The core records in it every
  reply to the transaction's commands, and when :meth:`ClientCore.take_output`
  hands out the bytes of its envelope, of its data and of its end of data.
  Nothing else writes it, so every outcome is derived from the wire.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable
from typing import NamedTuple

from ._address import Domain, ForwardPath, ReversePath
from ._capabilities import Capabilities
from ._data import DataEncoder
from ._errors import SMTPInputError, SMTPProtocolError, SMTPUsageError
from ._inputs import CONTROL_CHARACTER, check_argument, ehlo_ascii
from ._pipeline import (
    MARK_DATA,
    MARK_END,
    MARK_ENVELOPE,
    MARK_GATE,
    Command,
    CommandPipeline,
    new_tuple,
)
from ._reply import Reply, ReplyParser
from ._reply_errors import SMTPAuthenticationError
from ._sasl import Mechanism
from ._table import ILLEGAL, SAME, TABLE, Rule, State, Verb
from ._transaction import Transaction

__all__ = ["TABLE", "ClientCore", "Event", "Rule", "State", "Verb"]

_END_OF_DATA = (Verb.END_DATA, Verb.BDAT_LAST)
_HELLOS = (Verb.EHLO, Verb.HELO, Verb.LHLO)
_END_RULE = TABLE[Verb.END_DATA]
_control = CONTROL_CHARACTER.search
# Enum members read on the hot path, as module constants: reading one from its
# class costs several times a global's lookup (Python 3.11).
_DATA, _READY, _CLOSED, _TLS = State.DATA, State.READY, State.CLOSED, State.TLS
_BDAT_AFTER = (State.RCPT, State.BDAT)  # the states begin_bdat() may follow
_V_MAIL, _V_RCPT, _V_DATA, _V_BDAT = Verb.MAIL, Verb.RCPT, Verb.DATA, Verb.BDAT
_V_END_DATA, _V_BDAT_LAST, _V_NOOP = Verb.END_DATA, Verb.BDAT_LAST, Verb.NOOP
_V_AUTH, _V_AUTH_RESPONSE = Verb.AUTH, Verb.AUTH_RESPONSE


class Event(NamedTuple):
    """A reply, with the command it answers."""

    verb: Verb
    reply: Reply
    #: What the command was about (the path for MAIL and RCPT), else ``None``.
    subject: object = None
    #: The mail transaction the command belongs to, else ``None``.
    txn: Transaction | None = None


class ClientCore(CommandPipeline):
    """The SMTP client state machine (sans-io).

    Args:
        transcript: called with each line sent (``"C: …"``) and received
            (``"S: …"``), secrets already replaced by ``<redacted>``; it is
            the attribute :attr:`transcript`, which may be changed at any time.
        parser: the reply parser to use (its buffer may be a reused one).
        out_buffer: a reusable buffer for outgoing commands.
    """

    def __init__(
        self,
        *,
        transcript: Callable[[str], None] | None = None,
        parser: ReplyParser | None = None,
        out_buffer: bytearray | None = None,
    ) -> None:
        super().__init__(transcript=transcript, out_buffer=out_buffer)
        self._parser = parser if parser is not None else ReplyParser()
        self._encoder = DataEncoder()
        self._mechanism: Mechanism | None = None
        self._auth_steps = 0
        self._utf8 = False
        #: What the server announced in its last reply to EHLO.
        self.capabilities: Capabilities | None = None
        #: True once the transport runs TLS (implicit, or after STARTTLS).
        self.tls = False
        #: True after a successful AUTH.
        self.authenticated = False
        #: The greeting, once received.
        self.greeting: Reply | None = None
        #: Speak LMTP (RFC 2033): one reply per recipient after the end of data.
        self.lmtp = False
        #: The current (latest) mail transaction.
        self._txn: Transaction | None = None
        # Body framing: BDAT (with its chunk size and encoder) or DATA.
        self._bdat = False
        self._chunk_size = 0
        self._bdat_encoder: DataEncoder | None = None
        self._stage = bytearray()
        self._data_marked = False

    # ------------------------------------------------------------ inspection

    @property
    def body_open(self) -> bool:
        """True while a message body is being queued (after 354, or between
        :meth:`begin_bdat` and :meth:`end_body`)."""
        return self._bdat or (self.state is _DATA and self._tail is _DATA)

    @property
    def transaction(self) -> Transaction | None:
        """The latest mail transaction (opened by :meth:`mail`)."""
        return self._txn

    # --------------------------------------------------------------- commands

    def ehlo(self, domain: Domain) -> None:
        """Queue ``EHLO domain`` (a U-label name is sent as A-labels)."""
        self._issue(Verb.EHLO, f"EHLO {ehlo_ascii(domain)}")

    def lhlo(self, domain: Domain) -> None:
        """Queue ``LHLO domain`` (LMTP's EHLO, RFC 2033 §4.1)."""
        self._issue(Verb.LHLO, f"LHLO {ehlo_ascii(domain)}")

    def helo(self, domain: Domain) -> None:
        """Queue ``HELO domain`` (for servers that refuse EHLO)."""
        self._issue(Verb.HELO, f"HELO {ehlo_ascii(domain)}")

    def starttls(self) -> None:
        """Queue ``STARTTLS`` (RFC 3207)."""
        if self.tls:
            raise SMTPUsageError("STARTTLS on a session that already runs TLS")
        self._issue(Verb.STARTTLS, "STARTTLS")

    def tls_established(self) -> None:
        """Tell the core the TLS handshake succeeded: EHLO must be sent again."""
        if self.state is not State.TLS:
            raise SMTPUsageError("tls_established() without an accepted STARTTLS")
        self.tls = True
        self.capabilities = None
        self.state = self._tail = State.GREETED

    def auth(self, mechanism: Mechanism) -> None:
        """Queue ``AUTH`` with *mechanism*'s initial response (RFC 4954 §4)."""
        self._mechanism = mechanism
        self._auth_steps = 0
        initial = mechanism.initial_response()
        if initial is None:
            self._issue(Verb.AUTH, f"AUTH {mechanism.name}")
        else:
            encoded = base64.b64encode(initial).decode("ascii") or "="
            self._issue(
                Verb.AUTH,
                f"AUTH {mechanism.name} {encoded}",
                log=f"AUTH {mechanism.name} <redacted>",
            )

    def mail(self, path: ReversePath, params: Iterable[str] = ()) -> Transaction:
        """Queue ``MAIL FROM:<path> params…``; returns the transaction it opens."""
        params = tuple(params)
        utf8 = "SMTPUTF8" in map(str.upper, params)
        text = path._text  # str(path), without its call
        # check_argument()'s tests, inline: it runs (and raises) only on a bad one.
        if _control(text) is not None or not (utf8 or text.isascii()):
            check_argument(text, "the sender", utf8=utf8)
        for param in params:
            if _control(param) is not None or not (utf8 or param.isascii()):
                check_argument(param, "a MAIL parameter", utf8=utf8)
        line = "MAIL FROM:" + text
        if params:
            line = " ".join((line, *params))
        txn = Transaction(lmtp=self.lmtp)
        offset = len(self._out)
        self._issue(_V_MAIL, line, subject=path, utf8=utf8, txn=txn)
        self._marks.append((offset, txn, MARK_ENVELOPE))
        self._utf8 = utf8
        self._txn = txn
        self._bdat = False
        self._data_marked = False
        return txn

    def rcpt(self, path: ForwardPath, params: Iterable[str] = ()) -> None:
        """Queue ``RCPT TO:<path> params…``."""
        text = path._text  # str(path), without its call
        if _control(text) is not None or not (self._utf8 or text.isascii()):
            check_argument(text, "a recipient", utf8=self._utf8)
        line = "RCPT TO:" + text
        if params:
            params = tuple(params)
            for param in params:
                check_argument(param, "an RCPT parameter", utf8=self._utf8)
            line = " ".join((line, *params))
        txn = self._txn
        self._issue(_V_RCPT, line, subject=path, utf8=self._utf8, txn=txn)
        if txn is not None:
            txn.rcpt_sent += 1

    def data(self) -> None:
        """Queue ``DATA``."""
        self._issue(_V_DATA, "DATA", txn=self._txn)

    # ------------------------------------------------------------ body framing

    def begin_bdat(self, *, chunk_size: int, binary: bool = False) -> None:
        """Frame the body that follows as BDAT chunks (RFC 3030 §2) of at most
        *chunk_size* octets: line endings normalised, no dot-stuffing; with
        *binary* (``BODY=BINARYMIME``), the octets go as they are. May follow
        the RCPT commands at once (RFC 3030 §4.2 allows pipelining BDAT)."""
        if chunk_size < 1:
            raise SMTPInputError("the BDAT chunk size must be positive")
        if self._tail not in _BDAT_AFTER:
            raise SMTPUsageError(f"BDAT is not allowed now (session state: {self._tail.value})")
        self._bdat = True
        self._chunk_size = chunk_size
        self._bdat_encoder = None if binary else DataEncoder(stuff=False)
        del self._stage[:]

    def body(self, chunk: bytes | bytearray | memoryview, *, clean: bool = False) -> None:
        """Queue one piece of the message body, cut anywhere (after 354 for
        DATA; after :meth:`begin_bdat`, it is staged until :meth:`next_chunk`
        or :meth:`end_body` frames it). *clean*: the piece is known to have
        CRLF line endings only (see :func:`~trio_sendmail._data.measure`)."""
        txn = self._txn
        if self._bdat:
            encoder = self._bdat_encoder
            self._stage += chunk if encoder is None else encoder.encode(chunk, clean=clean)
            return
        if self.state is not _DATA or self._inflight:
            raise SMTPUsageError(f"message data outside DATA (state: {self.state.value})")
        encoded = self._encoder.encode(chunk, clean=clean)
        if encoded and txn is not None and not self._data_marked:
            self._marks.append((len(self._out), txn, MARK_DATA))
            self._data_marked = True
        self._out += encoded

    def next_chunk(self) -> bool:
        """With BDAT: queue one ``BDAT size`` chunk if a whole one is staged
        (the caller reads replies between chunks, RFC 3030 §4.2); True when
        it did."""
        stage = self._stage
        size = self._chunk_size
        if not self._bdat or len(stage) < size:
            return False
        with memoryview(stage) as view:
            self._chunk(_V_BDAT, f"BDAT {size}", view[:size])
        del stage[:size]
        return True

    def end_body(self) -> None:
        """Queue the end of the data: ``CRLF.CRLF`` after DATA, or the last
        chunk as ``BDAT n LAST``; its reply answers the whole message."""
        txn = self._txn
        if self._bdat:
            while self.next_chunk():
                pass
            if txn is not None and txn.gate is not None:
                self._marks.append((len(self._out), txn, MARK_GATE))
            stage = self._stage
            if self._bdat_encoder is not None:
                stage += self._bdat_encoder.finish()
            self._chunk(_V_BDAT_LAST, f"BDAT {len(stage)} LAST", stage)
            del stage[:]
            self._bdat = False
            self._bdat_encoder = None
        else:
            if self.state is not _DATA or self._inflight:
                raise SMTPUsageError(f"end of data outside DATA (state: {self.state.value})")
            if txn is not None and txn.gate is not None:
                self._marks.append((len(self._out), txn, MARK_GATE))
            self._out += self._encoder.finish()
            if self.transcript is not None:
                self._log(f"C: <{self._encoder.bytes_out} bytes of message data>")
            self._encoder.reset()
            self._inflight.append(new_tuple(Command, (_V_END_DATA, None, _END_RULE, txn)))
            self._unsent += 1
            self._tail = _READY
        if txn is not None:
            self._marks.append((len(self._out) - 1, txn, MARK_END))

    def _chunk(self, verb: Verb, line: str, data: bytes | bytearray | memoryview) -> None:
        txn = self._txn
        self._issue(verb, line, txn=txn)
        if txn is not None and data and not self._data_marked:
            self._marks.append((len(self._out), txn, MARK_DATA))
            self._data_marked = True
        self._out += data
        if self.transcript is not None and data:
            self._log(f"C: <{len(data)} bytes of message data>")

    def end_data(self, tail: bytes | bytearray | memoryview = b"", *, clean: bool = False) -> None:
        """Queue the rest of the message after 354 and its end (:meth:`body`
        then :meth:`end_body`)."""
        if tail:
            self.body(tail, clean=clean)
        self.end_body()

    def encode_data(self, chunk: bytes | bytearray | memoryview) -> bytes:
        """Normalise and dot-stuff one chunk of the message (after 354), and
        return it instead of queuing it (for inspection: a session sends the
        body with :meth:`body`)."""
        if self.state is not State.DATA:
            raise SMTPUsageError(f"message data outside DATA (state: {self.state.value})")
        return self._encoder.encode(chunk)

    def rset(self) -> None:
        """Queue ``RSET``."""
        self._issue(Verb.RSET, "RSET")

    def noop(self) -> None:
        """Queue ``NOOP``."""
        self._issue(Verb.NOOP, "NOOP")

    def quit(self) -> None:
        """Queue ``QUIT``."""
        self._issue(Verb.QUIT, "QUIT")

    def closing(self, reply: Reply) -> None:
        """The server said 421 before the queued commands went out (RFC 5321
        §3.8): none of them will be read."""
        self._log_reply(reply)
        self.state = self._tail = State.CLOSED
        self._drop_queued()

    def _drop_queued(self) -> None:
        """After a 421: the server reads nothing more, so every command in
        flight or queued is dropped (its transaction closed early)."""
        for command in self._inflight:
            if command.txn is not None:
                command.txn.closed_early = True
        self._inflight.clear()
        del self._out[:]
        self._marks.clear()

    # ----------------------------------------------------------------- input

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Take bytes received from the server (use :meth:`receive_eof` for EOF)."""
        if self.state is _TLS:
            # RFC 3207 §4.2: after the 220, the next bytes must be a TLS handshake.
            self.broken()
            raise SMTPProtocolError(
                "bytes arrived after the 220 reply to STARTTLS, before the TLS handshake "
                "(RFC 3207 §4.2: plaintext injection)"
            )
        try:
            self._parser.feed(data)
        except SMTPProtocolError:
            self.broken()
            raise

    def receive_eof(self) -> None:
        """The server closed the connection. The core is broken either way;
        raises SMTPProtocolError when the close cut a reply short."""
        if self.state is not State.CLOSED:
            self.broken()
        if self._parser.in_reply:
            raise SMTPProtocolError("the server closed the connection in the middle of a reply")

    @property
    def in_reply(self) -> bool:
        """True when part of a reply has arrived but not all of it."""
        return self._parser.in_reply

    def next_event(self) -> Event | None:
        """The next reply paired with its command, or ``None`` until more bytes arrive.

        Raises:
            SMTPProtocolError: the server broke the protocol; the core is broken.
            SMTPAuthenticationError: the server accepted AUTH but failed to prove itself.
        """
        try:
            reply = self._parser.next_reply()
            if reply is None:
                return None
            return self._apply(reply)
        except (SMTPProtocolError, SMTPAuthenticationError):
            self.broken()
            raise

    def _log_reply(self, reply: Reply) -> None:
        if self.transcript is None:
            return
        head = self._inflight[0].verb if self._inflight else None
        if reply.code == 334 and head in (Verb.AUTH, Verb.AUTH_RESPONSE):
            # SASL challenges can carry what an offline attack on the password
            # needs (SCRAM's salt and server signature): never logged.
            self.transcript("S: 334 <redacted>")
            return
        last = len(reply.lines) - 1
        status = f"{reply.enhanced_status} " if reply.enhanced_status else ""
        for i, line in enumerate(reply.lines):
            sep = " " if i == last else "-"
            self.transcript(f"S: {reply.code}{sep}{status}{line}".rstrip())

    def _apply(self, reply: Reply) -> Event:
        if self.transcript is not None:
            self._log_reply(reply)
        if not self._inflight:
            if reply.code == 421:
                self.state = self._tail = _CLOSED
                return Event(_V_NOOP, reply)
            txn = self._txn
            if (
                self.state is _DATA
                and txn is not None
                and txn.final_reply is None
                and not reply.is_positive
            ):
                # RFC 5321 §4.1.1.4 has the server answer after the end of
                # data; some refuse a message early (over their size limit)
                # and close. The message is refused; the session is over.
                txn.final_reply = reply
                self.broken()
                return Event(_V_END_DATA, reply, None, txn)
            raise SMTPProtocolError(f"unsolicited reply: {reply}")
        if self.lmtp:
            first = self._inflight[0]
            txn = first.txn
            if txn is not None and txn.accepted and first.verb in _END_OF_DATA:
                return self._recipient_reply(first, txn, reply)
        command = self._inflight.popleft()
        verb = command.verb
        code = reply.code
        if code == 421:
            self.state = self._tail = _CLOSED
        else:
            klass = code // 100
            nxt = command.rule.replies.get(klass, ILLEGAL)
            if nxt is ILLEGAL or (
                klass == 3
                and (
                    (verb is _V_DATA and code != 354)
                    or (verb in (_V_AUTH, _V_AUTH_RESPONSE) and code != 334)
                )
            ):
                raise SMTPProtocolError(f"unexpected reply to {verb.value}: {reply}")
            if nxt is not SAME:
                self.state = nxt
            if not self._inflight:
                self._tail = self.state
        txn = command.txn
        if txn is not None:
            # Write the reply into the transaction's record.
            if verb is _V_RCPT:
                txn.rcpt_answered += 1
                path: ForwardPath = command.subject  # type: ignore[assignment]
                if reply.is_positive:
                    txn.accepted.append(path)
                else:
                    txn.refused[path] = reply
            elif verb is _V_MAIL:
                txn.sender_reply = reply
            elif verb is _V_END_DATA or verb is _V_BDAT_LAST:
                txn.final_reply = reply
            elif verb is _V_DATA:
                txn.data_reply = reply
            elif verb is _V_BDAT and not reply.is_positive and txn.chunk_refusal is None:
                txn.chunk_refusal = reply
            if code == 421 and txn.final_reply is None:
                txn.closed_early = True
        elif command.rule.special and code != 421:
            self._special_reply(verb, reply)
        if code == 421:
            # RFC 5321 §3.8: the server closes; it read nothing after this.
            self._drop_queued()
            return new_tuple(Event, (verb, reply, command.subject, txn))
        if self._inflight:
            return new_tuple(Event, (verb, reply, command.subject, command.txn))
        head = self._parser.peek(3)
        if head and not b"421".startswith(head):
            # Only a 421 may come unasked (RFC 5321 §3.8); anything else means
            # the replies and the commands are out of step.
            raise SMTPProtocolError(
                f"the server sent more replies than commands (after: {verb.value} {reply})"
            )
        return new_tuple(Event, (verb, reply, command.subject, command.txn))

    def _recipient_reply(self, command: Command, txn: Transaction, reply: Reply) -> Event:
        """LMTP: one of the replies to the end of data, for the next accepted
        recipient in RCPT order (RFC 2033 §4.2); the last ends the transaction."""
        verb = command.verb
        if reply.code // 100 not in (2, 4, 5):
            raise SMTPProtocolError(f"unexpected reply to {verb.value}: {reply}")
        replies = txn.recipient_replies
        assert replies is not None
        accepted = txn.accepted
        path = accepted[len(replies)]
        replies[path] = reply
        complete = len(replies) == len(accepted)
        if complete:
            positive = [r for r in replies.values() if r.is_positive]
            txn.final_reply = positive[0] if positive else replies[accepted[0]]
        if reply.code == 421:
            # RFC 5321 §3.8: the server closes; the recipients not answered
            # yet may or may not have the message. (The 421 may be a shutdown
            # notice rather than this recipient's reply: the error it raises
            # leaves a partial delivery UNKNOWN, see failure_outcome.)
            self._inflight.popleft()
            self.state = self._tail = State.CLOSED
            self._drop_queued()
            return Event(verb, reply, path, txn)
        if not complete:
            return Event(verb, reply, path, txn)
        self._inflight.popleft()
        # The transaction is over, whatever the replies (also after BDAT LAST).
        self.state = State.READY
        if self._inflight:
            return Event(verb, reply, path, txn)
        self._tail = State.READY
        ahead = self._parser.peek(3)
        if ahead and not b"421".startswith(ahead):
            raise SMTPProtocolError(
                f"the server sent more replies than recipients (after: {path} {reply})"
            )
        return Event(verb, reply, path, txn)

    def _special_reply(self, verb: Verb, reply: Reply) -> None:
        """What a reply to the greeting, EHLO, HELO, STARTTLS or AUTH changes."""
        positive = reply.is_positive
        if verb is Verb.CONNECT:
            if positive and reply.code != 220:
                # RFC 5321 §4.2: the greeting is 220 (or 554, or 421); another
                # 2xx first means the replies and the commands are out of step.
                raise SMTPProtocolError(f"the greeting is not 220: {reply}")
            self.greeting = reply
        elif verb in _HELLOS and positive and reply.code != 250:
            # RFC 5321 §4.3.2: EHLO and HELO succeed with 250; another 2xx (a
            # late greeting, say) means the replies and the commands are out of step.
            raise SMTPProtocolError(f"unexpected reply to {verb.value}: {reply}")
        elif (verb is Verb.EHLO or verb is Verb.LHLO) and positive:
            self.capabilities = Capabilities.from_reply(reply)
        elif verb is Verb.HELO and positive:
            self.capabilities = Capabilities(reply.lines[0].split(" ", 1)[0], {})
        elif verb is Verb.STARTTLS and positive and self._parser.buffered:
            raise SMTPProtocolError(
                "bytes arrived after the 220 reply to STARTTLS, before the TLS handshake "
                "(RFC 3207 §4.2: plaintext injection)"
            )
        elif verb in (Verb.AUTH, Verb.AUTH_RESPONSE):
            self._auth_reply(reply)

    def _auth_reply(self, reply: Reply) -> None:
        mechanism = self._mechanism
        assert mechanism is not None
        if reply.code == 334:
            self._auth_steps += 1
            if self._auth_steps > mechanism.max_steps:
                raise SMTPProtocolError(
                    f"the server sent more than {mechanism.max_steps} AUTH challenges "
                    f"for {mechanism.name}"
                )
            try:
                challenge = base64.b64decode(reply.lines[0].strip(), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise SMTPProtocolError("AUTH challenge is not valid base64") from exc
            response = mechanism.respond(challenge)
            self._issue(
                Verb.AUTH_RESPONSE,
                base64.b64encode(response).decode("ascii"),
                log="<redacted>",
            )
            return
        self._mechanism = None
        if reply.is_positive and reply.code != 235:
            raise SMTPProtocolError(f"unexpected reply to AUTH: {reply}")
        if reply.code == 235:
            if not mechanism.verify_success(None):
                raise SMTPAuthenticationError.from_reply(
                    reply, "AUTH", message="the server failed to prove its identity"
                )
            self.authenticated = True
