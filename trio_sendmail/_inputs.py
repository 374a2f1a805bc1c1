"""Checks of the caller's arguments that need no connection (pure functions).

Everything here runs before any I/O: a caller mistake (a malformed address, an
empty recipient list, a ``str`` message, an EHLO name that has no ASCII form)
must raise before the connection is opened, the TLS handshake done or the
credentials sent (docs/errors.rst: "raised before any I/O").

This module does not import the core or trio: the session driver, the core and
the one-shot functions all call it, so it must sit below them.
"""

from __future__ import annotations

import email.message
import ipaddress
import re
from collections.abc import Iterable
from email.headerregistry import Address
from typing import Final, TypeAlias, TypeVar

import idna

from ._address import (
    Domain,
    ForwardPath,
    Mailbox,
    ReversePath,
    _parse_forward_path,
    _parse_reverse_path,
    domain,
    forward_path,
    reverse_path,
)
from ._errors import Outcome, SMTPInputError
from ._message import Mail, MailBody, header_recipients, header_sender, prepare_mail

__all__ = [
    "CONTROL_CHARACTER",
    "check_argument",
    "check_recipients",
    "ehlo_ascii",
    "envelope",
    "is_single_address",
    "mail_body",
    "message_envelope",
]

#: What a sender can be given as.
Sender: TypeAlias = ReversePath | Mailbox | str | Address
#: What one recipient can be given as.
Recipient: TypeAlias = ForwardPath | Mailbox | str | Address

#: What no command argument may hold (the same set as ``_core.check_argument``):
#: C0 and C1 controls, DEL, the Unicode line and paragraph separators, and BOM.
CONTROL_CHARACTER: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff]")


def check_argument(text: str, what: str, *, utf8: bool = False) -> None:
    """Refuse control characters (and non-ASCII unless *utf8*) in a command
    argument (RFC 5321 §2.3.8, §4.1.1): no CR/LF injection."""
    bad = CONTROL_CHARACTER.search(text)
    if bad is not None:
        raise SMTPInputError(f"{what} contains the control character {bad[0]!r}")
    if not utf8 and not text.isascii():
        raise SMTPInputError(f"{what} is not ASCII (it needs SMTPUTF8)")


#: Values that are one address, not an iterable of them.
_SINGLE_ADDRESS: Final = (str, bytes, bytearray, memoryview, Address, ForwardPath, Mailbox)

_R = TypeVar("_R")


def is_single_address(value: object) -> bool:
    """True when *value* is one address (or text, or bytes), not an iterable of them."""
    return isinstance(value, _SINGLE_ADDRESS)


def check_recipients(recipients: Iterable[_R]) -> Iterable[_R]:
    """Return *recipients* as they are, unless it is a single address.

    Raises:
        TypeError: *recipients* is a single address rather than an iterable of them.
    """
    if isinstance(recipients, _SINGLE_ADDRESS):  # is_single_address()
        raise TypeError("recipients must be an iterable of addresses, not a single address")
    return recipients


def envelope(
    sender: ReversePath | Mailbox | str | Address,
    recipients: Iterable[ForwardPath | Mailbox | str | Address],
) -> tuple[ReversePath, list[ForwardPath]]:
    """Check and coerce a message's envelope.

    Args:
        sender: the reverse-path (``""`` or ``"<>"`` for the null path).
        recipients: the forward-paths; read once (an iterator is fine).

    Returns:
        The reverse-path, and the forward-paths in order, each given once.

    Raises:
        SMTPAddressError: a malformed sender or recipient.
        SMTPInputError: *recipients* is empty.
        TypeError: *recipients* is a single address rather than an iterable of
            them, or an address has a wrong type.
    """
    # A path given as text (the usual case) goes straight to the cached parser.
    rpath = _parse_reverse_path(sender) if type(sender) is str else reverse_path(sender)
    fpaths = [
        _parse_forward_path(r) if type(r) is str else forward_path(r)
        for r in check_recipients(recipients)
    ]
    if len(fpaths) > 1:
        fpaths = list(dict.fromkeys(fpaths))  # duplicates are sent once
    elif not fpaths:
        raise SMTPInputError("at least one recipient is required")
    return rpath, fpaths


def message_envelope(
    sender: Sender | None, recipients: Iterable[Recipient] | None, mail: Mail | None
) -> tuple[Sender, Iterable[Recipient], Mail]:
    """The sender, recipients and message of a send: the sender and recipients
    given, or, for each one that is ``None``, the one that *mail*'s header
    fields name (see ``_message.py``).

    Raises:
        TypeError: *mail* is missing.
        SMTPInputError: the sender or the recipients are missing and *mail* is
            not an :class:`email.message.Message` (bytes and streams are sent as
            they are, their headers are never read), or its headers name none.
            The error's outcome is :attr:`Outcome.NOT_SENT`.
    """
    if mail is None:
        raise TypeError("a message is required (mail=)")
    if sender is not None and recipients is not None:
        return sender, recipients, mail
    if not isinstance(mail, email.message.Message):
        given = (("sender", sender), ("recipients", recipients))
        missing = " and ".join(name for name, value in given if value is None)
        error = SMTPInputError(
            f"{missing} must be given: only an email.message.Message has header fields "
            f"to take them from, and mail is a {type(mail).__name__}"
        )
        error.outcome = Outcome.NOT_SENT
        raise error
    if recipients is None:
        recipients = header_recipients(mail)
    if sender is None:
        sender = header_sender(mail)
    return sender, recipients, mail


def mail_body(mail: Mail) -> Mail:
    """Check *mail* and return it in the form to send: ``bytes`` for a whole
    message (an :class:`email.message.Message` is serialised here, once), or
    the async iterable itself for a stream.

    Raises:
        TypeError: *mail* is a ``str`` or anything else that is not a message.
    """
    body: MailBody = prepare_mail(mail)
    if body.data is not None:
        return body.data
    assert body.chunks is not None
    return body.chunks


def ehlo_ascii(name: Domain | str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The EHLO (or HELO) argument in ASCII.

    Whether the server speaks SMTPUTF8 is not known before EHLO, so U-labels
    become A-labels (RFC 5890; RFC 6531 §3.7.1), with IDNA 2008 (the ``idna``
    package, after UTS #46 case mapping): ``straße.de`` is
    ``xn--strae-oqa.de``, where the standard library's IDNA 2003 codec would
    give ``strasse.de``, another domain. Address literals and ASCII names are
    returned as they are.

    Args:
        name: the EHLO name: a :class:`Domain`, or anything :func:`domain` accepts.

    Returns:
        The wire form of the name, ASCII only.

    Raises:
        SMTPAddressError: *name* is not a valid domain or address literal.
        SMTPInputError: *name* holds a control character, or has no A-label form
            (IDNA refuses one of its labels).
        TypeError: *name* has another type.
    """
    text = str(domain(name))
    check_argument(text, "the EHLO domain", utf8=True)
    if text.isascii():
        return text
    try:
        return idna.encode(text, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        pass
    # Raised outside the handler: the codec's error adds nothing for the caller.
    raise SMTPInputError(f"cannot convert the EHLO domain {text!r} to A-labels")
