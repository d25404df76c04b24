"""The server works against any gateway that follows the documented contract, not only our own sandbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client

from kling_mcp.config import Settings
from kling_mcp.server import build_server
from tests.support.clips import make_clip
from tests.support.fake_gateway import KEY, fake_gateway

pytestmark = pytest.mark.anyio


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        mode="live",
        api_key=KEY,
        base_url="http://gateway.test",
        poll_interval=0.05,
        max_wait=10,
        state_dir=tmp_path / "state",
        output_dir=tmp_path / "out",
        allow_private_urls=True,  # the gateway's names are not resolvable here; the ASGI app answers them all
    )


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_all_four_tools_complete_against_an_independent_gateway(
    settings: Settings, tmp_path: Path, mode: str
) -> None:
    app, state = fake_gateway(make_clip(tmp_path / "clip.mp4"))
    server = build_server(settings, transport=httpx2.ASGITransport(app))
    image = "https://images.example/images/frame.png"
    calls: list[tuple[str, dict[str, Any]]] = [
        ("generate_video", {"prompt": "a fox in the snow", "duration": 5}),
        ("animate_image", {"image_url": image, "prompt": "the fox runs"}),
        ("storyboard", {"shots": [{"prompt": "dawn", "duration": 3}, {"prompt": "dusk", "duration": 4}]}),
    ]
    with anyio.fail_after(30):
        async with Client(server, mode=mode) as client:
            for tool, args in calls:
                result = await client.call_tool(tool, args)
                assert not result.is_error, result.content
                data = result.structured_content
                assert data is not None
                assert data["status"] == "completed"
                assert data["mode"] == "live"
                assert data["media_url"].endswith(".mp4")
                assert Path(data["local_path"]).read_bytes() == (tmp_path / "clip.mp4").read_bytes()
                status = await client.call_tool("check_status", {"request_id": data["request_id"]})
                assert status.structured_content is not None
                assert status.structured_content["status"] == "completed"
    assert state.submits == 3
    bodies = list(state.bodies.values())
    assert bodies[0] == {"prompt": "a fox in the snow", "duration": 5, "aspect_ratio": "16:9"}
    assert bodies[1]["image_url"] == image
    assert bodies[2]["multi_prompt"] == [{"prompt": "dawn", "duration": 3}, {"prompt": "dusk", "duration": 4}]
