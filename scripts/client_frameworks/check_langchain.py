"""langchain-mcp-adapters 0.3 with langchain-openai (Chat Completions, the default) in a ``create_agent`` agent.

``MultiServerMCPClient.get_tools()`` without a session is the adapters' default stateless mode: every tool call
opens a new session, which over stdio is a new server process.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import common
from fake_model import FakeModel, ToolCall
from langchain.agents import create_agent
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_mcp_adapters.client import MultiServerMCPClient
from langchain_openai import ChatOpenAI

STATELESS_SCALE = "20"  # a 3 s clip takes about 3.5 s: longer than the first call's 1 s wait


def connection(transport: str, root: Path, url: str | None, time_scale: str = common.FAST_SCALE) -> dict[str, Any]:
    if transport == "http":
        return {"transport": "streamable_http", "url": url}
    command, argv = common.stdio_command()
    return {"transport": "stdio", "command": command, "args": argv, "env": common.server_env(root, time_scale)}


async def agent_run(tools: list[Any], script: list[ToolCall]) -> tuple[list[dict[str, Any]], BaseException | None]:
    with FakeModel(script) as fake:
        llm = ChatOpenAI(model="gpt-fake", base_url=fake.base_url + "/v1", api_key="sk-fake", max_retries=0)
        agent = create_agent(llm, tools)
        try:
            await agent.ainvoke({"messages": [("user", "Make a short video.")]}, config={"recursion_limit": 12})
        except Exception as exc:
            return fake.requests, common.first_error(exc)
        return fake.requests, None


async def checks(report: common.Report, conn: dict[str, Any]) -> None:
    tools = await MultiServerMCPClient({"kling": conn}).get_tools()
    converted = []
    for tool in tools:
        try:
            converted.append(convert_to_openai_tool(tool)["function"]["name"])
        except Exception as exc:
            report.fail(f"a convert {tool.name}", f"{type(exc).__name__}: {common.one_line(exc)}")
    report.expect(
        "a tools",
        sorted(converted) == sorted(common.TOOL_NAMES),
        f"{len(converted)} of {len(tools)} tools converted to OpenAI tools",
        f"converted {sorted(converted)}",
    )

    requests, error = await agent_run(
        tools, [("generate_video", common.generate_args(f"langchain {report.transport}"))]
    )
    common.judge_generate(report, common.seen_tool_result(requests, 0), error=error)

    requests, error = await agent_run(tools, common.ERROR_SCRIPT)
    common.judge_error_script(report, requests, error)


def _text(message: Any) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(str(b.get("text", "")) if isinstance(b, dict) else str(b) for b in content)


async def stateless(report: common.Report, conn: dict[str, Any], videos: Path) -> None:
    """A job started in one call (1 s wait) must finish in a later call's check_status, each call its own session."""
    tools = {t.name: t for t in await MultiServerMCPClient({"kling": conn}).get_tools()}
    args = common.generate_args(f"langchain stateless {report.transport}", wait_seconds=1)
    first = await tools["generate_video"].ainvoke(
        {"type": "tool_call", "id": "s1", "name": "generate_video", "args": args}
    )
    structured = (first.artifact or {}).get("structured_content") or {}
    rid = structured.get("request_id") or next(
        iter(re.findall(r"kling-video-[\w.-]+?_[0-9a-f-]{36}", _text(first))), None
    )
    if not rid:
        report.fail("d stateless", f"the first call returned no request_id: {_text(first)[:300]!r}")
        return
    later = await asyncio.wait_for(
        tools["check_status"].ainvoke(
            {"type": "tool_call", "id": "s2", "name": "check_status", "args": {"request_id": rid, "wait_seconds": 15}}
        ),
        60,
    )
    job = (later.artifact or {}).get("structured_content") or {}
    local = job.get("local_path")
    # Over HTTP a result names the file relative to the server's output folder (``videos``); over stdio in full.
    saved = bool(local) and (videos / str(local)).is_file()
    good = job.get("status") == "completed" and job.get("download") == "saved" and saved
    report.expect(
        "d stateless",
        good,
        f"started {structured.get('status')} in call 1, {job.get('status')} + {job.get('download')} in call 2",
        f"the later call's check_status gave status={job.get('status')!r} download={job.get('download')!r}: "
        f"{_text(later)[:300]!r}",
    )


async def run(report: common.Report, root: Path) -> None:
    if report.transport == "http":
        with common.http_server(root) as url:
            await checks(report, connection("http", root, url))
        with common.http_server(root / "stateless", STATELESS_SCALE) as url:
            await stateless(report, connection("http", root, url), root / "stateless" / "videos")
    else:
        await checks(report, connection("stdio", root, None))
        await stateless(
            report, connection("stdio", root / "stateless", None, STATELESS_SCALE), root / "stateless" / "videos"
        )


def main() -> None:
    common.main("langchain-mcp-adapters", run)


if __name__ == "__main__":
    main()
