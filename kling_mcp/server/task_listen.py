"""``notifications/tasks`` on ``subscriptions/listen`` streams that name ``taskIds`` (the Tasks extension).

The SDK's listen handler serves the spec's event kinds only, and ``subscriptions/listen`` is a spec method an
extension cannot bind, so this is server middleware (a public seam): a listen request naming ``taskIds`` is served
here, with the spec's kinds it also asks for delivered as the SDK would (its public ``event_matches`` and
``event_to_notification``). Every other listen request goes on to the SDK untouched.

A task's notification is sent when the stream opens and whenever its job changes (the job's resource-updated event
on the owner's bus), each carrying the whole task as ``tasks/get`` would return it. Only the caller's own tasks are
honoured: another owner's id is left out of the acknowledgement like an unknown one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio
from mcp.server import ServerRequestContext
from mcp.server.context import CallNext, HandlerResult
from mcp.server.mcpserver import require_client_extension
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import SUBSCRIPTION_ID_META_KEY, ResourceUpdated, event_matches, event_to_notification
from mcp.types import (
    INVALID_PARAMS,
    Notification,
    SubscriptionFilter,
    SubscriptionsAcknowledgedNotification,
    SubscriptionsAcknowledgedNotificationParams,
    SubscriptionsListenRequestParams,
    SubscriptionsListenResult,
)
from pydantic import ValidationError

from kling_mcp.server.notify import OwnerBus
from kling_mcp.server.owners import owner_of
from kling_mcp.server.state import AppState
from kling_mcp.server.tasks import EXTENSION, detailed_task, owned_job
from kling_mcp.server.uris import job_uri

if TYPE_CHECKING:
    from mcp.server.subscriptions import ServerEvent

    from kling_mcp.runtime import Runtime

log = logging.getLogger("kling_mcp")

MAX_TASK_IDS: Final = 100
BACKLOG: Final = 1024  # events a stream buffers for a client that reads slowly; past it the stream ends


class TaskNotification(Notification[dict[str, Any], Literal["notifications/tasks"]]):
    method: Literal["notifications/tasks"] = "notifications/tasks"


def _task_ids(params: SubscriptionsListenRequestParams) -> list[str] | None:
    ids = (params.notifications.model_extra or {}).get("taskIds")
    if ids is None:
        return None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or len(ids) > MAX_TASK_IDS:
        raise MCPError(
            code=INVALID_PARAMS, message=f"notifications.taskIds must be a list of at most {MAX_TASK_IDS} task ids"
        )
    return list(dict.fromkeys(ids))


class TaskListen:
    """Server middleware: serves the listen requests that name ``taskIds``."""

    def __init__(self, bus: OwnerBus) -> None:
        self._bus = bus

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method != "subscriptions/listen" or ctx.request_id is None:
            return await call_next(ctx)
        try:
            params = SubscriptionsListenRequestParams.model_validate(ctx.params or {})
        except ValidationError:
            return await call_next(ctx)  # the SDK says what is wrong with it
        task_ids = _task_ids(params)
        if task_ids is None:
            return await call_next(ctx)
        require_client_extension(ctx, EXTENSION)
        return await self._serve(ctx, params.notifications, task_ids)

    async def _serve(
        self, ctx: ServerRequestContext[AppState, Any], wanted: SubscriptionFilter, task_ids: list[str]
    ) -> HandlerResult:
        runtime = await ctx.lifespan_context.runtime()
        owner = owner_of(ctx)
        jobs = {}
        for task_id in task_ids:
            try:
                job = await owned_job(runtime, task_id, owner)
            except MCPError:
                continue  # unknown, or another owner's: not honoured
            jobs[job_uri(job.id)] = job.id
        honored = wanted.model_copy(update={"taskIds": list(jobs.values())})
        uris = frozenset(wanted.resource_subscriptions or ())
        meta: dict[str, Any] = {SUBSCRIPTION_ID_META_KEY: ctx.request_id}
        send, recv = anyio.create_memory_object_stream["ServerEvent"](BACKLOG)

        def deliver(event: ServerEvent) -> None:
            try:
                send.send_nowait(event)
            except anyio.WouldBlock:
                log.warning("task listen stream %r backlog full; ending the stream", ctx.request_id)
                send.close()
            except anyio.ClosedResourceError:
                pass

        unsubscribe = self._bus.subscribe(deliver)  # before the ack, so nothing published meanwhile is lost
        try:
            ack = SubscriptionsAcknowledgedNotificationParams(notifications=honored, _meta=meta)
            await ctx.session.send_notification(
                SubscriptionsAcknowledgedNotification(params=ack), related_request_id=ctx.request_id
            )
            for task_id in jobs.values():
                await self._send_task(ctx, runtime, task_id, owner, meta)
            async for event in recv:
                if isinstance(event, ResourceUpdated) and event.uri in jobs:
                    await self._send_task(ctx, runtime, jobs[event.uri], owner, meta)
                elif event_matches(wanted, uris, event):
                    await ctx.session.send_notification(
                        event_to_notification(event, meta), related_request_id=ctx.request_id
                    )
        finally:
            unsubscribe()
            send.close()
            recv.close()
        return SubscriptionsListenResult(_meta=meta)

    async def _send_task(
        self, ctx: ServerRequestContext[Any, Any], runtime: Runtime, task_id: str, owner: str, meta: dict[str, Any]
    ) -> None:
        task = await detailed_task(await owned_job(runtime, task_id, owner), runtime)
        note = TaskNotification(params={**task, "_meta": meta})
        await ctx.session.send_notification(note, related_request_id=ctx.request_id)  # type: ignore[arg-type]
