"""Tests of the sans-io client core: the state table, pipelining, STARTTLS, AUTH, injection.

Every dialogue is driven by calling verbs, checking the exact bytes of ``data_to_send()``,
and feeding the server's bytes whole and one byte at a time (the ``feed`` fixture).
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from trio_sendmail._address import Domain, ForwardPath, ReversePath
from trio_sendmail._capabilities import Capabilities
from trio_sendmail._core import TABLE, ClientCore, Event, State, Verb
from trio_sendmail._errors import Outcome, SMTPInputError, SMTPProtocolError, SMTPUsageError
from trio_sendmail._reply import Reply
from trio_sendmail._sasl import Authentication, LoginMechanism, Mechanism, PlainMechanism

DOMAIN = Domain.parse("client.example")
SENDER = ReversePath.parse("alice@example.org")
BOB = ForwardPath.parse("bob@example.com")
CAROL = ForwardPath.parse("carol@example.com")
USER = "tim"
SECRET = "tanstaaftanstaaf"

GREETING = b"220 mx.example.com ESMTP ready\r\n"
EHLO_REPLY = (
    b"250-mx.example.com Hello client.example\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 10240000\r\n"
    b"250-STARTTLS\r\n"
    b"250-AUTH PLAIN LOGIN\r\n"
    b"250-SMTPUTF8\r\n"
    b"250 ENHANCEDSTATUSCODES\r\n"
)

Feed = Callable[[ClientCore, bytes], list[Event]]


def state_of(core: ClientCore) -> State:
    """The core's state (a call, so that type checkers do not keep an earlier narrowing)."""
    return core.state


def capabilities_of(core: ClientCore) -> Capabilities | None:
    return core.capabilities


def tls_of(core: ClientCore) -> bool:
    return core.tls


def drain(core: ClientCore, events: list[Event]) -> None:
    while (event := core.next_event()) is not None:
        events.append(event)


def feed_whole(core: ClientCore, data: bytes) -> list[Event]:
    events: list[Event] = []
    core.receive_data(data)
    drain(core, events)
    return events


def feed_bytewise(core: ClientCore, data: bytes) -> list[Event]:
    events: list[Event] = []
    for i in range(len(data)):
        core.receive_data(data[i : i + 1])
        drain(core, events)
    return events


@pytest.fixture(params=["whole", "bytewise"])
def feed(request: pytest.FixtureRequest) -> Feed:
    return feed_whole if request.param == "whole" else feed_bytewise


def greeted(transcript: Callable[[str], None] | None = None) -> ClientCore:
    core = ClientCore(transcript=transcript)
    feed_whole(core, GREETING)
    assert state_of(core) is State.GREETED
    return core


def ready(transcript: Callable[[str], None] | None = None) -> ClientCore:
    core = greeted(transcript)
    core.ehlo(DOMAIN)
    core.data_to_send()
    feed_whole(core, EHLO_REPLY)
    assert state_of(core) is State.READY
    return core


def in_mail(transcript: Callable[[str], None] | None = None) -> ClientCore:
    core = ready(transcript)
    core.mail(SENDER)
    core.data_to_send()
    feed_whole(core, b"250 2.1.0 Ok\r\n")
    assert state_of(core) is State.MAIL
    return core


def in_rcpt() -> ClientCore:
    core = in_mail()
    core.rcpt(BOB)
    core.data_to_send()
    feed_whole(core, b"250 2.1.5 Ok\r\n")
    assert state_of(core) is State.RCPT
    return core


def in_data() -> ClientCore:
    core = in_rcpt()
    core.data()
    core.data_to_send()
    feed_whole(core, b"354 End data with <CR><LF>.<CR><LF>\r\n")
    assert state_of(core) is State.DATA
    return core


def login() -> LoginMechanism:
    return LoginMechanism(Authentication(USER, SECRET))


def awaiting(verb: Verb) -> ClientCore:
    """A core whose oldest command in flight is *verb*, its bytes already taken."""
    core: ClientCore
    if verb is Verb.CONNECT:
        core = ClientCore()
    elif verb is Verb.EHLO:
        core = greeted()
        core.ehlo(DOMAIN)
    elif verb is Verb.HELO:
        core = greeted()
        core.helo(DOMAIN)
    elif verb is Verb.LHLO:
        core = greeted()
        core.lmtp = True
        core.lhlo(DOMAIN)
    elif verb is Verb.STARTTLS:
        core = ready()
        core.starttls()
    elif verb is Verb.AUTH:
        core = ready()
        core.auth(login())
    elif verb is Verb.AUTH_RESPONSE:
        core = ready()
        core.auth(login())
        feed_whole(core, b"334 VXNlcm5hbWU6\r\n")
    elif verb is Verb.MAIL:
        core = ready()
        core.mail(SENDER)
    elif verb is Verb.RCPT:
        core = in_mail()
        core.rcpt(BOB)
    elif verb is Verb.DATA:
        core = in_rcpt()
        core.data()
    elif verb is Verb.END_DATA:
        core = in_data()
        core.encode_data(b"body")
        core.end_data()
    elif verb is Verb.BDAT:
        core = in_rcpt()
        core.begin_bdat(chunk_size=4)
        core.body(b"abcd")
        assert core.next_chunk() and not core.next_chunk()
    elif verb is Verb.BDAT_LAST:
        core = in_rcpt()
        core.begin_bdat(chunk_size=100)
        core.body(b"ab\r\n")
        core.end_body()
    elif verb is Verb.RSET:
        core = in_mail()
        core.rset()
    elif verb is Verb.NOOP:
        core = ready()
        core.noop()
    else:
        assert verb is Verb.QUIT
        core = ready()
        core.quit()
    core.data_to_send()
    assert core.inflight == (verb,)
    return core


