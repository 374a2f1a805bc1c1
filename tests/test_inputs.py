"""Caller mistakes raise before any I/O (docs/errors.rst), and secrets never show in them.

The probe is a loopback socket that listens but never accepts and never speaks: a client
that connects to it sits in its accept queue (the kernel completes the TCP handshake), so
after a call we can tell, without any race, whether a connection was opened. Its timeouts
are short, so that a client that wrongly connects fails fast (TLS handshake or greeting
timeout) instead of hanging.
"""

from __future__ import annotations

import email.message
import socket
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import trio

from trio_sendmail import (
    Authentication,
    Domain,
    ForwardPath,
    Mailbox,
    OAuth2Token,
    ReversePath,
    SMTPAddressError,
    SMTPInputError,
    SMTPTimeoutError,
    Timeouts,
    sendmail,
    sendmail_with_starttls,
)
from trio_sendmail._credentials import _fetch_token
from trio_sendmail._inputs import ehlo_ascii, envelope, mail_body
from trio_sendmail.testing import TestCertificates

SendFunction = Callable[..., Awaitable[Any]]

FAST = Timeouts(connect=2, tls_handshake=0.5, greeting=0.5, command=0.5, quit=0.5)
MESSAGE = b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nHello.\r\n"
SECRET = "SeCrEt-Pa55-tail"


