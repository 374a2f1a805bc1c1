"""Tests of mailboxes, paths and domains (RFC 5321 §4.1.2, §4.1.3, §4.5.3.1; RFC 6531)."""

from __future__ import annotations

import ipaddress
import string
from collections.abc import Callable
from email.headerregistry import Address
from typing import Any, cast

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_sendmail._address import (
    Domain,
    DomainKind,
    ForwardPath,
    Mailbox,
    ReversePath,
    domain,
    forward_path,
    reverse_path,
)
from trio_sendmail._errors import SMTPAddressError, SMTPInputError

# --------------------------------------------------------------------------------------------
# Helpers


def make_domain(length: int) -> str:
    """A valid domain name of exactly *length* characters (labels of at most 50)."""
    labels = []
    remaining = length
    while remaining > 50:
        labels.append("a" * 49)
        remaining -= 50
    labels.append("b" * remaining)
    text = ".".join(labels)
    assert len(text) == length
    return text


def make_mailbox_text(length: int) -> str:
    """A valid mailbox text of exactly *length* characters (local part of 64)."""
    return "a" * 64 + "@" + make_domain(length - 65)


# Control characters: all of C0, DEL, some C1 and a few Unicode line/format separators.
CONTROLS = [chr(c) for c in range(0x20)] + ["\x7f", "\x80", "\x85", "\x9f"]
BAD_UNICODE = ["\u2028", "\u2029", "\u200b", "\u202e", "\ufeff", "\u00a0", "\u3000", "\ud800"]


def _parsers() -> list[Callable[[str], object]]:
    return [Domain.parse, Mailbox.parse, ReversePath.parse, ForwardPath.parse]


# --------------------------------------------------------------------------------------------
# Domains


@pytest.mark.parametrize(
    "text",
    [
        "example.com",
        "Example.COM",
        "a",
        "localhost",
        "a-b.example",
        "a--b.example",
        "xn--bcher-kva.example",
        "1.example",
        "123",
        "1.2.3",
        "0a.9z",
    ],
)
def test_domain_names(text: str) -> None:
    d = Domain.parse(text)
    assert d.kind is DomainKind.NAME
    assert str(d) == text
    assert d.ip is None
    assert not d.needs_smtputf8
    assert Domain.parse(str(d)) == d


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty domain"),
        (".", "starts with a dot"),
        (".example.com", "starts with a dot"),
        ("example.com.", "ends with a dot"),
        ("example..com", "consecutive dots"),
        ("-example.com", "start and end with a letter or digit"),
        ("example-.com", "start and end with a letter or digit"),
        ("example.-", "start and end with a letter or digit"),
        ("exa_mple.com", "'_'"),
        ("exa mple.com", "' '"),
        ("a@b", "'@'"),
        ("a/b", "'/'"),
        ("exa,mple", "','"),
        ("<example.com>", "'<'"),
        (" example.com", "' '"),
    ],
)
def test_invalid_domain_names(text: str, message: str) -> None:
    with pytest.raises(SMTPAddressError, match=message):
        Domain.parse(text)


def test_domain_label_length_limit() -> None:
    assert str(Domain.parse("a" * 63 + ".com")) == "a" * 63 + ".com"
    with pytest.raises(SMTPAddressError, match="longer than 63 octets"):
        Domain.parse("a" * 64 + ".com")
    # Octets, not characters: 31 two-octet characters and one ASCII character make 63.
    Domain.parse("é" * 31 + "a.example")
    with pytest.raises(SMTPAddressError, match="longer than 63 octets"):
        Domain.parse("é" * 32 + ".example")


def test_domain_total_length_limit() -> None:
    assert len(str(Domain.parse(make_domain(255)))) == 255
    with pytest.raises(SMTPAddressError, match="longer than 255 octets"):
        Domain.parse(make_domain(256))
    # General literals obey the same bound.
    Domain.parse("[x:" + "a" * 251 + "]")
    with pytest.raises(SMTPAddressError, match="longer than 255 octets"):
        Domain.parse("[x:" + "a" * 252 + "]")