def every_verb_raises(core: ClientCore) -> None:
    """Each command method refuses to queue anything."""
    calls: list[Callable[[], object]] = [
        lambda: core.ehlo(DOMAIN),
        lambda: core.helo(DOMAIN),
        core.starttls,
        lambda: core.auth(login()),
        lambda: core.mail(SENDER),
        lambda: core.rcpt(BOB),
        core.data,
        lambda: core.encode_data(b"x"),
        core.end_data,
        core.rset,
        core.noop,
        core.quit,
        core.tls_established,
    ]
    for call in calls:
        with pytest.raises(SMTPUsageError):
            call()
    assert core.data_to_send() == b""


# --------------------------------------------------------------------------------------------
# Greeting and EHLO


def test_new_core_waits_for_the_greeting() -> None:
    core = ClientCore()
    assert state_of(core) is State.CONNECTED
    assert core.awaiting_reply
    assert core.inflight == (Verb.CONNECT,)
    assert core.data_to_send() == b""
    assert core.greeting is None
    assert core.capabilities is None
    assert not core.tls
    assert not core.authenticated


def test_greeting_then_ehlo_gives_capabilities(feed: Feed) -> None:
    core = ClientCore()
    events = feed(core, GREETING)
    assert events == [Event(Verb.CONNECT, Reply(220, ("mx.example.com ESMTP ready",)))]
    assert core.greeting == events[0].reply
    assert state_of(core) is State.GREETED
    assert not core.awaiting_reply

    core.ehlo(DOMAIN)
    assert core.data_to_send() == b"EHLO client.example\r\n"
    assert core.data_to_send() == b""
    assert core.inflight == (Verb.EHLO,)
    events = feed(core, EHLO_REPLY)
    assert [e.verb for e in events] == [Verb.EHLO]
    assert events[0].reply.code == 250
    assert state_of(core) is State.READY
    caps = core.capabilities
    assert caps is not None
    assert caps.server_name == "mx.example.com"
    assert caps.pipelining
    assert caps.starttls
    assert caps.smtputf8
    assert caps.size_limit == 10240000
    assert caps.auth_mechanisms == frozenset({"PLAIN", "LOGIN"})


def test_ehlo_with_an_address_literal() -> None:
    core = greeted()
    core.ehlo(Domain.parse("[192.0.2.1]"))
    assert core.data_to_send() == b"EHLO [192.0.2.1]\r\n"


def test_ehlo_may_be_repeated_in_ready(feed: Feed) -> None:
    core = ready()
    core.ehlo(DOMAIN)
    assert core.data_to_send() == b"EHLO client.example\r\n"
    feed(core, b"250-other.example\r\n250 8BITMIME\r\n")
    assert core.capabilities is not None
    assert core.capabilities.server_name == "other.example"
    assert not core.capabilities.pipelining
    assert core.capabilities.eightbitmime


def test_ehlo_refused_then_helo(feed: Feed) -> None:
    core = greeted()
    core.ehlo(DOMAIN)
    core.data_to_send()
    events = feed(core, b"502 5.5.2 Command not recognized\r\n")
    assert events[0].verb is Verb.EHLO
    assert state_of(core) is State.GREETED
    assert core.capabilities is None
    core.helo(DOMAIN)
    assert core.data_to_send() == b"HELO client.example\r\n"
    feed(core, b"250 mx.example.com\r\n")
    assert state_of(core) is State.READY
    caps = capabilities_of(core)
    assert caps is not None
    assert caps.server_name == "mx.example.com"
    assert len(caps) == 0


def test_421_greeting_closes(feed: Feed) -> None:
    core = ClientCore()
    events = feed(core, b"421 go away\r\n")
    assert events[0].verb is Verb.CONNECT
    assert state_of(core) is State.CLOSED
    every_verb_raises(core)


@pytest.mark.parametrize("code", [b"554", b"450"])
def test_refused_greeting_leaves_only_quit_useful(feed: Feed, code: bytes) -> None:
    """RFC 5321 §3.1: after a 554 greeting the server waits for QUIT (and answers 503
    to anything else); the core lets the session say goodbye."""
    core = ClientCore()
    events = feed(core, code + b" go away\r\n")
    assert events[0].verb is Verb.CONNECT and not events[0].reply.is_positive
    assert state_of(core) is State.GREETED
    core.quit()
    assert core.data_to_send() == b"QUIT\r\n"
    feed(core, b"221 bye\r\n")
    assert state_of(core) is State.CLOSED


def test_ehlo_before_the_greeting_is_illegal() -> None:
    core = ClientCore()
    with pytest.raises(SMTPUsageError):
        core.ehlo(DOMAIN)
    assert core.data_to_send() == b""
    assert core.inflight == (Verb.CONNECT,)


def test_partial_reply_is_reported_by_in_reply() -> None:
    core = ClientCore()
    core.receive_data(b"220-mx\r\n220 ")
    assert core.next_event() is None
    assert core.in_reply
    core.receive_data(b"ready\r\n")
    event = core.next_event()
    assert event is not None
    assert event.reply.lines == ("mx", "ready")
    assert not core.in_reply


def test_reused_out_buffer_is_emptied() -> None:
    core = ClientCore(out_buffer=bytearray(b"stale"))
    assert core.data_to_send() == b""


def test_full_dialogue_transcript(feed: Feed) -> None:
    lines: list[str] = []
    core = ClientCore(transcript=lines.append)
    feed(core, GREETING)
    core.ehlo(DOMAIN)
    feed(core, b"250-mx.example.com\r\n250 PIPELINING\r\n")
    core.quit()
    feed(core, b"221 2.0.0 Bye\r\n")
    assert lines == [
        "S: 220 mx.example.com ESMTP ready",
        "C: EHLO client.example",
        "S: 250-mx.example.com",
        "S: 250 PIPELINING",
        "C: QUIT",
        "S: 221 2.0.0 Bye",
    ]


# --------------------------------------------------------------------------------------------
# STARTTLS


