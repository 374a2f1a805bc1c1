"""The error types (``trio_sendmail/_errors.py``): every one crosses processes.

A Celery task (see :mod:`trio_sendmail.blocking`) sends its error to another
process with pickle: each public error comes back with its type, message and
every attribute (outcome, phase, reply, refused recipients…).
"""

from __future__ import annotations

import pickle

import pytest

import trio_sendmail as ts

REPLY = ts.Reply(451, ("4.3.0 try later",), ts.EnhancedStatus(4, 3, 0))
PATH = ts.ForwardPath.parse("b@example.com")


def samples() -> list[ts.SMTPError]:
    timeout = ts.SMTPTimeoutError("took too long", phase="data_end")
    timeout.outcome = ts.Outcome.UNKNOWN
    refused = ts.SMTPRecipientsRefused.from_replies({PATH: REPLY})
    refused.outcome = ts.Outcome.NOT_SENT
    other = ts.ForwardPath.parse("c@example.com")
    partial = ts.SMTPPartialDelivery(
        ts.SendResult(
            ts.Reply(250, ("ok",)),
            (PATH, other),
            final_replies={PATH: ts.Reply(250, ("ok",)), other: ts.Reply(552, ("full",))},
        )
    )
    partial.outcome = ts.Outcome.PARTIAL
    return [
        ts.SMTPError("base"),
        ts.SMTPInputError("bad input"),
        ts.SMTPAddressError("bad address"),
        ts.SMTPUsageError("wrong state"),
        ts.SMTPConnectionError("lost"),
        ts.SMTPTLSError("bad certificate"),
        timeout,
        ts.SMTPProtocolError("garbage"),
        ts.SMTPNotSupportedError("no DSN"),
        ts.SMTPMessageTooLarge("too big", size=20, limit=10),
        ts.SMTPResponseError.from_reply(REPLY, "DATA"),
        ts.SMTPServiceClosing.from_reply(ts.Reply(421, ("bye",)), "MAIL"),
        ts.SMTPSenderRefused.from_reply(ts.Reply(550, ("no",)), "MAIL"),
        ts.SMTPAuthenticationError.from_reply(ts.Reply(535, ("no",)), "AUTH"),
        refused,
        partial,
        ts.SMTPTransientError("try later"),
        ts.SMTPPermanentError("never"),
    ]


@pytest.mark.parametrize("error", samples(), ids=lambda e: type(e).__name__)
def test_every_error_survives_pickle(error: ts.SMTPError) -> None:
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert type(copy) is type(error)
    assert str(copy) == str(error) and copy.args == error.args
    assert vars(copy) == vars(error)
    assert copy.outcome is error.outcome


def test_the_samples_cover_every_public_error() -> None:
    public = {
        getattr(ts, name)
        for name in ts.__all__
        if isinstance(getattr(ts, name), type) and issubclass(getattr(ts, name), ts.SMTPError)
    }
    covered = {type(error) for error in samples()}
    # The flavours (Transient/Permanent) stand for their base class.
    covered |= {kind.__mro__[1] for kind in covered}
    assert public - covered == set()