@pytest.mark.parametrize(
    ("text", "wire", "ip"),
    [
        ("[192.0.2.1]", "[192.0.2.1]", ipaddress.IPv4Address("192.0.2.1")),
        ("[0.0.0.0]", "[0.0.0.0]", ipaddress.IPv4Address("0.0.0.0")),  # noqa: S104
        ("[255.255.255.255]", "[255.255.255.255]", ipaddress.IPv4Address("255.255.255.255")),
        # RFC 5321 Snum is 1*3DIGIT: leading zeros are decimal, not octal.
        ("[010.001.000.1]", "[10.1.0.1]", ipaddress.IPv4Address("10.1.0.1")),
        ("192.0.2.1", "[192.0.2.1]", ipaddress.IPv4Address("192.0.2.1")),
        ("127.0.0.1", "[127.0.0.1]", ipaddress.IPv4Address("127.0.0.1")),
    ],
)
def test_ipv4_literals(text: str, wire: str, ip: ipaddress.IPv4Address) -> None:
    d = Domain.parse(text)
    assert d.kind is DomainKind.IPV4
    assert str(d) == wire
    assert d.ip == ip
    assert not d.needs_smtputf8
    assert Domain.parse(wire) == d


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]"),
        ("[IPv6:2001:DB8:0:0:0:0:0:1]", "[IPv6:2001:db8::1]"),
        ("[ipv6:::1]", "[IPv6:::1]"),
        ("[IPV6:::]", "[IPv6:::]"),
        ("[IPv6:::ffff:192.0.2.1]", f"[IPv6:{ipaddress.IPv6Address('::ffff:192.0.2.1')}]"),
        ("::1", "[IPv6:::1]"),
        ("2001:db8::1", "[IPv6:2001:db8::1]"),
    ],
)
def test_ipv6_literals(text: str, wire: str) -> None:
    d = Domain.parse(text)
    assert d.kind is DomainKind.IPV6
    assert str(d) == wire
    assert isinstance(d.ip, ipaddress.IPv6Address)
    assert Domain.parse(wire) == d


@pytest.mark.parametrize(
    "text",
    ["[x-tag:content]", "[X400:c=gb;p=x]", "[tag:a:b@c]", "[IPv4:1.2.3.4]"],
)
def test_general_literals(text: str) -> None:
    d = Domain.parse(text)
    assert d.kind is DomainKind.GENERAL
    assert str(d) == text
    assert d.ip is None


@pytest.mark.parametrize(
    "text",
    [
        "[IPv6:zzz]",
        "[IPv6:]",
        "[IPv6:1.2.3.4]",
        "[IPv6:1:2:3:4:5:6:7:8:9]",
        "[IPv6:1::2::3]",
        "[IPv6:fe80::1%eth0]",
        "[IPv6:١::1]",  # noqa: RUF001 (an Arabic-Indic digit)
        "fe80::1%eth0",
        "::g",
        "[300.1.1.1]",
        "[1.2.3.256]",
        "300.1.1.1",
        "[1.2.3]",
        "[1.2.3.4.5]",
        "[1.2.3.4",
        "[",
        "[]",
        "[example.com]",
        "[:content]",
        "[-:content]",
        "[tag-:content]",
        "[ta_g:content]",
        "[tag:]",
        "[tag:a b]",
        "[tag:a[b]",
        "[tag:a\\b]",
        "[tag:a]b]",
        "[tag:é]",
        "1.2.3.4]",
    ],
)
def test_invalid_literals(text: str) -> None:
    with pytest.raises(SMTPAddressError):
        Domain.parse(text)


def test_domain_from_ip() -> None:
    v4 = Domain.from_ip(ipaddress.IPv4Address("192.0.2.1"))
    assert str(v4) == "[192.0.2.1]"
    assert v4.kind is DomainKind.IPV4
    assert v4 == Domain.parse("192.0.2.1")
    v6 = Domain.from_ip(ipaddress.IPv6Address("2001:db8::1"))
    assert str(v6) == "[IPv6:2001:db8::1]"
    assert v6.kind is DomainKind.IPV6
    assert v6.ip == ipaddress.IPv6Address("2001:db8::1")
    with pytest.raises(SMTPAddressError, match="scope id"):
        Domain.from_ip(ipaddress.IPv6Address("fe80::1%eth0"))
    with pytest.raises(TypeError, match="IPv4Address or IPv6Address"):
        Domain.from_ip(cast(Any, "192.0.2.1"))


