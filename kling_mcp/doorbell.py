"""Webhooks as doorbells: a post only makes a job's driver poll the gateway now. MCP-agnostic.

Nothing in a webhook body is applied: anyone holding the URL could forge it. The engine polls the gateway and applies
that answer as it applies any poll, so a post can neither move a job backwards nor make it resubmit
(docs/pixazo-contract.md §9).
"""

from __future__ import annotations

from typing import Final

import anyio

# Polls that rings ask for are at least this far apart per job, so a flood of posts to one URL is not a flood of polls.
MIN_GAP_S: Final = 1.0
# A post is answered once its poll is done, or after this long with the poll still to come.
WAIT_S: Final = 4.0
# A doorbell poll that finds nothing new is repeated once this much later, in case the gateway's status route lags
# its own webhook.
FOLLOW_UP_S: Final = 2.0


class Doorbells:
    """The rung and not yet answered doorbell of each job, and when each job's last one was answered."""

    def __init__(self) -> None:
        self._rung: dict[str, anyio.Event] = {}  # job id -> set once the poll the ring asked for is done
        self._last: dict[str, float] = {}  # job id -> when its last doorbell poll began (anyio's clock)

    def ring(self, job_id: str) -> anyio.Event:
        """Asks for a poll of the job; the event is set once it is done. Rings before that poll begins share it."""
        return self._rung.setdefault(job_id, anyio.Event())

    def rung(self, job_id: str) -> bool:
        return job_id in self._rung

    async def take(self, job_id: str) -> anyio.Event | None:
        """For the driver, before it polls: the ring it answers (None if none), once the gap since the last allows."""
        if job_id not in self._rung:
            return None
        last = self._last.get(job_id)
        if last is not None:
            await anyio.sleep(max(0.0, last + MIN_GAP_S - anyio.current_time()))
        self._last[job_id] = anyio.current_time()
        # A ring from now on comes after this poll began, so it gets a poll of its own.
        return self._rung.pop(job_id)

    def forget(self, job_id: str) -> None:
        """The job's driver stopped: no poll is coming, so a waiting post is answered now."""
        self._last.pop(job_id, None)
        answered = self._rung.pop(job_id, None)
        if answered is not None:
            answered.set()