def test_starttls_then_ehlo_again(feed: Feed) -> None:
    core = ready()
    core.starttls()
    assert core.data_to_send() == b"STARTTLS\r\n"
    events = feed(core, b"220 2.0.0 Ready to start TLS\r\n")
    assert [e.verb for e in events] == [Verb.STARTTLS]
    assert state_of(core) is State.TLS
    assert tls_of(core) is False
    # nothing may be sent before the handshake
    with pytest.raises(SMTPUsageError):
        core.ehlo(DOMAIN)
    assert core.data_to_send() == b""

    core.tls_established()
    assert tls_of(core) is True
    assert capabilities_of(core) is None  # everything learned in plaintext is forgotten
    assert state_of(core) is State.GREETED
    with pytest.raises(SMTPUsageError):
        core.mail(SENDER)  # EHLO is required again
    core.ehlo(DOMAIN)
    assert core.data_to_send() == b"EHLO client.example\r\n"
    feed(core, b"250-mx.example.com\r\n250 AUTH PLAIN\r\n")
    assert state_of(core) is State.READY
    assert core.capabilities is not None
    assert not core.capabilities.starttls
    assert core.capabilities.auth_mechanisms == frozenset({"PLAIN"})
    with pytest.raises(SMTPUsageError):
        core.starttls()  # already TLS
    assert core.data_to_send() == b""


def test_starttls_refused_keeps_the_plaintext_session(feed: Feed) -> None:
    core = ready()
    caps = core.capabilities
    core.starttls()
    core.data_to_send()
    feed(core, b"454 4.7.0 TLS not available\r\n")
    assert state_of(core) is State.READY
    assert not core.tls
    assert core.capabilities is caps


def test_tls_established_without_starttls_is_an_error() -> None:
    core = ready()
    with pytest.raises(SMTPUsageError):
        core.tls_established()
    assert not core.tls


def test_tls_established_before_the_220_is_an_error() -> None:
    core = ready()
    core.starttls()
    with pytest.raises(SMTPUsageError):
        core.tls_established()


def test_starttls_is_illegal_before_ehlo() -> None:
    core = greeted()
    with pytest.raises(SMTPUsageError):
        core.starttls()
    assert core.data_to_send() == b""


@pytest.mark.parametrize(
    "injected",
    [b"250 injected\r\n", b"250-AUTH PLAIN\r\n", b"2", b"\r\n", b"garbage"],
)
def test_bytes_after_the_starttls_220_in_the_same_read_are_rejected(injected: bytes) -> None:
    core = ready()
    core.starttls()
    core.data_to_send()
    with pytest.raises(SMTPProtocolError, match="STARTTLS"):
        feed_whole(core, b"220 2.0.0 go ahead\r\n" + injected)
    assert state_of(core) is State.BROKEN
    every_verb_raises(core)


def receive_then_handshake(core: ClientCore, data: bytes) -> None:
    """What a driver does if it reads once more before the TLS handshake."""
    core.receive_data(data)
    while core.next_event() is not None:
        pass
    core.tls_established()


@pytest.mark.parametrize("injected", [b"250-AUTH PLAIN\r\n", b"250 inject"])
def test_bytes_received_after_the_starttls_220_before_the_handshake_are_rejected(
    injected: bytes,
) -> None:
    # RFC 3207 §4.2 / DESIGN §4: nothing that arrived before the handshake is trusted. Bytes
    # that arrive in a later read (and form no complete reply yet) must not survive into the
    # TLS session, where they would be taken as the start of the EHLO reply.
    core = ready()
    core.starttls()
    core.data_to_send()
    feed_whole(core, b"220 2.0.0 go ahead\r\n")
    assert state_of(core) is State.TLS
    with pytest.raises(SMTPProtocolError):
        receive_then_handshake(core, injected)
    assert state_of(core) is State.BROKEN


def test_complete_reply_received_after_the_starttls_220_is_unsolicited() -> None:
    core = ready()
    core.starttls()
    feed_whole(core, b"220 go ahead\r\n")
    with pytest.raises(SMTPProtocolError):
        feed_whole(core, b"250 injected\r\n")
    assert state_of(core) is State.BROKEN


# --------------------------------------------------------------------------------------------
# AUTH


def transcript_is_clean(lines: list[str]) -> None:
    message = f"\0{USER}\0{SECRET}".encode()
    secrets = [
        SECRET,
        base64.b64encode(SECRET.encode()).decode(),
        base64.b64encode(message).decode(),
    ]
    for line in lines:
        for secret in secrets:
            assert secret not in line


def test_auth_plain_sends_the_initial_response_on_the_line(feed: Feed) -> None:
    lines: list[str] = []
    core = ready(lines.append)
    core.auth(PlainMechanism(Authentication(USER, SECRET)))
    assert core.data_to_send() == b"AUTH PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n"
    assert lines[-1] == "C: AUTH PLAIN <redacted>"
    events = feed(core, b"235 2.7.0 Authentication successful\r\n")
    assert [e.verb for e in events] == [Verb.AUTH]
    assert core.authenticated
    assert state_of(core) is State.READY
    assert core.data_to_send() == b""
    transcript_is_clean(lines)


def test_auth_plain_refused(feed: Feed) -> None:
    core = ready()
    core.auth(PlainMechanism(Authentication(USER, SECRET)))
    core.data_to_send()
    events = feed(core, b"535 5.7.8 Authentication credentials invalid\r\n")
    assert events[0].reply.code == 535
    assert not core.authenticated
    assert state_of(core) is State.READY


def test_auth_plain_after_an_empty_challenge(feed: Feed) -> None:
    core = ready()
    core.auth(PlainMechanism(Authentication(USER, SECRET)))
    core.data_to_send()
    feed(core, b"334 \r\n")
    assert core.data_to_send() == b"AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n"
    feed(core, b"235 ok\r\n")
    assert core.authenticated


class EmptyInitialResponse(Mechanism):
    name = "EXTERNAL"

    def initial_response(self) -> bytes:
        return b""

    def respond(self, challenge: bytes) -> bytes:
        return b""


