"""``kling-mcp demo``: the whole product in one command, offline.

Starts the server as a real stdio subprocess in sandbox mode, connects a real MCP client, lists the tools, makes
a clip and a three-shot storyboard with progress shown as it arrives, and prints where each video is. This is a
terminal program, so it prints to stdout; the server it drives never does.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import anyio


def run_demo() -> int:
    return anyio.run(_demo)


async def _demo() -> int:
    from mcp import Client, StdioServerParameters, stdio_client

    env = {k: v for k, v in os.environ.items() if k.startswith(("KLING_MCP_", "PATH", "HOME", "XDG_", "LANG"))}
    env["KLING_MCP_MODE"] = "sandbox"
    env.setdefault("KLING_MCP_SANDBOX_TIME_SCALE", "40")  # a minute of simulated gateway time in a few seconds
    env.pop("PIXAZO_API_KEY", None)
    params = StdioServerParameters(command=sys.executable, args=["-m", "kling_mcp"], env=env)
    started = time.monotonic()
    print("kling-mcp demo: starting the server over stdio in SANDBOX mode (offline, nothing is charged)\n")
    async with Client(stdio_client(params, errlog=sys.stderr), mode="legacy") as client:
        tools = await client.list_tools()
        print("Tools:", ", ".join(t.name for t in tools.tools))

        async def show(progress: float, total: float | None, message: str | None) -> None:
            print(f"  [{progress:5.1f}/{total or 100:g}] {message or ''}", flush=True)

        videos: list[str] = []
        calls: list[tuple[str, str, dict[str, Any]]] = [
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
        for title, tool, args in calls:
            print(f"\n{title} ({tool}):")
            result = await client.call_tool(tool, {**args, "wait_seconds": 120}, progress_callback=show)
            data = result.structured_content or {}
            if result.is_error or data.get("status") != "completed":
                text = " ".join(getattr(c, "text", "") for c in result.content)
                print(f"  did not complete: {text}")
                return 1
            where = data.get("local_path") or data.get("media_url")
            videos.append(str(where))
            print(f"  done: {data['request_id']}")
            print(f"  video: {where}")
            last_id = str(data["request_id"])

        print("\nA chained piece: two extensions that continue the storyboard from its last frame, then one film:")
        chain = [last_id]
        for prompt, seconds in (("The beam reaches a passing ship", 5), ("The ship sails into the sunrise", 10)):
            result = await client.call_tool(
                "extend_video",
                {"request_id": chain[-1], "prompt": prompt, "duration": seconds, "wait_seconds": 120},
                progress_callback=show,
            )
            data = result.structured_content or {}
            if result.is_error or data.get("status") != "completed":
                print("  did not complete:", " ".join(getattr(c, "text", "") for c in result.content))
                return 1
            chain.append(str(data["request_id"]))
            print(f"  extended: {data['request_id']} ({seconds} s)")
        film = await client.call_tool("concat_videos", {"request_ids": chain, "title": "lighthouse-demo"})
        film_data = film.structured_content or {}
        if film.is_error:
            print("  concat failed:", " ".join(getattr(c, "text", "") for c in film.content))
            return 1
        print(f"  film: {film_data['path']} ({film_data['duration_s']:.1f} s, {film_data['method']})")
        videos.append(str(film_data["path"]))
        listing = await client.read_resource("kling://jobs")
        text = getattr(listing.contents[0], "text", "")
        print(f"\nThe ledger now lists {text.count('request_id')} job(s) (resource kling://jobs).")
    print(f"\nFinished in {time.monotonic() - started:.1f}s. Videos:")
    for path in videos:
        print(f"  {path}")
    return 0
