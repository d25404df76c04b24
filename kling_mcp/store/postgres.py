"""The ledger on PostgreSQL, shared by several replicas: psycopg 3 (async) with a connection pool.

Loaded only when ``KLING_MCP_DATABASE_URL`` names a PostgreSQL server, so a single machine never imports psycopg.

How transactions hold across replicas (READ COMMITTED, PostgreSQL's default):
- decisions over many rows (dedupe, idempotency keys, the per-owner guards and the total cap, pruning) take one
  transaction-scoped advisory lock first (``write="ledger"``): the same one-writer rule as SQLite's ``BEGIN
  IMMEDIATE``, so every check sees every job committed before it and no two replicas overshoot a cap together.
  SERIALIZABLE would give the same answers but abort one of two concurrent creates, and every caller would need a
  retry loop; the lock makes them queue for the few milliseconds a create takes.
- changes to one job lock its row (``SELECT ... FOR UPDATE``); lease takeovers skip rows another replica holds
  (``FOR UPDATE SKIP LOCKED``), so replicas taking over at once share the jobs out instead of waiting.
- a deadlock PostgreSQL breaks (rare: a renewal and a prune meeting on rows) runs the operation again.
Every change announces its job on ``NOTIFY kling_mcp`` in the same transaction: the other replicas' bus.

A started operation runs to its end before a cancellation reaches its caller (``_to_the_end``), as SQLite's do in
their worker thread: psycopg cleans a cancelled query up for asyncio's one-shot cancellation, and anyio's cancel
scopes cancel again at every await, which interrupts that cleanup. Unshielded, every cancelled call cost a
connection, and one cut short between two statements, or while the pool opened, was left open for the garbage
collector to find.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Final

import anyio
import anyio.lowlevel
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from kling_mcp.errors import LedgerUnavailableError
from kling_mcp.store import schema
from kling_mcp.store.ledger import PROCESS_OWNER, Ledger
from kling_mcp.store.sql import Op, T, Write, rows

log = logging.getLogger(__name__)

POSTGRES: Final = schema.Dialect(types={"REAL": "DOUBLE PRECISION", "INTEGER": "BIGINT"})
CHANNEL: Final = "kling_mcp"
_LEDGER_LOCK: Final = 0x4B6C696E67  # the advisory lock of the ledger's one writer ("Kling")
_MIGRATION_LOCK: Final = 0x4B6C696E68
_RETRIES: Final = 5
_CHANGED, _RUNG = "c:", "r:"  # payload prefixes on the channel
POOL_SIZE: Final = 10
LISTEN_RETRY_S: Final = 1.0
OPERATION_TIMEOUT_S: Final = 30.0  # one operation, queueing for a connection included; psycopg_pool's own default


@functools.lru_cache(maxsize=512)
def _spelled(sql: str) -> str:
    return sql.replace("?", "%s")  # the statements hold no literal '?' or '%'


def migrate(url: str) -> None:
    """Brings the ledger to ``SCHEMA_VERSION``, once however many replicas start at the same time."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS ledger_schema (version INTEGER NOT NULL)")
        row = conn.execute("SELECT max(version) FROM ledger_schema").fetchone()
        version = int(row[0]) if row is not None and row[0] is not None else 0
        for step in range(version + 1, schema.SCHEMA_VERSION + 1):
            for statement in schema.migration(step, POSTGRES):
                conn.execute(statement.encode())
            conn.execute("INSERT INTO ledger_schema (version) VALUES (%s)", (step,))