def test_empty_initial_response_is_sent_as_equals_sign() -> None:
    core = ready()
    core.auth(EmptyInitialResponse(Authentication(USER, SECRET)))
    assert core.data_to_send() == b"AUTH EXTERNAL =\r\n"


def test_auth_login_answers_challenges_itself(feed: Feed) -> None:
    lines: list[str] = []
    core = ready(lines.append)
    core.auth(login())
    assert core.data_to_send() == b"AUTH LOGIN\r\n"
    assert lines[-1] == "C: AUTH LOGIN"

    events = feed(core, b"334 VXNlcm5hbWU6\r\n")  # "Username:"
    assert [(e.verb, e.reply.code) for e in events] == [(Verb.AUTH, 334)]
    assert state_of(core) is State.AUTH
    assert core.inflight == (Verb.AUTH_RESPONSE,)
    assert core.data_to_send() == base64.b64encode(USER.encode()) + b"\r\n"
    assert lines[-1] == "C: <redacted>"

    events = feed(core, b"334 UGFzc3dvcmQ6\r\n")  # "Password:"
    assert [(e.verb, e.reply.code) for e in events] == [(Verb.AUTH_RESPONSE, 334)]
    assert core.data_to_send() == base64.b64encode(SECRET.encode()) + b"\r\n"
    assert lines[-1] == "C: <redacted>"

    events = feed(core, b"235 2.7.0 Authentication successful\r\n")
    assert [(e.verb, e.reply.code) for e in events] == [(Verb.AUTH_RESPONSE, 235)]
    assert core.authenticated
    assert state_of(core) is State.READY
    assert not core.awaiting_reply
    transcript_is_clean(lines)


def test_auth_login_with_nul_terminated_prompts(feed: Feed) -> None:
    core = ready()
    core.auth(login())
    core.data_to_send()
    feed(core, b"334 " + base64.b64encode(b"Password\0") + b"\r\n")
    assert core.data_to_send() == base64.b64encode(SECRET.encode()) + b"\r\n"


