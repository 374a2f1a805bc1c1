"""Every hostile-server scenario against every entry point that applies.

For each (scenario, entry point) case, on real loopback sockets and an autojump
clock:

* the call ends in the scenario's exception type (exactly: the transient or
  permanent flavour of it at most), with its outcome, phase and reply code;
* within the scenario's bound of virtual time (and not before its lower bound:
  a timeout does not fire early); the pool may retry a connection that failed
  while opening, which multiplies the bound by the attempts it is allowed;
* the client holds no file descriptor once the call has returned, and every
  connection the server accepted sees the client leave;
* after a breaking failure the client sends nothing more (no RSET, no QUIT), and
  after a refusal only QUIT;
* no task is left behind, and no descriptor once the server is gone;
* an interrupted session is unusable, and the pool keeps no idle connection.

A scenario that misbehaves during the mail transaction runs against a server
that offers PIPELINING or not and CHUNKING or not (``<scenario>+pipe-chunk`` and
so on, see ``scenarios.py``).
"""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

import trio_sendmail as ts

from .. import defaults
from ..helpers import Certificates
from .hostile import IMPLICIT, PLAIN, STARTTLS, HostileServer
from .scenarios import SCENARIOS, Scenario
from .support import LOOPBACK, describe, live_tasks, open_fds

ENTRY_POINTS = ("sendmail", "sendmail_with_starttls", "open_session", "pool", "send_bulk")
_MODE_ORDER = {
    "sendmail": (IMPLICIT,),
    "sendmail_with_starttls": (STARTTLS,),
    "open_session": (PLAIN, STARTTLS, IMPLICIT),
    "pool": (IMPLICIT, STARTTLS, PLAIN),
    # send_bulk's own path: a lease, the message's end of data pipelined (and
    # answered when the input runs out); no retries here, so one attempt.
    "send_bulk": (PLAIN, IMPLICIT, STARTTLS),
}
#: Errors that end a send_bulk run (raised, not reported) when opening a connection.
BULK_FATAL = (ts.SMTPAuthenticationError, ts.SMTPNotSupportedError, ts.SMTPConnectionError)
#: A refusal of a command of the mail transaction: send_bulk reports the message REFUSED.
REFUSALS = (ts.SMTPResponseError, ts.SMTPRecipientsRefused)
POOL_RETRIES = 2
POOL_LIMITS = ts.PoolLimits(max_connections=1, connect_retries=POOL_RETRIES)
#: The pool's back-off after one refused connection is at most 0.2 s (see Pool._backoff).
POOL_BACKOFF = 0.2
#: Errors the pool does not retry when opening a connection.
POOL_FATAL = (ts.SMTPAuthenticationError, ts.SMTPTLSError, ts.SMTPNotSupportedError)
AUTH = ts.Authentication("alice", "Hostile-Server-Pa55word")
SENDER = "sender@example.com"
RECIPIENTS = ["rcpt@example.com"]


def mode_for(entry: str, scenario: Scenario) -> ts.TLSMode | None:
    return next((m for m in _MODE_ORDER[entry] if m in scenario.modes), None)


CASES = [
    pytest.param(scenario, entry, mode, id=f"{scenario.name}-{entry}")
    for scenario in SCENARIOS
    for entry in ENTRY_POINTS
    if (mode := mode_for(entry, scenario)) is not None
]


@attrs.define
class Observed:
    error: Exception | None = None
    result: ts.SendResult | None = None
    session_usable: bool | None = None
    outcome_unknown: bool | None = None
    pool_stats: ts.PoolStatistics | None = None
    bulk: ts.BulkResult | None = None


