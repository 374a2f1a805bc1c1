"""A durable outbox: messages queued in SQLite or PostgreSQL, sent by any number
of workers, with exact outcomes after a crash.

::

    from trio_sendmail.outbox import open_outbox

    async with open_outbox("sqlite:///outbox.db") as outbox:
        await outbox.enqueue(messages)          # one transaction
        await outbox.work("smtp.example.com", until_empty=True)

See :doc:`howto-outbox` for a walk-through and :doc:`design` ("The durable
outbox") for the states and the crash cases.
"""

# Layout
# ------
# - _model: row states, RetryPolicy, statistics and progress values, BulkMessage <-> row,
#   BulkResult -> new state;
# - _store: every SQL statement and the schema migrations (engine-neutral);
# - _engines: SQLite (stdlib) and PostgreSQL (psycopg 3, synchronous) connections;
# - _worker: one work() call: claim, arm, send_bulk, record, heartbeat;
# - _outbox: the Outbox resource and open_outbox().

from ._model import (
    OutboxEntry,
    OutboxStatistics,
    RetryPolicy,
    State,
    WorkProgress,
    WorkSummary,
)
from ._outbox import Outbox, open_outbox
from ._store import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "Outbox",
    "OutboxEntry",
    "OutboxStatistics",
    "RetryPolicy",
    "State",
    "WorkProgress",
    "WorkSummary",
    "open_outbox",
]
