"""Secrets never show: not in logs, transcripts, reprs, or error messages.

One debug-logged run covers every AUTH mechanism (PLAIN, LOGIN, CRAM-MD5,
SCRAM-SHA-256, XOAUTH2, OAUTHBEARER) over STARTTLS and implicit TLS, over plaintext
where the caller opted in, through sessions, ``sendmail``, the pool and
``send_bulk``; then the failures: wrong passwords, refused tokens, a SCRAM server
that cannot prove itself, AUTH refused over plaintext, malformed credentials.

Every password and token used (the right ones and the wrong ones) is a secret. Its
plain form, its base64 form (at each of the three alignments it can have inside a
longer base64 string, as in AUTH PLAIN), and every substring of 6 characters or
more of those, must appear nowhere in:

* the log records captured at DEBUG (message and arguments);
* the fake server's transcript;
* the repr and str of every public object (every class of ``trio_sendmail.__all__``
  is instantiated, the live Session and Pool included, and the SASL mechanism
  objects after each step of an exchange), and of their attributes;
* the str, repr, arguments and formatted traceback of every exception raised, and
  of every exception in its ``__cause__`` / ``__context__`` chain.
"""

from __future__ import annotations

import base64
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Iterator
from functools import partial
from typing import Any

import attrs
import pytest
import trio

import trio_sendmail as ts
from trio_sendmail._sasl import MECHANISMS, Mechanism, OAuth2Token, ScramSha256Mechanism
from trio_sendmail.testing import FakeSMTPServer, TestCertificates, serve_fake_smtp

from .. import defaults
from ..helpers import tls_server
from .support import LOOPBACK

SECRET = "qZ7!vK2#Lm9$xR4%pW"
WRONG = "wR0ng!Bq8#Tz5$Hy6&"
TOKEN = "ya29.Qx7Kp2Lm9Rt4Vw8Zs3"
BAD_TOKEN = "ya29.Bad7Kq2Xz9Lp4Nd"
SECRETS = (SECRET, WRONG, TOKEN, BAD_TOKEN)
USER = "alice"
ALL_MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256", "XOAUTH2", "OAUTHBEARER")
OAUTH = ("XOAUTH2", "OAUTHBEARER")
WINDOW = 6


