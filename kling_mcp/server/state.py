"""What every handler reaches: the running core and the notifier, for the lifetime of the server."""

from __future__ import annotations

from dataclasses import dataclass

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

from kling_mcp.runtime import Runtime
from kling_mcp.server.notify import Notifier


@dataclass(frozen=True)
class AppState:
    runtime: Runtime
    notifier: Notifier


@dataclass
class StateRef:
    """The running core, for handlers the SDK calls without a request context (static resources, completion)."""

    current: AppState | None = None

    def get(self) -> AppState:
        if self.current is None:
            raise ToolError("The server is starting or stopping; try again.")
        return self.current


def state_of(ctx: Context[AppState]) -> AppState:
    """The core, for a handler; remembers a legacy caller's session so it can be notified later."""
    state = ctx.request_context.lifespan_context
    state.notifier.remember(ctx.session)
    return state
