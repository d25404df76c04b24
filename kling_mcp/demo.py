"""``kling-mcp demo``: the whole product in one command, offline.

Starts the server as a real stdio subprocess in sandbox mode, connects a real MCP client, lists the tools, makes
a clip and a three-shot storyboard with progress shown as it arrives, and prints where each video is. This is a
terminal program, so it prints to stdout; the server it drives never does.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from mcp import Client, StdioServerParameters
    from mcp.types import CallToolResult


def run_demo() -> int:
    return anyio.run(_demo)


_CALLS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "A 5 s clip",
        "generate_video",
        {"prompt": "A paper boat drifting down a rainy street, golden hour, slow dolly", "duration": 5},
    ),
    (
        "A three-shot storyboard",
        "storyboard",
        {
            "shots": [
                {"prompt": "Wide shot: a lighthouse on a cliff at dawn", "duration": 4},
                {"prompt": "Close-up: the keeper lights the lamp", "duration": 4},
                {"prompt": "Aerial: the beam sweeps over a calm sea", "duration": 4},
            ],
            "aspect_ratio": "16:9",
        },
    ),
]
_EXTENSIONS = (("The beam reaches a passing ship", 5), ("The ship sails into the sunrise", 10))


def _server_params() -> StdioServerParameters:
    from mcp import StdioServerParameters

    env = {k: v for k, v in os.environ.items() if k.startswith(("KLING_MCP_", "PATH", "HOME", "XDG_", "LANG"))}
    env["KLING_MCP_MODE"] = "sandbox"
    env.setdefault("KLING_MCP_SANDBOX_TIME_SCALE", "40")  # a minute of simulated gateway time in a few seconds
    env.setdefault("KLING_MCP_MAX_WAIT", "120")  # a call may ask for at most 50 s; a longer wait is configuration
    env.pop("PIXAZO_API_KEY", None)
    return StdioServerParameters(command=sys.executable, args=["-m", "kling_mcp"], env=env)


async def _show(progress: float, total: float | None, message: str | None) -> None:
    print(f"  [{progress:5.1f}/{total or 100:g}] {message or ''}", flush=True)


def _text(result: CallToolResult) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


async def _completed(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any] | None:
    """The job's result once it has completed; None (having said why) when it did not."""
    result = await client.call_tool(tool, args, progress_callback=_show)
    data = result.structured_content or {}
    if result.is_error or data.get("status") != "completed":
        print("  did not complete:", _text(result))
        return None
    return data


async def _demo() -> int:
    from mcp import Client, stdio_client

    started = time.monotonic()
    print("kling-mcp demo: starting the server over stdio in SANDBOX mode (offline, nothing is charged)\n")
    async with Client(stdio_client(_server_params(), errlog=sys.stderr), mode="legacy") as client:
        tools = await client.list_tools()
        print("Tools:", ", ".join(t.name for t in tools.tools))
        videos = await _clips(client)
        film = await _film(client, videos[-1][0]) if videos else None
        if film is None:
            return 1
        listing = await client.read_resource("kling://jobs")
        text = getattr(listing.contents[0], "text", "")
        print(f"\nThe ledger now lists {text.count('request_id')} job(s) (resource kling://jobs).")
    print(f"\nFinished in {time.monotonic() - started:.1f}s. Videos:")
    for _, path in [*videos, ("", film)]:
        print(f"  {path}")
    return 0


async def _clips(client: Client) -> list[tuple[str, str]]:
    """(request id, where the video is) of each demo call, or [] when one did not complete."""
    videos: list[tuple[str, str]] = []
    for title, tool, args in _CALLS:
        print(f"\n{title} ({tool}):")
        data = await _completed(client, tool, args)
        if data is None:
            return []
        where = data.get("local_path") or data.get("media_url")
        videos.append((str(data["request_id"]), str(where)))
        print(f"  done: {data['request_id']}")
        print(f"  video: {where}")
    return videos


async def _film(client: Client, last_id: str) -> str | None:
    """Extends the clip ``last_id`` twice and joins the three into one film; returns its path."""
    print("\nA chained piece: two extensions that continue the storyboard from its last frame, then one film:")
    chain = [last_id]
    for prompt, seconds in _EXTENSIONS:
        data = await _completed(
            client, "extend_video", {"request_id": chain[-1], "prompt": prompt, "duration": seconds}
        )
        if data is None:
            return None
        chain.append(str(data["request_id"]))
        print(f"  extended: {data['request_id']} ({seconds} s)")
    film = await client.call_tool("concat_videos", {"request_ids": chain, "title": "lighthouse-demo"})
    film_data = film.structured_content or {}
    if film.is_error:
        print("  concat failed:", _text(film))
        return None
    print(f"  film: {film_data['path']} ({film_data['duration_s']:.1f} s, {film_data['method']})")
    return str(film_data["path"])