def _b64_cores(secret: bytes) -> Iterator[str]:
    """The part of base64(prefix + secret + suffix) that only the secret decides, for the
    three alignments the secret can have."""
    for k in range(3):
        encoded = base64.b64encode(b"\x00" * k + secret + b"\x00\x00\x00").decode("ascii")
        start = -(-8 * k // 6)  # the first character that no prefix byte touches
        stop = (8 * (k + len(secret))) // 6  # the last one that no suffix byte touches
        yield encoded[start:stop]


def forbidden_windows(secrets: Iterable[str]) -> dict[str, str]:
    """Every 6-character window of every form of every secret, mapped to its secret.

    Any substring of 6 characters or more that shows contains one of these windows."""
    windows: dict[str, str] = {}
    for secret in secrets:
        for form in (secret, *_b64_cores(secret.encode("utf-8"))):
            assert len(form) >= WINDOW
            for i in range(len(form) - WINDOW + 1):
                windows[form[i : i + WINDOW]] = secret
    return windows


FORBIDDEN = forbidden_windows(SECRETS)


def leaks(text: str) -> list[tuple[str, str]]:
    return [
        (text[i : i + WINDOW], FORBIDDEN[text[i : i + WINDOW]])
        for i in range(len(text) - WINDOW + 1)
        if text[i : i + WINDOW] in FORBIDDEN
    ]


def test_the_leak_detector_detects() -> None:
    plain_blob = base64.b64encode(f"\x00{USER}\x00{SECRET}".encode()).decode()
    bearer = base64.b64encode(f"auth=Bearer {TOKEN}".encode()).decode()
    plain = base64.b64encode(SECRET.encode()).decode()
    for text in (SECRET, f"xx{SECRET[3:9]}yy", plain, plain_blob, bearer):
        assert leaks(text), text
    assert not leaks(f"AUTH PLAIN <redacted> {USER} {SECRET[:5]} {TOKEN[-5:]}")


def public_name(kind: type) -> str:
    """The name of the public class *kind* stands for: a flavour of a reply
    error (``SMTPSenderRefused.Transient``) counts as the class itself."""
    base = kind.__mro__[1]
    if kind in (getattr(base, "Transient", None), getattr(base, "Permanent", None)):
        return base.__name__
    return kind.__name__


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo += [item.__cause__, item.__context__]
        if isinstance(item, BaseExceptionGroup):
            todo += list(item.exceptions)


@attrs.define
class Evidence:
    """Every text that must be free of secrets, with where it came from."""

    texts: list[tuple[str, str]] = attrs.field(factory=list)
    exceptions: list[BaseException] = attrs.field(factory=list)
    covered: set[str] = attrs.field(factory=set)

    def text(self, where: str, text: str) -> None:
        self.texts.append((where, text))

    def obj(self, where: str, value: object, *, deep: bool = False) -> None:
        """repr and str of *value* (and, when *deep*, of each of its attributes)."""
        self.text(f"repr({where})", repr(value))
        self.text(f"str({where})", str(value))
        name = public_name(type(value))
        if name in ts.__all__:
            self.covered.add(name)
        if deep:
            # The attributes' reprs, except raw strings and bytes: a password attribute
            # holds the password by design (what matters is that no repr shows it).
            for attribute, item in _attributes(value):
                if not isinstance(item, str | bytes | bytearray | memoryview):
                    self.text(f"repr({where}.{attribute})", repr(item))

    def error(self, where: str, exc: BaseException) -> None:
        self.exceptions.append(exc)
        for item in exception_chain(exc):
            self.covered.add(public_name(type(item)))
            self.text(f"str({where})", str(item))
            self.text(f"repr({where})", repr(item))
            self.text(f"args({where})", repr(item.args))
            for attribute, value in _attributes(item):
                self.text(f"{where}.{attribute}", repr(value))
        self.text(f"traceback({where})", "".join(traceback.format_exception(exc)))

    def check(self) -> None:
        found = [(where, leaked[0]) for where, text in self.texts if (leaked := leaks(text))]
        assert found == [], "\n".join(map(str, found))


def _attributes(value: object) -> Iterator[tuple[str, object]]:
    slots = getattr(type(value), "__slots__", ())
    names = list(getattr(value, "__dict__", {})) + [s for s in slots if isinstance(s, str)]
    for name in names:
        if name.startswith("__"):
            continue
        try:
            yield name, getattr(value, name)
        except AttributeError:
            continue


def provider(token: str) -> Callable[[], Awaitable[OAuth2Token]]:
    async def fetch() -> OAuth2Token:
        await trio.lowlevel.checkpoint()
        return OAuth2Token(token, expires_at=time.time() + 3600)

    return fetch


def credentials(mechanism: str | None, *, password: str = SECRET, token: str = TOKEN
                ) -> ts.Authentication:  # fmt: skip
    if mechanism in OAUTH:
        return ts.Authentication(USER, mechanism=mechanism, token_provider=provider(token))
    if mechanism is None:
        return ts.Authentication(USER, password, token_provider=provider(token))
    return ts.Authentication(USER, password, mechanism=mechanism)


def make_server(certs: TestCertificates, **kwargs: Any) -> FakeSMTPServer:
    return tls_server(
        certs, users={USER: SECRET}, tokens={TOKEN: USER}, auth_mechanisms=ALL_MECHANISMS, **kwargs
    )


async def session_run(
    evidence: Evidence, port: int, certs: TestCertificates, auth: ts.Authentication,
    where: str, *, tls: ts.TLSMode = ts.TLSMode.STARTTLS, insecure: bool = False,
) -> None:  # fmt: skip
    """One session that authenticates and sends; its objects go into *evidence*."""
    async with defaults.open_session(
        LOOPBACK, port=port, tls=tls, ssl_context=certs.client_context,
        authentication=auth, insecure_auth_over_plaintext=insecure,
    ) as session:  # fmt: skip
        assert session.authenticated
        evidence.obj(f"{where} session", session, deep=True)
        evidence.obj(f"{where} core", session._core, deep=True)
        evidence.obj(f"{where} capabilities", session.capabilities)
        result = await session.send("a@example.com", ["b@example.com"], b"Subject: hi\r\n\r\nx")
        evidence.obj(f"{where} result", result)
        evidence.obj(f"{where} reply", result.reply)
        evidence.obj(f"{where} status", result.reply.enhanced_status)
        evidence.obj(f"{where} statistics", session.statistics())
        evidence.obj(f"{where} session after", session, deep=True)
    evidence.obj(f"{where} closed session", session, deep=True)
    evidence.obj(f"{where} auth", auth, deep=True)


async def expect_failure(
    evidence: Evidence, where: str, kind: type[BaseException],
    call: Callable[[], Awaitable[object]],
) -> None:  # fmt: skip
    with pytest.raises(kind) as info:
        await call()
    evidence.error(where, info.value)


async def mechanism_steps(evidence: Evidence) -> None:
    """Each mechanism object, stepped through an exchange, repr'd at every step."""
    challenges: dict[str, list[bytes]] = {
        "PLAIN": [b""],
        "LOGIN": [b"Username:", b"Password:"],
        "CRAM-MD5": [b"<1896.697170952@postoffice.example.net>"],
        "SCRAM-SHA-256": [b"r=fixednonceSERVER,s=QSA=,i=4096", b"v=AAAA"],
        "XOAUTH2": [b"", b'{"status":"401"}'],
        "OAUTHBEARER": [b"", b'{"status":"invalid_token"}'],
    }
    for name, cls in MECHANISMS.items():
        auth = credentials(name)
        mechanism: Mechanism = (
            ScramSha256Mechanism(auth, nonce="fixednonce") if name == "SCRAM-SHA-256"
            else cls(auth)
        )  # fmt: skip
        await mechanism.prepare()
        evidence.obj(f"{name} prepared", mechanism, deep=True)
        mechanism.initial_response()
        evidence.obj(f"{name} started", mechanism, deep=True)
        for challenge in challenges[name]:
            try:
                mechanism.respond(challenge)
            except ts.SMTPError as exc:
                evidence.error(f"{name} respond", exc)
            evidence.obj(f"{name} stepped", mechanism, deep=True)
        mechanism.verify_success(None)
        mechanism.failed()
        evidence.obj(f"{name} done", mechanism, deep=True)


def public_objects(evidence: Evidence) -> None:
    """An instance of every class of trio_sendmail.__all__ that needs no live connection."""
    reply = ts.Reply(535, ("Authentication credentials invalid",), ts.EnhancedStatus(5, 7, 8))
    path = ts.ForwardPath.parse("b@example.com")
    message = ts.BulkMessage("a@example.com", ["b@example.com"], b"x")
    values: list[object] = [
        ts.DSN(ret=ts.DSNReturn.HEADERS, envid="e1", notify=[ts.DSNNotify.FAILURE], orcpt=True),
        credentials("PLAIN"), credentials(None), credentials("OAUTHBEARER"),
        message,
        ts.BulkProgress(1, 0, 0, 0, 0, 0, 0.5),
        ts.BulkResult(message, ts.Outcome.ACCEPTED), ts.BulkSummary(),
        ts.Capabilities("mx", {"AUTH": ("PLAIN",)}), ts.DSNNotify.DELAY, ts.DSNReturn.FULL,
        ts.Domain.parse("example.com"), ts.DomainKind.NAME, ts.EnhancedStatus(2, 0, 0),
        path, ts.Mailbox.parse("a@example.com"), OAuth2Token(TOKEN, expires_at=1.0),
        ts.Outcome.UNKNOWN, ts.PoolLimits(), reply, ts.ReversePath.parse("a@example.com"),
        ts.SendResult(reply, (path,), {path: reply}), ts.TLSMode.STARTTLS, ts.Timeouts(),
        ts.SessionStatistics("ready", tls=True, authenticated=True, messages_sent=1,
                             messages_failed=0, round_trips=3, bytes_sent=100,
                             bytes_received=200),
        ts.PoolStatistics(1, 1, 0, 0, 8, 0, 1, 0, 0, 0),
        ts.SMTPRecipientsRefused.from_replies({path: reply}),
        ts.SMTPMessageTooLarge("too large", size=2, limit=1),
        ts.SMTPTimeoutError("timed out", phase="data_end"),
        ts.SMTPPartialDelivery(ts.SendResult(reply, (path,), final_replies={path: reply})),
    ]  # fmt: skip
    for name in ts.__all__:
        value = getattr(ts, name)
        if isinstance(value, type) and issubclass(value, ts.SMTPError):
            if issubclass(value, ts.SMTPResponseError):
                values.append(value.from_reply(reply, "AUTH"))
            elif value not in (ts.SMTPRecipientsRefused, ts.SMTPMessageTooLarge,
                               ts.SMTPTimeoutError, ts.SMTPPartialDelivery):  # fmt: skip
                values.append(value("a message"))
        elif not isinstance(value, type):
            evidence.text(f"repr({name})", repr(value))  # functions
    for value in values:
        evidence.obj(type(value).__name__, value, deep=True)
    connection = ts.ConnectionSettings("smtp.example.com", authentication=credentials("PLAIN"))
    evidence.obj("ConnectionSettings", connection, deep=True)
    # A TypedDict makes plain dicts: its instances are checked, and it is covered, here.
    evidence.obj("ConnectionOptions", ts.ConnectionOptions(authentication=credentials("PLAIN")))
    evidence.covered.add("ConnectionOptions")


async def pool_run(evidence: Evidence, port: int, certs: TestCertificates) -> None:
    """The pool and send_bulk, with SCRAM-SHA-256."""
    async with defaults.open_pool(
        LOOPBACK, port=port, tls=ts.TLSMode.STARTTLS, ssl_context=certs.client_context,
        authentication=credentials("SCRAM-SHA-256"),
    ) as pool:  # fmt: skip
        tracker = ts.OutcomeTracker()
        evidence.obj(
            "pool result",
            await pool.send("a@example.com", ["b@example.com"], b"x", tracker=tracker),
        )
        evidence.obj("tracker", tracker, deep=True)
        async with pool.lease() as lease:
            await lease.send("a@example.com", ["b@example.com"], b"z", defer=True)
            evidence.obj("lease", lease, deep=True)
        messages = [
            ts.BulkMessage("a@example.com", ["b@example.com"], b"y", key=i) for i in (1, 2)
        ]
        evidence.obj("bulk summary", await ts.send_bulk(messages, pool=pool), deep=True)
        evidence.obj("pool", pool, deep=True)
        evidence.obj("pool statistics", pool.statistics())
        for connection in pool._idle:
            evidence.obj("pooled session", connection.session, deep=True)
    evidence.obj("closed pool", pool, deep=True)


async def sendmail_run(port: int, certs: TestCertificates, auth: ts.Authentication
                       ) -> ts.SendResult:  # fmt: skip
    return await defaults.sendmail(
        hostname=LOOPBACK, port=port, sender="a@example.com", recipients=["b@example.com"],
        mail=b"x", ssl_context=certs.client_context, authentication=auth,
        timeouts=ts.Timeouts(tls_handshake=10),
    )  # fmt: skip


async def test_no_secret_in_logs_transcripts_reprs_or_errors(
    certs: TestCertificates, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    evidence = Evidence()
    server = make_server(certs)
    plain_server = make_server(certs, auth_requires_tls=False)

    async with serve_fake_smtp(server) as port, serve_fake_smtp(plain_server) as plain_port:
        # Every mechanism, by name, over STARTTLS; the automatic choice too.
        for name in (*ALL_MECHANISMS, None):
            await session_run(evidence, port, certs, credentials(name), f"starttls {name}")
        # The secret-keeping ones over plaintext, where the caller opted in.
        for name in ("CRAM-MD5", "SCRAM-SHA-256", "LOGIN", "PLAIN", "XOAUTH2"):
            await session_run(
                evidence, plain_port, certs, credentials(name), f"plain {name}",
                tls=ts.TLSMode.INSECURE_PLAINTEXT, insecure=True,
            )  # fmt: skip
        await pool_run(evidence, port, certs)

        # Failures: wrong passwords, refused tokens, a SCRAM server that cannot prove
        # that it knows the password, AUTH over plaintext without the opt-in, implicit
        # TLS against a plaintext server.
        refused = ts.SMTPAuthenticationError
        for name in ("PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"):
            attempt = partial(session_run, evidence, port, certs,
                              credentials(name, password=WRONG), "x")  # fmt: skip
            await expect_failure(evidence, f"wrong password {name}", refused, attempt)
        for name in OAUTH:
            attempt = partial(session_run, evidence, port, certs,
                              credentials(name, token=BAD_TOKEN), "x")  # fmt: skip
            await expect_failure(evidence, f"bad token {name}", refused, attempt)
            error = evidence.exceptions[-1]
            assert isinstance(error, refused) and error.details is not None
        server.scram_bad_server_signature = True
        attempt = partial(session_run, evidence, port, certs, credentials("SCRAM-SHA-256"), "x")
        await expect_failure(evidence, "scram proof", refused, attempt)
        server.scram_bad_server_signature = False
        attempt = partial(session_run, evidence, plain_port, certs, credentials("PLAIN"), "x",
                          tls=ts.TLSMode.INSECURE_PLAINTEXT)  # fmt: skip
        await expect_failure(evidence, "plaintext", ts.SMTPNotSupportedError, attempt)
        sendmail = partial(sendmail_run, port, certs, credentials("PLAIN"))
        await expect_failure(evidence, "sendmail TLS", ts.SMTPTLSError, sendmail)

    async with serve_fake_smtp(server, implicit_tls=True) as tls_port:
        evidence.obj("sendmail result", await sendmail_run(tls_port, certs, credentials(None)))
        sendmail = partial(sendmail_run, tls_port, certs, credentials("LOGIN", password=WRONG))
        await expect_failure(evidence, "sendmail wrong", refused, sendmail)

    # Malformed credentials.
    builders: dict[str, Callable[[], object]] = {
        "NUL in password": lambda: ts.Authentication(USER, f"{SECRET}\x00{WRONG}"),
        "NUL in token user": lambda: ts.Authentication(f"x\x00{SECRET}", SECRET),
        "token with a space": lambda: OAuth2Token(f"{BAD_TOKEN} {TOKEN}"),
        "token of a wrong type": lambda: OAuth2Token(TOKEN.encode()),  # type: ignore[arg-type]
        "unknown mechanism": lambda: ts.Authentication(USER, SECRET, mechanism="DIGEST-MD5"),
    }
    for where, build in builders.items():
        with pytest.raises((ts.SMTPInputError, TypeError)) as info:
            build()
        evidence.error(where, info.value)

    async def bad_provider() -> str:
        return f"{BAD_TOKEN} not a token"

    auth = ts.Authentication(USER, mechanism="XOAUTH2", token_provider=bad_provider)
    async with serve_fake_smtp(server) as port:
        attempt = partial(session_run, evidence, port, certs, auth, "x")
        await expect_failure(evidence, "bad provider", ts.SMTPInputError, attempt)

    await mechanism_steps(evidence)
    public_objects(evidence)

    # Everything said and logged.
    for record in caplog.records:
        evidence.text(f"log {record.name}", record.getMessage())
        evidence.text(f"log args {record.name}", repr(record.args))
        if record.exc_info and record.exc_info[1] is not None:
            evidence.error(f"logged {record.name}", record.exc_info[1])
    evidence.text("caplog", caplog.text)
    for fake in (server, plain_server):
        for who, line in fake.transcript:
            evidence.text(f"transcript {who}", line.decode("utf-8", "replace"))
    assert any("AUTH" in text for where, text in evidence.texts if where.startswith("log"))
    assert len(server.messages) >= len(ALL_MECHANISMS)

    evidence.check()
    classes = {name for name in ts.__all__ if isinstance(getattr(ts, name), type)}
    assert classes - evidence.covered == set()
