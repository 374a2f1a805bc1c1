"""PostgreSQL support: the ``postgres`` and ``postgres_url`` fixtures, :class:`PostgresEnv`.

A pytest plugin, registered by ``pytest_plugins`` in ``tests/conftest.py``. The
cluster is started outside pytest, by ``tests/interop/postgres.sh start``, which
writes its settings to ``$POSTGRES_STATE/env.json``. When that file is missing,
psycopg is not installed, or the cluster does not answer, the tests are skipped
with the reason, unless ``TRIO_SENDMAIL_REQUIRE_POSTGRES=1`` (set on CI): then
they fail. Each test gets a schema of its own (``postgres_url``), dropped after it.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote

import attrs
import pytest

START_HINT = (
    "start it with `bash tests/interop/postgres.sh start` (needs root), "
    "or set TRIO_SENDMAIL_REQUIRE_POSTGRES=1 to make this a failure"
)


@attrs.frozen
class PostgresEnv:
    """The settings ``postgres.sh start`` wrote to ``env.json``."""

    state_dir: Path
    host: str
    port: int
    database: str
    user: str
    url: str


def env_json_path() -> Path:
    explicit = os.environ.get("POSTGRES_ENV_JSON")
    if explicit:
        return Path(explicit)
    state = os.environ.get("POSTGRES_STATE") or os.path.join(
        os.environ.get("TMPDIR") or "/tmp", "trio_sendmail_postgres"
    )
    return Path(state) / "env.json"


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("TRIO_SENDMAIL_REQUIRE_POSTGRES") == "1":
        pytest.fail(
            f"PostgreSQL tests required (TRIO_SENDMAIL_REQUIRE_POSTGRES=1) but {reason}",
            pytrace=False,
        )
    pytest.skip(f"PostgreSQL test cluster not available: {reason}; {START_HINT}")


@pytest.fixture(scope="session")
def postgres() -> PostgresEnv:
    """The running PostgreSQL test cluster, or skip (fail on CI) when there is none."""
    path = env_json_path()
    if not path.is_file():
        _unavailable(f"{path} does not exist")
    data = json.loads(path.read_text(encoding="utf-8"))
    env = PostgresEnv(
        state_dir=Path(str(data["state_dir"])),
        host=str(data["host"]),
        port=int(data["port"]),
        database=str(data["database"]),
        user=str(data["user"]),
        url=str(data["url"]),
    )
    try:
        import psycopg
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'trio_sendmail[postgres]')")
    try:
        with psycopg.connect(env.url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        _unavailable(f"{env.host}:{env.port} does not answer ({exc})")
    return env


@pytest.fixture
def postgres_url(postgres: PostgresEnv) -> Iterator[str]:
    """A URL whose ``search_path`` is a fresh schema, dropped after the test."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{postgres.url}?options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(postgres.url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
