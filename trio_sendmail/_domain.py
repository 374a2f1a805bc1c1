"""Domains as SMTP puts them on the wire: the EHLO name, and the part of a mailbox after ``@``.

Theory of operation
-------------------

As with the mailboxes and paths built on them (``_address.py``), everything here is validated
once, when a value is built, and every value keeps its *wire form*: ``str(value)`` is exactly
the text that goes into ``EHLO …`` or after the ``@`` of ``MAIL FROM:<…>`` / ``RCPT TO:<…>``.

* Domains (RFC 5321 §4.1.2 ``Domain``, §4.1.3 address literals): a dot-separated list of
  ``Let-dig [Ldh-str]`` labels, or a bracketed literal: ``[192.0.2.1]``,
  ``[IPv6:2001:db8::1]`` or the general ``[tag:content]`` form.  A bare IP address given by
  the caller becomes the matching literal.  RFC 6531 (SMTPUTF8) also allows U-labels, i.e.
  labels with non-ASCII characters; such a domain sets ``needs_smtputf8``.
* Size limits (RFC 5321 §4.5.3.1.2): a domain is at most 255 octets, each label at most 63
  octets (RFC 1035 §2.3.4).  Octets are counted in UTF-8.
* Injection: CR, LF, NUL and every other control character (and, outside ASCII, every
  Unicode control, format, surrogate, private-use, unassigned or separator character) is
  refused up front, whatever the context, so nothing built here can smuggle a second command.
  The check (``_check_chars()``) lives here; ``_address.py`` applies it to local parts and
  paths too.

Every malformed input raises :class:`~trio_sendmail.SMTPAddressError`; a value of the wrong
Python type raises :class:`TypeError`.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import unicodedata
from typing import NoReturn

import attrs

from ._errors import SMTPAddressError

__all__ = ["MAX_DOMAIN_OCTETS", "MAX_LABEL_OCTETS", "Domain", "DomainKind", "domain"]

#: RFC 5321 §4.5.3.1.2: maximum length of a domain, in octets.
MAX_DOMAIN_OCTETS = 255
#: RFC 1035 §2.3.4 (via RFC 5321 §4.5.3.1.2): maximum length of one label, in octets.
MAX_LABEL_OCTETS = 63

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Non-ASCII characters are screened by _check_chars() before any pattern runs, so the
# patterns may admit the whole non-ASCII range (RFC 6531 UTF8-non-ascii).
_NON_ASCII = "\x80-\U0010ffff"
_LABEL = re.compile(
    rf"[A-Za-z0-9{_NON_ASCII}](?:[A-Za-z0-9\-{_NON_ASCII}]*[A-Za-z0-9{_NON_ASCII}])?"
)
_LABEL_CHAR = re.compile(rf"[A-Za-z0-9\-{_NON_ASCII}]")
_IPV4 = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})")
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]+")
# RFC 5321 §4.1.3: Standardized-tag = Ldh-str ; dcontent = %d33-90 / %d94-126
_LDH_STR = re.compile(r"[A-Za-z0-9\-]*[A-Za-z0-9]")
_DCONTENT = re.compile(r"[\x21-\x5a\x5e-\x7e]+")
_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class DomainKind(enum.Enum):
    """What a :class:`Domain` holds (RFC 5321 §4.1.2, §4.1.3)."""

    #: A domain name, such as ``example.com`` or ``bücher.example``.
    NAME = "name"
    #: An IPv4 address literal, such as ``[192.0.2.1]``.
    IPV4 = "ipv4"
    #: An IPv6 address literal, such as ``[IPv6:2001:db8::1]``.
    IPV6 = "ipv6"
    #: A general address literal ``[tag:content]`` with a tag other than ``IPv6``.
    GENERAL = "general"


# --------------------------------------------------------------------------------------------
# Shared with _address.py: error messages, and the checks every part of an address needs


def _show(text: str) -> str:
    """The repr of *text* for an error message, shortened if it is long."""
    if len(text) > 80:
        return repr(text[:77]) + "…"
    return repr(text)


def _fail(message: str) -> NoReturn:
    raise SMTPAddressError(message)


def _octets(text: str) -> int:
    return len(text.encode("utf-8"))


def _check_chars(text: str, what: str) -> None:
    """Refuse control characters and non-ASCII characters that have no place in an address."""
    match = _ASCII_CONTROL.search(text)
    if match is not None:
        _fail(f"{what} {_show(text)} contains the control character {match.group()!r}")
    if text.isascii():
        return
    for char in text:
        if char >= "\x80":
            category = unicodedata.category(char)
            if category[0] in "CZ":
                _fail(
                    f"{what} {_show(text)} contains the character U+{ord(char):04X} "
                    f"(Unicode category {category}), which is not allowed in an address"
                )


def _check_type(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}: {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# Domains


def _parse_ipv4(text: str, match: re.Match[str]) -> ipaddress.IPv4Address:
    octets = [int(group) for group in match.groups()]
    if any(octet > 255 for octet in octets):
        _fail(f"IPv4 address {_show(text)} has a component greater than 255")
    return ipaddress.IPv4Address(bytes(octets))


def _parse_ipv6(text: str) -> ipaddress.IPv6Address:
    if _IPV6_CHARS.fullmatch(text) is None:
        _fail(f"{_show(text)} is not a valid IPv6 address")
    try:
        return ipaddress.IPv6Address(text)
    except ValueError as exc:
        raise SMTPAddressError(f"{_show(text)} is not a valid IPv6 address: {exc}") from exc


def _literal(ip: _IPAddress) -> str:
    if isinstance(ip, ipaddress.IPv4Address):
        return f"[{ip}]"
    return f"[IPv6:{ip.compressed}]"


def _check_domain_name(text: str) -> None:
    for label in text.split("."):
        if not label:
            if text.startswith("."):
                _fail(f"domain {_show(text)} starts with a dot")
            if text.endswith("."):
                _fail(f"domain {_show(text)} ends with a dot (write it without the final dot)")
            _fail(f"domain {_show(text)} has two consecutive dots")
        if _octets(label) > MAX_LABEL_OCTETS:
            _fail(
                f"label {_show(label)} of domain {_show(text)} is longer than "
                f"{MAX_LABEL_OCTETS} octets"
            )
        if _LABEL.fullmatch(label) is None:
            bad = next((c for c in label if _LABEL_CHAR.fullmatch(c) is None), None)
            if bad is not None:
                _fail(f"domain {_show(text)} contains the invalid character {bad!r}")
            _fail(
                f"label {_show(label)} of domain {_show(text)} must start and end with a "
                "letter or digit"
            )


def _analyse_domain(text: str) -> tuple[str, DomainKind, _IPAddress | None]:
    """Validate *text*; return its wire form, its kind and its IP address if any."""
    if not text:
        _fail("empty domain")
    _check_chars(text, "domain")
    ip: _IPAddress
    if text.startswith("["):
        if not text.endswith("]") or len(text) < 2:
            _fail(f"address literal {_show(text)} does not end with ']'")
        inner = text[1:-1]
        if (match := _IPV4.fullmatch(inner)) is not None:
            ip = _parse_ipv4(inner, match)
            return _literal(ip), DomainKind.IPV4, ip
        tag, colon, content = inner.partition(":")
        if not colon:
            _fail(
                f"address literal {_show(text)} is neither an IPv4 address nor of the form "
                "[tag:content]"
            )
        if tag.lower() == "ipv6":
            ip = _parse_ipv6(content)
            return _literal(ip), DomainKind.IPV6, ip
        if _LDH_STR.fullmatch(tag) is None:
            _fail(f"address literal {_show(text)} has an invalid tag {_show(tag)}")
        if _DCONTENT.fullmatch(content) is None:
            _fail(f"address literal {_show(text)} has invalid content {_show(content)}")
        kind = DomainKind.GENERAL
    elif ":" in text:
        ip = _parse_ipv6(text)
        return _literal(ip), DomainKind.IPV6, ip
    elif (match := _IPV4.fullmatch(text)) is not None:
        ip = _parse_ipv4(text, match)
        return _literal(ip), DomainKind.IPV4, ip
    else:
        _check_domain_name(text)
        kind = DomainKind.NAME
    if _octets(text) > MAX_DOMAIN_OCTETS:
        _fail(f"domain {_show(text)} is longer than {MAX_DOMAIN_OCTETS} octets")
    return text, kind, None


@attrs.frozen
class Domain:
    """A domain as SMTP writes it: an EHLO name or the part of a mailbox after ``@``.

    It is a domain name (``example.com``; non-ASCII U-labels are allowed, RFC 6531), or an
    address literal (RFC 5321 §4.1.3): ``[192.0.2.1]``, ``[IPv6:2001:db8::1]`` or the general
    ``[tag:content]``.  ``Domain(text)`` is the same as :meth:`Domain.parse`.

    Domain names keep the text the caller gave, case included; IP literals are put in
    canonical form (``[IPv6:2001:DB8:0::1]`` becomes ``[IPv6:2001:db8::1]``).  Two domains
    are equal when their wire forms are equal: the comparison is *case-sensitive*, so
    ``Example.COM`` and ``example.com`` differ, although DNS treats them alike.

    Attributes:
        text: the wire form, as returned by ``str()``.
        kind: which of the forms above this is.
        ip: the address of an IPv4 or IPv6 literal, ``None`` for the other kinds.
        needs_smtputf8: whether the domain contains non-ASCII characters, so that it can
            only be sent to a server that offers SMTPUTF8 (RFC 6531).

    Raises:
        SMTPAddressError: *text* is not a valid domain or literal, or it is too long.
        TypeError: *text* is not a str.
    """

    text: str
    kind: DomainKind = attrs.field(init=False, eq=False, repr=False)
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = attrs.field(
        init=False, eq=False, repr=False
    )
    needs_smtputf8: bool = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        wire, kind, ip = _analyse_domain(_check_type(self.text, "domain"))
        object.__setattr__(self, "text", wire)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "ip", ip)
        object.__setattr__(self, "needs_smtputf8", not wire.isascii())

    @classmethod
    def parse(cls, text: str) -> Domain:
        """Parse a domain name, an address literal, or a bare IP address.

        Args:
            text: ``"example.com"``, ``"[192.0.2.1]"``, ``"[IPv6:::1]"``, ``"[tag:content]"``,
                or a bare address such as ``"127.0.0.1"`` or ``"::1"``, which becomes the
                matching literal.  A trailing dot is refused.

        Returns:
            The validated domain.

        Raises:
            SMTPAddressError: *text* is malformed or longer than 255 octets, a label is
                longer than 63 octets, or it contains a control character.
            TypeError: *text* is not a str.
        """
        return cls(text)

    @classmethod
    def from_ip(cls, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Domain:
        """Build the address literal of an IP address.

        Args:
            addr: the address; an IPv6 address must not carry a scope id.

        Returns:
            ``[192.0.2.1]`` or ``[IPv6:2001:db8::1]``.

        Raises:
            SMTPAddressError: *addr* has a scope id (``fe80::1%eth0``), which SMTP cannot carry.
            TypeError: *addr* is not an IP address object.
        """
        if not isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise TypeError(
                f"expected an IPv4Address or IPv6Address, not {type(addr).__name__}: {addr!r}"
            )
        if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
            _fail(f"IPv6 address {str(addr)!r} has a scope id, which SMTP cannot carry")
        return cls(_literal(addr))

    def __str__(self) -> str:
        return self.text


def domain(value: Domain | str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> Domain:
    """Coerce *value* to a :class:`Domain`.

    Args:
        value: a :class:`Domain` (returned as is), a str (see :meth:`Domain.parse`) or an IP
            address object (see :meth:`Domain.from_ip`).

    Returns:
        The domain.

    Raises:
        SMTPAddressError: *value* is not a valid domain.
        TypeError: *value* has another type (``bytes``, ``None``, …).
    """
    if isinstance(value, Domain):
        return value
    if isinstance(value, str):
        return Domain.parse(value)
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return Domain.from_ip(value)
    raise TypeError(
        "expected a Domain, a str or an IPv4Address/IPv6Address, "
        f"not {type(value).__name__}: {value!r}"
    )
