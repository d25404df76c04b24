"""SIGKILL the server at random moments of real jobs, many times: no job is lost, none is paid for twice.

The gateway is a separate sandbox process, so it outlives every server it talks to, as Pixazo would.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support.procs import free_port, server_env, wait_until_serving

pytestmark = pytest.mark.anyio

ROUNDS = int(os.environ.get("KLING_MCP_CRASH_ROUNDS", "8"))
SEED = int(os.environ.get("KLING_MCP_CRASH_SEED", "20261124"))


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    with (tmp_path / "gateway.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kling_mcp.sandbox",
                "--port",
                str(port),
                "--time-scale",
                "150",
                "--render-size",
                "64x36",
                "--fps",
                "4",
                "--media-dir",
                str(tmp_path / "gw-media"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_serving(url + "/healthz", proc)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def start_server(tmp_path: Path, gateway: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = server_env(tmp_path, PIXAZO_BASE_URL=gateway, KLING_MCP_SANDBOX_TIME_SCALE="150")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kling_mcp", "serve", "--transport", "http", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    wait_until_serving(url, proc)
    return proc, url


async def submit_until_killed(
    url: str, proc: subprocess.Popen[bytes], round_no: int, kill_after: float
) -> dict[str, str]:
    """Submits jobs (some waited on, so kills land in polls and downloads too) until the process is killed."""
    made: dict[str, str] = {}

    async def killer() -> None:
        await anyio.sleep(kill_after)
        proc.kill()

    async def client_work() -> None:
        async with Client(streamable_http_client(url)) as client:
            for i in range(1000):
                prompt = f"crash round {round_no} job {i}"
                result = await client.call_tool(
                    "generate_video", {"prompt": prompt, "duration": 3, "wait_seconds": 0.3 if i % 3 == 0 else 0}
                )
                if result.structured_content and result.structured_content.get("status") not in ("unknown", None):
                    made[result.structured_content["request_id"]] = prompt

    with anyio.move_on_after(kill_after + 10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(killer)
            with contextlib.suppress(Exception):  # the server dies under the client: expected
                await client_work()
    proc.wait(timeout=10)
    return made


async def test_sigkill_at_random_moments_loses_no_job_and_pays_for_none_twice(tmp_path: Path, gateway: str) -> None:
    rng = random.Random(SEED)
    known: dict[str, str] = {}
    for round_no in range(ROUNDS):
        proc, url = start_server(tmp_path, gateway)
        known |= await submit_until_killed(url, proc, round_no, rng.uniform(0.2, 1.5))
    assert len(known) >= ROUNDS, "too few jobs were made before the kills to test anything"

    proc, url = start_server(tmp_path, gateway)
    try:
        with anyio.fail_after(120):
            async with Client(streamable_http_client(url)) as client:
                finals: dict[str, dict[str, Any]] = {}
                for rid in known:
                    result = await client.call_tool("check_status", {"request_id": rid, "wait_seconds": 50})
                    assert result.structured_content is not None
                    finals[rid] = result.structured_content
                listing = await client.call_tool("list_jobs", {"limit": 200})
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    # Every job the client heard of ended completed, downloaded once, to a file that matches the ledger.
    out = tmp_path / "out"
    for rid, job in finals.items():
        assert job["status"] == "completed", (rid, job)
        assert job["download"] == "saved", (rid, job)
        assert (out / job["local_path"]).is_file()  # over HTTP, paths are relative to the output folder
    assert not [p.name for p in out.iterdir() if p.name.endswith(".part") or p.name.startswith(".")]
    assert listing.structured_content is not None
    ledger = listing.structured_content["jobs"]
    # A kill between writing the row and hearing the gateway's answer leaves 'unknown': never 'submitting'.
    assert {j["status"] for j in ledger} <= {"completed", "unknown"}
    unknown = [j for j in ledger if j["status"] == "unknown"]

    async with httpx2.AsyncClient(base_url=gateway) as http:
        stats = (await http.get("/_sandbox/stats")).json()
        bodies = [(await http.get(f"/_sandbox/jobs/{rid}")).json()["body"] for rid in stats["status_polls"]]
    prompts = [b["prompt"] for b in bodies]
    assert len(prompts) == len(set(prompts)), "a prompt was submitted twice"
    ledger_ids = {j["request_id"] for j in ledger if j["status"] != "unknown"}
    assert ledger_ids <= set(stats["status_polls"])
    assert stats["submits"] - len(ledger_ids) <= len(unknown)
    for job in ledger:
        if job["status"] == "completed":
            data = (out / job["local_path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == job["sha256"]
            assert len(data) == job["size_bytes"]
