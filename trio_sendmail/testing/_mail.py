"""The mail transaction of a fake-server dialogue (MAIL, RCPT, DATA, BDAT), and its record."""

# Theory of operation
# -------------------
#
# A transaction (RFC 5321 §3.3) starts with MAIL, collects recipients with RCPT, and ends with
# the message content: DATA (§4.1.1.4) or, when CHUNKING is listed, BDAT chunks (RFC 3030). Only
# a 2xx reply to the end of the content records a ReceivedMessage on the server; every
# transaction is forgotten after its content, whatever the reply.
#
# The extensions are enforced as advertised in this session (see _syntax.parse_params):
# - RFC 1870 (SIZE): SIZE=n on MAIL is checked against the advertised limit, and so is the
#   actual size of the message after the content (552 5.3.4); an over-size DATA is read to its
#   end without being stored;
# - RFC 6152 (8BITMIME): BODY=7BIT/8BITMIME is accepted when advertised; an 8-bit body sent
#   without BODY=8BITMIME (or BINARYMIME) is accepted but counted in `undeclared_8bit`;
# - RFC 6531 (SMTPUTF8): UTF-8 addresses need the SMTPUTF8 MAIL parameter (else 553 5.6.7),
#   which in turn needs the extension to be advertised (else 555);
# - RFC 3030 (CHUNKING/BINARYMIME): BDAT with an exact octet count, read even when the command
#   fails (§2); BODY=BINARYMIME when "BINARYMIME" is listed too; no DATA after BDAT.
#
# LMTP (RFC 2033 §4.2): DATA without an accepted recipient gets 503, and the end of the content
# gets one reply per accepted recipient, in RCPT order (the server's lmtp_replies, else 250); the
# message is recorded with the recipients answered 2xx.
#
# The DATA terminator is exactly CRLF "." CRLF (or "." CRLF as the very first line), and
# transparency dots (§4.5.2) are removed only after a CRLF. A bare LF or bare CR never ends a
# line for the purpose of the terminator or of dot-unstuffing, so "\n.\n", "\r.\r\n" and
# friends arrive as message content (the SMTP-smuggling oracle), and every bare CR / bare LF is
# counted in `bare_line_endings` (for BDAT, on the whole message unless BODY=BINARYMIME: a CRLF
# may straddle two chunks).

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Final, Protocol

import attrs

from ._reader import Reader
from ._syntax import find_path, parse_params, valid_mailbox

__all__ = [
    "MailDialogue",
    "MailServer",
    "ReceivedMessage",
    "Transaction",
    "cmd_bdat",
    "cmd_data",
    "cmd_mail",
    "cmd_rcpt",
]

# ESMTP parameters and the extension keyword that must have been offered for each.
_MAIL_PARAMS: Final[Mapping[str, str]] = {
    "SIZE": "SIZE",
    "BODY": "8BITMIME",
    "SMTPUTF8": "SMTPUTF8",
    "AUTH": "AUTH",
    "RET": "DSN",
    "ENVID": "DSN",
    "REQUIRETLS": "REQUIRETLS",
    "MT-PRIORITY": "MT-PRIORITY",
}
_RCPT_PARAMS: Final[Mapping[str, str]] = {"NOTIFY": "DSN", "ORCPT": "DSN"}


@attrs.frozen
class ReceivedMessage:
    """One message that the fake server accepted (a 2xx reply to the end of data).

    Attributes:
        sender: The reverse-path as received, without the angle brackets; ``""`` for ``<>``.
        recipients: The accepted forward-paths, in order, without angle brackets. Refused
            recipients are not included.
        mail_options: The ESMTP parameters of the MAIL command exactly as sent, e.g.
            ``("SIZE=123", "BODY=8BITMIME")``.
        rcpt_options: The ESMTP parameters of each accepted RCPT command, keyed by recipient.
        data: The message as an MTA would store it: transparency dots removed, the final
            ``".\\r\\n"`` removed (so it normally ends with the last line's CRLF). For BDAT, the
            concatenated chunks. Only CRLF ends a line: a dot after a bare LF is kept.
        raw: The exact bytes received after the 354 reply, up to and including the final
            ``".\\r\\n"``. For BDAT, the concatenated chunks (same as *data*).
        tls: Whether the transaction happened over TLS (STARTTLS or implicit TLS).
        authenticated_as: The SASL authentication identity, or None.
        helo: The argument of the EHLO or HELO command in effect.
    """

    sender: str
    recipients: tuple[str, ...]
    mail_options: tuple[str, ...]
    rcpt_options: Mapping[str, tuple[str, ...]]
    data: bytes
    raw: bytes
    tls: bool
    authenticated_as: str | None
    helo: str


