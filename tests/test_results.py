"""What every client can carry: results of text, structured content and at most one small image, and waits that end
before a client's own request timeout. Through the SDK's in-memory client, against the sandbox or a gateway here."""

from __future__ import annotations

import base64
import io
import re
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, ImageContent, ResourceLink, TextContent
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from kling_mcp.config import Settings
from kling_mcp.server import build_server
from tests.support.clips import make_clip

pytestmark = pytest.mark.anyio

TEXT_LIMIT = 2500  # issue 11: what a model reads of a finished generate_video
REPRS = re.compile(r"AnyUrl\(|Url\(|ResourceLink\(|=None\b| object at 0x")
THREE_SHOTS = [{"prompt": "one", "duration": 3}, {"prompt": "two", "duration": 3}, {"prompt": "three", "duration": 3}]


def text_of(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


def data_of(result: CallToolResult) -> dict[str, Any]:
    assert result.structured_content is not None, text_of(result)
    return dict(result.structured_content)


def images_of(result: CallToolResult) -> list[bytes]:
    return [base64.b64decode(c.data) for c in result.content if isinstance(c, ImageContent)]


def links_of(result: CallToolResult) -> list[str]:
    return [str(c.uri) for c in result.content if isinstance(c, ResourceLink)]


def assert_portable(result: CallToolResult, max_image_bytes: int) -> None:
    """Only text and image blocks, one text, at most one image within the cap, and no Python reprs."""
    assert {c.type for c in result.content} <= {"text", "image"}, [c.type for c in result.content]
    assert sum(isinstance(c, TextContent) for c in result.content) == 1
    images = images_of(result)
    assert len(images) <= 1
    assert all(len(image) <= max_image_bytes for image in images)
    assert not REPRS.search(text_of(result)), text_of(result)


# --- portable results -------------------------------------------------------------------------------------------


@pytest.mark.render_size(640, 360)
async def test_finished_results_are_text_structured_content_and_one_small_image(settings: Settings) -> None:
    with anyio.fail_after(60):
        async with Client(build_server(settings)) as client:
            clip = await client.call_tool("generate_video", {"prompt": "a red kite over dunes", "duration": 4})
            story = await client.call_tool("storyboard", {"shots": THREE_SHOTS})
            ids = [data_of(clip)["request_id"], data_of(story)["request_id"]]
            film = await client.call_tool("concat_videos", {"request_ids": ids})
    for result in (clip, story, film):
        assert not result.is_error, text_of(result)
        assert_portable(result, settings.preview_max_bytes)
    data = data_of(clip)
    text = text_of(clip)
    assert len(text) <= TEXT_LIMIT
    for needle in (data["request_id"], data["local_path"], data["media_url"], data["resource_uri"]):
        assert needle in text
    assert "4 s" in text
    assert "no credits were used" in text
    assert f'extend_video(request_id="{data["request_id"]}"' in text
    (poster,) = images_of(clip)
    assert Image.open(io.BytesIO(poster)).format == "JPEG"
    assert f"{data_of(story)['resource_uri']}/contact-sheet.jpg" in text_of(story)
    assert "3 shots" in text_of(story)
    assert len(images_of(story)) == 1
    assert images_of(film) == []
    assert data_of(film)["path"] in text_of(film)
    assert "nothing billed" in text_of(film)


async def test_resource_links_come_only_with_result_links_on(settings: Settings) -> None:
    async with Client(build_server(replace(settings, result_links=True))) as client:
        first = await client.call_tool("generate_video", {"prompt": "linked one", "duration": 3})
        second = await client.call_tool("generate_video", {"prompt": "linked two", "duration": 3})
        ids = [data_of(first)["request_id"], data_of(second)["request_id"]]
        film = await client.call_tool("concat_videos", {"request_ids": ids})
    data = data_of(first)
    file_uri = Path(data["local_path"]).absolute().as_uri()
    poster = f"{data['resource_uri']}/poster.jpg"
    assert links_of(first) == [data["resource_uri"], data["media_url"], file_uri, poster]
    assert links_of(film) == [Path(data_of(film)["path"]).absolute().as_uri()]
    assert data["resource_uri"] in text_of(first)  # the text says the same with links on


@pytest.mark.render_size(640, 360)
async def test_a_preview_above_the_cap_is_reencoded_to_fit_and_the_resource_keeps_the_original(
    settings: Settings,
) -> None:
    async with Client(build_server(settings)) as client:
        story = await client.call_tool("storyboard", {"shots": THREE_SHOTS})
    (full,) = images_of(story)
    cap = len(full) // 3
    rid = data_of(story)["request_id"]
    async with Client(build_server(replace(settings, preview_max_bytes=cap))) as client:
        again = await client.call_tool("check_status", {"request_id": rid})
        sheet = await client.read_resource(f"kling://jobs/{rid}/contact-sheet.jpg")
    (small,) = images_of(again)
    assert len(small) <= cap
    assert Image.open(io.BytesIO(small)).format == "JPEG"
    assert base64.b64decode(sheet.contents[0].blob) == full  # type: ignore[union-attr]


@pytest.mark.parametrize("cap", [0, 100])  # 0: off; 100 bytes: no JPEG fits, so none is sent
async def test_no_image_when_the_cap_is_off_or_too_small_for_any_jpeg(settings: Settings, cap: int) -> None:
    async with Client(build_server(replace(settings, preview_max_bytes=cap))) as client:
        result = await client.call_tool("generate_video", {"prompt": "no picture", "duration": 3})
    assert data_of(result)["status"] == "completed", text_of(result)
    assert images_of(result) == []
    assert_portable(result, 0)


def _long_gateway(video: Path) -> Starlette:
    """Live-shaped answers at their longest: a signed media URL of 3,000 characters, a 5,000-character failure."""
    prompts: dict[str, str] = {}

    async def submit(request: Request) -> Response:
        request_id = f"{request.path_params['api_id']}_{uuid.uuid4()}"
        prompts[request_id] = (await request.json()).get("prompt", "")
        return JSONResponse({"request_id": request_id, "status": "IN_QUEUE"}, status_code=202)

    async def status(request: Request) -> Response:
        request_id = request.path_params["request_id"]
        if "refuse" in prompts[request_id]:
            return JSONResponse({"request_id": request_id, "status": "FAILED", "error": "moderation " * 500})
        url = f"{str(request.base_url).rstrip('/')}/cdn/{request_id}.mp4?signature={'s' * 3000}"
        return JSONResponse({"request_id": request_id, "status": "COMPLETED", "output": {"media_url": [url]}})

    async def media(request: Request) -> Response:
        return FileResponse(video, media_type="video/mp4")

    return Starlette(
        routes=[
            Route("/{api_id}/v1/{api_id2}-request", submit, methods=["POST"]),
            Route("/v2/requests/status/{request_id}", status),
            Route("/cdn/{name}", media),
        ]
    )


async def test_the_text_stays_short_with_a_long_signed_url_and_a_long_failure(tmp_path: Path) -> None:
    settings = Settings(
        mode="live",
        api_key="sk_test_long_answers",
        base_url="http://gateway.test",
        poll_interval=0.05,
        max_wait=10,
        state_dir=tmp_path / "state",
        output_dir=tmp_path / "out",
        allow_private_urls=True,
    )
    server = build_server(settings, transport=httpx2.ASGITransport(_long_gateway(make_clip(tmp_path / "c.mp4"))))
    with anyio.fail_after(30):
        async with Client(server) as client:
            done = await client.call_tool("generate_video", {"prompt": "a long url", "duration": 3})
            failed = await client.call_tool("generate_video", {"prompt": "refuse me", "duration": 3})
    assert data_of(done)["status"] == "completed", text_of(done)
    assert len(data_of(done)["media_url"]) > 3000  # the structured result keeps it whole
    assert data_of(done)["local_path"] in text_of(done)
    assert "Bills 3 s of video." in text_of(done)
    assert data_of(failed)["status"] == "failed"
    assert "May bill 3 s of video (FAILED)." in text_of(failed)
    for result in (done, failed):
        assert len(text_of(result)) <= TEXT_LIMIT
        assert_portable(result, settings.preview_max_bytes)


# --- waits ------------------------------------------------------------------------------------------------------


async def test_every_wait_seconds_in_the_schemas_tops_out_at_50(settings: Settings) -> None:
    async with Client(build_server(settings)) as client:
        tools = (await client.list_tools()).tools
    waits = {t.name: t.input_schema["properties"]["wait_seconds"] for t in tools if "wait_seconds" in str(t)}
    assert set(waits) == {"generate_video", "animate_image", "storyboard", "extend_video", "check_status"}
    assert {w["maximum"] for w in waits.values()} == {50}
    assert Settings().max_wait < 50  # the default wait is under the cap


@pytest.mark.parametrize(
    ("tool", "args"),
    [("generate_video", {"prompt": "too long a wait"}), ("check_status", {"request_id": "anything"})],
)
async def test_a_wait_above_50_is_refused_naming_the_field_and_the_limit(
    settings: Settings, sandbox: Any, tool: str, args: dict[str, Any]
) -> None:
    async with Client(build_server(settings)) as client:
        result = await client.call_tool(tool, {**args, "wait_seconds": 51})
    assert result.is_error
    text = text_of(result)
    assert "wait_seconds" in text
    assert "50" in text
    assert "51" in text
    assert sandbox.gateway.submit_count == 0


async def test_the_configured_max_wait_caps_what_a_call_asks_for(settings: Settings, sandbox: Any) -> None:
    with anyio.fail_after(10):  # a wait of 50 s would blow this: the server waits at most max_wait
        async with Client(build_server(replace(settings, max_wait=0.2))) as client:
            held = await client.call_tool("generate_video", {"prompt": "[sandbox:hold] capped", "wait_seconds": 50})
            rid = data_of(held)["request_id"]
            status = await client.call_tool("check_status", {"request_id": rid, "wait_seconds": 50})
    assert data_of(held)["status"] in ("queued", "processing")
    assert data_of(status)["status"] in ("queued", "processing")
    assert data_of(status)["next"] == f'check_status(request_id="{rid}", wait_seconds=0.2)'


async def test_next_never_suggests_a_wait_the_schema_refuses(settings: Settings, sandbox: Any) -> None:
    async with Client(build_server(replace(settings, max_wait=300))) as client:
        held = await client.call_tool("generate_video", {"prompt": "[sandbox:hold] patient", "wait_seconds": 0})
    rid = data_of(held)["request_id"]
    assert data_of(held)["next"] == f'check_status(request_id="{rid}", wait_seconds=50)'
    assert f'Next: check_status(request_id="{rid}", wait_seconds=50)' in text_of(held)


async def test_a_client_that_times_out_early_finds_the_job_with_check_status(settings: Settings, sandbox: Any) -> None:
    with anyio.fail_after(30):
        async with Client(build_server(settings)) as client:
            with pytest.raises(MCPError, match="Timed out"):  # the client's own read timeout
                await client.call_tool(
                    "generate_video", {"prompt": "[sandbox:hold] impatient client"}, read_timeout_seconds=0.5
                )
            (job,) = sandbox.gateway.jobs.values()
            sandbox.gateway.finish(job.request_id)
            result = await client.call_tool("check_status", {"request_id": job.request_id, "wait_seconds": 20})
    assert data_of(result)["status"] == "completed"
    assert Path(data_of(result)["local_path"]).is_file()
    assert sandbox.gateway.submit_count == 1