async def call(
    entry: str, mode: ts.TLSMode, port: int, scenario: Scenario, certs: Certificates
) -> Observed:
    """Send one message through *entry*; never raises an Exception (it is recorded)."""
    observed = Observed()
    auth = AUTH if scenario.authenticate else None
    timeouts = scenario.timeouts
    context = certs.client_context
    insecure = scenario.insecure_auth and mode is PLAIN
    try:
        if entry == "sendmail":
            observed.result = await defaults.sendmail(
                hostname=LOOPBACK, port=port, sender=SENDER, recipients=RECIPIENTS,
                mail=scenario.mail(), ssl_context=context,
                authentication=auth, timeouts=timeouts,
            )  # fmt: skip
        elif entry == "sendmail_with_starttls":
            observed.result = await defaults.sendmail_with_starttls(
                hostname=LOOPBACK, port=port, sender=SENDER, recipients=RECIPIENTS,
                mail=scenario.mail(), ssl_context=context,
                authentication=auth, timeouts=timeouts,
            )  # fmt: skip
        elif entry == "open_session":
            async with defaults.open_session(
                LOOPBACK, port=port, tls=mode, ssl_context=context,
                authentication=auth, insecure_auth_over_plaintext=insecure, timeouts=timeouts,
            ) as session:  # fmt: skip
                try:
                    observed.result = await session.send(SENDER, RECIPIENTS, scenario.mail())
                finally:
                    observed.session_usable = session.is_usable
                    observed.outcome_unknown = session.outcome_unknown
        else:
            async with defaults.open_pool(
                LOOPBACK, port=port, tls=mode, ssl_context=context,
                authentication=auth, insecure_auth_over_plaintext=insecure, timeouts=timeouts,
                limits=POOL_LIMITS,
            ) as pool:  # fmt: skip
                try:
                    if entry == "pool":
                        observed.result = await pool.send(SENDER, RECIPIENTS, scenario.mail())
                    else:
                        message = ts.BulkMessage(SENDER, RECIPIENTS, scenario.mail())
                        summary = await ts.send_bulk([message], pool=pool, max_retries=0)
                        (observed.bulk,) = summary.results
                        observed.result = observed.bulk.result
                        if observed.bulk.error is not None:
                            assert isinstance(observed.bulk.error, Exception)
                            observed.error = observed.bulk.error
                finally:
                    observed.pool_stats = pool.statistics()
    except Exception as exc:
        observed.error = exc
    return observed


def is_exactly(error: BaseException, expected: type[BaseException]) -> bool:
    """The very type, or its transient / permanent flavour (``SMTPResponseError.Transient``)."""
    flavours = (getattr(expected, "Transient", None), getattr(expected, "Permanent", None))
    return type(error) is expected or type(error) in flavours


