"""Server replies: the value types and the incremental parser.

Theory of operation
-------------------
A reply (RFC 5321 §4.2) is one or more lines ``CODE SEP TEXT CRLF`` where every
line carries the same three-digit code, and every line but the last has ``-`` as
separator. A bare ``354`` (no separator, no text) is legal (§4.2, "Reply-line").

:class:`ReplyParser` is sans-io: :meth:`ReplyParser.feed` takes whatever bytes the
transport delivered (a reply may be split at any byte, and several replies may
arrive in one read under PIPELINING, RFC 2920), and :meth:`ReplyParser.next_reply`
hands out complete replies one at a time. It scans each byte once (the search
resumes where the last one stopped), so a reply dripped one byte at a time
costs linear, not quadratic, time.

Memory is bounded: a line longer than :data:`MAX_REPLY_LINE_LENGTH`, a reply of
more than :data:`MAX_REPLY_LINES` lines or :data:`MAX_REPLY_SIZE` bytes raises
:class:`~trio_sendmail.SMTPProtocolError` as soon as the bound is crossed,
without waiting for the end of the line. So do a malformed code, mixed codes in
one reply, text that is not UTF-8, and control characters (NUL included) in the
text.

The enhanced status code of RFC 2034 / RFC 3463 (``5.1.1``) is split off the
text of each line when its class matches the reply code's first digit.

Servers repeat themselves (``250 2.1.5 Ok`` to every RCPT): a small per-parser
cache maps a short single-line reply, byte for byte, to its :class:`Reply`
(immutable, so it can be handed out again). A line is cached only after it
passed every check, so the cache changes nothing but the cost.
"""

from __future__ import annotations

import re

import attrs

from ._errors import SMTPProtocolError

__all__ = [
    "MAX_REPLY_LINES",
    "MAX_REPLY_LINE_LENGTH",
    "MAX_REPLY_SIZE",
    "EnhancedStatus",
    "Reply",
    "ReplyParser",
]

#: Longest reply line accepted, CRLF included. RFC 5321 §4.5.3.1.5 sets 512
#: octets; real servers exceed it with long diagnostics, so we allow 8 times that.
MAX_REPLY_LINE_LENGTH = 4096
#: Most lines accepted in one multi-line reply (an EHLO reply has a few dozen).
MAX_REPLY_LINES = 256
#: Most bytes accepted in one reply, all lines together.
MAX_REPLY_SIZE = 64 * 1024

# RFC 3463 §3 and its IANA registry: meaning of "subject.detail".
_MEANINGS: dict[tuple[int, int], str] = {
    (0, 0): "Other undefined status",
    (1, 0): "Other address status",
    (1, 1): "Bad destination mailbox address",
    (1, 2): "Bad destination system address",
    (1, 3): "Bad destination mailbox address syntax",
    (1, 4): "Destination mailbox address ambiguous",
    (1, 5): "Destination address valid",
    (1, 6): "Destination mailbox has moved, no forwarding address",
    (1, 7): "Bad sender's mailbox address syntax",
    (1, 8): "Bad sender's system address",
    (1, 10): "Recipient address has null MX",
    (2, 0): "Other or undefined mailbox status",
    (2, 1): "Mailbox disabled, not accepting messages",
    (2, 2): "Mailbox full",
    (2, 3): "Message length exceeds administrative limit",
    (2, 4): "Mailing list expansion problem",
    (3, 0): "Other or undefined mail system status",
    (3, 1): "Mail system full",
    (3, 2): "System not accepting network messages",
    (3, 3): "System not capable of selected features",
    (3, 4): "Message too big for system",
    (3, 5): "System incorrectly configured",
    (4, 0): "Other or undefined network or routing status",
    (4, 1): "No answer from host",
    (4, 2): "Bad connection",
    (4, 3): "Directory server failure",
    (4, 4): "Unable to route",
    (4, 5): "Mail system congestion",
    (4, 6): "Routing loop detected",
    (4, 7): "Delivery time expired",
    (5, 0): "Other or undefined protocol status",
    (5, 1): "Invalid command",
    (5, 2): "Syntax error",
    (5, 3): "Too many recipients",
    (5, 4): "Invalid command arguments",
    (5, 5): "Wrong protocol version",
    (5, 6): "Authentication exchange line is too long",
    (6, 0): "Other or undefined media error",
    (6, 1): "Media not supported",
    (6, 2): "Conversion required and prohibited",
    (6, 3): "Conversion required but not supported",
    (6, 4): "Conversion with loss performed",
    (6, 5): "Conversion failed",
    (6, 6): "Message content not available",
    (6, 7): "Non-ASCII addresses not permitted for that sender/recipient",
    (6, 8): "UTF-8 string reply is required, but not permitted by the SMTP client",
    (6, 9): "UTF-8 header message cannot be transferred to one or more recipients",
    (7, 0): "Other or undefined security status",
    (7, 1): "Delivery not authorized, message refused",
    (7, 2): "Mailing list expansion prohibited",
    (7, 3): "Security conversion required but not possible",
    (7, 4): "Security features not supported",
    (7, 5): "Cryptographic failure",
    (7, 6): "Cryptographic algorithm not supported",
    (7, 7): "Message integrity failure",
    (7, 8): "Authentication credentials invalid",
    (7, 9): "Authentication mechanism is too weak",
    (7, 10): "Encryption needed",
    (7, 11): "Encryption required for requested authentication mechanism",
    (7, 12): "A password transition is needed",
    (7, 13): "User account disabled",
    (7, 14): "Trust relationship required",
    (7, 15): "Priority level is too low",
    (7, 16): "Message is too big for the specified priority",
    (7, 17): "Mailbox owner has changed",
    (7, 18): "Domain owner has changed",
    (7, 19): "RRVS test cannot be completed",
    (7, 20): "No passing DKIM signature found",
    (7, 21): "No acceptable DKIM signature found",
    (7, 22): "No valid author-matched DKIM signature found",
    (7, 23): "SPF validation failed",
    (7, 24): "SPF validation error",
    (7, 25): "Reverse DNS validation failed",
    (7, 26): "Multiple authentication checks failed",
    (7, 27): "Sender address has null MX",
    (7, 28): "Mail flood detected",
    (7, 29): "ARC validation failure",
    (7, 30): "REQUIRETLS support required",
}

