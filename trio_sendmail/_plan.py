"""What a transaction will send, decided before anything is sent.

Theory of operation
-------------------
:func:`plan` is a pure function of the server's capabilities (its last EHLO
reply), the session's settings and the message. It picks DATA or BDAT
(RFC 3030), the MAIL parameters (``BODY=`` from RFC 6152 and RFC 3030,
``SIZE=`` from RFC 1870 §4, ``SMTPUTF8`` from RFC 6531 §3.4, DSN's ``RET`` and
``ENVID`` from RFC 3461 §4, ``REQUIRETLS`` from RFC 8689 §4.1), and refuses a
message that the server cannot take, with
:class:`~trio_sendmail.SMTPNotSupportedError` (or
:class:`~trio_sendmail.SMTPMessageTooLarge`), before a byte of it is written.
"""

from __future__ import annotations

import attrs

from ._address import ForwardPath, ReversePath
from ._capabilities import Capabilities
from ._data import measure
from ._dsn import DSN
from ._errors import SMTPMessageTooLarge, SMTPNotSupportedError
from ._message import MailBody

__all__ = ["NO_OPTIONS", "Options", "Plan", "PlanMemo", "message_options", "plan"]


@attrs.frozen
class Options:
    """The per-message extensions a caller asked for."""

    dsn: DSN | None = None
    requiretls: bool = False
    binary: bool = False


NO_OPTIONS = Options()


def message_options(dsn: DSN | None, requiretls: bool, binary: bool) -> Options:
    """The :class:`Options` of the ``dsn``, ``requiretls`` and ``binary``
    keywords that every send takes (:data:`NO_OPTIONS` when none is set)."""
    if dsn is None and not requiretls and not binary:
        return NO_OPTIONS
    return Options(dsn, requiretls, binary)


@attrs.frozen
class Plan:
    """The decisions for one transaction."""

    mail_params: list[str]
    dsn: DSN | None
    #: Send the body with BDAT (CHUNKING) instead of DATA.
    chunking: bool
    #: ``BODY=BINARYMIME``: the octets go as they are.
    binary: bool
    #: The whole message has only CRLF line endings: no need to normalise it.
    clean: bool = False
    #: The size of a whole message on the wire (CRLF line endings, before any
    #: dot-stuffing); ``None`` for a stream.
    size: int | None = None

    def rcpt_params(self, path: ForwardPath) -> list[str]:
        return self.dsn.rcpt_params(path) if self.dsn is not None else []


class PlanMemo:
    """What :func:`plan` learned once for a session: the capabilities it
    reads (looked up again only when they change, after EHLO) and the MAIL
    parameters that depend on the addresses' SMTPUTF8 alone, when no
    per-message option is set (a bulk run plans the same envelope over and
    over). A failed plan is never remembered."""

    __slots__ = ("caps", "flags", "tails", "tls", "use_chunking")

    def __init__(self) -> None:
        self.caps: Capabilities | None = None
        self.tls = False
        self.use_chunking = False
        self.flags: tuple[bool, bool, bool, int | None, bool] = (False, False, False, None, False)
        #: needs SMTPUTF8 → the parameters after BODY= and SIZE= (NO_OPTIONS only).
        self.tails: dict[bool, tuple[str, ...]] = {}


def _flags(caps: Capabilities) -> tuple[bool, bool, bool, int | None, bool]:
    """CHUNKING, BINARYMIME (with CHUNKING), 8BITMIME, the SIZE limit, SIZE offered."""
    return (
        caps.chunking,
        caps.chunking and "BINARYMIME" in caps,
        caps.eightbitmime,
        caps.size_limit,
        "SIZE" in caps,
    )


def plan(
    caps: Capabilities,
    *,
    tls: bool,
    use_chunking: bool,
    sender: ReversePath,
    recipients: list[ForwardPath],
    body: MailBody,
    options: Options,
    memo: PlanMemo | None = None,
) -> Plan:
    """Decide the transaction's parameters; raise before anything is sent.

    Args:
        caps: what the server announced.
        tls: the session runs TLS (REQUIRETLS needs it).
        use_chunking: the caller allows BDAT when the server offers CHUNKING.
        memo: the session's :class:`PlanMemo` (the same decisions, made once).
    """
    if memo is None:
        flags = _flags(caps)
    elif memo.caps is caps and memo.tls is tls and memo.use_chunking is use_chunking:
        flags = memo.flags
    else:
        flags = memo.flags = _flags(caps)
        memo.caps, memo.tls, memo.use_chunking = caps, tls, use_chunking
        memo.tails = {}
    offers_chunking, offers_binarymime, eightbitmime, limit, offers_size = flags
    chunking = use_chunking and offers_chunking
    params: list[str] = []
    clean = False
    size: int | None = None
    data = body.data
    if options.binary:
        if not offers_binarymime:
            raise SMTPNotSupportedError(
                "binary=True needs CHUNKING and BINARYMIME (RFC 3030), "
                "which the server does not offer"
            )
        chunking = True
        params.append("BODY=BINARYMIME")
    elif data is not None:
        if not data.isascii():
            if not eightbitmime:
                raise SMTPNotSupportedError(
                    "the message has 8-bit bytes and the server does not offer 8BITMIME "
                    "(encode it as 7-bit, e.g. with base64 or quoted-printable)"
                )
            params.append("BODY=8BITMIME")
    elif eightbitmime:
        # A stream of unknown content: declaring 8BITMIME is always safe.
        params.append("BODY=8BITMIME")
    if data is not None:
        if options.binary:
            size = len(data)
        else:
            size, clean = measure(data)
        if limit is not None and size > limit:
            raise SMTPMessageTooLarge(
                f"the message is {size} bytes; the server accepts at most {limit}",
                size=size,
                limit=limit,
            )
        if offers_size:
            params.append(f"SIZE={size}")
    utf8 = sender._utf8  # needs_smtputf8, without a call
    if not utf8:
        for path in recipients:
            if path._utf8:
                utf8 = True
                break
    if memo is not None and options is NO_OPTIONS:
        tail = memo.tails.get(utf8)
        if tail is None:
            tail = memo.tails[utf8] = _tail(caps, tls, utf8, options)
    else:
        tail = _tail(caps, tls, utf8, options)
    params.extend(tail)
    return Plan(params, options.dsn, chunking, options.binary, clean, size)


def _tail(caps: Capabilities, tls: bool, utf8: bool, options: Options) -> tuple[str, ...]:
    """The MAIL parameters after ``BODY=`` and ``SIZE=``; raises when the
    server cannot take them."""
    params: list[str] = []
    if utf8:
        if not caps.smtputf8:
            raise SMTPNotSupportedError(
                "a non-ASCII address needs SMTPUTF8, which the server does not offer"
            )
        params.append("SMTPUTF8")
    if options.dsn is not None:
        if not caps.dsn:
            raise SMTPNotSupportedError("DSN options were given; the server lacks DSN")
        params.extend(options.dsn.mail_params())
    if options.requiretls:
        if not tls:
            raise SMTPNotSupportedError("REQUIRETLS needs a session that runs TLS")
        if "REQUIRETLS" not in caps:
            raise SMTPNotSupportedError("the server does not offer REQUIRETLS (RFC 8689)")
        params.append("REQUIRETLS")
    return tuple(params)
