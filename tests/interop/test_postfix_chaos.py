"""Exact outcomes under every fault: bulk sending to Postfix through a resetting proxy.

2,000 messages go over a pool of 8 connections to Postfix's plain port, through
:mod:`.rst_proxy`, which resets connections (TCP RST on both sides) at a random
byte offset in either direction: in the greeting and EHLO, in the envelope, in
the middle of message data, right after the end of data before its reply, and
in the reply stream. Then every result is checked against the Maildir by
Message-ID:

* ``ACCEPTED``: stored exactly once;
* ``NOT_SENT`` and ``FAILED`` (refusals included): not stored;
* ``UNKNOWN`` (the end of data went out, its reply never came back): stored at
  most once.

The run is done twice, with CHUNKING (``BDAT … LAST``) and with DATA, both
pipelined. The proxy's seed is fixed (``TRIO_SENDMAIL_CHAOS_SEED`` overrides
it), but where the cuts land also depends on timing, so runs differ.
Counts and every violation are printed (``-s``) and written as JSON under the
test's tmp folder.
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import string
import time
import uuid
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import trio_sendmail as ts

from .conftest import PostfixEnv
from .rst_proxy import CutPolicy, RstProxy, open_rst_proxy
from .test_postfix import make_message, unique

pytestmark = [pytest.mark.postfix, pytest.mark.interop]

MESSAGES = 2000
CONNECTIONS = 8
SEED = int(os.environ.get("TRIO_SENDMAIL_CHAOS_SEED", "20261202"))
CLIENT_NAME = "chaos.example.test"
#: Short bounds: a reset is seen at once, these only catch a stuck exchange.
TIMEOUTS = ts.Timeouts(
    connect=5,
    tls_handshake=5,
    greeting=10,
    command=10,
    mail=10,
    rcpt=10,
    data_init=10,
    data_block=10,
    data_end=20,
    quit=2,
)
MAX_RETRIES = 4
RETRY_BACKOFF = 0.05
#: Cuts at random offsets: one connection in twenty is never cut (the pool
#: reuses the most recent idle connection, so these long-lived ones carry most
#: of the messages); the others are cut within their first ~7 messages
#: (client->server, ~1.7 KB a message) or ~10 replies (server->client, ~100
#: bytes a message). A run injects about 100-150 cuts.
POLICY = CutPolicy(survive=0.05, client_share=0.6, client_span=12 * 1024, server_span=1024)
#: Fewer cuts than this means the proxy did not do its job (a harness failure).
MIN_CUTS = 20
DELIVERY_TIMEOUT = 60.0
#: Delivery is over when the Maildir count has not changed for this long (and
#: Postfix's queue holds nothing for the recipient).
SETTLE = 2.0
POLL_INTERVAL = 0.1
#: At most this many violations are listed in the assertion message (all are in the JSON).
MAX_LISTED = 60

MESSAGE_ID = re.compile(rb"\nMessage-ID: (<[^>\n]+>)\n")
QUEUE_ID = re.compile(rb"\n\tby [^\n]+ with \S+ id ([0-9A-Za-z]+)")
ALPHABET = string.ascii_letters + string.digits + "     .,;:-"

ACCEPTED = ts.BulkStatus.ACCEPTED
UNKNOWN = ts.BulkStatus.UNKNOWN


# ---------------------------------------------------------------- messages --


def make_body(rng: random.Random) -> bytes:
    """1-2 KB of text lines, a few of them starting with a dot."""
    size = rng.randrange(1000, 2000)
    lines = []
    total = 0
    while total < size:
        line = "".join(rng.choices(ALPHABET, k=rng.randrange(20, 76))).strip() or "x"
        if rng.random() < 0.05:
            line = "." + line
        lines.append(line)
        total += len(line) + 2
    return ("\r\n".join(lines) + "\r\n").encode()


def make_messages(env: PostfixEnv, rcpt: str, tag: str, seed: int) -> list[ts.BulkMessage]:
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:10]  # unique across runs, even with the same seed
    messages = []
    for index in range(MESSAGES):
        message_id = f"<chaos-{tag}-{run}-{index:04d}@trio-sendmail.{env.domain}>"
        mail = make_message(
            sender=env.user,
            to=rcpt,
            message_id=message_id,
            subject=f"chaos {tag} {index}",
            body=make_body(rng),
        )
        messages.append(ts.BulkMessage(env.user, [rcpt], mail, key=message_id))
    return messages


# ---------------------------------------------------------------- maildir --


class MaildirIndex:
    """Message-ID -> delivered files of one Maildir, read incrementally."""

    def __init__(self, env: PostfixEnv, local: str) -> None:
        self.new = env.maildir_base / local.lower() / "new"
        self.by_id: dict[str, list[Path]] = collections.defaultdict(list)
        self.queue_ids: dict[Path, str] = {}
        self._seen: set[str] = set()

    def scan(self) -> int:
        """Read the files delivered since the last scan; returns the file count."""
        if self.new.is_dir():
            for path in self.new.iterdir():
                if path.name in self._seen:
                    continue
                self._seen.add(path.name)
                head = path.read_bytes()[:16384]
                match = MESSAGE_ID.search(head)
                message_id = match[1].decode() if match else f"(no Message-ID in {path.name})"
                self.by_id[message_id].append(path)
                queue = QUEUE_ID.search(head)
                self.queue_ids[path] = queue[1].decode() if queue else "?"
        return len(self._seen)

    def copies(self, message_id: str) -> list[Path]:
        return self.by_id.get(message_id, [])


async def queued_for(env: PostfixEnv, rcpt: str) -> int | None:
    """Messages in Postfix's queue for *rcpt*; None when the queue cannot be read."""
    config_dir = env.state_dir / "etc"
    try:
        done = await trio.run_process(
            ["postqueue", "-c", str(config_dir), "-j"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    except OSError:
        return None
    if done.returncode != 0:
        return None
    count = 0
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        addresses = {str(r.get("address", "")).lower() for r in entry.get("recipients", [])}
        count += rcpt.lower() in addresses
    return count


async def wait_for_quiet(
    env: PostfixEnv, index: MaildirIndex, rcpt: str, required: set[str]
) -> tuple[float, bool]:
    """Wait until every *required* Message-ID is in the Maildir, Postfix's queue
    holds nothing for *rcpt*, and the Maildir has not changed for SETTLE
    seconds (bounded by DELIVERY_TIMEOUT). Returns (seconds waited, quiet)."""
    start = trio.current_time()
    count, changed = -1, start
    while True:
        now = trio.current_time()
        latest = index.scan()
        if latest != count:
            count, changed = latest, now
        missing = required - index.by_id.keys()
        if not missing and now - changed >= SETTLE and not await queued_for(env, rcpt):
            return now - start, True
        if now - start > DELIVERY_TIMEOUT:
            return now - start, False
        await trio.sleep(POLL_INTERVAL)


def smtpd_endings(env: PostfixEnv, log_offset: int, queue_ids: set[str]) -> dict[str, str]:
    """For each queue ID, how Postfix's smtpd saw its connection end (its
    "disconnect from ..." or "lost connection after ..." log line)."""
    if not queue_ids:
        return {}
    with env.log_file.open("rb") as f:
        f.seek(log_offset)
        lines = f.read().decode("utf-8", "replace").splitlines()
    pid_of = re.compile(r"/smtpd\[(\d+)\]: (?:([0-9A-Za-z]+): client=)?")
    found: dict[str, str] = {}
    # smtpd pid -> the queue IDs of its current connection whose end we want
    waiting: dict[str, list[str]] = collections.defaultdict(list)
    for line in lines:
        match = pid_of.search(line)
        if match is None:
            continue
        pid, queue_id = match[1], match[2]
        if queue_id in queue_ids:
            waiting[pid].append(queue_id)
        elif pid in waiting and ("disconnect from" in line or "lost connection" in line):
            for ended in waiting.pop(pid):
                found[ended] = line.split(": ", 1)[-1]
    return found


# ---------------------------------------------------------------- the run --


@attrs.define
class Run:
    results: list[ts.BulkResult] = attrs.field(factory=list)
    error: BaseException | None = None
    send_seconds: float = 0.0


async def send_through_proxy(
    proxy: RstProxy, messages: list[ts.BulkMessage], chunking: bool
) -> Run:
    run = Run()
    limits = ts.PoolLimits(
        max_connections=CONNECTIONS,
        # The proxy resets fresh connections too (in the greeting, in EHLO):
        # the pool must neither give up nor stay shrunk for long because of them.
        connect_retries=50,
        regrow_after=0.5,
    )
    start = time.perf_counter()
    async with ts.open_pool(
        "127.0.0.1",
        port=proxy.port,
        tls=ts.TLSMode.INSECURE_PLAINTEXT,
        domain=CLIENT_NAME,
        timeouts=TIMEOUTS,
        pipelining=True,
        chunking=chunking,
        limits=limits,
    ) as pool:
        try:
            await ts.send_bulk(
                messages,
                pool=pool,
                max_retries=MAX_RETRIES,
                retry_backoff=RETRY_BACKOFF,
                on_result=run.results.append,
            )
        except Exception as exc:  # reported with the reconciliation below
            run.error = exc
    run.send_seconds = time.perf_counter() - start
    return run


def describe_error(error: BaseException | None) -> str:
    parts = []
    seen = 0
    while error is not None and seen < 4:
        outcome = getattr(error, "outcome", None)
        text = f"{type(error).__name__}: {error}"
        if outcome is not None:
            text += f" [outcome {outcome.name}]"
        parts.append(text)
        error = error.__cause__ or error.__context__
        seen += 1
    return " <- ".join(parts) if parts else "no error"


def describe_outcome(result: ts.BulkResult) -> str:
    if result.result is not None:
        return f"final reply {result.result.reply}"
    return f"error: {describe_error(result.error)}"


@attrs.frozen
class Violation:
    message_id: str
    problem: str
    status: str
    attempts: int
    error: str
    delivered: int
    queue_ids: tuple[str, ...]
    smtpd: tuple[str, ...]

    def line(self) -> str:
        where = ""
        if self.queue_ids:
            where = f"; stored as {', '.join(self.queue_ids)}"
            if self.smtpd:
                where += f" (smtpd: {' | '.join(self.smtpd)})"
        return (
            f"{self.message_id}: {self.problem}: status {self.status}, attempts {self.attempts}, "
            f"delivered {self.delivered}x{where}; {self.error}"
        )


def reconcile(
    messages: list[ts.BulkMessage], run: Run, index: MaildirIndex
) -> tuple[list[tuple[str, str, ts.BulkResult | None]], collections.Counter[str]]:
    """(message ID, problem, result) for each violation, and UNKNOWN delivered/not."""
    problems: list[tuple[str, str, ts.BulkResult | None]] = []
    by_id: dict[str, list[ts.BulkResult]] = collections.defaultdict(list)
    for result in run.results:
        by_id[str(result.message.key)].append(result)
    unknown: collections.Counter[str] = collections.Counter()
    ours = set()
    for message in messages:
        message_id = str(message.key)
        ours.add(message_id)
        results = by_id.get(message_id, [])
        copies = len(index.copies(message_id))
        if len(results) != 1:
            problems.append((message_id, f"{len(results)} results instead of 1", None))
            continue
        [result] = results
        status = result.status
        if status is ACCEPTED:
            if copies != 1:
                problems.append((message_id, "ACCEPTED but not stored exactly once", result))
        elif status is UNKNOWN:
            unknown["delivered" if copies else "not delivered"] += 1
            if copies > 1:
                problems.append((message_id, "UNKNOWN but stored more than once", result))
        elif copies:  # NOT_SENT, FAILED (refusals included), or any other status
            problems.append((message_id, f"{status.name} but stored", result))
    for message_id, paths in index.by_id.items():
        if message_id not in ours:  # the Maildir is this run's alone
            problems.append(
                (message_id, f"{len(paths)} stored file(s) not sent by this run", None)
            )
    return problems, unknown


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
async def test_exact_outcomes_under_connection_resets(
    postfix: PostfixEnv, tmp_path: Path, chunking: bool
) -> None:
    tag = "bdat" if chunking else "data"
    seed = SEED + (0 if chunking else 1)
    local = unique(f"chaos-{tag}")
    rcpt = postfix.address(local)
    messages = make_messages(postfix, rcpt, tag, seed)
    assert len({m.key for m in messages}) == MESSAGES  # no Message-ID collision
    log_offset = postfix.log_file.stat().st_size if postfix.log_file.exists() else 0
    index = MaildirIndex(postfix, local)

    started = time.perf_counter()
    async with open_rst_proxy(postfix.host, postfix.plain_port, seed=seed, policy=POLICY) as proxy:
        run = await send_through_proxy(proxy, messages, chunking)
    accepted_ids = {str(r.message.key) for r in run.results if r.status is ACCEPTED}
    waited, quiet = await wait_for_quiet(postfix, index, rcpt, accepted_ids)
    total = time.perf_counter() - started

    problems, unknown = reconcile(messages, run, index)
    statuses = collections.Counter(r.status.name for r in run.results)
    attempts = collections.Counter(r.attempts for r in run.results)
    queue_ids = {
        index.queue_ids[path] for message_id, _, _ in problems for path in index.copies(message_id)
    }
    endings = smtpd_endings(postfix, log_offset, queue_ids)
    violations = []
    # Wrong outcomes first, then messages without a result (a run that ended early).
    problems.sort(key=lambda problem: problem[2] is None)
    for message_id, problem, result in problems:
        paths = index.copies(message_id)
        ids = tuple(index.queue_ids[p] for p in paths)
        violations.append(
            Violation(
                message_id=message_id,
                problem=problem,
                status=result.status.name if result else "-",
                attempts=result.attempts if result else 0,
                error=describe_outcome(result) if result else "-",
                delivered=len(paths),
                queue_ids=ids,
                smtpd=tuple(endings[q] for q in ids if q in endings),
            )
        )

    report: dict[str, Any] = {
        "variant": "CHUNKING (BDAT)" if chunking else "DATA",
        "seed": seed,
        "messages": MESSAGES,
        "connections": CONNECTIONS,
        "max_retries": MAX_RETRIES,
        "counts": {s.name: statuses.get(s.name, 0) for s in ts.BulkStatus},
        "results": len(run.results),
        "attempts_histogram": dict(sorted(attempts.items())),
        "cuts_injected": proxy.cuts,
        "proxy": proxy.summary(),
        "unknown_delivered": unknown["delivered"],
        "unknown_not_delivered": unknown["not delivered"],
        "stored_files": sum(len(p) for p in index.by_id.values()),
        "send_seconds": round(run.send_seconds, 2),
        "delivery_wait_seconds": round(waited, 2),
        "delivery_quiet": quiet,
        "runtime_seconds": round(total, 2),
        "send_bulk_error": None if run.error is None else describe_error(run.error),
        "violations": [attrs.asdict(v) for v in violations],
        "maildir": str(index.new),
    }
    report_path = tmp_path / f"chaos-{tag}.json"
    report_path.write_text(json.dumps(report, indent=2), encoding="utf-8")
    counts = " / ".join(f"{name} {n}" for name, n in report["counts"].items())
    summary = (
        f"chaos {report['variant']}: {MESSAGES} messages over {CONNECTIONS} connections "
        f"(seed {seed}): {counts}; {proxy.cuts} cuts in {proxy.connections} connections "
        f"{dict(proxy.phases)}; UNKNOWN delivered {unknown['delivered']}, not delivered "
        f"{unknown['not delivered']}; sending {run.send_seconds:.1f} s, delivery wait "
        f"{waited:.1f} s, total {total:.1f} s; {len(violations)} violation(s); "
        f"report {report_path}"
    )
    print("\n" + summary)

    if violations:
        kinds = collections.Counter(v.problem for v in violations)
        lines = [
            summary,
            f"{len(violations)} message(s) with a wrong outcome: {dict(kinds)}",
            "delivery " + ("quiet" if quiet else f"NOT quiet after {DELIVERY_TIMEOUT} s"),
        ]
        if run.error is not None:
            lines.append(f"send_bulk raised: {describe_error(run.error)}")
        lines += [v.line() for v in violations[:MAX_LISTED]]
        if len(violations) > MAX_LISTED:
            lines.append(f"... and {len(violations) - MAX_LISTED} more (see the report)")
        pytest.fail("\n  ".join(lines), pytrace=False)
    assert run.error is None, f"send_bulk raised: {describe_error(run.error)}"
    # The variant really used the command it is about (Postfix offers CHUNKING).
    used, unused = ("BDAT", "DATA") if chunking else ("DATA", "BDAT")
    assert proxy.verbs[used] > 0 and proxy.verbs[unused] == 0, dict(proxy.verbs)
    assert quiet, f"Postfix still delivering after {DELIVERY_TIMEOUT} s (Maildir {index.new})"
    assert len(run.results) == MESSAGES
    assert proxy.cuts >= MIN_CUTS, f"only {proxy.cuts} cuts injected: the proxy did not work"
