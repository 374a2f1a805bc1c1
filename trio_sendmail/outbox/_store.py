"""The outbox's SQL: schema migrations and every statement, for both engines.

Theory of operation
-------------------
A :class:`Store` is synchronous; the :class:`~trio_sendmail.outbox.Outbox`
calls it through :func:`trio.to_thread.run_sync`. Each method is **one short
transaction**, so a worker killed at any instant leaves the database at the
last commit (SQLite's WAL and PostgreSQL's own log roll back the rest). The
engines differ only in a few places, which subclasses fill in
(``_engines.py``): how a transaction starts (SQLite ``BEGIN IMMEDIATE`` takes
the write lock at once, so two processes never deadlock on a lock upgrade;
PostgreSQL claims with ``SELECT … FOR UPDATE SKIP LOCKED``, so any number of
workers share the queue and none waits for another's rows), the column types,
and the placeholder style. Rows are always locked in id order, and a
transaction the engine rolled back to break a deadlock is run again
(:meth:`Store.run`).

Rows move between states only here (the diagram is in ``docs/design.rst``):
:meth:`Store.claim` (``pending`` → ``claimed``, taking rate tokens, after
:meth:`Store.recover` of expired claims: ``claimed`` → ``pending``,
``sending`` → ``unknown``), :meth:`Store.arm` (``claimed`` → ``sending``, only
for the worker that holds the claim), :meth:`Store.settle` (``sending`` →
final, ``pending`` with a retry time, or ``unknown``), :meth:`Store.release`
and :meth:`Store.resolve_unknown`.

The shared rate limit is a token bucket per scope in ``outbox_rates`` (``*``
for the whole outbox, ``domain:<name>`` for one sender domain, ``domain:*``
for each sender domain): a claim takes one token per row, so workers on any
number of machines together claim at most ``rate`` rows per second (plus the
bucket's burst).
"""

from __future__ import annotations

import abc
import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

from ._model import OutboxEntry, Settlement, State

__all__ = ["SCHEMA_VERSION", "Claimed", "Store"]

T = TypeVar("T")

_PENDING, _CLAIMED, _SENDING = State.PENDING.value, State.CLAIMED.value, State.SENDING.value
_UNKNOWN = State.UNKNOWN.value

#: The WHERE terms of the partial indexes of migration 2, written literally in
#: the queries that must use them (with a parameter in their place, neither
#: engine can prove that a query's rows are in the index).
_IS_DUE = "state = 'pending'"
_IN_FLIGHT = "state IN ('claimed', 'sending')"
_INDEXED: dict[State, str] = {
    State.PENDING: _IS_DUE,
    State.CLAIMED: _IN_FLIGHT,
    State.SENDING: _IN_FLIGHT,
}

