"""Job changes fanned out to clients of both protocol eras, each told only of its owner's jobs.

2026 clients listen on the subscription bus; legacy (handshake) clients get notifications on their session, for
the URIs they subscribed to and for list changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from mcp.server.session import ServerSession
from mcp.server.subscriptions import ResourcesListChanged, ResourceUpdated, ServerEvent
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

from kling_mcp.models import Job
from kling_mcp.server import sdk
from kling_mcp.server.owners import owner_of
from kling_mcp.server.uris import job_uri

log = logging.getLogger("kling_mcp")


class OwnerBus:
    """The subscription bus, by owner: a listen stream gets the events of its owner's jobs only.

    The SDK's listen handler subscribes from the listen request's own handler, so the request's auth context names
    the stream's owner then. ``publish`` (what the SDK's ``ctx.notify_*`` calls) still reaches every stream.
    """

    def __init__(self) -> None:
        self._listeners: dict[object, tuple[str, Callable[[ServerEvent], None]]] = {}

    async def publish(self, event: ServerEvent) -> None:
        self._deliver(None, event)

    async def publish_to(self, owner: str, event: ServerEvent) -> None:
        self._deliver(owner, event)

    def _deliver(self, owner: str | None, event: ServerEvent) -> None:
        for listener_owner, listener in list(self._listeners.values()):
            if owner is not None and listener_owner != owner:
                continue
            try:
                listener(event)
            except Exception:  # one broken stream must not keep the event from the others
                log.exception("subscription listener raised; continuing")

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        token = object()
        self._listeners[token] = (owner_of(), listener)

        def unsubscribe() -> None:
            self._listeners.pop(token, None)

        return unsubscribe


@dataclass
class Notifier:
    bus: OwnerBus
    legacy: dict[int, tuple[ServerSession, set[str]]] = field(default_factory=dict)
    owners: dict[int, str] = field(default_factory=dict)  # a legacy connection's owner, set on each of its requests
    _seen: set[str] = field(default_factory=set)

    def remember(self, session: ServerSession, owner: str) -> set[str]:
        """The URIs a legacy session subscribed to (a fresh set for a new one); modern sessions have none."""
        if session.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return set()
        key = sdk.connection_key(session)
        self.owners[key] = owner
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
        await self.bus.publish_to(job.owner, ResourceUpdated(uri=uri))
        if listed:
            await self.bus.publish_to(job.owner, ResourcesListChanged())
        for key, (session, uris) in list(self.legacy.items()):
            if self.owners.get(key) != job.owner:
                continue
            try:
                if uri in uris or (job.job_id != job.id and job_uri(job.job_id) in uris):
                    await session.send_resource_updated(uri)
                if listed:
                    await session.send_resource_list_changed()
            except Exception:  # best effort: a gone client must not disturb the job
                log.debug("legacy notification failed", exc_info=True)
