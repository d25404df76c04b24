"""google-genai 3.6: an MCP ``ClientSession`` passed as a tool (``tools=[session]``), automatic function calling.

The Gemini client points at the fake model through ``http_options`` (base URL); the SDK converts the session's
tools itself (``mcp_to_gemini_tools``) and calls them through the session.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import common
from fake_model import FakeModel, ToolCall
from google import genai
from google.genai import _mcp_utils, types
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client


def _strip(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip(v) for k, v in schema.items() if k != "additionalProperties"}
    if isinstance(schema, list):
        return [_strip(v) for v in schema]
    return schema


class StrippedSession(ClientSession):
    """Lists the tools without ``additionalProperties``, to see past the conversion crash to what follows it."""

    async def list_tools(self, *args: Any, **kwargs: Any) -> Any:
        listed = await super().list_tools(*args, **kwargs)
        for tool in listed.tools:
            field = "input_schema" if hasattr(tool, "input_schema") else "inputSchema"  # mcp 2 / mcp 1
            setattr(tool, field, _strip(getattr(tool, field)))
        return listed


@contextlib.asynccontextmanager
async def session(
    transport: str, root: Path, url: str | None, cls: type[ClientSession] = ClientSession
) -> AsyncIterator[ClientSession]:
    if transport == "http":
        streams = streamable_http_client(url or "")
    else:
        command, argv = common.stdio_command()
        streams = stdio_client(
            StdioServerParameters(command=command, args=argv, env=common.server_env(root, **README_SETTINGS))
        )
    async with streams as (read, write, *_), cls(read, write) as s:
        await s.initialize()
        yield s


# The README's note for Gemini users: the library sends the whole result to the model as JSON, an image as base64.
README_SETTINGS = {"KLING_MCP_PREVIEW_MAX_BYTES": "0"}


async def gemini_run(s: ClientSession, script: list[ToolCall]) -> tuple[list[dict[str, Any]], BaseException | None]:
    with FakeModel(script) as fake:
        client = genai.Client(api_key="fake-key", http_options=types.HttpOptions(base_url=fake.base_url + "/"))
        # A dict, not GenerateContentConfig: the SDK deep-copies a config object, and a live ClientSession cannot
        # be copied ("cannot pickle '_asyncio.Task'"), whatever the server; a dict is used as it is.
        config: Any = {"tools": [s], "automatic_function_calling": {"maximum_remote_calls": 6}}
        try:
            await client.aio.models.generate_content(model="gemini-fake", contents="Make a short video.", config=config)
        except Exception as exc:
            return fake.requests, common.first_error(exc)
        return fake.requests, None


async def checks(report: common.Report, s: ClientSession) -> None:
    listed = (await s.list_tools()).tools
    converted = []
    for tool in listed:
        try:
            _mcp_utils.mcp_to_gemini_tool(tool)
            converted.append(tool.name)
        except Exception as exc:
            report.fail(f"a convert {tool.name}", f"{type(exc).__name__}: {common.one_line(exc)}")
    report.expect(
        "a tools",
        len(converted) == len(common.TOOL_NAMES),
        f"{len(converted)} of {len(listed)} tools convert to Gemini declarations",
        f"only {len(converted)} of {len(listed)} convert: {converted}",
    )
    requests, error = await gemini_run(s, [("generate_video", common.generate_args(f"genai {report.transport}"))])
    report.expect(
        "b request sent",
        bool(requests),
        f"{len(requests)} requests reached the model",
        f"no request reached the model: {type(error).__name__}: {common.one_line(error or '')}",
    )
    common.judge_generate(report, common.seen_tool_result(requests, 0), error=error)
    requests, error = await gemini_run(s, common.ERROR_SCRIPT)
    common.judge_error_script(report, requests, error)


async def stripped(report: common.Report, s: ClientSession) -> None:
    args = common.generate_args(f"genai stripped {report.transport}")
    requests, error = await gemini_run(s, [("generate_video", args)])
    label = "b generate_video, schemas without additionalProperties"
    common.judge_generate(report, common.seen_tool_result(requests, 0), label, error)


async def run(report: common.Report, root: Path) -> None:
    if report.transport == "http":
        with common.http_server(root, **README_SETTINGS) as url:
            async with session("http", root, url) as s:
                await checks(report, s)
            async with session("http", root, url, StrippedSession) as s:
                await stripped(report, s)
    else:
        async with session("stdio", root, None) as s:
            await checks(report, s)
        async with session("stdio", root / "stripped", None, StrippedSession) as s:
            await stripped(report, s)


def main() -> None:
    common.main("google-genai", run)


if __name__ == "__main__":
    main()
