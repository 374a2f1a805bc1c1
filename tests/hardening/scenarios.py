"""The table of hostile-server scenarios.

Each :class:`Scenario` names a server behaviour (a :class:`~.hostile.Dialogue`
with hooks), the exception it must end in, the bound on the (virtual) time it
may take, and the TLS modes it applies to. ``test_hostile_matrix.py`` runs every
scenario against every entry point that can use one of those modes:
``sendmail`` (implicit TLS), ``sendmail_with_starttls`` (STARTTLS),
``open_session`` and the pool (any mode).

The timeouts are the RFC 5321 defaults of :class:`trio_sendmail.Timeouts`
unless a scenario says otherwise: the tests run on an autojump clock, so a
10-minute wait costs nothing.

Every scenario that misbehaves during the mail transaction (MAIL, RCPT, DATA, the
message, its end) also runs against servers that offer PIPELINING or not and
CHUNKING or not (:func:`server_variants`, named ``<scenario>+pipe-chunk`` and so
on): the same misbehaviour at the same step of the BDAT dialogue, or of the
pipelined one. Its expected outcome is the same, except that with PIPELINING and
CHUNKING a small message's ``BDAT n LAST`` goes out with MAIL and RCPT: a failure
to answer MAIL or RCPT (silence, a lost connection, garbage) then leaves the
message's fate *unknown*, while a reply that refuses it (421) still proves that it
was *not sent*.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

import trio_sendmail as ts
from trio_sendmail._message import Mail

from ..helpers import PIPE_CHUNK, VARIANTS, ServerCertificate, ServerVariant
from .hostile import (
    ALL_MODES,
    DEFAULT_CAPS,
    PLAIN,
    STARTTLS,
    TLS_MODES,
    Behaviour,
    Conn,
    Dialogue,
    Step,
    answer_every_line,
    close,
    drip,
    drip_forever,
    endless_body,
    hang,
    raw_garbage,
    read_then,
    reply,
    reply_and_continue,
    reset,
    send_then_close,
    send_then_close_tcp,
    send_then_hang,
    stream,
)

T = ts.Timeouts()  # the RFC 5321 defaults
NOT_SENT = ts.Outcome.NOT_SENT
UNKNOWN = ts.Outcome.UNKNOWN
REFUSED = ts.Outcome.REFUSED

Expected = type[BaseException] | None


def small_mail() -> bytes:
    return b"Subject: hostile\r\n\r\nhello\r\n"


@attrs.frozen
class Scenario:
    """One hostile behaviour and what the client must make of it."""

    name: str
    family: str
    dialogue: Dialogue
    #: The exception the call must end in (``None``: it must succeed), or one per TLS mode.
    expected: Expected | Mapping[ts.TLSMode, Expected]
    #: The most virtual seconds one connection may take.
    bound: float = 1.0
    #: The least virtual seconds it must take (a timeout must not fire early).
    at_least: float = 0.0
    modes: frozenset[ts.TLSMode] = ALL_MODES
    #: ``SMTPError.outcome`` of the error (``None``: raised while opening the session).
    outcome: ts.Outcome | None = None
    #: ``SMTPTimeoutError.phase``.
    phase: str | None = None
    #: The reply code of an SMTPResponseError.
    code: int | None = None
    timeouts: ts.Timeouts = T
    #: Send credentials (AUTH PLAIN offered by the dialogue when ``dialogue.auth``).
    authenticate: bool = False
    insecure_auth: bool = True
    #: Which server certificate: good, untrusted, expired, wrong_host.
    certificate: ServerCertificate = "good"
    endless: bool = False  # the message never ends
    #: The lines the client may send after the misbehaviour (None: not checked).
    after: tuple[bytes, ...] | None = ()

    def expected_for(self, mode: ts.TLSMode) -> Expected:
        if isinstance(self.expected, Mapping):
            return self.expected[mode]
        return self.expected

    @property
    def opens(self) -> bool:
        """The failure happens while the session is being opened."""
        return self.outcome is None

    def mail(self) -> Mail:
        return endless_body() if self.endless else small_mail()


def _s(
    name: str,
    family: str,
    hooks: Mapping[Step, Behaviour],
    expected: Expected,
    *,
    caps: tuple[str, ...] = DEFAULT_CAPS,
    pre_tls_caps: tuple[str, ...] = ("STARTTLS",),
    auth: bool = False,
    **kw: Any,
) -> Scenario:
    single = not kw.get("endless", False)
    dialogue = Dialogue(
        dict(hooks), caps=caps, pre_tls_caps=pre_tls_caps, auth=auth, single=single
    )
    return Scenario(name, family, dialogue, expected, **kw)


E = ts.SMTPProtocolError
C = ts.SMTPConnectionError
TO = ts.SMTPTimeoutError
TLS = ts.SMTPTLSError
CLOSING = ts.SMTPServiceClosing
PIPE_CAPS = ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES")
AUTH_CAPS = ("8BITMIME", "AUTH PLAIN")
BIG = 50 * 1024 * 1024
CONTINUATION = b"250-" + b"x" * 994 + b"\r\n"


async def _read_clienthello(conn: Conn) -> None:
    await conn.read_some(1)


def _clienthello_then(then: Behaviour) -> Behaviour:
    async def behave(conn: Conn) -> bool | None:
        await _read_clienthello(conn)
        return await then(conn)

    return behave


SCENARIOS: list[Scenario] = [
    # ------------------------------------------------------------------ silence
    _s("silent-greeting", "silence", {"greeting": hang()}, TO,
       bound=T.greeting, at_least=T.greeting, phase="greeting"),
    _s("silent-mid-greeting", "silence", {"greeting": send_then_hang(b"220-hostile\r\n220-")}, TO,
       bound=T.greeting, at_least=T.greeting, phase="greeting"),
    _s("silent-ehlo", "silence", {"ehlo": hang()}, TO,
       bound=T.command, at_least=T.command, phase="command"),
    _s("silent-mid-reply-mail", "silence", {"mail": send_then_hang(b"250-2.1.0 half\r\n250")},
       TO, bound=T.mail, at_least=T.mail, phase="mail", outcome=NOT_SENT),
    _s("silent-rcpt", "silence", {"rcpt": hang()}, TO,
       bound=T.rcpt, at_least=T.rcpt, phase="rcpt", outcome=NOT_SENT),
    _s("silent-after-data", "silence", {"data": hang()}, TO,
       bound=T.data_init, at_least=T.data_init, phase="data_init", outcome=NOT_SENT),
    # The bound is per write (a slow but steady server is not cut off): once the
    # server stops reading, the send ends a data_block after the last write that the
    # kernel took. Its buffers may take one more write while the clock jumps (an
    # autojump leaves real time between two virtual instants), and a first block
    # pipelined with DATA is bounded by data_init: at most one bound of each.
    _s("silent-mid-data", "silence", {"body": hang()}, TO, endless=True,
       bound=T.data_init + T.data_block, at_least=min(T.data_init, T.data_block),
       phase="data_block", outcome=NOT_SENT),
    _s("silent-after-final-dot", "silence", {"dot": hang()}, TO,
       bound=T.data_end, at_least=T.data_end, phase="data_end", outcome=UNKNOWN),
    _s("silent-mid-final-reply", "silence", {"dot": send_then_hang(b"250-2.0.0 queued\r\n")}, TO,
       bound=T.data_end, at_least=T.data_end, phase="data_end", outcome=UNKNOWN),
    _s("silent-starttls", "silence", {"starttls": hang()}, TO, modes=frozenset({STARTTLS}),
       bound=T.command, at_least=T.command, phase="command"),
    _s("silent-auth", "silence", {"auth": hang()}, TO, caps=AUTH_CAPS, auth=True,
       authenticate=True, bound=T.command, at_least=T.command, phase="command"),
    _s("silent-envelope-short-timeouts", "silence", {"envelope": hang()}, TO, caps=PIPE_CAPS,
       timeouts=ts.Timeouts(mail=7, rcpt=8, data_init=9), bound=7, at_least=7, phase="mail",
       outcome=NOT_SENT),
    # ------------------------------------------------------------------ slow drip
    _s("drip-greeting-forever", "drip", {"greeting": drip_forever(b"220-", b"x", 5.0)}, TO,
       bound=T.greeting, at_least=T.greeting, phase="greeting"),
    _s("drip-continuation-forever-after-dot", "drip",
       {"dot": drip_forever(b"", b"250-2.0.0 still queueing\r\n", 10.0)}, TO,
       bound=T.data_end, at_least=T.data_end, phase="data_end", outcome=UNKNOWN),
    _s("drip-slow-but-complete-greeting", "drip",
       {"greeting": drip(b"220 hostile.example.test slow\r\n", 9.0)}, None,
       bound=T.greeting, at_least=9.0 * 30),
    # ------------------------------------------------------------------ malformed replies
    _s("garbage-greeting", "malformed", {"greeting": reply(b"HTTP/1.1 400 Bad Request\r\n")}, E),
    _s("bad-code-ehlo", "malformed", {"ehlo": reply(b"999 what\r\n")}, E),
    _s("short-code-mail", "malformed", {"mail": reply(b"25 ok\r\n")}, E, outcome=NOT_SENT),
    _s("unexpected-class-greeting", "malformed", {"greeting": reply(b"354 hello?\r\n")}, E),
    _s("mixed-codes-mail", "malformed", {"mail": reply(b"250-2.1.0 ok\r\n550 5.1.0 no\r\n")}, E,
       outcome=NOT_SENT),
    _s("over-long-line-rcpt", "malformed", {"rcpt": reply(b"250 " + b"x" * 5000 + b"\r\n")}, E,
       outcome=NOT_SENT),
    _s("over-long-line-no-newline", "malformed", {"ehlo": stream(b"250-" + b"y" * 65536, BIG)},
       E, after=None),
    _s("endless-continuation-ehlo", "malformed", {"ehlo": stream(b"250-x\r\n" * 1024, BIG)}, E,
       after=None),
    _s("nul-in-text-data", "malformed", {"data": reply(b"354 go\x00ahead\r\n")}, E,
       outcome=NOT_SENT),
    _s("invalid-utf8-final-reply", "malformed", {"dot": reply(b"250 caf\xe9 queued\r\n")}, E,
       outcome=UNKNOWN),
    _s("bad-code-greeting", "malformed", {"greeting": reply(b"999 what\r\n")}, E),
    _s("short-code-greeting", "malformed", {"greeting": reply(b"22 hi\r\n")}, E),
    _s("bad-separator-greeting", "malformed", {"greeting": reply(b"220*hostile\r\n")}, E),
    _s("mixed-codes-greeting", "malformed", {"greeting": reply(b"220-hostile\r\n250 x\r\n")}, E),
    _s("invalid-utf8-greeting", "malformed", {"greeting": reply(b"220 caf\xe9\r\n")}, E),
    _s("nul-in-greeting", "malformed", {"greeting": reply(b"220 hostile\x00\r\n")}, E),
    _s("over-long-line-greeting", "malformed",
       {"greeting": reply(b"220 " + b"x" * 5000 + b"\r\n")}, E),
    _s("endless-continuation-greeting", "malformed",
       {"greeting": stream(b"220-x\r\n" * 1024, BIG)}, E, after=None),
    _s("unexpected-class-mail", "malformed", {"mail": reply(b"354 what\r\n")}, E,
       outcome=NOT_SENT),
    _s("huge-reply-50MB", "too-large", {"mail": stream(CONTINUATION * 64, BIG)}, E,
       outcome=NOT_SENT, after=None),
    # ------------------------------------------------------------------ disconnects
    _s("disconnect-at-greeting", "disconnect", {"greeting": close()}, C),
    _s("disconnect-mid-greeting", "disconnect", {"greeting": send_then_close(b"220-hi\r\n")}, E),
    _s("disconnect-mid-greeting-line", "disconnect", {"greeting": send_then_close(b"220 hos")}, E),
    _s("disconnect-mid-long-greeting-line", "disconnect",
       {"greeting": send_then_close(b"220 " + b"x" * 5000)}, E),
    _s("disconnect-mid-tls-handshake", "disconnect",
       {"handshake": _clienthello_then(close())}, TLS, modes=TLS_MODES),
    _s("disconnect-after-ehlo", "disconnect", {"ehlo": close()}, C),
    _s("disconnect-at-starttls", "disconnect", {"starttls": close()}, C,
       modes=frozenset({STARTTLS})),
    _s("disconnect-at-auth", "disconnect", {"auth": close()}, C, caps=AUTH_CAPS, auth=True,
       authenticate=True),
    _s("disconnect-at-mail", "disconnect", {"mail": close()}, C, outcome=NOT_SENT),
    _s("disconnect-at-rcpt", "disconnect", {"rcpt": close()}, C, outcome=NOT_SENT),
    _s("disconnect-at-data", "disconnect", {"data": close()}, C, outcome=NOT_SENT),
    # (Reads less than one BDAT chunk: without PIPELINING the client waits for its reply.)
    _s("disconnect-mid-data", "disconnect", {"body": read_then(30_000, reset())}, C,
       endless=True, outcome=NOT_SENT),
    _s("disconnect-after-final-dot", "disconnect", {"dot": close()}, C, outcome=UNKNOWN),
    _s("reset-at-rcpt", "disconnect", {"rcpt": reset()}, C, outcome=NOT_SENT),
    # ------------------------------------------------------------------ 421 at each step
    _s("421-greeting", "421", {"greeting": reply(b"421 4.3.2 too busy\r\n")}, CLOSING, code=421),
    _s("421-ehlo", "421", {"ehlo": reply(b"421 4.3.2 bye\r\n")}, CLOSING, code=421),
    # Any other refusal of the greeting or of EHLO (RFC 5321 §3.1, §4.1.4): typed,
    # transient or permanent as its code says.
    _s("554-greeting", "refusal", {"greeting": reply(b"554 5.3.2 no service here\r\n")},
       ts.SMTPResponseError, code=554, after=(b"QUIT",)),
    _s("450-greeting", "refusal", {"greeting": reply(b"450 4.3.2 try later\r\n")},
       ts.SMTPResponseError, code=450, after=(b"QUIT",)),
    _s("550-ehlo", "refusal", {"ehlo": reply(b"550 5.7.1 go away\r\n")}, ts.SMTPResponseError,
       code=550, after=(b"QUIT",)),
    _s("421-starttls", "421", {"starttls": reply(b"421 4.3.2 bye\r\n")}, CLOSING, code=421,
       modes=frozenset({STARTTLS})),
    _s("421-ehlo-after-tls", "421", {"ehlo_tls": reply(b"421 4.3.2 bye\r\n")}, CLOSING,
       code=421, modes=frozenset({STARTTLS})),
    _s("421-auth", "421", {"auth": reply(b"421 4.3.2 bye\r\n")}, CLOSING, code=421,
       caps=AUTH_CAPS, auth=True, authenticate=True),
    _s("421-mail", "421", {"mail": reply(b"421 4.3.2 bye\r\n")}, CLOSING, code=421,
       outcome=NOT_SENT),
    _s("421-rcpt", "421", {"rcpt": reply(b"421 4.3.2 bye\r\n")}, CLOSING, code=421,
       outcome=NOT_SENT),
    _s("421-data", "421", {"data": reply(b"421 4.3.2 bye\r\n")}, CLOSING, code=421,
       outcome=NOT_SENT),
    # A 421 reply to the final dot is a reply: the server refused the message.
    _s("421-final-dot", "421", {"dot": reply(b"421 4.3.2 shutting down\r\n")}, CLOSING,
       code=421, outcome=REFUSED),
    # ------------------------------------------------------------------ TLS
    _s("tls-untrusted-certificate", "tls", {}, TLS, modes=TLS_MODES, certificate="untrusted",
       after=None, authenticate=True, caps=AUTH_CAPS, auth=True),
    _s("tls-expired-certificate", "tls", {}, TLS, modes=TLS_MODES, certificate="expired",
       after=None, authenticate=True, caps=AUTH_CAPS, auth=True),
    _s("tls-wrong-hostname", "tls", {}, TLS, modes=TLS_MODES, certificate="wrong_host",
       after=None, authenticate=True, caps=AUTH_CAPS, auth=True),
    _s("tls-handshake-stalls", "tls", {"handshake": _clienthello_then(hang())}, TO,
       modes=TLS_MODES, bound=T.tls_handshake, at_least=T.tls_handshake, phase="tls_handshake"),
    _s("tls-abrupt-close", "tls", {"tls_first": send_then_close_tcp(b"250-hostile\r\n")}, C,
       modes=TLS_MODES),
    _s("tls-garbage-record", "tls",
       {"tls_first": raw_garbage(b"\x17\x03\x03\x00\x20" + b"\xaa" * 32)}, C, modes=TLS_MODES),
    # ------------------------------------------------------------------ STARTTLS
    _s("starttls-220-with-injected-plaintext", "starttls",
       {"starttls": reply(b"220 2.0.0 go ahead\r\n250-evil\r\n250 AUTH PLAIN\r\n")}, E,
       modes=frozenset({STARTTLS})),
    _s("starttls-refused-454", "starttls", {"starttls": reply(b"454 4.7.0 TLS not available\r\n")},
       ts.SMTPResponseError, code=454, modes=frozenset({STARTTLS}), after=(b"QUIT",)),
    _s("starttls-not-offered", "starttls", {}, ts.SMTPNotSupportedError,
       pre_tls_caps=("8BITMIME",), modes=frozenset({STARTTLS}), after=(b"QUIT",)),
    _s("starttls-offered-again-after-tls", "starttls",
       {"ehlo_tls": reply_and_continue(b"250-hostile\r\n250-STARTTLS\r\n250 8BITMIME\r\n")}, None,
       modes=frozenset({STARTTLS})),
    _s("starttls-post-tls-ehlo-lacks-auth", "starttls", {}, ts.SMTPNotSupportedError,
       pre_tls_caps=("STARTTLS", "AUTH PLAIN LOGIN"), caps=("8BITMIME",), authenticate=True,
       modes=frozenset({STARTTLS}), after=(b"QUIT",)),
    # ------------------------------------------------------------------ AUTH
    _s("auth-only-unusable-mechanisms", "auth", {}, ts.SMTPNotSupportedError,
       caps=("AUTH GSSAPI NTLM XOAUTH2 OAUTHBEARER",), authenticate=True, after=(b"QUIT",)),
    _s("auth-not-offered", "auth", {}, ts.SMTPNotSupportedError, caps=("8BITMIME",),
       authenticate=True, after=(b"QUIT",)),
    _s("auth-refused-over-plaintext", "auth", {}, ts.SMTPNotSupportedError, caps=AUTH_CAPS,
       authenticate=True, insecure_auth=False, modes=frozenset({PLAIN}), after=(b"QUIT",)),
    _s("auth-334-invalid-base64", "auth", {"auth": reply(b"334 !!not*base64!!\r\n")}, E,
       caps=AUTH_CAPS, auth=True, authenticate=True),
    _s("auth-endless-334", "auth", {"auth": answer_every_line(b"334 \r\n")}, E, caps=AUTH_CAPS,
       auth=True, authenticate=True, after=None),
    _s("auth-535", "auth", {"auth": reply(b"535 5.7.8 Authentication credentials invalid\r\n")},
       ts.SMTPAuthenticationError, code=535, caps=AUTH_CAPS, auth=True, authenticate=True,
       after=(b"QUIT",)),
    # ------------------------------------------------------------------ pipelining
    _s("pipelining-out-of-order", "pipelining",
       {"envelope": reply(b"354 go\r\n250 2.1.0 ok\r\n250 2.1.5 ok\r\n")}, E, caps=PIPE_CAPS,
       outcome=NOT_SENT),
    _s("pipelining-fewer-replies", "pipelining",
       {"envelope": send_then_hang(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n")}, TO, caps=PIPE_CAPS,
       bound=T.data_init, at_least=T.data_init, phase="data_init", outcome=NOT_SENT),
    _s("pipelining-more-replies", "pipelining",
       {"envelope": reply(b"250 ok\r\n250 ok\r\n354 go\r\n250 extra\r\n")}, E, caps=PIPE_CAPS,
       outcome=NOT_SENT),
    _s("unsolicited-reply-flood", "pipelining", {"ehlo": stream(b"250 ok\r\n" * 4096, BIG)}, E,
       after=None),
]  # fmt: skip

#: The steps of the mail transaction: a scenario with a hook there runs in every variant.
TRANSACTION_STEPS: frozenset[Step] = frozenset({"mail", "rcpt", "data", "envelope", "body", "dot"})


def server_variant_of(caps: tuple[str, ...]) -> ServerVariant:
    return ServerVariant(pipelining="PIPELINING" in caps, chunking="CHUNKING" in caps)


def as_variant(scenario: Scenario, variant: ServerVariant) -> Scenario | None:
    """*scenario* against a server that offers what *variant* says (None: the
    misbehaviour has no counterpart there)."""
    (step,) = set(scenario.dialogue.hooks) & TRANSACTION_STEPS
    if step == "data" and variant.chunking:
        return None  # no DATA command with BDAT (and its "354" has no counterpart)
    if step == "envelope":
        return None  # pipelining itself: see PIPELINED_BDAT below
    outcome = scenario.outcome
    if variant.eod_with_envelope and step in ("mail", "rcpt") and scenario.code != 421:
        # BDAT LAST with the message was written with MAIL and RCPT, and no reply
        # refused them: the message may have been taken.
        outcome = UNKNOWN
    dialogue = attrs.evolve(scenario.dialogue, caps=variant.extensions(scenario.dialogue.caps))
    return attrs.evolve(
        scenario, name=f"{scenario.name}+{variant.id}", dialogue=dialogue, outcome=outcome
    )


def server_variants(scenarios: list[Scenario]) -> list[Scenario]:
    """The other server variants of every scenario that misbehaves in the transaction."""
    made = []
    for scenario in scenarios:
        if not set(scenario.dialogue.hooks) & TRANSACTION_STEPS:
            continue
        own = server_variant_of(scenario.dialogue.caps)
        for variant in VARIANTS:
            if variant != own and (other := as_variant(scenario, variant)) is not None:
                made.append(other)
    return made


BDAT_CAPS = PIPE_CHUNK.extensions(PIPE_CAPS)
MAIL_550_THEN_421 = b"550 5.7.1 sender refused\r\n503 5.5.1 no\r\n421 4.3.2 bye\r\n"

#: The pipelining family with CHUNKING: MAIL, RCPT and BDAT LAST (with a small message)
#: were read together, then the replies misbehave. The end of data went out with them, so
#: unless a reply refused the transaction the outcome is unknown.
PIPELINED_BDAT: list[Scenario] = [
    _s("pipelining-bdat-out-of-order", "pipelining",
       {"envelope": reply(b"354 go\r\n250 2.1.0 ok\r\n250 2.1.5 ok\r\n")}, E, caps=BDAT_CAPS,
       outcome=UNKNOWN),
    _s("pipelining-bdat-fewer-replies", "pipelining",
       {"envelope": send_then_hang(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n")}, TO, caps=BDAT_CAPS,
       bound=T.data_end, at_least=T.data_end, phase="data_end", outcome=UNKNOWN),
    _s("pipelining-bdat-more-replies", "pipelining",
       {"envelope": reply(b"250 ok\r\n250 ok\r\n250 queued\r\n250 extra\r\n")}, E,
       caps=BDAT_CAPS, outcome=UNKNOWN),
    _s("silent-envelope-short-timeouts+pipe-chunk", "silence", {"envelope": hang()}, TO,
       caps=BDAT_CAPS, timeouts=ts.Timeouts(mail=7, rcpt=8, data_end=9), bound=7, at_least=7,
       phase="mail", outcome=UNKNOWN),
    # MAIL refused, then the server closes: the refusal of MAIL proves that nothing was
    # taken, although the end of data went out with it (the DATA counterpart is below).
    _s("550-mail-then-421+pipe-chunk", "421", {"envelope": reply(MAIL_550_THEN_421)}, CLOSING,
       caps=BDAT_CAPS, code=421, outcome=NOT_SENT),
    _s("550-mail-then-421", "421", {"envelope": reply(MAIL_550_THEN_421)}, CLOSING,
       caps=PIPE_CAPS, code=421, outcome=NOT_SENT),
]  # fmt: skip

SCENARIOS += server_variants(SCENARIOS) + PIPELINED_BDAT

assert len({s.name for s in SCENARIOS}) == len(SCENARIOS), "scenario names must be unique"