@pytest.mark.parametrize(("scenario", "entry", "mode"), CASES)
async def test_hostile_server(
    scenario: Scenario,
    entry: str,
    mode: ts.TLSMode,
    certs: Certificates,
    loopback_clock: trio.testing.MockClock,
) -> None:
    fds_before = open_fds()
    tasks_before = live_tasks()
    server = HostileServer(scenario.dialogue, mode, certs.server(scenario.certificate))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve)
        start = trio.current_time()
        observed = await call(entry, mode, port, scenario, certs)
        elapsed = trio.current_time() - start
        # The call is over: the client holds no descriptor any more.
        assert open_fds() == fds_before + server.open_fds(), "the client leaked a socket"
        with trio.move_on_after(60) as settling:
            await server.settle()
        assert not settling.cancelled_caught, "a server connection never saw the client leave"
        nursery.cancel_scope.cancel()
    assert open_fds() == fds_before
    assert describe(live_tasks() - tasks_before) == []
    assert describe(tasks_before - live_tasks()) == []

    error = observed.error
    expected = scenario.expected_for(mode)
    if expected is None:
        if error is not None:
            raise AssertionError(f"expected success, got {error!r}") from error
        assert observed.result is not None and observed.result.reply.code == 250
    else:
        if error is None or not is_exactly(error, expected):
            raise AssertionError(f"expected {expected.__name__}, got {error!r}") from error
        if isinstance(error, ts.SMTPError):
            assert error.outcome is scenario.outcome, (error.outcome, repr(error))
        if scenario.phase is not None:
            assert isinstance(error, ts.SMTPTimeoutError) and error.phase == scenario.phase
        if scenario.code is not None:
            assert isinstance(error, ts.SMTPResponseError) and error.code == scenario.code

    if entry == "send_bulk":
        # One result per message: its status says what the error's outcome says.
        bulk = observed.bulk
        if expected is None:
            assert bulk is not None and bulk.status is ts.Outcome.ACCEPTED
        elif scenario.opens and issubclass(expected, BULK_FATAL):
            assert bulk is None  # raised: every send would fail the same way
        else:
            assert bulk is not None and bulk.attempts == 1
            refusal = not scenario.opens and issubclass(expected, REFUSALS)
            if scenario.outcome is ts.Outcome.UNKNOWN:
                status = ts.Outcome.UNKNOWN
            elif scenario.outcome is ts.Outcome.REFUSED or refusal:
                status = ts.Outcome.REFUSED  # the server said no to the message
            else:  # failed without a refusal of the message: it cannot be stored
                status = ts.Outcome.NOT_SENT
            assert bulk.status is status, (bulk.status, scenario.outcome)

    # The time bound, with the pool's retry of a connection that failed while opening.
    retried = (
        entry in ("pool", "send_bulk")
        and expected is not None
        and scenario.opens
        and not issubclass(expected, POOL_FATAL)
    )
    attempts = POOL_RETRIES if retried else 1
    assert len(server.conns) == attempts
    upper = scenario.bound * attempts + (POOL_BACKOFF if retried else 0.0)
    assert scenario.at_least * attempts <= elapsed <= upper + 1e-6, elapsed

    # What the client said after the misbehaviour.
    if scenario.after is not None:
        for conn in server.conns:
            if not conn.hung:
                assert tuple(conn.after) == scenario.after, conn.after

    # An interrupted session is unusable; the pool keeps no idle connection after a failure.
    if error is not None and not scenario.opens:
        if entry == "open_session":
            assert observed.session_usable is False
            assert observed.outcome_unknown is (scenario.outcome is ts.Outcome.UNKNOWN)
        if entry in ("pool", "send_bulk"):
            assert observed.pool_stats is not None
            assert observed.pool_stats.connections_idle == 0
            assert observed.pool_stats.failures == 1


def test_the_table_is_large_enough() -> None:
    families = {scenario.family for scenario in SCENARIOS}
    assert len(SCENARIOS) >= 40
    assert {"silence", "drip", "malformed", "disconnect", "421", "tls", "starttls", "auth",
            "pipelining", "too-large"} <= families  # fmt: skip
    for scenario in SCENARIOS:
        assert any(mode_for(entry, scenario) for entry in ENTRY_POINTS)


TIMEOUT_SCENARIOS = [s for s in SCENARIOS if s.expected_for(PLAIN) is ts.SMTPTimeoutError]


@pytest.mark.parametrize("scenario", TIMEOUT_SCENARIOS, ids=lambda s: s.name)
async def test_a_timeout_message_says_once_what_timed_out(
    scenario: Scenario, certs: Certificates, loopback_clock: trio.testing.MockClock
) -> None:
    """``SMTPTimeoutError`` states its bound once, in a sentence that reads right."""
    mode = mode_for("open_session", scenario)
    assert mode is not None
    server = HostileServer(scenario.dialogue, mode, certs.server_context)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve)
        observed = await call("open_session", mode, port, scenario, certs)
        nursery.cancel_scope.cancel()
    error = observed.error
    assert isinstance(error, ts.SMTPTimeoutError)
    message = str(error)
    bound = f"{getattr(scenario.timeouts, error.phase):g} s"
    assert message.count(bound) == 1, message
    assert "waiting for no reply" not in message, message