class PostgresStore(Ledger):
    """The ledger on a PostgreSQL database; statements run on pooled async connections."""

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time, replica: str = PROCESS_OWNER) -> None:
        super().__init__(clock=clock, replica=replica)
        self.url = url
        try:
            migrate(url)
        except psycopg.OperationalError as exc:  # psycopg's words name the host and the user, never the password
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LedgerUnavailableError(
                f"The PostgreSQL ledger (KLING_MCP_DATABASE_URL) does not answer: {reason}.",
                hint="The server tries again by itself; check that the database runs and accepts this server.",
            ) from None
        self._pool: AsyncConnectionPool[Any] | None = None
        self._opening = anyio.Lock()

    async def _connections(self) -> AsyncConnectionPool[Any]:
        async with self._opening:
            if self._pool is None:
                pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                    self.url,
                    min_size=2,
                    max_size=POOL_SIZE,
                    kwargs={"autocommit": True, "row_factory": dict_row},
                    timeout=OPERATION_TIMEOUT_S,
                    open=False,
                )
                try:
                    await pool.open(wait=True, timeout=OPERATION_TIMEOUT_S)
                except BaseException:  # an unreachable server: no pool left reconnecting in the background
                    with anyio.CancelScope(shield=True):
                        await pool.close()
                    raise
                self._pool = pool
            return self._pool

    def close(self) -> None:
        """Nothing to do before the pool opens; an open pool closes with ``aclose``."""

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with _to_the_end():
                await pool.close()

    async def _run(self, op: Callable[[], Op[T]], *, write: Write = None, announce: Iterable[str] = ()) -> T:
        await anyio.lowlevel.checkpoint_if_cancelled()  # a caller cancelled already starts nothing (as SQLite's)
        with _to_the_end():
            return await self._run_to_the_end(op, write=write, announce=announce)

    async def _run_to_the_end(self, op: Callable[[], Op[T]], *, write: Write, announce: Iterable[str]) -> T:
        pool = await self._connections()
        for attempt in range(_RETRIES):
            try:
                async with pool.connection() as conn:
                    if write is None:
                        return await _drive(conn, op())  # a read: one statement, no transaction to open
                    async with conn.transaction():
                        if write == "ledger":
                            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LEDGER_LOCK,))
                        result = await _drive(conn, op())
                        for job_id in announce:
                            note = f"{_CHANGED}{job_id} {self.replica}"
                            await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, note))
                        return result
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == _RETRIES - 1:
                    raise
                log.info("ledger transaction retried after a deadlock")
        raise AssertionError("unreachable")

    async def ring(self, job_id: str) -> bool:
        await self._run(lambda: rows("SELECT pg_notify(?, ?)", CHANNEL, _RUNG + job_id))
        return True

    async def listen(
        self,
        on_change: Callable[[str], Awaitable[None]],
        on_ring: Callable[[str], Awaitable[None]],
        *,
        ready: Callable[[], None],
    ) -> bool:
        """LISTENs on its own connection, reconnecting after a lost one (the ledger poll covers the gap)."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    ready()
                    async for note in conn.notifies():
                        kind, job_id, _, by = note.payload[:2], *note.payload[2:].partition(" ")
                        if kind == _CHANGED and by != self.replica:  # this replica's own changes are known here
                            await on_change(job_id)
                        elif kind == _RUNG:
                            await on_ring(job_id)
            except psycopg.OperationalError as exc:
                log.warning("ledger bus lost (%s); listening again in %.0f s", type(exc).__name__, LISTEN_RETRY_S)
                await anyio.sleep(LISTEN_RETRY_S)


@contextmanager
def _to_the_end() -> Iterator[None]:
    """Shields a started operation from its caller's cancellation (see the module's notes), within a bound, so a
    server that stops answering fails the operation instead of hanging it."""
    with anyio.fail_after(OPERATION_TIMEOUT_S, shield=True):
        yield


async def _drive(conn: psycopg.AsyncConnection[Any], op: Op[T]) -> T:
    try:
        statement = next(op)
        while True:
            sql, args = statement
            cursor = await conn.execute(_spelled(sql).encode(), args)
            found = await cursor.fetchall() if cursor.description is not None else []
            statement = op.send(found)
    except StopIteration as done:
        result: T = done.value
        return result
