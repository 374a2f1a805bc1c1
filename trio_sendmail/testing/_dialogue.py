"""The per-connection dialogue of the fake server: replies, the command loop, session commands."""

# Theory of operation
# -------------------
#
# Each connection gets a private Dialogue holding the per-connection state: the current stream
# (plain, or the SSLStream that replaced it), a buffered Reader, the EHLO state, the
# authenticated identity and the current mail transaction. It is a plain read-a-line / reply
# loop: SMTP is request/reply, so no background task is needed. A command handler is the
# method cmd_<verb>; those of the mail transaction hand over to the functions of _mail.
#
# Protocol coverage:
# - RFC 5321 (SMTP): greeting, EHLO/HELO, RSET, NOOP, VRFY, EXPN, HELP, QUIT, the 554-greeting
#   "wait for QUIT" rule (§3.1), strict CRLF line endings, UTF-8 only in MAIL and RCPT, and a
#   configurable command-line length limit (§4.5.3.1);
# - RFC 3207 (STARTTLS): the SAME stream is wrapped in a server-side trio.SSLStream after the 220
#   reply; everything buffered before the handshake is discarded and recorded in
#   `injected_plaintext` (the STARTTLS command-injection defence, §5); all session state (EHLO,
#   authentication, transaction) is forgotten afterwards;
# - RFC 4954 (AUTH) framing: the AUTH command with or without initial response ("=" for an empty
#   one), 334 challenges, "*" cancellation, strict base64, 12288-octet lines (§4), 538 over
#   plaintext, 503 during a transaction or after success. Secrets (responses, the SCRAM server
#   signature) never reach the transcript. The mechanisms themselves are in _sasl;
# - RFC 2920 (PIPELINING): any number of commands per read; a command that must end a group
#   (EHLO, DATA, QUIT, NOOP, AUTH, ...) but is followed by more bytes, or any pipelining when
#   PIPELINING was not offered, is counted in `pipelining_violations` (§3.1);
# - RFC 2033 (LMTP), when the server's `lmtp` is set: LHLO instead of EHLO (HELO and EHLO get
#   500, §4.1); the per-recipient replies after the end of data are in _mail;
# - RFC 2034 (ENHANCEDSTATUSCODES): the server's own 2xx/4xx/5xx replies carry an RFC 3463 code
#   exactly when ENHANCEDSTATUSCODES is among the advertised extensions.
#
# Transport failures (EOF, trio.BrokenResourceError) propagate out of run() for the server to
# end the session quietly; every other exception is a bug and propagates further.

from __future__ import annotations

import base64
import re
import ssl
from typing import Final, Protocol

import attrs
import trio

from . import _mail
from ._mail import MailServer, Transaction
from ._reader import Reader
from ._sasl import IMPLEMENTED_MECHANISMS, SaslServer, authenticate, b64decode
from ._syntax import Refuse

__all__ = ["Dialogue", "DialogueServer"]

# RFC 4954 §4: 12288 octets is enough for the deployed SASL mechanisms.
_SASL_LINE_LIMIT: Final = 12288
# RFC 2920 §3.1 (and RFC 4954 §4 for AUTH): commands that must end a pipelined group.
_GROUP_ENDERS: Final = frozenset(
    {"EHLO", "HELO", "LHLO", "DATA", "VRFY", "EXPN", "TURN", "QUIT", "NOOP"}
)
_NEEDS_HELO: Final = frozenset({"MAIL", "RCPT", "DATA", "BDAT", "AUTH", "STARTTLS"})
_MECHANISM_RE: Final = re.compile(rb"[A-Za-z0-9_-]+")


class DialogueServer(MailServer, SaslServer, Protocol):
    """What a connection's dialogue reads and records on its
    :class:`~trio_sendmail.testing.FakeSMTPServer`. The server sits above this
    module (it creates a dialogue per connection), so the dialogue knows it only
    by this description, and mypy checks that the server fits it."""

    extensions: tuple[str, ...]
    ssl_context: ssl.SSLContext | None
    starttls: bool
    auth_mechanisms: tuple[str, ...]
    auth_requires_tls: bool
    greeting: tuple[int, str] | None
    max_line_length: int
    transcript: list[tuple[str, bytes]]
    injected_plaintext: list[bytes]
    pipelining_violations: int


