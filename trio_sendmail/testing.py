"""A strict, in-process fake SMTP server for testing SMTP clients under trio.

This module is public API for *your* test suite: it lets you run a real (if tiny) submission
server inside a trio test, point a client at it, and then assert on what arrived, byte for byte.
It needs the optional dependency ``trustme`` only for :func:`make_test_certificates`
(install ``trio_sendmail[testing]``).

The server is deliberately independent of the client half of :mod:`trio_sendmail`: it shares no
parsing or encoding code with it, so it can catch the client's bugs instead of agreeing with them.
It is also *strict*: where a lenient MTA would silently repair a client's mistake (a bare LF, an
undeclared 8-bit body, plaintext pipelined behind ``STARTTLS``, a command sent before the
previous reply when that is not allowed), the fake server refuses it or counts it in an
attribute that tests can assert is zero.

Over memory streams (no sockets, no TLS needed)::

    import trio.testing
    from trio_sendmail.testing import FakeSMTPServer

    async def test_something():
        server = FakeSMTPServer()
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle_stream, server_stream)
            ...  # talk SMTP over client_stream, then send QUIT or close it
        assert server.messages[0].recipients == ("bob@example.test",)
        assert server.bare_line_endings == 0

:func:`trio.testing.memory_stream_pair` buffers without limit, which is what you usually want;
:func:`trio.testing.lockstep_stream_pair` works too if you want every write to wait for the
matching read. Memory streams carry TLS as well: pass the ``server_context`` of
:func:`make_test_certificates` as *ssl_context* and wrap the client side in a client
:class:`trio.SSLStream`.

Over loopback TCP (when a real socket matters)::

    certs = make_test_certificates()
    server = FakeSMTPServer(ssl_context=certs.server_context, users={"alice": "s3cret"})
    async with serve_fake_smtp(server, implicit_tls=True) as port:
        ...  # connect to 127.0.0.1:port with certs.client_context
"""

# Theory of operation
# -------------------
#
# One FakeSMTPServer holds configuration and the record of what happened (messages, transcript,
# counters). Each connection gets a private _Session holding the per-connection state: the
# current stream (plain, or the SSLStream that replaced it), a buffered _Reader, the EHLO state,
# the authenticated identity and the current mail transaction. The session is a plain
# read-a-line / reply loop: SMTP is request/reply, so no background task is needed.
#
# Protocol coverage:
# - RFC 5321 (SMTP): greeting, EHLO/HELO, MAIL, RCPT, DATA with transparency (dot-stuffing,
#   §4.5.2), RSET, NOOP, VRFY, QUIT, the 554-greeting "wait for QUIT" rule (§3.1), strict CRLF
#   line endings and a configurable command-line length limit (§4.5.3.1).
# - RFC 3207 (STARTTLS): the SAME stream is wrapped in a server-side trio.SSLStream after the 220
#   reply; everything buffered before the handshake is discarded and recorded in
#   `injected_plaintext` (the STARTTLS command-injection defence); all session state (EHLO,
#   authentication, transaction) is forgotten afterwards.
# - RFC 4954 (AUTH): PLAIN, LOGIN, CRAM-MD5 (RFC 2195), SCRAM-SHA-256 (RFC 7677/5802, no
#   channel binding), XOAUTH2 and OAUTHBEARER (RFC 7628, with the §3.2.2 error challenge), with
#   or without initial response, "*" cancellation, strict base64, 538 over plaintext, 503 during
#   a transaction or after success. Secrets (responses, the SCRAM server signature) are never
#   written to the transcript.
# - RFC 2920 (PIPELINING): any number of commands per read; a command that must end a group
#   (EHLO, DATA, QUIT, NOOP, AUTH, ...) but is followed by more bytes, or any pipelining when
#   PIPELINING was not offered, is counted in `pipelining_violations`.
# - RFC 1870 (SIZE): SIZE=n on MAIL is checked against the advertised limit, and so is the
#   actual size of the message after the data phase.
# - RFC 6152 (8BITMIME): BODY=7BIT/8BITMIME is accepted when advertised; an 8-bit body sent
#   without BODY=8BITMIME is accepted but counted in `undeclared_8bit`.
# - RFC 6531 (SMTPUTF8): UTF-8 addresses need the SMTPUTF8 MAIL parameter (else 553 5.6.7),
#   which in turn needs the extension to be advertised (else 555).
# - RFC 2034 (ENHANCEDSTATUSCODES): the server's own 2xx/4xx/5xx replies carry an RFC 3463 code
#   exactly when ENHANCEDSTATUSCODES is among the advertised extensions.
# - RFC 3030 (CHUNKING/BINARYMIME), only if "CHUNKING" is listed in `extensions`: BDAT with an
#   exact octet count; BODY=BINARYMIME when "BINARYMIME" is listed too.
#
# The DATA terminator is exactly CRLF "." CRLF (or "." CRLF as the very first line). A bare LF
# or bare CR never ends a line for the purpose of the terminator or of dot-unstuffing, so
# "\n.\n", "\r.\r\n" and friends arrive as message content (the SMTP-smuggling oracle), and every
# bare CR / bare LF is counted in `bare_line_endings`.
#
# Transport failures (EOF, trio.BrokenResourceError, which also wraps TLS errors) end a session
# quietly: the client under test may misbehave, and that must not crash the test's nursery.
# Every other exception is a bug in this module and propagates.

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import ssl
import time
import types
from collections.abc import AsyncIterator, Mapping, Sequence
from functools import partial
from typing import ClassVar, Final

import attrs
import trio

__all__ = [
    "DEFAULT_EXTENSIONS",
    "DEFAULT_HOSTNAME",
    "FakeSMTPServer",
    "ReceivedMessage",
    "TestCertificates",
    "make_test_certificates",
    "serve_fake_smtp",
]

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