@attrs.define(eq=False)
class Transaction:
    sender: str
    mail_options: tuple[str, ...]
    smtputf8: bool
    body: str | None  # the BODY= value, upper-cased
    recipients: list[str] = attrs.field(factory=list)
    rcpt_options: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    chunks: bytearray | None = None  # BDAT data so far


class MailServer(Protocol):
    """What the mail transaction reads and records on the
    :class:`~trio_sendmail.testing.FakeSMTPServer` (which sits above this module)."""

    require_auth: bool
    refuse_senders: dict[str, tuple[int, str]]
    refuse_recipients: dict[str, tuple[int, str]]
    data_reply: tuple[int, str] | None
    lmtp: bool
    lmtp_replies: dict[str, tuple[int, str]]
    messages: list[ReceivedMessage]
    bare_line_endings: int
    undeclared_8bit: int

    @property
    def size_limit(self) -> int | None: ...

    def _next_queue_id(self) -> str: ...


class MailDialogue(Protocol):
    """What the mail transaction needs of the connection's dialogue
    (``_dialogue.Dialogue``, which sits above this module and calls it)."""

    tls: bool
    helo: str | None
    offered: frozenset[str]
    authenticated_as: str | None
    txn: Transaction | None

    @property
    def server(self) -> MailServer: ...

    @property
    def reader(self) -> Reader: ...

    def enhanced_status_codes(self) -> bool: ...

    def check_group_end(self, *, last: bool) -> None: ...

    async def send(self, code: int, text: str) -> None: ...

    async def send_many(self, replies: list[tuple[int, str]]) -> None: ...

    async def reply(self, code: int, status: str, text: str) -> None: ...


def _count_bare(piece: bytes | bytearray) -> int:
    crlf = piece.count(b"\r\n")
    return (piece.count(b"\r") - crlf) + (piece.count(b"\n") - crlf)


def _lookup(table: Mapping[str, tuple[int, str]], address: str) -> tuple[int, str] | None:
    folded = address.casefold()
    for key, reply in table.items():
        if key.casefold() == folded:
            return reply
    return None


