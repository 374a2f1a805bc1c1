"""The two database engines of the outbox: SQLite (stdlib) and PostgreSQL (psycopg 3).

Theory of operation
-------------------
Both are synchronous and run in worker threads (:func:`trio.to_thread.run_sync`,
called by :class:`~trio_sendmail.outbox.Outbox`).

* **SQLite** (``sqlite:///path``): one connection per :class:`Outbox`, used by
  one thread at a time, in WAL mode (readers never block the writer), with
  ``synchronous=NORMAL``: a commit is durable against a crash or a ``SIGKILL``
  of the process (the WAL is in the OS's cache), and the WAL is synced at
  checkpoints, not at each commit. Every transaction starts with ``BEGIN
  IMMEDIATE``, so several worker processes on one machine queue for the write
  lock (``busy_timeout``) instead of failing on a lock upgrade.
* **PostgreSQL** (``postgresql://…``): psycopg 3's synchronous API with a small
  bounded pool of connections (``psycopg_pool``); its async API needs asyncio
  and does not run under trio. Claims lock their rows with ``FOR UPDATE SKIP
  LOCKED``, the rate buckets with ``FOR UPDATE``, and migrations with a
  transaction-level advisory lock. Nothing waits for ever on a database that
  stopped answering: each connection is opened with a ``connect_timeout``, TCP
  keepalives with ``tcp_user_timeout`` detect a peer that vanished (see
  :data:`POSTGRES_DEFAULTS`; a value in the URL or in libpq's environment
  variable wins), and a ``statement_timeout`` and ``lock_timeout`` bound every
  statement (:data:`POSTGRES_SETTINGS`, set with ``SET`` on each new
  connection where the session has none yet: one from the URL's
  ``options``, ``$PGOPTIONS``, or ``ALTER ROLE … SET`` stays). No
  ``options`` startup parameter is sent, which PgBouncer refuses. A database
  call therefore returns or raises within about a minute, and the worker's
  run ends with that error instead of hanging with its claims.

Both use the worker's own clock (``time.time()``) for claim expiries and retry
times, which saves a round trip per transaction: the clocks of workers on
several machines must agree (NTP) to well within the lease (60 s by default).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

from ._store import Store

__all__ = ["PostgresStore", "SQLiteStore", "store_for_url"]

#: How long an SQLite writer waits for another process's transaction.
SQLITE_BUSY_TIMEOUT_MS = 60_000

#: Connection parameters (libpq's) that bound every wait on PostgreSQL: each
#: is added unless the URL sets it, or its environment variable (the value)
#: is set.
POSTGRES_DEFAULTS: dict[str, tuple[str, str | None]] = {
    "connect_timeout": ("10", "PGCONNECT_TIMEOUT"),
    "keepalives": ("1", None),
    "keepalives_idle": ("10", None),
    "keepalives_interval": ("5", None),
    "keepalives_count": ("3", None),
    "tcp_user_timeout": ("30000", None),  # milliseconds of unacknowledged data
}

#: Session settings made on each new connection, where the session has none
#: (its value is PostgreSQL's default, ``0``: no limit).
POSTGRES_SETTINGS: dict[str, str] = {"statement_timeout": "30s", "lock_timeout": "30s"}

#: Arbitrary key of the advisory lock taken while migrating a PostgreSQL schema.
_MIGRATION_LOCK = 0x7472696F5F736D  # "trio_sm"


class _Clock:
    def now(self, cur: Any) -> float:
        return time.time()


class SQLiteStore(_Clock, Store):
    TYPES: ClassVar[dict[str, str]] = {
        "id": "INTEGER PRIMARY KEY",
        "bigint": "INTEGER",
        "blob": "BLOB",
        "real": "REAL",
    }

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            path,
            isolation_level=None,
            check_same_thread=False,
            timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
        )
        self._conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal" and path != ":memory:":
            raise RuntimeError(f"SQLite refused WAL mode for {path} (got {mode})")
        self._conn.execute("PRAGMA synchronous = NORMAL")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
            finally:
                cur.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class PostgresStore(_Clock, Store):
    TYPES: ClassVar[dict[str, str]] = {
        "id": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "bigint": "BIGINT",
        "blob": "BYTEA",
        "real": "DOUBLE PRECISION",
    }
    LOCK_ROWS = " FOR UPDATE SKIP LOCKED"
    LOCK_RATES = " FOR UPDATE"
    LOCK_ORDERED = " FOR UPDATE"

    def __init__(self, url: str, pool_size: int) -> None:
        try:
            import psycopg_pool
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError(
                "a postgresql:// outbox needs psycopg 3 and psycopg_pool: "
                "pip install 'trio_sendmail[postgres]'"
            ) from exc
        import psycopg

        self.RETRY_ON = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
        with _secrets_hidden(url):
            conninfo = _bounded(url)
        # One plain connection first: a wrong address or password fails at once,
        # with psycopg's own error, instead of after the pool's timeout.
        with _secrets_hidden(url):
            psycopg.connect(conninfo).close()
        self._pool = psycopg_pool.ConnectionPool(
            conninfo,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=60,
            configure=_configure,
        )
        self._pool.open(wait=True, timeout=30)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        # The pool commits when the block ends normally and rolls back otherwise.
        with self._pool.connection() as conn, conn.cursor() as cur:
            yield cur

    def sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def in_list(self, column: str, values: Sequence[int]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?)", [list(values)]

    def lock_migrations(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        # A migration may build an index over every row (schema 2's partial
        # indexes): no statement bound for this transaction, whose statements
        # would otherwise be cut at POSTGRES_SETTINGS' 30 s on a large outbox,
        # and roll back at each open. Waits for locks stay bounded.
        cur.execute("SET LOCAL statement_timeout = 0")

    def close(self) -> None:
        self._pool.close()


def _bounded(url: str) -> str:
    """*url* as a conninfo string with :data:`POSTGRES_DEFAULTS` added where
    neither the URL nor the environment sets them."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    given = conninfo_to_dict(url)
    extra = {
        key: value
        for key, (value, variable) in POSTGRES_DEFAULTS.items()
        if key not in given and not (variable and os.environ.get(variable))
    }
    return make_conninfo(url, **extra)


