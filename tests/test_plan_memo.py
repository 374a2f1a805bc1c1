"""The session's plan memo (``PlanMemo``): the same decisions as without it,
looked up again when the capabilities change, and never a remembered failure."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from trio_sendmail import DSN, DSNReturn, SMTPNotSupportedError
from trio_sendmail._address import ForwardPath, ReversePath
from trio_sendmail._capabilities import Capabilities
from trio_sendmail._message import MailBody
from trio_sendmail._plan import NO_OPTIONS, Options, Plan, PlanMemo, plan


def caps(*keywords: str) -> Capabilities:
    return Capabilities("mx.example", {k.split()[0]: tuple(k.split()[1:]) for k in keywords})


ASCII = ReversePath.parse("a@example.com")
UTF8 = ReversePath.parse("ä@example.com")
TO = [ForwardPath.parse("b@example.com")]
TO_UTF8 = [ForwardPath.parse("b@example.com"), ForwardPath.parse("ü@example.com")]
BODIES = [MailBody(data=b"x\r\n"), MailBody(data=b"\xe9\n"), MailBody(chunks=object())]  # type: ignore[arg-type]
CAPS = [
    caps("PIPELINING"),
    caps("8BITMIME", "SMTPUTF8", "SIZE 100", "CHUNKING", "BINARYMIME", "DSN", "REQUIRETLS"),
    caps("8BITMIME", "SIZE"),
]
OPTIONS = [NO_OPTIONS, Options(requiretls=True), Options(dsn=DSN(ret=DSNReturn.HEADERS))]


def decide(
    memo: PlanMemo | None,
    server: Capabilities,
    *,
    tls: bool = False,
    use_chunking: bool = True,
    sender: ReversePath = ASCII,
    recipients: list[ForwardPath] = TO,
    body: MailBody = BODIES[0],
    options: Options = NO_OPTIONS,
) -> Plan:
    return plan(server, tls=tls, use_chunking=use_chunking, sender=sender,
                recipients=recipients, body=body, options=options, memo=memo)  # fmt: skip


def outcome(memo: PlanMemo | None, server: Capabilities, **kwargs: Any) -> object:
    try:
        return decide(memo, server, **kwargs)
    except SMTPNotSupportedError as exc:
        return (type(exc), str(exc))


def test_the_memo_decides_as_plan_does() -> None:
    memo = PlanMemo()
    cases = itertools.product(
        CAPS, (False, True), (False, True), (ASCII, UTF8), (TO, TO_UTF8), BODIES, OPTIONS
    )
    for server, tls, chunking, sender, recipients, body, options in cases:
        kwargs = {"tls": tls, "use_chunking": chunking, "sender": sender,
                  "recipients": recipients, "body": body, "options": options}  # fmt: skip
        # Twice with the memo: the second answer comes from what it remembered.
        expected = outcome(None, server, **kwargs)
        assert outcome(memo, server, **kwargs) == expected
        assert outcome(memo, server, **kwargs) == expected


def test_new_capabilities_are_read_again() -> None:
    memo = PlanMemo()
    assert decide(memo, caps("SMTPUTF8"), sender=UTF8).mail_params == ["SMTPUTF8"]
    # Same content, another object (a new EHLO reply): its answer, not the old one.
    with pytest.raises(SMTPNotSupportedError, match="SMTPUTF8"):
        decide(memo, caps("PIPELINING"), sender=UTF8)
    decided = decide(memo, caps("CHUNKING", "SIZE"), body=MailBody(data=b"xy"))
    assert decided.chunking and decided.mail_params == ["SIZE=4"]


def test_a_failed_plan_is_not_remembered() -> None:
    memo = PlanMemo()
    server = caps("PIPELINING")
    with pytest.raises(SMTPNotSupportedError):
        decide(memo, server, sender=UTF8)
    assert memo.tails == {}
    assert decide(memo, server, sender=ASCII).mail_params == []
    with pytest.raises(SMTPNotSupportedError):
        decide(memo, server, sender=UTF8)
