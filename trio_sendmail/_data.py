"""The DATA encoder: line-ending normalisation and dot-stuffing, across chunks.

Theory of operation
-------------------
Between ``354`` and the end of data, RFC 5321 §4.1.1.4 and §4.5.2 require that
every line ends in CRLF and that a line beginning with ``.`` gets one more
``.`` ("transparency"); the data ends with ``CRLF . CRLF``.

A message arrives as chunks cut anywhere: mid-line, between CR and LF, between
CR and a dot. :class:`DataEncoder` keeps two bits of state between chunks:

* a held-back trailing CR, because whether it is a bare CR or half of CRLF is
  known only once the next byte arrives;
* whether the bytes emitted so far end at a line start, so that a dot at the
  start of the next chunk is stuffed.

Bare CR and bare LF both become CRLF *before* stuffing. Every end-of-data
look-alike in the input (``\\n.\\n``, ``\\r.\\r\\n``, ``\\n.\\r\\n``, ``\\r\\n.\\r``,
with any split) therefore becomes ``CRLF .. CRLF`` on the wire: a server that
accepts bare line endings cannot be made to see an early end of data (the 2023
"SMTP smuggling" class).

The work per chunk is a handful of ``bytes`` methods over the whole chunk
(``translate`` and ``count`` to detect the common already-normalised case,
``replace`` otherwise), never a Python loop per line.
"""

from __future__ import annotations

__all__ = ["DataEncoder", "measure"]

_CR = 0x0D
_LF = 0x0A
_DOT = 0x2E


def _line_breaks(chunk: bytes) -> int:
    """How many CR and LF octets *chunk* holds (one pass, in C)."""
    return len(chunk) - len(chunk.translate(None, b"\r\n"))


def _normalize(chunk: bytes) -> bytes:
    """Turn bare CR and bare LF into CRLF (no CR may end *chunk*)."""
    # Every CR and every LF belongs to a CRLF exactly when there are twice as
    # many of them as CRLF pairs.
    if _line_breaks(chunk) == 2 * chunk.count(b"\r\n"):
        return chunk
    return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


class DataEncoder:
    """Encodes one message body for the DATA phase (or, with ``stuff=False``,
    for BDAT, RFC 3030 §2: line endings normalised, no dot-stuffing, no
    terminator).

    Feed every chunk to :meth:`encode`, send what it returns, then send what
    :meth:`finish` returns (the final line break, when the body lacks one, and
    ``.CRLF`` when stuffing). Call :meth:`reset` before the next message.
    """

    __slots__ = ("_at_line_start", "_pending_cr", "bytes_in", "bytes_out", "stuff")

    def __init__(self, *, stuff: bool = True) -> None:
        #: Dot-stuff and terminate (DATA), or only normalise (BDAT).
        self.stuff = stuff
        self._pending_cr = False
        self._at_line_start = True
        #: Bytes taken in since the last reset.
        self.bytes_in = 0
        #: Bytes handed out since the last reset, terminator included.
        self.bytes_out = 0

    def reset(self) -> None:
        """Forget the current message."""
        self._pending_cr = False
        self._at_line_start = True
        self.bytes_in = 0
        self.bytes_out = 0

    def encode(self, chunk: bytes | bytearray | memoryview, *, clean: bool = False) -> bytes:
        """Normalise and stuff one chunk; returns the bytes to send (maybe empty).

        *clean* says the chunk is known to hold no bare CR or LF (see
        :func:`measure`), so normalising it can be skipped.
        """
        data = bytes(chunk)
        if not data:
            return b""
        self.bytes_in += len(data)
        if self._pending_cr:
            data = b"\r" + data
        self._pending_cr = data[-1] == _CR
        if self._pending_cr:
            data = data[:-1]
            if not data:
                return b""
        if not clean:
            data = _normalize(data)
        if self.stuff:
            # Every LF is part of a CRLF now; a three-octet needle is found
            # faster, and a chunk without any dot (base64, say) needs no search
            # for one (a one-octet search runs at memchr speed).
            if b"." in data and b"\r\n." in data:
                data = data.replace(b"\r\n.", b"\r\n..")
            if self._at_line_start and data[0] == _DOT:
                data = b"." + data
        self._at_line_start = data[-1] == _LF
        self.bytes_out += len(data)
        return data

    def finish(self) -> bytes:
        """The bytes that end the data: a final CRLF if needed, then ``.CRLF``
        (only the CRLF when not stuffing)."""
        crlf = b"\r\n" if self._pending_cr or not self._at_line_start else b""
        tail = crlf + b".\r\n" if self.stuff else crlf
        self.bytes_out += len(tail)
        self._pending_cr = False
        self._at_line_start = True
        return tail


def measure(body: bytes) -> tuple[int, bool]:
    """The size of *body* once its line endings are CRLF and it ends with one,
    and whether *body* already has only CRLF line endings (then
    :meth:`DataEncoder.encode` may skip normalising it).

    The size is the figure RFC 1870 §4 asks for in ``SIZE=``: the message with
    CRLF line endings, without dot-stuffing and without the final ``.CRLF``. It
    is computed by counting, without building the normalised copy.
    """
    if not body:
        return 0, True
    # Each bare CR or LF grows by one octet: CR + LF count, minus the pairs.
    bare = _line_breaks(body) - 2 * body.count(b"\r\n")
    size = len(body) + bare
    if body[-1] not in (_CR, _LF):
        size += 2
    return size, not bare
