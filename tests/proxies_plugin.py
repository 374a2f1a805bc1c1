"""Proxy support for the tests: the ``proxies`` fixture (the real proxies that
``tests/interop/proxies.sh start`` runs), and fake proxies on loopback.

A pytest plugin, registered by ``pytest_plugins`` in ``tests/conftest.py``.

* :func:`proxies`: the settings of the private microsocks and tinyproxy
  instances, read from ``$PROXIES_STATE/env.json``. When that file is missing or
  a proxy does not answer, the tests are skipped, unless
  ``TRIO_SENDMAIL_REQUIRE_PROXIES=1`` (CI), in which case they fail.
* :class:`FakeProxy`: an honest SOCKS5 (RFC 1928/1929) or HTTP CONNECT proxy
  that records what the client asked for and relays to loopback servers. It is
  written from the RFCs, and imports nothing from the client library.
* :func:`serve_script`: a listener whose every connection is handed to a test's
  script, for hostile replies.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import attrs
import pytest
import trio

START_HINT = (
    "start them with `bash tests/interop/proxies.sh start` (needs root to install), "
    "or set TRIO_SENDMAIL_REQUIRE_PROXIES=1 to make this a failure"
)


# ------------------------------------------------------------------ real proxies


@attrs.frozen
class ProxiesEnv:
    """The settings ``proxies.sh start`` wrote to ``env.json``."""

    state_dir: Path
    host: str
    socks_port: int
    socks_noauth_port: int
    http_port: int
    connect_ports: tuple[int, ...]
    user: str
    password: str
    log_dir: Path

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProxiesEnv:
        return cls(
            state_dir=Path(str(data["state_dir"])),
            host=str(data["host"]),
            socks_port=int(data["socks_port"]),
            socks_noauth_port=int(data["socks_noauth_port"]),
            http_port=int(data["http_port"]),
            connect_ports=tuple(int(port) for port in data["connect_ports"]),
            user=str(data["user"]),
            password=str(data["password"]),
            log_dir=Path(str(data["log_dir"])),
        )


def proxies_env_path() -> Path:
    state = os.environ.get("PROXIES_STATE") or os.path.join(
        os.environ.get("TMPDIR") or "/tmp", "trio_sendmail_proxies"
    )
    return Path(state) / "env.json"


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("TRIO_SENDMAIL_REQUIRE_PROXIES") == "1":
        pytest.fail(
            f"proxy interop tests required (TRIO_SENDMAIL_REQUIRE_PROXIES=1) but {reason}",
            pytrace=False,
        )
    pytest.skip(f"test proxies not available: {reason}; {START_HINT}")


@pytest.fixture(scope="session")
def proxies() -> ProxiesEnv:
    """The running test proxies, or skip (fail on CI) when they do not run."""
    path = proxies_env_path()
    if not path.is_file():
        _unavailable(f"{path} does not exist")
    env = ProxiesEnv.from_json(json.loads(path.read_text(encoding="utf-8")))
    for port in (env.socks_port, env.socks_noauth_port, env.http_port):
        try:
            socket.create_connection((env.host, port), timeout=5).close()
        except OSError as exc:
            _unavailable(f"{env.host}:{port} from {path} is not reachable ({exc})")
    return env


# ------------------------------------------------------------------ fake proxies


async def _relay(a: trio.SocketStream, b: trio.SocketStream) -> None:
    """Copy bytes both ways until either side ends, then close both."""

    async def pump(
        src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, a, b, nursery.cancel_scope)
            nursery.start_soon(pump, b, a, nursery.cancel_scope)
    finally:
        try:
            await trio.aclose_forcefully(a)
        finally:  # the first close raises Cancelled when the relay was cancelled
            await trio.aclose_forcefully(b)


class Reader:
    """Exact reads from the client side of a fake proxy."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError
            self.buffer += data
        out = bytes(self.buffer[:size])
        del self.buffer[:size]
        return out

    async def head(self) -> bytes:
        while b"\r\n\r\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError
            self.buffer += data
        end = self.buffer.index(b"\r\n\r\n") + 4
        out = bytes(self.buffer[:end])
        del self.buffer[:end]
        return out


