"""Reading RFC 5322 messages for the command line: envelope from headers, Bcc removal,
and the header fields a ``sendmail`` adds.

The message is sent byte for byte as read, except for the ``Bcc`` header fields,
which are cut out of the raw header block (the library still normalises line
endings and stuffs dots on the wire), and, for ``send``, the ``Date:``,
``Message-ID:`` and ``From:`` fields added when they are missing
(:func:`add_missing_headers`; RFC 5322 §3.6 requires ``Date`` and ``From``, and
RFC 6409 §8 lets a submission agent add ``Date`` and ``Message-ID``). The headers
are parsed only to find the envelope: the recipients in ``To``/``Cc``/``Bcc`` and
the sender in ``From``.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from email.message import EmailMessage

import attrs

from .. import ForwardPath

__all__ = [
    "ParsedMessage",
    "add_missing_headers",
    "forward_paths",
    "from_field",
    "header_recipients",
    "header_sender",
    "is_unqualified",
    "parse_message",
    "qualify",
    "strip_headers",
    "unique",
]

#: The header fields whose addresses are recipients (``sendmail -t``).
RECIPIENT_HEADERS = ("To", "Cc", "Bcc")
#: Removed before sending: the other recipients must not see them.
HIDDEN_HEADERS = frozenset({"bcc", "resent-bcc"})


#: A header field's first line: a field name (RFC 5322 §3.6.8 ftext) and a colon.
_FIELD_START = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")


def _split_header_block(raw: bytes) -> tuple[list[bytes], bytes]:
    """The header lines (with their line endings) and the rest from the empty line on."""
    lines = raw.splitlines(keepends=True)
    headers: list[bytes] = []
    offset = 0
    for line in lines:
        if line in (b"\r\n", b"\n"):
            break
        headers.append(line)
        offset += len(line)
    return headers, raw[offset:]


def _field_names(raw: bytes) -> set[str]:
    """The lower-case names of the header fields of *raw*."""
    headers, _ = _split_header_block(raw)
    names = set()
    for line in headers:
        match = _FIELD_START.match(line)
        if match is not None:
            names.add(match[0][:-1].strip().decode("ascii").lower())
    return names


def from_field(address: str, full_name: str | None) -> str:
    """``Full Name <address>`` (the name quoted when it must be), or the bare address."""
    if not full_name:
        return address
    # An encoded word (RFC 2047) for a name that is not ASCII; quotes when needed.
    return email.utils.formataddr((full_name, address), charset="utf-8")


def add_missing_headers(
    raw: bytes,
    *,
    sender: str,
    full_name: str | None,
    id_domain: str,
    now: float | None = None,
) -> bytes:
    """*raw* with ``Date:``, ``Message-ID:`` and ``From:`` added when missing, as
    Postfix's ``sendmail`` and msmtp do.

    The new fields go at the end of the header block, with the message's own line
    ending. A message whose first line is not a header field has no header block:
    the fields and an empty line are put before it. ``From:`` is *full_name* and
    *sender*; ``Message-ID:`` is random, on *id_domain*.
    """
    names = _field_names(raw)
    newline = b"\r\n" if raw.split(b"\n", 1)[0].endswith(b"\r") else b"\n"
    added: list[str] = []
    if "date" not in names:
        added.append("Date: " + email.utils.formatdate(now, localtime=True))
    if "message-id" not in names:
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
        added.append(f"Message-ID: <{stamp}.{secrets.token_hex(8)}@{id_domain}>")
    if "from" not in names and sender not in ("", "<>"):  # a bounce has its own From
        added.append("From: " + from_field(sender, full_name))
    if not added:
        return raw
    block = b"".join(field.encode("utf-8") + newline for field in added)
    headers, rest = _split_header_block(raw)
    if not headers or _FIELD_START.match(headers[0]) is None:
        return block + newline + raw
    head = b"".join(headers)
    if not head.endswith(b"\n"):  # a header block cut short by the end of the input
        head += newline
    return head + block + rest


def qualify(address: str, domain: str | None) -> str:
    """*address* with ``@domain`` added when it has no domain (``root`` → ``root@domain``)."""
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if domain is None or not address or "@" in address or address.lower() == "postmaster":
        return address
    return f"{address}@{domain}"


def is_unqualified(address: str) -> bool:
    """Whether *address* is a bare local part, such as ``root``."""
    return "@" not in address.strip("<>")


def forward_paths(recipients: Sequence[str]) -> list[ForwardPath | str]:
    """Bare local names go out as ``<root>``, for the server to complete (RFC 6409
    §6.2); the others as they are (the library checks them)."""
    return [
        ForwardPath.unqualified(address.strip("<>")) if is_unqualified(address) else address
        for address in recipients
    ]


def unique(addresses: Sequence[str]) -> list[str]:
    """*addresses* in order, without duplicates."""
    return list(dict.fromkeys(addresses))


def strip_headers(raw: bytes, names: Iterable[str] = HIDDEN_HEADERS) -> bytes:
    """Remove every field called one of *names* (any case), continuation lines included."""
    drop = {name.lower() for name in names}
    headers, rest = _split_header_block(raw)
    kept: list[bytes] = []
    dropping = False
    for line in headers:
        if line[:1] in (b" ", b"\t"):  # a folded continuation of the field above
            if not dropping:
                kept.append(line)
            continue
        name, colon, _ = line.partition(b":")
        dropping = bool(colon) and name.strip().decode("ascii", "replace").lower() in drop
        if not dropping:
            kept.append(line)
    return b"".join(kept) + rest


def _parse_headers(raw: bytes) -> EmailMessage:
    headers, _ = _split_header_block(raw)
    text = b"".join(headers).decode("utf-8", "replace")
    parser = email.parser.Parser(_class=EmailMessage, policy=email.policy.default)
    message = parser.parsestr(text, headersonly=True)
    assert isinstance(message, EmailMessage)
    return message


def _field_addresses(name: str, value: str) -> list[str]:
    """The addr-specs in one address field; the stdlib's parser can raise on
    malformed input, so fall back to the lenient :func:`email.utils.getaddresses`."""
    value = "".join(value.splitlines())  # unfold
    try:
        header = email.policy.default.header_factory(name, value)
        addresses = [address.addr_spec for address in getattr(header, "addresses", ())]
    except Exception:  # a malformed field: any parser error
        addresses = [address for _, address in email.utils.getaddresses([value])]
    return [address for address in addresses if address and address != "<>"]


def _addresses(message: EmailMessage, names: Iterable[str]) -> list[str]:
    wanted = {name.lower() for name in names}
    found: list[str] = []
    for name, value in message.raw_items():
        if name.lower() in wanted:
            found.extend(_field_addresses(name, str(value)))
    return found


def _resent(message: EmailMessage) -> str:
    """``"Resent-"`` when the message was resent (RFC 5322 §3.6.6: its ``Resent-``
    fields say where it goes now, as sendmail -t and smtplib read them), else ``""``."""
    return "Resent-" if message.get_all("Resent-Date") or message.get_all("Resent-To") else ""


def header_recipients(message: EmailMessage) -> list[str]:
    """The addresses in To, Cc and Bcc (the Resent- ones for a resent message), in
    order, without duplicates."""
    prefix = _resent(message)
    names = [prefix + name for name in RECIPIENT_HEADERS]
    return list(dict.fromkeys(_addresses(message, names)))


def header_sender(message: EmailMessage) -> str | None:
    """The From address; the Sender address when From names several; else ``None``
    (the Resent- ones for a resent message)."""
    prefix = _resent(message)
    senders = _addresses(message, [prefix + "From"])
    if len(senders) == 1:
        return senders[0]
    fallback = _addresses(message, [prefix + "Sender"])
    return fallback[0] if len(fallback) == 1 else None


@attrs.frozen
class ParsedMessage:
    """A message read from a file: what to send, and what its headers say."""

    #: The bytes to send (Bcc removed).
    data: bytes = attrs.field(repr=False)
    #: Recipients named in To/Cc/Bcc.
    recipients: tuple[str, ...]
    #: The From (or Sender) address, if there is exactly one.
    sender: str | None
    #: The Message-ID header, or "".
    message_id: str


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse the header block of *raw* and remove its Bcc fields."""
    headers = _parse_headers(raw)
    message_id = next(
        (" ".join(str(v).split()) for k, v in headers.raw_items() if k.lower() == "message-id"),
        "",
    )
    return ParsedMessage(
        data=strip_headers(raw),
        recipients=tuple(header_recipients(headers)),
        sender=header_sender(headers),
        message_id=message_id,
    )