class SilentListener:
    """A loopback port that takes connections into its backlog and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]

    def connections(self) -> int:
        """How many connections were opened to it so far (each is closed here)."""
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[SilentListener]:
    probe = SilentListener()
    try:
        yield probe
    finally:
        probe.close()


@pytest.fixture(params=[sendmail, sendmail_with_starttls], ids=["implicit", "starttls"])
def function(request: pytest.FixtureRequest) -> SendFunction:
    send: SendFunction = request.param
    return send


def good_arguments(port: int, certs: TestCertificates) -> dict[str, Any]:
    return {
        "hostname": "127.0.0.1",
        "port": port,
        "sender": "alice@example.test",
        "recipients": ["bob@example.test"],
        "mail": MESSAGE,
        "domain": "client.example.test",
        "ssl_context": certs.client_context,
        "authentication": Authentication("alice", SECRET),
        "timeouts": FAST,
    }


async def _chunks() -> AsyncIterator[bytes]:  # pragma: no cover - never read
    yield MESSAGE


def _headers(*fields: str) -> email.message.EmailMessage:
    message = email.message.EmailMessage()
    for field in fields:
        name, _, value = field.partition(": ")
        message[name] = value
    message.set_content("Hello.\n")
    return message


# (what is wrong, the arguments that replace the good ones, the error expected)
BAD_INPUTS: list[tuple[str, dict[str, Any], type[Exception]]] = [
    ("no recipient", {"recipients": []}, SMTPInputError),
    ("no recipient from an iterator", {"recipients": iter(())}, SMTPInputError),
    ("a single str as recipients", {"recipients": "bob@example.test"}, TypeError),
    ("a single ForwardPath as recipients",
     {"recipients": ForwardPath.parse("bob@example.test")}, TypeError),
    ("a single Mailbox as recipients",
     {"recipients": Mailbox.parse("bob@example.test")}, TypeError),
    ("a malformed recipient", {"recipients": ["bob@@example.test"]}, SMTPAddressError),
    ("a malformed recipient after a good one",
     {"recipients": ["bob@example.test", "carol at example.test"]}, SMTPAddressError),
    ("a recipient of the wrong type", {"recipients": [b"bob@example.test"]}, TypeError),
    ("a malformed sender", {"sender": "alice@"}, SMTPAddressError),
    ("a sender with CR LF", {"sender": "alice@example.test\r\nRCPT TO:<x@y.test>"},
     SMTPAddressError),
    ("a str message", {"mail": MESSAGE.decode()}, TypeError),
    ("a message of the wrong type", {"mail": 42}, TypeError),
    ("an EHLO name with no A-label form", {"domain": "\ufffd.example"}, SMTPInputError),
    ("a malformed EHLO name", {"domain": "client example"}, SMTPAddressError),
    ("authentication of the wrong type", {"authentication": ("alice", SECRET)}, TypeError),
    ("ssl_context of the wrong type", {"ssl_context": "CERT_NONE"}, TypeError),
    ("an invalid port", {"port": 70000}, SMTPInputError),
    ("bytes and no recipients", {"recipients": None}, SMTPInputError),
    ("bytes and no sender", {"sender": None}, SMTPInputError),
    ("a stream and no recipients", {"recipients": None, "mail": _chunks()}, SMTPInputError),
    ("a message naming no recipient", {"recipients": None, "mail": _headers("From: a@x.test")},
     SMTPInputError),
    ("a message with an unreadable To",
     {"recipients": None, "mail": _headers("From: a@x.test", "To: b@x.test, <<<")},
     SMTPInputError),
    ("a message naming no sender", {"sender": None, "mail": _headers("To: b@x.test")},
     SMTPInputError),
    ("a message with a bad address in To",
     {"recipients": None, "mail": _headers("From: a@x.test", "To: b@x..test")},
     SMTPInputError),
    ("a message with a sender that is no path",
     {"sender": None, "mail": email.message_from_bytes(b"From: a@[bad\r\nTo: b@x.test\r\n\r\n")},
     SMTPInputError),
    ("an EHLO name that IDNA 2008 refuses", {"domain": "\u2603.example"}, SMTPInputError),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "expected"),
    [pytest.param(change, expected, id=name) for name, change, expected in BAD_INPUTS],
)
async def test_bad_input_raises_before_connecting(
    function: SendFunction,
    listener: SilentListener,
    certs: TestCertificates,
    change: dict[str, Any],
    expected: type[Exception],
) -> None:
    arguments = good_arguments(listener.port, certs) | change
    with trio.fail_after(10), pytest.raises(expected) as info:
        await function(**arguments)
    assert not isinstance(info.value, SMTPTimeoutError)
    assert listener.connections() == 0


async def test_the_probe_sees_a_connection(
    function: SendFunction, listener: SilentListener, certs: TestCertificates
) -> None:
    """The control: with good arguments the client does connect (and times out, as
    nobody answers), so the probe above would have seen a connection."""
    with trio.fail_after(10), pytest.raises(SMTPTimeoutError):
        await function(**good_arguments(listener.port, certs))
    assert listener.connections() == 1


def test_ehlo_name_error_names_the_problem() -> None:
    with pytest.raises(SMTPInputError, match="A-labels") as info:
        ehlo_ascii("\ufffd.example")
    assert info.value.__cause__ is None and info.value.__context__ is None


@pytest.mark.parametrize(
    ("name", "wire"),
    [
        ("client.example.test", "client.example.test"),
        ("Client.Example.TEST", "Client.Example.TEST"),
        ("bücher.example", "xn--bcher-kva.example"),
        # IDNA 2008 (the idna package), not the stdlib's IDNA 2003 ("strasse.de").
        ("straße.de", "xn--strae-oqa.de"),
        ("Straße.DE", "xn--strae-oqa.de"),
        ("faß.example", "xn--fa-hia.example"),
        ("ドメイン.テスト", "xn--eckwd4c7c.xn--zckzah"),
        ("[192.0.2.1]", "[192.0.2.1]"),
        ("192.0.2.1", "[192.0.2.1]"),
        ("[IPv6:2001:DB8::1]", "[IPv6:2001:db8::1]"),
    ],
)
def test_ehlo_ascii(name: str, wire: str) -> None:
    assert ehlo_ascii(name) == wire
    assert ehlo_ascii(Domain.parse(name)) == wire


@pytest.mark.parametrize("name", ["a\x00b.example", "a\r\nb.example", "", "bad name"])
def test_ehlo_ascii_refuses_malformed_names(name: str) -> None:
    with pytest.raises(SMTPInputError):
        ehlo_ascii(name)


def test_envelope_rules() -> None:
    rpath, fpaths = envelope(
        "", (r for r in ["b@example.test", "c@example.test", "b@example.test"])
    )
    assert rpath == ReversePath.parse("<>")
    assert fpaths == [ForwardPath.parse("b@example.test"), ForwardPath.parse("c@example.test")]
    with pytest.raises(SMTPInputError, match="at least one recipient"):
        envelope("a@example.test", [])
    with pytest.raises(TypeError, match="not a single address"):
        envelope("a@example.test", "b@example.test")


def test_mail_body_serialises_a_message_once() -> None:
    message = email.message.EmailMessage()
    message["Subject"] = "hi"
    message.set_content("Hello.\n")
    body = mail_body(message)
    assert isinstance(body, bytes) and body.endswith(b"\r\n\r\nHello.\r\n")
    assert mail_body(bytearray(b"x")) == b"x"
    stream = _chunks()
    assert mail_body(stream) is stream
    with pytest.raises(TypeError, match="not str"):
        mail_body("text")  # type: ignore[arg-type]


# ---------------------------------------------------------------- secrets that cannot be sent

UNENCODABLE = "SeCrEt-\udce9-tail"  # a Latin-1 byte read with surrogateescape


def assert_nothing_shows(exc: BaseException, *secrets: str) -> None:
    """Neither the message, the repr, nor a chained error or a traceback shows a secret."""
    assert exc.__cause__ is None and exc.__context__ is None
    texts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    for text in texts:
        for secret in (*secrets, "\udce9", "\\udce9"):
            assert secret not in text, (secret, text)


@pytest.mark.parametrize(
    ("field", "arguments"),
    [
        ("password", {"username": "alice", "password": UNENCODABLE}),
        ("username", {"username": UNENCODABLE, "password": "pw"}),
        ("authzid", {"username": "alice", "password": "pw", "authzid": UNENCODABLE}),
        ("username", {"username": UNENCODABLE, "mechanism": "XOAUTH2",
                      "token_provider": lambda: None}),
    ],
)  # fmt: skip
def test_unencodable_credentials_are_input_errors(field: str, arguments: dict[str, Any]) -> None:
    with pytest.raises(SMTPInputError, match=f"Authentication.{field} cannot be encoded") as info:
        Authentication(**arguments)
    assert_nothing_shows(info.value, "SeCrEt", "tail")


@pytest.mark.parametrize("token", [UNENCODABLE, "SeCrEt tail", "SeCrEt-é-tail"])
async def test_tokens_that_cannot_be_sent_are_input_errors(token: str) -> None:
    with pytest.raises(SMTPInputError) as info:
        OAuth2Token(token)
    assert_nothing_shows(info.value, "SeCrEt", "tail")

    async def provider() -> str:
        return token

    auth = Authentication("alice", mechanism="OAUTHBEARER", token_provider=provider)
    with pytest.raises(SMTPInputError) as info:
        await _fetch_token(auth)
    assert_nothing_shows(info.value, "SeCrEt", "tail")
