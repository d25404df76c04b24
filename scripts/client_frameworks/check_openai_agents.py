"""openai-agents 0.24: ``Agent(mcp_servers=[...])`` with strict schema conversion, on the Responses API.

The MCP servers are built with the library's defaults, as a new user would (``client_session_timeout_seconds``
is 5 s), and the sandbox renders at a realistic pace (a 3 s clip takes 8-9 s), so a generation outlasts that
default the way a live one (65-75 s) does.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")  # tracing would export to the provider
os.environ.setdefault("OPENAI_AGENTS_DONT_LOG_TOOL_DATA", "0")  # so the log names the MCP error behind a failure

import common
from agents import Agent, Runner, set_tracing_disabled
from agents.mcp import MCPServerStdio, MCPServerStreamableHttp, MCPUtil
from agents.models.openai_responses import OpenAIResponsesModel
from fake_model import FakeModel, ToolCall
from openai import AsyncOpenAI

REALISTIC_SCALE = "8"
RAISED_TIMEOUT_S = 60.0


class Captured(logging.Handler):
    """The library logs why a tool call failed while the model only gets its generic text: keep that reason."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = common.first_error(record.exc_info[1])
            text += f" ({type(exc).__name__}: {exc})"
        if "strict mode" not in text and (record.levelno >= logging.WARNING or "rror" in text or "imeout" in text):
            self.lines.append(common.one_line(text, 300))


LOG = Captured()
logging.getLogger("openai.agents").addHandler(LOG)
logging.getLogger("openai.agents").setLevel(logging.DEBUG)
logging.getLogger("openai.agents").propagate = False


def mcp_server(transport: str, root: Path, url: str | None, **options: Any) -> Any:
    if transport == "http":
        return MCPServerStreamableHttp(params={"url": url or ""}, name="kling", **options)
    command, argv = common.stdio_command()
    env = common.server_env(root, REALISTIC_SCALE)
    return MCPServerStdio(params={"command": command, "args": argv, "env": env}, name="kling", **options)


async def agent_run(server: Any, script: list[ToolCall]) -> tuple[list[dict[str, Any]], BaseException | None]:
    with FakeModel(script) as fake:
        client = AsyncOpenAI(base_url=fake.base_url + "/v1", api_key="sk-fake", max_retries=0)
        agent = Agent(
            name="video",
            instructions="Make the video the user asks for.",
            model=OpenAIResponsesModel(model="gpt-fake", openai_client=client),
            mcp_servers=[server],
            mcp_config={"convert_schemas_to_strict": True},
        )
        try:
            await Runner.run(agent, "Make a short video.", max_turns=8)
        except Exception as exc:
            return fake.requests, common.first_error(exc)
        return fake.requests, None


async def strict_tools(report: common.Report, server: Any) -> None:
    tools = await server.list_tools()
    strict, loose = [], []
    for tool in tools:
        converted = MCPUtil.to_function_tool(tool, server, convert_schemas_to_strict=True)
        (strict if converted.strict_json_schema else loose).append(tool.name)
    report.expect(
        "a strict tools",
        not loose and len(strict) == len(common.TOOL_NAMES),
        f"{len(strict)} of {len(tools)} tools convert strictly",
        f"{len(strict)} of {len(tools)} tools convert strictly; fell back to non-strict (silently): {loose}",
    )


async def checks(report: common.Report, server: Any) -> None:
    async with server:
        await strict_tools(report, server)
        requests, error = await agent_run(
            server, [("generate_video", common.generate_args(f"agents {report.transport}"))]
        )
        if requests:
            sent = requests[0]["body"].get("tools", [])
            flags = sum(1 for t in sent if t.get("strict"))
            report.ok("note strict on the wire", f"{flags} of {len(sent)} tools sent with strict: true")
        # With the library's 5 s session timeout a generation's call times out (the README says to raise it, or to
        # give the server KLING_MCP_MAX_WAIT=4): noted, and what must hold is that the job outlives the call.
        seen = common.seen_tool_result(requests, 0)
        outcome = seen.text[:80] if seen else f"no tool result ({type(error).__name__ if error else 'none'})"
        report.ok(
            "note default 5 s session timeout",
            f"the model read {outcome!r}; the library logged: {' | '.join(LOG.lines[-1:]) or 'nothing'}",
        )
        listed = await server.call_tool("list_jobs", {"limit": 5})
        text = " ".join(getattr(block, "text", "") for block in listed.content)
        report.expect(
            "b the timed-out generation continues",
            f"agents {report.transport}" in text,
            "list_jobs shows the job the timed-out call started",
            f"the job is not in list_jobs: {text[:300]!r}",
        )
        requests, error = await agent_run(server, common.ERROR_SCRIPT)
        common.judge_error_script(report, requests, error)


async def raised_timeout(report: common.Report, server: Any) -> None:
    """The same call with the session timeout raised: tells the 5 s default apart from any other failure."""
    async with server:
        args = common.generate_args(f"agents raised timeout {report.transport}")
        requests, error = await agent_run(server, [("generate_video", args)])
        common.judge_generate(
            report, common.seen_tool_result(requests, 0), f"b generate_video, timeout {RAISED_TIMEOUT_S:.0f} s", error
        )


async def run(report: common.Report, root: Path) -> None:
    raised = {"client_session_timeout_seconds": RAISED_TIMEOUT_S}
    if report.transport == "http":
        with common.http_server(root, REALISTIC_SCALE) as url:
            await checks(report, mcp_server("http", root, url))
            await raised_timeout(report, mcp_server("http", root, url, **raised))
    else:
        await checks(report, mcp_server("stdio", root, None))
        await raised_timeout(report, mcp_server("stdio", root / "raised", None, **raised))


def main() -> None:
    set_tracing_disabled(True)
    common.main("openai-agents", run)


if __name__ == "__main__":
    main()
