"""Shared helpers of the hardening suite: leak checks, certificates, recording streams."""

from __future__ import annotations

import datetime
import os
import ssl
from collections.abc import Iterable

import attrs
import trio
import trio.lowlevel
import trustme

#: The client connects to this literal (no resolver thread, so the autojump clock only jumps
#: while the client really waits for the server).
LOOPBACK = "127.0.0.1"


# --------------------------------------------------------------------------- leak checks


def open_fds() -> int:
    """How many file descriptors this process holds."""
    return len(os.listdir("/proc/self/fd"))


def live_tasks() -> set[trio.lowlevel.Task]:
    """Every task of this trio run, found by walking the task tree from the root."""
    found: set[trio.lowlevel.Task] = set()
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        if task is None or task in found:
            continue
        found.add(task)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return found


def describe(tasks: Iterable[trio.lowlevel.Task]) -> list[str]:
    return sorted(task.name for task in tasks)


# --------------------------------------------------------------------------- certificates


@attrs.frozen
class Certificates:
    """A CA that the client trusts, and server contexts that are good or bad in one way."""

    client: ssl.SSLContext
    good: ssl.SSLContext
    untrusted: ssl.SSLContext
    expired: ssl.SSLContext
    wrong_host: ssl.SSLContext

    def server_context(self, kind: str) -> ssl.SSLContext:
        context = getattr(self, kind)
        assert isinstance(context, ssl.SSLContext)
        return context


def _server_context(leaf: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(context)
    return context


def make_certificates() -> Certificates:
    ca = trustme.CA()
    now = datetime.datetime.now(datetime.UTC)
    client = ssl.create_default_context()
    client.load_verify_locations(cadata=ca.cert_pem.bytes().decode("ascii"))
    return Certificates(
        client=client,
        good=_server_context(ca.issue_cert(LOOPBACK, "localhost")),
        untrusted=_server_context(trustme.CA().issue_cert(LOOPBACK, "localhost")),
        expired=_server_context(
            ca.issue_cert(
                LOOPBACK,
                "localhost",
                not_before=now - datetime.timedelta(days=30),
                not_after=now - datetime.timedelta(days=1),
            )
        ),
        wrong_host=_server_context(ca.issue_cert("mail.elsewhere.test")),
    )


# --------------------------------------------------------------------------- streams


class RecordingStream(trio.abc.Stream):
    """Wraps a stream and keeps every byte written through it (the client's wire)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        #: Every byte the client asked to send, including a write that was interrupted.
        self.attempted = bytearray()
        #: Every byte of the writes that completed.
        self.written = bytearray()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.attempted += data
        await self.inner.send_all(data)
        self.written += data

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()
