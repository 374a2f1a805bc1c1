"""The SMTP client's state table: which command may be issued when, and where
each reply leads.

Theory of operation
-------------------
:data:`TABLE` states, for every command, the states in which it may be issued,
and the state each reply class (2xx … 5xx) leads to (RFC 5321 §4.1.4
sequencing, §4.2 reply classes, §4.3.2 replies per command; RFC 3207 for
STARTTLS, RFC 4954 for AUTH, RFC 2033 §4.1 for LMTP's LHLO). A reply class the
table does not list for that command breaks the protocol; a ``421`` answer to
any command closes the session (RFC 5321 §3.8), whatever the table says. Under
LMTP the end of data gets one reply per accepted recipient (RFC 2033 §4.2): the
core keeps that command at the head of the FIFO until the last one, and the
table's rule applies to each.

Each :class:`Rule` also states what pipelining needs (RFC 2920 §3.1): the state
the session will be in once the command succeeds, so that a command can be
checked before the replies to the commands sent ahead of it are in, and whether
the command must be the last of a pipelined group. The table is data only: the
sans-io core (:class:`~trio_sendmail._core.ClientCore`) applies it, and the
docs render it (``docs/state_table.py``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

import attrs

__all__ = ["ILLEGAL", "SAME", "TABLE", "Rule", "State", "Verb"]


class State(enum.Enum):
    """Where a session stands in the dialogue."""

    CONNECTED = "connected"  #: waiting for the greeting
    GREETED = "greeted"  #: greeted; EHLO (or HELO) comes next
    READY = "ready"  #: EHLO accepted, no mail transaction open
    AUTH = "auth"  #: a SASL exchange is in progress (334 received)
    TLS = "tls"  #: 220 to STARTTLS received: the transport must handshake now
    MAIL = "mail"  #: MAIL accepted, no recipient accepted yet
    RCPT = "rcpt"  #: at least one recipient accepted
    DATA = "data"  #: 354 received: message data flows until the final dot
    BDAT = "bdat"  #: BDAT chunks flow (RFC 3030) until BDAT … LAST
    CLOSED = "closed"  #: QUIT answered, or the server said 421
    BROKEN = "broken"  #: a protocol error or an interrupted command: never reuse

    # Members are singletons compared by identity: hash them in C (Enum's own
    # __hash__ is Python code, called for every table and set lookup).
    __hash__ = object.__hash__


class Verb(enum.Enum):
    """The commands the core can issue (plus the greeting and the end of data)."""

    CONNECT = "CONNECT"  #: pseudo-command: the greeting answers the connection
    EHLO = "EHLO"
    HELO = "HELO"
    LHLO = "LHLO"  #: LMTP's EHLO (RFC 2033 §4.1)
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    AUTH_RESPONSE = "AUTH-RESPONSE"  #: a response line to a 334 challenge
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    END_DATA = "."  #: pseudo-command: the final dot answers the whole message
    BDAT = "BDAT"  #: one chunk of the message (RFC 3030)
    BDAT_LAST = "BDAT-LAST"  #: the last chunk: its reply answers the whole message
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"

    __hash__ = object.__hash__  # as State's


#: In a rule's reply map, "stay in the state you are in".
SAME = None

#: In a rule's reply map: this reply class breaks the protocol.
ILLEGAL = State.BROKEN

S = State


@attrs.frozen
class Rule:
    """What the table says about one command."""

    #: States in which the command may be issued.
    legal: frozenset[State]
    #: The state the session will be in if the command succeeds (for pipelining).
    success: State | None
    #: Reply class (2 … 5) → next state (``SAME`` keeps the current one).
    replies: Mapping[int, State | None]
    #: Nothing may be sent after this command until its reply is in (RFC 2920
    #: §3.1 for EHLO, DATA, NOOP and QUIT; RFC 3207 STARTTLS; RFC 4954 AUTH).
    last_in_group: bool = False
    #: Its reply changes more than the state (greeting, EHLO, STARTTLS, AUTH).
    special: bool = False


_FAIL_SAME = {4: SAME, 5: SAME}
_FAIL_GREETED = {4: S.GREETED, 5: S.GREETED}
_FAIL_READY = {4: S.READY, 5: S.READY}
_CLOSE = {4: S.CLOSED, 5: S.CLOSED}
_IDLE = frozenset({S.GREETED, S.READY, S.MAIL, S.RCPT})

# Nothing may be sent after these until their reply is in (RFC 2920 §3.1 for
# EHLO, DATA, NOOP and QUIT; RFC 3207 STARTTLS; RFC 4954 AUTH; and the greeting).
_LAST_IN_GROUP: Final = frozenset(
    {Verb.CONNECT, Verb.EHLO, Verb.HELO, Verb.LHLO, Verb.STARTTLS, Verb.AUTH,
     Verb.AUTH_RESPONSE, Verb.DATA, Verb.NOOP, Verb.QUIT}
)  # fmt: skip

# Replies that change more than the state are handled apart (a flag on the
# rule keeps that test off the path of MAIL, RCPT, DATA and the end of data).
_SPECIAL: Final = frozenset(
    {Verb.CONNECT, Verb.EHLO, Verb.HELO, Verb.LHLO, Verb.STARTTLS, Verb.AUTH, Verb.AUTH_RESPONSE}
)


def _rule(
    verb: Verb,
    legal: set[State],
    success: State | None,
    replies: Mapping[int, State | None],
) -> tuple[Verb, Rule]:
    return verb, Rule(
        frozenset(legal),
        success,
        replies,
        last_in_group=verb in _LAST_IN_GROUP,
        special=verb in _SPECIAL,
    )


#: The state table (RFC 5321 §4.1.4 and §4.3.2, RFC 3207, RFC 4954).
#: command: (legal in, state after success, reply class → next state)
TABLE: Mapping[Verb, Rule] = dict([
    # A refused greeting (554, RFC 5321 §3.1) leaves the server reading until QUIT
    # (it answers 503 to anything else); a 421 closes (handled before the table).
    _rule(Verb.CONNECT,       {S.CONNECTED}, S.GREETED, {2: S.GREETED, **_FAIL_GREETED}),
    _rule(Verb.EHLO,          {S.GREETED, S.READY}, S.READY, {2: S.READY, **_FAIL_GREETED}),
    _rule(Verb.HELO,          {S.GREETED, S.READY}, S.READY, {2: S.READY, **_FAIL_GREETED}),
    _rule(Verb.LHLO,          {S.GREETED, S.READY}, S.READY, {2: S.READY, **_FAIL_GREETED}),
    _rule(Verb.STARTTLS,      {S.READY}, S.TLS, {2: S.TLS, **_FAIL_SAME}),
    _rule(Verb.AUTH,          {S.READY}, S.READY, {2: S.READY, 3: S.AUTH, **_FAIL_READY}),
    _rule(Verb.AUTH_RESPONSE, {S.AUTH}, S.READY, {2: S.READY, 3: S.AUTH, **_FAIL_READY}),
    _rule(Verb.MAIL,          {S.READY}, S.MAIL, {2: S.MAIL, **_FAIL_SAME}),
    _rule(Verb.RCPT,          {S.MAIL, S.RCPT}, S.RCPT, {2: S.RCPT, **_FAIL_SAME}),
    _rule(Verb.DATA,          {S.RCPT}, S.DATA, {3: S.DATA, **_FAIL_SAME}),
    _rule(Verb.END_DATA,      {S.DATA}, S.READY, {2: S.READY, **_FAIL_READY}),
    _rule(Verb.BDAT,          {S.RCPT, S.BDAT}, S.BDAT, {2: S.BDAT, **_FAIL_SAME}),
    _rule(Verb.BDAT_LAST,     {S.RCPT, S.BDAT}, S.READY, {2: S.READY, **_FAIL_SAME}),
    _rule(Verb.RSET,          {S.READY, S.MAIL, S.RCPT, S.BDAT}, S.READY, {2: S.READY}),
    _rule(Verb.NOOP,          set(_IDLE), SAME, {2: SAME, **_FAIL_SAME}),
    _rule(Verb.QUIT,          set(_IDLE), S.CLOSED, {2: S.CLOSED, **_CLOSE}),
])  # fmt: skip
