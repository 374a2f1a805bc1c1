"""Exact outcomes under every fault: bulk sending to Postfix through a resetting proxy.

2,000 messages go over a pool of 8 connections to Postfix's plain port, through
:mod:`.rst_proxy`, which resets connections (TCP RST on both sides) at a random
byte offset in either direction: in the greeting and EHLO, in the envelope, in
the middle of message data, right after the end of data before its reply, and
in the reply stream. Then every result is checked against the Maildir by
Message-ID:

* ``ACCEPTED``: stored exactly once;
* ``NOT_SENT`` and ``REFUSED`` (the server refused it): not stored;
* ``UNKNOWN`` (the end of data went out, its reply never came back): stored at
  most once.

The run is done with CHUNKING (``BDAT … LAST``) and with DATA, each with
PIPELINING and without it (the client then waits for every reply: other
moments for the cuts to land in; those runs send half as many messages). The
proxy's seed is fixed (``TRIO_SENDMAIL_CHAOS_SEED`` overrides it), but where
the cuts land also depends on timing, so runs differ.
Counts and every violation are printed (``-s``) and written as JSON under the
test's tmp folder.

A second test cancels ``send_bulk`` from outside (``trio.move_on_after``) at
random moments, 8 times per variant, each run with fresh Message-IDs over a
fresh pool: alternately straight to Postfix, and through the proxy, which then
holds each of Postfix's replies a few ms (and cuts a few connections). With 8
connections, most messages in flight wait for the answer to their end of data
when the cancel lands. Messages not yet taken from the input get no result;
every message taken gets one, under the same rules (a regression test: a
cancelled run reported ``NOT_SENT`` for messages Postfix had stored).
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import trio_sendmail as ts

from ..helpers import VARIANTS, ServerVariant
from ..postfix_plugin import PostfixEnv
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

ACCEPTED = ts.Outcome.ACCEPTED
UNKNOWN = ts.Outcome.UNKNOWN


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


def generate_messages(
    env: PostfixEnv, rcpt: str, tag: str, seed: int, count: int
) -> Iterator[ts.BulkMessage]:
    """*count* messages, each made when it is asked for."""
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:10]  # unique across runs, even with the same seed
    for index in range(count):
        message_id = f"<chaos-{tag}-{run}-{index:04d}@trio-sendmail.{env.domain}>"
        mail = make_message(
            sender=env.user,
            to=rcpt,
            message_id=message_id,
            subject=f"chaos {tag} {index}",
            body=make_body(rng),
        )
        yield ts.BulkMessage(env.user, [rcpt], mail, key=message_id)


def make_messages(
    env: PostfixEnv, rcpt: str, tag: str, seed: int, count: int = MESSAGES
) -> list[ts.BulkMessage]:
    return list(generate_messages(env, rcpt, tag, seed, count))


def message_count(variant: ServerVariant) -> int:
    """Without PIPELINING every command waits for its reply: half the messages."""
    return MESSAGES if variant.pipelining else MESSAGES // 2


def variant_name(variant: ServerVariant) -> str:
    return ("CHUNKING (BDAT)" if variant.chunking else "DATA") + (
        ", PIPELINING" if variant.pipelining else ", no PIPELINING"
    )


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
    proxy: RstProxy, messages: list[ts.BulkMessage], variant: ServerVariant
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
        pipelining=variant.pipelining,
        chunking=variant.chunking,
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


Problem = tuple[str, str, ts.BulkResult | None]


def describe_violations(
    env: PostfixEnv, log_offset: int, index: MaildirIndex, problems: list[Problem]
) -> list[Violation]:
    """The problems with what the Maildir and smtpd's log say of each; wrong
    outcomes first, then messages without a result (a run that ended early)."""
    queue_ids = {
        index.queue_ids[path] for message_id, _, _ in problems for path in index.copies(message_id)
    }
    endings = smtpd_endings(env, log_offset, queue_ids)
    violations = []
    for message_id, problem, result in sorted(problems, key=lambda problem: problem[2] is None):
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
    return violations


def reconcile(
    messages: list[ts.BulkMessage], results: list[ts.BulkResult], index: MaildirIndex
) -> tuple[list[Problem], collections.Counter[str]]:
    """(message ID, problem, result) for each violation, and UNKNOWN delivered/not."""
    problems: list[Problem] = []
    by_id: dict[str, list[ts.BulkResult]] = collections.defaultdict(list)
    for result in results:
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
        elif copies:  # NOT_SENT, REFUSED, or any other status
            problems.append((message_id, f"{status.name} but stored", result))
    for message_id, paths in index.by_id.items():
        if message_id not in ours:  # the Maildir is this run's alone
            problems.append(
                (message_id, f"{len(paths)} stored file(s) not sent by this run", None)
            )
    return problems, unknown


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
async def test_exact_outcomes_under_connection_resets(
    postfix: PostfixEnv, tmp_path: Path, variant: ServerVariant
) -> None:
    tag = variant.id
    seed = SEED + VARIANTS.index(variant)
    count = message_count(variant)
    local = unique(f"chaos-{tag}")
    rcpt = postfix.address(local)
    messages = make_messages(postfix, rcpt, tag, seed, count)
    assert len({m.key for m in messages}) == count  # no Message-ID collision
    log_offset = postfix.log_file.stat().st_size if postfix.log_file.exists() else 0
    index = MaildirIndex(postfix, local)

    started = time.perf_counter()
    async with open_rst_proxy(postfix.host, postfix.plain_port, seed=seed, policy=POLICY) as proxy:
        run = await send_through_proxy(proxy, messages, variant)
    accepted_ids = {str(r.message.key) for r in run.results if r.status is ACCEPTED}
    waited, quiet = await wait_for_quiet(postfix, index, rcpt, accepted_ids)
    total = time.perf_counter() - started

    problems, unknown = reconcile(messages, run.results, index)
    statuses = collections.Counter(r.status.name for r in run.results)
    attempts = collections.Counter(r.attempts for r in run.results)
    violations = describe_violations(postfix, log_offset, index, problems)

    report: dict[str, Any] = {
        "variant": variant_name(variant),
        "seed": seed,
        "messages": count,
        "connections": CONNECTIONS,
        "max_retries": MAX_RETRIES,
        "counts": {s.name: statuses.get(s.name, 0) for s in ts.Outcome},
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
        f"chaos {report['variant']}: {count} messages over {CONNECTIONS} connections "
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
    used, unused = ("BDAT", "DATA") if variant.chunking else ("DATA", "BDAT")
    assert proxy.verbs[used] > 0 and proxy.verbs[unused] == 0, dict(proxy.verbs)
    assert quiet, f"Postfix still delivering after {DELIVERY_TIMEOUT} s (Maildir {index.new})"
    assert len(run.results) == count
    assert proxy.cuts >= MIN_CUTS, f"only {proxy.cuts} cuts injected: the proxy did not work"


# ---------------------------------------------------------- cancellation --

#: Cancelled runs per variant, alternately straight to Postfix's plain port and
#: through the proxy (which holds every reply and cuts some connections).
CANCEL_RUNS = 8
#: Each run is cancelled from outside after a delay drawn uniformly from this
#: range (seconds): a few hundred messages are taken from the input by then.
CANCEL_DELAY = (0.2, 2.0)
#: Each run's input (made as it is read): more than any run gets to, so that the
#: cancel lands mid-run even on a fast machine.
CANCEL_INPUT = 5000
#: Through the proxy, every read from Postfix is held this long: the answer to
#: an end of data is then awaited longer, where a cancel is likely to land.
REPLY_DELAY = 0.004
#: Through the proxy, a few cuts too (most connections live through their run).
CANCEL_POLICY = CutPolicy(survive=0.7, client_share=0.6, client_span=16 * 1024, server_span=1024)
ROUTES = ("direct", "proxy")


@attrs.define
class CancelledRun:
    number: int
    route: str
    delay: float
    #: The messages send_bulk took from its input.
    taken: list[ts.BulkMessage] = attrs.field(factory=list)
    results: list[ts.BulkResult] = attrs.field(factory=list)
    cancelled: bool = False
    error: BaseException | None = None
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        statuses = collections.Counter(r.status.name for r in self.results)
        return {
            "run": self.number,
            "route": self.route,
            "delay": round(self.delay, 3),
            "cancelled": self.cancelled,
            "taken": len(self.taken),
            "counts": {s.name: statuses.get(s.name, 0) for s in ts.Outcome},
            "interrupted": sum(1 for r in self.results if is_cancelled(r.error)),
            "seconds": round(self.seconds, 2),
            "error": None if self.error is None else describe_error(self.error),
        }


def is_cancelled(error: BaseException | None) -> bool:
    """Whether *error* is (or comes from) a trio.Cancelled."""
    for _ in range(4):
        if error is None:
            return False
        if isinstance(error, trio.Cancelled):
            return True
        error = error.__cause__ or error.__context__
    return False


async def send_cancelled(
    port: int, messages: Iterator[ts.BulkMessage], variant: ServerVariant, run: CancelledRun
) -> None:
    """send_bulk over a fresh pool of CONNECTIONS to *port*, cancelled from
    outside after ``run.delay`` seconds (unless it finished before)."""

    def source() -> Iterator[ts.BulkMessage]:
        for message in messages:
            run.taken.append(message)
            yield message

    limits = ts.PoolLimits(max_connections=CONNECTIONS, connect_retries=50, regrow_after=0.5)
    start = time.perf_counter()
    async with ts.open_pool(
        "127.0.0.1",
        port=port,
        tls=ts.TLSMode.INSECURE_PLAINTEXT,
        domain=CLIENT_NAME,
        timeouts=TIMEOUTS,
        pipelining=variant.pipelining,
        chunking=variant.chunking,
        limits=limits,
    ) as pool:
        with trio.move_on_after(run.delay) as scope:
            try:
                await ts.send_bulk(
                    source(),
                    pool=pool,
                    max_retries=MAX_RETRIES,
                    retry_backoff=RETRY_BACKOFF,
                    on_result=run.results.append,
                )
            except Exception as exc:  # reported with the reconciliation
                run.error = exc
        run.cancelled = scope.cancelled_caught
    run.seconds = time.perf_counter() - start


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
async def test_exact_outcomes_when_cancelled(
    postfix: PostfixEnv, tmp_path: Path, variant: ServerVariant
) -> None:
    """send_bulk cancelled from outside at random moments, many messages waiting
    for the answer to their end of data: every message taken from the input gets
    one result, under the rules above (a cancel never makes a stored message
    NOT_SENT). Messages not taken yet get none, and are never sent."""
    tag = variant.id
    seed = SEED + 10 + VARIANTS.index(variant)
    rng = random.Random(seed)
    local = unique(f"cancel-{tag}")
    rcpt = postfix.address(local)
    log_offset = postfix.log_file.stat().st_size if postfix.log_file.exists() else 0
    index = MaildirIndex(postfix, local)

    started = time.perf_counter()
    runs: list[CancelledRun] = []
    async with open_rst_proxy(
        postfix.host,
        postfix.plain_port,
        seed=seed,
        policy=CANCEL_POLICY,
        reply_delay=REPLY_DELAY,
    ) as proxy:
        for number in range(CANCEL_RUNS):
            route = ROUTES[number % len(ROUTES)]
            run = CancelledRun(number, route, rng.uniform(*CANCEL_DELAY))
            runs.append(run)
            messages = generate_messages(
                postfix, rcpt, f"{tag}{number}", rng.randrange(2**32), CANCEL_INPUT
            )
            port = postfix.plain_port if route == "direct" else proxy.port
            await send_cancelled(port, messages, variant, run)
    sending = time.perf_counter() - started
    taken = [message for run in runs for message in run.taken]
    results = [result for run in runs for result in run.results]
    accepted_ids = {str(r.message.key) for r in results if r.status is ACCEPTED}
    waited, quiet = await wait_for_quiet(postfix, index, rcpt, accepted_ids)
    total = time.perf_counter() - started

    # Only the messages taken: any other one in the Maildir is a violation too.
    problems, _ = reconcile(taken, results, index)
    violations = describe_violations(postfix, log_offset, index, problems)

    def stored(results: list[ts.BulkResult], status: ts.Outcome) -> int:
        return sum(1 for r in results if r.status is status and index.copies(str(r.message.key)))

    by_route: dict[str, dict[str, int]] = {}
    for route in ROUTES:
        ran = [run for run in runs if run.route == route]
        got = [result for run in ran for result in run.results]
        statuses = collections.Counter(r.status.name for r in got)
        by_route[route] = {
            "runs": len(ran),
            "cancels": sum(run.cancelled for run in ran),
            "taken": sum(len(run.taken) for run in ran),
            **{s.name: statuses.get(s.name, 0) for s in ts.Outcome},
            "interrupted": sum(1 for r in got if is_cancelled(r.error)),
            "unknown_stored": stored(got, UNKNOWN),
            "not_sent_stored": stored(got, ts.Outcome.NOT_SENT),
        }
    cancels = sum(run.cancelled for run in runs)
    errors = [f"run {run.number}: {describe_error(run.error)}" for run in runs if run.error]

    report: dict[str, Any] = {
        "variant": variant_name(variant),
        "library": str(Path(ts.__file__).parent),
        "seed": seed,
        "runs": CANCEL_RUNS,
        "connections": CONNECTIONS,
        "cancel_delay": list(CANCEL_DELAY),
        "reply_delay": REPLY_DELAY,
        "cancels": cancels,
        "by_route": by_route,
        "per_run": [run.summary() for run in runs],
        "proxy": proxy.summary(),
        "stored_files": sum(len(p) for p in index.by_id.values()),
        "send_seconds": round(sending, 2),
        "delivery_wait_seconds": round(waited, 2),
        "delivery_quiet": quiet,
        "runtime_seconds": round(total, 2),
        "violations": [attrs.asdict(v) for v in violations],
        "maildir": str(index.new),
    }
    report_path = tmp_path / f"cancel-{tag}.json"
    report_path.write_text(json.dumps(report, indent=2), encoding="utf-8")

    def counts(route: str) -> str:
        c = by_route[route]
        return (
            f"{route}: {c['cancels']}/{c['runs']} runs cancelled, {c['taken']} messages taken: "
            + " / ".join(f"{s.name} {c[s.name]}" for s in ts.Outcome)
            + f" ({c['interrupted']} interrupted); UNKNOWN stored {c['unknown_stored']}"
            + f", NOT_SENT stored {c['not_sent_stored']}"
        )

    summary = (
        f"cancel {report['variant']} ({CONNECTIONS} connections, seed {seed}, library "
        f"{report['library']}): "
        + "; ".join(counts(route) for route in ROUTES)
        + f"; proxy: {proxy.cuts} cuts {dict(proxy.phases)}; sending {sending:.1f} s, "
        f"delivery wait {waited:.1f} s, total {total:.1f} s; {len(violations)} violation(s); "
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
        lines += [v.line() for v in violations[:MAX_LISTED]]
        if len(violations) > MAX_LISTED:
            lines.append(f"... and {len(violations) - MAX_LISTED} more (see the report)")
        pytest.fail("\n  ".join(lines), pytrace=False)
    assert not errors, errors
    used, unused = ("BDAT", "DATA") if variant.chunking else ("DATA", "BDAT")
    assert proxy.verbs[used] > 0 and proxy.verbs[unused] == 0, dict(proxy.verbs)
    assert quiet, f"Postfix still delivering after {DELIVERY_TIMEOUT} s (Maildir {index.new})"
    # Every run was cancelled mid-run, messages on the wire (else nothing was tested).
    assert cancels == CANCEL_RUNS, f"only {cancels} of {CANCEL_RUNS} runs were cancelled"
    for route in ROUTES:
        assert by_route[route]["interrupted"] > 0, f"no message was interrupted ({route})"
