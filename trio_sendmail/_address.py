"""Mailboxes and paths as SMTP puts them on the wire (domains are in ``_domain.py``).

Theory of operation
-------------------

Everything here is validated once, when a value is built, so that the command encoder can
write ``MAIL FROM:<…>`` / ``RCPT TO:<…>`` / ``EHLO …`` without looking again.  Every value
keeps its *wire form*: ``str(value)`` is exactly the text that goes into the command.

* Domains (RFC 5321 §4.1.2 ``Domain``, §4.1.3 address literals), including their size limits,
  are in ``_domain.py``; a mailbox's domain is a :class:`~trio_sendmail._domain.Domain`.
* Local parts (RFC 5321 §4.1.2): a ``Dot-string`` of ``atext`` atoms or a ``Quoted-string``
  of ``qtextSMTP`` and ``quoted-pairSMTP``.  The quotes and backslashes are *kept*: the local
  part is stored as it appears on the wire.  RFC 6531 adds non-ASCII characters to ``atext``
  and ``qtextSMTP``; they set ``needs_smtputf8``.
* Paths (RFC 5321 §4.1.2 ``Path``, §4.1.1.2, §4.1.1.3): ``<mailbox>``; the reverse path may be
  the null path ``<>``, the forward path may be the bare ``<Postmaster>``.  A source route
  (``<@a,@b:user@c>``) is parsed and dropped, as RFC 5321 §4.1.1.3 and Appendix C ask.
* Size limits (RFC 5321 §4.5.3.1): local part 64 octets, path 256 octets including the angle
  brackets.  Octets are counted in UTF-8.
* Injection: CR, LF, NUL and every other control character (and, outside ASCII, every
  Unicode control, format, surrogate, private-use, unassigned or separator character) is
  refused up front, whatever the context, so nothing built here can smuggle a second command.

Every malformed input raises :class:`~trio_sendmail.SMTPAddressError`; a value of the wrong
Python type raises :class:`TypeError`.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable
from email.headerregistry import Address
from typing import ClassVar, NoReturn, TypeVar

import attrs

from ._domain import (
    _NON_ASCII,
    MAX_DOMAIN_OCTETS,
    MAX_LABEL_OCTETS,
    Domain,
    DomainKind,
    _check_chars,
    _check_type,
    _fail,
    _octets,
    _show,
    domain,
)
from ._errors import SMTPAddressError

__all__ = [
    "MAX_DOMAIN_OCTETS",
    "MAX_LABEL_OCTETS",
    "MAX_LOCAL_PART_OCTETS",
    "MAX_PATH_OCTETS",
    "Domain",
    "DomainKind",
    "ForwardPath",
    "Mailbox",
    "ReversePath",
    "domain",
    "forward_path",
    "reverse_path",
]

#: RFC 5321 §4.5.3.1.1: maximum length of a local part, in octets.
MAX_LOCAL_PART_OCTETS = 64
#: RFC 5321 §4.5.3.1.3: maximum length of a path, angle brackets included, in octets.
MAX_PATH_OCTETS = 256

_ATEXT = rf"A-Za-z0-9!#$%&'*+\-/=?^_`{{|}}~{_NON_ASCII}"
_DOT_STRING = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
_ATEXT_CHAR = re.compile(rf"[{_ATEXT}]")
# qtextSMTP = %d32-33 / %d35-91 / %d93-126 ; quoted-pairSMTP = %d92 %d32-126
_QUOTED_STRING = re.compile(rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_NON_ASCII}]|\\[\x20-\x7e])*"')
# Where a quoted string ends, leniently (the strict check comes afterwards).
_QUOTED_PREFIX = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_UNTIL_ROUTE_SEPARATOR = re.compile(r"[^,:]*")


# --------------------------------------------------------------------------------------------
# Mailboxes


def _explain_dot_string(text: str) -> NoReturn:
    if not text:
        _fail("empty local part")
    if text.startswith("."):
        _fail(f"local part {_show(text)} starts with a dot (quote it to allow that)")
    if text.endswith("."):
        _fail(f"local part {_show(text)} ends with a dot (quote it to allow that)")
    if ".." in text:
        _fail(f"local part {_show(text)} has two consecutive dots (quote it to allow that)")
    # Control and unwanted non-ASCII characters were refused earlier, so *bad* is printable
    # ASCII, which a Quoted-string can carry (with a backslash for '"' and '\\').
    bad = next(c for c in text if c != "." and _ATEXT_CHAR.fullmatch(c) is None)
    _fail(
        f"local part {_show(text)} contains {bad!r}, which is only allowed in a quoted "
        'string (e.g. "john doe"@example.com)'
    )


def _explain_quoted_string(text: str) -> NoReturn:
    index = 1
    while index < len(text):
        char = text[index]
        if char == "\\":
            if index + 1 >= len(text):
                break
            if not " " <= text[index + 1] <= "~":
                _fail(
                    f"local part {_show(text)}: a backslash may only escape a printable "
                    f"ASCII character, not {text[index + 1]!r}"
                )
            index += 2
            continue
        if char == '"':
            # A quote that closed the text would have matched _QUOTED_STRING: _check_chars()
            # let through no character that a Quoted-string cannot hold.
            assert index != len(text) - 1
            _fail(f"local part {_show(text)} has text after its closing quote")
        index += 1
    _fail(f"local part {_show(text)} has no closing quote")


def _check_local_part(text: str) -> None:
    _check_chars(text, "local part")
    if text.startswith('"'):
        if _QUOTED_STRING.fullmatch(text) is None:
            _explain_quoted_string(text)
    elif _DOT_STRING.fullmatch(text) is None:
        _explain_dot_string(text)
    if _octets(text) > MAX_LOCAL_PART_OCTETS:
        _fail(f"local part {_show(text)} is longer than {MAX_LOCAL_PART_OCTETS} octets")


def _validate_local_part(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    _check_local_part(_check_type(value, "local part"))


def _coerce_domain(value: Domain | str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> Domain:
    return domain(value)


def _quote_local_part(username: str) -> str:
    """The wire form of a raw user name: itself if it is a Dot-string, else quoted."""
    if _DOT_STRING.fullmatch(username) is not None:
        return username
    escaped = username.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


@attrs.frozen
class Mailbox:
    """A mailbox ``local-part@domain`` (RFC 5321 §4.1.2, extended by RFC 6531).

    The local part is kept in its wire form, exactly as given: a Dot-string
    (``john.doe``) or a Quoted-string *with* its quotes and backslashes
    (``"john doe"``, ``"a\\"b"``).  Equality is exact: ``"john"@x`` and ``john@x``
    are different values, and local parts are case-sensitive (RFC 5321 §2.4).

    Attributes:
        local_part: the local part in wire form, at most 64 octets of UTF-8.
        domain: the domain; a str or IP address given to the constructor is converted
            with :func:`domain`.

    Raises:
        SMTPAddressError: the local part or the domain is malformed or too long.
        TypeError: an argument has the wrong type.
    """

    local_part: str = attrs.field(validator=_validate_local_part)
    domain: Domain = attrs.field(converter=_coerce_domain)

    @classmethod
    def parse(cls, text: str) -> Mailbox:
        """Parse ``local-part@domain``.

        Args:
            text: the mailbox, e.g. ``"a.b@example.com"``, ``'"john doe"@example.com'`` or
                ``"user@[192.0.2.1]"``, without angle brackets.

        Returns:
            The mailbox.

        Raises:
            SMTPAddressError: *text* is malformed or too long, or it contains a control
                character.
            TypeError: *text* is not a str.
        """
        _check_chars(_check_type(text, "mailbox"), "mailbox")
        if text.startswith("<"):
            _fail(
                f"mailbox {_show(text)} must not have angle brackets "
                "(use ReversePath.parse or ForwardPath.parse for paths)"
            )
        if text.startswith('"'):
            match = _QUOTED_PREFIX.match(text)
            if match is None:
                _fail(f"mailbox {_show(text)}: the quoted local part has no closing quote")
            local, rest = text[: match.end()], text[match.end() :]
            if not rest.startswith("@"):
                _fail(f"mailbox {_show(text)}: the quoted local part must be followed by '@'")
            domain_text = rest[1:]
        else:
            local, at, domain_text = text.partition("@")
            if not at:
                _fail(f"mailbox {_show(text)} has no '@domain'")
        return cls(local, Domain.parse(domain_text))

    @property
    def needs_smtputf8(self) -> bool:
        """Whether the mailbox has non-ASCII characters, and so needs SMTPUTF8 (RFC 6531)."""
        return not self.local_part.isascii() or self.domain.needs_smtputf8

    def __str__(self) -> str:
        return f"{self.local_part}@{self.domain}"


# --------------------------------------------------------------------------------------------
# Paths


def _unwrap_path(text: str, what: str) -> tuple[str, bool]:
    """Strip the angle brackets and any source route from a path.

    Returns:
        The mailbox text (possibly empty or ``Postmaster``), and whether a source route
        was dropped.
    """
    _check_chars(_check_type(text, what), what)
    if text.startswith("<"):
        if not text.endswith(">") or len(text) < 2:
            _fail(f"{what} {_show(text)} starts with '<' but does not end with '>'")
        inner = text[1:-1]
    elif text.endswith(">"):
        if "<" in text:
            _fail(
                f"{what} {_show(text)} looks like a display name and an address; pass only "
                f"the address (e.g. {_show(text[text.rfind('<') :])}), or pass an "
                "email.headerregistry.Address"
            )
        _fail(f"{what} {_show(text)} ends with '>' but does not start with '<'")
    else:
        inner = text
    if not inner.startswith("@"):
        return inner, False
    # RFC 5321 §4.1.2: A-d-l = At-domain *( "," At-domain ) ; At-domain = "@" Domain
    index = 0
    while True:
        start = index + 1
        if inner.startswith("[", start):
            end = inner.find("]", start) + 1
            if end == 0:
                _fail(f"{what} {_show(text)}: unterminated address literal in the source route")
        else:
            match = _UNTIL_ROUTE_SEPARATOR.match(inner, start)
            assert match is not None
            end = match.end()
        try:
            Domain.parse(inner[start:end])
        except SMTPAddressError as exc:
            raise SMTPAddressError(f"{what} {_show(text)}: bad source route: {exc}") from exc
        separator = inner[end : end + 1]
        if separator == ":":
            mailbox = inner[end + 1 :]
            if not mailbox:
                _fail(f"{what} {_show(text)}: no mailbox after the source route")
            return mailbox, True
        if separator != "," or not inner.startswith("@", end + 1):
            _fail(
                f"{what} {_show(text)}: a source route is '@domain,@domain:' followed by the "
                "mailbox"
            )
        index = end + 1


def _check_path_length(mailbox: Mailbox, what: str) -> None:
    octets = _octets(str(mailbox)) + 2
    if octets > MAX_PATH_OCTETS:
        _fail(
            f"{what} to {_show(str(mailbox))} is {octets} octets long with its angle brackets; "
            f"the limit is {MAX_PATH_OCTETS}"
        )


def _validate_path_mailbox(
    _instance: object, _attribute: attrs.Attribute[Mailbox | None], value: Mailbox | None
) -> None:
    if value is None:
        return
    if not isinstance(value, Mailbox):
        raise TypeError(
            f"mailbox must be a Mailbox or None, not {type(value).__name__}: {value!r}"
        )
    _check_path_length(value, "path")


def _mailbox_from_address(addr: Address, what: str) -> Mailbox | None:
    if not isinstance(addr, Address):
        raise TypeError(
            f"expected an email.headerregistry.Address, not {type(addr).__name__}: {addr!r}"
        )
    username, domain_text = addr.username, addr.domain
    if not domain_text:
        if not username:
            return None
        _fail(f"{what} {_show(addr.addr_spec)} has no domain")
    if not username:
        _fail(f"{what} {_show(addr.addr_spec)} has an empty user name")
    _check_chars(username, "user name")
    return Mailbox(_quote_local_part(username), Domain.parse(domain_text))


class _PathBase:
    """What :class:`ReversePath` and :class:`ForwardPath` share: the wire form,
    made once (a bulk run writes the same paths over and over), with
    ``_NULL_TEXT`` for the path without a mailbox."""

    __slots__ = ()
    _NULL_TEXT: ClassVar[str]
    mailbox: Mailbox | None
    _text: str

    _utf8: bool

    def __attrs_post_init__(self) -> None:
        mailbox = self.mailbox
        text = self._NULL_TEXT if mailbox is None else f"<{mailbox}>"
        object.__setattr__(self, "_text", text)
        object.__setattr__(self, "_utf8", mailbox is not None and mailbox.needs_smtputf8)

    @property
    def needs_smtputf8(self) -> bool:
        """Whether the path has non-ASCII characters, and so needs SMTPUTF8 (RFC 6531)."""
        return self._utf8

    def __str__(self) -> str:
        return self._text


@attrs.frozen(cache_hash=True)  # hashed for every message (its SendResult)
class ReversePath(_PathBase):
    """The reverse path of ``MAIL FROM:`` (RFC 5321 §4.1.1.2): a mailbox, or the null path.

    Attributes:
        mailbox: the sender's mailbox, or ``None`` for the null path ``<>`` (used for
            bounces and other messages that must not be answered).

    Raises:
        SMTPAddressError: the path would be longer than 256 octets.
        TypeError: *mailbox* is neither a :class:`Mailbox` nor ``None``.
    """

    mailbox: Mailbox | None = attrs.field(default=None, validator=_validate_path_mailbox)
    _text: str = attrs.field(init=False, repr=False, eq=False)
    _utf8: bool = attrs.field(init=False, repr=False, eq=False)
    _NULL_TEXT: ClassVar[str] = "<>"

    @classmethod
    def null(cls) -> ReversePath:
        """The null reverse path ``<>``."""
        return cls(None)

    @classmethod
    def parse(cls, text: str) -> ReversePath:
        """Parse a reverse path.

        Args:
            text: ``"user@example.com"`` or ``"<user@example.com>"``; ``""`` or ``"<>"`` for
                the null path.  A source route (``"<@a.example:user@b.example>"``) is
                accepted and dropped.  Display names (``"Joe <joe@example.com>"``) are
                refused.

        Returns:
            The reverse path.

        Raises:
            SMTPAddressError: *text* is malformed or longer than 256 octets, or it contains
                a control character.
            TypeError: *text* is not a str.
        """
        if text in ("", "<>"):
            return cls(None)
        inner, _ = _unwrap_path(text, "reverse path")
        return cls(Mailbox.parse(inner))

    @classmethod
    def from_address(cls, addr: Address) -> ReversePath:
        """Build a reverse path from an :class:`email.headerregistry.Address`.

        The display name is ignored; a user name that is not a valid Dot-string is quoted.

        Args:
            addr: the address; an empty one (``Address()``) gives the null path.

        Returns:
            The reverse path.

        Raises:
            SMTPAddressError: the address has a user name but no domain, or is otherwise
                invalid for SMTP.
            TypeError: *addr* is not an :class:`~email.headerregistry.Address`.
        """
        return cls(_mailbox_from_address(addr, "reverse path"))

    @property
    def is_null(self) -> bool:
        """Whether this is the null path ``<>``."""
        return self.mailbox is None


@attrs.frozen(cache_hash=True)  # hashed for every message (its SendResult)
class ForwardPath(_PathBase):
    """The forward path of ``RCPT TO:`` (RFC 5321 §4.1.1.3): a mailbox, or ``<Postmaster>``.

    Attributes:
        mailbox: the recipient's mailbox, or ``None`` for the bare ``<Postmaster>`` of the
            server itself (no domain), which every SMTP server must accept.
        unqualified_local_part: for a path made by :meth:`unqualified` (``<root>``), its
            local part (then :attr:`mailbox` is ``None``); else ``None``.

    Raises:
        SMTPAddressError: the path would be longer than 256 octets.
        TypeError: *mailbox* is neither a :class:`Mailbox` nor ``None``.
    """

    mailbox: Mailbox | None = attrs.field(validator=_validate_path_mailbox)
    #: A local part sent without a domain (``<root>``), only from :meth:`unqualified`.
    unqualified_local_part: str | None = attrs.field(default=None, kw_only=True)
    _text: str = attrs.field(init=False, repr=False, eq=False)
    _utf8: bool = attrs.field(init=False, repr=False, eq=False)
    _NULL_TEXT: ClassVar[str] = "<Postmaster>"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        local = self.unqualified_local_part
        if local is not None:
            object.__setattr__(self, "_text", f"<{local}>")
            object.__setattr__(self, "_utf8", self._utf8 or not local.isascii())

    @classmethod
    def postmaster(cls) -> ForwardPath:
        """The bare ``<Postmaster>`` forward path."""
        return cls(None)

    @classmethod
    def unqualified(cls, local_part: str) -> ForwardPath:
        """A forward path without a domain, such as ``<root>``, for a submission server
        that completes it with its own domain (RFC 6409 §6.2), as ``sendmail root`` does.

        RFC 5321 §4.1.1.3 allows only ``<Postmaster>`` without a domain in SMTP relay:
        use this only towards a submission server (or a local MTA) that accepts it.

        Args:
            local_part: a Dot-string or Quoted-string local part, e.g. ``"root"``.

        Raises:
            SMTPAddressError: *local_part* is malformed or too long.
            TypeError: *local_part* is not a str.
        """
        _check_local_part(_check_type(local_part, "local part"))
        if local_part.lower() == "postmaster":
            return cls(None)
        return cls(None, unqualified_local_part=local_part)

    @classmethod
    def parse(cls, text: str) -> ForwardPath:
        """Parse a forward path.

        Args:
            text: ``"user@example.com"`` or ``"<user@example.com>"``, or ``"Postmaster"`` /
                ``"<Postmaster>"`` in any case.  A source route is accepted and dropped.
                Display names and the empty path are refused.

        Returns:
            The forward path.

        Raises:
            SMTPAddressError: *text* is malformed, empty or longer than 256 octets, or it
                contains a control character.
            TypeError: *text* is not a str.
        """
        inner, routed = _unwrap_path(text, "forward path")
        if not inner:
            _fail(f"forward path {_show(text)} is empty (the null path is only for senders)")
        if not routed and inner.lower() == "postmaster":
            return cls(None)
        return cls(Mailbox.parse(inner))

    @classmethod
    def from_address(cls, addr: Address) -> ForwardPath:
        """Build a forward path from an :class:`email.headerregistry.Address`.

        The display name is ignored; a user name that is not a valid Dot-string is quoted.
        ``Address(username="postmaster")`` (no domain) gives ``<Postmaster>``.

        Args:
            addr: the address.

        Returns:
            The forward path.

        Raises:
            SMTPAddressError: the address is empty, has no domain, or is otherwise invalid
                for SMTP.
            TypeError: *addr* is not an :class:`~email.headerregistry.Address`.
        """
        if isinstance(addr, Address) and not addr.domain and addr.username.lower() == "postmaster":
            return cls(None)
        mailbox = _mailbox_from_address(addr, "forward path")
        if mailbox is None:
            _fail("a forward path cannot be empty (the null path is only for senders)")
        return cls(mailbox)

    @property
    def is_postmaster(self) -> bool:
        """Whether this is the bare ``<Postmaster>`` path (without a domain)."""
        return self.mailbox is None and self.unqualified_local_part is None


# Bulk senders pass the same address strings over and over; the values are
# immutable, so parsing each distinct string once is safe (errors are not cached).
@functools.lru_cache(maxsize=4096)
def _parse_reverse_path(text: str) -> ReversePath:
    return ReversePath.parse(text)


@functools.lru_cache(maxsize=16384)
def _parse_forward_path(text: str) -> ForwardPath:
    return ForwardPath.parse(text)


_Path = TypeVar("_Path", ReversePath, ForwardPath)


def _coerce_path(value: object, cls: type[_Path], parse: Callable[[str], _Path]) -> _Path:
    """The coercion of :func:`reverse_path` and :func:`forward_path` (*parse* is the cached
    parser of *cls*)."""
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        return parse(value)
    if isinstance(value, Mailbox):
        return cls(value)
    if isinstance(value, Address):
        return cls.from_address(value)
    raise TypeError(
        f"expected a {cls.__name__}, a Mailbox, a str or an email.headerregistry.Address, "
        f"not {type(value).__name__}: {value!r}"
    )


def reverse_path(value: ReversePath | Mailbox | str | Address) -> ReversePath:
    """Coerce *value* to a :class:`ReversePath`.

    Args:
        value: a :class:`ReversePath` (returned as is), a :class:`Mailbox`, a str (see
            :meth:`ReversePath.parse`; ``""`` is the null path) or an
            :class:`email.headerregistry.Address` (see :meth:`ReversePath.from_address`).

    Returns:
        The reverse path.

    Raises:
        SMTPAddressError: *value* is not a valid reverse path.
        TypeError: *value* has another type (``bytes``, ``None``, …).
    """
    return _coerce_path(value, ReversePath, _parse_reverse_path)


def forward_path(value: ForwardPath | Mailbox | str | Address) -> ForwardPath:
    """Coerce *value* to a :class:`ForwardPath`.

    Args:
        value: a :class:`ForwardPath` (returned as is), a :class:`Mailbox`, a str (see
            :meth:`ForwardPath.parse`) or an :class:`email.headerregistry.Address` (see
            :meth:`ForwardPath.from_address`).

    Returns:
        The forward path.

    Raises:
        SMTPAddressError: *value* is not a valid forward path.
        TypeError: *value* has another type (``bytes``, ``None``, …).
    """
    return _coerce_path(value, ForwardPath, _parse_forward_path)