def test_domain_equality_and_hash() -> None:
    assert Domain.parse("example.com") == Domain.parse("example.com")
    # Documented: equality compares wire text, case-sensitively.
    assert Domain.parse("Example.com") != Domain.parse("example.com")
    assert Domain.parse("[IPv6:2001:DB8::1]") == Domain.parse("2001:db8::1")
    assert len({Domain.parse("127.0.0.1"), Domain.parse("[127.0.0.1]")}) == 1
    assert Domain("127.0.0.1") == Domain.parse("[127.0.0.1]")
    assert repr(Domain.parse("example.com")) == "Domain(text='example.com')"
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        Domain.parse("example.com").text = "x"  # type: ignore[misc]


def test_domain_utf8() -> None:
    d = Domain.parse("bücher.example")
    assert d.kind is DomainKind.NAME
    assert d.needs_smtputf8
    assert str(d) == "bücher.example"
    assert Domain.parse("例え.テスト").needs_smtputf8


def test_domain_type_errors() -> None:
    with pytest.raises(TypeError, match="bytes"):
        Domain.parse(cast(Any, b"example.com"))
    with pytest.raises(TypeError):
        Domain(cast(Any, None))


# --------------------------------------------------------------------------------------------
# Mailboxes


@pytest.mark.parametrize(
    ("text", "local", "dom"),
    [
        ("a.b@example.com", "a.b", "example.com"),
        ("user@[192.0.2.1]", "user", "[192.0.2.1]"),
        ("user@[IPv6:2001:db8::1]", "user", "[IPv6:2001:db8::1]"),
        ("user@[tag:x@y]", "user", "[tag:x@y]"),
        ("!#$%&'*+-/=?^_`{|}~@example.com", "!#$%&'*+-/=?^_`{|}~", "example.com"),
        ("A.B.C@Example.COM", "A.B.C", "Example.COM"),
        ('"john doe"@example.com', '"john doe"', "example.com"),
        ('"a\\"b"@example.com', '"a\\"b"', "example.com"),
        ('"a\\\\b"@example.com', '"a\\\\b"', "example.com"),
        ('"a\\ b"@example.com', '"a\\ b"', "example.com"),
        ('""@example.com', '""', "example.com"),
        ('"a@b"@example.com', '"a@b"', "example.com"),
        ('".a..b."@example.com', '".a..b."', "example.com"),
        ('"<x>"@example.com', '"<x>"', "example.com"),
        ('"a,b:c"@[tag:d]', '"a,b:c"', "[tag:d]"),
    ],
)
def test_valid_mailboxes(text: str, local: str, dom: str) -> None:
    m = Mailbox.parse(text)
    assert m.local_part == local
    assert str(m.domain) == dom
    assert str(m) == text
    assert not m.needs_smtputf8
    assert Mailbox.parse(str(m)) == m
    assert Mailbox(local, dom) == m


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no '@domain'"),
        ("user", "no '@domain'"),
        ("@example.com", "empty local part"),
        (".a@example.com", "starts with a dot"),
        ("a.@example.com", "ends with a dot"),
        ("a..b@example.com", "consecutive dots"),
        (".@example.com", "starts with a dot"),
        ("john doe@example.com", "only allowed in a quoted string"),
        ("a(b)@example.com", "only allowed in a quoted string"),
        ('a"b"@example.com', "only allowed in a quoted string"),
        ("a\\b@example.com", "only allowed in a quoted string"),
        ("a@b@example.com", "'@'"),
        ("user@", "empty domain"),
        ("user@example.com.", "ends with a dot"),
        ('"abc@example.com', "no closing quote"),
        ('"abc\\"@example.com', "no closing quote"),
        ('"a"b"@example.com', "followed by '@'"),
        ('"a"b@example.com', "followed by '@'"),
        ('"a"@', "empty domain"),
        ('"\\é"@example.com', "backslash"),
        ("<user@example.com>", "angle brackets"),
        ("<user>", "angle brackets"),
    ],
)
def test_invalid_mailboxes(text: str, message: str) -> None:
    with pytest.raises(SMTPAddressError, match=message):
        Mailbox.parse(text)


@pytest.mark.parametrize(
    "local", ["", ".a", "a b", '"a"b"', '"a', '"a\\"', "a\r\nRCPT TO:<x@y>", '"a\\\x00"', '"a\\']
)
def test_mailbox_constructor_validates(local: str) -> None:
    with pytest.raises(SMTPAddressError):
        Mailbox(local, "example.com")


