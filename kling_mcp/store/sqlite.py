"""The ledger on one SQLite file: the embedded default, safe for concurrent calls and several processes.

WAL mode plus ``BEGIN IMMEDIATE`` for every read-modify-write make the file safe to share between server
processes; the blocking sqlite3 calls run in a worker thread, one whole operation per hop, so the event loop never
waits on a lock.
"""

from __future__ import annotations

import functools
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import anyio

from kling_mcp.store import schema
from kling_mcp.store.ledger import PROCESS_OWNER, Ledger
from kling_mcp.store.sql import Op, T, Write


@functools.lru_cache(maxsize=512)
def _spelled(sql: str) -> str:
    # The whole file is locked by the write transaction, so row locks are only PostgreSQL's concern.
    return re.sub(r" FOR UPDATE( SKIP LOCKED)?", "", sql)


def _drive(conn: sqlite3.Connection, op: Op[T], write: Write) -> T:
    """Runs an operation's statements on ``conn``, in a write transaction when it writes."""
    if write is not None:
        conn.execute("BEGIN IMMEDIATE")  # takes the write lock first, so no other process interleaves
    try:
        statement = next(op)
        while True:
            sql, args = statement
            statement = op.send(conn.execute(_spelled(sql), args).fetchall())
    except StopIteration as done:
        if write is not None:
            conn.execute("COMMIT")
        result: T = done.value
        return result
    except BaseException:
        if write is not None:
            conn.execute("ROLLBACK")
        raise


def _migrate(conn: sqlite3.Connection) -> None:
    """Brings the ledger to ``SCHEMA_VERSION``, once however many processes open it at the same time."""
    target = schema.SCHEMA_VERSION
    if conn.execute("PRAGMA user_version").fetchone()[0] >= target:
        return  # a newer server's ledger only has columns added, which this one does not read
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for step in range(version + 1, target + 1):
            for statement in schema.migration(step):
                conn.execute(statement)
        if version < target:
            conn.execute(f"PRAGMA user_version = {target}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


WAL_SWITCH_WAIT_S = 30.0


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switches the ledger to WAL, waiting for another process doing the same.

    SQLite answers "database is locked" at once, without its busy handler, to a connection that asks for WAL while
    another one is switching a new file over; servers started together (replicas, tests) would fail to start.
    """
    deadline = time.monotonic() + WAL_SWITCH_WAIT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


class Store(Ledger):
    """The ledger on two SQLite connections, each used by one worker thread at a time: one writes, one reads.

    Reads (check_status, resources, the changes feed) never queue behind the writes of a thousand polling jobs: in
    WAL mode a reader sees every committed write without waiting for the writer.
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time, replica: str = PROCESS_OWNER) -> None:
        super().__init__(clock=clock, replica=replica)
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = _connect(path)
        _use_wal(self._conn)
        self._conn.execute("PRAGMA synchronous=NORMAL")
        _migrate(self._conn)
        self._reader = _connect(path)
        self._lock, self._read_lock = threading.Lock(), threading.Lock()
        self._limiter, self._read_limiter = anyio.CapacityLimiter(1), anyio.CapacityLimiter(1)

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._conn.close()
            self._reader.close()

    async def _run(self, op: Callable[[], Op[T]], *, write: Write = None, announce: Iterable[str] = ()) -> T:
        # No bus: other processes see changes through the changes feed (updated_at), so announce is unused.
        if write is None:
            conn, lock, limiter = self._reader, self._read_lock, self._read_limiter
        else:
            conn, lock, limiter = self._conn, self._lock, self._limiter

        def call() -> T:
            with lock:
                return _drive(conn, op(), write)

        return await anyio.to_thread.run_sync(call, limiter=limiter)
