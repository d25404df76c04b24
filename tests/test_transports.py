"""The real binary: stdio subprocess and streamable HTTP, each with its built-in sandbox gateway."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from tests.support.procs import free_port, server_env, wait_until_serving

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_stdio_server_lists_tools_and_makes_a_video_with_progress(tmp_path: Path, mode: str) -> None:
    params = StdioServerParameters(command=sys.executable, args=["-m", "kling_mcp"], env=server_env(tmp_path))
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    with tempfile.TemporaryFile("w+") as errlog:
        with anyio.fail_after(60):
            async with Client(stdio_client(params, errlog=errlog), mode=mode) as client:
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
    assert seen
    assert seen[-1] == 100
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


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    with (tmp_path / "stderr.log").open("wb") as errlog:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kling_mcp", "serve", "--transport", "http", "--port", str(port)],
            env=server_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=errlog,
        )
        url = f"http://127.0.0.1:{port}/mcp"
        try:
            wait_until_serving(url, proc)
            yield url
        finally:
            proc.terminate()
            out, _ = proc.communicate(timeout=10)
    assert out == b"", "nothing may be printed to stdout"


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_streamable_http_server_makes_a_video_with_progress(http_server: str, mode: str) -> None:
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    with anyio.fail_after(60):
        async with Client(streamable_http_client(http_server), mode=mode) as client:
            result = await client.call_tool(
                "storyboard",
                {"shots": [{"prompt": "one", "duration": 3}, {"prompt": "two", "duration": 3}]},
                progress_callback=on_progress,
            )
            status = await client.call_tool("check_status", {"request_id": result.structured_content["request_id"]})
    assert result.structured_content is not None, result.content
    assert result.structured_content["status"] == "completed"
    assert status.structured_content is not None
    assert status.structured_content["local_path"] == result.structured_content["local_path"]
    assert seen
    assert seen == sorted(seen)