@attrs.define(eq=False)
class Dialogue:
    server: DialogueServer
    stream: trio.abc.Stream
    reader: Reader
    tls: bool = False
    helo: str | None = None
    esmtp: bool = False  # the client greeted with EHLO, not HELO
    offered: frozenset[str] = frozenset()  # EHLO keywords offered in this session
    authenticated_as: str | None = None
    txn: Transaction | None = None

    # --- output -------------------------------------------------------------------------------

    def enhanced_status_codes(self) -> bool:
        """Whether the server's own replies carry enhanced status codes (RFC 2034)."""
        return any(
            line.split()[0].upper() == "ENHANCEDSTATUSCODES" for line in self.server.extensions
        )

    async def send(self, code: int, text: str) -> None:
        """Send a reply verbatim; ``\\n`` in *text* separates the lines of a multi-line reply."""
        await self.send_many([(code, text)])

    async def send_many(self, replies: list[tuple[int, str]]) -> None:
        """Send several replies (as :meth:`send` does) in one write."""
        out = bytearray()
        for code, text in replies:
            lines = text.split("\n")
            for index, line in enumerate(lines):
                separator = "-" if index < len(lines) - 1 else " "
                wire = f"{code}{separator}{line}".encode()
                self.server.transcript.append(("S", wire))
                out += wire + b"\r\n"
        await self.stream.send_all(bytes(out))

    async def reply(self, code: int, status: str, text: str) -> None:
        """Send one of the server's own replies, with *status* if enhanced codes are on."""
        if status and self.enhanced_status_codes():
            text = f"{status} {text}"
        await self.send(code, text)

    # --- main loop ----------------------------------------------------------------------------

    async def run(self, *, implicit_tls: bool) -> None:
        server = self.server
        if implicit_tls:
            await self.start_tls()
        kind = "LMTP" if server.lmtp else "ESMTP"
        greeting = server.greeting or (220, f"{server.hostname} {kind} trio_sendmail fake server")
        await self.send(*greeting)
        code = greeting[0]
        if code == 554:
            await self.wait_for_quit()
            return
        if not 200 <= code < 300:
            return
        while True:
            line = await self.read_command()
            if line is None:
                continue
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            handler = getattr(self, f"cmd_{verb.lower()}", None) if verb.isalpha() else None
            if handler is None:
                self.check_group_end(last=False)
                await self.reply(500, "5.5.2", "Command not recognized")
                continue
            if verb in _NEEDS_HELO and self.helo is None:
                self.check_group_end(last=verb in _GROUP_ENDERS)
                await self.reply(503, "5.5.1", "Send EHLO first")
                continue
            try:
                done = await handler(arg)
            except Refuse as refusal:
                await self.reply(refusal.code, refusal.status, refusal.text)
                continue
            if done:
                return

    async def wait_for_quit(self) -> None:
        while True:
            line = await self.read_command()
            if line is not None and line.partition(" ")[0].upper() == "QUIT":
                await self.reply(221, "2.0.0", "Bye")
                return
            if line is not None:
                await self.reply(503, "5.5.1", "No SMTP service here, send QUIT")

    async def read_command(self) -> str | None:
        """Read, record and validate one command line; reply and return None if it is bad."""
        # An AUTH line with an initial response may be as long as a SASL line
        # (RFC 4954 §4: a real OAuth token is 1.5 to 2.5 KB); others may not.
        limit = max(self.server.max_line_length, _SASL_LINE_LIMIT)
        raw = await self.reader.read_line(limit)
        long_line = raw is not None and len(raw) > self.server.max_line_length
        if raw is None or (long_line and raw[:5].upper() != b"AUTH "):
            self.server.transcript.append(("C", b"<line too long>"))
            await self.reply(500, "5.5.2", "Line too long")
            return None
        body = raw[:-2] if raw.endswith(b"\r\n") else raw
        verb = body.partition(b" ")[0].upper()
        if verb == b"AUTH":
            # Record at most the verb and a well-formed mechanism name: the rest may be secret.
            words = body.split(b" ", 2)
            recorded = words[0]
            if len(words) > 1:
                plausible = _MECHANISM_RE.fullmatch(words[1]) and len(words[1]) <= 40
                recorded += b" " + words[1] if plausible else b" <redacted>"
            if len(words) > 2:
                recorded += b" <redacted>"
        else:
            recorded = body
        self.server.transcript.append(("C", recorded))
        if not raw.endswith(b"\r\n") or b"\r" in body or b"\n" in body:
            await self.reply(500, "5.5.2", "Bare CR or LF in command line")
            return None
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            await self.reply(500, "5.5.2", "Command is not valid UTF-8")
            return None
        if not text or not text.isprintable():
            await self.reply(500, "5.5.2", "Empty command or control characters")
            return None
        verb_text = text.partition(" ")[0].upper()
        if not text.isascii() and verb_text not in ("MAIL", "RCPT"):
            await self.reply(500, "5.5.2", "Non-ASCII command")
            return None
        return text

    def check_group_end(self, *, last: bool) -> None:
        """Count a pipelining violation if the client sent more than it was allowed to."""
        if self.reader.buffered and (last or "PIPELINING" not in self.offered):
            self.server.pipelining_violations += 1

    # --- session commands ---------------------------------------------------------------------

    def ehlo_lines(self) -> list[str]:
        server = self.server
        lines = list(server.extensions)
        keywords = {line.split()[0].upper() for line in lines}
        if (
            server.ssl_context is not None
            and server.starttls
            and not self.tls
            and "STARTTLS" not in keywords
        ):
            lines.append("STARTTLS")
        if self.auth_offered() and "AUTH" not in keywords and server.auth_mechanisms:
            lines.append("AUTH " + " ".join(server.auth_mechanisms))
        return lines

    def auth_offered(self) -> bool:
        server = self.server
        return bool(server.users or server.tokens) and (self.tls or not server.auth_requires_tls)

    async def cmd_ehlo(self, arg: str) -> bool:
        self.check_group_end(last=True)
        if self.server.lmtp:  # RFC 2033 §4.1
            await self.reply(500, "5.5.1", "This is an LMTP server: use LHLO")
            return False
        return await self._ehlo("EHLO", arg)

    async def cmd_lhlo(self, arg: str) -> bool:
        self.check_group_end(last=True)
        if not self.server.lmtp:
            await self.reply(500, "5.5.2", "Command not recognized")
            return False
        return await self._ehlo("LHLO", arg)

    async def _ehlo(self, verb: str, arg: str) -> bool:
        if not arg or " " in arg:
            await self.reply(501, "5.5.4", f"Syntax: {verb} domain")
            return False
        self.helo = arg
        self.esmtp = True
        self.txn = None
        lines = self.ehlo_lines()
        self.offered = frozenset(line.split()[0].upper() for line in lines)
        await self.send(250, "\n".join([self.server.hostname, *lines]))
        return False

    async def cmd_helo(self, arg: str) -> bool:
        self.check_group_end(last=True)
        if self.server.lmtp:  # RFC 2033 §4.1
            await self.reply(500, "5.5.1", "This is an LMTP server: use LHLO")
            return False
        if not arg or " " in arg:
            await self.reply(501, "5.5.4", "Syntax: HELO domain")
            return False
        self.helo = arg
        self.esmtp = False
        self.txn = None
        self.offered = frozenset()
        await self.send(250, self.server.hostname)
        return False

    async def cmd_starttls(self, arg: str) -> bool:
        if arg:
            await self.reply(501, "5.5.4", "Syntax: STARTTLS")
            return False
        if self.tls:
            await self.reply(503, "5.5.1", "Already using TLS")
            return False
        if not self.esmtp:
            await self.reply(503, "5.5.1", "Send EHLO first")
            return False
        if self.server.ssl_context is None or "STARTTLS" not in self.offered:
            await self.reply(454, "4.7.0", "TLS not available")
            return False
        await self.reply(220, "2.0.0", "Ready to start TLS")
        # RFC 3207 §5 / CVE-2011-0411 class: nothing sent before the handshake may survive it.
        injected = self.reader.take_buffered()
        if injected:
            self.server.injected_plaintext.append(injected)
        await self.start_tls()
        return False

    async def start_tls(self) -> None:
        context = self.server.ssl_context
        assert context is not None
        tls_stream = trio.SSLStream(self.stream, context, server_side=True)
        self.stream = self.reader.stream = tls_stream
        await tls_stream.do_handshake()
        self.tls = True
        self.helo = None
        self.esmtp = False
        self.offered = frozenset()
        self.authenticated_as = None
        self.txn = None

    async def cmd_rset(self, arg: str) -> bool:
        self.check_group_end(last=False)
        if arg:
            await self.reply(501, "5.5.4", "Syntax: RSET")
            return False
        self.txn = None
        await self.reply(250, "2.0.0", "Ok")
        return False

    async def cmd_noop(self, arg: str) -> bool:
        self.check_group_end(last=True)
        await self.reply(250, "2.0.0", "Ok")
        return False

    async def cmd_quit(self, arg: str) -> bool:
        self.check_group_end(last=True)
        if arg:
            await self.reply(501, "5.5.4", "Syntax: QUIT")
            return False
        await self.reply(221, "2.0.0", "Bye")
        return True

    async def cmd_vrfy(self, arg: str) -> bool:
        self.check_group_end(last=True)
        if not arg:
            await self.reply(501, "5.5.4", "Syntax: VRFY address")
            return False
        await self.reply(252, "2.0.0", "Cannot VRFY user, but will accept message")
        return False

    async def cmd_expn(self, arg: str) -> bool:
        self.check_group_end(last=True)
        await self.reply(502, "5.5.1", "EXPN not implemented")
        return False

    async def cmd_help(self, arg: str) -> bool:
        self.check_group_end(last=True)
        await self.reply(214, "2.0.0", "trio_sendmail fake server; see RFC 5321")
        return False

    # --- the mail transaction (in _mail) ------------------------------------------------------

    async def cmd_mail(self, arg: str) -> bool:
        return await _mail.cmd_mail(self, arg)

    async def cmd_rcpt(self, arg: str) -> bool:
        return await _mail.cmd_rcpt(self, arg)

    async def cmd_data(self, arg: str) -> bool:
        return await _mail.cmd_data(self, arg)

    async def cmd_bdat(self, arg: str) -> bool:
        return await _mail.cmd_bdat(self, arg)

    # --- AUTH ---------------------------------------------------------------------------------

    async def cmd_auth(self, arg: str) -> bool:
        server = self.server
        mechanism, _, initial = arg.partition(" ")
        mechanism = mechanism.upper()
        # RFC 4954 §4: only a one-round-trip initial response may be followed by more commands.
        self.check_group_end(last=not (mechanism == "PLAIN" and initial))
        if not mechanism or " " in initial:
            await self.reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
        elif not self.esmtp:
            await self.reply(503, "5.5.1", "Send EHLO first")
        elif self.authenticated_as is not None:
            await self.reply(503, "5.5.1", "Already authenticated")
        elif self.txn is not None:
            await self.reply(503, "5.5.1", "AUTH not permitted during a mail transaction")
        elif not server.users and not server.tokens:
            await self.reply(502, "5.5.1", "AUTH not available")
        elif not self.tls and server.auth_requires_tls:
            await self.reply(538, "5.7.11", "Encryption required for requested authentication")
        elif mechanism not in server.auth_mechanisms or mechanism not in IMPLEMENTED_MECHANISMS:
            await self.reply(504, "5.5.4", "Unrecognized authentication type")
        else:
            response: bytes | None = None
            if initial:
                response = b"" if initial == "=" else b64decode(initial.encode("ascii"))
                if response is None:
                    await self.reply(501, "5.5.2", "Invalid base64 data")
                    return False
            username = await authenticate(self, server, mechanism, response)
            if username is not None:
                self.authenticated_as = username
                await self.reply(235, "2.7.0", "Authentication successful")
        return False

    async def sasl_step(self, challenge: bytes, *, secret: bool = False) -> bytes | None:
        """Send a 334 challenge and return the decoded response; None after replying an error.

        A *secret* challenge (a proof) is recorded as ``334 <redacted>``."""
        if secret:
            self.server.transcript.append(("S", b"334 <redacted>"))
            wire = b"334 " + base64.b64encode(challenge) + b"\r\n"
            await self.stream.send_all(wire)
        else:
            await self.send(334, base64.b64encode(challenge).decode("ascii"))
        raw = await self.reader.read_line(_SASL_LINE_LIMIT)
        self.server.transcript.append(("C", b"<redacted>"))
        if raw is None:
            await self.reply(500, "5.5.6", "Authentication exchange line is too long")
            return None
        self.check_group_end(last=True)
        if not raw.endswith(b"\r\n") or b"\r" in raw[:-2] or b"\n" in raw[:-2]:
            await self.reply(500, "5.5.2", "Bare CR or LF in command line")
            return None
        line = raw[:-2]
        if line == b"*":
            await self.reply(501, "5.7.0", "Authentication cancelled")
            return None
        decoded = b64decode(line)
        if decoded is None:
            await self.reply(501, "5.5.2", "Invalid base64 data")
        return decoded
