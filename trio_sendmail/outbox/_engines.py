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
  stopped answering: each connection is opened with a ``connect_timeout``, a
  ``statement_timeout`` (and ``lock_timeout``) bounds every statement, and TCP
  keepalives with ``tcp_user_timeout`` detect a peer that vanished (see
  :data:`POSTGRES_DEFAULTS` and :data:`POSTGRES_SETTINGS`; a value given in
  the URL wins). A database call
  therefore returns or raises within about a minute, and the worker's run
  ends with that error instead of hanging with its claims.

Both use the worker's own clock (``time.time()``) for claim expiries and retry
times, which saves a round trip per transaction: the clocks of workers on
several machines must agree (NTP) to well within the lease (60 s by default).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from ._store import Store

__all__ = ["PostgresStore", "SQLiteStore", "store_for_url"]

#: How long an SQLite writer waits for another process's transaction.
SQLITE_BUSY_TIMEOUT_MS = 60_000

#: Connection parameters (libpq's) that bound every wait on PostgreSQL; the
#: same parameter in the URL (``?connect_timeout=3``) wins.
POSTGRES_DEFAULTS: dict[str, str] = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",  # milliseconds of unacknowledged data
}

#: Session settings added to the URL's ``options`` (unless it sets them).
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
        conninfo = _bounded(url)
        # One plain connection first: a wrong address or password fails at once,
        # with psycopg's own error, instead of after the pool's timeout.
        psycopg.connect(conninfo).close()
        self._pool = psycopg_pool.ConnectionPool(
            conninfo, min_size=1, max_size=pool_size, open=False, timeout=60
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

    def close(self) -> None:
        self._pool.close()


def _bounded(url: str) -> str:
    """*url* as a conninfo string with :data:`POSTGRES_DEFAULTS` and
    :data:`POSTGRES_SETTINGS` added where the URL does not set them."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    given = conninfo_to_dict(url)
    extra: dict[str, Any] = {k: v for k, v in POSTGRES_DEFAULTS.items() if k not in given}
    options = str(given.get("options") or "")
    added = [f"-c {k}={v}" for k, v in POSTGRES_SETTINGS.items() if k not in options]
    if added:
        extra["options"] = " ".join([options, *added]).strip()
    return make_conninfo(url, **extra)


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