def _configure(conn: Any) -> None:
    """Make :data:`POSTGRES_SETTINGS` on a new pooled connection, each where the
    session has no value of its own (``0``: PostgreSQL's default)."""
    for name, value in POSTGRES_SETTINGS.items():
        current = conn.execute(f"SHOW {name}").fetchone()[0]
        if str(current) == "0":
            conn.execute(f"SET {name} = '{value}'")
    conn.commit()


@contextlib.contextmanager
def _secrets_hidden(url: str) -> Iterator[None]:
    """Re-raise a psycopg error (or a ``ValueError`` of the URL parser) whose
    text quotes the URL's password (libpq quotes a token it cannot read) with
    the password masked."""
    parts = urlsplit(url)
    secrets = {parts.password or ""}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key.lower() in ("password", "sslpassword"):
            secrets.add(value)
    secrets = {secret for s in secrets if s for secret in (s, unquote(s))}
    try:
        yield
    except Exception as exc:
        text = str(exc)
        if not any(secret in text or secret in repr(exc) for secret in secrets):
            raise
        for secret in sorted(secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        try:
            masked = type(exc)(text)
        except Exception:  # pragma: no cover - an error type with another signature
            masked = RuntimeError(text)
        raise masked from None


def store_for_url(url: str, *, pool_size: int = 4) -> Store:
    """The :class:`Store` for *url* (``sqlite:///path`` or ``postgresql://…``).

    Raises:
        ValueError: an unsupported or malformed URL.
    """
    if not isinstance(url, str):
        raise TypeError(f"the outbox URL must be a str, not {type(url).__name__}")
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        parts = urlsplit(url)
        if parts.netloc or not parts.path or parts.query:
            raise ValueError(
                f"an SQLite outbox URL is sqlite:///relative/path or sqlite:////absolute/path, "
                f"not {url!r}"
            )
        path = unquote(parts.path[1:])
        if not path:
            raise ValueError(f"no database file in {url!r}")
        return SQLiteStore(path)
    if scheme in ("postgresql", "postgres"):
        if pool_size < 1:
            raise ValueError("pool_size must be >= 1")
        return PostgresStore(url, pool_size)
    raise ValueError(f"unsupported outbox URL scheme {scheme!r}: use sqlite:/// or postgresql://")
