"""pydantic-ai (slim, with its OpenAI Chat model): an ``MCPToolset`` in an ``Agent``'s toolsets.

The tools as pydantic-ai converts them are read from the first request the model receives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import common
from fake_model import FakeModel, ToolCall
from fastmcp.client.transports import StdioTransport
from pydantic_ai import Agent
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider


def toolset(transport: str, root: Path, url: str | None) -> MCPToolset[Any]:
    if transport == "http":
        return MCPToolset(url or "")
    command, argv = common.stdio_command()
    return MCPToolset(StdioTransport(command, argv, env=common.server_env(root)))


async def agent_run(
    tools: MCPToolset[Any], script: list[ToolCall]
) -> tuple[list[dict[str, Any]], BaseException | None]:
    with FakeModel(script) as fake:
        model = OpenAIChatModel("gpt-fake", provider=OpenAIProvider(base_url=fake.base_url + "/v1", api_key="sk-fake"))
        agent = Agent(model, toolsets=[tools])
        try:
            await agent.run("Make a short video.")
        except Exception as exc:
            return fake.requests, common.first_error(exc)
        return fake.requests, None


async def checks(report: common.Report, tools: MCPToolset[Any]) -> None:
    async with tools:
        requests, error = await agent_run(
            tools, [("generate_video", common.generate_args(f"pydantic-ai {report.transport}"))]
        )
        sent = [t.get("function", {}).get("name") for t in (requests[0]["body"].get("tools", []) if requests else [])]
        report.expect(
            "a tools",
            sorted(sent) == sorted(common.TOOL_NAMES),
            f"{len(sent)} tools sent to the model",
            f"tools sent to the model: {sent}"
            + (f"; {type(error).__name__}: {common.one_line(error)}" if error else ""),
        )
        common.judge_generate(report, common.seen_tool_result(requests, 0), error=error)
        requests, error = await agent_run(tools, common.ERROR_SCRIPT)
        common.judge_error_script(report, requests, error)


async def run(report: common.Report, root: Path) -> None:
    if report.transport == "http":
        with common.http_server(root) as url:
            await checks(report, toolset("http", root, url))
    else:
        await checks(report, toolset("stdio", root, None))


def main() -> None:
    common.main("pydantic-ai", run)


if __name__ == "__main__":
    main()
