"""Model-based chaos: every message gets one true outcome, whatever the server does.

A :class:`~.chaos_server.ChaosServer` on loopback injects faults drawn from a seed (421
replies, EOF and RST at any point, silence, delays, refusals of every step, stray replies)
and records which messages it *stored*: a message is stored when the server commits its
end of data, before the reply is written. Every entry point of the library sends messages
to it, some of them under a caller's deadline that fires at a random time:

* ``sendmail`` (implicit TLS), a few at once;
* ``open_session`` + ``Session.send``, a sequence of messages on one session, reopened
  when it breaks;
* ``open_pool`` + ``Pool.send`` from several tasks;
* ``send_bulk`` over a pool, without ``rate=`` (it pipelines across messages), and with
  ``rate=`` (one message at a time), sometimes cancelled as a whole from outside.

What the library claims for each message is then checked against what the server
stored (the model):

* ACCEPTED  ⇒ stored exactly once, byte for byte as sent;
* NOT_SENT  ⇒ not stored (resending cannot duplicate it);
* REFUSED   ⇒ not stored (bulk: the server refused the message, for good or still
  after the retries; the wire says REFUSED or, for a refused envelope, NOT_SENT);
* UNKNOWN   ⇒ the end of data went out and its answer never came back: stored at most once.

The claims come from the return (ACCEPTED), ``SMTPError.outcome``, the
:class:`trio_sendmail.OutcomeTracker` passed as ``tracker=`` (also the only claim after
a cancellation), and ``BulkResult.status``; when a call gives two claims they must agree.
An error that carries the server's reply to a command of the transaction (MAIL, RCPT,
DATA, BDAT, the final dot; 421 included) proves that an answer came back: replies come in
order (RFC 2920 §3.1), so the outcome is REFUSED or NOT_SENT, never UNKNOWN. Every bulk
message gets exactly one result (unless the run was cut short, and then an unreported
message must not be stored). The calls raise nothing but SMTPError (and cancellation).
The server also records the client's protocol violations (pipelining without PIPELINING,
a command after one that must end a group, bare line endings, undeclared 8-bit data),
and no descriptor or task may outlive a run.

Real time and real sockets (no autojump clock): delays are milliseconds and the
:class:`~trio_sendmail.Timeouts` are a quarter of a second; a scenario still running after
:data:`SCENARIO_BOUND` seconds is a hang: where each of its tasks waits is reported.

Replay one failure::

    CHAOS_SEED=17 .venv/bin/python -m pytest tests/hardening/test_chaos.py \
        -k 'session-chunking-pipelining-17' -p no:cacheprovider

``CHAOS_SEEDS=n`` runs seeds 0..n-1 (default below); ``CHAOS_SEED=a,b`` runs those. A
seed fixes the fault script of each connection and the client's choices; the timing of
real sockets is not fixed, so a replay usually, not always, retraces the same story.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel

import trio_sendmail as ts
from trio_sendmail.testing import TestCertificates

from .chaos_server import VARIANTS, ChaosServer, Variant
from .support import live_tasks, open_fds

LOOPBACK = "127.0.0.1"
CLIENT_NAME = "client.example.test"
DEFAULT_SEEDS = 16

#: Short bounds: the server's silence (0.4 s) outlasts every one of them.
TIMEOUTS = ts.Timeouts(
    connect=2.0,
    tls_handshake=1.0,
    greeting=0.25,
    command=0.25,
    mail=0.25,
    rcpt=0.25,
    data_init=0.25,
    data_block=0.25,
    data_end=0.25,
    quit=0.1,
)
#: The most a whole scenario may take before it counts as a hang.
SCENARIO_BOUND = 3.0

ENTRIES = ("sendmail", "session", "pool", "bulk", "bulk-rate")


def _seeds() -> list[int]:
    chosen = os.environ.get("CHAOS_SEED")
    if chosen:
        return [int(seed) for seed in chosen.split(",")]
    return list(range(int(os.environ.get("CHAOS_SEEDS", DEFAULT_SEEDS))))


def _cases() -> list[Any]:
    return [
        pytest.param(entry, variant, seed, id=f"{entry}-{variant.name}-{seed}")
        for entry in ENTRIES
        for variant in VARIANTS
        for seed in _seeds()
    ]


# ----------------------------------------------------------------------------- leak checks


# ----------------------------------------------------------------------------- the ledger


@attrs.define(eq=False)
class Attempt:
    """One message handed to the library once, and what the library said about it."""

    label: str
    message_id: str
    #: Unique too: the server's story of a message can be found by its MAIL command.
    sender: str
    recipients: tuple[str, ...]
    body: bytes
    started: float = math.inf
    ended: float = math.inf
    #: (who said it, outcome name): "ACCEPTED", "NOT_SENT", "REFUSED", "UNKNOWN",
    #: "NONE" (an SMTPError without an outcome: no message involved).
    claims: list[tuple[str, str]] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)
    #: The error raised carries a server reply to a command of the transaction (a
    #: refusal, or 421): the reply came back, so the outcome cannot be UNKNOWN.
    answered_by: str | None = None
    #: An exception the API does not document (not an SMTPError, not a cancellation).
    unexpected: str | None = None

    def claim(self, source: str, outcome: str) -> None:
        self.claims.append((source, outcome))


def outcome_name(outcome: ts.Outcome | None) -> str:
    return "NONE" if outcome is None else outcome.name


#: What each claim allows the server to hold: (least, most) copies stored.
ALLOWED = {
    "ACCEPTED": (1, 1),
    "NOT_SENT": (0, 0),
    "REFUSED": (0, 0),
    "NONE": (0, 0),
    "UNKNOWN": (0, 1),
}
#: Claims that say the same thing (an error without an outcome came before any message).
SAME = {"NONE": "NOT_SENT"}


@attrs.define(eq=False)
class Run:
    """One scenario: a seed, a server variant, an entry point."""

    entry: str
    variant: Variant
    seed: int
    server: ChaosServer
    certs: TestCertificates
    port: int = 0
    tls: bool = False
    attempts: list[Attempt] = attrs.field(factory=list)
    #: Failures that concern no particular message (leaks, hangs, violations).
    problems: list[str] = attrs.field(factory=list)
    #: Set when a bulk run ended early (cancelled, or a fatal error): then a message
    #: that got no result may be one that was never taken from the input.
    cut_short: bool = False
    events: list[str] = attrs.field(factory=list)
    #: When an undocumented exception escaped a call that is not about one message.
    escaped: list[float] = attrs.field(factory=list)
    #: Open pools, whose statistics are shown if the run hangs.
    pools: list[ts.Pool] = attrs.field(factory=list)

    @property
    def name(self) -> str:
        return f"seed={self.seed} variant={self.variant.name} entry={self.entry}"

    def rng(self, purpose: str) -> random.Random:
        """A generator of the client's choices, one per task (so that the draws of one
        task do not depend on the scheduling of the others)."""
        return random.Random(f"{self.entry}/{self.variant.name}/{self.seed}/client/{purpose}")

    def note(self, text: str) -> None:
        self.events.append(f"{1000 * (trio.current_time() - self.server.origin):8.1f} ms  {text}")

    def new_attempt(self, rng: random.Random, label: str) -> Attempt:
        message_id = f"{label}.{self.seed}@chaos.test"
        sender = f"sender.{label}@example.com"
        recipients = tuple(f"rcpt{i}@example.com" for i in range(rng.randint(1, 3)))
        body = make_body(rng, message_id, sender)
        attempt = Attempt(label, message_id, sender, recipients, body)
        self.attempts.append(attempt)
        return attempt

    def connection(self, rng: random.Random, *, sizes: bool = False) -> dict[str, Any]:
        """Keyword arguments of open_session/open_pool (and sendmail, less ``tls``)."""
        kwargs: dict[str, Any] = {
            "port": self.port,
            "domain": CLIENT_NAME,
            "timeouts": TIMEOUTS,
            "ssl_context": self.certs.client_context,
        }
        if sizes:
            kwargs["send_size"] = rng.choice([512, 1024, 64 * 1024])
        return kwargs

    @property
    def tls_mode(self) -> ts.TLSMode:
        return ts.TLSMode.IMPLICIT if self.tls else ts.TLSMode.INSECURE_PLAINTEXT


def make_body(rng: random.Random, message_id: str, sender: str) -> bytes:
    """A message whose content shows corruption: lines with dots (stuffing), a line
    holding a lone dot, sometimes 8-bit text, sometimes big (several chunks)."""
    lines = [
        f"Message-ID: <{message_id}>",
        f"From: <{sender}>",
        "To: <rcpt0@example.com>",
        f"Subject: chaos {message_id}",
        "",
    ]
    for _ in range(rng.randint(1, 12)):
        lines.append(
            rng.choice(
                [
                    "Plain text of the message.",
                    ".",
                    "..",
                    ".leading dot",
                    "",
                    "x" * rng.randint(1, 900),
                    "caf\u00e9 8-bit line" if rng.random() < 0.3 else "seven-bit line",
                ]
            )
        )
    if rng.random() < 0.12:
        lines += [f"{i:06d} " + "y" * 70 for i in range(rng.randint(900, 1300))]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


# ----------------------------------------------------------------------------- calling


def cancel_delay(rng: random.Random, rate: float = 0.25) -> float:
    """When the caller gives up: never, or after a random few milliseconds."""
    if rng.random() >= rate:
        return math.inf
    return rng.choice([0.0, rng.uniform(0, 0.003), rng.uniform(0, 0.03)])


async def idle(rng: random.Random) -> None:
    """Sometimes leave the connection idle a little (the server may send a stray)."""
    if rng.random() < 0.35:
        await trio.sleep(rng.uniform(0.004, 0.012))


#: The commands of a mail transaction, as ``SMTPResponseError.command`` names them.
TRANSACTION_COMMANDS = frozenset({"MAIL", "RCPT", "DATA", ".", "END-DATA"})


def answered_by(error: BaseException | None) -> str | None:
    """The server reply an error carries, if it answered a command of the transaction
    (MAIL, RCPT, DATA, a BDAT chunk, BDAT … LAST or the final dot), else None."""
    if isinstance(error, ts.SMTPRecipientsRefused):
        return f"every RCPT refused: {error}"
    if isinstance(error, ts.SMTPResponseError):
        command = error.command.upper().replace("_", "-")
        if command in TRANSACTION_COMMANDS or command.startswith("BDAT"):
            return f"{error.reply} answering {error.command}"
    return None


async def tracked(
    run: Run,
    attempt: Attempt,
    send: Callable[[ts.OutcomeTracker], Awaitable[object]],
    deadline: float,
) -> None:
    """Make one call and record every claim it gives about *attempt*."""
    tracker = ts.OutcomeTracker()
    attempt.started = trio.current_time()
    run.note(
        f"{attempt.label}: start"
        + ("" if deadline == math.inf else f" (deadline {1000 * deadline:.1f} ms)")
    )
    with trio.move_on_after(deadline) as scope:
        try:
            await send(tracker)
        except ts.SMTPError as exc:
            attempt.claim("SMTPError.outcome", outcome_name(exc.outcome))
            attempt.notes.append(f"raised {exc!r}")
            attempt.answered_by = answered_by(exc)
        except Exception as exc:
            attempt.notes.append(f"raised {exc!r}")
            attempt.unexpected = f"raised an exception that is not an SMTPError: {exc!r}"
        else:
            attempt.claim("returned", "ACCEPTED")
    attempt.ended = trio.current_time()
    if scope.cancelled_caught:
        attempt.notes.append(f"cancelled by the caller after {1000 * deadline:.1f} ms")
    attempt.claim("tracker.outcome", outcome_name(tracker.outcome))
    run.note(f"{attempt.label}: end {attempt.claims} {attempt.notes}")


# ----------------------------------------------------------------------------- entry points


async def via_sendmail(run: Run) -> None:
    async def one_task(k: int) -> None:
        rng = run.rng(f"sendmail task {k}")
        for i in range(2):
            attempt = run.new_attempt(rng, f"t{k}m{i}")
            kwargs = run.connection(rng)  # sendmail() takes no send_size: sessions do
            kwargs["pipelining"] = rng.random() < 0.8

            async def send(
                tracker: ts.OutcomeTracker,
                attempt: Attempt = attempt,
                kwargs: dict[str, Any] = kwargs,
            ) -> object:
                return await ts.sendmail(
                    hostname=LOOPBACK,
                    sender=attempt.sender,
                    recipients=attempt.recipients,
                    mail=attempt.body,
                    tracker=tracker,
                    **kwargs,
                )

            await tracked(run, attempt, send, cancel_delay(rng))

    async with trio.open_nursery() as nursery:
        for k in range(2):
            nursery.start_soon(one_task, k)


async def via_session(run: Run) -> None:
    rng = run.rng("session")
    total = 6
    sent = 0
    opened = 0
    while sent < total and opened < 8:
        opened += 1
        kwargs = run.connection(rng, sizes=True)
        kwargs["pipelining"] = rng.random() < 0.85
        kwargs["chunking"] = rng.random() < 0.85
        try:
            run.note(
                f"session {opened}: opening (pipelining={kwargs['pipelining']}, "
                f"chunking={kwargs['chunking']}, {kwargs['send_size']}-octet "
                f"writes)"
            )
            async with ts.open_session(LOOPBACK, tls=run.tls_mode, **kwargs) as session:
                run.note(f"session {opened} open")
                while sent < total and session.is_usable:
                    await idle(rng)
                    attempt = run.new_attempt(rng, f"m{sent}")
                    sent += 1

                    async def send(
                        tracker: ts.OutcomeTracker,
                        attempt: Attempt = attempt,
                        session: ts.Session = session,
                    ) -> object:
                        return await session.send(
                            attempt.sender, attempt.recipients, attempt.body, tracker=tracker
                        )

                    await tracked(run, attempt, send, cancel_delay(rng))
                run.note(f"session {opened} closing (usable: {session.is_usable})")
        except ts.SMTPError as exc:
            run.note(f"session {opened}: {exc!r}")
        except Exception as exc:
            run.escaped.append(trio.current_time())
            run.problems.append(
                f"open_session raised an exception that is not an SMTPError: {exc!r}"
            )


def pool_limits(run: Run, rng: random.Random, kwargs: dict[str, Any]) -> ts.PoolLimits:
    limits = ts.PoolLimits(
        max_connections=rng.choice([1, 2, 3]),
        connect_retries=3,
        idle_check_after=rng.choice([0.0, 0.005, 5.0]),
    )
    run.note(f"pool: {limits}, pipelining={kwargs['pipelining']}, chunking={kwargs['chunking']}")
    return limits


async def via_pool(run: Run) -> None:
    rng = run.rng("pool")
    kwargs = run.connection(rng)
    kwargs["pipelining"] = rng.random() < 0.85
    kwargs["chunking"] = rng.random() < 0.85
    async with ts.open_pool(
        LOOPBACK, tls=run.tls_mode, limits=pool_limits(run, rng, kwargs), **kwargs
    ) as pool:
        run.pools.append(pool)

        async def worker(k: int) -> None:
            task_rng = run.rng(f"pool task {k}")
            for i in range(3):
                await idle(task_rng)
                attempt = run.new_attempt(task_rng, f"t{k}m{i}")

                async def send(tracker: ts.OutcomeTracker, attempt: Attempt = attempt) -> object:
                    return await pool.send(
                        attempt.sender, attempt.recipients, attempt.body, tracker=tracker
                    )

                await tracked(run, attempt, send, cancel_delay(task_rng))

        async with trio.open_nursery() as nursery:
            for k in range(3):
                nursery.start_soon(worker, k)


async def trickle(
    messages: list[ts.BulkMessage], rng: random.Random
) -> AsyncGenerator[ts.BulkMessage]:
    """The input as an async iterable that is sometimes slow (connections go idle)."""
    for message in messages:
        if rng.random() < 0.3:
            await trio.sleep(rng.uniform(0, 0.006))
        yield message


async def via_bulk(run: Run, rate: float | None) -> None:
    rng = run.rng("bulk")
    messages = []
    for i in range(8):
        attempt = run.new_attempt(rng, f"m{i}")
        messages.append(
            ts.BulkMessage(attempt.sender, attempt.recipients, attempt.body, key=attempt)
        )

    def on_result(result: ts.BulkResult) -> None:
        attempt = result.message.key
        assert isinstance(attempt, Attempt)
        attempt.claim("BulkResult.status", result.status.name)
        if result.attempts == 1:
            attempt.answered_by = answered_by(result.error)
        attempt.ended = trio.current_time()
        attempt.notes.append(f"result after {result.attempts} attempt(s), error {result.error!r}")
        run.note(f"{attempt.label}: {result.status.name} {attempt.notes[-1]}")

    kwargs = run.connection(rng)
    kwargs["pipelining"] = rng.random() < 0.85
    kwargs["chunking"] = rng.random() < 0.85
    source: list[ts.BulkMessage] | AsyncGenerator[ts.BulkMessage] = messages
    if rng.random() < 0.35:
        source = trickle(messages, rng)
    deadline = cancel_delay(rng, 0.3) * 4
    concurrency = rng.choice([1, 2, 3])
    run.note(
        f"send_bulk: rate={rate}, concurrency={concurrency}, "
        f"input={'async' if isinstance(source, AsyncGenerator) else 'list'}, "
        f"deadline={1000 * deadline:.1f} ms"
    )
    start = trio.current_time()
    for attempt in run.attempts:
        attempt.started = start
    async with ts.open_pool(
        LOOPBACK, tls=run.tls_mode, limits=pool_limits(run, rng, kwargs), **kwargs
    ) as pool:
        run.pools.append(pool)
        with trio.move_on_after(deadline) as scope:
            try:
                await ts.send_bulk(
                    source,
                    pool=pool,
                    concurrency=concurrency,
                    max_retries=2,
                    retry_backoff=0.005,
                    rate=rate,
                    on_result=on_result,
                )
            except ts.SMTPError as exc:  # a fatal error ends the run
                run.note(f"send_bulk raised {exc!r}")
                run.cut_short = True
            except Exception as exc:
                run.escaped.append(trio.current_time())
                run.problems.append(
                    f"send_bulk raised an exception that is not an SMTPError: {exc!r}"
                )
                run.cut_short = True
        if scope.cancelled_caught:
            run.note(f"send_bulk cancelled from outside after {1000 * deadline:.1f} ms")
            run.cut_short = True
    if not isinstance(source, list):
        await source.aclose()


async def via_bulk_pipelined(run: Run) -> None:
    await via_bulk(run, None)


async def via_bulk_rate(run: Run) -> None:
    await via_bulk(run, 10_000.0)


SCENARIOS: dict[str, Callable[[Run], Awaitable[None]]] = {
    "sendmail": via_sendmail,
    "session": via_session,
    "pool": via_pool,
    "bulk": via_bulk_pipelined,
    "bulk-rate": via_bulk_rate,
}


# ----------------------------------------------------------------------------- the model


def check_outcomes(run: Run) -> list[tuple[Attempt | None, str]]:
    """Every claim against what the server stored."""
    failures: list[tuple[Attempt | None, str]] = []
    stored = run.server.stored
    known = {attempt.message_id for attempt in run.attempts}
    for attempt in run.attempts:
        copies = stored.get(attempt.message_id, [])
        for source, claim in attempt.claims:
            least, most = ALLOWED[claim]
            if not least <= len(copies) <= most:
                failures.append(
                    (
                        attempt,
                        f"the library claimed {claim} ({source}), "
                        f"the server stored it {len(copies)} time(s)",
                    )
                )
        if attempt.unexpected is not None:
            failures.append((attempt, attempt.unexpected))
        if attempt.answered_by is not None and any(c == "UNKNOWN" for _, c in attempt.claims):
            failures.append(
                (
                    attempt,
                    f"claimed UNKNOWN, but the server's reply came back "
                    f"({attempt.answered_by}): replies come in order, so the "
                    f"end of data was answered (REFUSED) or never accepted "
                    f"(NOT_SENT)",
                )
            )
        said = {SAME.get(claim, claim) for _, claim in attempt.claims}
        if len(said) > 1:
            failures.append((attempt, f"contradictory claims: {attempt.claims}"))
        bulk = [claim for source, claim in attempt.claims if source == "BulkResult.status"]
        if len(bulk) > 1:
            failures.append((attempt, f"{len(bulk)} bulk results for one message: {bulk}"))
        if not attempt.claims:
            if not run.cut_short:
                failures.append((attempt, "no outcome was reported for this message"))
            elif copies:
                failures.append(
                    (
                        attempt,
                        f"no outcome was reported (the run was cut short), "
                        f"but the server stored it {len(copies)} time(s)",
                    )
                )
        for copy in copies:
            if copy.data != attempt.body:
                failures.append(
                    (
                        attempt,
                        f"stored on connection #{copy.conn} with content "
                        f"different from what was sent "
                        f"({len(copy.data)} vs {len(attempt.body)} octets)",
                    )
                )
    for message_id, copies in stored.items():
        if message_id not in known:
            failures.append(
                (
                    None,
                    f"the server stored a message no one sent: <{message_id}> "
                    f"({len(copies)} time(s))",
                )
            )
    return failures


def report(run: Run, failures: list[tuple[Attempt | None, str]]) -> str:
    server = run.server
    out = [
        f"CHAOS FAILURE {run.name} ({'implicit TLS' if run.tls else 'plaintext'})",
        f"replay: CHAOS_SEED={run.seed} .venv/bin/python -m pytest "
        f"tests/hardening/test_chaos.py -k '{run.entry}-{run.variant.name}-{run.seed}' "
        f"-p no:cacheprovider",
        "",
    ]
    for problem in run.problems:
        out.append(f"* {problem}")
    for attempt, text in failures:
        if attempt is None:
            out.append(f"* {text}")
        else:
            out.append(f"* {attempt.label} <{attempt.message_id}>: {text}")
    shown = 0
    for attempt, _ in failures:
        if attempt is None or shown >= 3:
            continue
        shown += 1
        out += ["", f"=== the story of {attempt.label} <{attempt.message_id}>"]
        out.append(f"claims: {attempt.claims}")
        out += [f"client: {note}" for note in attempt.notes]
        copies = server.stored.get(attempt.message_id, [])
        out += [f"stored on connection #{c.conn} via {c.via}" for c in copies]
        out.append(
            server.stories(
                attempt.message_id, attempt.sender, start=attempt.started, end=attempt.ended
            )
        )
    for number in sorted({number for number, _ in server.violations})[:3]:
        out += [
            "",
            f"=== the story of connection #{number}",
            server.conns[number].render(server.origin),
        ]
    for at in run.escaped[:1]:
        out += ["", "=== the connections open when the exception escaped"]
        out.append(server.stories(start=at - 0.05, end=at, limit=4))
    if run.events:
        out += ["", "=== client events", *run.events]
    return "\n".join(out)


# ----------------------------------------------------------------------------- the test


def task_stacks(tasks: set[trio.lowlevel.Task]) -> list[str]:
    """Where each task waits (to diagnose a hang)."""
    lines = []
    for task in sorted(tasks, key=lambda t: t.name):
        frames = [
            f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{lineno} {frame.f_code.co_name}"
            for frame, lineno in task.iter_await_frames()
        ]
        lines.append(f"task {task.name}: " + " -> ".join(frames[-6:]))
    return lines


async def run_bounded(run: Run, scenario: Callable[[Run], Awaitable[None]]) -> None:
    """Run *scenario*; if it takes longer than SCENARIO_BOUND, record where every task
    waits, then cancel it."""
    before = live_tasks()
    async with trio.open_nursery() as nursery:

        async def watchdog() -> None:
            await trio.sleep(SCENARIO_BOUND)
            run.problems.append(f"the scenario hung for {SCENARIO_BOUND} s; its tasks:")
            run.problems += ["    " + line for line in task_stacks(live_tasks() - before)]
            run.problems += [f"    {pool.statistics()}" for pool in run.pools]
            nursery.cancel_scope.cancel()

        nursery.start_soon(watchdog)
        await scenario(run)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("entry", "variant", "seed"), _cases())
async def test_every_message_gets_one_true_outcome(
    entry: str, variant: Variant, seed: int, certs: TestCertificates
) -> None:
    tls = entry == "sendmail" or random.Random(f"{entry}/{seed}/tls").random() < 0.25
    server = ChaosServer(
        seed=f"{entry}/{variant.name}/{seed}",
        variant=variant,
        ssl_context=certs.server_context if tls else None,
    )
    run = Run(entry=entry, variant=variant, seed=seed, server=server, certs=certs, tls=tls)
    fds_before = open_fds()
    tasks_before = live_tasks()
    async with trio.open_nursery() as nursery:
        run.port = await nursery.start(server.serve)
        await run_bounded(run, SCENARIOS[entry])
        # Every client connection is closed by now; the server may still hold its ends.
        client_fds = open_fds() - fds_before - server.open_fds()
        if client_fds:
            run.problems.append(f"the client still holds {client_fds} descriptor(s)")
        nursery.cancel_scope.cancel()
    if open_fds() != fds_before:
        run.problems.append(f"{open_fds() - fds_before} descriptor(s) leaked")
    leaked = live_tasks() - tasks_before
    if leaked:
        run.problems.append(f"tasks outlived the run: {sorted(t.name for t in leaked)}")
    for number, text in server.violations:
        run.problems.append(f"protocol violation by the client on connection #{number}: {text}")
    failures = check_outcomes(run)
    if run.problems or failures:
        pytest.fail(report(run, failures), pytrace=False)
