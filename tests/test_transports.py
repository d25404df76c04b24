"""The real binary: stdio subprocess and streamable HTTP, each with its built-in sandbox gateway."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

pytestmark = pytest.mark.anyio


def server_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path / "home"),
        "KLING_MCP_MODE": "sandbox",
        "KLING_MCP_SANDBOX_TIME_SCALE": "2000",
        "KLING_MCP_SANDBOX_RENDER_SIZE": "320x180",
        "KLING_MCP_SANDBOX_FPS": "8",
        "KLING_MCP_POLL_INTERVAL": "0.05",
        "KLING_MCP_STATE_DIR": str(tmp_path / "state"),
        "KLING_MCP_OUTPUT_DIR": str(tmp_path / "out"),
    }
    env.update(extra)
    return env


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_stdio_server_lists_tools_and_makes_a_video_with_progress(tmp_path: Path, mode: str) -> None:
    params = StdioServerParameters(command=sys.executable, args=["-m", "kling_mcp"], env=server_env(tmp_path))
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    with tempfile.TemporaryFile("w+") as errlog:
        with anyio.fail_after(60):
            async with Client(stdio_client(params, errlog=errlog), mode=mode) as client:  # type: ignore[arg-type]
                names = {t.name for t in (await client.list_tools()).tools}
                result = await client.call_tool(
                    "generate_video", {"prompt": "over stdio", "duration": 3}, progress_callback=on_progress
                )
        errlog.seek(0)
        stderr = errlog.read()
    assert {"generate_video", "animate_image", "storyboard", "check_status"} <= names
    assert result.structured_content is not None, result.content
    assert result.structured_content["status"] == "completed"
    assert Path(result.structured_content["local_path"]).is_file()
    assert progress
    assert progress[-1] == 100
    assert "SANDBOX" in stderr


def test_live_mode_without_a_key_stops_at_start_with_one_clear_line(tmp_path: Path) -> None:
    env = server_env(tmp_path, KLING_MCP_MODE="live")
    done = subprocess.run(
        [sys.executable, "-m", "kling_mcp"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "PIXAZO_API_KEY" in lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kling_mcp", "serve", "--transport", "http", "--port", str(port)],
        env=server_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        with httpx2.Client() as http:
            for _ in range(600):
                try:
                    http.get(url, timeout=0.2)
                    break
                except httpx2.TransportError:
                    if proc.poll() is not None:
                        raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "server died") from None
                    anyio.run(anyio.sleep, 0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        assert proc.stdout.read() == b""


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_streamable_http_server_makes_a_video_with_progress(http_server: str, mode: str) -> None:
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    with anyio.fail_after(60):
        async with Client(streamable_http_client(http_server), mode=mode) as client:  # type: ignore[arg-type]
            result = await client.call_tool(
                "storyboard",
                {"shots": [{"prompt": "one", "duration": 3}, {"prompt": "two", "duration": 3}]},
                progress_callback=on_progress,
            )
            status = await client.call_tool("check_status", {"request_id": result.structured_content["request_id"]})  # type: ignore[index]
    assert result.structured_content is not None, result.content
    assert result.structured_content["status"] == "completed"
    assert status.structured_content is not None
    assert status.structured_content["local_path"] == result.structured_content["local_path"]
    assert progress
    assert progress == sorted(progress)