def test_mailbox_constructor_types() -> None:
    m = Mailbox("user", ipaddress.IPv4Address("192.0.2.1"))
    assert str(m) == "user@[192.0.2.1]"
    assert Mailbox("user", Domain.parse("example.com")) == Mailbox("user", "example.com")
    with pytest.raises(TypeError):
        Mailbox(cast(Any, b"user"), "example.com")
    with pytest.raises(TypeError):
        Mailbox("user", cast(Any, None))


def test_local_part_length_limit() -> None:
    assert Mailbox.parse("a" * 64 + "@example.com").local_part == "a" * 64
    with pytest.raises(SMTPAddressError, match="longer than 64 octets"):
        Mailbox.parse("a" * 65 + "@example.com")
    # The quotes count: they are part of the wire form.
    Mailbox.parse('"' + "a" * 62 + '"@example.com')
    with pytest.raises(SMTPAddressError, match="longer than 64 octets"):
        Mailbox.parse('"' + "a" * 63 + '"@example.com')
    # UTF-8 octets, not characters.
    Mailbox.parse("é" * 32 + "@example.com")
    with pytest.raises(SMTPAddressError, match="longer than 64 octets"):
        Mailbox.parse("é" * 32 + "a@example.com")


@pytest.mark.parametrize(
    "text",
    [
        "jöhn@example.com",
        "用户@例子.广告",
        '"jöhn doe"@example.com',
        "john@bücher.example",
        "δοκιμή@παράδειγμα.δοκιμή",
    ],
)
def test_utf8_mailboxes(text: str) -> None:
    m = Mailbox.parse(text)
    assert m.needs_smtputf8
    assert str(m) == text
    assert ReversePath.parse(text).needs_smtputf8
    assert ForwardPath.parse(f"<{text}>").needs_smtputf8


def test_ascii_does_not_need_smtputf8() -> None:
    assert not Mailbox.parse("a@example.com").needs_smtputf8
    assert not ReversePath.null().needs_smtputf8
    assert not ForwardPath.postmaster().needs_smtputf8
    assert not ReversePath.parse("a@xn--bcher-kva.example").needs_smtputf8


def test_mailbox_equality_is_exact() -> None:
    assert Mailbox.parse('"john"@example.com') != Mailbox.parse("john@example.com")
    assert Mailbox.parse("John@example.com") != Mailbox.parse("john@example.com")
    assert len({Mailbox.parse("a@b"), Mailbox.parse("a@b")}) == 1


# --------------------------------------------------------------------------------------------
# Injection


@pytest.mark.parametrize("char", CONTROLS + BAD_UNICODE, ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize(
    "template",
    [
        "{}user@example.com",
        "us{}er@example.com",
        "user{}@example.com",
        "user@{}example.com",
        "user@exam{}ple.com",
        "user@example.com{}",
        '"us{}er"@example.com',
        '"us\\{}er"@example.com',
        "user@[192.0.2.1{}]",
        "user@[IPv6:::1{}]",
        "user@[tag:a{}]",
        "<user@example.com>{}",
        "{}<user@example.com>",
        "<@a{}.example:user@example.com>",
    ],
)
def test_control_characters_are_refused(char: str, template: str) -> None:
    text = template.format(char)
    for parse in (Mailbox.parse, ReversePath.parse, ForwardPath.parse):
        with pytest.raises(SMTPAddressError):
            parse(text)


@pytest.mark.parametrize("char", CONTROLS + BAD_UNICODE, ids=lambda c: f"U+{ord(c):04X}")
def test_control_characters_in_domains(char: str) -> None:
    for text in (f"exa{char}mple.com", f"example.com{char}", f"[tag:{char}]", f"{char}"):
        with pytest.raises(SMTPAddressError):
            Domain.parse(text)


def test_crlf_injection_message() -> None:
    with pytest.raises(SMTPAddressError, match=r"control character '\\r'"):
        ForwardPath.parse("a@example.com>\r\nDATA")
    with pytest.raises(SMTPAddressError, match=r"control character '\\n'"):
        Mailbox("a", "example.com\nRSET")
    with pytest.raises(SMTPAddressError, match=r"control character '\\x00'"):
        ReversePath.parse("<a\x00@example.com>")


def test_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="no '@domain'"):
        Mailbox.parse("nobody")
    with pytest.raises(SMTPInputError):
        Domain.parse("")