async def cmd_mail(dialogue: MailDialogue, arg: str) -> bool:
    server = dialogue.server
    dialogue.check_group_end(last=False)
    if dialogue.txn is not None:
        await dialogue.reply(503, "5.5.1", "Nested MAIL command")
        return False
    if server.require_auth and dialogue.authenticated_as is None:
        await dialogue.reply(530, "5.7.0", "Authentication required")
        return False
    if arg[:5].upper() != "FROM:" or (found := find_path(arg[5:])) is None:
        await dialogue.reply(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
        return False
    path, rest = found
    if path and not valid_mailbox(path, allow_postmaster=False):
        await dialogue.reply(501, "5.1.7", "Bad sender address syntax")
        return False
    options, values = parse_params(rest, _MAIL_PARAMS, dialogue.offered)
    smtputf8 = "SMTPUTF8" in values
    if smtputf8 and values["SMTPUTF8"] is not None:
        await dialogue.reply(501, "5.5.4", "SMTPUTF8 takes no value")
        return False
    if not path.isascii() and not smtputf8:
        await dialogue.reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
        return False
    body = values.get("BODY")
    if "BODY" in values:
        allowed = {"7BIT"}
        if "8BITMIME" in dialogue.offered:
            allowed.add("8BITMIME")
        if "BINARYMIME" in dialogue.offered:
            allowed.add("BINARYMIME")
        body = (body or "").upper()
        if body not in allowed:
            await dialogue.reply(501, "5.5.4", "Invalid BODY value")
            return False
    if "SIZE" in values:
        declared = values["SIZE"]
        if declared is None or not declared.isdigit() or len(declared) > 20:
            await dialogue.reply(501, "5.5.4", "Invalid SIZE value")
            return False
        limit = server.size_limit
        if limit is not None and int(declared) > limit:
            await dialogue.reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
            return False
    refusal = _lookup(server.refuse_senders, path)
    if refusal is not None:
        await dialogue.send(*refusal)
        return False
    dialogue.txn = Transaction(sender=path, mail_options=options, smtputf8=smtputf8, body=body)
    await dialogue.reply(250, "2.1.0", "Ok")
    return False


async def cmd_rcpt(dialogue: MailDialogue, arg: str) -> bool:
    dialogue.check_group_end(last=False)
    txn = dialogue.txn
    if txn is None:
        await dialogue.reply(503, "5.5.1", "Need MAIL command")
        return False
    if arg[:3].upper() != "TO:" or (found := find_path(arg[3:])) is None:
        await dialogue.reply(501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]")
        return False
    path, rest = found
    if not valid_mailbox(path, allow_postmaster=True):
        await dialogue.reply(501, "5.1.3", "Bad recipient address syntax")
        return False
    options, _ = parse_params(rest, _RCPT_PARAMS, dialogue.offered)
    if not path.isascii() and not txn.smtputf8:
        await dialogue.reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
        return False
    refusal = _lookup(dialogue.server.refuse_recipients, path)
    if refusal is not None:
        await dialogue.send(*refusal)
        return False
    txn.recipients.append(path)
    txn.rcpt_options[path] = options
    await dialogue.reply(250, "2.1.5", "Ok")
    return False


async def _data_refusal(dialogue: MailDialogue) -> bool:
    """Reply and return True if a DATA/BDAT command cannot start now."""
    txn = dialogue.txn
    if txn is None:
        await dialogue.reply(503, "5.5.1", "Need MAIL command")
    elif not txn.recipients:
        if dialogue.server.lmtp:  # RFC 2033 §4.2
            await dialogue.reply(503, "5.5.1", "No valid recipients")
        else:
            await dialogue.reply(554, "5.5.1", "No valid recipients")
    else:
        return False
    return True


async def cmd_data(dialogue: MailDialogue, arg: str) -> bool:
    dialogue.check_group_end(last=True)
    if arg:
        await dialogue.reply(501, "5.5.4", "Syntax: DATA")
        return False
    if await _data_refusal(dialogue):
        return False
    txn = dialogue.txn
    assert txn is not None
    if txn.chunks is not None:
        await dialogue.reply(503, "5.5.1", "DATA after BDAT")
        return False
    await dialogue.send(354, "End data with <CR><LF>.<CR><LF>")
    server = dialogue.server
    limit = server.size_limit
    raw = bytearray()
    data = bytearray()
    size = 0
    eight_bit = False
    at_line_start = True
    while True:
        piece = await dialogue.reader.read_data_piece()
        if at_line_start and piece == b".\r\n":
            raw += piece
            break
        server.bare_line_endings += _count_bare(piece)
        eight_bit = eight_bit or not piece.isascii()
        unstuffed = piece[1:] if at_line_start and piece.startswith(b".") else piece
        size += len(unstuffed)
        if limit is None or size <= limit:
            raw += piece
            data += unstuffed
        at_line_start = piece.endswith(b"\r\n")
    await _finish_message(dialogue, bytes(data), bytes(raw), size, eight_bit=eight_bit)
    return False


async def cmd_bdat(dialogue: MailDialogue, arg: str) -> bool:
    if "CHUNKING" not in dialogue.offered:
        dialogue.check_group_end(last=False)
        await dialogue.reply(500, "5.5.2", "Command not recognized")
        return False
    words = arg.split(" ")
    if not 1 <= len(words) <= 2 or not words[0].isdigit() or len(words[0]) > 20:
        dialogue.check_group_end(last=False)
        await dialogue.reply(501, "5.5.4", "Syntax: BDAT size [LAST]")
        return False
    if len(words) == 2 and words[1].upper() != "LAST":
        dialogue.check_group_end(last=False)
        await dialogue.reply(501, "5.5.4", "Syntax: BDAT size [LAST]")
        return False
    last = len(words) == 2
    # RFC 3030 §2: the chunk is read even if the command is going to fail.
    chunk = await dialogue.reader.read_exactly(int(words[0]))
    dialogue.check_group_end(last=False)
    if await _data_refusal(dialogue):
        return False
    txn = dialogue.txn
    assert txn is not None
    if txn.chunks is None:
        txn.chunks = bytearray()
    txn.chunks += chunk
    limit = dialogue.server.size_limit
    too_big = limit is not None and len(txn.chunks) > limit
    if (too_big or last) and txn.body != "BINARYMIME":
        # Counted on the whole message: a CRLF may straddle two chunks.
        dialogue.server.bare_line_endings += _count_bare(txn.chunks)
    if too_big:
        dialogue.txn = None
        await dialogue.reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
        return False
    if not last:
        await dialogue.reply(250, "2.0.0", f"{len(chunk)} octets received")
        return False
    data = bytes(txn.chunks)
    await _finish_message(dialogue, data, data, len(data), eight_bit=not data.isascii())
    return False


async def _finish_message(
    dialogue: MailDialogue, data: bytes, raw: bytes, size: int, *, eight_bit: bool
) -> None:
    server = dialogue.server
    txn = dialogue.txn
    assert txn is not None
    dialogue.txn = None
    if eight_bit and txn.body not in ("8BITMIME", "BINARYMIME"):
        server.undeclared_8bit += 1
    # RFC 2920 §3.1: message content may start a new group only if PIPELINING was offered.
    dialogue.check_group_end(last=False)
    limit = server.size_limit
    if server.lmtp:
        await _lmtp_replies(dialogue, txn, data, raw, too_big=limit is not None and size > limit)
        return
    if limit is not None and size > limit:
        await dialogue.reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
        return
    if server.data_reply is not None:
        code, text = server.data_reply
    else:
        code, text = 250, f"Ok: queued as {server._next_queue_id()}"
        if dialogue.enhanced_status_codes():
            text = f"2.0.0 {text}"
    if 200 <= code < 300:
        assert dialogue.helo is not None
        server.messages.append(
            ReceivedMessage(
                sender=txn.sender,
                recipients=tuple(txn.recipients),
                mail_options=txn.mail_options,
                rcpt_options=types.MappingProxyType(dict(txn.rcpt_options)),
                data=data,
                raw=raw,
                tls=dialogue.tls,
                authenticated_as=dialogue.authenticated_as,
                helo=dialogue.helo,
            )
        )
    await dialogue.send(code, text)


async def _lmtp_replies(
    dialogue: MailDialogue, txn: Transaction, data: bytes, raw: bytes, *, too_big: bool
) -> None:
    """RFC 2033 §4.2: one reply per accepted recipient, in RCPT order, all in one write."""
    server = dialogue.server
    queue_id = server._next_queue_id()
    delivered: list[str] = []
    out: list[tuple[int, str]] = []
    for recipient in txn.recipients:
        reply = _lookup(server.lmtp_replies, recipient)
        if reply is None and too_big:
            reply = (552, "5.3.4 Message size exceeds fixed maximum message size")
        if reply is None:
            reply = server.data_reply
        if reply is None:
            text = f"<{recipient}> Ok: delivered as {queue_id}"
            reply = (250, f"2.0.0 {text}" if dialogue.enhanced_status_codes() else text)
        if 200 <= reply[0] < 300:
            delivered.append(recipient)
        out.append(reply)
    if delivered:
        assert dialogue.helo is not None
        server.messages.append(
            ReceivedMessage(
                sender=txn.sender,
                recipients=tuple(delivered),
                mail_options=txn.mail_options,
                rcpt_options=types.MappingProxyType({r: txn.rcpt_options[r] for r in delivered}),
                data=data,
                raw=raw,
                tls=dialogue.tls,
                authenticated_as=dialogue.authenticated_as,
                helo=dialogue.helo,
            )
        )
    await dialogue.send_many(out)