_RECEIVE_SIZE: Final = 65536
# A data line longer than this is handed on in pieces (bounded memory for the line reader).
_DATA_PIECE: Final = 65536
# RFC 4954 §4: 12288 octets is enough for the deployed SASL mechanisms.
_SASL_LINE_LIMIT: Final = 12288
_IMPLEMENTED_MECHANISMS: Final = frozenset(
    {"PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256", "XOAUTH2", "OAUTHBEARER"}
)
# The JSON body of the RFC 7628 §3.2.2 error challenge sent for an unknown OAuth token.
_OAUTH_ERROR: Final[Mapping[str, str]] = {
    "status": "invalid_token",
    "scope": "smtp",
    "schemes": "bearer",
}
_SASLNAME_RE: Final = re.compile(r"(?:[^=,]|=2C|=3D)+")
_SCRAM_NONCE_RE: Final = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
_OAUTH_KEY_RE: Final = re.compile(r"[A-Za-z]+")
_CRAM_DIGEST_RE: Final = re.compile(rb"[0-9a-f]{32}")
# RFC 2920 §3.1 (and RFC 4954 §4 for AUTH): commands that must end a pipelined group.
_GROUP_ENDERS: Final = frozenset({"EHLO", "HELO", "DATA", "VRFY", "EXPN", "TURN", "QUIT", "NOOP"})
_NEEDS_HELO: Final = frozenset({"MAIL", "RCPT", "DATA", "BDAT", "AUTH", "STARTTLS"})

_B64_RE: Final = re.compile(
    rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?",
)
_KEYWORD_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_MECHANISM_RE: Final = re.compile(rb"[A-Za-z0-9_-]+")
_PARAM_VALUE_RE: Final = re.compile(r"[\x21-\x3c\x3e-\x7e]+")  # RFC 5321 esmtp-value
_ATEXT: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)

# ESMTP parameters and the extension keyword that must have been offered for each.
_MAIL_PARAMS: Final[Mapping[str, str]] = {
    "SIZE": "SIZE",
    "BODY": "8BITMIME",
    "SMTPUTF8": "SMTPUTF8",
    "AUTH": "AUTH",
    "RET": "DSN",
    "ENVID": "DSN",
    "REQUIRETLS": "REQUIRETLS",
    "MT-PRIORITY": "MT-PRIORITY",
}
_RCPT_PARAMS: Final[Mapping[str, str]] = {"NOTIFY": "DSN", "ORCPT": "DSN"}


class _ClientGone(Exception):
    """The client closed its side of the connection."""


class _Refuse(Exception):
    """Raised by a command handler to refuse the command with one of the server's replies."""

    def __init__(self, code: int, status: str, text: str) -> None:
        super().__init__(code, status, text)
        self.code = code
        self.status = status
        self.text = text


# ---------------------------------------------------------------------------------------------
# Public values


@attrs.frozen
class ReceivedMessage:
    """One message that the fake server accepted (a 2xx reply to the end of data).

    Attributes:
        sender: The reverse-path as received, without the angle brackets; ``""`` for ``<>``.
        recipients: The accepted forward-paths, in order, without angle brackets. Refused
            recipients are not included.
        mail_options: The ESMTP parameters of the MAIL command exactly as sent, e.g.
            ``("SIZE=123", "BODY=8BITMIME")``.
        rcpt_options: The ESMTP parameters of each accepted RCPT command, keyed by recipient.
        data: The message as an MTA would store it: transparency dots removed, the final
            ``".\\r\\n"`` removed (so it normally ends with the last line's CRLF). For BDAT, the
            concatenated chunks. Only CRLF ends a line: a dot after a bare LF is kept.
        raw: The exact bytes received after the 354 reply, up to and including the final
            ``".\\r\\n"``. For BDAT, the concatenated chunks (same as *data*).
        tls: Whether the transaction happened over TLS (STARTTLS or implicit TLS).
        authenticated_as: The SASL authentication identity, or None.
        helo: The argument of the EHLO or HELO command in effect.
    """

    sender: str
    recipients: tuple[str, ...]
    mail_options: tuple[str, ...]
    rcpt_options: Mapping[str, tuple[str, ...]]
    data: bytes
    raw: bytes
    tls: bool
    authenticated_as: str | None
    helo: str


@attrs.frozen
class TestCertificates:
    """Throw-away TLS certificates for a test, from :func:`make_test_certificates`.

    Attributes:
        server_context: A server-side context presenting a leaf certificate valid for the
            requested host names; pass it as ``FakeSMTPServer(ssl_context=...)``.
        client_context: A client-side context (hostname checks and verification on) that trusts
            only the throw-away CA, not the system store.
        ca_pem: The throw-away CA certificate in PEM form.
    """

    __test__: ClassVar[bool] = False  # not a pytest test class, despite the name

    server_context: ssl.SSLContext
    client_context: ssl.SSLContext
    ca_pem: bytes


def make_test_certificates(*hostnames: str) -> TestCertificates:
    """Issue a throw-away CA and a server certificate with trustme.

    Args:
        *hostnames: The names (DNS names or IP addresses) the server certificate is valid for.
            Defaults to ``"mail.example.test"``, ``"localhost"``, ``"127.0.0.1"`` and ``"::1"``.

    Returns:
        The server and client contexts and the CA certificate.

    Raises:
        ModuleNotFoundError: trustme is not installed (install ``trio_sendmail[testing]``).
    """
    import trustme  # optional dependency (trio_sendmail[testing]): imported only here

    if not hostnames:
        hostnames = (DEFAULT_HOSTNAME, "localhost", "127.0.0.1", "::1")
    ca = trustme.CA()
    leaf = ca.issue_cert(*hostnames)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(server_context)
    ca_pem: bytes = ca.cert_pem.bytes()
    # With cadata given, create_default_context() does not load the system's CA store.
    client_context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    return TestCertificates(
        server_context=server_context, client_context=client_context, ca_pem=ca_pem
    )