def test_long_input_is_shortened_in_messages() -> None:
    with pytest.raises(SMTPAddressError) as info:
        Mailbox.parse("a" * 10_000 + "@example.com")
    assert len(str(info.value)) < 300


# --------------------------------------------------------------------------------------------
# Paths


@pytest.mark.parametrize("text", ["", "<>"])
def test_null_reverse_path(text: str) -> None:
    path = ReversePath.parse(text)
    assert path.is_null
    assert path.mailbox is None
    assert str(path) == "<>"
    assert path == ReversePath.null() == ReversePath()
    assert not path.needs_smtputf8


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("user@example.com", "<user@example.com>"),
        ("<user@example.com>", "<user@example.com>"),
        ('<"john doe"@example.com>', '<"john doe"@example.com>'),
        ('"a>b"@example.com', '<"a>b"@example.com>'),
        ("<user@127.0.0.1>", "<user@[127.0.0.1]>"),
        ("<Postmaster@example.com>", "<Postmaster@example.com>"),
    ],
)
def test_reverse_paths(text: str, wire: str) -> None:
    path = ReversePath.parse(text)
    assert not path.is_null
    assert str(path) == wire
    assert ReversePath.parse(str(path)) == path


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("user@example.com", "<user@example.com>"),
        ("<user@example.com>", "<user@example.com>"),
        ('<"john doe"@example.com>', '<"john doe"@example.com>'),
        ("<Postmaster@example.com>", "<Postmaster@example.com>"),
        ("<postmaster@[192.0.2.1]>", "<postmaster@[192.0.2.1]>"),
    ],
)
def test_forward_paths(text: str, wire: str) -> None:
    path = ForwardPath.parse(text)
    assert not path.is_postmaster
    assert str(path) == wire
    assert ForwardPath.parse(str(path)) == path


@pytest.mark.parametrize(
    "text",
    ["Postmaster", "postmaster", "POSTMASTER", "<Postmaster>", "<postmaster>", "<pOsTmAsTeR>"],
)
def test_postmaster(text: str) -> None:
    path = ForwardPath.parse(text)
    assert path.is_postmaster
    assert path.mailbox is None
    assert str(path) == "<Postmaster>"
    assert path == ForwardPath.postmaster()


@pytest.mark.parametrize("text", ["Postmaster", "<postmaster>"])
def test_postmaster_is_not_a_reverse_path(text: str) -> None:
    with pytest.raises(SMTPAddressError, match="no '@domain'"):
        ReversePath.parse(text)


@pytest.mark.parametrize("text", ["", "<>"])
def test_empty_forward_path_is_refused(text: str) -> None:
    with pytest.raises(SMTPAddressError, match="empty"):
        ForwardPath.parse(text)


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("<@a.example,@b.example:user@c.example>", "<user@c.example>"),
        ("<@a.example:user@c.example>", "<user@c.example>"),
        ("<@[192.0.2.1],@[IPv6:::1]:user@c.example>", "<user@c.example>"),
        ("<@[tag:a,b:c]:user@c.example>", "<user@c.example>"),
        ('<@a.example:"x:y"@c.example>', '<"x:y"@c.example>'),
        ("@a.example:user@c.example", "<user@c.example>"),
    ],
)
def test_source_routes_are_dropped(text: str, wire: str) -> None:
    assert str(ReversePath.parse(text)) == wire
    assert str(ForwardPath.parse(text)) == wire


@pytest.mark.parametrize(
    "text",
    [
        "<@a.example user@c.example>",
        "<@:user@c.example>",
        "<@a.example,b.example:user@c.example>",
        "<@a.example,:user@c.example>",
        "<@a.example:>",
        "<@a.example>",
        "<@a..example:user@c.example>",
        "<@[192.0.2.1:user@c.example>",
        "<@[300.0.0.1]:user@c.example>",
        "<@a.example;user@c.example>",
        "<@a.example:postmaster>",
    ],
)
def test_bad_source_routes(text: str) -> None:
    with pytest.raises(SMTPAddressError):
        ReversePath.parse(text)
    with pytest.raises(SMTPAddressError):
        ForwardPath.parse(text)


