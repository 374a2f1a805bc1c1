"""Tests of EHLO capability parsing (RFC 5321 §4.1.1.1 and the extension RFCs)."""

from __future__ import annotations

import pytest

from trio_sendmail._capabilities import Capabilities
from trio_sendmail._reply import Reply, ReplyParser


def caps(*lines: str) -> Capabilities:
    return Capabilities.from_reply(Reply(250, lines))


POSTFIX = (
    b"250-mx.example.com\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 10240000\r\n"
    b"250-VRFY\r\n"
    b"250-ETRN\r\n"
    b"250-STARTTLS\r\n"
    b"250-AUTH PLAIN LOGIN\r\n"
    b"250-AUTH=PLAIN LOGIN\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250-8BITMIME\r\n"
    b"250-DSN\r\n"
    b"250-SMTPUTF8\r\n"
    b"250 CHUNKING\r\n"
)


def test_parses_a_real_ehlo_reply() -> None:
    parser = ReplyParser()
    parser.feed(POSTFIX)
    reply = parser.next_reply()
    assert reply is not None
    c = Capabilities.from_reply(reply)
    assert c.server_name == "mx.example.com"
    assert set(c) == {
        "PIPELINING",
        "SIZE",
        "VRFY",
        "ETRN",
        "STARTTLS",
        "AUTH",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
        "DSN",
        "SMTPUTF8",
        "CHUNKING",
    }
    assert len(c) == 11
    assert c["SIZE"] == ("10240000",)
    assert c["PIPELINING"] == ()
    assert c.size_limit == 10240000
    assert c.auth_mechanisms == frozenset({"PLAIN", "LOGIN"})
    assert c.starttls
    assert c.pipelining
    assert c.eightbitmime
    assert c.smtputf8
    assert c.enhancedstatuscodes
    assert c.chunking
    assert c.dsn


def test_server_name_is_the_first_word_of_the_first_line() -> None:
    assert caps("mx.example.com Hello client [192.0.2.1]").server_name == "mx.example.com"
    assert len(caps("mx.example.com greets you")) == 0


def test_server_name_only() -> None:
    c = caps("mx.example.com")
    assert c.server_name == "mx.example.com"
    assert len(c) == 0
    assert list(c) == []


def test_empty_reply_lines() -> None:
    c = Capabilities.from_reply(Reply(250, ()))
    assert c.server_name == ""
    assert len(c) == 0


def test_default_capabilities_are_empty() -> None:
    c = Capabilities()
    assert c.server_name == ""
    assert len(c) == 0
    assert not c.starttls
    assert c.size_limit is None
    assert c.auth_mechanisms == frozenset()


def test_keywords_are_case_insensitive() -> None:
    c = caps("mx", "pipelining", "StartTLS", "size 1000")
    assert set(c) == {"PIPELINING", "STARTTLS", "SIZE"}
    assert "pipelining" in c
    assert "PIPELINING" in c
    assert "Pipelining" in c
    assert c["size"] == ("1000",)
    assert c.get("Size") == ("1000",)
    assert c.starttls
    assert c.pipelining


def test_params_keep_their_case_except_auth() -> None:
    c = caps("mx", "X-FOO Bar baz", "auth plain Login")
    assert c["X-FOO"] == ("Bar", "baz")
    assert c["AUTH"] == ("PLAIN", "LOGIN")


def test_params_are_split_on_any_whitespace() -> None:
    c = caps("mx", "AUTH  PLAIN\tLOGIN ", "SIZE   5000")
    assert c.auth_mechanisms == frozenset({"PLAIN", "LOGIN"})
    assert c.size_limit == 5000


def test_absent_keyword() -> None:
    c = caps("mx", "PIPELINING")
    assert "STARTTLS" not in c
    assert c.get("STARTTLS") is None
    with pytest.raises(KeyError):
        c["STARTTLS"]


def test_contains_with_a_non_string_is_false() -> None:
    c = caps("mx", "PIPELINING")
    keys: tuple[object, ...] = (1, None, b"PIPELINING")
    for key in keys:
        assert key not in c


def test_auth_and_legacy_auth_equals_are_merged() -> None:
    c = caps("mx", "AUTH PLAIN", "AUTH=LOGIN CRAM-MD5", "AUTH=PLAIN")
    assert c["AUTH"] == ("PLAIN", "LOGIN", "CRAM-MD5")
    assert c.auth_mechanisms == frozenset({"PLAIN", "LOGIN", "CRAM-MD5"})


def test_legacy_auth_equals_alone() -> None:
    c = caps("mx", "auth=login plain")
    assert c.auth_mechanisms == frozenset({"LOGIN", "PLAIN"})
    assert "AUTH=LOGIN" not in c


def test_legacy_auth_equals_with_nothing_after_gives_no_empty_mechanism() -> None:
    c = caps("mx", "AUTH=", "AUTH PLAIN")
    assert c.auth_mechanisms == frozenset({"PLAIN"})
    assert "" not in c["AUTH"]


def test_auth_without_mechanisms() -> None:
    c = caps("mx", "AUTH")
    assert "AUTH" in c
    assert c.auth_mechanisms == frozenset()


def test_no_auth_means_no_mechanisms() -> None:
    assert caps("mx", "PIPELINING").auth_mechanisms == frozenset()


@pytest.mark.parametrize(
    ("line", "limit"),
    [
        ("SIZE 10240000", 10240000),
        ("SIZE 1", 1),
        ("SIZE", None),
        ("SIZE 0", None),
        ("SIZE 000", None),
        ("SIZE -5", None),
        ("SIZE abc", None),
        ("SIZE 1e6", None),
        ("SIZE ²", None),
        ("SIZE ١٢٣", None),
    ],
)
def test_size_limit(line: str, limit: int | None) -> None:
    c = caps("mx", line)
    assert "SIZE" in c
    assert c.size_limit == limit


def test_size_limit_without_size() -> None:
    assert caps("mx", "PIPELINING").size_limit is None


@pytest.mark.parametrize(
    "garbage",
    ["-BAD", "=X", "B@D", "AUTH_PLAIN", "ÜTF8", "!!!", "", "   ", "-"],
)
def test_garbage_lines_are_ignored(garbage: str) -> None:
    c = caps("mx", "PIPELINING", garbage, "8BITMIME")
    assert set(c) == {"PIPELINING", "8BITMIME"}


def test_later_duplicate_keyword_wins() -> None:
    c = caps("mx", "SIZE 100", "SIZE 200")
    assert c.size_limit == 200


@pytest.mark.parametrize(
    ("keyword", "prop"),
    [
        ("STARTTLS", "starttls"),
        ("PIPELINING", "pipelining"),
        ("8BITMIME", "eightbitmime"),
        ("SMTPUTF8", "smtputf8"),
        ("ENHANCEDSTATUSCODES", "enhancedstatuscodes"),
        ("CHUNKING", "chunking"),
        ("DSN", "dsn"),
    ],
)
def test_each_flag_property_follows_its_keyword(keyword: str, prop: str) -> None:
    assert getattr(caps("mx", keyword), prop) is True
    assert getattr(caps("mx", keyword.lower()), prop) is True
    assert getattr(caps("mx", "X-OTHER"), prop) is False


def test_capabilities_are_immutable() -> None:
    c = caps("mx", "PIPELINING")
    with pytest.raises(AttributeError):
        c.server_name = "evil"  # type: ignore[misc]
    assert not hasattr(c, "__setitem__")
