"""CRAM-MD5 and SCRAM-SHA-256 against a real Postfix (Cyrus SASL, sasldb).

``tests/interop/postfix.sh`` runs a submission service on ``sasl_port`` whose
Cyrus configuration offers only ``SCRAM-SHA-256 CRAM-MD5``; the sasldb keeps
the secrets both need (the SCRAM verifiers too). Each mechanism logs in, sends
a message, and is refused with a wrong password; no secret reaches the
transcript, the error or Postfix's log.
"""

from __future__ import annotations

import json
import logging
import ssl
import uuid

import pytest

import trio_sendmail as ts

from ..defaults import open_session
from ..postfix_plugin import PostfixEnv, _unavailable

pytestmark = pytest.mark.postfix

MECHANISMS = ["CRAM-MD5", "SCRAM-SHA-256"]


@pytest.fixture
def sasl_port(postfix: PostfixEnv) -> int:
    data = json.loads((postfix.state_dir / "env.json").read_text(encoding="utf-8"))
    if "sasl_port" not in data:
        _unavailable("the running instance has no sasl_port (restart it with postfix.sh)")
    return int(data["sasl_port"])


def message(token: str) -> bytes:
    return f"Subject: sasl {token}\r\nMessage-ID: <{token}@example.test>\r\n\r\nHi.\r\n".encode()


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("who", ["ascii", "utf8"])
async def test_login_and_send(
    postfix: PostfixEnv,
    sasl_port: int,
    tls_context: ssl.SSLContext,
    mechanism: str,
    who: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_sendmail")
    user, password = (
        (postfix.user, postfix.password) if who == "ascii"
        else (postfix.utf8_user, postfix.utf8_password)
    )  # fmt: skip
    token = uuid.uuid4().hex
    async with open_session(
        postfix.tls_hostname,
        port=sasl_port,
        tls=ts.TLSMode.STARTTLS,
        ssl_context=tls_context,
        authentication=ts.Authentication(user, password, mechanism=mechanism),
    ) as session:
        assert session.capabilities.auth_mechanisms == frozenset(MECHANISMS)
        assert session.authenticated
        result = await session.send(user, [postfix.address("alice")], message(token))
    assert result.reply.code == 250
    lines = [record.getMessage() for record in caplog.records]
    assert any(f"AUTH {mechanism}" in line for line in lines)
    assert any("S: 235 2.7.0" in line for line in lines)
    assert not any(password in line for line in lines)
    log = postfix.log_file.read_text(encoding="utf-8", errors="replace")
    assert f"sasl_method={mechanism}, sasl_username={user}" in log
    assert password not in log


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_wrong_password_is_refused(
    postfix: PostfixEnv,
    sasl_port: int,
    tls_context: ssl.SSLContext,
    mechanism: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_sendmail")
    wrong = "not-the-password-" + uuid.uuid4().hex
    with pytest.raises(ts.SMTPAuthenticationError) as caught:
        async with open_session(
            postfix.tls_hostname,
            port=sasl_port,
            tls=ts.TLSMode.STARTTLS,
            ssl_context=tls_context,
            authentication=ts.Authentication(postfix.user, wrong, mechanism=mechanism),
        ):
            pass  # pragma: no cover
    error = caught.value
    assert error.code == 535 and str(error.enhanced_status) == "5.7.8"
    assert wrong not in str(error) and wrong not in repr(error)
    assert not any(wrong in record.getMessage() for record in caplog.records)


async def test_strongest_mechanism_is_chosen(
    postfix: PostfixEnv, sasl_port: int, tls_context: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG, logger="trio_sendmail")
    async with open_session(
        postfix.tls_hostname,
        port=sasl_port,
        tls=ts.TLSMode.STARTTLS,
        ssl_context=tls_context,
        authentication=ts.Authentication(postfix.user, postfix.password),
    ) as session:
        assert session.authenticated
    assert any("AUTH SCRAM-SHA-256" in r.getMessage() for r in caplog.records)
