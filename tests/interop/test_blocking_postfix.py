"""trio_sendmail.blocking against the private Postfix: 32 OS threads share one
BlockingPool; every message must be in the Maildir exactly once, byte for byte."""

from __future__ import annotations

import ssl
import threading
from pathlib import Path

import pytest
import trio

import trio_sendmail as ts
from trio_sendmail import blocking

from ..helpers import CLIENT_NAME
from ..postfix_plugin import PostfixEnv
from .test_postfix import (
    TIMEOUTS,
    make_message,
    new_message_id,
    read_delivered,
    stored_form,
    unique,
    wait_for_delivery,
)

pytestmark = pytest.mark.postfix

THREADS = 32
PER_THREAD = 4


@pytest.mark.parametrize(
    "tls", [ts.TLSMode.STARTTLS, ts.TLSMode.IMPLICIT], ids=lambda mode: str(mode.value)
)
def test_32_threads_share_one_blocking_pool(
    postfix: PostfixEnv, tls_context: ssl.SSLContext, tls: ts.TLSMode
) -> None:
    local = unique("blocking")
    rcpt = postfix.address(local)
    messages = {
        (i, j): make_message(
            sender=postfix.user,
            to=rcpt,
            message_id=new_message_id(postfix),
            subject=f"thread {i} message {j}",
            body=f"From OS thread {i}, message {j}.\r\n".encode(),
        )
        for i in range(THREADS)
        for j in range(PER_THREAD)
    }
    results: dict[tuple[int, int], ts.SendResult] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)
    with blocking.BlockingPool(
        postfix.tls_hostname,
        port=postfix.smtps_port if tls is ts.TLSMode.IMPLICIT else postfix.submission_port,
        tls=tls,
        ssl_context=tls_context,
        authentication=ts.Authentication(postfix.user, postfix.password),
        domain=CLIENT_NAME,
        timeouts=TIMEOUTS,
        limits=ts.PoolLimits(max_connections=8),
    ) as pool:

        def sender(i: int) -> None:
            try:
                barrier.wait()  # every thread sends at once
                for j in range(PER_THREAD):
                    results[i, j] = pool.send(postfix.user, [rcpt], messages[i, j])
            except BaseException as exc:  # reported to the test
                errors.append(exc)

        threads = [threading.Thread(target=sender, args=(i,)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(thread.is_alive() for thread in threads)
        stats = pool.statistics()
    assert errors == []
    assert len(results) == THREADS * PER_THREAD
    assert all(result.reply.code == 250 for result in results.values())
    assert stats.connections_open <= 8
    # Each queue id once: no message was sent twice.
    queue_ids = [result.reply.text.rsplit(" ", 1)[-1] for result in results.values()]
    assert len(set(queue_ids)) == len(queue_ids)

    files = trio.run(wait_for_maildir, postfix, local, len(messages))
    stored = sorted(read_delivered(path).message for path in files)
    assert stored == sorted(stored_form(message) for message in messages.values())


async def wait_for_maildir(env: PostfixEnv, local: str, count: int) -> list[Path]:
    return await wait_for_delivery(env, local, count=count, timeout=60)