def test_auth_login_refused_after_the_password(feed: Feed) -> None:
    core = ready()
    core.auth(login())
    feed(core, b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n")
    events = feed(core, b"535 5.7.8 no\r\n")
    assert events[-1].verb is Verb.AUTH_RESPONSE
    assert not core.authenticated
    assert state_of(core) is State.READY
    core.mail(SENDER)  # the session goes on
    assert core.data_to_send().endswith(b"MAIL FROM:<alice@example.org>\r\n")


@pytest.mark.parametrize("challenge", [b"334 not base64!\r\n", b"334 VXNlcm5hbWU\r\n"])
def test_auth_challenge_that_is_not_base64_is_a_protocol_error(challenge: bytes) -> None:
    core = ready()
    core.auth(login())
    core.data_to_send()
    with pytest.raises(SMTPProtocolError, match="base64"):
        feed_whole(core, challenge)
    assert state_of(core) is State.BROKEN
    assert core.data_to_send() == b""


def test_more_challenges_than_max_steps_is_a_protocol_error() -> None:
    core = ready()
    core.auth(login())
    feed_whole(core, b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n")
    core.data_to_send()
    with pytest.raises(SMTPProtocolError, match="challenges"):
        feed_whole(core, b"334 UGFzc3dvcmQ6\r\n")
    assert state_of(core) is State.BROKEN
    assert core.data_to_send() == b""


def test_plain_allows_one_challenge_only() -> None:
    core = ready()
    core.auth(PlainMechanism(Authentication(USER, SECRET)))
    feed_whole(core, b"334 \r\n")
    with pytest.raises(SMTPProtocolError):
        feed_whole(core, b"334 \r\n")
    assert state_of(core) is State.BROKEN


def test_auth_is_illegal_before_ehlo_and_in_a_transaction() -> None:
    with pytest.raises(SMTPUsageError):
        greeted().auth(login())
    core = in_mail()
    with pytest.raises(SMTPUsageError):
        core.auth(login())
    assert core.data_to_send() == b""


def test_nothing_can_be_queued_behind_an_auth_awaiting_challenges() -> None:
    # RFC 4954 §4: AUTH must be the last command of a pipelined group. If MAIL is queued
    # behind AUTH LOGIN, the server's (correct) 334 can no longer be answered in order.
    core = ready()
    core.auth(login())
    with pytest.raises(SMTPUsageError):
        core.mail(SENDER)
    assert core.data_to_send() == b"AUTH LOGIN\r\n"


def test_nothing_can_be_queued_behind_an_auth_response_in_flight() -> None:
    # After the user name went out, the password prompt is still to come.
    core = ready()
    core.auth(login())
    feed_whole(core, b"334 VXNlcm5hbWU6\r\n")
    core.data_to_send()
    assert core.inflight == (Verb.AUTH_RESPONSE,)
    with pytest.raises(SMTPUsageError):
        core.mail(SENDER)
    assert core.data_to_send() == b""


# --------------------------------------------------------------------------------------------
# Mail transactions


def test_mail_rcpt_data_end_data(feed: Feed) -> None:
    lines: list[str] = []
    core = ready(lines.append)
    txn = core.mail(SENDER, ["SIZE=1000", "BODY=8BITMIME"])
    assert core.data_to_send() == b"MAIL FROM:<alice@example.org> SIZE=1000 BODY=8BITMIME\r\n"
    events = feed(core, b"250 2.1.0 Ok\r\n")
    assert events == [Event(Verb.MAIL, events[0].reply, SENDER, txn)]
    assert txn.sender_reply == events[0].reply and txn.envelope_written
    assert state_of(core) is State.MAIL

    core.rcpt(BOB, ["NOTIFY=NEVER"])
    assert core.data_to_send() == b"RCPT TO:<bob@example.com> NOTIFY=NEVER\r\n"
    events = feed(core, b"250 2.1.5 Ok\r\n")
    assert events[0].verb is Verb.RCPT
    assert events[0].subject == BOB
    assert state_of(core) is State.RCPT

    core.data()
    assert core.data_to_send() == b"DATA\r\n"
    with pytest.raises(SMTPUsageError):
        core.encode_data(b"too early")  # before the 354
    events = feed(core, b"354 End data with <CR><LF>.<CR><LF>\r\n")
    assert events[0].verb is Verb.DATA
    assert state_of(core) is State.DATA

    assert core.encode_data(b"Subject: hi\n\n.hidden\n") == b"Subject: hi\r\n\r\n..hidden\r\n"
    assert core.encode_data(b"last line") == b"last line"
    core.end_data()
    assert core.data_to_send() == b"\r\n.\r\n"
    assert core.inflight == (Verb.END_DATA,)
    assert lines[-1] == "C: <39 bytes of message data>"
    events = feed(core, b"250 2.0.0 Ok: queued as 12345\r\n")
    assert [e.verb for e in events] == [Verb.END_DATA]
    assert state_of(core) is State.READY

    core.quit()
    assert core.data_to_send() == b"QUIT\r\n"
    feed(core, b"221 2.0.0 Bye\r\n")
    assert state_of(core) is State.CLOSED
    every_verb_raises(core)


def test_empty_message_and_a_second_transaction(feed: Feed) -> None:
    core = in_data()
    core.end_data()
    assert core.data_to_send() == b".\r\n"
    feed(core, b"250 queued\r\n")
    core.mail(SENDER)
    core.rcpt(CAROL)
    core.data()
    assert core.data_to_send() == (
        b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<carol@example.com>\r\nDATA\r\n"
    )
    feed(core, b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert core.encode_data(b".starts with a dot") == b"..starts with a dot"
    core.end_data()
    assert core.data_to_send() == b"\r\n.\r\n"


def test_message_refused_after_the_final_dot(feed: Feed) -> None:
    core = in_data()
    core.end_data()
    events = feed(core, b"554 5.7.1 spam\r\n")
    assert events[0].verb is Verb.END_DATA
    assert state_of(core) is State.READY


def test_end_data_while_waiting_for_354_is_illegal() -> None:
    core = in_rcpt()
    core.data()
    with pytest.raises(SMTPUsageError):
        core.end_data()
    assert core.data_to_send() == b"DATA\r\n"


def test_null_reverse_path_and_postmaster() -> None:
    core = ready()
    core.mail(ReversePath.null())
    core.rcpt(ForwardPath.postmaster())
    assert core.data_to_send() == b"MAIL FROM:<>\r\nRCPT TO:<Postmaster>\r\n"


def test_pipelined_mail_rcpt_rcpt_data(feed: Feed) -> None:
    core = ready()
    core.mail(SENDER)
    core.rcpt(BOB)
    core.rcpt(CAROL)
    core.data()
    assert core.data_to_send() == (
        b"MAIL FROM:<alice@example.org>\r\n"
        b"RCPT TO:<bob@example.com>\r\n"
        b"RCPT TO:<carol@example.com>\r\n"
        b"DATA\r\n"
    )
    assert core.inflight == (Verb.MAIL, Verb.RCPT, Verb.RCPT, Verb.DATA)
    events = feed(
        core,
        b"250 2.1.0 sender ok\r\n250 2.1.5 bob ok\r\n550 5.1.1 no carol\r\n354 go ahead\r\n",
    )
    assert [(e.verb, e.reply.code, e.subject) for e in events] == [
        (Verb.MAIL, 250, SENDER),
        (Verb.RCPT, 250, BOB),
        (Verb.RCPT, 550, CAROL),
        (Verb.DATA, 354, None),
    ]
    assert state_of(core) is State.DATA
    assert not core.awaiting_reply


def test_pipelined_replies_arriving_one_at_a_time(feed: Feed) -> None:
    core = ready()
    core.mail(SENDER)
    core.rcpt(BOB)
    core.data()
    core.data_to_send()
    assert [e.verb for e in feed(core, b"250 ok\r\n")] == [Verb.MAIL]
    assert state_of(core) is State.MAIL
    assert core.inflight == (Verb.RCPT, Verb.DATA)
    assert [e.verb for e in feed(core, b"250 ok\r\n")] == [Verb.RCPT]
    assert state_of(core) is State.RCPT
    assert [e.verb for e in feed(core, b"354 go\r\n")] == [Verb.DATA]
    assert state_of(core) is State.DATA


def test_refused_rcpt_keeps_the_state(feed: Feed) -> None:
    core = in_mail()
    core.rcpt(BOB)
    events = feed(core, b"550 5.1.1 no such user\r\n")
    assert events[0].subject == BOB
    assert events[0].reply.enhanced_status is not None
    assert state_of(core) is State.MAIL
    core.rcpt(CAROL)
    feed(core, b"250 ok\r\n")
    assert state_of(core) is State.RCPT
    core.rcpt(BOB)
    feed(core, b"450 4.2.1 try later\r\n")
    assert state_of(core) is State.RCPT
    core.data()
    assert core.data_to_send().endswith(b"DATA\r\n")


def test_all_recipients_refused_makes_data_illegal(feed: Feed) -> None:
    core = in_mail()
    core.rcpt(BOB)
    feed(core, b"550 no\r\n")
    core.rcpt(CAROL)
    feed(core, b"451 later\r\n")
    core.data_to_send()
    assert state_of(core) is State.MAIL
    with pytest.raises(SMTPUsageError):
        core.data()
    assert core.data_to_send() == b""
    core.rset()
    assert core.data_to_send() == b"RSET\r\n"
    feed(core, b"250 ok\r\n")
    assert state_of(core) is State.READY


def test_pipelined_with_every_recipient_refused(feed: Feed) -> None:
    core = ready()
    core.mail(SENDER)
    core.rcpt(BOB)
    core.data()
    core.data_to_send()
    events = feed(core, b"250 ok\r\n550 no\r\n554 5.5.1 no valid recipients\r\n")
    assert [(e.verb, e.reply.code) for e in events] == [
        (Verb.MAIL, 250),
        (Verb.RCPT, 550),
        (Verb.DATA, 554),
    ]
    assert state_of(core) is State.MAIL
    with pytest.raises(SMTPUsageError):
        core.data()
    core.rset()
    feed(core, b"250 ok\r\n")
    assert state_of(core) is State.READY


def test_refused_sender_in_a_pipeline(feed: Feed) -> None:
    core = ready()
    core.mail(SENDER)
    core.rcpt(BOB)
    core.data()
    core.data_to_send()
    feed(core, b"550 sender refused\r\n503 bad sequence\r\n503 bad sequence\r\n")
    assert state_of(core) is State.READY
    core.mail(SENDER)  # a new transaction can start
    assert core.data_to_send() == b"MAIL FROM:<alice@example.org>\r\n"


def test_rset_noop(feed: Feed) -> None:
    core = in_rcpt()
    core.noop()
    assert core.data_to_send() == b"NOOP\r\n"
    feed(core, b"250 ok\r\n")
    assert state_of(core) is State.RCPT
    core.rset()
    assert core.data_to_send() == b"RSET\r\n"
    feed(core, b"250 ok\r\n")
    assert state_of(core) is State.READY


# --------------------------------------------------------------------------------------------
# 421, unexpected and unsolicited replies


@pytest.mark.parametrize("verb", list(Verb))
def test_421_to_any_command_closes(verb: Verb) -> None:
    core = awaiting(verb)
    events = feed_whole(core, b"421 4.3.2 Service shutting down\r\n")
    assert [(e.verb, e.reply.code) for e in events] == [(verb, 421)]
    assert state_of(core) is State.CLOSED
    assert not core.awaiting_reply
    every_verb_raises(core)


def test_421_in_a_pipeline_closes_and_drops_the_rest(feed: Feed) -> None:
    core = ready()
    core.mail(SENDER)
    core.rcpt(BOB)
    core.data()
    events = feed(core, b"421 bye\r\n")
    assert [e.verb for e in events] == [Verb.MAIL]
    assert state_of(core) is State.CLOSED
    assert core.inflight == ()


@pytest.mark.parametrize(
    ("verb", "reply"),
    [
        (Verb.CONNECT, b"354 what\r\n"),
        (Verb.CONNECT, b"334 what\r\n"),
        (Verb.EHLO, b"334 what\r\n"),
        (Verb.HELO, b"354 what\r\n"),
        (Verb.STARTTLS, b"354 what\r\n"),
        (Verb.AUTH, b"354 what\r\n"),
        (Verb.AUTH_RESPONSE, b"354 what\r\n"),
        (Verb.MAIL, b"354 what\r\n"),
        (Verb.RCPT, b"354 what\r\n"),
        (Verb.DATA, b"250 what\r\n"),
        (Verb.DATA, b"334 what\r\n"),
        (Verb.END_DATA, b"354 what\r\n"),
        (Verb.NOOP, b"354 what\r\n"),
        (Verb.RSET, b"354 what\r\n"),
        (Verb.QUIT, b"354 what\r\n"),
    ],
)
def test_unexpected_reply_class_breaks_the_session(verb: Verb, reply: bytes) -> None:
    core = awaiting(verb)
    with pytest.raises(SMTPProtocolError, match="unexpected reply"):
        feed_whole(core, reply)
    assert state_of(core) is State.BROKEN
    every_verb_raises(core)


@pytest.mark.parametrize("reply", [b"354 go\r\n", b"250 ok\r\n", b"550 no\r\n"])
def test_unexpected_reply_class_fed_bytewise(reply: bytes) -> None:
    core = awaiting(Verb.EHLO)
    with pytest.raises(SMTPProtocolError):
        feed_bytewise(core, b"334 x\r\n" + reply)
    assert state_of(core) is State.BROKEN


def test_unsolicited_reply_is_a_protocol_error(feed: Feed) -> None:
    core = greeted()
    with pytest.raises(SMTPProtocolError, match="unsolicited"):
        feed(core, b"250 surprise\r\n")
    assert state_of(core) is State.BROKEN
    every_verb_raises(core)


def test_unsolicited_421_closes(feed: Feed) -> None:
    core = ready()
    events = feed(core, b"421 4.4.2 idle timeout\r\n")
    assert [e.reply.code for e in events] == [421]
    assert state_of(core) is State.CLOSED
    every_verb_raises(core)


def test_unsolicited_421_right_after_a_reply_closes_whatever_the_split() -> None:
    data = b"250 2.0.0 ok\r\n421 4.4.2 idle timeout\r\n"
    for cut in range(len(data) + 1):
        core = ready()
        core.noop()
        events = feed_whole(core, data[:cut]) + feed_whole(core, data[cut:])
        assert [e.reply.code for e in events] == [250, 421], cut
        assert state_of(core) is State.CLOSED, cut


def test_unsolicited_421_during_data_closes(feed: Feed) -> None:
    core = in_data()
    feed(core, b"421 timeout\r\n")
    assert state_of(core) is State.CLOSED


def test_extra_reply_after_a_pipeline_is_unsolicited(feed: Feed) -> None:
    core = ready()
    core.noop()
    with pytest.raises(SMTPProtocolError):
        feed(core, b"250 ok\r\n250 extra\r\n")
    assert state_of(core) is State.BROKEN


@pytest.mark.parametrize("garbage", [b"garbage\r\n", b"250x\r\n", b"\x00\r\n", b"600 no\r\n"])
def test_trailing_garbage_after_a_transcript(feed: Feed, garbage: bytes) -> None:
    core = ClientCore()
    events: list[Event] = []
    core.receive_data(GREETING)
    drain(core, events)
    core.ehlo(DOMAIN)
    with pytest.raises(SMTPProtocolError):
        feed(core, EHLO_REPLY + garbage)
    assert state_of(core) is State.BROKEN
    assert events[0].verb is Verb.CONNECT
    # the EHLO reply before the garbage was taken in
    assert core.capabilities is not None
    assert core.capabilities.pipelining


def test_malformed_reply_breaks_the_session(feed: Feed) -> None:
    core = ClientCore()
    with pytest.raises(SMTPProtocolError):
        feed(core, b"220 \xff\xfe\r\n")
    assert state_of(core) is State.BROKEN


def test_overlong_line_breaks_the_session_in_receive_data() -> None:
    core = ClientCore()
    with pytest.raises(SMTPProtocolError):
        core.receive_data(b"220 " + b"x" * 10_000)
    assert state_of(core) is State.BROKEN


# --------------------------------------------------------------------------------------------
# Illegal commands


@pytest.mark.parametrize(
    ("setup", "command"),
    [
        (ready, lambda c: c.rcpt(BOB)),
        (ready, lambda c: c.data()),
        (in_mail, lambda c: c.data()),
        (in_mail, lambda c: c.mail(SENDER)),
        (greeted, lambda c: c.mail(SENDER)),
        (greeted, lambda c: c.rset()),
        (in_mail, lambda c: c.starttls()),
        (in_mail, lambda c: c.auth(login())),
        (ready, lambda c: c.end_data()),
        (ready, lambda c: c.encode_data(b"x")),
        (in_data, lambda c: c.mail(SENDER)),
        (in_data, lambda c: c.quit()),
        (in_data, lambda c: c.rset()),
    ],
)
def test_illegal_command_raises_and_queues_nothing(
    setup: Callable[[], ClientCore], command: Callable[[ClientCore], object]
) -> None:
    core = setup()
    state, inflight = core.state, core.inflight
    with pytest.raises(SMTPUsageError):
        command(core)
    assert core.data_to_send() == b""
    assert state_of(core) is state
    assert core.inflight == inflight


def test_broken_core_refuses_every_verb() -> None:
    core = in_rcpt()
    core.broken()
    assert state_of(core) is State.BROKEN
    every_verb_raises(core)


def test_broken_during_data_refuses_everything() -> None:
    core = in_data()
    core.broken()
    every_verb_raises(core)


# --------------------------------------------------------------------------------------------
# Injection and SMTPUTF8

CONTROL = ["\r", "\n", "\r\n", "\x00", "\x1b", "\x7f", "\t", "\x0b"]


def forged_domain(text: str) -> Domain:
    """A Domain whose text bypasses validation, to test the core's own checks."""
    domain = Domain.parse("client.example")
    object.__setattr__(domain, "text", text)
    return domain


def forged_reverse_path(local: str) -> ReversePath:
    # A path whose validation was bypassed: the core must still refuse it.
    path = ReversePath.parse("alice@example.org")
    assert path.mailbox is not None
    object.__setattr__(path.mailbox, "local_part", local)
    object.__setattr__(path, "_text", f"<{local}@example.org>")
    return path


def forged_forward_path(local: str) -> ForwardPath:
    path = ForwardPath.parse("bob@example.com")
    assert path.mailbox is not None
    object.__setattr__(path.mailbox, "local_part", local)
    object.__setattr__(path, "_text", f"<{local}@example.com>")
    return path


@pytest.mark.parametrize("char", CONTROL)
def test_control_character_in_ehlo_name_is_refused(char: str) -> None:
    core = greeted()
    with pytest.raises(SMTPInputError):
        core.ehlo(forged_domain(f"client{char}MAIL FROM:<x@y.example>"))
    with pytest.raises(SMTPInputError):
        core.helo(forged_domain(f"client{char}"))
    assert core.data_to_send() == b""
    assert core.inflight == ()
    assert state_of(core) is State.GREETED


@pytest.mark.parametrize("char", CONTROL)
def test_control_character_in_mail_param_is_refused(char: str) -> None:
    core = ready()
    with pytest.raises(SMTPInputError):
        core.mail(SENDER, ["SIZE=100", f"BODY=8BITMIME{char}RCPT TO:<x@y.example>"])
    assert core.data_to_send() == b""
    assert core.inflight == ()
    with pytest.raises(SMTPUsageError):
        core.rcpt(BOB)  # no MAIL was queued


@pytest.mark.parametrize("char", CONTROL)
def test_control_character_in_rcpt_param_is_refused(char: str) -> None:
    core = in_mail()
    with pytest.raises(SMTPInputError):
        core.rcpt(BOB, [f"NOTIFY=NEVER{char}DATA"])
    assert core.data_to_send() == b""
    assert core.inflight == ()
    assert state_of(core) is State.MAIL


@pytest.mark.parametrize("char", CONTROL)
def test_control_character_in_paths_is_refused(char: str) -> None:
    core = ready()
    with pytest.raises(SMTPInputError):
        core.mail(forged_reverse_path(f"alice{char}"))
    with pytest.raises(SMTPInputError):
        core.mail(forged_reverse_path(f"alice{char}"), ["SMTPUTF8"])
    assert core.data_to_send() == b""
    core = in_mail()
    with pytest.raises(SMTPInputError):
        core.rcpt(forged_forward_path(f"bob{char}"))
    assert core.data_to_send() == b""


def test_non_ascii_address_without_smtputf8_is_refused() -> None:
    core = ready()
    with pytest.raises(SMTPInputError):
        core.mail(ReversePath.parse("jörg@example.org"))
    assert core.data_to_send() == b""
    core = in_mail()
    with pytest.raises(SMTPInputError):
        core.rcpt(ForwardPath.parse("用户@例子.广告"))
    with pytest.raises(SMTPInputError):
        core.rcpt(BOB, ["ORCPT=rfc822;jörg@example.org"])
    assert core.data_to_send() == b""


def test_non_ascii_param_without_smtputf8_is_refused() -> None:
    core = ready()
    with pytest.raises(SMTPInputError):
        core.mail(SENDER, ["ENVID=é"])
    assert core.data_to_send() == b""


def test_smtputf8_sends_utf8_lines(feed: Feed) -> None:
    core = ready()
    core.mail(ReversePath.parse("jörg@example.org"), ["SMTPUTF8"])
    core.rcpt(ForwardPath.parse("用户@例子.广告"))
    assert core.data_to_send() == (
        "MAIL FROM:<jörg@example.org> SMTPUTF8\r\nRCPT TO:<用户@例子.广告>\r\n".encode()
    )
    feed(core, b"250 ok\r\n250 ok\r\n")
    assert state_of(core) is State.RCPT


def test_smtputf8_param_is_case_insensitive() -> None:
    core = ready()
    core.mail(ReversePath.parse("jörg@example.org"), ["smtputf8"])
    assert core.data_to_send() == "MAIL FROM:<jörg@example.org> smtputf8\r\n".encode()


def test_smtputf8_does_not_carry_over_to_the_next_transaction(feed: Feed) -> None:
    core = ready()
    core.mail(SENDER, ["SMTPUTF8"])
    core.rcpt(ForwardPath.parse("用户@例子.广告"))
    feed(core, b"250 ok\r\n250 ok\r\n")
    core.rset()
    feed(core, b"250 ok\r\n")
    core.mail(SENDER)
    core.data_to_send()
    with pytest.raises(SMTPInputError):
        core.rcpt(ForwardPath.parse("用户@例子.广告"))
    assert core.data_to_send() == b""


def test_refused_mail_call_does_not_switch_the_open_transaction_to_smtputf8() -> None:
    core = ready()
    core.mail(SENDER)  # a transaction without SMTPUTF8
    with pytest.raises(SMTPUsageError):
        core.mail(SENDER, ["SMTPUTF8"])  # illegal: a transaction is already open
    core.data_to_send()
    with pytest.raises(SMTPInputError):
        core.rcpt(ForwardPath.parse("用户@例子.广告"))
    assert core.data_to_send() == b""


# --------------------------------------------------------------------------------------------
# The state table


def test_every_verb_has_a_rule() -> None:
    assert set(TABLE) == set(Verb)


def test_every_rule_is_well_formed() -> None:
    for verb, rule in TABLE.items():
        assert rule.legal, verb
        assert all(isinstance(state, State) for state in rule.legal), verb
        assert rule.success is None or isinstance(rule.success, State), verb
        assert rule.replies, verb
        assert set(rule.replies) <= {2, 3, 4, 5}, verb
        assert 2 in rule.replies or 3 in rule.replies, verb
        for nxt in rule.replies.values():
            assert nxt is None or isinstance(nxt, State), verb


def test_every_state_with_a_way_forward_has_a_legal_command() -> None:
    legal = {state for rule in TABLE.values() for state in rule.legal}
    # TLS is left by tls_established(); CLOSED and BROKEN are final.
    assert legal == set(State) - {State.TLS, State.CLOSED, State.BROKEN}


def test_final_states_are_never_legal_and_only_reached_on_purpose() -> None:
    for verb, rule in TABLE.items():
        assert State.BROKEN not in rule.legal
        assert State.CLOSED not in rule.legal
        assert State.BROKEN not in rule.replies.values(), verb
        assert rule.success is not State.BROKEN


def test_data_needs_354_and_auth_may_need_334() -> None:
    assert set(TABLE[Verb.DATA].replies) == {3, 4, 5}
    assert 3 in TABLE[Verb.AUTH].replies
    assert 3 in TABLE[Verb.AUTH_RESPONSE].replies
    for verb in (Verb.EHLO, Verb.HELO, Verb.MAIL, Verb.RCPT, Verb.END_DATA, Verb.QUIT):
        assert 3 not in TABLE[verb].replies, verb


def test_every_verb_can_be_issued_from_some_reachable_state() -> None:
    for verb in Verb:
        core = awaiting(verb)
        assert core.inflight == (verb,)


def test_bdat_chunks_then_last(feed: Feed) -> None:
    core = in_rcpt()
    txn = core.transaction
    assert txn is not None
    core.begin_bdat(chunk_size=5)
    core.body(b"hello wor")
    assert core.data_to_send() == b""  # staged until framed
    assert core.next_chunk()
    assert core.data_to_send() == b"BDAT 5\r\nhello"
    written = (txn.data_written, txn.end_written)
    assert written == (True, False)
    core.body(b"ld\n.dot")  # no dot-stuffing, line endings normalised (RFC 3030 §2)
    core.end_body()  # BDAT may be pipelined (RFC 3030 §4.2)
    assert core.data_to_send() == b"BDAT 5\r\n worlBDAT 5\r\nd\r\n.dBDAT 4 LAST\r\not\r\n"
    assert (txn.end_written, txn.outcome) == (True, Outcome.UNKNOWN)
    events = feed(core, b"250 2.0.0 5 octets\r\n" * 3 + b"250 2.0.0 queued\r\n")
    assert [e.verb for e in events] == [Verb.BDAT, Verb.BDAT, Verb.BDAT, Verb.BDAT_LAST]
    assert all(e.txn is txn for e in events)
    assert state_of(core) is State.READY
    assert txn.outcome is Outcome.ACCEPTED


def test_bdat_binary_goes_as_it_is() -> None:
    core = in_rcpt()
    core.begin_bdat(chunk_size=100, binary=True)
    core.body(b"a\nb\r.\x00")
    core.end_body()
    assert core.data_to_send() == b"BDAT 6 LAST\r\na\nb\r.\x00"


def test_bdat_refused_leaves_the_transaction_for_rset(feed: Feed) -> None:
    core = in_rcpt()
    core.begin_bdat(chunk_size=100)
    core.body(b"abc")
    core.end_body()
    assert core.data_to_send() == b"BDAT 5 LAST\r\nabc\r\n"
    feed(core, b"554 5.6.0 no\r\n")
    assert state_of(core) is State.RCPT
    txn = core.transaction
    assert txn is not None and txn.outcome is Outcome.REFUSED
    core.rset()
    assert core.data_to_send() == b"RSET\r\n"
    with pytest.raises(SMTPInputError):
        core.begin_bdat(chunk_size=0)