#: Versioned migrations: (version, statements). Types are filled in per engine.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE outbox_messages (
                id {id},
                key TEXT UNIQUE,
                state TEXT NOT NULL,
                sender TEXT NOT NULL,
                sender_domain TEXT NOT NULL,
                recipients TEXT NOT NULL,
                options TEXT NOT NULL,
                created_at {real} NOT NULL,
                next_attempt_at {real} NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                worker TEXT,
                claim_expires {real},
                updated_at {real} NOT NULL,
                reply_code INTEGER,
                reply_text TEXT,
                refused TEXT,
                error TEXT)""",
            # The message bytes live apart: a state change then rewrites a small
            # row, not the whole message (SQLite rewrites a record on UPDATE).
            "CREATE TABLE outbox_bodies (id {bigint} PRIMARY KEY, mail {blob} NOT NULL)",
            "CREATE INDEX outbox_due ON outbox_messages (state, next_attempt_at)",
            "CREATE INDEX outbox_worker ON outbox_messages (worker, state)",
            """CREATE TABLE outbox_rates (
                scope TEXT PRIMARY KEY,
                rate {real} NOT NULL,
                burst {real} NOT NULL,
                tokens {real} NOT NULL,
                updated_at {real} NOT NULL)""",
        ],
    ),
    (
        # Partial indexes: each holds only the rows in the states its queries
        # look for, so a row that moves between two states outside an index
        # (sending -> sent) leaves it alone, and arming and settling a message
        # write fewer B-tree pages (W7: 3.6 % more messages a second than with
        # schema 1). A query uses a partial index only when its WHERE clause
        # names the index's states literally (a parameter cannot prove it):
        # the statements below name them.
        2,
        [
            "DROP INDEX outbox_due",
            "DROP INDEX outbox_worker",
            # Claims: the due pending rows, oldest first.
            "CREATE INDEX outbox_due ON outbox_messages (next_attempt_at, id)"
            " WHERE state = 'pending'",
            # Heartbeats, releases and recovery: the rows of workers in flight.
            "CREATE INDEX outbox_in_flight ON outbox_messages (worker)"
            " WHERE state IN ('claimed', 'sending')",
            # No index for the final states: every partial index costs each
            # journal transaction (SQLite evaluates its WHERE clause for every
            # row an UPDATE changes; one on ('unknown', 'failed', 'refused')
            # made a commit of 8 arms and 8 outcomes cost 1.8x). The
            # operator's lists of final rows (entries(state=…), purge) read
            # the table.
        ],
    ),
]
#: The schema version this trio_sendmail creates or migrates to (table ``outbox_schema``).
SCHEMA_VERSION = MIGRATIONS[-1][0]

_ENTRY_COLUMNS = (
    "id, key, state, attempts, created_at, next_attempt_at, reply_code, reply_text, "
    "refused, error, worker"
)
_CLAIM_COLUMNS = "id, sender, recipients, options, created_at, attempts"


def _entry(row: Sequence[Any]) -> OutboxEntry:
    refused = {k: (int(v[0]), str(v[1])) for k, v in json.loads(row[8]).items()} if row[8] else {}
    return OutboxEntry(
        id=int(row[0]),
        key=row[1],
        state=State(row[2]),
        attempts=int(row[3]),
        created_at=float(row[4]),
        next_attempt_at=float(row[5]),
        reply_code=row[6],
        reply_text=row[7],
        refused_recipients=refused,
        error=row[9],
        worker=row[10],
    )


class Claimed:
    """Rows a claim took (``sender, recipients, mail, options, created_at`` by
    id), and how long to wait before claiming again when it took none."""

    __slots__ = ("rows", "wait")

    def __init__(self, rows: list[Sequence[Any]], wait: float | None) -> None:
        self.rows = rows
        self.wait = wait


class Store(abc.ABC):
    """The statements of the outbox; an engine subclass supplies the connection."""

    #: Column types of the engine, for MIGRATIONS.
    TYPES: ClassVar[dict[str, str]] = {}
    #: Appended to the SELECT of a claim (``FOR UPDATE SKIP LOCKED``).
    LOCK_ROWS = ""
    LOCK_RATES = ""
    LOCK_ORDERED = ""
    #: Errors after which a transaction is tried again (a deadlock the engine broke).
    RETRY_ON: tuple[type[BaseException], ...] = ()
    RETRIES = 5

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call the transaction *fn*, again when the engine rolled it back to
        break a deadlock (each method is one transaction: nothing was kept)."""
        for attempt in range(self.RETRIES):
            try:
                return fn(*args, **kwargs)
            except self.RETRY_ON:
                if attempt == self.RETRIES - 1:
                    raise
                time.sleep(0.001 * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------ engine hooks

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        """A cursor in one write transaction, committed on exit."""

    @abc.abstractmethod
    def now(self, cur: Any) -> float:
        """The database's clock (seconds since the epoch)."""

    def sql(self, text: str) -> str:
        """*text* with ``?`` placeholders in the engine's style."""
        return text

    def in_list(self, column: str, values: Sequence[int]) -> tuple[str, list[Any]]:
        """``column IN (…)`` and its parameters."""
        return f"{column} IN ({','.join('?' * len(values))})", list(values)

    def lock_migrations(self, cur: Any) -> None:  # noqa: B027 - a no-op by default
        """Keep two processes from migrating at once (inside the transaction).
        Nothing to do by default: SQLite's ``BEGIN IMMEDIATE`` already lets one
        writer in at a time; PostgreSQL takes an advisory lock (and lifts the
        statement timeout: a migration may index every row)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the engine's connections."""

    def _x(self, cur: Any, text: str, params: Sequence[Any] = ()) -> Any:
        cur.execute(self.sql(text), params)
        return cur

    # ------------------------------------------------------------ schema

    def migrate(self) -> int:
        """Create or upgrade the schema; returns its version."""
        with self.transaction() as cur:
            self.lock_migrations(cur)
            self._x(
                cur,
                "CREATE TABLE IF NOT EXISTS outbox_schema "
                "(version INTEGER PRIMARY KEY, applied_at " + self.TYPES["real"] + ")",
            )
            row = self._x(cur, "SELECT max(version) FROM outbox_schema").fetchone()
            current = row[0] or 0
            if current > SCHEMA_VERSION:
                raise RuntimeError(
                    f"the outbox schema is version {current}, newer than this "
                    f"trio_sendmail knows ({SCHEMA_VERSION}): upgrade trio_sendmail"
                )
            now = self.now(cur)
            for version, statements in MIGRATIONS:
                if version > current:
                    for statement in statements:
                        self._x(cur, statement.format(**self.TYPES))
                    self._x(cur, "INSERT INTO outbox_schema VALUES (?, ?)", (version, now))
            return SCHEMA_VERSION

    # ------------------------------------------------------------ enqueue

    def enqueue(self, rows: list[dict[str, Any]]) -> list[int]:
        ids: list[int] = []
        with self.transaction() as cur:
            now = self.now(cur)
            for row in rows:
                found = self._x(
                    cur,
                    "INSERT INTO outbox_messages (key, state, sender, sender_domain, recipients,"
                    " options, created_at, next_attempt_at, attempts, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?)"
                    " ON CONFLICT (key) DO NOTHING RETURNING id",
                    (
                        row["key"],
                        _PENDING,
                        row["sender"],
                        row["sender_domain"],
                        row["recipients"],
                        row["options"],
                        now,
                        now,
                        now,
                    ),
                ).fetchone()
                if found is None:  # the key is there already: the same message
                    found = self._x(
                        cur, "SELECT id FROM outbox_messages WHERE key = ?", (row["key"],)
                    ).fetchone()
                else:
                    self._x(
                        cur, "INSERT INTO outbox_bodies VALUES (?, ?)", (found[0], row["mail"])
                    )
                ids.append(int(found[0]))
        return ids

    # ------------------------------------------------------------ claims

    def _recover(self, cur: Any, now: float) -> None:
        self._x(
            cur,
            "UPDATE outbox_messages SET state = ?, worker = NULL, claim_expires = NULL,"  # noqa: S608
            f" updated_at = ? WHERE {_IN_FLIGHT} AND state = ? AND claim_expires < ?",
            (_PENDING, now, _CLAIMED, now),
        )
        self._x(
            cur,
            "UPDATE outbox_messages SET state = ?, claim_expires = NULL, updated_at = ?,"  # noqa: S608
            f" error = ? WHERE {_IN_FLIGHT} AND state = ? AND claim_expires < ?",
            (
                _UNKNOWN,
                now,
                "the worker's claim expired after it armed the message: its "
                "end of data may have been written",
                _SENDING,
                now,
            ),
        )

    def recover(self) -> None:
        """Give back the rows of workers whose claims expired."""
        with self.transaction() as cur:
            self._recover(cur, self.now(cur))

    def claim(self, worker: str, limit: int, lease: float, *, recover: bool) -> Claimed:
        """Claim up to *limit* due rows for *worker* until now + *lease*."""
        with self.transaction() as cur:
            now = self.now(cur)
            if recover:
                self._recover(cur, now)
            buckets = {
                scope: [rate, burst, min(burst, tokens + max(0.0, now - updated) * rate)]
                for scope, rate, burst, tokens, updated in self._x(
                    cur,
                    "SELECT scope, rate, burst, tokens, updated_at FROM outbox_rates"  # noqa: S608
                    + self.LOCK_RATES,
                ).fetchall()
            }
            whole = buckets.get("*")
            if whole is not None:
                limit = min(limit, int(whole[2]))
            every_domain = buckets.get("domain:*")

            def bucket(domain: str) -> list[float] | None:
                return buckets.get("domain:" + domain, every_domain)

            chosen: list[int] = []
            if limit > 0:
                exhausted = [
                    s[7:]
                    for s, b in buckets.items()
                    if s.startswith("domain:") and s != "domain:*" and b[2] < 1
                ]
                where, params = f"{_IS_DUE} AND next_attempt_at <= ?", [now]
                if exhausted:
                    where += f" AND sender_domain NOT IN ({','.join('?' * len(exhausted))})"
                    params += exhausted
                fetch = (
                    limit * 4 if (every_domain or len(buckets) > (whole is not None)) else limit
                )
                candidates = self._x(
                    cur,
                    f"SELECT id, sender_domain FROM outbox_messages WHERE {where}"  # noqa: S608
                    f" ORDER BY next_attempt_at, id LIMIT ?{self.LOCK_ROWS}",
                    (*params, fetch),
                ).fetchall()
                per_domain: dict[str, list[float]] = {}
                for row_id, domain in candidates:
                    if len(chosen) >= limit:
                        break
                    b = bucket(domain)
                    if b is not None:
                        own = per_domain.setdefault(domain, [b[0], b[1], b[2]])
                        if own[2] < 1:
                            continue
                        own[2] -= 1
                    chosen.append(int(row_id))
                for domain, own in per_domain.items():
                    scope = "domain:" + domain
                    if scope in buckets:
                        buckets[scope][2] = own[2]
                    elif every_domain is not None:  # a bucket of its own, from the template
                        buckets[scope] = [every_domain[0], every_domain[1], own[2]]
                if whole is not None:
                    whole[2] -= len(chosen)
            rows: list[Sequence[Any]] = []
            if chosen:
                cond, ids = self.in_list("id", chosen)
                rows = self._x(
                    cur,
                    f"UPDATE outbox_messages SET state = ?, worker = ?, claim_expires = ?,"  # noqa: S608
                    f" updated_at = ? WHERE {cond} RETURNING {_CLAIM_COLUMNS}",
                    (_CLAIMED, worker, now + lease, now, *ids),
                ).fetchall()
                cond, ids = self.in_list("id", chosen)
                bodies = dict(
                    self._x(cur, f"SELECT id, mail FROM outbox_bodies WHERE {cond}", ids)  # noqa: S608
                )
                order = {row_id: i for i, row_id in enumerate(chosen)}
                rows.sort(key=lambda r: order[int(r[0])])
                # (id, sender, recipients, mail, options, created_at, attempts)
                rows = [(r[0], r[1], r[2], bodies[r[0]], r[3], r[4], r[5]) for r in rows]
            for scope, (rate, burst, tokens) in buckets.items():
                if scope != "domain:*":
                    self._x(
                        cur,
                        "INSERT INTO outbox_rates VALUES (?, ?, ?, ?, ?) ON CONFLICT (scope) DO"
                        " UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at",
                        (scope, rate, burst, tokens, now),
                    )
            wait = None
            if not rows:
                due = self._x(
                    cur,
                    f"SELECT min(next_attempt_at) FROM outbox_messages WHERE {_IS_DUE}",  # noqa: S608
                ).fetchone()[0]
                if due is not None:
                    wait = max(0.0, float(due) - now)
                    rated = [b for b in buckets.values() if b[2] < 1 and b[0] > 0]
                    if rated and wait == 0:
                        wait = min((1 - b[2]) / b[0] for b in rated)
            return Claimed(rows, wait)

    def arm(self, worker: str, ids: Sequence[int]) -> dict[int, int]:
        """Mark *ids* (claimed by *worker*) as about to be sent: from the
        commit on, their end of data may be written. Returns id → attempts
        (this one included) of the rows armed; a row whose claim was lost is
        left out, and must not be sent."""
        return self.record(worker, ids, ())

    def _arm(self, cur: Any, now: float, worker: str, ids: Sequence[int]) -> dict[int, int]:
        if not ids:
            return {}
        cond, params = self.in_list("id", ids)
        rows = self._x(
            cur,
            f"UPDATE outbox_messages SET state = ?, attempts = attempts + 1, updated_at = ?"  # noqa: S608
            f" WHERE {cond} AND worker = ? AND state = ? RETURNING id, attempts",
            (_SENDING, now, *params, worker, _CLAIMED),
        ).fetchall()
        return {int(r[0]): int(r[1]) for r in rows}

    def heartbeat(self, worker: str, lease: float) -> int:
        """Extend *worker*'s claims; returns how many rows it still holds."""
        with self.transaction() as cur:
            now = self.now(cur)
            return int(
                self._x(
                    cur,
                    # Rows are locked in id order, as every other statement
                    # of a worker does, so two of its transactions never deadlock.
                    "UPDATE outbox_messages SET claim_expires = ? WHERE id IN (SELECT id"  # noqa: S608
                    f" FROM outbox_messages WHERE worker = ? AND {_IN_FLIGHT} ORDER BY id"
                    f"{self.LOCK_ORDERED})",
                    (now + lease, worker),
                ).rowcount
            )

    def settle(self, worker: str, settlements: Sequence[Settlement]) -> None:
        """Record the outcome of *worker*'s rows (armed, or claimed and
        settled before their end of data: refused at RCPT, say)."""
        self.record(worker, (), settlements)

    def record(
        self, worker: str, arm: Sequence[int], settlements: Sequence[Settlement]
    ) -> dict[int, int]:
        """One transaction of a worker's journal: record *settlements*, then
        arm the rows *arm* (see :meth:`arm`, whose result it returns)."""
        if not arm and not settlements:
            return {}
        with self.transaction() as cur:
            now = self.now(cur)
            if self.LOCK_ORDERED:
                # Every row this transaction changes, locked first in id order,
                # as the heartbeat locks them: the two never deadlock.
                cond, params = self.in_list("id", sorted({*arm, *(s.id for s in settlements)}))
                self._x(
                    cur,
                    f"SELECT id FROM outbox_messages WHERE {cond} ORDER BY id"  # noqa: S608
                    f"{self.LOCK_ORDERED}",
                    params,
                )
            self._settle(cur, now, worker, settlements)
            return self._arm(cur, now, worker, arm)

    #: Rows settled by one statement (9 parameters each: well under the
    #: engines' limits on parameters, 32,766 for SQLite and 65,535 for PostgreSQL).
    SETTLE_ROWS = 500

    def _settle(
        self, cur: Any, now: float, worker: str, settlements: Sequence[Settlement]
    ) -> None:
        """One ``UPDATE … FROM (VALUES …)`` statement for every settlement
        (not one statement per row: a journal transaction is on the path of
        every message's end of data, and most of its cost is per statement)."""
        ordered = sorted(settlements, key=lambda s: s.id)
        real, bigint = self.TYPES["real"], self.TYPES["bigint"]
        row = (
            f"(CAST(? AS {bigint}), CAST(? AS TEXT), CAST(? AS {real}), CAST(? AS TEXT),"
            " CAST(? AS INTEGER), CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT),"
            " CAST(? AS INTEGER))"
        )
        for start in range(0, len(ordered), self.SETTLE_ROWS):
            chunk = ordered[start : start + self.SETTLE_ROWS]
            params: list[Any] = []
            for s in chunk:
                params += (
                    s.id,
                    s.state.value,
                    None if s.delay is None else now + s.delay,
                    None if s.state is State.PENDING else worker,
                    s.reply_code,
                    s.reply_text,
                    s.refused,
                    s.error,
                    1 if s.uncounted else 0,
                )
            # A row settled while only claimed (it never reached its end of
            # data) counts its attempt here; an armed one counted it when armed.
            self._x(
                cur,
                "WITH v (v_id, v_state, v_due, v_worker, v_code, v_text, v_refused, v_error,"  # noqa: S608
                f" v_uncounted) AS (VALUES {', '.join([row] * len(chunk))})"
                " UPDATE outbox_messages AS m SET state = v.v_state,"
                " next_attempt_at = COALESCE(v.v_due, m.next_attempt_at), worker = v.v_worker,"
                " claim_expires = NULL, reply_code = v.v_code, reply_text = v.v_text,"
                " refused = v.v_refused, error = v.v_error,"
                " attempts = m.attempts + CASE WHEN m.state = ? THEN 1 ELSE 0 END - v.v_uncounted,"
                " updated_at = ? FROM v"
                " WHERE m.id = v.v_id AND m.worker = ? AND m.state IN (?, ?, ?)",
                (*params, _CLAIMED, now, worker, _SENDING, _UNKNOWN, _CLAIMED),
            )
        for s in settlements:
            if s.follow_up:
                self._follow_up(cur, now, worker, s)

    def _follow_up(self, cur: Any, now: float, worker: str, s: Settlement) -> None:
        """A new ``pending`` row that sends *s*'s message to its recipients
        refused with a 4xx (in the transaction that settled it, and only if
        that settlement took effect: the row is now final, by this worker).
        Its key is the original's with ``#retry-<attempts>``; it keeps the
        original's age (``max_age`` bounds the pair) and counts its own
        attempts."""
        row = self._x(
            cur,
            "SELECT key, sender, sender_domain, options, created_at, attempts"
            " FROM outbox_messages WHERE id = ? AND worker = ? AND state = ? AND updated_at = ?",
            (s.id, worker, s.state.value, now),
        ).fetchone()
        if row is None:
            return
        key, sender, domain, options, created_at, attempts = row
        new = self._x(
            cur,
            "INSERT INTO outbox_messages (key, state, sender, sender_domain, recipients,"
            " options, created_at, next_attempt_at, attempts, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING RETURNING id",
            (
                None if key is None else f"{key}#retry-{attempts}",
                _PENDING,
                sender,
                domain,
                json.dumps(s.follow_up),
                options,
                created_at,
                now + s.follow_up_delay,
                0,
                now,
            ),
        ).fetchone()
        if new is not None:
            self._x(
                cur,
                "INSERT INTO outbox_bodies (id, mail)"
                " SELECT ?, mail FROM outbox_bodies WHERE id = ?",
                (new[0], s.id),
            )

    def release(self, worker: str) -> int:
        """Give back *worker*'s claimed (not armed) rows."""
        with self.transaction() as cur:
            now = self.now(cur)
            return int(
                self._x(
                    cur,
                    "UPDATE outbox_messages SET state = ?, worker = NULL, claim_expires = NULL,"  # noqa: S608
                    f" updated_at = ? WHERE worker = ? AND {_IN_FLIGHT} AND state = ?",
                    (_PENDING, now, worker, _CLAIMED),
                ).rowcount
            )

    # ------------------------------------------------------------ operator

    def open_rows(self) -> tuple[int, float | None]:
        """Rows not final yet, and the wait until the first pending one is due."""
        with self.transaction() as cur:
            now = self.now(cur)
            pending, in_flight, due = self._x(
                cur,
                f"SELECT (SELECT count(*) FROM outbox_messages WHERE {_IS_DUE}),"  # noqa: S608
                f" (SELECT count(*) FROM outbox_messages WHERE {_IN_FLIGHT}),"
                f" (SELECT min(next_attempt_at) FROM outbox_messages WHERE {_IS_DUE})",
            ).fetchone()
            count = int(pending) + int(in_flight)
            return count, None if due is None else max(0.0, float(due) - now)

    def statistics(self) -> tuple[dict[State, int], float | None, int, int]:
        with self.transaction() as cur:
            now = self.now(cur)
            counts = dict.fromkeys(State, 0)
            attempts = retried = 0
            for state, count, tried, again in self._x(
                cur,
                "SELECT state, count(*), sum(attempts), sum(CASE WHEN attempts > 1 THEN 1"
                " ELSE 0 END) FROM outbox_messages GROUP BY state",
            ).fetchall():
                counts[State(state)] = int(count)
                attempts += int(tried or 0)
                retried += int(again or 0)
            oldest = self._x(
                cur,
                f"SELECT min(created_at) FROM outbox_messages WHERE {_IS_DUE}",  # noqa: S608
            ).fetchone()[0]
            age = None if oldest is None else max(0.0, now - float(oldest))
            return counts, age, attempts, retried

    def entries(
        self, ids: Sequence[int] | None, state: State | None, limit: int | None
    ) -> list[OutboxEntry]:
        with self.transaction() as cur:
            where, params = ["1 = 1"], []
            if ids is not None:
                if not ids:
                    return []
                cond, values = self.in_list("id", ids)
                where.append(cond)
                params += values
            if state is not None:
                if state in _INDEXED:
                    where.append(_INDEXED[state])
                where.append("state = ?")
                params.append(state.value)
            text = f"SELECT {_ENTRY_COLUMNS} FROM outbox_messages WHERE {' AND '.join(where)}"  # noqa: S608
            text += " ORDER BY id"
            if limit is not None:
                text += f" LIMIT {int(limit)}"
            return [_entry(r) for r in self._x(cur, text, params).fetchall()]

    def resolve_unknown(self, ids: Sequence[int], resend: bool) -> list[int]:
        if not ids:
            return []
        with self.transaction() as cur:
            now = self.now(cur)
            cond, params = self.in_list("id", ids)
            if resend:
                sets, values = "state = ?, worker = NULL, next_attempt_at = ?", [_PENDING, now]
            else:
                sets, values = (
                    "state = ?, error = ?",
                    [
                        State.FAILED.value,
                        "the outcome was unknown; the operator chose not to resend",
                    ],
                )
            rows = self._x(
                cur,
                f"UPDATE outbox_messages SET {sets}, updated_at = ? WHERE {cond} AND state = ?"  # noqa: S608
                " RETURNING id",
                (*values, now, *params, _UNKNOWN),
            ).fetchall()
            return sorted(int(r[0]) for r in rows)

    def purge_sent(self, older_than: float) -> int:
        with self.transaction() as cur:
            now = self.now(cur)
            old = "SELECT id FROM outbox_messages WHERE state = ? AND updated_at < ?"
            params = (State.SENT.value, now - older_than)
            self._x(cur, f"DELETE FROM outbox_bodies WHERE id IN ({old})", params)  # noqa: S608
            return int(self._x(cur, old.replace("SELECT id", "DELETE"), params).rowcount)

    def set_rate_limit(self, scope: str, rate: float | None, burst: float | None) -> None:
        with self.transaction() as cur:
            now = self.now(cur)
            self._x(cur, "DELETE FROM outbox_rates WHERE scope = ?", (scope,))
            if scope == "domain:*":  # the per-domain buckets follow the template
                self._x(
                    cur, "DELETE FROM outbox_rates WHERE substr(scope, 1, 7) = ?", ("domain:",)
                )
            if rate is not None:
                size = burst if burst is not None else max(1.0, math.ceil(rate))
                self._x(
                    cur,
                    "INSERT INTO outbox_rates VALUES (?, ?, ?, ?, ?)",
                    (scope, rate, size, size, now),
                )
