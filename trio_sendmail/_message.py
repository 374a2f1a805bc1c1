"""What a message can be given as, and how it is read.

A message is ``bytes`` (or any bytes-like object), an
:class:`email.message.EmailMessage` (any :class:`email.message.Message`), or a
stream of bytes-like chunks: a :class:`trio.MemoryReceiveChannel` (``sendmail-lwt``'s
``unit -> (string * int * int) option Lwt.t``) or any async iterable. A whole
message lets the session declare ``SIZE=`` and know up front whether it holds
8-bit bytes; a stream is read one chunk at a time, so memory stays bounded
whatever its length.
"""

from __future__ import annotations

import contextlib
import email.message
from collections.abc import AsyncIterable, AsyncIterator
from typing import TypeAlias

import attrs

__all__ = ["Mail", "MailBody", "OneShotStream", "close_early", "prepare_mail"]

#: What ``mail=`` accepts.
Mail: TypeAlias = (
    bytes
    | bytearray
    | memoryview
    | email.message.Message
    | AsyncIterable[bytes | bytearray | memoryview]
)


@attrs.frozen
class MailBody:
    """A message ready to be sent: either all of it, or a stream of chunks."""

    #: The whole message, when known in advance.
    data: bytes | None = None
    #: The chunks, for a streamed message.
    chunks: AsyncIterable[bytes | bytearray | memoryview] | None = None


def prepare_mail(mail: Mail) -> MailBody:
    """Classify *mail*; raises :class:`TypeError` for anything else (before any I/O)."""
    if isinstance(mail, bytes):
        return MailBody(data=mail)
    if isinstance(mail, bytearray | memoryview):
        # A private copy: the caller may reuse its buffer while we send.
        return MailBody(data=bytes(memoryview(mail).cast("B")))
    if isinstance(mail, email.message.Message):
        policy = mail.policy.clone(linesep="\r\n")
        return MailBody(data=mail.as_bytes(policy=policy))
    if isinstance(mail, str):
        raise TypeError("mail must be bytes, not str: encode the message first")
    if isinstance(mail, AsyncIterable):
        return MailBody(chunks=mail)
    raise TypeError(
        "mail must be bytes, an email.message.EmailMessage, or an async iterable of "
        f"bytes (such as a trio.MemoryReceiveChannel), not {type(mail).__name__}"
    )


async def close_early(iterator: AsyncIterator[object]) -> None:
    """Let a caller's async iterator clean up after we stopped reading it early:
    an async generator runs its ``finally`` blocks, a memory channel's
    producers learn that nobody reads any more. Its own errors are ignored."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


class OneShotStream:
    """Wraps a message stream and notes whether anything began to read it: a
    stream can be sent once, so a message is sent again only if it was not."""

    __slots__ = ("_chunks", "started")

    def __init__(self, chunks: AsyncIterable[bytes | bytearray | memoryview]) -> None:
        self._chunks = chunks
        self.started = False

    def __aiter__(self) -> AsyncIterator[bytes | bytearray | memoryview]:
        self.started = True
        return aiter(self._chunks)
