"""mcp-use 1.7: ``MCPAgent`` (LangChain underneath) with ``ChatOpenAI`` pointed at the fake model."""

from __future__ import annotations

import os

os.environ["MCP_USE_ANONYMIZED_TELEMETRY"] = "false"  # its telemetry would post to a remote gateway

from pathlib import Path
from typing import Any

import common
from fake_model import FakeModel, ToolCall
from langchain_openai import ChatOpenAI
from mcp_use import MCPAgent, MCPClient


def config(transport: str, root: Path, url: str | None) -> dict[str, Any]:
    if transport == "http":
        return {"mcpServers": {"kling": {"url": url}}}
    command, argv = common.stdio_command()
    return {"mcpServers": {"kling": {"command": command, "args": argv, "env": common.server_env(root)}}}


async def agent_run(cfg: dict[str, Any], script: list[ToolCall]) -> tuple[list[dict[str, Any]], BaseException | None]:
    with FakeModel(script) as fake:
        llm = ChatOpenAI(model="gpt-fake", base_url=fake.base_url + "/v1", api_key="sk-fake", max_retries=0)
        client = MCPClient.from_dict(cfg)
        agent = MCPAgent(llm=llm, client=client, max_steps=8, memory_enabled=False)
        try:
            await agent.run("Make a short video.")
        except Exception as exc:
            return fake.requests, common.first_error(exc)
        finally:
            await client.close_all_sessions()
        return fake.requests, None


async def checks(report: common.Report, cfg: dict[str, Any]) -> None:
    requests, error = await agent_run(cfg, [("generate_video", common.generate_args(f"mcp-use {report.transport}"))])
    sent = [t.get("function", {}).get("name") for t in (requests[0]["body"].get("tools", []) if requests else [])]
    ours = sorted(n for n in sent if n in common.TOOL_NAMES)
    report.expect(
        "a tools",
        ours == sorted(common.TOOL_NAMES),
        f"{len(ours)} of our tools sent to the model (of {len(sent)} tools)",
        f"tools sent to the model: {sent}" + (f"; {type(error).__name__}: {common.one_line(error)}" if error else ""),
    )
    common.judge_generate(report, common.seen_tool_result(requests, 0), error=error)
    requests, error = await agent_run(cfg, common.ERROR_SCRIPT)
    common.judge_error_script(report, requests, error)


async def run(report: common.Report, root: Path) -> None:
    if report.transport == "http":
        with common.http_server(root) as url:
            await checks(report, config("http", root, url))
    else:
        await checks(report, config("stdio", root, None))


def main() -> None:
    common.main("mcp-use", run)


if __name__ == "__main__":
    main()
