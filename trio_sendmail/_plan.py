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

__all__ = ["NO_OPTIONS", "Options", "Plan", "message_options", "plan"]


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


def plan(
    caps: Capabilities,
    *,
    tls: bool,
    use_chunking: bool,
    sender: ReversePath,
    recipients: list[ForwardPath],
    body: MailBody,
    options: Options,
) -> Plan:
    """Decide the transaction's parameters; raise before anything is sent.

    Args:
        caps: what the server announced.
        tls: the session runs TLS (REQUIRETLS needs it).
        use_chunking: the caller allows BDAT when the server offers CHUNKING.
    """
    chunking = use_chunking and caps.chunking
    params: list[str] = []
    clean = False
    size: int | None = None
    data = body.data
    if options.binary:
        if not (caps.chunking and "BINARYMIME" in caps):
            raise SMTPNotSupportedError(
                "binary=True needs CHUNKING and BINARYMIME (RFC 3030), "
                "which the server does not offer"
            )
        chunking = True
        params.append("BODY=BINARYMIME")
    elif data is not None:
        if not data.isascii():
            if not caps.eightbitmime:
                raise SMTPNotSupportedError(
                    "the message has 8-bit bytes and the server does not offer 8BITMIME "
                    "(encode it as 7-bit, e.g. with base64 or quoted-printable)"
                )
            params.append("BODY=8BITMIME")
    elif caps.eightbitmime:
        # A stream of unknown content: declaring 8BITMIME is always safe.
        params.append("BODY=8BITMIME")
    if data is not None:
        if options.binary:
            size = len(data)
        else:
            size, clean = measure(data)
        limit = caps.size_limit
        if limit is not None and size > limit:
            raise SMTPMessageTooLarge(
                f"the message is {size} bytes; the server accepts at most {limit}",
                size=size,
                limit=limit,
            )
        if "SIZE" in caps:
            params.append(f"SIZE={size}")
    if sender.needs_smtputf8 or any(f.needs_smtputf8 for f in recipients):
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
    return Plan(params, options.dsn, chunking, options.binary, clean, size)
