"""The SDK behaviour kling_mcp.server.sdk and the public seams rely on. A failure here means the mcp SDK changed
underneath: read the message, then fix the adapter (kling_mcp/server/sdk.py) rather than the callers."""

from __future__ import annotations

from typing import Any

import pytest
from mcp import Client
from mcp.server.mcpserver import Context, MCPServer

from kling_mcp.server import sdk

pytestmark = pytest.mark.anyio


def _recording_server(keys: list[int]) -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("seams")

    @server.tool()
    async def record(ctx: Context[Any]) -> str:
        keys.append(sdk.connection_key(ctx.session))
        return "ok"

    return server


async def test_connection_key_is_stable_per_connection_and_distinct_between_connections() -> None:
    keys: list[int] = []
    server = _recording_server(keys)
    async with Client(server, mode="legacy") as first:
        await first.call_tool("record", {})
        await first.call_tool("record", {})
        async with Client(server, mode="legacy") as second:
            await second.call_tool("record", {})
    assert len(keys) == 3
    assert keys[0] == keys[1], (
        "two requests of one legacy connection gave different keys: ServerSession no longer wraps one connection "
        "object (mcp SDK change); fix kling_mcp/server/sdk.py"
    )
    assert keys[2] != keys[0], "two connections share a key: fix kling_mcp/server/sdk.py"


async def test_on_close_runs_once_the_connection_closes() -> None:
    closed: list[str] = []
    server: MCPServer[Any] = MCPServer("seams")

    @server.tool()
    async def hook(ctx: Context[Any]) -> str:
        sdk.on_close(ctx.session, lambda: closed.append("closed"))
        return "ok"

    async with Client(server, mode="legacy") as client:
        await client.call_tool("hook", {})
        assert closed == [], "a connection's teardown ran while it was open: fix kling_mcp/server/sdk.py"
    assert closed == ["closed"], (
        "closing a legacy connection no longer unwinds Connection.exit_stack (mcp SDK change): legacy sessions "
        "would never be forgotten; fix kling_mcp/server/sdk.py"
    )
