"""The durable job ledger: one interface (``Ledger``), on SQLite (the embedded default) or on PostgreSQL (shared by
several replicas, ``KLING_MCP_DATABASE_URL``).

    ledger.py    the operations, written once: creation with dedupe, keys and guards, reads, updates, leases
    schema.py    columns and versioned migrations, derived from the Job model
    sql.py       how an operation hands its statements to a backend
    sqlite.py    ``Store``: one SQLite file, safe across processes
    postgres.py  ``PostgresStore``: psycopg 3 and a pool; imported only when configured
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from kling_mcp.errors import ConfigurationError
from kling_mcp.models import Job as Job  # the ledger's own name for it, kept for callers that import it from here
from kling_mcp.spend import Guards as Guards  # checked in the ledger's transactions; callers import it from here
from kling_mcp.store.ledger import PROCESS_OWNER as PROCESS_OWNER
from kling_mcp.store.ledger import Ledger as Ledger
from kling_mcp.store.ledger import owner_is_dead as owner_is_dead
from kling_mcp.store.ledger import unnamed_replica as unnamed_replica
from kling_mcp.store.schema import SCHEMA_VERSION as SCHEMA_VERSION
from kling_mcp.store.schema import JobUpdate as JobUpdate
from kling_mcp.store.schema import migration as migration
from kling_mcp.store.sqlite import Store as Store


def open_ledger(
    database_url: str | None,
    sqlite_path: Path,
    *,
    clock: Callable[[], float] = time.time,
    replica: str = PROCESS_OWNER,
) -> Ledger:
    """The configured ledger: PostgreSQL when ``database_url`` is given, else the SQLite file. Blocking (it opens
    the file or connects, and migrates): call it off the event loop."""
    if database_url is None:
        return Store(sqlite_path, clock=clock, replica=replica)
    try:
        from kling_mcp.store.postgres import PostgresStore
    except ImportError as exc:  # psycopg is an optional extra
        raise ConfigurationError(
            f"KLING_MCP_DATABASE_URL names a PostgreSQL ledger, but its driver is not installed ({exc.name}).",
            hint="pip install 'kling-mcp[postgres]', or unset KLING_MCP_DATABASE_URL for the local SQLite ledger.",
        ) from None
    return PostgresStore(database_url, clock=clock, replica=replica)
