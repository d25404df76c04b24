"""``build_server``: the MCP server wired to the core, with a lifespan that starts the core once per process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.types import CallToolResult, InputRequiredResult
from pydantic import ValidationError

from kling_mcp import __version__, limits
from kling_mcp.config import Settings
from kling_mcp.server.http import auth_options, register_routes
from kling_mcp.server.notify import Notifier, OwnerBus
from kling_mcp.server.player import Player, tool_meta
from kling_mcp.server.protocol import CallerKind, LegacyMethods, register_completion
from kling_mcp.server.resources import BlobReads, register_resources
from kling_mcp.server.schema import drop_null_optionals, explain_validation, shape_tool
from kling_mcp.server.state import AppState, Startup, StateRef
from kling_mcp.server.task_listen import TaskListen
from kling_mcp.server.tasks import Tasks
from kling_mcp.server.tools import TOOLS


class KlingServer(MCPServer[AppState]):
    """MCPServer whose argument-validation errors name the field, the limit, the value and the fix."""

    def __init__(self, *args: Any, tools: list[Tool], **kwargs: Any) -> None:
        super().__init__(*args, tools=tools, **kwargs)
        self._listed = {tool.name: tool for tool in tools}

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[AppState, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        listed = self._listed.get(name)
        if listed is not None:
            arguments = drop_null_optionals(listed.parameters, arguments)
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(cause, ValidationError):
                raise ToolError(explain_validation(listed, name, cause)) from cause
            raise


def instructions_for(settings: Settings) -> str:
    mode = (
        "LIVE: every generation is a paid request to the Pixazo gateway."
        if settings.live
        else "SANDBOX: no API key, so a local sandbox gateway renders placeholder videos; nothing is charged."
    )
    return (
        f"Kling Video 3 Turbo Pro via Pixazo. {mode} Clips are {limits.DURATION_MIN_S}-{limits.DURATION_MAX_S} s; "
        "a generation takes about 1-3 minutes. Tools wait up to wait_seconds, then return the job still running "
        "with the exact check_status call to make next; jobs are never lost when a call ends. Results carry "
        "media_url, local_path and the job resource kling://jobs/{request_id}."
    )


def _tools() -> list[Tool]:
    return [
        shape_tool(
            Tool.from_function(
                spec.fn, title=spec.title, annotations=spec.annotations, meta=tool_meta(spec.fn.__name__)
            )
        )
        for spec in TOOLS
    ]


def build_server(settings: Settings, *, transport: httpx2.AsyncBaseTransport | None = None) -> KlingServer:
    """A fully wired kling-mcp server. The lifespan starts the core once per process (per Client in memory).

    ``transport`` replaces the network (an ASGI app in tests).
    """
    bus = OwnerBus()
    state_ref = StateRef()
    player = Player(settings, state_ref)

    @asynccontextmanager
    async def lifespan(_: MCPServer[AppState]) -> AsyncIterator[AppState]:
        notifier = Notifier(bus=bus)
        startup = Startup()
        async with anyio.create_task_group() as tg:
            tg.start_soon(startup.run, settings, notifier, transport)
            state_ref.current = AppState(settings=settings, notifier=notifier, startup=startup)
            try:
                yield state_ref.current
            finally:
                state_ref.current = None
                startup.stop()

    server = KlingServer(
        "kling-mcp",
        title="Kling Video (Pixazo)",
        version=__version__,
        instructions=instructions_for(settings),
        log_level=settings.log_level,
        lifespan=lifespan,
        subscriptions=bus,
        tools=_tools(),
        middleware=[CallerKind(), LegacyMethods(), BlobReads(), player.gate, TaskListen(bus)],
        extensions=[player.extension, Tasks()],
        **auth_options(settings),
    )
    register_routes(server, state_ref, settings)
    player.register_routes(server)
    register_resources(server, state_ref)
    register_completion(server, state_ref)
    return server
