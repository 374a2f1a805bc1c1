"""What a message can be given as, and how it is read.

A message is ``bytes`` (or any bytes-like object), an
:class:`email.message.EmailMessage` (any :class:`email.message.Message`), or a
stream of bytes-like chunks: a :class:`trio.MemoryReceiveChannel` (``sendmail-lwt``'s
``unit -> (string * int * int) option Lwt.t``) or any async iterable. A whole
message lets the session declare ``SIZE=`` and know up front whether it holds
8-bit bytes; a stream is read one chunk at a time, so memory stays bounded
whatever its length.

An :class:`email.message.Message` is serialised here, once, and it is the only
form whose headers the library reads:

* **Blind copies stay blind** (RFC 5322 §3.6.3, §3.6.6). ``Bcc`` and
  ``Resent-Bcc`` are removed from the bytes that go out, as
  :meth:`smtplib.SMTP.send_message` does; the caller's object is not changed
  (a shallow copy loses the fields). Bytes and streams are sent exactly as
  given: their headers are never parsed or edited.
* **The envelope from the headers** (:func:`header_sender`,
  :func:`header_recipients`), when the caller gives no ``sender`` or no
  ``recipients``. The recipients are the addresses of ``To``, ``Cc`` and
  ``Bcc``; the sender is ``Sender`` when present, else the one mailbox of
  ``From`` (RFC 5322 §3.6.2). When the message was resent (one ``Resent-Date``
  block, RFC 5322 §3.6.6), the ``Resent-`` fields are read instead, as smtplib
  does; several ``Resent-`` blocks are ambiguous and refused.
"""

from __future__ import annotations

import contextlib
import copy
import email.message
import re
from collections.abc import AsyncIterable, AsyncIterator
from email.errors import HeaderMissingRequiredValue, InvalidHeaderDefect
from email.headerregistry import Address, HeaderRegistry
from typing import TypeAlias

import attrs

from ._errors import Outcome, SMTPInputError

__all__ = [
    "Mail",
    "MailBody",
    "OneShotStream",
    "close_early",
    "header_recipients",
    "header_sender",
    "message_bytes",
    "prepare_mail",
]

#: What ``mail=`` accepts.
Mail: TypeAlias = (
    bytes
    | bytearray
    | memoryview
    | email.message.Message
    | AsyncIterable[bytes | bytearray | memoryview]
)


@attrs.frozen
class MailBody:
    """A message ready to be sent: either all of it, or a stream of chunks."""

    #: The whole message, when known in advance.
    data: bytes | None = None
    #: The chunks, for a streamed message.
    chunks: AsyncIterable[bytes | bytearray | memoryview] | None = None


def prepare_mail(mail: Mail) -> MailBody:
    """Classify *mail*; raises :class:`TypeError` for anything else (before any I/O)."""
    if isinstance(mail, bytes):
        return MailBody(data=mail)
    if isinstance(mail, bytearray | memoryview):
        # A private copy: the caller may reuse its buffer while we send.
        return MailBody(data=bytes(memoryview(mail).cast("B")))
    if isinstance(mail, email.message.Message):
        return MailBody(data=message_bytes(mail))
    if isinstance(mail, str):
        raise TypeError("mail must be bytes, not str: encode the message first")
    if isinstance(mail, AsyncIterable):
        return MailBody(chunks=mail)
    raise TypeError(
        "mail must be bytes, an email.message.EmailMessage, or an async iterable of "
        f"bytes (such as a trio.MemoryReceiveChannel), not {type(mail).__name__}"
    )


#: The fields that name blind recipients: never sent (RFC 5322 §3.6.3, §3.6.6).
_BLIND_FIELDS = ("Bcc", "Resent-Bcc")


def message_bytes(message: email.message.Message) -> bytes:
    """*message* serialised with CRLF line endings, without ``Bcc`` and
    ``Resent-Bcc`` (the caller's *message* is left as it is)."""
    if any(name in message for name in _BLIND_FIELDS):
        # A shallow copy: deleting a field gives the copy a new list of fields
        # and leaves the caller's list (and the shared payload) untouched.
        message = copy.copy(message)
        for name in _BLIND_FIELDS:
            del message[name]
    policy = message.policy.clone(linesep="\r\n")
    return message.as_bytes(policy=policy)


