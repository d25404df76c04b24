"""fastmcp 4 client: its own transports, tool listing, call path and result hydration (``result.data``).

No model is involved: a fastmcp app hands the content blocks to its model itself, so the blocks are measured.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import common
from fastmcp import Client
from fastmcp.client.transports import StdioTransport


def transport(kind: str, root: Path, url: str | None) -> Any:
    if kind == "http":
        return url
    command, argv = common.stdio_command()
    return StdioTransport(command, argv, env=common.server_env(root))


def blocks(result: Any) -> list[dict[str, Any]]:
    return [b.model_dump(mode="json", by_alias=True, exclude_none=True) for b in result.content]


async def run(report: common.Report, target: Any) -> None:
    async with Client(target) as client:
        tools = await client.list_tools()
        names = sorted(t.name for t in tools)
        report.expect("a tools", set(names) == set(common.TOOL_NAMES), f"{len(names)} tools: {names}", f"tools {names}")

        args = common.generate_args(f"fastmcp {report.transport}")
        try:
            result = await client.call_tool("generate_video", args, raise_on_error=False)
        except Exception as exc:
            report.crash("b generate_video", common.first_error(exc))
        else:
            common.judge_generate(report, common.mcp_content_view(blocks(result)))
            data = result.data
            rid = getattr(data, "request_id", None) or (data or {}).get("request_id") if data is not None else None
            report.expect(
                "b result.data hydrated",
                bool(rid),
                f"result.data.request_id = {rid}",
                f"fastmcp did not hydrate the structured result: data={data!r:.200}",
            )

        for label, tool, targs, needles in (
            ("c invalid storyboard", "storyboard", common.INVALID_STORYBOARD_ARGS, common.STORYBOARD_NEEDLES),
            ("c unknown check_status", "check_status", common.CHECK_UNKNOWN_ARGS, common.UNKNOWN_NEEDLES),
        ):
            try:
                result = await client.call_tool(tool, targs, raise_on_error=False)
            except Exception as exc:
                report.crash(label, common.first_error(exc))
                continue
            common.judge_readable(report, common.mcp_content_view(blocks(result)), label, needles)


def main() -> None:
    opts = common.args()
    report = common.Report("fastmcp", opts.transport)
    with common.workdir() as root:
        try:
            if opts.transport == "http":
                with common.http_server(root) as url:
                    asyncio.run(run(report, url))
            else:
                asyncio.run(run(report, transport("stdio", root, None)))
        except Exception as exc:
            report.crash("session", common.first_error(exc))
    report.finish()


if __name__ == "__main__":
    main()
