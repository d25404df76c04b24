"""Longer work from clips: extend from the last frame, join clips, image references, previews the agent sees."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.types import (
    BlobResourceContents,
    CallToolResult,
    ImageContent,
    TextContent,
    TextResourceContents,
)
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kling_mcp import media
from kling_mcp.config import Settings
from kling_mcp.sandbox.server import serve_asgi
from kling_mcp.server import build_server

pytestmark = [pytest.mark.anyio, pytest.mark.render_size(640, 360)]


def text_of(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


def data_of(result: CallToolResult) -> dict[str, Any]:
    assert result.structured_content is not None, text_of(result)
    return dict(result.structured_content)


def png_bytes(size: tuple[int, int], color: tuple[int, int, int] = (200, 40, 40), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


def decode_data_uri(uri: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


async def test_extend_video_sends_exactly_the_last_frame_of_its_parent(settings: Settings, sandbox: Any) -> None:
    with anyio.fail_after(60):
        async with Client(build_server(settings)) as client:
            parent = data_of(
                await client.call_tool("generate_video", {"prompt": "a train leaves", "aspect_ratio": "1:1"})
            )
            child_result = await client.call_tool(
                "extend_video",
                {"request_id": parent["request_id"], "prompt": "the train enters a tunnel", "duration": 3},
            )
            child = data_of(child_result)
            resource = await client.read_resource(child["resource_uri"])
    assert child["status"] == "completed", text_of(child_result)
    assert child["params"]["endpoint"] == "image_to_video"
    assert child["params"]["aspect_ratio"] == "1:1"
    assert child["parent"] == parent["request_id"]
    sent = sandbox.gateway.jobs[child["request_id"]].body["image_url"]
    assert sent.startswith("data:image/png;base64,")
    expected = media.last_frame_image(parent["local_path"]).convert("RGB")
    got = decode_data_uri(sent).convert("RGB")
    assert got.size == expected.size
    assert got.tobytes() == expected.tobytes()
    contents = resource.contents[0]
    assert isinstance(contents, TextResourceContents)
    assert json.loads(contents.text)["chain"] == [parent["request_id"], child["request_id"]]


async def test_extend_video_of_an_unfinished_job_says_to_wait(settings: Settings, sandbox: Any) -> None:
    async with Client(build_server(settings)) as client:
        held = data_of(await client.call_tool("generate_video", {"prompt": "[sandbox:hold] x", "wait_seconds": 0}))
        result = await client.call_tool("extend_video", {"request_id": held["request_id"], "prompt": "next"})
    assert result.is_error
    assert "check_status" in text_of(result)
    assert sandbox.gateway.submit_count == 1


async def test_concat_of_matching_clips_copies_and_lasts_their_sum(settings: Settings) -> None:
    async with Client(build_server(settings)) as client:
        ids = [
            data_of(await client.call_tool("generate_video", {"prompt": f"clip {i}", "duration": d}))["request_id"]
            for i, d in enumerate((3, 4, 5))
        ]
        result = await client.call_tool("concat_videos", {"request_ids": ids, "title": "my film/../../etc"})
    film = data_of(result)
    assert film["method"] == "copy"
    assert film["duration_s"] == pytest.approx(12, abs=0.3)
    path = Path(film["path"])
    assert path.parent == settings.resolved_output_dir / "films"  # apart from the downloads
    assert path.name == "my_film_.._.._etc.mp4"
    info = media.probe(path)
    assert info.duration_s == pytest.approx(12, abs=0.3)
    assert info.frames == 12 * 8
    assert film["uri"] == path.absolute().as_uri()
    assert str(path) in text_of(result)


async def test_concat_of_mixed_aspect_ratios_reencodes_to_the_first_shape(settings: Settings) -> None:
    async with Client(build_server(settings)) as client:
        wide = data_of(await client.call_tool("generate_video", {"prompt": "wide", "duration": 3}))
        tall = data_of(
            await client.call_tool("generate_video", {"prompt": "tall", "duration": 3, "aspect_ratio": "9:16"})
        )
        result = await client.call_tool("concat_videos", {"request_ids": [wide["request_id"], tall["request_id"]]})
    film = data_of(result)
    assert film["method"] == "reencode"
    assert (film["width"], film["height"]) == (640, 360)
    assert media.probe(film["path"]).duration_s == pytest.approx(6, abs=0.3)


async def test_concat_needs_finished_clips(settings: Settings) -> None:
    async with Client(build_server(settings)) as client:
        done = data_of(await client.call_tool("generate_video", {"prompt": "done"}))
        held = data_of(await client.call_tool("generate_video", {"prompt": "[sandbox:hold] no", "wait_seconds": 0}))
        result = await client.call_tool("concat_videos", {"request_ids": [done["request_id"], held["request_id"]]})
    assert result.is_error
    assert held["request_id"] in text_of(result)


# --- image references ----------------------------------------------------------------------------------------

LOCAL_IMAGE_CASES = [
    ((200, 400), "PNG", "at least 300 px"),
    ((1000, 300), "PNG", "aspect"),
    ((400, 400), "GIF", "PNG or JPEG"),
]


@pytest.mark.parametrize(("size", "fmt", "message"), LOCAL_IMAGE_CASES)
async def test_local_images_that_break_a_rule_are_refused_before_any_request(
    settings: Settings, sandbox: Any, tmp_path: Path, size: tuple[int, int], fmt: str, message: str
) -> None:
    path = tmp_path / "frame.png"  # the name lies on purpose: the content decides
    path.write_bytes(png_bytes(size, fmt=fmt))
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("animate_image", {"image_url": str(path)})
    assert result.is_error
    assert message in text_of(result)
    assert "image_url" in text_of(result)
    assert sandbox.gateway.submit_count == 0


async def test_an_oversized_local_image_is_refused_without_reading_it(
    settings: Settings, sandbox: Any, tmp_path: Path
) -> None:
    path = tmp_path / "huge.png"
    with path.open("wb") as handle:
        handle.truncate(51 * 1024 * 1024)
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("animate_image", {"image_url": str(path)})
    assert result.is_error
    assert "50 MB" in text_of(result)
    assert sandbox.gateway.submit_count == 0


async def test_relative_and_missing_paths_are_explained(settings: Settings, sandbox: Any) -> None:
    async with Client(build_server(settings)) as client:
        relative = await client.call_tool("animate_image", {"image_url": "frames/a.png"})
        missing = await client.call_tool("animate_image", {"image_url": "/nonexistent/a.png"})
    assert "absolute" in text_of(relative)
    assert "readable" in text_of(missing)
    assert sandbox.gateway.submit_count == 0


async def test_a_valid_local_image_travels_as_a_data_uri(settings: Settings, sandbox: Any, tmp_path: Path) -> None:
    path = tmp_path / "frame.jpg"
    path.write_bytes(png_bytes((640, 360), fmt="JPEG"))
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("animate_image", {"image_url": path.as_uri(), "duration": 3})
    data = data_of(result)
    assert data["status"] == "completed", text_of(result)
    assert sandbox.gateway.jobs[data["request_id"]].body["image_url"].startswith("data:image/jpeg;base64,")


async def test_a_last_frame_reference_animates_from_a_finished_job(settings: Settings, sandbox: Any) -> None:
    async with Client(build_server(settings)) as client:
        parent = data_of(await client.call_tool("generate_video", {"prompt": "parent"}))
        ref = f"kling://jobs/{parent['request_id']}/last-frame"
        result = await client.call_tool("storyboard", {"shots": [{"prompt": "a"}, {"prompt": "b"}], "image_url": ref})
    data = data_of(result)
    assert data["status"] == "completed", text_of(result)
    sent = decode_data_uri(sandbox.gateway.jobs[data["request_id"]].body["image_url"]).convert("RGB")
    assert sent.tobytes() == media.last_frame_image(parent["local_path"]).convert("RGB").tobytes()


@pytest.fixture
async def image_host() -> AsyncIterator[str]:
    """A loopback web server with a small image and a good one, to check remote URLs from their first bytes."""
    images = {"small.png": png_bytes((120, 120)), "good.png": png_bytes((640, 360))}

    async def serve(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in images:
            return Response(status_code=404)
        return Response(images[name], media_type="image/png")

    async with serve_asgi(Starlette(routes=[Route("/{name}", serve)]), "127.0.0.1", 0) as base_url:
        yield base_url


@pytest.mark.private_image_urls
async def test_remote_images_are_checked_from_their_first_bytes(
    settings: Settings, sandbox: Any, image_host: str
) -> None:
    # The image host is on loopback, which the guard refuses in every mode unless told otherwise.
    async with Client(build_server(settings.with_(allow_private_urls=True))) as client:
        small = await client.call_tool("animate_image", {"image_url": f"{image_host}/small.png"})
        missing = await client.call_tool("animate_image", {"image_url": f"{image_host}/nope.png"})
        good = await client.call_tool("animate_image", {"image_url": f"{image_host}/good.png", "duration": 3})
    assert small.is_error
    assert "300 px" in text_of(small)
    assert missing.is_error
    assert "404" in text_of(missing)
    assert data_of(good)["status"] == "completed", text_of(good)
    assert sandbox.gateway.submit_count == 1


# --- previews --------------------------------------------------------------------------------------------------


async def test_results_show_a_small_preview_and_resources_serve_frames_and_the_video(settings: Settings) -> None:
    async with Client(build_server(settings)) as client:
        clip = await client.call_tool("generate_video", {"prompt": "preview me", "duration": 3})
        story = await client.call_tool(
            "storyboard",
            {
                "shots": [
                    {"prompt": "one", "duration": 3},
                    {"prompt": "two", "duration": 3},
                    {"prompt": "three", "duration": 3},
                ]
            },
        )
        rid = data_of(clip)["request_id"]
        poster = await client.read_resource(f"kling://jobs/{rid}/poster.jpg")
        last = await client.read_resource(f"kling://jobs/{rid}/last-frame.png")
        video = await client.read_resource(f"kling://jobs/{rid}/video")
    for result in (clip, story):
        images = [c for c in result.content if isinstance(c, ImageContent)]
        assert len(images) == 1
        assert images[0].mime_type == "image/jpeg"
        assert len(base64.b64decode(images[0].data)) <= settings.preview_max_bytes
    assert f"kling://jobs/{data_of(story)['request_id']}/contact-sheet.jpg" in text_of(story)
    sheet = Image.open(io.BytesIO(base64.b64decode(next(c for c in story.content if isinstance(c, ImageContent)).data)))
    assert sheet.width == 3 * 320  # one tile per shot
    blobs = [r.contents[0] for r in (poster, last, video)]
    assert all(isinstance(b, BlobResourceContents) for b in blobs)
    assert [b.mime_type for b in blobs] == ["image/jpeg", "image/png", "video/mp4"]
    assert base64.b64decode(blobs[2].blob) == Path(data_of(clip)["local_path"]).read_bytes()  # type: ignore[union-attr]


async def test_a_large_data_uri_is_accepted_by_every_image_argument(settings: Settings, sandbox: Any) -> None:
    import os

    noisy = Image.frombytes("RGB", (400, 400), os.urandom(400 * 400 * 3))
    buffer = io.BytesIO()
    noisy.save(buffer, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    assert len(uri) > 100_000
    async with Client(build_server(settings)) as client:
        story = await client.call_tool("storyboard", {"shots": [{"prompt": "a"}, {"prompt": "b"}], "image_url": uri})
        anim = await client.call_tool("animate_image", {"image_url": uri, "duration": 3})
    assert data_of(story)["status"] == "completed", text_of(story)
    assert data_of(anim)["status"] == "completed", text_of(anim)
