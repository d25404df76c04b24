"""Job changes fanned out to clients of both protocol eras.

2026 clients listen on the subscription bus; legacy (handshake) clients get notifications on their session, for
the URIs they subscribed to and for list changes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourcesListChanged, ResourceUpdated
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

from kling_mcp.models import Job
from kling_mcp.server import sdk
from kling_mcp.server.uris import job_uri

log = logging.getLogger("kling_mcp")


@dataclass
class Notifier:
    bus: InMemorySubscriptionBus
    legacy: dict[int, tuple[ServerSession, set[str]]] = field(default_factory=dict)
    _seen: set[str] = field(default_factory=set)

    def remember(self, session: ServerSession) -> set[str]:
        """The URIs a legacy session subscribed to (a fresh set for a new one); modern sessions have none."""
        if session.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return set()
        key = sdk.connection_key(session)
        entry = self.legacy.get(key)
        if entry is None:
            entry = self.legacy[key] = (session, set())
        return entry[1]

    async def on_job(self, job: Job) -> None:
        """The engine's listener: a new job (or a resubmitted one) also changes the list."""
        listed = job.job_id not in self._seen or (job.status == "queued" and job.attempts == 1)
        self._seen.add(job.job_id)
        await self.job_changed(job, listed=listed)

    async def job_changed(self, job: Job, *, listed: bool) -> None:
        uri = job_uri(job.id)
        await self.bus.publish(ResourceUpdated(uri=uri))
        if listed:
            await self.bus.publish(ResourcesListChanged())
        for session, uris in list(self.legacy.values()):
            try:
                if uri in uris or (job.job_id != job.id and job_uri(job.job_id) in uris):
                    await session.send_resource_updated(uri)
                if listed:
                    await session.send_resource_list_changed()
            except Exception:  # best effort: a gone client must not disturb the job
                log.debug("legacy notification failed", exc_info=True)
