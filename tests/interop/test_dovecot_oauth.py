"""XOAUTH2 and OAUTHBEARER against a real server that validates the tokens:
Dovecot's submission service, whose ``oauth2`` passdb asks a token-introspection
endpoint (RFC 7662) that this test serves on loopback; Dovecot relays accepted
mail to a fake SMTP server that this test serves too.

A good token logs in and sends; a refused token and an expired one get 535
after the RFC 7628 error challenge; no token appears in the transcript, in an
error or in Dovecot's log.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from urllib.parse import parse_qs

import attrs
import pytest
import trio

import trio_sendmail as ts
from trio_sendmail.testing import FakeSMTPServer

from ..defaults import open_session
from ..dovecot_plugin import DovecotEnv

pytestmark = pytest.mark.interop

MECHANISMS = ["XOAUTH2", "OAUTHBEARER"]


@attrs.define
class Introspection:
    """A token-introspection endpoint (RFC 7662 §2): POST token=… → JSON."""

    #: token → the JSON answer
    answers: dict[str, dict[str, object]] = attrs.field(factory=dict)
    asked: list[str] = attrs.field(factory=list)

    async def handle(self, stream: trio.abc.Stream) -> None:
        data = b""
        with trio.move_on_after(10):
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some()
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                body += await stream.receive_some()
            token = parse_qs(body.decode())["token"][0]
            self.asked.append(token)
            answer = json.dumps(self.answers.get(token, {"active": False})).encode()
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(answer), answer)
            )
        await stream.aclose()


@asynccontextmanager
async def serving(
    dovecot: DovecotEnv, introspection: Introspection, relay: FakeSMTPServer
) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(trio.serve_tcp, introspection.handle, dovecot.oauth_port, host=dovecot.host)
        )
        await nursery.start(partial(relay.serve_tcp, host=dovecot.host, port=dovecot.relay_port))
        yield
        nursery.cancel_scope.cancel()


def auth(user: str, token: str, mechanism: str) -> ts.Authentication:
    async def get_token() -> str:
        return token

    return ts.Authentication(user, token_provider=get_token, mechanism=mechanism)


def session_options(dovecot: DovecotEnv) -> dict[str, object]:
    return {
        "port": dovecot.submission_port,
        "tls": ts.TLSMode.STARTTLS,
        "ssl_context": ssl.create_default_context(cafile=str(dovecot.ca_file)),
    }


def secret_free(token: str, dovecot: DovecotEnv, caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        assert token not in record.getMessage()
    log = dovecot.log_file.read_text(encoding="utf-8", errors="replace")
    assert token not in log


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_good_token(
    dovecot: DovecotEnv, mechanism: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_sendmail")
    token = "good-" + uuid.uuid4().hex
    introspection = Introspection({token: {"active": True, "username": dovecot.user}})
    relay = FakeSMTPServer(extensions=("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"))
    body = b"Subject: oauth\r\n\r\nsent with a token\r\n"
    async with serving(dovecot, introspection, relay):
        with trio.fail_after(30):
            async with open_session(
                dovecot.tls_hostname,
                authentication=auth(dovecot.user, token, mechanism),
                **session_options(dovecot),  # type: ignore[arg-type]
            ) as session:
                assert session.tls and session.authenticated
                assert {"XOAUTH2", "OAUTHBEARER"} <= session.capabilities.auth_mechanisms
                result = await session.send(
                    dovecot.address(dovecot.user), ["rcpt@example.test"], body
                )
    assert result.reply.code == 250
    assert introspection.asked == [token]
    [relayed] = relay.messages
    assert relayed.recipients == ("rcpt@example.test",)
    assert relayed.data.endswith(body)
    assert any(f"AUTH {mechanism} <redacted>" in r.getMessage() for r in caplog.records)
    secret_free(token, dovecot, caplog)


EXPIRED: dict[str, object] = {
    "active": False,
    "exp": 1,
}  # RFC 7662 §2.2: an expired token is inactive


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("case", ["refused", "expired"])
async def test_refused_and_expired_tokens(
    dovecot: DovecotEnv, mechanism: str, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_sendmail")
    token = f"{case}-" + uuid.uuid4().hex
    introspection = Introspection({token: EXPIRED} if case == "expired" else {})
    relay = FakeSMTPServer()
    async with serving(dovecot, introspection, relay):
        with trio.fail_after(30), pytest.raises(ts.SMTPAuthenticationError) as caught:
            async with open_session(
                dovecot.tls_hostname,
                authentication=auth(dovecot.user, token, mechanism),
                **session_options(dovecot),  # type: ignore[arg-type]
            ):
                pass  # pragma: no cover
    error = caught.value
    assert error.code == 535
    # RFC 7628 §3.2.2: the server's error challenge, as a JSON object (Dovecot
    # answers XOAUTH2 as Google does, OAUTHBEARER as the RFC does).
    if mechanism == "XOAUTH2":
        assert error.details == {"status": "401", "schemes": "bearer", "scope": "mail"}
    else:
        assert error.details == {"status": "invalid_token"}
    assert introspection.asked == [token]
    assert relay.messages == [] and relay.connections == 0
    assert token not in str(error) and token not in repr(error)
    secret_free(token, dovecot, caplog)


def test_expired_is_in_the_past() -> None:
    assert int(str(EXPIRED["exp"])) < time.time()
