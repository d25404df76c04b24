"""Leases: which replica drives a job. MCP-agnostic.

Each unsettled job is driven (polled, retried on ERROR, downloaded) by exactly one replica at a time: the one whose
lease on it in the ledger is still ahead. A replica renews the leases of the jobs it drives (and submits) every
third of the lease; when a replica stops renewing (killed, cut off), another takes its jobs over once the lease has
passed, or at once when the holder was a process on this host that no longer runs. A job taken over in
``submitting`` was cut off mid-submit: it is recorded ``unknown``, never submitted again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

import anyio

from kling_mcp.models import Job
from kling_mcp.store import Ledger, owner_is_dead

log = logging.getLogger(__name__)

TAKE_OVER_BATCH: Final = 200  # jobs per takeover statement, so one replica's restart never locks the whole ledger
MIN_SCAN_S: Final = 0.05
RELEASE_S: Final = 5.0  # how long a stopping replica spends giving its leases back

Adopt = Callable[[Job], Awaitable[None]]


class Leases:
    def __init__(
        self, store: Ledger, lease_seconds: float, *, scan_interval: float, clock: Callable[[], float]
    ) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.scan_interval = max(MIN_SCAN_S, min(lease_seconds / 3, scan_interval))
        self._clock = clock
        self._held: set[str] = set()  # jobs this replica drives or submits, whose leases it renews
        self._lost: dict[str, anyio.CancelScope] = {}  # job id -> the scope its driver stops with if the lease goes

    @property
    def me(self) -> str:
        return self.store.replica

    def held_elsewhere(self, job: Job) -> bool:
        """Another live replica drives this job (as far as this copy of its row knows)."""
        if job.lease_owner in (None, self.me) or job.lease_until is None:
            return False
        return job.lease_until >= self._clock() and not owner_is_dead(job.lease_owner)

    def hold(self, job_id: str, scope: anyio.CancelScope | None = None) -> None:
        self._held.add(job_id)
        if scope is not None:
            self._lost[job_id] = scope

    def drop(self, job_id: str) -> None:
        """Stops renewing: the lease lapses by itself (another replica, or this one, may take the job later)."""
        self._held.discard(job_id)
        self._lost.pop(job_id, None)

    async def acquire(self, job_id: str) -> Job | None:
        """Leases the job to this replica unless another live one holds it."""
        if job_id in self._held:
            return await self.store.get(job_id)
        return await self.store.acquire_lease(job_id, lease_seconds=self.lease_seconds, dead=await self._dead())

    async def drive(self, job_id: str, run: Callable[[str], Awaitable[Job | None]]) -> None:
        """Runs the job's driver (``run``, which returns the job as it left it) while this replica holds the job's
        lease, and stops it when the lease goes to another replica; nothing when another live replica holds it."""
        if await self.acquire(job_id) is None:
            return
        job: Job | None = None
        with anyio.CancelScope() as lost:
            self.hold(job_id, lost)
            try:
                job = await run(job_id)
            finally:
                with anyio.CancelScope(shield=True):
                    await self.leave(job_id, job)

    async def leave(self, job_id: str, job: Job | None) -> None:
        """A settled job's lease is given back; any other lapses by itself, which is a pause before a retry."""
        self.drop(job_id)
        if job is not None and job.settled:
            try:
                await self.store.release_leases([job_id])
            except Exception:  # it lapses by itself
                log.exception("releasing the lease of %s failed", job_id)

    def held(self) -> frozenset[str]:
        return frozenset(self._held)

    async def release(self, job_ids: frozenset[str]) -> None:
        """Gives the leases back when the replica stops, so another (or this one restarted) takes the jobs over at
        once instead of after the lease. Bounded: what is not released in time lapses by itself."""
        if not job_ids:
            return
        with anyio.move_on_after(RELEASE_S, shield=True):
            try:
                await self.store.release_leases(job_ids)
            except Exception:  # they lapse by themselves
                log.exception("giving back %d leases on the way out failed", len(job_ids))

    async def _dead(self) -> list[str]:
        return [owner for owner in await self.store.lease_holders() if owner_is_dead(owner)]

    async def take_over(self, adopt: Adopt, *, own: bool = False) -> int:
        """Leases every job nobody holds to this replica and hands each to ``adopt``; how many were taken."""
        taken = 0
        dead = await self._dead()
        while batch := await self.store.take_over(
            lease_seconds=self.lease_seconds, limit=TAKE_OVER_BATCH, dead=dead, own=own
        ):
            for job in batch:
                await adopt(job)
            taken += len(batch)
            if len(batch) < TAKE_OVER_BATCH:
                break
        if taken:
            log.info("replica %s took over %d jobs", self.me, taken)
        return taken

    async def keep(self, adopt: Adopt) -> None:
        """Renews this replica's leases and takes over lapsed ones, for as long as the engine runs."""
        next_renewal = 0.0
        while True:
            await anyio.sleep(self.scan_interval)
            try:
                if anyio.current_time() >= next_renewal:
                    next_renewal = anyio.current_time() + self.lease_seconds / 3
                    await self._renew()
                await self.take_over(adopt)
            except Exception:  # the ledger may be briefly unreachable; leases last long enough for the next round
                log.exception("renewing or taking over leases failed")

    async def _renew(self) -> None:
        held = set(self._held)
        if not held:
            return
        kept = await self.store.renew_leases(held, lease_seconds=self.lease_seconds)
        for job_id in held - kept:
            # Another replica took the job (this one was too slow to renew): stop driving it here.
            log.warning("replica %s lost the lease of %s; another replica drives it now", self.me, job_id)
            scope = self._lost.pop(job_id, None)
            self._held.discard(job_id)
            if scope is not None:
                scope.cancel()