#: Parses the address fields (the default policy's registry).
_HEADERS = HeaderRegistry()
#: A line break that folds a field (RFC 5322 §2.2.3).
_FOLD = re.compile(r"\r?\n(?=[ \t])")


def _input_error(text: str) -> SMTPInputError:
    error = SMTPInputError(text)
    error.outcome = Outcome.NOT_SENT
    return error


def _resent_prefix(message: email.message.Message) -> str:
    """``"Resent-"`` when the message was resent once, else ``""``."""
    blocks = message.get_all("Resent-Date") or []
    if len(blocks) > 1:
        raise _input_error(
            "the message has several Resent- blocks: give sender= and recipients= explicitly"
        )
    return "Resent-" if blocks else ""


def _addresses(message: email.message.Message, name: str) -> list[Address]:
    """The mailboxes of every *name* field (groups opened, empty groups skipped)."""
    found: list[Address] = []
    for value in message.get_all(name) or []:
        # Parsed again from its unfolded text (RFC 5322 §2.2.3), whatever the
        # message's policy made of it: a compat32 message keeps the raw string,
        # a modern one the decoded text, and both parse to the same addresses.
        text = _FOLD.sub("", str(value))
        try:
            header = _HEADERS(name, text)
        except Exception as exc:
            # A line break left in an address (ValueError), HeaderParseError,
            # or one of the parser's own bugs on malformed text (AttributeError).
            raise _input_error(
                f"cannot read the addresses of the message's {name} field {text!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        bad = [
            defect
            for defect in header.defects
            if isinstance(defect, InvalidHeaderDefect | HeaderMissingRequiredValue)
        ]
        addresses: tuple[Address, ...] = getattr(header, "addresses", ())
        if bad or any(address.addr_spec in ("", "<>") for address in addresses):
            raise _input_error(
                f"cannot read the addresses of the message's {name} field {text!r}: "
                f"{bad[0] if bad else 'an empty address'}"
            )
        found.extend(addresses)
    return found


def header_recipients(message: email.message.Message) -> list[Address]:
    """The recipients named by *message*'s ``To``, ``Cc`` and ``Bcc`` fields
    (or ``Resent-To``, ``Resent-Cc`` and ``Resent-Bcc`` when it was resent).

    Raises:
        SMTPInputError: a field cannot be read, several ``Resent-`` blocks,
            or no recipient at all.
    """
    prefix = _resent_prefix(message)
    names = [prefix + name for name in ("To", "Cc", "Bcc")]
    found = [address for name in names for address in _addresses(message, name)]
    if not found:
        raise _input_error(
            f"no recipients given, and the message has none in its {', '.join(names)} "
            "fields: pass recipients="
        )
    return found


def header_sender(message: email.message.Message) -> Address:
    """The sender named by *message*: its ``Sender`` field, else the one mailbox
    of its ``From`` field (``Resent-Sender``/``Resent-From`` when it was resent).

    Raises:
        SMTPInputError: a field cannot be read, several ``Resent-`` blocks,
            no ``From``, or a ``From`` with several mailboxes and no ``Sender``.
    """
    prefix = _resent_prefix(message)
    for name in (prefix + "Sender", prefix + "From"):
        addresses = _addresses(message, name)
        if len(addresses) == 1:
            return addresses[0]
        if addresses:
            raise _input_error(
                f"the message's {name} field names {len(addresses)} mailboxes and no "
                f"{prefix}Sender field says which one sends it: pass sender="
            )
    raise _input_error(f"no sender given, and the message has no {prefix}From field: pass sender=")


async def close_early(iterator: AsyncIterator[object]) -> None:
    """Let a caller's async iterator clean up after we stopped reading it early:
    an async generator runs its ``finally`` blocks, a memory channel's
    producers learn that nobody reads any more. Its own errors are ignored."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


class OneShotStream:
    """Wraps a message stream and notes whether anything began to read it: a
    stream can be sent once, so a message is sent again only if it was not."""

    __slots__ = ("_chunks", "started")

    def __init__(self, chunks: AsyncIterable[bytes | bytearray | memoryview]) -> None:
        self._chunks = chunks
        self.started = False

    def __aiter__(self) -> AsyncIterator[bytes | bytearray | memoryview]:
        self.started = True
        return aiter(self._chunks)
