"""Detection latency with webhooks: from the gateway finishing a job to the waiting tool call returning.

Polling is slowed to 60 s, so every trial that returns sooner was woken by the webhook. The server runs its real
streamable-HTTP app on loopback with ``KLING_MCP_PUBLIC_URL`` pointing at itself; the sandbox gateway runs
in-process and posts the webhook over loopback. Downloads are on, so "returning" includes saving the video.
Run: ``python -m bench.webhook_latency --trials 20``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from kling_mcp.config import Settings
from kling_mcp.sandbox import SandboxConfig, serve_sandbox
from kling_mcp.sandbox.server import serve_asgi
from kling_mcp.server import build_server, http_security


@asynccontextmanager
async def webhook_server(settings: Settings) -> AsyncIterator[str]:
    built: dict[str, Any] = {}

    async def forward(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # the real app's lifespan is run below, once it exists
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await built["app"](scope, receive, send)

    async with serve_asgi(forward, "127.0.0.1", 0) as base:
        configured = settings.with_(public_url=base, webhook_poll_interval=60.0)
        app = build_server(configured).streamable_http_app(
            host="127.0.0.1", transport_security=http_security(configured, "127.0.0.1")
        )
        built["app"] = app
        async with app.router.lifespan_context(app):
            yield base


async def measure(trials: int, workdir: Path) -> list[float]:
    config = SandboxConfig(time_scale=1000, render_size=(320, 180), fps=8, media_dir=workdir / "gw")
    async with serve_sandbox(config) as served:
        settings = Settings(
            mode="sandbox",
            base_url=served.base_url,
            state_dir=workdir / "state",
            output_dir=workdir / "out",
            sandbox_time_scale=1000,
            dedupe_seconds=0,
        )
        latencies: list[float] = []
        async with webhook_server(settings) as base, Client(streamable_http_client(base + "/mcp")) as client:
            for i in range(trials + 1):
                made = await client.call_tool("generate_video", {"prompt": f"[sandbox:hold] {i}", "wait_seconds": 0})
                rid = (made.structured_content or {})["request_id"]
                await served.gateway.wait_rendered(rid)  # the clip exists; only the finish is left to detect
                done_at: list[float] = []

                async def wait(rid: str = rid, done_at: list[float] = done_at) -> None:
                    result = await client.call_tool("check_status", {"request_id": rid, "wait_seconds": 30})
                    done_at.append(time.perf_counter())
                    assert (result.structured_content or {}).get("status") == "completed", result

                async with anyio.create_task_group() as tg:
                    tg.start_soon(wait)
                    await anyio.sleep(0.2)  # let the call reach its wait before the job ends
                    finished = time.perf_counter()
                    served.gateway.finish(rid)
                if i:  # the first trial warms up connections and imports
                    latencies.append((done_at[0] - finished) * 1000)
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        latencies = anyio.run(measure, args.trials, Path(tmp))
    ordered = sorted(latencies)
    print(f"$ python -m bench.webhook_latency --trials {args.trials}")
    print(
        f"finish -> call returned (webhook, polling every 60 s, download included): n={len(ordered)} "
        f"median {statistics.median(ordered):.1f} ms, p90 {ordered[int(len(ordered) * 0.9) - 1]:.1f} ms, "
        f"max {ordered[-1]:.1f} ms; target <= 100 ms (bench), <= 200 ms (issue 6)"
    )
    return 0 if ordered[-1] <= 200 else 1


if __name__ == "__main__":
    sys.exit(main())
