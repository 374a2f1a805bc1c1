"""Proxies for the ``connect`` parameter: SOCKS5 and HTTP CONNECT.

Theory of operation
-------------------
A proxy here is a *connector*: an async callable ``proxy(hostname, port)`` that
opens a TCP connection to the proxy, asks it for a tunnel to the SMTP server
and returns the connected :class:`trio.SocketStream`. Nothing else changes: the
library runs TLS (implicit, or after STARTTLS) over the tunnel, with the SMTP
server's own name for SNI and the certificate check, so the proxy relays
ciphertext it cannot read or alter unnoticed.

* **SOCKS5** (RFC 1928): method negotiation (§3), username/password
  authentication (RFC 1929) when credentials are given, then ``CONNECT`` (§4)
  with the host *name* (address type 3), so that the proxy resolves it
  ("remote DNS": the client never looks the name up). An IP literal goes as
  address type 1 or 4. Every reply has a known length (§6, RFC 1929 §2) and is
  read exactly, so no byte of the SMTP server's greeting is taken.
* **HTTP CONNECT** (RFC 9110 §9.3.6): ``CONNECT host:port HTTP/1.1`` with
  ``Proxy-Authorization: Basic`` (RFC 7617) when credentials are given. The
  response head is read up to its empty line by peeking at the socket, then
  taking exactly the head, so that the greeting after it stays in the socket.
  A 2xx opens the tunnel. 407 (RFC 9110 §15.5.8) means the credentials were
  missing or refused; 401 is taken the same way, since tinyproxy answers wrong
  credentials with it. A head longer than :data:`MAX_HTTP_HEAD` is refused.

Every failure of the proxy raises an :class:`SMTPProxyError`, which is an
:class:`~trio_sendmail.SMTPConnectionError`, so pools and the bulk sender
treat it as a connection that could not be opened. A proxy that does not
answer is bounded by ``Timeouts.connect`` (the whole of the connector runs
under it) and raises :class:`~trio_sendmail.SMTPTimeoutError` with phase
``"connect"``. The password appears in no repr, exception or log line.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import re
import socket

import attrs
import idna
import trio

from ._errors import SMTPConnectionError, SMTPInputError

__all__ = [
    "MAX_HTTP_HEAD",
    "HTTPConnectProxy",
    "SMTPProxyAuthenticationError",
    "SMTPProxyError",
    "SMTPProxyProtocolError",
    "SMTPProxyRefused",
    "SOCKS5Proxy",
]

logger = logging.getLogger("trio_sendmail.proxy")

#: The most bytes of an HTTP proxy's response head (status line and headers).
MAX_HTTP_HEAD = 16 * 1024

# RFC 1928 §3 methods, §4 commands and address types, §6 replies.
_SOCKS_VERSION = 5
_NO_AUTHENTICATION = 0x00
_USERNAME_PASSWORD = 0x02
_NO_ACCEPTABLE_METHOD = 0xFF
_CONNECT = 0x01
_IPV4, _DOMAIN, _IPV6 = 0x01, 0x03, 0x04
_SOCKS_REPLIES = {
    0x01: "general SOCKS server failure",
    0x02: "connection not allowed by ruleset",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
}
# RFC 1929 §2: the version of the username/password subnegotiation.
_USERPASS_VERSION = 1


# ------------------------------------------------------------------ errors


class SMTPProxyError(SMTPConnectionError):
    """The proxy could not open a tunnel to the SMTP server.

    Attributes:
        proxy: which proxy, e.g. ``"SOCKS5 proxy 127.0.0.1:1080"``.
    """

    def __init__(self, message: str, *, proxy: str) -> None:
        super().__init__(f"{proxy}: {message}")
        self.proxy = proxy


class SMTPProxyAuthenticationError(SMTPProxyError):
    """The proxy wants credentials that were not given, or refused those that were
    (SOCKS5: no acceptable method, or RFC 1929 status not 0; HTTP: 407 or 401)."""


class SMTPProxyRefused(SMTPProxyError):
    """The proxy would not, or could not, connect to the SMTP server.

    Attributes:
        code: the SOCKS5 reply code (RFC 1928 §6, e.g. 5 for "connection
            refused") or the HTTP status (e.g. 403, 502).
    """

    def __init__(self, message: str, *, proxy: str, code: int) -> None:
        super().__init__(message, proxy=proxy)
        self.code = code


class SMTPProxyProtocolError(SMTPProxyError):
    """The proxy's reply broke its protocol: a wrong version, a method that was
    not offered, garbage, a reply cut short, or an HTTP head that is too long."""


# ------------------------------------------------------------------ checks


def _check_credentials(
    username: str | None, password: str | None, *, colon: bool
) -> tuple[bytes, bytes] | None:
    if username is None and password is None:
        return None
    if not isinstance(username, str) or not isinstance(password, str):
        raise SMTPInputError("give both the proxy username and password, as str, or neither")
    user, secret = username.encode(), password.encode()
    if not 0 < len(user) < 256 or not 0 < len(secret) < 256:
        # RFC 1929 §2; also a sane bound for Basic credentials.
        raise SMTPInputError("the proxy username and password must each be 1 to 255 bytes")
    if colon and ":" in username:
        raise SMTPInputError("an HTTP proxy username cannot contain ':' (RFC 7617 §2)")
    if any(c < 0x20 or c == 0x7F for c in user + secret):
        raise SMTPInputError("the proxy username or password contains a control character")
    return user, secret


def _check_proxy_address(host: object, port: object) -> None:
    if not isinstance(host, str) or not host or any(c.isspace() or c < " " for c in host):
        raise SMTPInputError(f"invalid proxy host {host!r}")
    if "@" in host or "/" in host or (":" in host and not _ipv6_literal(host)):
        # "user:password@proxy" or "http://proxy:3128": credentials go in their own
        # arguments (a host ends up in every error message and log line).
        raise SMTPInputError(
            "a proxy host is a name or an address only: give the port, the username "
            "and the password as their own arguments"
        )
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise SMTPInputError(f"invalid proxy port {port!r}")


def _ipv6_literal(host: str) -> bool:
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(bare).version == 6
    except ValueError:
        return False


def _target(
    hostname: str, port: int
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address | None, bytes]:
    """The SMTP server as an IP address, or else as its ASCII (IDNA) name."""
    _check_proxy_address(hostname, port)
    bare = hostname[1:-1] if hostname.startswith("[") and hostname.endswith("]") else hostname
    try:
        return ipaddress.ip_address(bare), b""
    except ValueError:
        pass
    try:
        name = bare.encode("ascii") if bare.isascii() else idna.encode(bare, uts46=True)
    except idna.IDNAError as exc:
        raise SMTPInputError(f"the host name {hostname!r} has no ASCII form: {exc}") from None
    if len(name) > 255:
        raise SMTPInputError("the host name is longer than 255 bytes")
    return None, name


def _printable(data: bytes, limit: int = 120) -> str:
    """*data* from the proxy, safe to put in a message."""
    text = data[:limit].decode("ascii", "backslashreplace")
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text + ("…" if len(data) > limit else "")


# ------------------------------------------------------------------ I/O


class _Handshake:
    """The I/O of one proxy handshake; every transport error becomes an
    :class:`SMTPProxyError` here, and only here."""

    def __init__(self, stream: trio.SocketStream, label: str) -> None:
        self.stream = stream
        self.label = label

    def lost(self, exc: BaseException) -> SMTPProxyError:
        return SMTPProxyError(
            f"the connection was lost during the handshake ({exc})", proxy=self.label
        )

    async def send(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (OSError, trio.BrokenResourceError) as exc:
            raise self.lost(exc) from exc

    async def receive_exactly(self, size: int, what: str) -> bytes:
        data = bytearray()
        while len(data) < size:
            try:
                chunk = await self.stream.receive_some(size - len(data))
            except (OSError, trio.BrokenResourceError) as exc:
                raise self.lost(exc) from exc
            if not chunk:
                raise SMTPProxyProtocolError(
                    f"the proxy closed the connection in the middle of {what} "
                    f"({len(data)} of {size} bytes)",
                    proxy=self.label,
                )
            data += chunk
        return bytes(data)

    async def receive_head(self) -> bytes:
        """An HTTP response head, up to and with its empty line, and not a
        byte more: peek, then take exactly the bytes that belong to it."""
        sock = self.stream.socket
        head = bytearray()
        end_of_head = re.compile(rb"\r?\n\r?\n")
        while True:
            try:
                peeked = await sock.recv(4096, socket.MSG_PEEK)
            except OSError as exc:
                raise self.lost(exc) from exc
            if not peeked:
                raise SMTPProxyProtocolError(
                    f"the proxy closed the connection before the end of its response "
                    f"({len(head)} bytes: {_printable(bytes(head))!r})",
                    proxy=self.label,
                )
            start = max(0, len(head) - 3)
            match = end_of_head.search(bytes(head[start:]) + peeked)
            take = len(peeked) if match is None else start + match.end() - len(head)
            try:
                got = await sock.recv(take)
            except OSError as exc:
                raise self.lost(exc) from exc
            head += got
            if len(head) > MAX_HTTP_HEAD:
                raise SMTPProxyProtocolError(
                    f"the response head is longer than {MAX_HTTP_HEAD} bytes", proxy=self.label
                )
            if match is not None and len(got) == take:
                return bytes(head)


async def _open(host: str, port: int, label: str) -> trio.SocketStream:
    try:
        return await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise SMTPProxyError(f"cannot connect to the proxy ({exc})", proxy=label) from exc


# ------------------------------------------------------------------ SOCKS5


@attrs.frozen
class SOCKS5Proxy:
    """A SOCKS5 proxy (RFC 1928), for the ``connect`` parameter.

    ``await proxy(hostname, port)`` opens a tunnel to *hostname*:*port* through
    the proxy and returns the stream. The proxy resolves *hostname* (remote
    DNS). With credentials, username/password authentication (RFC 1929) is
    offered besides "no authentication"; the proxy chooses.

    Args:
        host: the proxy's host name or IP address.
        port: the proxy's port (1080 by default).
        username: the proxy username, or ``None``.
        password: the proxy password, or ``None`` (never in the repr).

    Raises:
        SMTPInputError: a malformed host, port or credentials (when made).
    """

    host: str
    port: int = 1080
    username: str | None = attrs.field(default=None, kw_only=True)
    password: str | None = attrs.field(default=None, kw_only=True, repr=False)

    def __attrs_post_init__(self) -> None:
        _check_proxy_address(self.host, self.port)
        _check_credentials(self.username, self.password, colon=False)

    @property
    def _label(self) -> str:
        return f"SOCKS5 proxy {self.host}:{self.port}"

    async def __call__(self, hostname: str, port: int) -> trio.SocketStream:
        """Open a tunnel to *hostname*:*port* and return it.

        Raises:
            SMTPInputError: *hostname* has no ASCII form, or is too long.
            SMTPProxyAuthenticationError: the proxy wants credentials, or
                refused them.
            SMTPProxyRefused: the proxy could not reach the server (RFC 1928
                §6 reply code in :attr:`~SMTPProxyRefused.code`).
            SMTPProxyProtocolError: the proxy broke the protocol.
            SMTPProxyError: the proxy could not be reached, or the connection
                to it was lost.
        """
        address, name = _target(hostname, port)
        credentials = _check_credentials(self.username, self.password, colon=False)
        stream = await _open(self.host, self.port, self._label)
        try:
            await self._handshake(
                _Handshake(stream, self._label), address, name, port, credentials
            )
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        logger.debug("tunnel to %s port %d open through the %s", hostname, port, self._label)
        return stream

    async def _handshake(
        self,
        io: _Handshake,
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
        name: bytes,
        port: int,
        credentials: tuple[bytes, bytes] | None,
    ) -> None:
        label = self._label
        # §3: offer the methods we can do.
        methods = [_NO_AUTHENTICATION] + ([_USERNAME_PASSWORD] if credentials else [])
        await io.send(bytes([_SOCKS_VERSION, len(methods), *methods]))
        version, method = await io.receive_exactly(2, "the method selection")
        if version != _SOCKS_VERSION:
            raise SMTPProxyProtocolError(
                f"not a SOCKS5 reply (version {version}, expected 5)", proxy=label
            )
        if method == _NO_ACCEPTABLE_METHOD:
            wanted = "" if credentials else " (give a username and password)"
            raise SMTPProxyAuthenticationError(
                f"the proxy accepts none of the offered authentication methods{wanted}",
                proxy=label,
            )
        if method not in methods:
            raise SMTPProxyProtocolError(
                f"the proxy chose authentication method {method:#04x}, which was not offered",
                proxy=label,
            )
        if method == _USERNAME_PASSWORD:
            assert credentials is not None
            user, secret = credentials
            await io.send(
                bytes([_USERPASS_VERSION, len(user)]) + user + bytes([len(secret)]) + secret
            )
            version, status = await io.receive_exactly(2, "the authentication reply")
            if version != _USERPASS_VERSION:
                raise SMTPProxyProtocolError(
                    f"bad username/password reply version {version} (expected 1)", proxy=label
                )
            if status != 0:
                raise SMTPProxyAuthenticationError(
                    f"the proxy refused the username and password (status {status})", proxy=label
                )
        # §4: CONNECT, by name (remote DNS) unless the server is an IP literal.
        if address is None:
            destination = bytes([_DOMAIN, len(name)]) + name
        elif address.version == 4:
            destination = bytes([_IPV4]) + address.packed
        else:
            destination = bytes([_IPV6]) + address.packed
        await io.send(bytes([_SOCKS_VERSION, _CONNECT, 0]) + destination + port.to_bytes(2, "big"))
        # §6: VER REP RSV ATYP BND.ADDR BND.PORT
        version, reply, reserved, kind = await io.receive_exactly(4, "the CONNECT reply")
        if version != _SOCKS_VERSION:
            raise SMTPProxyProtocolError(
                f"not a SOCKS5 reply to CONNECT (version {version}, expected 5)", proxy=label
            )
        if reply != 0:
            meaning = _SOCKS_REPLIES.get(reply, "unknown reply code")
            raise SMTPProxyRefused(
                f"the proxy could not connect to the server: {meaning} (reply {reply})",
                proxy=label,
                code=reply,
            )
        if reserved != 0:
            raise SMTPProxyProtocolError(
                f"non-zero reserved byte {reserved:#04x} in the CONNECT reply", proxy=label
            )
        if kind == _IPV4:
            await io.receive_exactly(4 + 2, "the bound address")
        elif kind == _IPV6:
            await io.receive_exactly(16 + 2, "the bound address")
        elif kind == _DOMAIN:
            (length,) = await io.receive_exactly(1, "the bound address")
            await io.receive_exactly(length + 2, "the bound address")
        else:
            raise SMTPProxyProtocolError(
                f"unknown address type {kind:#04x} in the CONNECT reply", proxy=label
            )


# ------------------------------------------------------------------ HTTP CONNECT

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: ([^\r\n]*))?\r?\n")


@attrs.frozen
class HTTPConnectProxy:
    """An HTTP proxy that tunnels with ``CONNECT`` (RFC 9110 §9.3.6), for the
    ``connect`` parameter.

    ``await proxy(hostname, port)`` asks the proxy for a tunnel to
    *hostname*:*port* (the proxy resolves the name) and returns the stream.
    Many proxies allow ``CONNECT`` only to some ports (tinyproxy: its
    ``ConnectPort`` lines; Squid: ``SSL_ports``); the others answer 403.

    Args:
        host: the proxy's host name or IP address.
        port: the proxy's port.
        username: for ``Proxy-Authorization: Basic`` (RFC 7617), or ``None``.
        password: the password, or ``None`` (never in the repr). The pair is
            sent on the plain TCP connection to the proxy: anyone on that path
            can read it.

    Raises:
        SMTPInputError: a malformed host, port or credentials (when made).
    """

    host: str
    port: int
    username: str | None = attrs.field(default=None, kw_only=True)
    password: str | None = attrs.field(default=None, kw_only=True, repr=False)

    def __attrs_post_init__(self) -> None:
        _check_proxy_address(self.host, self.port)
        _check_credentials(self.username, self.password, colon=True)

    @property
    def _label(self) -> str:
        return f"HTTP proxy {self.host}:{self.port}"

    async def __call__(self, hostname: str, port: int) -> trio.SocketStream:
        """Open a tunnel to *hostname*:*port* and return it.

        Raises:
            SMTPInputError: *hostname* has no ASCII form.
            SMTPProxyAuthenticationError: 407 or 401: credentials missing or refused.
            SMTPProxyRefused: any other status but 2xx (e.g. 403 for a port the
                proxy does not tunnel to, 502 when the server cannot be
                reached); the status is in :attr:`~SMTPProxyRefused.code`.
            SMTPProxyProtocolError: not an HTTP response, or a head too long.
            SMTPProxyError: the proxy could not be reached, or the connection
                to it was lost.
        """
        address, name = _target(hostname, port)
        if address is None:
            authority = f"{name.decode('ascii')}:{port}"
        elif address.version == 6:
            authority = f"[{address.compressed}]:{port}"
        else:
            authority = f"{address.compressed}:{port}"
        request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n".encode("ascii")
        credentials = _check_credentials(self.username, self.password, colon=True)
        if credentials is not None:
            token = base64.b64encode(b":".join(credentials))
            request += b"Proxy-Authorization: Basic " + token + b"\r\n"
        request += b"\r\n"
        stream = await _open(self.host, self.port, self._label)
        try:
            io = _Handshake(stream, self._label)
            await io.send(request)
            head = await io.receive_head()
            self._check(head, authority, credentials is not None)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        logger.debug("tunnel to %s open through the %s", authority, self._label)
        return stream

    def _check(self, head: bytes, authority: str, with_credentials: bool) -> None:
        label = self._label
        match = _STATUS_LINE.match(head)
        if match is None:
            first = head.split(b"\n", 1)[0]
            raise SMTPProxyProtocolError(
                f"not an HTTP response: {_printable(first)!r}", proxy=label
            )
        status = int(match[1])
        reason = _printable(match[2] or b"", 80)
        if 200 <= status < 300:
            return
        if status in (401, 407):
            problem = (
                "refused the credentials"
                if with_credentials
                else "requires credentials (give a username and password)"
            )
            raise SMTPProxyAuthenticationError(
                f"the proxy {problem}: {status} {reason}", proxy=label
            )
        raise SMTPProxyRefused(
            f"the proxy refused to connect to {authority}: {status} {reason}",
            proxy=label,
            code=status,
        )