@attrs.define
class FakeProxy:
    """An honest fake proxy (``kind`` ``"socks5"`` or ``"http"``) that tunnels to
    ``routes[(host, port)]``, a port on 127.0.0.1; see the module docstring.

    With *coalesce*, the proxy's success reply and the server's first bytes
    (its greeting, or the TLS server hello) go out in one write, so a client
    that reads more than the reply would swallow them.
    """

    kind: str
    routes: dict[tuple[str, int], int]
    credentials: tuple[str, str] | None = None
    coalesce: bool = False
    #: (host as sent, port): what each client asked for; host is the name
    #: (SOCKS5 address type 3, HTTP authority) or the IP address text.
    requests: list[tuple[str, int]] = attrs.field(factory=list)
    #: The raw bytes of each client's handshake.
    handshakes: list[bytes] = attrs.field(factory=list)
    tunnels: int = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        reader = Reader(stream)
        try:
            if self.kind == "socks5":
                target = await self._socks5(reader)
            else:
                target = await self._http(reader)
        except (EOFError, trio.BrokenResourceError, OSError):
            target = None
        if target is None:
            await trio.aclose_forcefully(stream)
            return
        upstream, reply = target  # nothing awaited since upstream was opened
        try:
            if self.coalesce:
                # The server speaks first (a greeting): send it with the reply.
                reply += await upstream.receive_some(65536)
            await stream.send_all(reply)
        except BaseException:
            try:
                await trio.aclose_forcefully(upstream)
            finally:
                await trio.aclose_forcefully(stream)
            raise
        self.tunnels += 1
        await _relay(stream, upstream)

    async def _connect(self, host: str, port: int) -> trio.SocketStream | None:
        self.requests.append((host, port))
        local = self.routes.get((host.lower(), port))
        if local is None:
            return None
        return await trio.open_tcp_stream("127.0.0.1", local)

    async def _socks5(self, reader: Reader) -> tuple[trio.SocketStream, bytes] | None:
        stream = reader.stream
        log = bytearray()
        version, count = await reader.exactly(2)
        methods = await reader.exactly(count)
        log += bytes([version, count]) + methods
        if version != 5:
            return None
        if self.credentials is not None:
            if 2 not in methods:
                await stream.send_all(b"\x05\xff")
                self.handshakes.append(bytes(log))
                return None
            await stream.send_all(b"\x05\x02")
            sub, ulen = await reader.exactly(2)
            user = await reader.exactly(ulen)
            (plen,) = await reader.exactly(1)
            password = await reader.exactly(plen)
            log += bytes([sub, ulen]) + user + bytes([plen]) + password
            ok = (user.decode(), password.decode()) == self.credentials
            await stream.send_all(b"\x01\x00" if ok else b"\x01\x01")
            if not ok:
                self.handshakes.append(bytes(log))
                return None
        else:
            await stream.send_all(b"\x05\x00")
        head = await reader.exactly(4)
        log += head
        kind = head[3]
        if kind == 1:
            raw = await reader.exactly(4)
            host = socket.inet_ntop(socket.AF_INET, raw)
        elif kind == 4:
            raw = await reader.exactly(16)
            host = socket.inet_ntop(socket.AF_INET6, raw)
        else:
            (length,) = await reader.exactly(1)
            raw = bytes([length]) + await reader.exactly(length)
            host = raw[1:].decode("ascii")
        port_bytes = await reader.exactly(2)
        log += raw + port_bytes
        self.handshakes.append(bytes(log))
        upstream = await self._connect(host, int.from_bytes(port_bytes, "big"))
        if upstream is None:
            await stream.send_all(b"\x05\x04\x00\x01\x00\x00\x00\x00\x00\x00")  # host unreachable
            return None
        success = b"\x05\x00\x00\x01\x7f\x00\x00\x01" + (4321).to_bytes(2, "big")
        return upstream, success

    async def _http(self, reader: Reader) -> tuple[trio.SocketStream, bytes] | None:
        stream = reader.stream
        head = await reader.head()
        self.handshakes.append(head)
        lines = head.decode("latin-1").split("\r\n")
        method, authority, _ = lines[0].split(" ")
        if method != "CONNECT":
            await stream.send_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            return None
        if self.credentials is not None:
            token = base64.b64encode(":".join(self.credentials).encode()).decode()
            if f"Proxy-Authorization: Basic {token}" not in lines:
                await stream.send_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                return None
        host, _, port = authority.rpartition(":")
        upstream = await self._connect(host.strip("[]"), int(port))
        if upstream is None:
            await stream.send_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return None
        reply = b"HTTP/1.1 200 Connection established\r\nX-Fake: yes\r\n\r\n"
        return upstream, reply


@asynccontextmanager
async def serve(handler: Callable[[trio.SocketStream], Awaitable[None]]) -> AsyncIterator[int]:
    """Serve *handler* on 127.0.0.1 (a free port, yielded) during the block."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.serve_listeners, handler, listeners))
        try:
            yield port
        finally:
            nursery.cancel_scope.cancel()


Script = Callable[[trio.SocketStream, Reader], Awaitable[None]]


@asynccontextmanager
async def serve_script(script: Script) -> AsyncIterator[int]:
    """A hostile proxy: each connection runs *script* (then is closed)."""

    async def handle(stream: trio.SocketStream) -> None:
        try:
            await script(stream, Reader(stream))
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async with serve(handle) as port:
        yield port
