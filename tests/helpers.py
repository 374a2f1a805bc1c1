"""Test helpers: the fake server over memory streams, and a tiny scripted server."""

from __future__ import annotations

import contextlib
import datetime
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import Any, Final, Literal

import attrs
import pytest
import trio
import trio.testing
import trustme

from trio_sendmail import Session, TLSMode, open_session
from trio_sendmail.testing import DEFAULT_EXTENSIONS, FakeSMTPServer, TestCertificates

HOST = "mail.example.test"
CLIENT_NAME = "client.example.test"
PASSWORD = "s3cret-Pa55word!"
USERS = {"alice": PASSWORD}


# --------------------------------------------------------------------------- certificates

#: The names the good server certificate is valid for.
CERTIFICATE_NAMES = (HOST, "localhost", "127.0.0.1", "::1")
ServerCertificate = Literal["good", "untrusted", "expired", "wrong_host"]


@attrs.frozen
class Certificates(TestCertificates):
    """The tests' one set of certificates (the ``certs`` fixture of ``tests/conftest.py``).

    What :func:`trio_sendmail.testing.make_test_certificates` gives (a client context
    that trusts one throw-away CA, and a server context valid for
    :data:`CERTIFICATE_NAMES`), and server contexts that are bad in one way each.
    """

    untrusted: ssl.SSLContext  #: valid names, issued by a CA the client does not trust
    expired: ssl.SSLContext  #: expired yesterday
    wrong_host: ssl.SSLContext  #: valid for another name only

    def server(self, kind: ServerCertificate) -> ssl.SSLContext:
        """The server context of *kind* (``good`` is :attr:`server_context`)."""
        return self.server_context if kind == "good" else getattr(self, kind)


def _server_context(leaf: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(context)
    return context


def make_certificates() -> Certificates:
    ca = trustme.CA()
    yesterday = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    ca_pem = ca.cert_pem.bytes()
    return Certificates(
        server_context=_server_context(ca.issue_cert(*CERTIFICATE_NAMES)),
        client_context=ssl.create_default_context(cadata=ca_pem.decode("ascii")),
        ca_pem=ca_pem,
        untrusted=_server_context(trustme.CA().issue_cert(*CERTIFICATE_NAMES)),
        expired=_server_context(
            ca.issue_cert(
                *CERTIFICATE_NAMES,
                not_before=yesterday - datetime.timedelta(days=30),
                not_after=yesterday,
            )
        ),
        wrong_host=_server_context(ca.issue_cert("mail.elsewhere.test")),
    )


# --------------------------------------------------------------------------- clocks

#: How long every task must have been blocked, in real seconds, before a
#: :func:`loopback_clock` jumps to the next deadline.
LOOPBACK_AUTOJUMP_THRESHOLD: Final = 0.005


def loopback_clock() -> trio.testing.MockClock:
    """An autojump clock for tests that talk over real loopback sockets.

    It jumps to the next deadline once every task has been blocked for a few
    milliseconds of real time, not at once: a loopback segment is normally in the
    peer's receive queue before ``send`` returns, but a loaded machine may defer that
    to a kernel thread, and an instant jump would then fire a timeout early.
    """
    return trio.testing.MockClock(autojump_threshold=LOOPBACK_AUTOJUMP_THRESHOLD)


# --------------------------------------------------------------------------- server variants


@attrs.frozen
class ServerVariant:
    """Whether a test server offers PIPELINING and CHUNKING.

    Every fake server of a suite that sends mail runs in all four variants (the
    ``server_variant`` fixture of ``tests/conftest.py``): with CHUNKING a small
    message goes out as ``BDAT n LAST`` with its data, and with PIPELINING too
    that happens in the same write as MAIL and RCPT, before MAIL is answered.
    """

    pipelining: bool
    chunking: bool

    @property
    def id(self) -> str:
        return f"{'pipe' if self.pipelining else 'lock'}-{'chunk' if self.chunking else 'data'}"

    def __str__(self) -> str:
        return self.id

    def extensions(self, base: Iterable[str] = DEFAULT_EXTENSIONS) -> tuple[str, ...]:
        """*base* (EHLO extension lines) with PIPELINING and CHUNKING added or removed."""
        rest = [line for line in base if line.split()[0].upper() not in ("PIPELINING", "CHUNKING")]
        head = ["PIPELINING"] if self.pipelining else []
        tail = ["CHUNKING"] if self.chunking else []
        return (*head, *rest, *tail)

    def ehlo(self, *base: str, name: str = "srv") -> bytes:
        """A whole EHLO reply offering *base* and this variant's extensions."""
        lines = [name, *self.extensions(base)]
        return b"".join(
            b"250%s%s\r\n" % (b" " if i == len(lines) - 1 else b"-", line.encode())
            for i, line in enumerate(lines)
        )

    @property
    def defers(self) -> bool:
        """send_bulk pipelines across messages: a small message's body and final dot
        wait for the next message's envelope (PIPELINING without CHUNKING)."""
        return self.pipelining and not self.chunking

    @property
    def eod_with_envelope(self) -> bool:
        """A small message's end of data (``BDAT n LAST``) is written with MAIL and
        RCPT, before any of them is answered (PIPELINING and CHUNKING)."""
        return self.pipelining and self.chunking


PIPE_CHUNK: Final = ServerVariant(pipelining=True, chunking=True)
PIPE_DATA: Final = ServerVariant(pipelining=True, chunking=False)
LOCK_CHUNK: Final = ServerVariant(pipelining=False, chunking=True)
LOCK_DATA: Final = ServerVariant(pipelining=False, chunking=False)
VARIANTS: Final = (PIPE_CHUNK, PIPE_DATA, LOCK_CHUNK, LOCK_DATA)


def variants(*chosen: ServerVariant) -> pytest.MarkDecorator:
    """``parametrize`` the ``server_variant`` fixture with only *chosen* (all by default):
    ``@variants(PIPE_CHUNK, LOCK_CHUNK)``."""
    return pytest.mark.parametrize("server_variant", chosen or VARIANTS, ids=str, indirect=True)


def tls_server(
    certs: TestCertificates, *, variant: ServerVariant | None = None, **kwargs: Any
) -> FakeSMTPServer:
    """A :class:`FakeSMTPServer` with the tests' certificate and user (``USERS``) unless
    *kwargs* say otherwise; with *variant*, its extensions (``DEFAULT_EXTENSIONS`` unless
    given) offer PIPELINING and CHUNKING as *variant* says."""
    kwargs.setdefault("ssl_context", certs.server_context)
    kwargs.setdefault("users", USERS)
    if variant is not None:
        kwargs["extensions"] = variant.extensions(kwargs.get("extensions", DEFAULT_EXTENSIONS))
    return FakeSMTPServer(**kwargs)


@asynccontextmanager
async def fake_session(
    server: FakeSMTPServer,
    certs: TestCertificates,
    *,
    tls: TLSMode = TLSMode.STARTTLS,
    **kwargs: Any,
) -> AsyncIterator[Session]:
    """An open_session() talking to *server* over an in-memory stream pair."""
    client, srv = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(server.handle_stream, srv, implicit_tls=tls is TLSMode.IMPLICIT)
        )
        kwargs.setdefault("domain", CLIENT_NAME)
        kwargs.setdefault("ssl_context", certs.client_context)
        async with open_session(HOST, tls=tls, stream=client, **kwargs) as session:
            yield session


