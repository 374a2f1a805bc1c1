"""What a send_bulk result makes of an outbox row (``trio_sendmail/outbox/_model.py``)."""

from __future__ import annotations

import json

import trio

import trio_sendmail as ts
from trio_sendmail.outbox import RetryPolicy, State
from trio_sendmail.outbox._model import Settlement, settle

POLICY = RetryPolicy(max_attempts=3, backoff=0.0, max_backoff=0.0)
ALICE = ts.ForwardPath.parse("alice@example.com")
BOB = ts.ForwardPath.parse("bob@example.com")
CAROL = ts.ForwardPath.parse("carol@example.com")
MESSAGE = ts.BulkMessage("a@example.com", ["alice@example.com"], b"x", key=7)


def settled(result: ts.BulkResult) -> Settlement:
    return settle(result, now=100.0, created_at=99.0, attempts=1, policy=POLICY)


def test_an_lmtp_partial_delivery_is_sent_with_every_refusal_kept() -> None:
    """Delivered to some recipients: never ``pending`` or ``failed`` (a resend
    would deliver it twice to those who have it); who did not get it is kept."""
    sent = ts.SendResult(
        ts.Reply(250, ("2.0.0 <alice@example.com> Saved",)),
        (ALICE, BOB),
        refused={CAROL: ts.Reply(550, ("5.1.1 no such user",))},
        final_replies={
            ALICE: ts.Reply(250, ("2.0.0 <alice@example.com> Saved",)),
            BOB: ts.Reply(552, ("5.2.2 <bob@example.com> Quota exceeded",)),
        },
    )
    error = ts.SMTPPartialDelivery(sent)
    for cause in (error, trio.Cancelled._create()):  # reported, or cut short after it
        row = settled(ts.BulkResult(MESSAGE, ts.Outcome.PARTIAL, result=sent, error=cause))
        assert row.state is State.SENT
        assert row.refused is not None
        refused = json.loads(row.refused)
        assert refused == {
            "<carol@example.com>": [550, "5.1.1 no such user"],
            "<bob@example.com>": [552, "5.2.2 <bob@example.com> Quota exceeded"],
        }


def test_a_partial_delivery_without_its_record_is_unknown() -> None:
    row = settled(ts.BulkResult(MESSAGE, ts.Outcome.PARTIAL, result=None))
    assert row.state is State.UNKNOWN


def test_recipients_refused_with_4xx_get_a_follow_up() -> None:
    """A message accepted for some recipients and refused with a 4xx for
    others is sent; those others get a follow-up row (RFC 5321 §4.2.1: a 4xx
    command may succeed later). A 5xx recipient does not."""
    sent = ts.SendResult(
        ts.Reply(250, ("2.0.0 queued",)),
        (ALICE,),
        refused={
            BOB: ts.Reply(450, ("4.2.1 mailbox busy",)),
            CAROL: ts.Reply(550, ("5.1.1 no such user",)),
        },
    )
    row = settled(ts.BulkResult(MESSAGE, ts.Outcome.ACCEPTED, result=sent))
    assert row.state is State.SENT
    assert row.follow_up == ["<bob@example.com>"]
    # Out of attempts: no follow-up, the refusal stays in the row.
    last = settle(
        ts.BulkResult(MESSAGE, ts.Outcome.ACCEPTED, result=sent),
        now=100.0, created_at=99.0, attempts=POLICY.max_attempts, policy=POLICY,
    )  # fmt: skip
    assert last.state is State.SENT and last.follow_up is None


def test_every_recipient_refused_some_with_4xx() -> None:
    refused = {
        BOB: ts.Reply(450, ("4.2.1 mailbox busy",)),
        CAROL: ts.Reply(550, ("5.1.1 no such user",)),
    }
    error = ts.SMTPRecipientsRefused.from_replies(refused)
    error.outcome = ts.Outcome.NOT_SENT
    row = settled(ts.BulkResult(MESSAGE, ts.Outcome.REFUSED, error=error))
    assert row.state is State.REFUSED
    assert row.follow_up == ["<bob@example.com>"]
    # All of them 4xx: the row itself is retried, no follow-up.
    transient = ts.SMTPRecipientsRefused.from_replies({BOB: refused[BOB]})
    transient.outcome = ts.Outcome.NOT_SENT
    row = settled(ts.BulkResult(MESSAGE, ts.Outcome.REFUSED, error=transient))
    assert row.state is State.PENDING and row.follow_up is None


def test_an_lmtp_partial_delivery_gets_a_follow_up_for_its_4xx_recipients() -> None:
    sent = ts.SendResult(
        ts.Reply(250, ("2.0.0 <alice@example.com> Saved",)),
        (ALICE, BOB),
        final_replies={
            ALICE: ts.Reply(250, ("2.0.0 <alice@example.com> Saved",)),
            BOB: ts.Reply(452, ("4.2.2 <bob@example.com> Mailbox full, try later",)),
        },
    )
    row = settled(ts.BulkResult(MESSAGE, ts.Outcome.PARTIAL, result=sent))
    assert row.state is State.SENT and row.follow_up == ["<bob@example.com>"]


def test_rows_decode_to_their_messages_and_share_decoded_options() -> None:
    """A row's columns give back its message (DSN, REQUIRETLS, 8-bit data); the
    rows of one job, whose options are the same text, share one decoded DSN
    (frozen) instead of parsing it once per message on the event loop."""
    from trio_sendmail.outbox._model import decode_message, encode_message

    dsn = ts.DSN(ret="HDRS", envid="job-1", notify={"FAILURE", "DELAY"}, orcpt=True)
    rows = [
        encode_message(
            ts.BulkMessage(
                "a@example.com",
                [f"r{n}@example.com"],
                b"x\r\n",
                dsn=dsn,
                requiretls=True,
                binary=True,
            ),
            b"x\r\n",
        )
        for n in range(2)
    ]
    one, two = (
        decode_message(7 + n, r["sender"], r["recipients"], r["mail"], r["options"])
        for n, r in enumerate(rows)
    )
    assert (one.key, two.key) == (7, 8)
    assert [str(p) for p in one.recipients] == ["<r0@example.com>"]
    assert one.dsn == dsn and one.requiretls and one.binary and one.mail == b"x\r\n"
    assert two.dsn is one.dsn
    plain = encode_message(ts.BulkMessage("a@example.com", ["b@example.com"], b"y\r\n"), b"y\r\n")
    other = decode_message(
        9, plain["sender"], plain["recipients"], plain["mail"], plain["options"]
    )
    assert other.dsn is None and not other.requiretls and not other.binary
