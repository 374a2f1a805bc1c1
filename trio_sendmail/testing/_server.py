"""The fake SMTP server: its configuration, its record of what happened, and its listener."""

# Theory of operation
# -------------------
#
# One FakeSMTPServer holds configuration and the record of what happened (messages, transcript,
# violation counters), across all its connections. It serves any trio.abc.Stream with
# handle_stream(), which gives the connection a private _dialogue.Dialogue (optionally behind
# implicit TLS, the RFC 8314 §3.3 port-465 style) and closes the stream at the end, or loopback
# TCP with serve_tcp() / serve_fake_smtp().
#
# Transport failures (EOF, trio.BrokenResourceError, which also wraps TLS errors) end a session
# quietly: the client under test may misbehave, and that must not crash the test's nursery.
# Every other exception is a bug in this package and propagates.

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from functools import partial
from typing import Final

import attrs
import trio

from ._dialogue import Dialogue
from ._mail import ReceivedMessage
from ._reader import ClientGone, Reader
from ._syntax import KEYWORD_RE

__all__ = ["DEFAULT_EXTENSIONS", "DEFAULT_HOSTNAME", "FakeSMTPServer", "serve_fake_smtp"]

DEFAULT_EXTENSIONS: Final[tuple[str, ...]] = (
    "PIPELINING",
    "8BITMIME",
    "SMTPUTF8",
    "ENHANCEDSTATUSCODES",
    "SIZE 10485760",
)
"""The EHLO extension lines advertised by default (besides STARTTLS and AUTH)."""

DEFAULT_HOSTNAME: Final = "mail.example.test"
"""The server's default host name, used in the greeting and the EHLO reply."""