# ---------------------------------------------------------------------------------------------
# The server


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
            if not _KEYWORD_RE.fullmatch(name.replace("_", "-")):
                raise ValueError(f"invalid SASL mechanism name {name!r}")
        for what, reply in (("data_reply", self.data_reply), ("greeting", self.greeting)):
            _check_reply(what, reply)
        for table in (self.refuse_senders, self.refuse_recipients):
            for reply in table.values():
                _check_reply("refusal", reply)
                if reply[0] < 400:
                    raise ValueError(f"refusal: reply code {reply[0]} is not 4xx or 5xx")
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
        session = _Session(server=self, stream=stream, reader=_Reader(stream))
        try:
            if implicit_tls and self.ssl_context is None:
                raise ValueError("implicit TLS needs ssl_context")
            self.connections += 1
            with contextlib.suppress(_ClientGone, trio.BrokenResourceError):
                await session.run(implicit_tls=implicit_tls)
        finally:
            with contextlib.suppress(trio.BrokenResourceError):
                await session.stream.aclose()

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


# ---------------------------------------------------------------------------------------------
# Per-connection machinery


class _Reader:
    """A buffered reader of CRLF lines, data pieces and counted octets from a stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buf = bytearray()
        self._pos = 0  # everything before _pos has been consumed

    @property
    def buffered(self) -> bool:
        return len(self._buf) > self._pos

    def take_buffered(self) -> bytes:
        data = bytes(self._buf[self._pos :])
        self._buf.clear()
        self._pos = 0
        return data

    async def _fill(self) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        data = await self.stream.receive_some(_RECEIVE_SIZE)
        if not data:
            raise _ClientGone
        self._buf += data

    def _take(self, end: int) -> bytes:
        piece = bytes(self._buf[self._pos : end])
        self._pos = end
        return piece

    async def read_line(self, limit: int) -> bytes | None:
        """Return the next line including its LF, or None if it exceeded *limit* octets."""
        searched = 0
        while True:
            end = self._buf.find(b"\n", self._pos + searched)
            if end >= 0:
                line = self._take(end + 1)
                return line if len(line) <= limit else None
            searched = len(self._buf) - self._pos
            if searched > limit:
                # Too long: drop everything up to and including the next LF.
                while (end := self._buf.find(b"\n", self._pos)) < 0:
                    self._buf.clear()
                    self._pos = 0
                    await self._fill()
                self._pos = end + 1
                return None
            await self._fill()

    async def read_data_piece(self) -> bytes:
        """Return the next line including its LF, or a long piece of an unfinished line.

        A piece never ends between a CR and the LF that follows it.
        """
        searched = 0
        while True:
            end = self._buf.find(b"\n", self._pos + searched)
            if end >= 0:
                return self._take(end + 1)
            searched = len(self._buf) - self._pos
            if searched >= _DATA_PIECE:
                cut = len(self._buf) - (1 if self._buf[-1] == 0x0D else 0)
                return self._take(cut)
            await self._fill()

    async def read_exactly(self, count: int) -> bytes:
        while len(self._buf) - self._pos < count:
            await self._fill()
        return self._take(self._pos + count)


@attrs.define(eq=False)
class _Transaction:
    sender: str
    mail_options: tuple[str, ...]
    smtputf8: bool
    body: str | None  # the BODY= value, upper-cased
    recipients: list[str] = attrs.field(factory=list)
    rcpt_options: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    chunks: bytearray | None = None  # BDAT data so far


def _enhanced_ok(server: FakeSMTPServer) -> bool:
    return any(line.split()[0].upper() == "ENHANCEDSTATUSCODES" for line in server.extensions)


def _find_path(text: str) -> tuple[str, str] | None:
    """Split ``<path> rest`` into the path (without brackets) and the rest, quote-aware."""
    if not text.startswith("<"):
        return None
    quoted = False
    i = 1
    while i < len(text):
        char = text[i]
        if quoted:
            if char == "\\":
                i += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == ">":
            return text[1:i], text[i + 1 :]
        i += 1
    return None


def _valid_domain(domain: str) -> bool:
    if domain.startswith("["):
        return domain.endswith("]") and len(domain) > 2 and " " not in domain
    labels = domain.split(".")
    return all(
        label
        and not label.startswith("-")
        and not label.endswith("-")
        and all(c.isalnum() or c == "-" or not c.isascii() for c in label)
        for label in labels
    )


def _valid_local_part(local: str) -> bool:
    if local.startswith('"'):
        if len(local) < 2 or not local.endswith('"'):
            return False
        body = local[1:-1]
        i = 0
        while i < len(body):
            if body[i] == "\\":
                if i + 1 >= len(body):
                    return False
                i += 2
                continue
            if body[i] == '"' or not body[i].isprintable():
                return False
            i += 1
        return True
    return all(
        atom and all(c in _ATEXT or (not c.isascii() and c.isprintable()) for c in atom)
        for atom in local.split(".")
    )


def _valid_mailbox(path: str, *, allow_postmaster: bool) -> bool:
    """Check an RFC 5321 Path (without brackets), allowing an obsolete source route."""
    if path.startswith("@"):
        route, colon, path = path.partition(":")
        if not colon or not all(
            hop.startswith("@") and _valid_domain(hop[1:]) for hop in route.split(",")
        ):
            return False
    if allow_postmaster and path.lower() == "postmaster":
        return True
    local, at, domain = path.rpartition("@")
    return bool(at) and _valid_local_part(local) and _valid_domain(domain)


def _b64decode(value: bytes) -> bytes | None:
    """Strict RFC 4648 base64 (RFC 4954 §4: reject, don't ignore, anything else)."""
    if len(value) % 4 or not _B64_RE.fullmatch(value):
        return None
    return base64.b64decode(value, validate=True)


def _count_bare(piece: bytes | bytearray) -> int:
    crlf = piece.count(b"\r\n")
    return (piece.count(b"\r") - crlf) + (piece.count(b"\n") - crlf)


@attrs.define(eq=False)
class _Session:
    server: FakeSMTPServer
    stream: trio.abc.Stream
    reader: _Reader
    tls: bool = False
    helo: str | None = None
    esmtp: bool = False  # the client greeted with EHLO, not HELO
    offered: frozenset[str] = frozenset()  # EHLO keywords offered in this session
    authenticated_as: str | None = None
    txn: _Transaction | None = None

    # --- output -------------------------------------------------------------------------------

    async def send(self, code: int, text: str) -> None:
        """Send a reply verbatim; ``\\n`` in *text* separates the lines of a multi-line reply."""
        lines = text.split("\n")
        out = bytearray()
        for index, line in enumerate(lines):
            separator = "-" if index < len(lines) - 1 else " "
            wire = f"{code}{separator}{line}".encode()
            self.server.transcript.append(("S", wire))
            out += wire + b"\r\n"
        await self.stream.send_all(bytes(out))

    async def reply(self, code: int, status: str, text: str) -> None:
        """Send one of the server's own replies, with *status* if enhanced codes are on."""
        if status and _enhanced_ok(self.server):
            text = f"{status} {text}"
        await self.send(code, text)

    # --- main loop ----------------------------------------------------------------------------

    async def run(self, *, implicit_tls: bool) -> None:
        server = self.server
        if implicit_tls:
            await self.start_tls()
        greeting = server.greeting or (220, f"{server.hostname} ESMTP trio_sendmail fake server")
        await self.send(*greeting)
        code = greeting[0]
        if code == 554:
            await self.wait_for_quit()
            return
        if not 200 <= code < 300:
            return
        while True:
            line = await self.read_command()
            if line is None:
                continue
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            handler = getattr(self, f"cmd_{verb.lower()}", None) if verb.isalpha() else None
            if handler is None:
                self.check_group_end(last=False)
                await self.reply(500, "5.5.2", "Command not recognized")
                continue
            if verb in _NEEDS_HELO and self.helo is None:
                self.check_group_end(last=verb in _GROUP_ENDERS)
                await self.reply(503, "5.5.1", "Send EHLO first")
                continue
            try:
                done = await handler(arg)
            except _Refuse as refusal:
                await self.reply(refusal.code, refusal.status, refusal.text)
                continue
            if done:
                return

    async def wait_for_quit(self) -> None:
        while True:
            line = await self.read_command()
            if line is not None and line.partition(" ")[0].upper() == "QUIT":
                await self.reply(221, "2.0.0", "Bye")
                return
            if line is not None:
                await self.reply(503, "5.5.1", "No SMTP service here, send QUIT")

    async def read_command(self) -> str | None:
        """Read, record and validate one command line; reply and return None if it is bad."""
        # An AUTH line with an initial response may be as long as a SASL line
        # (RFC 4954 §4: a real OAuth token is 1.5 to 2.5 KB); others may not.
        limit = max(self.server.max_line_length, _SASL_LINE_LIMIT)
        raw = await self.reader.read_line(limit)
        long_line = raw is not None and len(raw) > self.server.max_line_length
        if raw is None or (long_line and raw[:5].upper() != b"AUTH "):
            self.server.transcript.append(("C", b"<line too long>"))
            await self.reply(500, "5.5.2", "Line too long")
            return None
        body = raw[:-2] if raw.endswith(b"\r\n") else raw
        verb = body.partition(b" ")[0].upper()
        if verb == b"AUTH":
            # Record at most the verb and a well-formed mechanism name: the rest may be secret.
            words = body.split(b" ", 2)
            recorded = words[0]
            if len(words) > 1:
                plausible = _MECHANISM_RE.fullmatch(words[1]) and len(words[1]) <= 40
                recorded += b" " + words[1] if plausible else b" <redacted>"
            if len(words) > 2:
                recorded += b" <redacted>"
        else:
            recorded = body
        self.server.transcript.append(("C", recorded))
        if not raw.endswith(b"\r\n") or b"\r" in body or b"\n" in body:
            await self.reply(500, "5.5.2", "Bare CR or LF in command line")
            return None
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            await self.reply(500, "5.5.2", "Command is not valid UTF-8")
            return None
        if not text or not text.isprintable():
            await self.reply(500, "5.5.2", "Empty command or control characters")
            return None
        verb_text = text.partition(" ")[0].upper()
        if not text.isascii() and verb_text not in ("MAIL", "RCPT"):
            await self.reply(500, "5.5.2", "Non-ASCII command")
            return None
        return text

    def check_group_end(self, *, last: bool) -> None:
        """Count a pipelining violation if the client sent more than it was allowed to."""
        if self.reader.buffered and (last or "PIPELINING" not in self.offered):
            self.server.pipelining_violations += 1

    # --- session commands ---------------------------------------------------------------------

    def ehlo_lines(self) -> list[str]:
        server = self.server
        lines = list(server.extensions)
        keywords = {line.split()[0].upper() for line in lines}
        if (
            server.ssl_context is not None
            and server.starttls
            and not self.tls
            and "STARTTLS" not in keywords
        ):
            lines.append("STARTTLS")
        if self.auth_offered() and "AUTH" not in keywords and server.auth_mechanisms:
            lines.append("AUTH " + " ".join(server.auth_mechanisms))
        return lines

    def auth_offered(self) -> bool:
        server = self.server
        return bool(server.users or server.tokens) and (self.tls or not server.auth_requires_tls)

    async def cmd_ehlo(self, arg: str) -> bool:
        self.check_group_end(last=True)
        if not arg or " " in arg:
            await self.reply(501, "5.5.4", "Syntax: EHLO domain")
            return False
        self.helo = arg
        self.esmtp = True
        self.txn = None
        lines = self.ehlo_lines()
        self.offered = frozenset(line.split()[0].upper() for line in lines)
        await self.send(250, "\n".join([self.server.hostname, *lines]))
        return False

    async def cmd_helo(self, arg: str) -> bool:
        self.check_group_end(last=True)
        if not arg or " " in arg:
            await self.reply(501, "5.5.4", "Syntax: HELO domain")
            return False
        self.helo = arg
        self.esmtp = False
        self.txn = None
        self.offered = frozenset()
        await self.send(250, self.server.hostname)
        return False

    async def cmd_starttls(self, arg: str) -> bool:
        if arg:
            await self.reply(501, "5.5.4", "Syntax: STARTTLS")
            return False
        if self.tls:
            await self.reply(503, "5.5.1", "Already using TLS")
            return False
        if not self.esmtp:
            await self.reply(503, "5.5.1", "Send EHLO first")
            return False
        if self.server.ssl_context is None or "STARTTLS" not in self.offered:
            await self.reply(454, "4.7.0", "TLS not available")
            return False
        await self.reply(220, "2.0.0", "Ready to start TLS")
        # RFC 3207 §5 / CVE-2011-0411 class: nothing sent before the handshake may survive it.
        injected = self.reader.take_buffered()
        if injected:
            self.server.injected_plaintext.append(injected)
        await self.start_tls()
        return False

    async def start_tls(self) -> None:
        context = self.server.ssl_context
        assert context is not None
        tls_stream = trio.SSLStream(self.stream, context, server_side=True)
        self.stream = self.reader.stream = tls_stream
        await tls_stream.do_handshake()
        self.tls = True
        self.helo = None
        self.esmtp = False
        self.offered = frozenset()
        self.authenticated_as = None
        self.txn = None

    async def cmd_rset(self, arg: str) -> bool:
        self.check_group_end(last=False)
        if arg:
            await self.reply(501, "5.5.4", "Syntax: RSET")
            return False
        self.txn = None
        await self.reply(250, "2.0.0", "Ok")
        return False

    async def cmd_noop(self, arg: str) -> bool:
        self.check_group_end(last=True)
        await self.reply(250, "2.0.0", "Ok")
        return False

    async def cmd_quit(self, arg: str) -> bool:
        self.check_group_end(last=True)
        if arg:
            await self.reply(501, "5.5.4", "Syntax: QUIT")
            return False
        await self.reply(221, "2.0.0", "Bye")
        return True

    async def cmd_vrfy(self, arg: str) -> bool:
        self.check_group_end(last=True)
        if not arg:
            await self.reply(501, "5.5.4", "Syntax: VRFY address")
            return False
        await self.reply(252, "2.0.0", "Cannot VRFY user, but will accept message")
        return False

    async def cmd_expn(self, arg: str) -> bool:
        self.check_group_end(last=True)
        await self.reply(502, "5.5.1", "EXPN not implemented")
        return False

    async def cmd_help(self, arg: str) -> bool:
        self.check_group_end(last=True)
        await self.reply(214, "2.0.0", "trio_sendmail fake server; see RFC 5321")
        return False

    # --- AUTH ---------------------------------------------------------------------------------

    async def cmd_auth(self, arg: str) -> bool:
        server = self.server
        mechanism, _, initial = arg.partition(" ")
        mechanism = mechanism.upper()
        # RFC 4954 §4: only a one-round-trip initial response may be followed by more commands.
        self.check_group_end(last=not (mechanism == "PLAIN" and initial))
        if not mechanism or " " in initial:
            await self.reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
        elif not self.esmtp:
            await self.reply(503, "5.5.1", "Send EHLO first")
        elif self.authenticated_as is not None:
            await self.reply(503, "5.5.1", "Already authenticated")
        elif self.txn is not None:
            await self.reply(503, "5.5.1", "AUTH not permitted during a mail transaction")
        elif not server.users and not server.tokens:
            await self.reply(502, "5.5.1", "AUTH not available")
        elif not self.tls and server.auth_requires_tls:
            await self.reply(538, "5.7.11", "Encryption required for requested authentication")
        elif mechanism not in server.auth_mechanisms or mechanism not in _IMPLEMENTED_MECHANISMS:
            await self.reply(504, "5.5.4", "Unrecognized authentication type")
        else:
            response: bytes | None = None
            if initial:
                response = b"" if initial == "=" else _b64decode(initial.encode("ascii"))
                if response is None:
                    await self.reply(501, "5.5.2", "Invalid base64 data")
                    return False
            if mechanism == "PLAIN":
                await self.auth_plain(response)
            elif mechanism == "LOGIN":
                await self.auth_login(response)
            elif mechanism == "CRAM-MD5":
                await self.auth_cram_md5(response)
            elif mechanism == "SCRAM-SHA-256":
                await self.auth_scram(response)
            else:
                await self.auth_oauth(mechanism, response)
        return False

    async def sasl_step(self, challenge: bytes, *, secret: bool = False) -> bytes | None:
        """Send a 334 challenge and return the decoded response; None after replying an error.

        A *secret* challenge (a proof) is recorded as ``334 <redacted>``."""
        if secret:
            self.server.transcript.append(("S", b"334 <redacted>"))
            wire = b"334 " + base64.b64encode(challenge) + b"\r\n"
            await self.stream.send_all(wire)
        else:
            await self.send(334, base64.b64encode(challenge).decode("ascii"))
        raw = await self.reader.read_line(_SASL_LINE_LIMIT)
        self.server.transcript.append(("C", b"<redacted>"))
        if raw is None:
            await self.reply(500, "5.5.6", "Authentication exchange line is too long")
            return None
        self.check_group_end(last=True)
        if not raw.endswith(b"\r\n") or b"\r" in raw[:-2] or b"\n" in raw[:-2]:
            await self.reply(500, "5.5.2", "Bare CR or LF in command line")
            return None
        line = raw[:-2]
        if line == b"*":
            await self.reply(501, "5.7.0", "Authentication cancelled")
            return None
        decoded = _b64decode(line)
        if decoded is None:
            await self.reply(501, "5.5.2", "Invalid base64 data")
        return decoded

    async def auth_plain(self, response: bytes | None) -> None:
        if response is None:
            response = await self.sasl_step(b"")
            if response is None:
                return
        parts = response.split(b"\0")
        try:
            decoded = [part.decode("utf-8") for part in parts]
        except UnicodeDecodeError:
            decoded = []
        if len(decoded) != 3:
            await self.auth_failed()
            return
        authzid, authcid, password = decoded
        if authzid and authzid != authcid:
            await self.auth_failed()
            return
        await self.check_credentials(authcid, password)

    async def auth_login(self, username_raw: bytes | None) -> None:
        username_prompt, password_prompt = self.server.login_prompts
        if username_raw is None:
            username_raw = await self.sasl_step(username_prompt)
            if username_raw is None:
                return
        password_raw = await self.sasl_step(password_prompt)
        if password_raw is None:
            return
        try:
            username = username_raw.decode("utf-8")
            password = password_raw.decode("utf-8")
        except UnicodeDecodeError:
            await self.auth_failed()
            return
        await self.check_credentials(username, password)

    async def check_credentials(self, username: str, password: str) -> None:
        expected = self.server.users.get(username)
        if expected is None or not hmac.compare_digest(
            expected.encode("utf-8"), password.encode("utf-8")
        ):
            await self.auth_failed()
            return
        await self.auth_succeeded(username)

    async def auth_succeeded(self, username: str) -> None:
        self.authenticated_as = username
        await self.reply(235, "2.7.0", "Authentication successful")

    async def auth_cram_md5(self, response: bytes | None) -> None:
        """RFC 2195: a unique msg-id challenge; the answer is ``user SP hex(HMAC-MD5)``."""
        if response is not None:
            # RFC 4954 §4: the client does not begin a CRAM-MD5 exchange.
            await self.reply(501, "5.5.2", "CRAM-MD5 does not allow an initial response")
            return
        server = self.server
        challenge = f"<{secrets.randbelow(10**9)}.{int(time.time())}@{server.hostname}>".encode()
        answer = await self.sasl_step(challenge)
        if answer is None:
            return
        username_raw, _, digest = answer.rpartition(b" ")
        try:
            username = username_raw.decode("utf-8")
        except UnicodeDecodeError:
            username = ""
        password = server.users.get(username)
        if password is None or not _CRAM_DIGEST_RE.fullmatch(digest):
            await self.auth_failed()
            return
        expected = hmac.digest(password.encode("utf-8"), challenge, "md5").hex().encode()
        if not hmac.compare_digest(expected, digest):
            await self.auth_failed()
            return
        await self.auth_succeeded(username)

    async def auth_oauth(self, mechanism: str, response: bytes | None) -> None:
        """XOAUTH2 or OAUTHBEARER (RFC 7628), with the §3.2.2 error challenge."""
        if response is None:
            response = await self.sasl_step(b"")
            if response is None:
                return
        parse = _parse_oauthbearer if mechanism == "OAUTHBEARER" else _parse_xoauth2
        parsed = parse(response)
        if parsed is None:
            await self.auth_failed()
            return
        user, token = parsed
        owner = None
        for known, name in self.server.tokens.items():
            if hmac.compare_digest(known.encode("utf-8"), token.encode("utf-8")):
                owner = name
        if owner is not None and user in (None, owner):
            await self.auth_succeeded(owner)
            return
        error = json.dumps(_OAUTH_ERROR, separators=(",", ":")).encode()
        dummy = await self.sasl_step(error)
        if dummy is None:
            return
        if dummy != (b"\x01" if mechanism == "OAUTHBEARER" else b""):
            await self.reply(501, "5.5.2", "Expected the dummy response to the error challenge")
            return
        await self.auth_failed()

    async def auth_scram(self, response: bytes | None) -> None:
        """SCRAM-SHA-256 (RFC 7677, RFC 5802) without channel binding."""
        if response is None:
            response = await self.sasl_step(b"")
            if response is None:
                return
        first = _parse_scram_client_first(response)
        if first is None:
            await self.auth_failed()
            return
        gs2_header, bare, username, client_nonce = first
        server = self.server
        password = server.users.get(username)
        # An unknown user goes through the same steps (no user enumeration) and fails.
        secret = password if password is not None else secrets.token_hex(16)
        salt = secrets.token_bytes(16)
        salted = hashlib.pbkdf2_hmac(
            "sha256", secret.encode("utf-8"), salt, server.scram_iterations
        )
        stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        nonce = client_nonce + secrets.token_urlsafe(18)
        salt_b64 = base64.b64encode(salt).decode("ascii")
        server_first = f"r={nonce},s={salt_b64},i={server.scram_iterations}"
        final = await self.sasl_step(server_first.encode("ascii"))
        if final is None:
            return
        parsed = _parse_scram_client_final(final, gs2_header, nonce)
        if parsed is None or password is None:
            await self.auth_failed()
            return
        without_proof, proof = parsed
        auth_message = f"{bare},{server_first},{without_proof}".encode()
        client_signature = hmac.digest(stored_key, auth_message, "sha256")
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key):
            await self.auth_failed()
            return
        signature = hmac.digest(server_key, auth_message, "sha256")
        if server.scram_bad_server_signature:
            signature = bytes(byte ^ 0x5A for byte in signature)
        answer = await self.sasl_step(b"v=" + base64.b64encode(signature), secret=True)
        if answer is None:
            return
        if answer:
            await self.auth_failed()
            return
        await self.auth_succeeded(username)

    async def auth_failed(self) -> None:
        await self.reply(535, "5.7.8", "Authentication credentials invalid")

    # --- mail transaction ---------------------------------------------------------------------

    def parse_params(
        self, text: str, known: Mapping[str, str]
    ) -> tuple[tuple[str, ...], dict[str, str | None]]:
        """Parse ESMTP parameters into (as sent, {KEY: value}); raise _Refuse if invalid."""
        if not text:
            return (), {}
        if not text.startswith(" "):
            raise _Refuse(501, "5.5.4", "Syntax: expected a space after the path")
        items = tuple(text[1:].split(" "))
        parsed: dict[str, str | None] = {}
        for item in items:
            key, equals, value = item.partition("=")
            key = key.upper()
            if not _KEYWORD_RE.fullmatch(key) or (equals and not _PARAM_VALUE_RE.fullmatch(value)):
                raise _Refuse(501, "5.5.4", f"Invalid parameter syntax: {item[:40]}")
            if key in parsed:
                raise _Refuse(501, "5.5.4", f"Duplicate parameter {key}")
            extension = known.get(key)
            offered = extension in self.offered or (key == "BODY" and "BINARYMIME" in self.offered)
            if not offered:
                raise _Refuse(555, "5.5.4", f"Parameter {key} not recognized")
            parsed[key] = value if equals else None
        return items, parsed

    async def cmd_mail(self, arg: str) -> bool:
        server = self.server
        self.check_group_end(last=False)
        if self.txn is not None:
            await self.reply(503, "5.5.1", "Nested MAIL command")
            return False
        if server.require_auth and self.authenticated_as is None:
            await self.reply(530, "5.7.0", "Authentication required")
            return False
        if arg[:5].upper() != "FROM:" or (found := _find_path(arg[5:])) is None:
            await self.reply(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
            return False
        path, rest = found
        if path and not _valid_mailbox(path, allow_postmaster=False):
            await self.reply(501, "5.1.7", "Bad sender address syntax")
            return False
        options, values = self.parse_params(rest, _MAIL_PARAMS)
        smtputf8 = "SMTPUTF8" in values
        if smtputf8 and values["SMTPUTF8"] is not None:
            await self.reply(501, "5.5.4", "SMTPUTF8 takes no value")
            return False
        if not path.isascii() and not smtputf8:
            await self.reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
            return False
        body = values.get("BODY")
        if "BODY" in values:
            allowed = {"7BIT"}
            if "8BITMIME" in self.offered:
                allowed.add("8BITMIME")
            if "BINARYMIME" in self.offered:
                allowed.add("BINARYMIME")
            body = (body or "").upper()
            if body not in allowed:
                await self.reply(501, "5.5.4", "Invalid BODY value")
                return False
        if "SIZE" in values:
            declared = values["SIZE"]
            if declared is None or not declared.isdigit() or len(declared) > 20:
                await self.reply(501, "5.5.4", "Invalid SIZE value")
                return False
            limit = server.size_limit
            if limit is not None and int(declared) > limit:
                await self.reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
                return False
        refusal = _lookup(server.refuse_senders, path)
        if refusal is not None:
            await self.send(*refusal)
            return False
        self.txn = _Transaction(sender=path, mail_options=options, smtputf8=smtputf8, body=body)
        await self.reply(250, "2.1.0", "Ok")
        return False

    async def cmd_rcpt(self, arg: str) -> bool:
        self.check_group_end(last=False)
        txn = self.txn
        if txn is None:
            await self.reply(503, "5.5.1", "Need MAIL command")
            return False
        if arg[:3].upper() != "TO:" or (found := _find_path(arg[3:])) is None:
            await self.reply(501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]")
            return False
        path, rest = found
        if not _valid_mailbox(path, allow_postmaster=True):
            await self.reply(501, "5.1.3", "Bad recipient address syntax")
            return False
        options, _ = self.parse_params(rest, _RCPT_PARAMS)
        if not path.isascii() and not txn.smtputf8:
            await self.reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
            return False
        refusal = _lookup(self.server.refuse_recipients, path)
        if refusal is not None:
            await self.send(*refusal)
            return False
        txn.recipients.append(path)
        txn.rcpt_options[path] = options
        await self.reply(250, "2.1.5", "Ok")
        return False

    async def data_refusal(self) -> bool:
        """Reply and return True if a DATA/BDAT command cannot start now."""
        txn = self.txn
        if txn is None:
            await self.reply(503, "5.5.1", "Need MAIL command")
        elif not txn.recipients:
            await self.reply(554, "5.5.1", "No valid recipients")
        else:
            return False
        return True

    async def cmd_data(self, arg: str) -> bool:
        self.check_group_end(last=True)
        if arg:
            await self.reply(501, "5.5.4", "Syntax: DATA")
            return False
        if await self.data_refusal():
            return False
        txn = self.txn
        assert txn is not None
        if txn.chunks is not None:
            await self.reply(503, "5.5.1", "DATA after BDAT")
            return False
        await self.send(354, "End data with <CR><LF>.<CR><LF>")
        server = self.server
        limit = server.size_limit
        raw = bytearray()
        data = bytearray()
        size = 0
        eight_bit = False
        at_line_start = True
        while True:
            piece = await self.reader.read_data_piece()
            if at_line_start and piece == b".\r\n":
                raw += piece
                break
            server.bare_line_endings += _count_bare(piece)
            eight_bit = eight_bit or not piece.isascii()
            unstuffed = piece[1:] if at_line_start and piece.startswith(b".") else piece
            size += len(unstuffed)
            if limit is None or size <= limit:
                raw += piece
                data += unstuffed
            at_line_start = piece.endswith(b"\r\n")
        await self.finish_message(bytes(data), bytes(raw), size, eight_bit=eight_bit)
        return False

    async def cmd_bdat(self, arg: str) -> bool:
        if "CHUNKING" not in self.offered:
            self.check_group_end(last=False)
            await self.reply(500, "5.5.2", "Command not recognized")
            return False
        words = arg.split(" ")
        if not 1 <= len(words) <= 2 or not words[0].isdigit() or len(words[0]) > 20:
            self.check_group_end(last=False)
            await self.reply(501, "5.5.4", "Syntax: BDAT size [LAST]")
            return False
        if len(words) == 2 and words[1].upper() != "LAST":
            self.check_group_end(last=False)
            await self.reply(501, "5.5.4", "Syntax: BDAT size [LAST]")
            return False
        last = len(words) == 2
        # RFC 3030 §2: the chunk is read even if the command is going to fail.
        chunk = await self.reader.read_exactly(int(words[0]))
        self.check_group_end(last=False)
        if await self.data_refusal():
            return False
        txn = self.txn
        assert txn is not None
        if txn.chunks is None:
            txn.chunks = bytearray()
        txn.chunks += chunk
        limit = self.server.size_limit
        too_big = limit is not None and len(txn.chunks) > limit
        if (too_big or last) and txn.body != "BINARYMIME":
            # Counted on the whole message: a CRLF may straddle two chunks.
            self.server.bare_line_endings += _count_bare(txn.chunks)
        if too_big:
            self.txn = None
            await self.reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
            return False
        if not last:
            await self.reply(250, "2.0.0", f"{len(chunk)} octets received")
            return False
        data = bytes(txn.chunks)
        await self.finish_message(data, data, len(data), eight_bit=not data.isascii())
        return False

    async def finish_message(self, data: bytes, raw: bytes, size: int, *, eight_bit: bool) -> None:
        server = self.server
        txn = self.txn
        assert txn is not None
        self.txn = None
        if eight_bit and txn.body not in ("8BITMIME", "BINARYMIME"):
            server.undeclared_8bit += 1
        # RFC 2920 §3.1: message content may start a new group only if PIPELINING was offered.
        self.check_group_end(last=False)
        limit = server.size_limit
        if limit is not None and size > limit:
            await self.reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
            return
        if server.data_reply is not None:
            code, text = server.data_reply
        else:
            code, text = 250, f"Ok: queued as {server._next_queue_id()}"
            if _enhanced_ok(server):
                text = f"2.0.0 {text}"
        if 200 <= code < 300:
            assert self.helo is not None
            server.messages.append(
                ReceivedMessage(
                    sender=txn.sender,
                    recipients=tuple(txn.recipients),
                    mail_options=txn.mail_options,
                    rcpt_options=types.MappingProxyType(dict(txn.rcpt_options)),
                    data=data,
                    raw=raw,
                    tls=self.tls,
                    authenticated_as=self.authenticated_as,
                    helo=self.helo,
                )
            )
        await self.send(code, text)


def _unescape_saslname(value: str) -> str | None:
    """RFC 5802 §5.1 saslname: ``=2C`` is ``,`` and ``=3D`` is ``=``; None if malformed."""
    if not _SASLNAME_RE.fullmatch(value):
        return None
    return value.replace("=2C", ",").replace("=3D", "=")


def _bearer(value: str) -> str | None:
    """The token of an ``auth=Bearer <token>`` value (the scheme is case-insensitive)."""
    scheme, _, token = value.partition(" ")
    return token if scheme.lower() == "bearer" and token else None


def _parse_xoauth2(response: bytes) -> tuple[str | None, str] | None:
    """``user=U ^A auth=Bearer T ^A ^A`` -> (user, token), or None if malformed."""
    try:
        text = response.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.endswith("\x01\x01"):
        return None
    fields = text[:-2].split("\x01")
    if len(fields) != 2 or not fields[0].startswith("user=") or not fields[1].startswith("auth="):
        return None
    token = _bearer(fields[1][5:])
    return None if token is None else (fields[0][5:], token)


def _parse_oauthbearer(response: bytes) -> tuple[str | None, str] | None:
    """RFC 7628 §3.1 client response -> (authzid or None, token), or None if malformed."""
    try:
        text = response.decode("utf-8")
    except UnicodeDecodeError:
        return None
    parts = text.split(",", 2)
    if len(parts) != 3 or parts[0] not in ("n", "y"):  # no channel binding is offered
        return None
    authz, rest = parts[1], parts[2]
    user = None
    if authz:
        if not authz.startswith("a="):
            return None
        user = _unescape_saslname(authz[2:])
        if user is None:
            return None
    if len(rest) < 2 or rest[0] != "\x01" or not rest.endswith("\x01\x01"):
        return None
    pairs: dict[str, str] = {}
    for pair in rest[1:-2].split("\x01") if len(rest) > 2 else []:
        key, equals, value = pair.partition("=")
        if not equals or not _OAUTH_KEY_RE.fullmatch(key) or key in pairs:
            return None
        pairs[key] = value
    token = _bearer(pairs.get("auth", ""))
    return None if token is None else (user, token)


def _parse_scram_client_first(response: bytes) -> tuple[str, str, str, str] | None:
    """-> (gs2 header, client-first-message-bare, username, client nonce), or None."""
    try:
        text = response.decode("utf-8")
    except UnicodeDecodeError:
        return None
    parts = text.split(",", 2)
    if len(parts) != 3 or parts[0] not in ("n", "y"):  # SCRAM-SHA-256-PLUS is not offered
        return None
    flag, authz, bare = parts
    attributes = bare.split(",")
    if len(attributes) < 2 or not attributes[0].startswith("n="):
        return None
    if not attributes[1].startswith("r=") or not _SCRAM_NONCE_RE.fullmatch(attributes[1][2:]):
        return None
    username = _unescape_saslname(attributes[0][2:])
    if username is None:
        return None
    if authz and (not authz.startswith("a=") or _unescape_saslname(authz[2:]) != username):
        return None
    return f"{flag},{authz},", bare, username, attributes[1][2:]


def _parse_scram_client_final(
    response: bytes, gs2_header: str, nonce: str
) -> tuple[str, bytes] | None:
    """-> (client-final-message-without-proof, proof), or None if malformed or foreign."""
    try:
        text = response.decode("utf-8")
    except UnicodeDecodeError:
        return None
    without_proof, separator, proof_b64 = text.rpartition(",p=")
    attributes = without_proof.split(",")
    if not separator or len(attributes) < 2:
        return None
    binding = _b64decode(attributes[0][2:].encode()) if attributes[0].startswith("c=") else None
    if binding != gs2_header.encode("utf-8") or attributes[1] != f"r={nonce}":
        return None
    proof = _b64decode(proof_b64.encode())
    if proof is None or len(proof) != hashlib.sha256().digest_size:
        return None
    return without_proof, proof


def _lookup(table: Mapping[str, tuple[int, str]], address: str) -> tuple[int, str] | None:
    folded = address.casefold()
    for key, reply in table.items():
        if key.casefold() == folded:
            return reply
    return None
