"""Delivery status notification options (RFC 3461) and xtext encoding.

Theory of operation
-------------------
RFC 3461 adds ``RET=`` and ``ENVID=`` to MAIL FROM (§4.3, §4.4) and
``NOTIFY=`` and ``ORCPT=`` to RCPT TO (§4.1, §4.2). ``ENVID`` and ``ORCPT``
values are *xtext* (§4): every octet outside ``!``…``~``, and ``+`` and
``=``, becomes ``+HH``. An ``ORCPT`` of a non-ASCII address uses RFC 6533's
``utf-8`` type, whose ``utf-8-addr-xtext`` escapes ``+``, ``=``, ``\\``,
controls and (in the all-ASCII form used here) every non-ASCII character as
``\\x{HEX}``. The options are validated when built, so nothing malformed
reaches the wire.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import attrs

from ._address import ForwardPath
from ._errors import SMTPInputError

__all__ = ["DSN", "DSNNotify", "DSNReturn", "xtext"]

#: RFC 3461 §4.4: ENVID is at most 100 characters.
MAX_ENVID = 100


class DSNReturn(enum.Enum):
    """``RET=``: what a failure report carries back (RFC 3461 §4.3)."""

    FULL = "FULL"  #: the whole message
    HEADERS = "HDRS"  #: only the headers


class DSNNotify(enum.Enum):
    """``NOTIFY=`` conditions (RFC 3461 §4.1)."""

    NEVER = "NEVER"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    DELAY = "DELAY"


def xtext(text: str) -> str:
    """Encode *text* as RFC 3461 §4 xtext (UTF-8 octets outside ``!``…``~``
    and ``+``, ``=`` become ``+HH``)."""
    out = []
    for byte in text.encode("utf-8"):
        if 0x21 <= byte <= 0x7E and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def _utf8_addr_xtext(text: str) -> str:
    """RFC 6533 §3 utf-8-addr-xtext, in its all-ASCII form: every non-ASCII
    character, and ``+``, ``=``, ``\\`` and controls, become ``\\x{HEX}``."""
    out = []
    for ch in text:
        if ch in "+=\\" or not (0x21 <= ord(ch) <= 0x7E):
            out.append(f"\\x{{{ord(ch):X}}}")
        else:
            out.append(ch)
    return "".join(out)


def _notify(value: Iterable[DSNNotify | str] | None) -> frozenset[DSNNotify] | None:
    if value is None:
        return None
    if isinstance(value, str | DSNNotify):
        value = [value]
    try:
        flags = frozenset(DSNNotify(v.upper() if isinstance(v, str) else v) for v in value)
    except ValueError as exc:
        raise SMTPInputError(f"invalid DSN NOTIFY condition: {exc}") from exc
    if not flags:
        raise SMTPInputError("DSN notify must name at least one condition")
    if DSNNotify.NEVER in flags and len(flags) > 1:
        raise SMTPInputError("DSN NOTIFY=NEVER cannot be combined with other conditions")
    return flags


def _envid(value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise SMTPInputError("DSN envid must be a non-empty str")
    if not value.isascii() or any(not (" " <= c <= "~") for c in value):
        raise SMTPInputError("DSN envid must be printable ASCII (RFC 3461 §4.4)")
    if len(value) > MAX_ENVID:
        raise SMTPInputError(f"DSN envid is longer than {MAX_ENVID} characters")
    return value


@attrs.frozen
class DSN:
    """Delivery status notification options for one message (RFC 3461).

    Args:
        ret: ``RET=`` on MAIL: :attr:`DSNReturn.FULL` or :attr:`DSNReturn.HEADERS`.
        envid: ``ENVID=`` on MAIL: your identifier for the transaction, returned in
            reports (printable ASCII, at most 100 characters; xtext-encoded).
        notify: ``NOTIFY=`` on each RCPT: ``{"NEVER"}``, or any of ``SUCCESS``,
            ``FAILURE``, ``DELAY`` (strings or :class:`DSNNotify`).
        orcpt: send ``ORCPT=rfc822;<address>`` (``utf-8;`` for a non-ASCII one) with
            each RCPT, so that reports name the address as you gave it.

    Raises:
        SMTPInputError: an invalid combination (e.g. NEVER with SUCCESS).
    """

    ret: DSNReturn | None = attrs.field(
        default=None, converter=attrs.converters.optional(DSNReturn)
    )
    envid: str | None = attrs.field(default=None, converter=_envid)
    notify: frozenset[DSNNotify] | None = attrs.field(default=None, converter=_notify)
    orcpt: bool = False

    def mail_params(self) -> list[str]:
        """The MAIL FROM parameters."""
        params = []
        if self.ret is not None:
            params.append(f"RET={self.ret.value}")
        if self.envid is not None:
            params.append(f"ENVID={xtext(self.envid)}")
        return params

    def rcpt_params(self, path: ForwardPath) -> list[str]:
        """The RCPT TO parameters for *path*."""
        params = []
        if self.notify is not None:
            order = [n for n in DSNNotify if n in self.notify]
            params.append("NOTIFY=" + ",".join(n.value for n in order))
        if self.orcpt and path.mailbox is not None:
            address = str(path.mailbox)
            if address.isascii():
                params.append(f"ORCPT=rfc822;{xtext(address)}")
            else:
                params.append(f"ORCPT=utf-8;{_utf8_addr_xtext(address)}")
        return params
