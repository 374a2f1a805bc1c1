"""Reading RFC 5322 messages for the command line: envelope from headers, Bcc removal.

The message is sent byte for byte as read, except for the ``Bcc`` header fields,
which are cut out of the raw header block (the library still normalises line
endings and stuffs dots on the wire). The headers are parsed only to find the
envelope: the recipients in ``To``/``Cc``/``Bcc`` and the sender in ``From``.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
from collections.abc import Iterable
from email.message import EmailMessage

import attrs

__all__ = [
    "ParsedMessage",
    "header_recipients",
    "header_sender",
    "parse_message",
    "strip_headers",
]

#: The header fields whose addresses are recipients (``sendmail -t``).
RECIPIENT_HEADERS = ("To", "Cc", "Bcc")
#: Removed before sending: the other recipients must not see them.
HIDDEN_HEADERS = frozenset({"bcc"})


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


def header_recipients(message: EmailMessage) -> list[str]:
    """The addresses in To, Cc and Bcc, in order, without duplicates."""
    return list(dict.fromkeys(_addresses(message, RECIPIENT_HEADERS)))


def header_sender(message: EmailMessage) -> str | None:
    """The From address; the Sender address when From names several; else ``None``."""
    senders = _addresses(message, ["From"])
    if len(senders) == 1:
        return senders[0]
    fallback = _addresses(message, ["Sender"])
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
