"""The durable job ledger: one SQLite file, safe for concurrent calls and several processes.

A job's row is written *before* its submit request leaves, so no paid request can exist that the ledger does not
know of. WAL mode plus ``BEGIN IMMEDIATE`` for every read-modify-write make the file safe to share between server
processes; the blocking sqlite3 calls run in a worker thread so the event loop never waits on a lock.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypedDict, TypeVar, Unpack

import anyio
from pydantic import BaseModel

from kling_mcp.errors import InvalidInputError, JobNotFoundError, Measured
from kling_mcp.models import (
    DOWNLOAD_OWED,
    FINAL,
    LOCAL_OWNER,
    NOT_REUSED,
    Column,
    DownloadState,
    GenerationRequest,
    JobStatus,
    Mode,
)
from kling_mcp.models import Job as Job  # the ledger's own name for it, kept for callers that import it from here
from kling_mcp.spend import Guards as Guards  # checked in the ledger's transactions; callers import it from here
from kling_mcp.spend import check_guards
from kling_mcp.spend import marks as _marks

T = TypeVar("T")

# Who wrote a 'submitting' row: a restarted server can tell a submit cut off by a crash from one in flight.
PROCESS_OWNER = f"{socket.gethostname()}:{os.getpid()}"


def owner_is_dead(owner: str | None) -> bool:
    """True when ``owner`` was a process on this host that no longer runs."""
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# --- the schema, derived from the Job model -----------------------------------------------------------------

# How much of a job's request the ledger still holds: all of it while the job may be sent again, then no inline
# image (its hash instead), and after the retention period no prompt or image reference either (hashes of them).
KEPT_WHOLE: Final = "whole"
KEPT_NO_INLINE_IMAGE: Final = "no-inline-image"
KEPT_HASHES: Final = "hashes"

# Columns the ledger keeps for itself: the download lease, and room for later fields without a migration.
_LEDGER_ONLY: Final[Mapping[str, Column]] = {
    "download_lease": Column("REAL"),
    "download_owner": Column("TEXT"),
    "extra_json": Column("TEXT NOT NULL DEFAULT '{}'"),
    # Idempotency keys from before owners: unique across everyone, so version 2 moved them to the owner's column.
    "idempotency_key": Column("TEXT UNIQUE"),
    "request_kept": Column(f"TEXT NOT NULL DEFAULT '{KEPT_WHOLE}'", since=2),
}


@dataclass(frozen=True)
class _Stored:
    column: str
    spec: Column
    field: str | None  # the Job field it holds; None for a ledger-only column


def _stored_columns() -> tuple[_Stored, ...]:
    stored = []
    for name, info in Job.model_fields.items():
        (spec,) = (m for m in info.metadata if isinstance(m, Column))
        stored.append(_Stored(spec.name or name, spec, name))
    return (*stored, *(_Stored(name, spec, None) for name, spec in _LEDGER_ONLY.items()))


_COLUMNS: Final = _stored_columns()
_BY_FIELD: Final = {c.field: c for c in _COLUMNS if c.field is not None}

# What each schema version adds besides its columns. A released version never changes: the next change is a new
# version, so a ledger of any age is brought up to date by applying the versions it lacks in order.
_EXTRA_DDL: Final[Mapping[int, tuple[str, ...]]] = {
    1: (
        "CREATE INDEX IF NOT EXISTS jobs_fingerprint ON jobs (fingerprint, created_at)",
        "CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status)",
        "CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at)",
        "CREATE TABLE IF NOT EXISTS aliases (alias TEXT PRIMARY KEY, job_id TEXT NOT NULL REFERENCES jobs (job_id))",
    ),
    # Owners: jobs from before them are the local user's (the column's default); keys become unique per owner.
    2: (
        "UPDATE jobs SET owner_idempotency_key = idempotency_key, idempotency_key = NULL "
        "WHERE idempotency_key IS NOT NULL",
        "CREATE UNIQUE INDEX IF NOT EXISTS jobs_owner_idempotency ON jobs (principal, owner_idempotency_key)",
        "CREATE INDEX IF NOT EXISTS jobs_owner_created ON jobs (principal, created_at)",
    ),
}
SCHEMA_VERSION: Final = max(*_EXTRA_DDL, *(c.spec.since for c in _COLUMNS))


def migration(version: int) -> list[str]:
    """The statements that bring a ledger from ``version - 1`` to ``version``."""
    added = [f"{c.column} {c.spec.sql}" for c in _COLUMNS if c.spec.since == version]
    if version == 1:
        # IF NOT EXISTS: ledgers from before schema versions (user_version 0) already hold version 1.
        statements = [f"CREATE TABLE IF NOT EXISTS jobs ({', '.join(added)})"]
    else:
        # SQLite adds a column only without UNIQUE or PRIMARY KEY, and NOT NULL only with a default.
        statements = [f"ALTER TABLE jobs ADD COLUMN {declaration}" for declaration in added]
    return [*statements, *_EXTRA_DDL.get(version, ())]


def _row_to_job(row: sqlite3.Row) -> Job:
    return Job.model_validate(
        {field: json.loads(row[c.column]) if c.spec.as_json else row[c.column] for field, c in _BY_FIELD.items()}
    )


def _to_columns(fields: Mapping[str, object]) -> dict[str, object]:
    """Job field values as column values."""
    out: dict[str, object] = {}
    for field, value in fields.items():
        c = _BY_FIELD[field]
        if not c.spec.as_json:
            out[c.column] = value
        elif isinstance(value, BaseModel):
            out[c.column] = value.model_dump_json()
        else:
            out[c.column] = json.dumps(value)
    return out


class JobUpdate(TypedDict, total=False):
    """What ``Store.update`` may set, typed as the Job fields it sets; the ledger keeps the other columns itself."""

    polling_url: str | None
    status: JobStatus
    media_url: str | None
    error: str | None
    submitted_at: float | None
    finished_at: float | None
    download_state: DownloadState
    download_error: str | None
    download_attempts: int
    local_path: str | None
    sha256: str | None
    size_bytes: int | None
    attempt_id: str  # not a column: appends a gateway request id to attempt_ids (and its alias)


_UPDATABLE: Final = JobUpdate.__optional_keys__ - {"attempt_id"}


def _existing(
    conn: sqlite3.Connection, owner: str, idempotency_key: str | None, fingerprint: str, since: float | None
) -> Job | None:
    """The owner's job a new request would repeat: same idempotency key, or (``since`` given) the same request since
    then. A key already used for a different request is refused: returning that other job would be a silent lie."""
    if idempotency_key is not None:
        row = conn.execute(
            "SELECT * FROM jobs WHERE principal = ? AND owner_idempotency_key = ?", (owner, idempotency_key)
        ).fetchone()
        if row is not None:
            job = _row_to_job(row)
            if job.fingerprint != fingerprint:
                raise InvalidInputError(
                    "idempotency_key",
                    "new for a request with different arguments",
                    Measured("a key already used for another request"),
                    f"repeat job {job.id}'s exact arguments to get that job back, or use a new key for this request",
                )
            return job
    if since is not None:
        failed = sorted(NOT_REUSED)
        row = conn.execute(
            "SELECT * FROM jobs WHERE principal = ? AND fingerprint = ? AND created_at >= ? "
            f"AND status NOT IN ({_marks(failed)}) ORDER BY created_at DESC LIMIT 1",
            (owner, fingerprint, since, *failed),
        ).fetchone()
        if row is not None:
            return _row_to_job(row)
    return None


def _job_row(conn: sqlite3.Connection, job_id: str) -> Job:
    return _row_to_job(conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone())


@contextmanager
def _write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A read-modify-write transaction: BEGIN IMMEDIATE takes the write lock first, so no other process interleaves."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _migrate(conn: sqlite3.Connection) -> None:
    """Brings the ledger to ``SCHEMA_VERSION``, once however many processes open it at the same time."""
    if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return  # a newer server's ledger only has columns added, which this one does not read
    with _write(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in migration(step):
                conn.execute(statement)
        if version < SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


WAL_SWITCH_WAIT_S = 30.0


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


class Store:
    """Async facade over one SQLite connection; every call runs in a worker thread, one at a time."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        _use_wal(self._conn)
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        _migrate(self._conn)
        self._lock = threading.Lock()
        self._limiter = anyio.CapacityLimiter(1)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            with self._lock:
                return fn(self._conn)

        return await anyio.to_thread.run_sync(call, limiter=self._limiter)

    # --- creation ---------------------------------------------------------------------------------------------

    async def create(
        self,
        request: GenerationRequest,
        *,
        mode: Mode,
        owner: str = LOCAL_OWNER,
        idempotency_key: str | None = None,
        dedupe_seconds: float = 0.0,
        parent_id: str | None = None,
        download: bool = True,
        guards: Guards | None = None,
    ) -> tuple[Job, bool]:
        """Records a job in state ``submitting``; returns (job, created).

        When ``idempotency_key`` matches one of the owner's jobs, or the owner made an identical request within
        ``dedupe_seconds`` that did not fail, that job comes back with ``created=False`` and nothing new is
        recorded. The check and the insert are one transaction, so two processes cannot both create the same job.
        """
        fingerprint = request.fingerprint()
        now = self._clock()
        job_id = "job_" + uuid.uuid4().hex
        row = _to_columns(
            {
                "job_id": job_id,
                "status": "submitting",
                "mode": mode,
                "request": request,
                "fingerprint": fingerprint,
                "idempotency_key": idempotency_key,
                "video_seconds": request.video_seconds,
                "created_at": now,
                "updated_at": now,
                "download_state": "pending" if download else "off",
                "parent_id": parent_id,
                "process": PROCESS_OWNER,
                "owner": owner,
                "webhook_token": secrets.token_urlsafe(24),  # names this job in its webhook URL; unguessable
            }
        )
        since = now - dedupe_seconds if dedupe_seconds > 0 else None

        def op(conn: sqlite3.Connection) -> tuple[Job, bool]:
            with _write(conn):
                existing = _existing(conn, owner, idempotency_key, fingerprint, since)
                if existing is not None:
                    return existing, False
                if guards is not None:
                    check_guards(conn, guards, owner, request.video_seconds, now)
                conn.execute(f"INSERT INTO jobs ({', '.join(row)}) VALUES ({_marks(row)})", tuple(row.values()))
                conn.execute("INSERT INTO aliases (alias, job_id) VALUES (?, ?)", (job_id, job_id))
                return _job_row(conn, job_id), True

        return await self._run(op)

    # --- reads ------------------------------------------------------------------------------------------------

    async def get(self, any_id: str, *, owner: str | None = None) -> Job:
        """A job by its public id, local id or any attempt's request id; with ``owner``, only one of theirs.

        Another owner's job is not found, with the very words of a missing one, so ids cannot be probed.
        """

        def op(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(
                "SELECT jobs.* FROM aliases JOIN jobs USING (job_id) WHERE aliases.alias = ?", (any_id,)
            ).fetchone()
            return _row_to_job(row) if row is not None else None

        job = await self._run(op)
        if job is None or (owner is not None and job.owner != owner):
            raise JobNotFoundError(
                f"No job {any_id!r} in the ledger.",
                hint="Use list_jobs to see known request ids; ids look like kling-video-..._<uuid>.",
            )
        return job

    async def by_webhook_token(self, token: str) -> Job | None:
        def op(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute("SELECT * FROM jobs WHERE webhook_token = ?", (token,)).fetchone()
            return _row_to_job(row) if row is not None else None

        return await self._run(op)

    async def recent(
        self, *, owner: str | None = None, statuses: Sequence[JobStatus] | None = None, limit: int = 20
    ) -> list[Job]:
        """The newest jobs first: the owner's, or everyone's when ``owner`` is None."""
        where: list[str] = []
        args: list[object] = []
        if owner is not None:
            where.append("principal = ?")
            args.append(owner)
        if statuses:
            where.append(f"status IN ({_marks(statuses)})")
            args.extend(statuses)
        clause = f"WHERE {' AND '.join(where)} " if where else ""

        def op(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(f"SELECT * FROM jobs {clause}ORDER BY created_at DESC LIMIT ?", (*args, limit))
            return [_row_to_job(r) for r in rows.fetchall()]

        return await self._run(op)

    async def unsettled(self) -> list[Job]:
        """Jobs that still need work: not final, or final with a download still owed."""
        final, owed = sorted(FINAL), sorted(DOWNLOAD_OWED)

        def op(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(
                f"SELECT * FROM jobs WHERE status NOT IN ({_marks(final)}) "
                f"OR (status = 'completed' AND download_state IN ({_marks(owed)})) ORDER BY created_at",
                (*final, *owed),
            ).fetchall()
            return [_row_to_job(r) for r in rows]

        return await self._run(op)

    # --- updates ----------------------------------------------------------------------------------------------

    async def update(self, job_id: str, **fields: Unpack[JobUpdate]) -> Job:
        """Sets columns of one job; ``attempt_id`` appends a gateway request id (and its alias)."""
        attempt_id = fields.pop("attempt_id", None)
        unknown = set(fields) - _UPDATABLE  # for callers mypy does not see
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        values: dict[str, object] = {**fields, "updated_at": self._clock()}

        def op(conn: sqlite3.Connection) -> Job:
            with _write(conn):
                if attempt_id is not None:
                    values.update(_add_attempt(conn, job_id, attempt_id))
                columns = _to_columns(values)
                if fields.get("status") in FINAL:
                    columns.update(_kept_at_final(conn, job_id))
                sets = ", ".join(f"{name} = ?" for name in columns)
                conn.execute(f"UPDATE jobs SET {sets} WHERE job_id = ?", (*columns.values(), job_id))
                return _job_row(conn, job_id)

        return await self._run(op)

    async def prune(self, *, older_than: float | None) -> int:
        """Drops what final jobs no longer need; returns how many rows changed.

        Inline images become digests (a ledger from before this rule still holds them), and with ``older_than``
        (seconds) the prompts and image references of jobs final for longer become digests too. Rows stay: the
        jobs are still listed.
        """
        final = sorted(FINAL)
        cutoff = self._clock() - older_than if older_than is not None else -1.0  # -1: before any job

        def op(conn: sqlite3.Connection) -> int:
            with _write(conn):
                rows = conn.execute(
                    f"SELECT job_id, request_json, COALESCE(finished_at, updated_at) < ? AS expired FROM jobs "
                    f"WHERE status IN ({_marks(final)}) AND (request_kept = ? OR (request_kept != ? "
                    "AND COALESCE(finished_at, updated_at) < ?))",
                    (cutoff, *final, KEPT_WHOLE, KEPT_HASHES, cutoff),
                ).fetchall()
                for row in rows:
                    request = GenerationRequest.model_validate_json(row["request_json"])
                    kept = KEPT_HASHES if row["expired"] else KEPT_NO_INLINE_IMAGE
                    request = request.hashed() if row["expired"] else request.without_inline_image()
                    conn.execute(
                        "UPDATE jobs SET request_json = ?, request_kept = ? WHERE job_id = ?",
                        (request.model_dump_json(), kept, row["job_id"]),
                    )
                return len(rows)

        return await self._run(op)

    async def claim_download(self, job_id: str, *, lease_seconds: float) -> Job | None:
        """Takes the right to download a job's video, so exactly one process does it; None if another holds it."""
        now = self._clock()

        def op(conn: sqlite3.Connection) -> Job | None:
            with _write(conn):
                row = conn.execute(
                    "SELECT status, download_state, download_lease, download_owner FROM jobs WHERE job_id = ?",
                    (job_id,),
                ).fetchone()
                if row is None or row["status"] != "completed":
                    return None
                state, lease = row["download_state"], row["download_lease"]
                # A lease is void once it expires, or at once when the process that took it is gone (SIGKILL).
                stale = lease is None or lease < now or owner_is_dead(row["download_owner"])
                if not (state == "pending" or (state == "downloading" and stale)):
                    return None
                conn.execute(
                    "UPDATE jobs SET download_state = 'downloading', download_lease = ?, download_owner = ?, "
                    "updated_at = ? WHERE job_id = ?",
                    (now + lease_seconds, PROCESS_OWNER, now, job_id),
                )
                return _job_row(conn, job_id)

        return await self._run(op)


def _kept_at_final(conn: sqlite3.Connection, job_id: str) -> dict[str, object]:
    """The columns that drop a job's inline image once it is final: a final job is never sent again."""
    row = conn.execute("SELECT request_json, request_kept FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    if row is None or row["request_kept"] != KEPT_WHOLE:
        return {}
    request = GenerationRequest.model_validate_json(row["request_json"]).without_inline_image()
    return {"request_json": request.model_dump_json(), "request_kept": KEPT_NO_INLINE_IMAGE}


def _add_attempt(conn: sqlite3.Connection, job_id: str, attempt_id: str) -> dict[str, object]:
    """The fields that record one more gateway attempt; the first attempt's id becomes the job's public id."""
    row = conn.execute("SELECT attempt_ids, request_id FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    ids = [*json.loads(row["attempt_ids"]), attempt_id]
    fields: dict[str, object] = {"attempt_ids": ids, "attempts": len(ids), "current_request_id": attempt_id}
    if row["request_id"] is None:
        fields["request_id"] = attempt_id
    conn.execute("INSERT OR IGNORE INTO aliases (alias, job_id) VALUES (?, ?)", (attempt_id, job_id))
    return fields