@pytest.mark.parametrize(
    "text",
    [
        "Joe <joe@example.com>",
        '"Joe Bloggs" <joe@example.com>',
        "Joe<joe@example.com>",
        "=?utf-8?q?Jo=C3=A9?= <joe@example.com>",
    ],
)
def test_display_names_are_refused(text: str) -> None:
    for parse in (ReversePath.parse, ForwardPath.parse):
        with pytest.raises(SMTPAddressError, match="display name") as info:
            parse(text)
        assert "'<joe@example.com>'" in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "<user@example.com",
        "user@example.com>",
        "<user@example.com> Joe",
        "<<user@example.com>>",
        "<",
        ">",
        " <user@example.com>",
        "<user@example.com> ",
        "< user@example.com>",
    ],
)
def test_malformed_brackets(text: str) -> None:
    for parse in (ReversePath.parse, ForwardPath.parse):
        with pytest.raises(SMTPAddressError):
            parse(text)


def test_path_length_limit() -> None:
    at_limit = make_mailbox_text(254)
    over = make_mailbox_text(255)
    for cls in (ReversePath, ForwardPath):
        path = cls.parse(at_limit)
        assert len(str(path)) == 256
        assert cls.parse(f"<{at_limit}>") == path
        with pytest.raises(SMTPAddressError, match="the limit is 256"):
            cls.parse(over)
        with pytest.raises(SMTPAddressError, match="the limit is 256"):
            cls.parse(f"<{over}>")
        # A valid mailbox can still make too long a path.
        with pytest.raises(SMTPAddressError, match="the limit is 256"):
            cls(Mailbox.parse(over))
    # The dropped source route does not count.
    route = ",".join(["@" + make_domain(200)] * 3)
    assert len(str(ForwardPath.parse(f"<{route}:{at_limit}>"))) == 256


def test_path_constructors() -> None:
    m = Mailbox.parse("user@example.com")
    assert str(ReversePath(m)) == "<user@example.com>"
    assert str(ForwardPath(m)) == "<user@example.com>"
    assert ForwardPath(None).is_postmaster
    with pytest.raises(TypeError, match="Mailbox or None"):
        ReversePath(cast(Any, "user@example.com"))
    with pytest.raises(TypeError, match="Mailbox or None"):
        ForwardPath(cast(Any, "user@example.com"))
    # Hashable: ForwardPath keys SMTPRecipientsRefused.refused.
    refused = {ForwardPath.parse("a@b"): 1, ForwardPath.parse("<a@b>"): 2}
    assert len(refused) == 1


@pytest.mark.parametrize("parse", [ReversePath.parse, ForwardPath.parse, Mailbox.parse])
@pytest.mark.parametrize("value", [b"user@example.com", None, 42])
def test_parse_type_errors(parse: Callable[[Any], object], value: object) -> None:
    with pytest.raises(TypeError):
        parse(value)


# --------------------------------------------------------------------------------------------
# email.headerregistry.Address


def test_address_needing_quotes() -> None:
    addr = Address(username="john doe", domain="example.com")
    for cls in (ReversePath, ForwardPath):
        path = cls.from_address(addr)
        assert path.mailbox is not None
        assert path.mailbox.local_part == '"john doe"'
        assert str(path) == '<"john doe"@example.com>'


@pytest.mark.parametrize(
    ("addr", "wire"),
    [
        (Address("Joe Bloggs", "joe", "example.com"), "<joe@example.com>"),
        (Address(addr_spec='"john doe"@example.com'), '<"john doe"@example.com>'),
        (Address(username='a"b\\c', domain="example.com"), '<"a\\"b\\\\c"@example.com>'),
        (Address(username="a..b", domain="example.com"), '<"a..b"@example.com>'),
        (Address(username=".a", domain="example.com"), '<".a"@example.com>'),
        (Address(username="a", domain="[192.0.2.1]"), "<a@[192.0.2.1]>"),
        (Address(addr_spec="a@[192.0.2.1]"), "<a@[192.0.2.1]>"),
        (Address(username="jöhn", domain="bücher.example"), "<jöhn@bücher.example>"),
    ],
)
def test_from_address(addr: Address, wire: str) -> None:
    assert str(ReversePath.from_address(addr)) == wire
    assert str(ForwardPath.from_address(addr)) == wire
    assert ReversePath.parse(wire) == ReversePath.from_address(addr)


