"""How ledger operations talk to a backend: each is a generator that yields statements and receives their rows.

An operation is written once, as plain logic over SQL in SQLite's spelling; a backend runs it: SQLite in one worker
thread call (the whole transaction in one hop off the event loop), PostgreSQL statement by statement on an async
connection. ``FOR UPDATE`` clauses are written where PostgreSQL needs a row lock; SQLite, whose write transaction
already holds the whole file, drops them.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from typing import Any, Literal, TypeVar

T = TypeVar("T")

Row = Mapping[str, Any]
Statement = tuple[str, tuple[object, ...]]
Op = Generator[Statement, list[Row], T]  # yields statements, receives each one's rows, returns the result

# What a transaction serialises on. 'ledger': one writer at a time across every replica, for decisions over many
# rows (the spend guards, dedupe, pruning). 'row': row locks (FOR UPDATE) on the rows it touches. None: a read.
Write = Literal["ledger", "row"] | None

FOR_UPDATE = " FOR UPDATE"
SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"


def rows(sql: str, *args: object) -> Op[list[Row]]:
    """Runs one statement; its rows (none for a statement without RETURNING)."""
    result = yield (sql, args)
    return result


def one(sql: str, *args: object) -> Op[Row | None]:
    result = yield (sql, args)
    return result[0] if result else None
