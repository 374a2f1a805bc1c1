"""The buffered reader under a fake-server dialogue: CRLF lines, data pieces, counted octets."""

# Theory of operation
# -------------------
#
# SMTP is request/reply, so the dialogue reads with a plain pull-style reader, no background
# task. One buffer serves the three ways a client's bytes are framed:
# - command and SASL lines (RFC 5321 §4.5.3.1, RFC 4954 §4), with a length limit: an over-long
#   line is skipped up to and including its LF and reported as None, so memory stays bounded;
# - DATA content (RFC 5321 §4.5.2), handed on line by line, or in bounded pieces of a line too
#   long to buffer, never cutting between a CR and the LF that follows it;
# - BDAT chunks (RFC 3030 §2), an exact octet count.
#
# A line ends at LF only: whether it ended with CRLF is for the caller to judge (strictly).
# What is still buffered says whether the client sent more than it was allowed to before a
# reply (RFC 2920 §3.1), and is what STARTTLS discards (RFC 3207 §5).

from __future__ import annotations

from typing import Final

import trio

__all__ = ["ClientGone", "Reader"]

_RECEIVE_SIZE: Final = 65536
# A data line longer than this is handed on in pieces (bounded memory for the line reader).
_DATA_PIECE: Final = 65536


class ClientGone(Exception):
    """The client closed its side of the connection."""


class Reader:
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
            raise ClientGone
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