def test_empty_address() -> None:
    assert ReversePath.from_address(Address()).is_null
    with pytest.raises(SMTPAddressError, match="cannot be empty"):
        ForwardPath.from_address(Address())


def test_address_without_domain() -> None:
    assert ForwardPath.from_address(Address(username="Postmaster")).is_postmaster
    assert ForwardPath.from_address(Address(username="postmaster")).is_postmaster
    with pytest.raises(SMTPAddressError, match="no domain"):
        ReversePath.from_address(Address(username="postmaster"))
    with pytest.raises(SMTPAddressError, match="no domain"):
        ForwardPath.from_address(Address(username="user"))
    with pytest.raises(SMTPAddressError, match="empty user name"):
        ForwardPath.from_address(Address(username="", domain="example.com"))


def test_bad_addresses() -> None:
    with pytest.raises(SMTPAddressError, match="control character"):
        ForwardPath.from_address(Address(username="a\x00b", domain="example.com"))
    with pytest.raises(SMTPAddressError, match="control character"):
        ReversePath.from_address(Address(username="ab", domain="example.com\x00"))
    with pytest.raises(SMTPAddressError, match="longer than 64 octets"):
        ForwardPath.from_address(Address(username="a" * 65, domain="example.com"))
    with pytest.raises(SMTPAddressError):
        ForwardPath.from_address(Address(username="a", domain="exa mple.com"))
    with pytest.raises(TypeError, match="Address"):
        ForwardPath.from_address(cast(Any, "a@example.com"))
    with pytest.raises(TypeError, match="Address"):
        ReversePath.from_address(cast(Any, None))


# --------------------------------------------------------------------------------------------
# Coercion helpers


def test_reverse_path_helper() -> None:
    path = ReversePath.parse("a@example.com")
    assert reverse_path(path) is path
    assert reverse_path("a@example.com") == path
    assert reverse_path("<a@example.com>") == path
    assert reverse_path(Mailbox.parse("a@example.com")) == path
    assert reverse_path(Address(username="a", domain="example.com")) == path
    assert reverse_path("").is_null
    assert reverse_path(Address()).is_null
    with pytest.raises(SMTPAddressError):
        reverse_path("a@@example.com")


def test_forward_path_helper() -> None:
    path = ForwardPath.parse("a@example.com")
    assert forward_path(path) is path
    assert forward_path("a@example.com") == path
    assert forward_path(Mailbox.parse("a@example.com")) == path
    assert forward_path(Address(username="a", domain="example.com")) == path
    assert forward_path("postmaster").is_postmaster
    with pytest.raises(SMTPAddressError):
        forward_path("")


def test_domain_helper() -> None:
    d = Domain.parse("example.com")
    assert domain(d) is d
    assert domain("example.com") == d
    assert domain(ipaddress.IPv4Address("192.0.2.1")) == Domain.parse("[192.0.2.1]")
    assert domain(ipaddress.IPv6Address("::1")) == Domain.parse("[IPv6:::1]")
    with pytest.raises(SMTPAddressError):
        domain("example..com")


@pytest.mark.parametrize(
    "value", [b"a@example.com", bytearray(b"a@example.com"), 42, None, 1.5, ["a@b"], object()]
)
def test_helper_type_errors(value: object) -> None:
    for helper in (reverse_path, forward_path, domain):
        with pytest.raises(TypeError, match="expected a") as info:
            cast(Callable[[object], object], helper)(value)
        assert type(value).__name__ in str(info.value)


def test_helpers_do_not_cross_types() -> None:
    with pytest.raises(TypeError):
        reverse_path(cast(Any, ForwardPath.parse("a@b")))
    with pytest.raises(TypeError):
        forward_path(cast(Any, ReversePath.parse("a@b")))
    with pytest.raises(TypeError):
        domain(cast(Any, Mailbox.parse("a@b")))


# --------------------------------------------------------------------------------------------
# Property tests

