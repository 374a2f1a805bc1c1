"""A message object against a real Postfix: the envelope read from its header
fields, and its Bcc line never delivered to anyone (Maildir bytes compared).

Postfix runs as tests/interop/postfix.sh starts it: it adds nothing to a
message but Return-Path, Delivered-To and Received, and stores CRLF as LF
(tests/interop/README.md), so each stored file must be exactly the message
without its Bcc line.
"""

from __future__ import annotations

import email.message
import ssl

import pytest

import trio_sendmail as ts

from .. import defaults
from ..postfix_plugin import PostfixEnv
from .test_postfix import (
    TIMEOUTS,
    assert_same_bytes,
    new_message_id,
    unique,
    wait_for_delivery,
    wait_for_one,
)

pytestmark = pytest.mark.postfix


@pytest.mark.parametrize("chunking", [True, False], ids=["chunk", "data"])
@pytest.mark.parametrize("pipelining", [True, False], ids=["pipe", "lock"])
async def test_bcc_is_delivered_to_its_recipient_and_shown_to_nobody(
    postfix: PostfixEnv, tls_context: ssl.SSLContext, pipelining: bool, chunking: bool
) -> None:
    to, cc, bcc = (postfix.address(unique(name)) for name in ("to", "cc", "bcc"))
    message_id = new_message_id(postfix)
    message = email.message.EmailMessage()
    message["From"] = f"Sender <{postfix.user}>"
    message["To"] = to
    message["Cc"] = f"Carbon <{cc}>"
    message["Bcc"] = bcc
    message["Subject"] = "Blind copy"
    message["Date"] = "Mon, 30 Nov 2026 10:00:00 +0000"
    message["Message-ID"] = message_id
    message.set_content("Only the envelope names the blind recipient.\n")

    async with defaults.open_session(
        postfix.tls_hostname,
        port=postfix.submission_port,
        tls=ts.TLSMode.STARTTLS,
        ssl_context=tls_context,
        authentication=ts.Authentication(postfix.user, postfix.password),
        timeouts=TIMEOUTS,
        pipelining=pipelining,
        chunking=chunking,
    ) as session:
        result = await session.send(mail=message)  # sender and recipients from the headers
    assert result.refused == {}

    expected = (
        f"From: Sender <{postfix.user}>\n"
        f"To: {to}\n"
        f"Cc: Carbon <{cc}>\n"
        "Subject: Blind copy\n"
        "Date: Mon, 30 Nov 2026 10:00:00 +0000\n"
        f"Message-ID: {message_id}\n"
        'Content-Type: text/plain; charset="utf-8"\n'
        "Content-Transfer-Encoding: 7bit\n"
        "MIME-Version: 1.0\n"
        "\n"
        "Only the envelope names the blind recipient.\n"
    ).encode()
    for address in (to, cc, bcc):
        local = address.split("@")[0]
        delivered = await wait_for_one(postfix, local, message_id)
        assert delivered.return_path == f"<{postfix.user}>"
        assert delivered.delivered_to == address
        assert_same_bytes(delivered.message, expected)
        assert b"Bcc" not in delivered.message
    # Exactly once each (wait_for_delivery fails on a second copy).
    for address in (to, cc, bcc):
        await wait_for_delivery(postfix, address.split("@")[0], message_id=message_id)
    assert message["Bcc"] == bcc  # the caller's object is unchanged