_CLASS_MEANING = {2: "Success", 4: "Persistent transient failure", 5: "Permanent failure"}

_ENHANCED = re.compile(r"([245])\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})(?: +|$)")
# Text may hold HT and any printable character (UTF-8 allowed), but no other control.
_BAD_TEXT = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@attrs.frozen
class EnhancedStatus:
    """An RFC 3463 enhanced mail system status code, ``class.subject.detail``."""

    #: 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    klass: int
    subject: int
    detail: int

    @classmethod
    def parse(cls, text: str) -> EnhancedStatus:
        """Parse ``"5.1.1"``; raises :class:`ValueError` when malformed."""
        match = _ENHANCED.fullmatch(text)
        if match is None or match.end(3) != len(text):
            raise ValueError(f"not an enhanced status code: {text!r}")
        return cls(int(match[1]), int(match[2]), int(match[3]))

    @property
    def meaning(self) -> str | None:
        """The name RFC 3463 (or its IANA registry) gives ``subject.detail``, if any."""
        return _MEANINGS.get((self.subject, self.detail))

    @property
    def class_meaning(self) -> str:
        """The name of the class: success, transient or permanent failure."""
        return _CLASS_MEANING[self.klass]

    def __str__(self) -> str:
        return f"{self.klass}.{self.subject}.{self.detail}"


@attrs.frozen
class Reply:
    """One complete server reply.

    Attributes:
        code: the three-digit reply code.
        lines: the text of each line, with the code, the separator and the enhanced
            status code removed. A bare ``354`` gives one empty line.
        enhanced_status: the RFC 3463 code, when the server sent one.
    """

    code: int
    lines: tuple[str, ...] = ("",)
    enhanced_status: EnhancedStatus | None = None
    #: A 2xx reply: the command was completed. (Set once, when the reply is
    #: made: it is read several times for every message.)
    is_positive: bool = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "is_positive", 200 <= self.code < 300)

    @property
    def text(self) -> str:
        """All the lines, joined with newlines."""
        return "\n".join(self.lines)

    @property
    def is_intermediate(self) -> bool:
        """A 3xx reply: send more (the body after 354, or a SASL response after 334)."""
        return 300 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        """A 4xx reply: a temporary failure."""
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        """A 5xx reply: a permanent failure."""
        return 500 <= self.code < 600

    def __str__(self) -> str:
        status = f" {self.enhanced_status}" if self.enhanced_status is not None else ""
        return f"{self.code}{status} {' / '.join(self.lines)}".rstrip()