#: The ``make_server`` fixture's type (tests/conftest.py).
ServerFactory = Callable[..., FakeSMTPServer]
#: The ``connect`` fixture's type (tests/conftest.py).
SessionFactory = Callable[..., AbstractAsyncContextManager[Session]]

ServerScript = Callable[["RawServer"], Awaitable[None]]


class RawServer:
    """The server side of a memory stream, driven line by line by a test."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            data = await self.stream.receive_some()
            if not data:
                raise EOFError
            self.buffer += data
        end = self.buffer.index(b"\r\n") + 2
        line = bytes(self.buffer[:end])
        del self.buffer[:end]
        return line

    async def expect(self, prefix: bytes, reply: bytes) -> bytes:
        line = await self.line()
        assert line.startswith(prefix), (line, prefix)
        if reply:
            await self.send(reply)
        return line

    async def bdat(self) -> tuple[bytes, bool]:
        """Read one ``BDAT size [LAST]`` command and its chunk: (chunk, whether LAST)."""
        line = await self.line()
        words = line.split()
        assert words[0] == b"BDAT" and len(words) in (2, 3), line
        size = int(words[1])
        while len(self.buffer) < size:
            data = await self.stream.receive_some()
            if not data:
                raise EOFError
            self.buffer += data
        chunk = bytes(self.buffer[:size])
        del self.buffer[:size]
        return chunk, len(words) == 3 and words[2] == b"LAST"

    async def message(self, variant: ServerVariant, *, go: bytes = b"354 go\r\n") -> bytes:
        """After the envelope: DATA (answered *go*) and the data up to the final dot, or
        BDAT chunks up to LAST (the others answered 250), as *variant* says. Returns the
        data (with the final dot for DATA); the reply to its end is the caller's."""
        if not variant.chunking:
            await self.expect(b"DATA", go)
            return await self.data()
        message = b""
        while True:
            chunk, last = await self.bdat()
            message += chunk
            if last:
                return message
            await self.send(b"250 2.0.0 chunk received\r\n")

    async def data(self) -> bytes:
        """Read message data up to and including the end-of-data line."""
        while True:
            if self.buffer.startswith(b".\r\n"):
                end = 3
                break
            index = self.buffer.find(b"\r\n.\r\n")
            if index >= 0:
                end = index + 5
                break
            chunk = await self.stream.receive_some()
            if not chunk:
                raise EOFError
            self.buffer += chunk
        data = bytes(self.buffer[:end])
        del self.buffer[:end]
        return data

    async def greet_and_ehlo(self, ehlo: bytes = b"250-srv\r\n250 PIPELINING\r\n") -> None:
        await self.send(b"220 srv ESMTP\r\n")
        await self.expect(b"EHLO ", ehlo)

    async def eof(self) -> bytes:
        """Read until the client closes; return what came."""
        rest = bytes(self.buffer)
        while True:
            try:
                data = await self.stream.receive_some()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return rest
            if not data:
                return rest
            rest += data


@asynccontextmanager
async def raw_server(script: ServerScript) -> AsyncIterator[tuple[trio.abc.Stream, RawServer]]:
    """Run *script* against the client side of a memory stream pair."""
    client, srv = trio.testing.memory_stream_pair()
    server = RawServer(srv)

    async def run() -> None:
        with contextlib.suppress(EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            await script(server)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        yield client, server
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def serving(
    server: FakeSMTPServer, *, implicit_tls: bool = False
) -> AsyncIterator[trio.abc.Stream]:
    """Run *server* on one in-memory connection; yield the client's stream."""
    client, srv = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(server.handle_stream, srv, implicit_tls=implicit_tls))
        yield client
