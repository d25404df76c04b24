"""Job changes fanned out to clients of both protocol eras, each told only of its owner's jobs.

2026 clients listen on the subscription bus; legacy (handshake) clients get notifications on their session, for
the URIs they subscribed to and for list changes, and, once they have sent ``logging/setLevel``, log messages
(``notifications/message``) about jobs at that level and above. A legacy session is forgotten when its connection
closes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, get_args

from mcp.server.session import ServerSession
from mcp.server.subscriptions import ResourcesListChanged, ResourceUpdated, ServerEvent
from mcp.types import LoggingLevel, LoggingMessageNotification, LoggingMessageNotificationParams
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

from kling_mcp.models import GATEWAY_FAILED, Job
from kling_mcp.server import sdk
from kling_mcp.server.owners import owner_of
from kling_mcp.server.uris import job_uri

log = logging.getLogger("kling_mcp")

LOG_LEVELS: Final[tuple[LoggingLevel, ...]] = get_args(LoggingLevel)  # severity ascending (RFC 5424)
LOG_TEXT_MAX_CHARS = 400
JOB_LOGGER = "kling_mcp.jobs"


def news_of(job: Job, before: tuple[str, int, str] | None) -> tuple[LoggingLevel, str] | None:
    """What a client's log hears of this change: (level, text), or None when nothing it would notice changed."""
    if job.status == "submitting" or before == (job.status, job.attempts, job.download_state):
        return None
    if job.status in GATEWAY_FAILED:
        return "error", f"Job {job.id} ended {job.status.upper()}: {job.error or 'no detail'}"[:LOG_TEXT_MAX_CHARS]
    if job.status == "unknown":
        return "warning", f"Job {job.id}: outcome unknown. {job.error or ''}"[:LOG_TEXT_MAX_CHARS]
    if before is not None and job.attempts > before[1] > 0:
        return "warning", f"Job {job.id}: attempt {before[1]} ended ERROR (not charged); resubmitted"
    if job.status == "completed" and job.download_state == "failed":
        return "warning", f"Job {job.id} completed; its download failed: {job.download_error}"[:LOG_TEXT_MAX_CHARS]
    if job.status == "completed":
        saved = {"done": " and saved", "off": ""}.get(job.download_state, ", downloading the video")
        return "info", f"Job {job.id} completed{saved}"
    return "info", f"Job {job.id} is {job.status}"


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
    levels: dict[int, LoggingLevel] = field(default_factory=dict)  # connection key -> the level it asked for
    _seen: set[str] = field(default_factory=set)
    _said: dict[str, tuple[str, int, str]] = field(default_factory=dict)  # job id -> what news_of last saw

    def remember(self, session: ServerSession, owner: str) -> set[str]:
        """The URIs a legacy session subscribed to (a fresh set for a new one); modern sessions have none."""
        if session.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return set()
        key = sdk.connection_key(session)
        self.owners[key] = owner
        entry = self.legacy.get(key)
        if entry is None:
            entry = self.legacy[key] = (session, set())
            sdk.on_close(session, lambda: self.forget(key))
        return entry[1]

    def forget(self, key: int) -> None:
        """A legacy connection closed: nothing more is sent to it (and its key may name a new one later)."""
        self.legacy.pop(key, None)
        self.levels.pop(key, None)
        self.owners.pop(key, None)

    def set_level(self, session: ServerSession, owner: str, level: LoggingLevel) -> None:
        """This session's log level (``logging/setLevel``); other sessions and the server's own log keep theirs."""
        if session.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return  # 2026 clients opt in per request; there is no session to keep a level on
        self.remember(session, owner)
        self.levels[sdk.connection_key(session)] = level

    def _hears(self, key: int, level: LoggingLevel) -> bool:
        wanted = self.levels.get(key)
        return wanted is not None and LOG_LEVELS.index(level) >= LOG_LEVELS.index(wanted)

    async def on_job(self, job: Job) -> None:
        """The engine's listener: a new job (or a resubmitted one) also changes the list."""
        listed = job.job_id not in self._seen or (job.status == "queued" and job.attempts == 1)
        if job.settled:  # nothing more comes by itself: a long-running server keeps no state per finished job
            self._seen.discard(job.job_id)
        else:
            self._seen.add(job.job_id)
        await self.job_changed(job, listed=listed)

    def _news(self, job: Job) -> tuple[LoggingLevel, str] | None:
        news = news_of(job, self._said.get(job.job_id))
        if job.settled:
            self._said.pop(job.job_id, None)  # nothing more comes by itself: keep no state for it
        else:
            self._said[job.job_id] = (job.status, job.attempts, job.download_state)
        return news

    async def job_changed(self, job: Job, *, listed: bool) -> None:
        uri = job_uri(job.id)
        await self.bus.publish_to(job.owner, ResourceUpdated(uri=uri))
        if listed:
            await self.bus.publish_to(job.owner, ResourcesListChanged())
        news = self._news(job)
        for key, (session, uris) in list(self.legacy.items()):
            if self.owners.get(key) != job.owner:
                continue
            try:
                if uri in uris or (job.job_id != job.id and job_uri(job.job_id) in uris):
                    await session.send_resource_updated(uri)
                if listed:
                    await session.send_resource_list_changed()
                if news is not None and self._hears(key, news[0]):
                    await session.send_notification(_log_message(job, *news))
            except Exception:  # best effort: a gone client must not disturb the job
                log.debug("legacy notification failed", exc_info=True)


def _log_message(job: Job, level: LoggingLevel, text: str) -> LoggingMessageNotification:
    # send_notification, not the deprecated send_log_message: the same message, without a warning per call.
    data = {"message": text, "request_id": job.id, "status": job.status}
    return LoggingMessageNotification(
        params=LoggingMessageNotificationParams(level=level, data=data, logger=JOB_LOGGER)
    )
