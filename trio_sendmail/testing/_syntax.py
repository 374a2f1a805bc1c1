"""The command-argument syntax the fake server checks: paths, mailboxes, ESMTP parameters."""

# Theory of operation
# -------------------
#
# RFC 5321 §4.1.2 grammar, checked independently of the client's own address code (the two must
# not share a bug). A Path is "<" [source route ":"] Mailbox ">", where the closing bracket is
# found quote-aware (a quoted local part may contain ">"). A Mailbox is Local-part "@" Domain,
# split at the LAST "@" (a quoted local part may contain "@"); the local part is a dot-string of
# atext or a quoted string, the domain a dotted sequence of LDH labels or an address literal.
# Non-ASCII characters are allowed here (RFC 6531 §3.3); whether SMTPUTF8 was declared for them
# is the mail transaction's business. "<Postmaster>" is a valid RCPT path (§4.1.1.3).
#
# ESMTP parameters (§4.1.2 esmtp-param) are "keyword[=value]", space-separated after the path;
# each must belong to an extension offered in this session, else 555 (§4.1.1.11).

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

__all__ = ["KEYWORD_RE", "Refuse", "find_path", "parse_params", "valid_mailbox"]

KEYWORD_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_PARAM_VALUE_RE: Final = re.compile(r"[\x21-\x3c\x3e-\x7e]+")  # RFC 5321 esmtp-value
_ATEXT: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)


class Refuse(Exception):
    """Raised by a command handler to refuse the command with one of the server's replies."""

    def __init__(self, code: int, status: str, text: str) -> None:
        super().__init__(code, status, text)
        self.code = code
        self.status = status
        self.text = text


def find_path(text: str) -> tuple[str, str] | None:
    """Split ``<path> rest`` into the path (without brackets) and the rest, quote-aware."""
    if not text.startswith("<"):
        return None
    quoted = False
    i = 1
    while i < len(text):
        char = text[i]
        if quoted:
            if char == "\\":
                i += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == ">":
            return text[1:i], text[i + 1 :]
        i += 1
    return None


def _valid_domain(domain: str) -> bool:
    if domain.startswith("["):
        return domain.endswith("]") and len(domain) > 2 and " " not in domain
    labels = domain.split(".")
    return all(
        label
        and not label.startswith("-")
        and not label.endswith("-")
        and all(c.isalnum() or c == "-" or not c.isascii() for c in label)
        for label in labels
    )


def _valid_local_part(local: str) -> bool:
    if local.startswith('"'):
        if len(local) < 2 or not local.endswith('"'):
            return False
        body = local[1:-1]
        i = 0
        while i < len(body):
            if body[i] == "\\":
                if i + 1 >= len(body):
                    return False
                i += 2
                continue
            if body[i] == '"' or not body[i].isprintable():
                return False
            i += 1
        return True
    return all(
        atom and all(c in _ATEXT or (not c.isascii() and c.isprintable()) for c in atom)
        for atom in local.split(".")
    )


def valid_mailbox(path: str, *, allow_postmaster: bool) -> bool:
    """Check an RFC 5321 Path (without brackets), allowing an obsolete source route."""
    if path.startswith("@"):
        route, colon, path = path.partition(":")
        if not colon or not all(
            hop.startswith("@") and _valid_domain(hop[1:]) for hop in route.split(",")
        ):
            return False
    if allow_postmaster and path.lower() == "postmaster":
        return True
    local, at, domain = path.rpartition("@")
    return bool(at) and _valid_local_part(local) and _valid_domain(domain)


def parse_params(
    text: str, known: Mapping[str, str], offered: frozenset[str]
) -> tuple[tuple[str, ...], dict[str, str | None]]:
    """Parse ESMTP parameters into (as sent, {KEY: value}); raise Refuse if invalid.

    *known* maps each parameter to the extension keyword that must be among *offered*.
    """
    if not text:
        return (), {}
    if not text.startswith(" "):
        raise Refuse(501, "5.5.4", "Syntax: expected a space after the path")
    items = tuple(text[1:].split(" "))
    parsed: dict[str, str | None] = {}
    for item in items:
        key, equals, value = item.partition("=")
        key = key.upper()
        if not KEYWORD_RE.fullmatch(key) or (equals and not _PARAM_VALUE_RE.fullmatch(value)):
            raise Refuse(501, "5.5.4", f"Invalid parameter syntax: {item[:40]}")
        if key in parsed:
            raise Refuse(501, "5.5.4", f"Duplicate parameter {key}")
        extension = known.get(key)
        is_offered = extension in offered or (key == "BODY" and "BINARYMIME" in offered)
        if not is_offered:
            raise Refuse(555, "5.5.4", f"Parameter {key} not recognized")
        parsed[key] = value if equals else None
    return items, parsed
