"""The session's plan memo (``PlanMemo``): the same decisions as without it,
looked up again when the capabilities change, and never a remembered failure."""

from __future__ import annotations

import itertools

import pytest

from trio_sendmail import DSN, DSNReturn, SMTPNotSupportedError
from trio_sendmail._address import ForwardPath, ReversePath
from trio_sendmail._capabilities import Capabilities
from trio_sendmail._message import MailBody
from trio_sendmail._plan import NO_OPTIONS, Options, PlanMemo, plan


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


def outcome(memo: PlanMemo | None, c: Capabilities, **kwargs: object) -> object:
    try:
        return plan(c, memo=memo, **kwargs)  # type: ignore[arg-type]
    except SMTPNotSupportedError as exc:
        return (type(exc), str(exc))


def test_the_memo_decides_as_plan_does() -> None:
    memo = PlanMemo()
    cases = itertools.product(
        CAPS, (False, True), (False, True), (ASCII, UTF8), (TO, TO_UTF8), BODIES, OPTIONS
    )
    for c, tls, chunking, sender, recipients, body, options in cases:
        kwargs = {
            "tls": tls,
            "use_chunking": chunking,
            "sender": sender,
            "recipients": recipients,
            "body": body,
            "options": options,
        }
        # Twice with the memo: the second answer comes from what it remembered.
        expected = outcome(None, c, **kwargs)
        assert outcome(memo, c, **kwargs) == expected
        assert outcome(memo, c, **kwargs) == expected


def test_new_capabilities_are_read_again() -> None:
    memo = PlanMemo()
    kwargs = {"tls": False, "use_chunking": True, "sender": UTF8, "recipients": TO,
              "options": NO_OPTIONS}  # fmt: skip
    assert plan(caps("SMTPUTF8"), memo=memo, body=MailBody(data=b"x"), **kwargs).mail_params == [
        "SMTPUTF8"
    ]
    # Same content, another object (a new EHLO reply): its answer, not the old one.
    with pytest.raises(SMTPNotSupportedError, match="SMTPUTF8"):
        plan(caps("PIPELINING"), memo=memo, body=MailBody(data=b"x"), **kwargs)
    decided = plan(caps("CHUNKING", "SIZE"), memo=memo, body=MailBody(data=b"xy"),
                   **{**kwargs, "sender": ASCII})  # fmt: skip
    assert decided.chunking and decided.mail_params == ["SIZE=4"]


def test_a_failed_plan_is_not_remembered() -> None:
    memo = PlanMemo()
    server = caps("PIPELINING")
    kwargs = {"tls": False, "use_chunking": True, "recipients": TO, "options": NO_OPTIONS,
              "body": MailBody(data=b"x")}  # fmt: skip
    with pytest.raises(SMTPNotSupportedError):
        plan(server, memo=memo, sender=UTF8, **kwargs)
    assert memo.tails == {}
    assert plan(server, memo=memo, sender=ASCII, **kwargs).mail_params == []
    with pytest.raises(SMTPNotSupportedError):
        plan(server, memo=memo, sender=UTF8, **kwargs)