_NON_ASCII = st.characters(
    min_codepoint=0x80, exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp")
)
_ATEXT = st.one_of(
    st.sampled_from(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~"), _NON_ASCII
)
_QTEXT = st.sampled_from([chr(c) for c in range(0x20, 0x7F) if chr(c) not in '"\\'])
_QPAIR = st.sampled_from([chr(c) for c in range(0x20, 0x7F)]).map(lambda c: "\\" + c)

_dot_strings = st.lists(st.text(_ATEXT, min_size=1, max_size=6), min_size=1, max_size=3).map(
    ".".join
)
_quoted_strings = st.lists(st.one_of(_QTEXT, _QPAIR, _NON_ASCII), max_size=12).map(
    lambda parts: '"' + "".join(parts) + '"'
)
_local_parts = st.one_of(_dot_strings, _quoted_strings).filter(
    lambda s: len(s.encode("utf-8")) <= 64
)

_LDH = string.ascii_letters + string.digits
_labels = st.one_of(
    # A one-character label, or first + middle + last: a label may hold "-" but
    # neither start nor end with one (RFC 5321 §4.1.2 Ldh-str).
    st.one_of(st.sampled_from(_LDH), _NON_ASCII),
    st.builds(
        lambda first, middle, last: first + middle + last,
        st.one_of(st.sampled_from(_LDH), _NON_ASCII),
        st.text(st.one_of(st.sampled_from(_LDH + "-"), _NON_ASCII), max_size=15),
        st.one_of(st.sampled_from(_LDH), _NON_ASCII),
    ),
)
_tlds = st.text(st.sampled_from(string.ascii_letters), min_size=1, max_size=6)
_domain_names = st.builds(
    lambda labels, tld: ".".join([*labels, tld]), st.lists(_labels, max_size=3), _tlds
)
_general_literals = st.builds(
    lambda tag, content: f"[{tag}:{content}]",
    st.from_regex(r"[A-Za-z0-9-]{0,5}[A-Za-z0-9]", fullmatch=True).filter(
        lambda t: t.lower() != "ipv6"
    ),
    st.text(
        st.sampled_from([chr(c) for c in range(0x21, 0x7F) if chr(c) not in "[\\]"]),
        min_size=1,
        max_size=30,
    ),
)
domains = st.one_of(
    _domain_names.map(Domain.parse),
    st.ip_addresses(v=4).map(Domain.from_ip),
    st.ip_addresses(v=6).map(Domain.from_ip),
    _general_literals.map(Domain.parse),
)
mailboxes = st.builds(Mailbox, _local_parts, domains)

_INTERESTING = '<>@".\\[]:,aAz0-9 é\r\n\x00IPv6Postmaster'
_texts = st.one_of(
    st.text(),
    st.text(st.sampled_from(list(_INTERESTING)), max_size=40),
    st.builds(
        lambda a, b, c: a + b + c, st.text(max_size=5), st.sampled_from(["@", "<", '"']), st.text()
    ),
)


@given(domains)
def test_domain_round_trip(d: Domain) -> None:
    assert Domain.parse(str(d)) == d
    assert Domain.parse(str(d)).kind is d.kind
    assert d.needs_smtputf8 == (not str(d).isascii())


@given(mailboxes)
def test_mailbox_round_trip(m: Mailbox) -> None:
    assert Mailbox.parse(str(m)) == m
    assert m.needs_smtputf8 == (not str(m).isascii())


@given(mailboxes)
def test_path_round_trip(m: Mailbox) -> None:
    reverse = ReversePath(m)
    forward = ForwardPath(m)
    assert ReversePath.parse(str(reverse)) == reverse
    assert ReversePath.parse(str(m)) == reverse
    assert ForwardPath.parse(str(forward)) == forward
    assert ForwardPath.parse(str(m)) == forward
    assert reverse.needs_smtputf8 == forward.needs_smtputf8 == m.needs_smtputf8


def _no_controls(text: str) -> bool:
    return not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)


@given(_texts)
def test_arbitrary_text_parses_or_raises_address_error(text: str) -> None:
    for parse in _parsers():
        try:
            value = parse(text)
        except SMTPAddressError:
            continue
        wire = str(value)
        assert _no_controls(wire)
        assert parse(wire) == value


@given(_texts)
def test_arbitrary_text_in_structures(text: str) -> None:
    builders: list[Callable[[], object]] = [
        lambda: Mailbox(text, "example.com"),
        lambda: Mailbox("user", text),
    ]
    if "\r" not in text and "\n" not in text:  # Address refuses CR and LF itself
        addr = Address(username=text, domain="example.com")
        builders.append(lambda: ForwardPath.from_address(addr))
    for build in builders:
        try:
            value = build()
        except SMTPAddressError:
            continue
        assert _no_controls(str(value))