class ReplyParser:
    """Incremental, bounded parser of a stream of server replies.

    Args:
        max_line_length: the longest line accepted, CRLF included.
        max_lines: the most lines in one reply.
        max_size: the most bytes in one reply.
    """

    def __init__(
        self,
        *,
        max_line_length: int = MAX_REPLY_LINE_LENGTH,
        max_lines: int = MAX_REPLY_LINES,
        max_size: int = MAX_REPLY_SIZE,
        buffer: bytearray | None = None,
    ) -> None:
        self._buf = buffer if buffer is not None else bytearray()
        del self._buf[:]
        self._scanned = 0  # bytes of _buf known to hold no LF
        self._max_line = max_line_length
        self._max_lines = max_lines
        self._max_size = max_size
        self._code = -1
        self._lines: list[str] = []
        self._status: EnhancedStatus | None = None
        self._size = 0
        self._cache: dict[bytes, Reply] = {}

    @property
    def buffered(self) -> int:
        """How many received bytes are not yet part of a returned reply."""
        return len(self._buf)

    def peek(self, size: int) -> bytes:
        """The first *size* buffered bytes, left in place."""
        return bytes(self._buf[:size])

    @property
    def in_reply(self) -> bool:
        """True when part of a reply has been received."""
        return bool(self._buf) or bool(self._lines)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes. Raises SMTPProtocolError when a line grows too long."""
        self._buf += data
        # The buffer always starts at the beginning of a line, and its first
        # ``_scanned`` bytes hold no LF: no need to search them again.
        if len(self._buf) >= self._max_line and (
            self._buf.find(b"\n", self._scanned, self._max_line) < 0
        ):
            raise SMTPProtocolError(
                f"reply line longer than {self._max_line} bytes (RFC 5321 §4.5.3.1.5)"
            )

    def next_reply(self) -> Reply | None:
        """Return the next complete reply, or ``None`` until more bytes arrive.

        Raises:
            SMTPProtocolError: the bytes are not a well-formed reply.
        """
        buf = self._buf
        while True:
            end = buf.find(b"\n", self._scanned)
            if end < 0:
                if len(buf) >= self._max_line:
                    # feed() only looks at the first line; a later one may be too long.
                    raise SMTPProtocolError(
                        f"reply line longer than {self._max_line} bytes (RFC 5321 §4.5.3.1.5)"
                    )
                self._scanned = len(buf)
                return None
            line_len = end + 1
            if line_len > self._max_line:
                raise SMTPProtocolError(
                    f"reply line longer than {self._max_line} bytes (RFC 5321 §4.5.3.1.5)"
                )
            stop = end - 1 if end and buf[end - 1] == 0x0D else end
            line = bytes(buf[:stop])
            del buf[:line_len]
            self._scanned = 0
            if not self._lines:
                cached = self._cache.get(line)
                if cached is not None:
                    return cached
            reply = self._line(line, line_len)
            if reply is not None:
                if len(reply.lines) == 1 and stop <= _CACHED_LINE_LENGTH:
                    if len(self._cache) >= _CACHE_SIZE:
                        self._cache.clear()
                    self._cache[line] = reply
                return reply

    def _line(self, line: bytes, size: int) -> Reply | None:
        if len(line) < 3 or not line[:3].isdigit():
            raise SMTPProtocolError(f"malformed reply line: {_show(line)}")
        code = int(line[:3])
        if not (2 <= line[0] - 0x30 <= 5 and line[1] - 0x30 <= 5):
            raise SMTPProtocolError(f"reply code out of range: {_show(line)}")
        if self._lines and code != self._code:
            raise SMTPProtocolError(f"mixed codes in one reply: {self._code} then {_show(line)}")
        sep = line[3:4]
        if sep not in (b" ", b"-", b""):
            raise SMTPProtocolError(f"malformed reply separator: {_show(line)}")
        try:
            text = line[4:].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SMTPProtocolError(f"reply text is not UTF-8: {_show(line)}") from exc
        if _BAD_TEXT.search(text):
            raise SMTPProtocolError(f"control character in reply text: {_show(line)}")
        self._size += size
        if len(self._lines) >= self._max_lines or self._size > self._max_size:
            raise SMTPProtocolError(
                f"reply longer than {self._max_lines} lines or {self._max_size} bytes"
            )
        match = _ENHANCED.match(text)
        if match is not None and int(match[1]) == code // 100:
            if self._status is None:
                self._status = EnhancedStatus(int(match[1]), int(match[2]), int(match[3]))
            text = text[match.end() :]
        self._code = code
        self._lines.append(text)
        if sep == b"-":
            return None
        reply = Reply(code, tuple(self._lines), self._status)
        self._lines = []
        self._status = None
        self._size = 0
        return reply


#: Single-line replies up to this long (without CRLF) are cached, ...
_CACHED_LINE_LENGTH = 128
#: ... this many per parser (the cache starts over when full).
_CACHE_SIZE = 32


def _show(line: bytes, limit: int = 80) -> str:
    """A short, safe rendering of a bad line for an error message."""
    shown = repr(line[:limit])
    return shown + ("…" if len(line) > limit else "")
