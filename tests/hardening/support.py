"""Shared helpers of the hardening suite: leak checks and recording streams."""

from __future__ import annotations

import os
from collections.abc import Iterable

import trio
import trio.lowlevel

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


# --------------------------------------------------------------------------- streams


class RecordingStream(trio.abc.Stream):
    """Wraps a stream and keeps every byte written through it (the client's wire), and
    counts the bytes read through it."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        #: Every byte the client asked to send, including a write that was interrupted.
        self.attempted = bytearray()
        #: Every byte of the writes that completed.
        self.written = bytearray()
        #: How many bytes were read.
        self.received = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.attempted += data
        await self.inner.send_all(data)
        self.written += data

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self.received += len(data)
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()
