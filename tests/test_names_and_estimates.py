"""Files people can find (downloads by time, prompt and short id) and estimates that follow the sandbox's pace."""

from __future__ import annotations

import re
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client

from kling_mcp.config import Settings
from kling_mcp.files import slug, video_name
from kling_mcp.jobs import progress_of
from kling_mcp.models import Job
from kling_mcp.runtime import engine_config
from kling_mcp.server import build_server
from tests.test_store import req

ID = "kling-video-v3-turbo-pro-text-to-video_01a23bdd-d038-7005-84d8-011e657ef1d2"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A red kite over the dunes, at dusk!", "a-red-kite-over-the-dunes-at-dusk"),
        ("Crème brûlée — 2 spoons", "creme-brulee-2-spoons"),
        ("a " + "very " * 20 + "long prompt", "a-very-very-very-very-very-very-very"),
        ("../../etc/passwd", "etc-passwd"),
        ("日本の夏", "video"),
        (None, "video"),
        ("x" * 60, "x" * 40),
    ],
)
def test_a_slug_is_lower_case_ascii_words_within_40_characters(text: str | None, expected: str) -> None:
    assert slug(text) == expected


def test_a_video_is_named_by_local_time_prompt_and_the_ids_random_part() -> None:
    created = 1_796_300_000.0
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(created))
    assert video_name(created, "A red kite", ID) == f"{stamp}_a-red-kite_657ef1d2.mp4"
    assert video_name(created, "A red kite", ID.replace("1d2", "1d3")) != video_name(created, "A red kite", ID)


@pytest.mark.anyio
async def test_a_downloaded_storyboard_is_named_by_its_first_shot(settings: Settings) -> None:
    shots = [{"prompt": "A lighthouse at dawn", "duration": 3}, {"prompt": "gulls", "duration": 3}]
    with anyio.fail_after(30):
        async with Client(build_server(settings)) as client:
            result = await client.call_tool("storyboard", {"shots": shots})
    assert result.structured_content is not None
    name = Path(result.structured_content["local_path"]).name
    assert re.fullmatch(r"\d{8}-\d{6}_a-lighthouse-at-dawn_[0-9a-f]{8}\.mp4", name), name
    assert name.endswith(result.structured_content["request_id"][-8:] + ".mp4")


def _running(video_seconds: int) -> Job:
    return Job.model_construct(  # type: ignore[call-arg]  # only what progress_of reads
        status="processing",
        download_state="off",
        submitted_at=0.0,
        created_at=0.0,
        video_seconds=video_seconds,
        request=req(duration=video_seconds),
    )


def test_sandbox_estimates_follow_its_time_scale_and_live_ones_real_time(tmp_path: Path) -> None:
    sandbox = Settings(mode="sandbox", sandbox_time_scale=20.0, state_dir=tmp_path, output_dir=tmp_path)
    live = sandbox.with_(mode="live", api_key="sk_not_used")
    assert engine_config(sandbox).time_scale == 20.0
    assert engine_config(live).time_scale == 1.0
    job = _running(3)  # about 69 s at the gateway's pace, about 3.5 s in a sandbox 20 times faster
    assert progress_of(job, 2.0, engine_config(sandbox).time_scale)[2].endswith("about 1s left (estimate)")
    assert progress_of(job, 5.0, engine_config(sandbox).time_scale)[2].endswith("taking longer than the estimate")
    assert progress_of(job, 5.0, engine_config(live).time_scale)[2].endswith("about 64s left (estimate)")