def _to_str_tuple(value: Sequence[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError("expected a sequence of strings, not a single string")
    return tuple(value)


def _to_users(value: Mapping[str, str]) -> dict[str, str]:
    return dict(value)


def _to_reply_map(value: Mapping[str, tuple[int, str]]) -> dict[str, tuple[int, str]]:
    return dict(value)


def _to_upper_tuple(value: Sequence[str]) -> tuple[str, ...]:
    return tuple(name.upper() for name in _to_str_tuple(value))


def _check_reply(what: str, reply: tuple[int, str] | None) -> None:
    if reply is None:
        return
    code, text = reply
    if not 200 <= code <= 599:
        raise ValueError(f"{what}: reply code {code} is not in 200..599")
    if "\r" in text or any(not line.isprintable() for line in text.split("\n")):
        raise ValueError(f"{what}: reply text must be printable (use \\n between lines)")


@attrs.define(kw_only=True, eq=False)
class FakeSMTPServer:
    """A fake SMTP submission server that records everything it receives.

    Configure it with keyword arguments, serve connections with :meth:`handle_stream` (any
    :class:`trio.abc.Stream`) or :meth:`serve_tcp` / :func:`serve_fake_smtp` (loopback TCP),
    then assert on :attr:`messages`, :attr:`transcript` and the violation counters. The
    configuration attributes may be changed between connections.

    Attributes:
        hostname: The name in the greeting and the first EHLO line.
        extensions: EHLO lines advertised besides STARTTLS and AUTH, verbatim. A line whose
            keyword is STARTTLS or AUTH is advertised verbatim as well and suppresses the
            automatic one (to simulate a server that advertises what it cannot do). Listing
            "CHUNKING" enables BDAT; "BINARYMIME" enables BODY=BINARYMIME; "SIZE n" with n > 0
            sets the message size limit.
        ssl_context: Server-side TLS context, needed for STARTTLS and implicit TLS.
        starttls: Offer STARTTLS (when *ssl_context* is set and the connection is not TLS yet).
        users: Username to password (in plaintext: CRAM-MD5 needs it, and SCRAM-SHA-256
            derives its verifier from it at every exchange). AUTH is offered when this or
            *tokens* is non-empty.
        tokens: OAuth 2.0 bearer token to username, for XOAUTH2 and OAUTHBEARER. Any other
            token gets the RFC 7628 §3.2.2 error challenge (base64 JSON
            ``{"status":"invalid_token",...}``), then, after the client's dummy response
            (``\x01`` for OAUTHBEARER, empty for XOAUTH2), ``535 5.7.8``.
        auth_mechanisms: The advertised SASL mechanisms, in order. PLAIN, LOGIN, CRAM-MD5,
            SCRAM-SHA-256, XOAUTH2 and OAUTHBEARER are implemented; others may be advertised
            (to test a client's choice) but are refused with 504, and so is an implemented
            one that is not advertised.
        scram_iterations: The SCRAM-SHA-256 iteration count (a random 16-byte salt is drawn
            for each exchange).
        scram_bad_server_signature: Send a wrong SCRAM server signature (``v=``) after a
            correct client proof, then 235: a correct client must still fail.
        auth_requires_tls: Refuse AUTH over plaintext with 538 5.7.11, and don't advertise it.
        require_auth: Refuse MAIL with 530 5.7.0 until the client has authenticated.
        login_prompts: The raw (un-encoded) AUTH LOGIN username and password prompts.
        refuse_senders: Address (compared case-insensitively) to the ``(code, text)`` reply to
            MAIL. *text* includes the enhanced status code if you want one; ``"\\n"`` in *text*
            makes a multi-line reply.
        refuse_recipients: The same, for RCPT. A refused recipient is not added.
        data_reply: Replaces the reply to the end of data; the message is recorded only if the
            code is 2xx.
        greeting: Replaces the greeting. A 2xx greeting is followed by a normal session; a 554
            greeting is followed by 503 to every command until QUIT (RFC 5321 §3.1); any other
            code closes the connection right after the greeting.
        lmtp: Speak LMTP (RFC 2033) instead of SMTP: the client greets with ``LHLO`` (EHLO
            and HELO get 500), DATA without an accepted recipient gets 503 (§4.2), and the end
            of data (the final dot, or ``BDAT … LAST``) gets one reply per accepted recipient,
            in RCPT order; a message is recorded with the recipients answered 2xx.
        lmtp_replies: Address (compared case-insensitively) to the ``(code, text)`` reply
            that recipient gets after the end of data in LMTP mode (a quota failure:
            ``(552, "5.2.2 Mailbox full")``); the others get 250 (or *data_reply*).
        max_line_length: The longest accepted command line, CRLF included; longer lines get
            500 5.5.2. (SASL continuation lines may be up to 12288 octets, RFC 4954 §4.)
        messages: Every accepted message, in order, across all connections.
        connections: The number of connections served so far.
        transcript: ``("C", line)`` for every command line received and ``("S", line)`` for
            every reply line sent, without the trailing CRLF, across all connections. Message
            content is not included; AUTH secrets are replaced by ``<redacted>``, and an
            over-long command line is recorded as ``<line too long>``.
        injected_plaintext: Bytes that were buffered behind a STARTTLS command and discarded
            (one entry per occurrence). A correct client leaves this empty.
        bare_line_endings: The number of bare CR and bare LF octets received in message data
            (DATA, or BDAT without BODY=BINARYMIME). A correct client leaves this 0.
        undeclared_8bit: The number of messages with 8-bit octets whose MAIL command did not
            declare BODY=8BITMIME or BODY=BINARYMIME. A correct client leaves this 0.
        pipelining_violations: The number of times a client sent more bytes before reading a
            reply it had to wait for: anything when PIPELINING was not offered, or anything
            after a command that must end a pipelined group (RFC 2920 §3.1, RFC 4954 §4).
            Bytes behind STARTTLS are counted in *injected_plaintext* instead.
    """

    hostname: str = DEFAULT_HOSTNAME
    extensions: tuple[str, ...] = attrs.field(default=DEFAULT_EXTENSIONS, converter=_to_str_tuple)
    ssl_context: ssl.SSLContext | None = attrs.field(default=None, repr=False)
    starttls: bool = True
    users: dict[str, str] = attrs.field(factory=dict, converter=_to_users, repr=False)
    tokens: dict[str, str] = attrs.field(factory=dict, converter=_to_users, repr=False)
    auth_mechanisms: tuple[str, ...] = attrs.field(
        default=("PLAIN", "LOGIN"), converter=_to_upper_tuple
    )
    scram_iterations: int = 4096
    scram_bad_server_signature: bool = False
    auth_requires_tls: bool = True
    require_auth: bool = False
    login_prompts: tuple[bytes, bytes] = (b"Username:", b"Password:")
    refuse_senders: dict[str, tuple[int, str]] = attrs.field(factory=dict, converter=_to_reply_map)
    refuse_recipients: dict[str, tuple[int, str]] = attrs.field(
        factory=dict, converter=_to_reply_map
    )
    data_reply: tuple[int, str] | None = None
    greeting: tuple[int, str] | None = None
    lmtp: bool = False
    lmtp_replies: dict[str, tuple[int, str]] = attrs.field(factory=dict, converter=_to_reply_map)
    max_line_length: int = 1000

    messages: list[ReceivedMessage] = attrs.field(init=False, factory=list, repr=False)
    connections: int = attrs.field(init=False, default=0)
    transcript: list[tuple[str, bytes]] = attrs.field(init=False, factory=list, repr=False)
    injected_plaintext: list[bytes] = attrs.field(init=False, factory=list, repr=False)
    bare_line_endings: int = attrs.field(init=False, default=0)
    undeclared_8bit: int = attrs.field(init=False, default=0)
    pipelining_violations: int = attrs.field(init=False, default=0)
    _queued: int = attrs.field(init=False, default=0, repr=False)

    def __attrs_post_init__(self) -> None:
        if not self.hostname or not self.hostname.isprintable() or " " in self.hostname:
            raise ValueError(f"invalid hostname {self.hostname!r}")
        for line in self.extensions:
            if not line.strip() or not line.isascii() or not line.isprintable():
                raise ValueError(f"invalid EHLO extension line {line!r}")
        for name in self.auth_mechanisms:
            if not KEYWORD_RE.fullmatch(name.replace("_", "-")):
                raise ValueError(f"invalid SASL mechanism name {name!r}")
        for what, reply in (("data_reply", self.data_reply), ("greeting", self.greeting)):
            _check_reply(what, reply)
        for table in (self.refuse_senders, self.refuse_recipients):
            for reply in table.values():
                _check_reply("refusal", reply)
                if reply[0] < 400:
                    raise ValueError(f"refusal: reply code {reply[0]} is not 4xx or 5xx")
        for reply in self.lmtp_replies.values():
            _check_reply("lmtp_replies", reply)
        if self.max_line_length < 8:
            raise ValueError("max_line_length must be at least 8")
        if self.scram_iterations < 1:
            raise ValueError("scram_iterations must be at least 1")

    @property
    def size_limit(self) -> int | None:
        """The message size limit from a ``"SIZE n"`` extension line, or None if unlimited."""
        for line in self.extensions:
            keyword, _, rest = line.partition(" ")
            if keyword.upper() == "SIZE":
                value = rest.strip()
                return int(value) if value.isdigit() and int(value) > 0 else None
        return None

    async def handle_stream(self, stream: trio.abc.Stream, *, implicit_tls: bool = False) -> None:
        """Serve one client connection to completion (QUIT or EOF), then close the stream.

        Transport failures (EOF, :exc:`trio.BrokenResourceError`, TLS errors) end the session
        quietly; the stream is closed in every case.

        Args:
            stream: The server side of the connection.
            implicit_tls: Wrap *stream* in a server-side :class:`trio.SSLStream` and complete
                the handshake before the greeting (the port 465 style).

        Raises:
            ValueError: *implicit_tls* is set but :attr:`ssl_context` is None.
        """
        dialogue = Dialogue(server=self, stream=stream, reader=Reader(stream))
        try:
            if implicit_tls and self.ssl_context is None:
                raise ValueError("implicit TLS needs ssl_context")
            self.connections += 1
            with contextlib.suppress(ClientGone, trio.BrokenResourceError):
                await dialogue.run(implicit_tls=implicit_tls)
        finally:
            with contextlib.suppress(trio.BrokenResourceError):
                await dialogue.stream.aclose()

    async def serve_tcp(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        implicit_tls: bool = False,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on *host* and serve every connection with :meth:`handle_stream`.

        Use it with ``await nursery.start(server.serve_tcp)``, or use :func:`serve_fake_smtp`.
        Runs until cancelled. A bug in the server (not a misbehaving client) propagates and
        stops it.

        Args:
            host: The address to bind; use an IP literal. If a name resolves to several
                addresses, only the first one is served.
            port: The port to bind; 0 picks a free one.
            implicit_tls: Serve implicit TLS (see :meth:`handle_stream`).
            task_status: Receives the bound port once the server is listening.

        Raises:
            ValueError: *implicit_tls* is set but :attr:`ssl_context` is None.
            OSError: The address could not be bound.
        """
        listener, bound_port = await self._listen(host, port, implicit_tls=implicit_tls)
        task_status.started(bound_port)
        await self._serve(listener, implicit_tls=implicit_tls)

    async def _listen(
        self, host: str, port: int, *, implicit_tls: bool
    ) -> tuple[trio.SocketListener, int]:
        if implicit_tls and self.ssl_context is None:
            raise ValueError("implicit TLS needs ssl_context")
        listeners = await trio.open_tcp_listeners(port, host=host)
        for extra in listeners[1:]:
            await extra.aclose()
        bound_port: int = listeners[0].socket.getsockname()[1]
        return listeners[0], bound_port

    async def _serve(self, listener: trio.SocketListener, *, implicit_tls: bool) -> None:
        await trio.serve_listeners(
            partial(self._serve_socket, implicit_tls=implicit_tls), [listener]
        )

    async def _serve_socket(self, stream: trio.SocketStream, *, implicit_tls: bool) -> None:
        await self.handle_stream(stream, implicit_tls=implicit_tls)

    def _next_queue_id(self) -> str:
        self._queued += 1
        return f"FAKE{self._queued:08X}"


@contextlib.asynccontextmanager
async def serve_fake_smtp(
    server: FakeSMTPServer, *, implicit_tls: bool = False, host: str = "127.0.0.1"
) -> AsyncIterator[int]:
    """Serve *server* on loopback TCP for the duration of the ``async with`` block.

    Like :meth:`FakeSMTPServer.serve_tcp` on a free port, run in a nursery that is cancelled
    when the block exits. A bug in the server propagates out of the block.

    Args:
        server: The server to run.
        implicit_tls: Serve implicit TLS instead of plaintext (+ STARTTLS).
        host: The loopback address to bind.

    Yields:
        The bound TCP port.

    Raises:
        ValueError: *implicit_tls* is set but ``server.ssl_context`` is None.
        OSError: The address could not be bound.
    """
    # Bind before opening the nursery, so that setup errors are not wrapped in a group.
    listener, port = await server._listen(host, 0, implicit_tls=implicit_tls)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(server._serve, listener, implicit_tls=implicit_tls))
        try:
            yield port
        finally:
            nursery.cancel_scope.cancel()
