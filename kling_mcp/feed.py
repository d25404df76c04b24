"""Other replicas' news of jobs, for this replica's waiters, resources and notifications. MCP-agnostic.

Two paths, because either alone falls short: PostgreSQL's ``LISTEN/NOTIFY`` (every change announces its job in its
own transaction) delivers within milliseconds but loses what happens while its connection is down; reading the
ledger's changes (``updated_at``) every interval misses nothing but is only as quick as its interval. On SQLite the
second path is all there is. A change this replica made itself, or already delivered, is not delivered again.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import anyio
import anyio.abc

from kling_mcp.models import Job
from kling_mcp.store import Ledger

log = logging.getLogger(__name__)

# Replicas stamp changes with their own clocks: a change stamped up to this much before the last one read is still
# found. Replicas' clocks must agree to within it (NTP does far better).
CLOCK_SKEW_S: Final = 2.0
MAX_INTERVAL_S: Final = 1.0
BATCH: Final = 1000


class Feed:
    def __init__(
        self,
        store: Ledger,
        *,
        interval: float,
        on_change: Callable[[Job], Awaitable[None]],
        on_ring: Callable[[str], Awaitable[None]],
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.interval = min(MAX_INTERVAL_S, interval)
        self._on_change = on_change
        self._on_ring = on_ring
        self._clock = clock
        self._seen: dict[str, float] = {}  # job id -> the newest updated_at delivered (or written here)

    def seen(self, job: Job) -> None:
        """A change this replica made or delivered: not news when the ledger shows it again."""
        if job.updated_at > self._seen.get(job.job_id, float("-inf")):
            self._seen[job.job_id] = job.updated_at

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follows other replicas' changes; started once the bus (if any) is listening, so no change after the
        engine starts goes unheard."""
        listening = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(self.store.listen, self._announced, self._on_ring, ready=listening.set))
            await listening.wait()
            task_status.started()
            await self._follow_ledger()

    async def _announced(self, job_id: str) -> None:
        await self._deliver(job_id, None)

    async def _deliver(self, job_id: str, updated_at: float | None) -> None:
        if updated_at is not None and updated_at <= self._seen.get(job_id, float("-inf")):
            return  # known already: no ledger read
        try:
            job = await self.store.get(job_id)
        except Exception:  # the ledger poll delivers it later
            log.exception("reading changed job %s failed", job_id)
            return
        if job.updated_at <= self._seen.get(job_id, float("-inf")):
            return
        self.seen(job)
        await self._on_change(job)

    async def _follow_ledger(self) -> None:
        newest = self._clock()
        while True:
            await anyio.sleep(self.interval)
            cursor = newest - CLOCK_SKEW_S
            try:
                while True:
                    changed = await self.store.changes_since(cursor, limit=BATCH)
                    for job_id, updated_at in changed:
                        await self._deliver(job_id, updated_at)
                    if changed:
                        newest = max(newest, changed[-1][1])
                    if len(changed) < BATCH:
                        break
                    cursor = changed[-1][1]  # a full batch: read on from its last change
            except Exception:  # the ledger may be briefly unreachable; the next round reads from the same point
                log.exception("reading the ledger's changes failed")
            self._forget_before(newest - 2 * CLOCK_SKEW_S)

    def _forget_before(self, cutoff: float) -> None:
        if len(self._seen) > BATCH:
            self._seen = {job_id: at for job_id, at in self._seen.items() if at >= cutoff}
