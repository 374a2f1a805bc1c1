"""ESMTP capabilities, as announced in the reply to EHLO (RFC 5321 §4.1.1.1).

The first line of a 250 reply to EHLO names the server; each following line is
``KEYWORD [PARAM…]`` (§4.1.1.1, "ehlo-line"). Keywords are case-insensitive and
are stored upper-case. Lines that do not follow the grammar are ignored rather
than fatal: a server that announces nonsense simply does not get the extension
used. The legacy ``AUTH=MECH…`` form (sent by old servers for old clients) is
merged into ``AUTH``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

import attrs

from ._reply import Reply

__all__ = ["Capabilities"]

_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


@attrs.frozen
class Capabilities(Mapping[str, tuple[str, ...]]):
    """The extensions a server offers: a read-only mapping keyword → parameters.

    ``"PIPELINING" in caps`` tests for an extension; ``caps["SIZE"]`` gives its
    parameters as a tuple of strings.
    """

    #: The domain the server gave on the first line of its EHLO reply.
    server_name: str = ""
    _extensions: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict, alias="extensions")

    @classmethod
    def from_reply(cls, reply: Reply) -> Capabilities:
        """Parse a 250 reply to EHLO."""
        name = reply.lines[0].split(" ", 1)[0] if reply.lines else ""
        extensions: dict[str, tuple[str, ...]] = {}
        for line in reply.lines[1:]:
            words = line.split()
            if not words:
                continue
            keyword, params = words[0], words[1:]
            if keyword[:5].upper() == "AUTH=":
                params = [keyword[5:], *params] if keyword[5:] else params
                keyword = "AUTH"
            if not _KEYWORD.fullmatch(keyword):
                continue
            keyword = keyword.upper()
            if keyword == "AUTH":
                merged = dict.fromkeys(extensions.get("AUTH", ()))
                merged.update(dict.fromkeys(p.upper() for p in params))
                extensions["AUTH"] = tuple(merged)
            else:
                extensions[keyword] = tuple(params)
        return cls(name, extensions)

    def __getitem__(self, keyword: str) -> tuple[str, ...]:
        return self._extensions[keyword.upper()]

    def __contains__(self, keyword: object) -> bool:
        return isinstance(keyword, str) and keyword.upper() in self._extensions

    def __iter__(self) -> Iterator[str]:
        return iter(self._extensions)

    def __len__(self) -> int:
        return len(self._extensions)

    @property
    def auth_mechanisms(self) -> frozenset[str]:
        """The SASL mechanisms offered with ``AUTH`` (RFC 4954), upper-case."""
        return frozenset(self._extensions.get("AUTH", ()))

    @property
    def size_limit(self) -> int | None:
        """The ``SIZE`` limit in octets (RFC 1870), or ``None`` when unknown or unlimited."""
        params = self._extensions.get("SIZE")
        if not params or not (params[0].isascii() and params[0].isdigit()):
            return None
        limit = int(params[0])
        return limit or None

    @property
    def starttls(self) -> bool:
        """``STARTTLS`` (RFC 3207) is offered."""
        return "STARTTLS" in self._extensions

    @property
    def pipelining(self) -> bool:
        """``PIPELINING`` (RFC 2920) is offered."""
        return "PIPELINING" in self._extensions

    @property
    def eightbitmime(self) -> bool:
        """``8BITMIME`` (RFC 6152) is offered."""
        return "8BITMIME" in self._extensions

    @property
    def smtputf8(self) -> bool:
        """``SMTPUTF8`` (RFC 6531) is offered."""
        return "SMTPUTF8" in self._extensions

    @property
    def enhancedstatuscodes(self) -> bool:
        """``ENHANCEDSTATUSCODES`` (RFC 2034) is offered."""
        return "ENHANCEDSTATUSCODES" in self._extensions

    @property
    def chunking(self) -> bool:
        """``CHUNKING`` (RFC 3030) is offered."""
        return "CHUNKING" in self._extensions

    @property
    def dsn(self) -> bool:
        """``DSN`` (RFC 3461) is offered."""
        return "DSN" in self._extensions
