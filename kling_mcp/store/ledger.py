"""The durable job ledger's operations, written once for both backends (SQLite, PostgreSQL).

A job's row is written *before* its submit request leaves, so no paid request can exist that the ledger does not
know of. Every read-modify-write is one transaction that holds across processes and replicas: decisions over many
rows (dedupe, idempotency keys, the spend guards, pruning) take the ledger's one write lock (``write="ledger"``:
SQLite's ``BEGIN IMMEDIATE``, a PostgreSQL transaction-scoped advisory lock), and changes to one job lock its row.
A backend only says how a statement runs (``_run``).
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Final, Unpack

from kling_mcp.errors import InvalidInputError, JobNotFoundError, Measured
from kling_mcp.models import (
    CANCELLED,
    DOWNLOAD_OWED,
    FINAL,
    LOCAL_OWNER,
    NOT_REUSED,
    GenerationRequest,
    Job,
    JobStatus,
    Mode,
)
from kling_mcp.spend import Guards, check_guards, marks
from kling_mcp.store.schema import (
    KEPT_HASHES,
    KEPT_NO_INLINE_IMAGE,
    KEPT_WHOLE,
    UPDATABLE,
    JobUpdate,
    row_to_job,
    to_columns,
)
from kling_mcp.store.sql import FOR_UPDATE, SKIP_LOCKED, Op, Row, T, Write, one, rows

# Who wrote a 'submitting' row, and who holds leases by default: a restarted server can tell a submit cut off by a
# crash from one in flight, and a lease of a process gone from this host is void at once.
PROCESS_OWNER = f"{socket.gethostname()}:{os.getpid()}"


def unnamed_replica() -> str:
    """A name for a core whose replica id is not configured: the process, plus a suffix of this core's own.

    Two cores can run in one process (a server's in-memory clients each start one): under one name, the second
    would take the first's leases for its own, as a restarted replica takes back what its name held, and cut
    the first's submits off as unknown. ``owner_is_dead`` still reads the process from it.
    """
    return f"{PROCESS_OWNER}/{secrets.token_hex(4)}"


_FINAL, _OWED = sorted(FINAL), sorted(DOWNLOAD_OWED)
# Jobs that still need work: not final, or final with a download still owed.
_UNSETTLED: Final = (
    f"(status NOT IN ({marks(_FINAL)}) OR (status = 'completed' AND download_state IN ({marks(_OWED)})))"
)
_UNSETTLED_ARGS: Final = (*_FINAL, *_OWED)
# What a submit's answer may still record on a job cancelled meanwhile (with its attempt's ids).
_KEPT_AFTER_CANCEL: Final = frozenset({"polling_url", "submitted_at", "updated_at"})
_BATCH: Final = 500  # ids per statement, well inside every backend's parameter limit


def owner_is_dead(owner: str | None) -> bool:
    """True when ``owner`` was a process on this host that no longer runs."""
    if not owner:
        return False
    host, _, pid = owner.partition("/")[0].rpartition(":")
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


def _not_found(any_id: str) -> JobNotFoundError:
    return JobNotFoundError(
        f"No job {any_id!r} in the ledger.",
        hint="Use list_jobs to see known request ids; ids look like kling-video-..._<uuid>.",
    )


def _existing(owner: str, idempotency_key: str | None, fingerprint: str, since: float | None) -> Op[Job | None]:
    """The owner's job a new request would repeat: same idempotency key, or (``since`` given) the same request since
    then. A key already used for a different request is refused: returning that other job would be a silent lie."""
    if idempotency_key is not None:
        row = yield from one(
            "SELECT * FROM jobs WHERE principal = ? AND owner_idempotency_key = ?", owner, idempotency_key
        )
        if row is not None:
            job = row_to_job(row)
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
        row = yield from one(
            "SELECT * FROM jobs WHERE principal = ? AND fingerprint = ? AND created_at >= ? "
            f"AND status NOT IN ({marks(failed)}) ORDER BY created_at DESC LIMIT 1",
            owner,
            fingerprint,
            since,
            *failed,
        )
        if row is not None:
            return row_to_job(row)
    return None


def _insert(
    row: dict[str, object], guards: Guards | None, check: tuple[str, str | None, float | None, int, float]
) -> Op[tuple[Job, bool]]:
    owner, key, since, seconds, now = check
    existing = yield from _existing(owner, key, str(row["fingerprint"]), since)
    if existing is not None:
        return existing, False
    if guards is not None:
        yield from check_guards(guards, owner, seconds, now)
    (inserted,) = yield from rows(
        f"INSERT INTO jobs ({', '.join(row)}) VALUES ({marks(row)}) RETURNING *", *row.values()
    )
    yield from rows("INSERT INTO aliases (alias, job_id) VALUES (?, ?)", row["job_id"], row["job_id"])
    return row_to_job(inserted), True


def _kept_at_final(current: Row) -> dict[str, object]:
    """The columns that drop a job's inline image once it is final: a final job is never sent again."""
    if current["request_kept"] != KEPT_WHOLE:
        return {}
    request = GenerationRequest.model_validate_json(current["request_json"]).without_inline_image()
    return {"request_json": request.model_dump_json(), "request_kept": KEPT_NO_INLINE_IMAGE}


def _add_attempt(current: Row, job_id: str, attempt_id: str) -> Op[dict[str, object]]:
    """The fields that record one more gateway attempt; the first attempt's id becomes the job's public id."""
    ids = [*json.loads(current["attempt_ids"]), attempt_id]
    fields: dict[str, object] = {"attempt_ids": ids, "attempts": len(ids), "current_request_id": attempt_id}
    if current["request_id"] is None:
        fields["request_id"] = attempt_id
    yield from rows("INSERT INTO aliases (alias, job_id) VALUES (?, ?) ON CONFLICT DO NOTHING", attempt_id, job_id)
    return fields


def _update(job_id: str, values: dict[str, object], attempt_id: str | None) -> Op[Job]:
    current = yield from one(
        f"SELECT attempt_ids, request_id, request_json, request_kept, status FROM jobs WHERE job_id = ?{FOR_UPDATE}",
        job_id,
    )
    if current is None:
        raise _not_found(job_id)
    cancelling = values.get("status") == CANCELLED
    if current["status"] == CANCELLED and attempt_id is not None:
        # A submit answered after the cancel: the request the gateway accepted (and may bill) stays findable.
        values = {name: value for name, value in values.items() if name in _KEPT_AFTER_CANCEL}
    elif current["status"] == CANCELLED or (cancelling and current["status"] in FINAL):
        # A driver's write that raced the cancel (a poll answer in flight, perhaps on another replica) is stale
        # and dropped, so the job neither comes back nor gets downloaded; so is a cancel that read the job before
        # it went final, whose outcome stands.
        (row,) = yield from rows("SELECT * FROM jobs WHERE job_id = ?", job_id)
        return row_to_job(row)
    if attempt_id is not None:
        values.update((yield from _add_attempt(current, job_id, attempt_id)))
    columns = to_columns(values)
    if values.get("status") in FINAL:
        columns.update(_kept_at_final(current))
    sets = ", ".join(f"{name} = ?" for name in columns)
    (row,) = yield from rows(f"UPDATE jobs SET {sets} WHERE job_id = ? RETURNING *", *columns.values(), job_id)
    return row_to_job(row)


def _prune(cutoff: float) -> Op[int]:
    found = yield from rows(
        f"SELECT job_id, request_json, COALESCE(finished_at, updated_at) < ? AS expired FROM jobs "
        f"WHERE status IN ({marks(_FINAL)}) AND (request_kept = ? OR (request_kept != ? "
        "AND COALESCE(finished_at, updated_at) < ?))",
        cutoff,
        *_FINAL,
        KEPT_WHOLE,
        KEPT_HASHES,
        cutoff,
    )
    for row in found:
        request = GenerationRequest.model_validate_json(row["request_json"])
        kept = KEPT_HASHES if row["expired"] else KEPT_NO_INLINE_IMAGE
        request = request.hashed() if row["expired"] else request.without_inline_image()
        yield from rows(
            "UPDATE jobs SET request_json = ?, request_kept = ? WHERE job_id = ?",
            request.model_dump_json(),
            kept,
            row["job_id"],
        )
    return len(found)


def _claim_download(job_id: str, owner: str, now: float, lease_seconds: float) -> Op[Job | None]:
    row = yield from one(
        "SELECT status, download_state, download_lease, download_owner, lease_owner FROM jobs "
        f"WHERE job_id = ?{FOR_UPDATE}",
        job_id,
    )
    if row is None or row["status"] != "completed":
        return None
    state, lease, claimant = row["download_state"], row["download_lease"], row["download_owner"]
    # A claim is void once it expires, at once when the process that took it is gone (SIGKILL), and when the job
    # has passed to another replica: the claimant lost its lease on the job, so its driver has stopped.
    moved = row["lease_owner"] == owner and claimant not in (None, owner)
    stale = lease is None or lease < now or owner_is_dead(claimant) or moved
    if not (state == "pending" or (state == "downloading" and stale)):
        return None
    (claimed,) = yield from rows(
        "UPDATE jobs SET download_state = 'downloading', download_lease = ?, download_owner = ?, "
        "updated_at = ? WHERE job_id = ? RETURNING *",
        now + lease_seconds,
        owner,
        now,
        job_id,
    )
    return row_to_job(claimed)


def _lease_void(dead: Sequence[str]) -> tuple[str, tuple[object, ...]]:
    """The condition (and its arguments, after ``now``) under which a lease may be taken: none, expired, or dead."""
    dead_clause = f" OR lease_owner IN ({marks(dead)})" if dead else ""
    # A 'submitting' row from before leases never had a holder to lapse: the engine judges it by its process.
    never_held = "(lease_until IS NULL AND status != 'submitting')"
    return f"({never_held} OR lease_until < ?{dead_clause})", tuple(dead)


class Ledger:
    """The ledger's operations; a backend supplies ``_run`` (and ``close``, and its change bus)."""

    def __init__(self, *, clock: Callable[[], float] = time.time, replica: str = PROCESS_OWNER) -> None:
        self._clock = clock
        self.replica = replica  # this replica's name in leases, download claims and 'submitting' rows

    async def _run(self, op: Callable[[], Op[T]], *, write: Write = None, announce: Iterable[str] = ()) -> T:
        """Runs the operation ``op()`` makes as one transaction (again, from the start, where a backend retries); ``announce`` names jobs whose change other replicas hear of."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        self.close()

    async def listen(
        self,
        on_change: Callable[[str], Awaitable[None]],
        on_ring: Callable[[str], Awaitable[None]],
        *,
        ready: Callable[[], None],
    ) -> bool:
        """Delivers other replicas' changes and doorbells until cancelled, calling ``ready`` once listening; False
        at once when the backend has no bus (then the ledger's changes feed is all there is)."""
        ready()
        return False

    async def ring(self, job_id: str) -> bool:
        """Asks the replica driving the job to poll it now; False when the backend has no bus to carry that."""
        return False

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
        lease_seconds: float | None = None,
    ) -> tuple[Job, bool]:
        """Records a job in state ``submitting``; returns (job, created).

        When ``idempotency_key`` matches one of the owner's jobs, or the owner made an identical request within
        ``dedupe_seconds`` that did not fail, that job comes back with ``created=False`` and nothing new is
        recorded. The check and the insert are one transaction under the ledger's write lock, so two processes or
        replicas cannot both create the same job or together overshoot a guard. With ``lease_seconds`` the new job
        is leased to this replica, which submits and drives it.
        """
        fingerprint = request.fingerprint()
        now = self._clock()
        job_id = "job_" + uuid.uuid4().hex
        row = to_columns(
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
                "process": self.replica,
                "owner": owner,
                "webhook_token": secrets.token_urlsafe(24),  # names this job in its webhook URL; unguessable
                "lease_owner": self.replica if lease_seconds is not None else None,
                "lease_until": now + lease_seconds if lease_seconds is not None else None,
            }
        )
        since = now - dedupe_seconds if dedupe_seconds > 0 else None
        check = (owner, idempotency_key, since, request.video_seconds, now)
        return await self._run(lambda: _insert(row, guards, check), write="ledger", announce=(job_id,))

    # --- reads ------------------------------------------------------------------------------------------------

    async def get(self, any_id: str, *, owner: str | None = None) -> Job:
        """A job by its public id, local id or any attempt's request id; with ``owner``, only one of theirs.

        Another owner's job is not found, with the very words of a missing one, so ids cannot be probed.
        """
        row = await self._run(
            lambda: one("SELECT jobs.* FROM aliases JOIN jobs USING (job_id) WHERE aliases.alias = ?", any_id)
        )
        job = row_to_job(row) if row is not None else None
        if job is None or (owner is not None and job.owner != owner):
            raise _not_found(any_id)
        return job

    async def by_webhook_token(self, token: str) -> Job | None:
        row = await self._run(lambda: one("SELECT * FROM jobs WHERE webhook_token = ?", token))
        return row_to_job(row) if row is not None else None

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
            where.append(f"status IN ({marks(statuses)})")
            args.extend(statuses)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        found = await self._run(
            lambda: rows(f"SELECT * FROM jobs {clause}ORDER BY created_at DESC LIMIT ?", *args, limit)
        )
        return [row_to_job(r) for r in found]

    async def unsettled(self) -> list[Job]:
        """Jobs that still need work: not final, or final with a download still owed."""
        found = await self._run(
            lambda: rows(f"SELECT * FROM jobs WHERE {_UNSETTLED} ORDER BY created_at", *_UNSETTLED_ARGS)
        )
        return [row_to_job(r) for r in found]

    async def changes_since(self, since: float, *, limit: int = 1000) -> list[tuple[str, float]]:
        """(job id, updated_at) of rows changed at or after ``since`` (any replica's clock), oldest change first."""
        found = await self._run(
            lambda: rows(
                "SELECT job_id, updated_at FROM jobs WHERE updated_at >= ? ORDER BY updated_at LIMIT ?", since, limit
            )
        )
        return [(str(r["job_id"]), float(r["updated_at"])) for r in found]

    # --- updates ----------------------------------------------------------------------------------------------

    async def update(self, job_id: str, **fields: Unpack[JobUpdate]) -> Job:
        """Sets columns of one job; ``attempt_id`` appends a gateway request id (and its alias)."""
        attempt_id = fields.pop("attempt_id", None)
        unknown = set(fields) - UPDATABLE  # for callers mypy does not see
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        values: dict[str, object] = {**fields, "updated_at": self._clock()}
        return await self._run(lambda: _update(job_id, dict(values), attempt_id), write="row", announce=(job_id,))

    async def prune(self, *, older_than: float | None) -> int:
        """Drops what final jobs no longer need; returns how many rows changed.

        Inline images become digests (a ledger from before this rule still holds them), and with ``older_than``
        (seconds) the prompts and image references of jobs final for longer become digests too. Rows stay: the
        jobs are still listed.
        """
        cutoff = self._clock() - older_than if older_than is not None else -1.0  # -1: before any job
        return await self._run(lambda: _prune(cutoff), write="ledger")

    async def claim_download(self, job_id: str, *, lease_seconds: float) -> Job | None:
        """Takes the right to download a job's video, so exactly one replica does it; None if another holds it."""
        now = self._clock()
        return await self._run(
            lambda: _claim_download(job_id, self.replica, now, lease_seconds), write="row", announce=(job_id,)
        )

    # --- leases: which replica drives a job -------------------------------------------------------------------

    async def acquire_lease(self, job_id: str, *, lease_seconds: float, dead: Sequence[str] = ()) -> Job | None:
        """Leases one unsettled job to this replica unless another live replica holds it; the job, or None."""
        now = self._clock()
        void, void_args = _lease_void(dead)
        row = await self._run(
            lambda: one(
                "UPDATE jobs SET lease_owner = ?, lease_until = ? WHERE job_id = ? "
                f"AND (lease_owner = ? OR {void}) AND {_UNSETTLED} RETURNING *",
                self.replica,
                now + lease_seconds,
                job_id,
                self.replica,
                now,
                *void_args,
                *_UNSETTLED_ARGS,
            ),
            write="row",
        )
        return row_to_job(row) if row is not None else None

    async def take_over(
        self, *, lease_seconds: float, limit: int, dead: Sequence[str] = (), own: bool = False
    ) -> list[Job]:
        """Leases unsettled jobs nobody holds (expired, or of a replica gone from this host) to this replica; with
        ``own``, also those this replica's name already holds (a restart under the same name). Replicas taking over
        at the same moment skip each other's rows (PostgreSQL ``SKIP LOCKED``) instead of waiting or both winning."""
        now = self._clock()
        void, void_args = _lease_void(dead)
        mine, mine_args = (" OR lease_owner = ?", (self.replica,)) if own else ("", ())
        found = await self._run(
            lambda: rows(
                "UPDATE jobs SET lease_owner = ?, lease_until = ? WHERE job_id IN (SELECT job_id FROM jobs "
                f"WHERE {_UNSETTLED} AND ({void}{mine}) ORDER BY created_at LIMIT ?{SKIP_LOCKED}) RETURNING *",
                self.replica,
                now + lease_seconds,
                *_UNSETTLED_ARGS,
                now,
                *void_args,
                *mine_args,
                limit,
            ),
            write="row",
        )
        return sorted((row_to_job(r) for r in found), key=lambda job: job.created_at)

    async def renew_leases(self, job_ids: Iterable[str], *, lease_seconds: float) -> set[str]:
        """Extends this replica's leases; the ids it still holds (a lease another replica took is gone)."""
        ids = list(job_ids)
        until = self._clock() + lease_seconds
        held: set[str] = set()
        for start in range(0, len(ids), _BATCH):
            batch = ids[start : start + _BATCH]
            # In id order, so two statements locking some of the same rows cannot deadlock each other.
            sql = (
                f"UPDATE jobs SET lease_until = ? WHERE job_id IN (SELECT job_id FROM jobs WHERE lease_owner = ? "
                f"AND job_id IN ({marks(batch)}) ORDER BY job_id{FOR_UPDATE}) RETURNING job_id"
            )
            found = await self._run(functools.partial(rows, sql, until, self.replica, *batch), write="row")
            held.update(str(r["job_id"]) for r in found)
        return held

    async def release_leases(self, job_ids: Iterable[str]) -> None:
        """Gives up this replica's leases on jobs it no longer drives (settled, or the replica is stopping)."""
        ids = sorted(job_ids)  # in id order, as renew_leases locks them
        for start in range(0, len(ids), _BATCH):
            batch = ids[start : start + _BATCH]
            sql = (
                "UPDATE jobs SET lease_owner = NULL, lease_until = NULL "
                f"WHERE lease_owner = ? AND job_id IN ({marks(batch)})"
            )
            await self._run(functools.partial(rows, sql, self.replica, *batch), write="row")

    async def lease_holders(self) -> list[str]:
        """Other replicas holding live leases on unsettled jobs (to tell which of them are gone)."""
        found = await self._run(
            lambda: rows(
                f"SELECT DISTINCT lease_owner FROM jobs WHERE lease_until >= ? AND lease_owner != ? AND {_UNSETTLED}",
                self._clock(),
                self.replica,
                *_UNSETTLED_ARGS,
            )
        )
        return [str(r["lease_owner"]) for r in found]
