"""One server after another on the same state folder, each with its own built-in sandbox: nothing is lost.

Some clients start a server process per tool call (LangChain's stateless mode). Each process starts its own
built-in sandbox on a new port, so a job started by one call is finished by a later process, whose gateway has
never served it: it must find the job (its record in the state folder), poll it on its own base URL, and download
it from a media URL of its own, the earlier process's port being dead.
"""

from __future__ import annotations

import socket
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.types import CallToolResult, TextContent

from kling_mcp.config import Settings
from kling_mcp.jobs import NOT_FOUND_POLLS
from kling_mcp.pixazo import GenerationRequest
from kling_mcp.runtime import open_runtime
from kling_mcp.server import build_server
from tests.conftest import TEST_TIME_SCALE, TINY

pytestmark = pytest.mark.anyio

WAIT = 20  # seconds: the bound on any wait


@pytest.fixture
def builtin(tmp_path: Path) -> Settings:
    """Sandbox mode with no base URL: every server (or runtime) started from these starts its own sandbox."""
    return Settings(
        mode="sandbox",
        poll_interval=0.05,
        max_wait=WAIT,
        state_dir=tmp_path / "state",
        output_dir=tmp_path / "out",
        sandbox_time_scale=TEST_TIME_SCALE,
        sandbox_render_size=TINY,
        sandbox_fps=8,
    )


def data_of(result: CallToolResult) -> dict[str, Any]:
    assert result.structured_content is not None, result.content
    return dict(result.structured_content)


def text_of(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


async def call(settings: Settings, tool: str, arguments: dict[str, Any]) -> CallToolResult:
    """One tool call in a server of its own, as a stateless client makes it."""
    with anyio.fail_after(WAIT):
        async with Client(build_server(settings)) as client:
            result = await client.call_tool(tool, arguments)
    assert not result.is_error, text_of(result)
    return result


@pytest.mark.parametrize("rendered", [True, False], ids=["rendered", "stopped-before-its-render"])
async def test_a_job_started_in_one_call_completes_and_downloads_in_the_next(builtin: Settings, rendered: bool) -> None:
    first = data_of(await call(builtin, "generate_video", {"prompt": "one process per call", "wait_seconds": 0}))
    video = builtin.resolved_state_dir / "sandbox-media" / f"{first['request_id']}.mp4"
    if not rendered:
        video.unlink(missing_ok=True)  # the first server stopped before its sandbox had written the video
    later = data_of(await call(builtin, "check_status", {"request_id": first["request_id"], "wait_seconds": WAIT}))
    assert first["status"] in ("queued", "processing")
    assert later["status"] == "completed"
    assert later["local_path"] is not None
    assert Path(later["local_path"]).stat().st_size > 0
    assert video.is_file()


def dead_url() -> str:
    """A loopback port nobody listens on: where an earlier process's sandbox used to be."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_a_video_completed_in_an_earlier_process_is_downloaded_from_a_fresh_media_url(
    builtin: Settings,
) -> None:
    request = GenerationRequest(endpoint="text_to_video", prompt="seen done, not downloaded", duration=3)
    with anyio.fail_after(WAIT):
        async with open_runtime(builtin.with_(download=False)) as runtime:
            made = (await runtime.engine.submit(request)).job
            done = await runtime.engine.wait(made.job_id, WAIT - 5)
    assert done.status == "completed"
    stale = f"{dead_url()}/media/{made.id}.mp4"
    # The earlier process saw the job complete and stopped before its download.
    with closing(sqlite3.connect(builtin.resolved_state_dir / "ledger.sqlite3")) as conn, conn:
        conn.execute("UPDATE jobs SET media_url = ?, download_state = 'pending' WHERE job_id = ?", (stale, made.job_id))
    with anyio.fail_after(WAIT):
        async with open_runtime(builtin) as runtime:
            job = await runtime.engine.wait(made.job_id, WAIT - 5)
    assert job.download_state == "done", job.download_error
    assert job.download_attempts == 0  # no attempt was spent on the dead URL
    assert job.download_error is None
    assert job.media_url is not None
    assert job.media_url != stale
    assert job.local_path is not None
    assert Path(job.local_path).is_file()


async def test_a_job_the_next_process_cannot_find_ends_unknown_and_says_so(builtin: Settings) -> None:
    first = data_of(await call(builtin, "generate_video", {"prompt": "[sandbox:hold] lost", "wait_seconds": 0}))
    for record in (builtin.resolved_state_dir / "sandbox-jobs").iterdir():
        record.unlink()  # a sandbox that kept no record: its jobs are gone with it
    later = await call(builtin, "check_status", {"request_id": first["request_id"], "wait_seconds": WAIT})
    with anyio.fail_after(WAIT):
        async with open_runtime(builtin) as runtime:
            job = await runtime.store.get(first["request_id"])
    assert data_of(later)["status"] == "unknown"
    assert "no longer knows" in text_of(later)
    assert f"{NOT_FOUND_POLLS} status polls in a row" in text_of(later)
    assert job.attempts == 1
