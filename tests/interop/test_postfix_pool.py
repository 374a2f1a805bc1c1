"""The pool and the bulk sender against Postfix: every message exactly once."""

from __future__ import annotations

import re
import ssl
import time

import pytest

import trio_sendmail as ts

from ..postfix_plugin import PostfixEnv
from .test_postfix import mailbox_files, make_message, new_message_id, unique, wait_for_delivery

pytestmark = pytest.mark.postfix

MESSAGE_ID = re.compile(rb"\nMessage-ID: (<[^>]+>)\n")


def message_ids(env: PostfixEnv, local: str) -> list[bytes]:
    ids = []
    for path in mailbox_files(env, local):
        match = MESSAGE_ID.search(path.read_bytes()[:16384])
        assert match is not None, path
        ids.append(match[1])
    return ids


async def bulk_run(
    postfix: PostfixEnv,
    tls_context: ssl.SSLContext,
    connections: int,
    count: int,
    *,
    chunking: bool = True,
) -> tuple[str, set[str], float, ts.BulkSummary, ts.PoolStatistics]:
    local = unique(f"bulk{connections}")
    rcpt = postfix.address(local)
    ids = {new_message_id(postfix) for _ in range(count)}
    messages = [
        ts.BulkMessage(
            postfix.user,
            [rcpt],
            make_message(sender=postfix.user, to=rcpt, message_id=mid, subject="bulk"),
            key=mid,
        )
        for mid in ids
    ]
    async with ts.open_pool(
        postfix.tls_hostname,
        port=postfix.smtps_port,
        ssl_context=tls_context,
        authentication=ts.Authentication(postfix.user, postfix.password),
        limits=ts.PoolLimits(max_connections=connections),
        chunking=chunking,
    ) as pool:
        start = time.perf_counter()
        summary = await ts.send_bulk(messages, pool=pool)
        elapsed = time.perf_counter() - start
        stats = pool.statistics()
    return local, ids, elapsed, summary, stats


# With CHUNKING each message rides with its envelope (BDAT … LAST); without it,
# each message's body and dot go out with the next message's MAIL/RCPT/DATA.
@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data-pipelined"])
async def test_2000_messages_over_8_connections_exactly_once(
    postfix: PostfixEnv, tls_context: ssl.SSLContext, chunking: bool
) -> None:
    local, ids, elapsed, summary, stats = await bulk_run(
        postfix, tls_context, 8, 2000, chunking=chunking
    )
    counts = (summary.accepted, summary.refused, summary.unknown, summary.not_sent)
    assert counts == (2000, 0, 0, 0)
    assert all(r.status is ts.Outcome.ACCEPTED for r in summary.results)
    assert stats.connection_failures == 0 and stats.messages_sent == 2000
    await wait_for_delivery(postfix, local, count=2000, timeout=120)
    delivered = message_ids(postfix, local)
    assert len(delivered) == 2000
    assert len(set(delivered)) == 2000  # no duplicate
    assert set(delivered) == {mid.encode() for mid in ids}
    print(f"\n2000 messages over 8 connections: {2000 / elapsed:.0f} msgs/s")


@pytest.mark.parametrize("connections", [1, 8, 32])
async def test_throughput_is_measured(
    postfix: PostfixEnv, tls_context: ssl.SSLContext, connections: int
) -> None:
    """Reports messages per second (no timing assertion: machines are noisy)."""
    count = 400
    local, _, elapsed, summary, stats = await bulk_run(postfix, tls_context, connections, count)
    assert summary.accepted == count
    assert stats.connections_open <= connections
    await wait_for_delivery(postfix, local, count=count, timeout=120)
    print(f"\n{count} messages over {connections} connection(s): {count / elapsed:.0f} msgs/s")


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data-pipelined"])
async def test_pool_refusals_are_reported_per_message(
    postfix: PostfixEnv, tls_context: ssl.SSLContext, chunking: bool
) -> None:
    good = postfix.address(unique("good"))
    bad = postfix.address(unique("reject-bulk"))
    temp = postfix.address(unique("tempfail-bulk"))
    messages = [
        ts.BulkMessage(postfix.user, [rcpt], make_message(
            sender=postfix.user, to=rcpt, message_id=new_message_id(postfix), subject="mix"
        ), key=rcpt)
        for rcpt in (good, bad, temp, good)
    ]  # fmt: skip
    async with ts.open_pool(
        postfix.tls_hostname,
        port=postfix.smtps_port,
        ssl_context=tls_context,
        authentication=ts.Authentication(postfix.user, postfix.password),
        limits=ts.PoolLimits(max_connections=1),  # one connection: the refusals sit
        chunking=chunking,  # between accepted messages of one pipelined run
    ) as pool:
        summary = await ts.send_bulk(messages, pool=pool, max_retries=1, retry_backoff=0.05)
    by_key: dict[object, list[ts.BulkResult]] = {}
    for result in summary.results:
        by_key.setdefault(result.message.key, []).append(result)
    assert [r.status for r in by_key[good]] == [ts.Outcome.ACCEPTED] * 2
    (refused,) = by_key[bad]
    assert refused.status is ts.Outcome.REFUSED and refused.attempts == 1
    (later,) = by_key[temp]
    assert later.status is ts.Outcome.REFUSED and later.attempts == 2  # retried once
    assert summary.retried == 1
