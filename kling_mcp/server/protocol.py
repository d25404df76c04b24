"""Protocol methods MCPServer does not serve itself, and the capabilities that advertise them.

Legacy (handshake-era) clients subscribe to resources and set a log level with spec methods that MCPServer has no
handler for; ``LegacyMethods`` answers them as server middleware (a public SDK seam) and adds what they imply to
the advertised capabilities, including ``resources.listChanged``, which MCPServer leaves false on handshake
sessions although this server does send list changes. Completion uses MCPServer's own decorator.
"""

from __future__ import annotations

from typing import Any

from mcp.server import ServerRequestContext
from mcp.server.context import CallNext, HandlerResult
from mcp.server.mcpserver import MCPServer
from mcp.types import (
    Completion,
    CompletionArgument,
    CompletionContext,
    PromptReference,
    ResourceTemplateReference,
    SetLevelRequestParams,
    SubscribeRequestParams,
    UnsubscribeRequestParams,
)

from kling_mcp.server.owners import owner_of
from kling_mcp.server.results import REMOTE_CALLER
from kling_mcp.server.state import AppState, StateRef

COMPLETION_MAX = 100
COMPLETION_SCAN = 200

# Merged into the advertised capabilities: what the handlers below serve, per handshake method.
_CAPABILITIES: dict[str, dict[str, Any]] = {
    "initialize": {"resources": {"subscribe": True, "listChanged": True}, "logging": {}},
    "server/discover": {"resources": {"subscribe": True}, "logging": {}},
}


_HANDSHAKE = frozenset({"initialize", "ping"})


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _subscriptions(ctx: ServerRequestContext[AppState, Any]) -> set[str]:
    return ctx.lifespan_context.notifier.remember(ctx.session, owner_of(ctx))


def _subscribe(ctx: ServerRequestContext[AppState, Any]) -> None:
    _subscriptions(ctx).add(str(SubscribeRequestParams.model_validate(ctx.params or {}).uri))


def _unsubscribe(ctx: ServerRequestContext[AppState, Any]) -> None:
    _subscriptions(ctx).discard(str(UnsubscribeRequestParams.model_validate(ctx.params or {}).uri))


def _set_level(ctx: ServerRequestContext[AppState, Any]) -> None:
    # The level is this session's: it decides which job messages this client is sent (notify.py). The server's own
    # stderr log stays at KLING_MCP_LOG_LEVEL whoever asks, so one client cannot silence or flood it for others.
    level = SetLevelRequestParams.model_validate(ctx.params or {}).level
    ctx.lifespan_context.notifier.set_level(ctx.session, owner_of(ctx), level)


_HANDLERS = {
    "resources/subscribe": _subscribe,
    "resources/unsubscribe": _unsubscribe,
    "logging/setLevel": _set_level,
}


class CallerKind:
    """Server middleware: a request that came over HTTP is a remote caller's (``results.REMOTE_CALLER``).

    Any HTTP caller counts as remote, loopback ones included: a client on the same machine speaking HTTP may still
    be another user. stdio and in-memory callers run where the server's files are, and see their full paths.
    """

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        token = REMOTE_CALLER.set(ctx.request is not None)
        try:
            return await call_next(ctx)
        finally:
            REMOTE_CALLER.reset(token)


class LegacyMethods:
    """Server middleware: answers the legacy methods above and advertises them; starts the core after the handshake."""

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        handler = _HANDLERS.get(ctx.method)
        if handler is not None and ctx.request_id is not None:
            handler(ctx)
            return {}
        result = await call_next(ctx)
        if ctx.request_id is not None and ctx.method not in _HANDSHAKE and isinstance(ctx.lifespan_context, AppState):
            ctx.lifespan_context.startup.want()  # the handshake is answered: the core may start now
        extra = _CAPABILITIES.get(ctx.method)
        if extra is not None and isinstance(result, dict) and isinstance(result.get("capabilities"), dict):
            _merge(result["capabilities"], extra)
        return result


def register_completion(server: MCPServer[AppState], state_ref: StateRef) -> None:
    """Completes ``request_id`` arguments with the ids of the caller's recent jobs."""

    @server.completion()  # type: ignore[no-untyped-call,untyped-decorator]  # the SDK leaves it unannotated
    async def complete(
        ref: PromptReference | ResourceTemplateReference,
        argument: CompletionArgument,
        context: CompletionContext | None,
    ) -> Completion:
        values: list[str] = []
        if argument.name == "request_id":
            # The completion handler gets no request context: the owner comes from the request's auth context.
            runtime = await state_ref.runtime()
            jobs = await runtime.store.recent(owner=owner_of(), limit=COMPLETION_SCAN)
            values = [j.id for j in jobs if j.id.startswith(argument.value)][:COMPLETION_MAX]
        return Completion(values=values, total=len(values), has_more=False)
