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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
from pydantic import BaseModel, ConfigDict, Field

from kling_mcp.errors import JobNotFoundError, SpendLimitError
from kling_mcp.pixazo import GenerationRequest, JobStatus

LedgerStatus = Literal["submitting", "unknown"] | JobStatus
DownloadState = Literal["off", "pending", "downloading", "done", "failed"]
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


FINAL_STATES: frozenset[str] = frozenset({"completed", "failed", "error", "unknown"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    request_id TEXT,
    current_request_id TEXT,
    polling_url TEXT,
    status TEXT NOT NULL,
    mode TEXT NOT NULL,
    request_json TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    video_seconds INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    attempt_ids TEXT NOT NULL DEFAULT '[]',
    media_url TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    submitted_at REAL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    download_state TEXT NOT NULL DEFAULT 'off',
    download_error TEXT,
    download_attempts INTEGER NOT NULL DEFAULT 0,
    download_lease REAL,
    download_owner TEXT,
    local_path TEXT,
    sha256 TEXT,
    size_bytes INTEGER,
    parent_id TEXT,
    owner TEXT,
    webhook_token TEXT UNIQUE,
    extra_json TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS jobs_fingerprint ON jobs (fingerprint, created_at);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
CREATE TABLE IF NOT EXISTS aliases (
    alias TEXT PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs (job_id)
);
"""


_UPDATABLE = frozenset(
    {
        "polling_url",
        "status",
        "media_url",
        "error",
        "submitted_at",
        "finished_at",
        "download_state",
        "download_error",
        "download_attempts",
        "download_lease",
        "local_path",
        "sha256",
        "size_bytes",
    }
)


@dataclass(frozen=True)
class Guards:
    """Spend limits checked in the same transaction that records a job, so concurrent calls cannot overshoot."""

    max_active_jobs: int | None = None
    daily_seconds: int | None = None


def _utc_day_bounds(now: float) -> tuple[float, float]:
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day.timestamp(), (day + timedelta(days=1)).timestamp()


def _check_guards(conn: sqlite3.Connection, guards: Guards, seconds: int, now: float) -> None:
    if guards.max_active_jobs is not None:
        active = int(
            conn.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('submitting', 'queued', 'processing')").fetchone()[
                0
            ]
        )
        if active >= guards.max_active_jobs:
            raise SpendLimitError(
                f"Refused: {active} jobs are already running (KLING_MCP_MAX_ACTIVE_JOBS={guards.max_active_jobs}).",
                limit="max_active_jobs",
                remaining=0,
                resets_at=None,
                hint="Wait for a running job to finish (check_status or list_jobs), then call again.",
            )
    if guards.daily_seconds is not None:
        start, end = _utc_day_bounds(now)
        used = int(
            conn.execute(
                "SELECT COALESCE(SUM(video_seconds), 0) FROM jobs WHERE created_at >= ? AND status != 'error'",
                (start,),
            ).fetchone()[0]
        )
        left = max(0, guards.daily_seconds - used)
        if seconds > left:
            resets = datetime.fromtimestamp(end, UTC).isoformat(timespec="seconds")
            raise SpendLimitError(
                f"Refused: {seconds} s of video would exceed today's budget of {guards.daily_seconds} s "
                f"(KLING_MCP_DAILY_SECONDS); {left} s left.",
                limit="daily_seconds",
                remaining=left,
                resets_at=resets,
                hint=f"Ask for at most {left} s, or wait until {resets} (UTC midnight)."
                if left >= 3
                else f"Wait until {resets} (UTC midnight), when the budget resets.",
            )


class Job(BaseModel):
    """A job as the ledger holds it."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    request_id: str | None
    current_request_id: str | None
    polling_url: str | None
    status: LedgerStatus
    mode: Literal["live", "sandbox"]
    request: GenerationRequest
    fingerprint: str
    idempotency_key: str | None
    video_seconds: int
    attempts: int
    attempt_ids: tuple[str, ...]
    media_url: str | None
    error: str | None
    created_at: float
    submitted_at: float | None
    updated_at: float
    finished_at: float | None
    download_state: DownloadState
    download_error: str | None
    download_attempts: int
    local_path: str | None
    sha256: str | None
    size_bytes: int | None
    parent_id: str | None
    owner: str | None = None
    webhook_token: str | None = Field(default=None, repr=False, exclude=True)

    @property
    def id(self) -> str:
        """The public id: the gateway's first request id once known, else the local job id."""
        return self.request_id or self.job_id

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATES

    @property
    def settled(self) -> bool:
        """Final, and no download still to come: nothing about this job will change by itself."""
        return self.final and self.download_state not in ("pending", "downloading")


def _row_to_job(row: sqlite3.Row) -> Job:
    return Job(
        job_id=row["job_id"],
        request_id=row["request_id"],
        current_request_id=row["current_request_id"],
        polling_url=row["polling_url"],
        status=row["status"],
        mode=row["mode"],
        request=GenerationRequest.model_validate_json(row["request_json"]),
        fingerprint=row["fingerprint"],
        idempotency_key=row["idempotency_key"],
        video_seconds=row["video_seconds"],
        attempts=row["attempts"],
        attempt_ids=tuple(json.loads(row["attempt_ids"])),
        media_url=row["media_url"],
        error=row["error"],
        created_at=row["created_at"],
        submitted_at=row["submitted_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
        download_state=row["download_state"],
        download_error=row["download_error"],
        download_attempts=row["download_attempts"],
        local_path=row["local_path"],
        sha256=row["sha256"],
        size_bytes=row["size_bytes"],
        parent_id=row["parent_id"],
        owner=row["owner"],
        webhook_token=row["webhook_token"],
    )


class Store:
    """Async facade over one SQLite connection; every call runs in a worker thread, one at a time."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._conn.executescript(_SCHEMA)
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

    @staticmethod
    @contextmanager
    def _write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # --- creation ---------------------------------------------------------------------------------------------

    async def create(
        self,
        request: GenerationRequest,
        *,
        mode: Literal["live", "sandbox"],
        idempotency_key: str | None = None,
        dedupe_seconds: float = 0.0,
        parent_id: str | None = None,
        download: bool = True,
        guards: Guards | None = None,
    ) -> tuple[Job, bool]:
        """Records a job in state ``submitting``; returns (job, created).

        When ``idempotency_key`` matches a job, or an identical request was made within ``dedupe_seconds`` and did
        not fail, that job comes back with ``created=False`` and nothing new is recorded. The check and the insert
        are one transaction, so two processes cannot both create the same job.
        """
        fingerprint = request.fingerprint()
        now = self._clock()

        def op(conn: sqlite3.Connection) -> tuple[Job, bool]:
            with self._write(conn):
                if idempotency_key is not None:
                    row = conn.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
                    if row is not None:
                        return _row_to_job(row), False
                if dedupe_seconds > 0:
                    row = conn.execute(
                        "SELECT * FROM jobs WHERE fingerprint = ? AND created_at >= ? "
                        "AND status NOT IN ('failed', 'error') ORDER BY created_at DESC LIMIT 1",
                        (fingerprint, now - dedupe_seconds),
                    ).fetchone()
                    if row is not None:
                        return _row_to_job(row), False
                if guards is not None:
                    _check_guards(conn, guards, request.video_seconds, now)
                job_id = "job_" + uuid.uuid4().hex
                conn.execute(
                    "INSERT INTO jobs (job_id, status, mode, request_json, fingerprint, idempotency_key, "
                    "video_seconds, created_at, updated_at, download_state, parent_id, owner, webhook_token) "
                    "VALUES (?, 'submitting', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        job_id,
                        mode,
                        request.model_dump_json(),
                        fingerprint,
                        idempotency_key,
                        request.video_seconds,
                        now,
                        now,
                        "pending" if download else "off",
                        parent_id,
                        PROCESS_OWNER,
                        secrets.token_urlsafe(24),  # names this job in its webhook URL; unguessable
                    ),
                )
                conn.execute("INSERT INTO aliases (alias, job_id) VALUES (?, ?)", (job_id, job_id))
                row = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
                return _row_to_job(row), True

        return await self._run(op)

    # --- reads ------------------------------------------------------------------------------------------------

    async def get(self, any_id: str) -> Job:
        """A job by its public id, local id or any attempt's request id."""

        def op(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(
                "SELECT jobs.* FROM aliases JOIN jobs USING (job_id) WHERE aliases.alias = ?", (any_id,)
            ).fetchone()
            return _row_to_job(row) if row is not None else None

        job = await self._run(op)
        if job is None:
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

    async def recent(self, *, statuses: Sequence[str] | None = None, limit: int = 20) -> list[Job]:
        def op(conn: sqlite3.Connection) -> list[Job]:
            if statuses:
                marks = ",".join("?" * len(statuses))
                rows = conn.execute(
                    f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY created_at DESC LIMIT ?",
                    (*statuses, limit),
                ).fetchall()
            else:
                rows = conn.execute("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
            return [_row_to_job(r) for r in rows]

        return await self._run(op)

    async def unsettled(self) -> list[Job]:
        """Jobs that still need work: not final, or final with a download still owed."""

        def op(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(
                "SELECT * FROM jobs WHERE status NOT IN ('completed', 'failed', 'error', 'unknown') "
                "OR (status = 'completed' AND download_state IN ('pending', 'downloading')) ORDER BY created_at"
            ).fetchall()
            return [_row_to_job(r) for r in rows]

        return await self._run(op)

    # --- updates ----------------------------------------------------------------------------------------------

    async def update(self, job_id: str, **fields: Any) -> Job:
        """Sets columns of one job; ``attempt_id`` appends a gateway request id (and its alias)."""
        attempt_id: str | None = fields.pop("attempt_id", None)
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        fields["updated_at"] = self._clock()

        def op(conn: sqlite3.Connection) -> Job:
            with self._write(conn):
                if attempt_id is not None:
                    row = conn.execute(
                        "SELECT attempt_ids, request_id FROM jobs WHERE job_id = ?", (job_id,)
                    ).fetchone()
                    ids = [*json.loads(row["attempt_ids"]), attempt_id]
                    fields["attempt_ids"] = json.dumps(ids)
                    fields["attempts"] = len(ids)
                    fields["current_request_id"] = attempt_id
                    if row["request_id"] is None:
                        fields["request_id"] = attempt_id
                    conn.execute("INSERT OR IGNORE INTO aliases (alias, job_id) VALUES (?, ?)", (attempt_id, job_id))
                sets = ", ".join(f"{name} = ?" for name in fields)
                conn.execute(f"UPDATE jobs SET {sets} WHERE job_id = ?", (*fields.values(), job_id))
                row = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
                return _row_to_job(row)

        return await self._run(op)

    async def claim_download(self, job_id: str, *, lease_seconds: float) -> Job | None:
        """Takes the right to download a job's video, so exactly one process does it; None if another holds it."""
        now = self._clock()

        def op(conn: sqlite3.Connection) -> Job | None:
            with self._write(conn):
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
                return _row_to_job(conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone())

        return await self._run(op)
