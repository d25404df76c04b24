"""The four tools, end to end through the SDK's in-memory client, in both protocol eras, against the sandbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.types import CallToolResult, ResourceLink, TextContent

from kling_mcp.config import Settings
from kling_mcp.server import build_server

pytestmark = pytest.mark.anyio

MODES = ["legacy", "auto"]


def text_of(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


def data_of(result: CallToolResult) -> dict[str, Any]:
    assert result.structured_content is not None, text_of(result)
    return dict(result.structured_content)


def probe(path: str) -> tuple[float, int, int]:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        return (container.duration or 0) / av.time_base, stream.codec_context.width, stream.codec_context.height


@pytest.mark.parametrize("mode", MODES)
async def test_generate_video_returns_a_downloaded_sandbox_video(settings: Settings, mode: str) -> None:
    with anyio.fail_after(30):
        async with Client(build_server(settings), mode=mode) as client:
            result = await client.call_tool("generate_video", {"prompt": "a red kite over dunes", "duration": 4})
    assert not result.is_error, text_of(result)
    data = data_of(result)
    assert data["status"] == "completed"
    assert data["done"] is True
    assert data["mode"] == "sandbox"
    assert data["video_seconds"] == 4
    assert data["params"] == {
        "endpoint": "text_to_video",
        "prompt": "a red kite over dunes",
        "shots": None,
        "duration": 4,
        "aspect_ratio": "16:9",
        "image_url": None,
    }
    assert data["resource_uri"] == f"kling://jobs/{data['request_id']}"
    assert data["request_id"].startswith("kling-video-v3-turbo-pro-text-to-video_")
    duration, width, height = probe(data["local_path"])
    assert duration == pytest.approx(4, abs=0.3)
    assert width > height
    assert not [c for c in result.content if isinstance(c, ResourceLink)]  # KLING_MCP_RESULT_LINKS is off
    text = text_of(result)
    assert data["resource_uri"] in text
    assert data["local_path"] in text
    assert data["media_url"] in text
    assert "[SANDBOX]" in text
    assert "no credits were used" in text


@pytest.mark.parametrize("mode", MODES)
async def test_storyboard_makes_one_clip_as_long_as_its_shots(settings: Settings, mode: str, sandbox: Any) -> None:
    shots = [{"prompt": "sunrise", "duration": 3}, {"prompt": "noon", "duration": 4}, {"prompt": "dusk", "duration": 5}]
    with anyio.fail_after(30):
        async with Client(build_server(settings), mode=mode) as client:
            result = await client.call_tool("storyboard", {"shots": shots, "aspect_ratio": "9:16"})
    data = data_of(result)
    assert data["status"] == "completed", text_of(result)
    assert data["video_seconds"] == 12
    duration, width, height = probe(data["local_path"])
    assert duration == pytest.approx(12, abs=0.3)
    assert height > width
    (job,) = sandbox.gateway.jobs.values()
    assert job.body["multi_prompt"] == shots


async def test_animate_image_sends_the_image_to_the_image_endpoint(settings: Settings, sandbox: Any) -> None:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (640, 360), (200, 30, 30)).save(buffer, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    with anyio.fail_after(30):
        async with Client(build_server(settings)) as client:
            result = await client.call_tool("animate_image", {"image_url": uri, "prompt": "it pulses", "duration": 3})
    data = data_of(result)
    assert data["status"] == "completed", text_of(result)
    assert data["params"]["endpoint"] == "image_to_video"
    assert data["request_id"].startswith("kling-video-v3-turbo-pro-image-to-video_")
    (job,) = sandbox.gateway.jobs.values()
    assert job.body["image_url"] == uri


# --- validation (every limit, one invalid call each, is in tests/test_error_sentences.py) -----------------


async def test_shot_total_error_names_the_total_and_the_fix(settings: Settings) -> None:
    shots = [{"prompt": "a", "duration": 6}, {"prompt": "b", "duration": 6}, {"prompt": "c", "duration": 5}]
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("storyboard", {"shots": shots})
    text = text_of(result)
    assert result.is_error
    assert "6+6+5 = 17 s" in text
    assert "at most 15 s" in text
    assert "shorten shots by 2 s" in text


# --- waiting, progress, cancellation -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_a_job_still_running_is_returned_with_the_next_call_not_an_error(
    settings: Settings, sandbox: Any, mode: str
) -> None:
    with anyio.fail_after(30):
        async with Client(build_server(settings), mode=mode) as client:
            first = await client.call_tool(
                "generate_video", {"prompt": "[sandbox:hold] a slow one", "wait_seconds": 0.3}
            )
            assert not first.is_error
            data = data_of(first)
            assert data["status"] in ("queued", "processing")
            assert data["done"] is False
            assert data["media_url"] is None
            assert data["next"] == f'check_status(request_id="{data["request_id"]}", wait_seconds=20)'
            assert "Next: check_status(" in text_of(first)
            sandbox.gateway.finish(data["request_id"])
            later = await client.call_tool("check_status", {"request_id": data["request_id"], "wait_seconds": 20})
    assert data_of(later)["status"] == "completed"
    assert Path(data_of(later)["local_path"]).is_file()


@pytest.mark.parametrize("mode", MODES)
async def test_progress_rises_with_readable_messages_while_waiting(settings: Settings, sandbox: Any, mode: str) -> None:
    updates: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, total, message))
        if len(updates) == 5:
            for job in sandbox.gateway.jobs.values():
                sandbox.gateway.finish(job.request_id)

    with anyio.fail_after(30):
        async with Client(build_server(settings), mode=mode) as client:
            result = await client.call_tool(
                "generate_video",
                {"prompt": "[sandbox:hold] watch me", "wait_seconds": 20},
                progress_callback=on_progress,
            )
    assert data_of(result)["status"] == "completed"
    assert len(updates) >= 5
    values = [u[0] for u in updates]
    assert values == sorted(values)
    assert len(set(values)) == len(values)
    assert all(total == 100 for _, total, _ in updates)
    assert values[-1] == 100
    assert all(message for _, _, message in updates)
    assert "elapsed" in (updates[0][2] or "")


async def test_cancelling_a_call_stops_the_wait_not_the_job(settings: Settings, sandbox: Any) -> None:
    waiting = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        waiting.set()  # the first progress report comes from inside the wait, after the submit

    with anyio.fail_after(30):
        async with Client(build_server(settings), mode="legacy") as client:
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    await client.call_tool(
                        "generate_video",
                        {"prompt": "[sandbox:hold] cancel my wait", "wait_seconds": 50},
                        progress_callback=on_progress,
                    )

                tg.start_soon(call)
                await waiting.wait()
                tg.cancel_scope.cancel()
            (job,) = sandbox.gateway.jobs.values()
            sandbox.gateway.finish(job.request_id)
            result = await client.call_tool("check_status", {"request_id": job.request_id, "wait_seconds": 20})
    assert data_of(result)["status"] == "completed"
    assert sandbox.gateway.submit_count == 1


# --- failures the gateway reports ----------------------------------------------------------------------------


async def test_failed_job_is_an_error_result_that_says_a_retry_is_not_free(settings: Settings) -> None:
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate_video", {"prompt": "[sandbox:fail] rejected"})
    assert result.is_error
    data = data_of(result)
    assert data["status"] == "failed"
    assert data["retry_free"] is False
    assert data["error"]
    assert "FAILED" in text_of(result)


async def test_error_jobs_are_resubmitted_free_then_reported_with_a_free_retry(
    settings: Settings, sandbox: Any
) -> None:
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate_video", {"prompt": "[sandbox:error] always broken"})
    assert result.is_error
    data = data_of(result)
    assert data["status"] == "error"
    assert data["retry_free"] is True
    assert data["attempts"] == 3  # the first try and two free automatic retries
    assert sandbox.gateway.submit_count == 3


async def test_an_error_after_an_inline_image_says_to_pass_a_public_url(settings: Settings, sandbox: Any) -> None:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (640, 360), (30, 200, 30)).save(buffer, "PNG")
    inline = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    async with Client(build_server(settings)) as client:
        inlined = await client.call_tool("animate_image", {"image_url": inline, "prompt": "[sandbox:error] inline"})
        plain = await client.call_tool("generate_video", {"prompt": "[sandbox:error] no image"})
    advice = "may not accept inline (data:) images: pass a public https URL"
    assert inlined.is_error
    assert data_of(inlined)["status"] == "error"
    assert advice in text_of(inlined)
    assert advice in (data_of(inlined)["error"] or "")
    assert plain.is_error
    assert "data:" not in text_of(plain)  # the advice is for inline images only


async def test_an_error_once_job_recovers_on_its_automatic_retry(settings: Settings, sandbox: Any) -> None:
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate_video", {"prompt": "[sandbox:error-once] flaky"})
    data = data_of(result)
    assert data["status"] == "completed", text_of(result)
    assert data["attempts"] == 2
    second = await _check_same_id_resolves(settings, data)
    assert second == data["request_id"]


async def _check_same_id_resolves(settings: Settings, data: dict[str, Any]) -> str:
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("check_status", {"request_id": data["request_id"]})
    return str(data_of(result)["request_id"])


async def test_unknown_request_id_is_an_error_that_points_to_list_jobs(settings: Settings) -> None:
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("check_status", {"request_id": "nope"})
    assert result.is_error
    assert "list_jobs" in text_of(result)


async def test_jobs_survive_a_server_restart_on_the_same_ledger(settings: Settings, sandbox: Any) -> None:
    async with Client(build_server(settings)) as client:
        first = await client.call_tool("generate_video", {"prompt": "[sandbox:hold] outlive me", "wait_seconds": 0})
    request_id = data_of(first)["request_id"]
    sandbox.gateway.finish(request_id)
    async with Client(build_server(settings)) as client:
        with anyio.fail_after(20):
            result = await client.call_tool("check_status", {"request_id": request_id, "wait_seconds": 15})
        listing = await client.call_tool("list_jobs", {})
    assert data_of(result)["status"] == "completed"
    assert [j["request_id"] for j in data_of(listing)["jobs"]] == [request_id]
