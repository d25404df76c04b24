from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kling_mcp.config import Settings
from tests.support.ci_skips import pytest_runtest_makereport  # a hook: CI turns every skip into a failure

pytest_plugins = ("pytester",)  # tests/test_ci_skips.py runs pytest on a scratch project

__all__ = ["pytest_runtest_makereport"]

# Fast enough that a 15 s clip "renders" in well under a second, slow enough that states are observable.
TEST_TIME_SCALE = 2000.0
TINY = (320, 180)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def sandbox(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """The sandbox gateway on a real loopback port. ``@pytest.mark.render_size(w, h)`` renders bigger frames;
    ``@pytest.mark.private_image_urls`` lets it fetch images from loopback hosts the test serves."""
    from kling_mcp.sandbox import SandboxConfig, serve_sandbox

    marker = request.node.get_closest_marker("render_size")
    size = tuple(marker.args) if marker else TINY
    config = SandboxConfig(
        time_scale=TEST_TIME_SCALE,
        render_size=size,
        fps=8,
        media_dir=tmp_path / "sandbox-media",
        allow_private_image_urls=request.node.get_closest_marker("private_image_urls") is not None,
    )
    async with serve_sandbox(config) as served:
        yield served


@pytest.fixture
def settings(tmp_path: Path, sandbox: Any) -> Settings:
    """Server settings pointed at the test sandbox, with a private ledger and output folder."""
    return Settings(
        mode="sandbox",
        base_url=sandbox.base_url,
        poll_interval=0.05,
        max_wait=20,
        state_dir=tmp_path / "state",
        output_dir=tmp_path / "out",
        sandbox_time_scale=TEST_TIME_SCALE,
    )
