"""Arbitrary arguments at every tool: always a result or an isError, never a crash, never an invalid paid request."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.types import TextContent

from kling_mcp.config import Settings
from kling_mcp.sandbox import SandboxConfig, serve_sandbox
from kling_mcp.server import build_server

ASPECTS = ("16:9", "9:16", "1:1")


class Harness:
    def __init__(self, portal: BlockingPortal, client: Client, gateway: Any) -> None:
        self.portal = portal
        self.client = client
        self.gateway = gateway

    def call(self, tool: str, args: dict[str, Any]) -> Any:
        return self.portal.call(self.client.call_tool, tool, args)


@asynccontextmanager
async def running(tmp: Path) -> AsyncIterator[tuple[Client, Any]]:
    config = SandboxConfig(time_scale=5000, render_size=(64, 36), fps=4, media_dir=tmp / "media")
    async with serve_sandbox(config) as served:
        settings_ = Settings(
            mode="sandbox",
            base_url=served.base_url,
            poll_interval=0.05,
            state_dir=tmp / "state",
            output_dir=None,
            download=False,
            error_retries=0,  # a background retry would be counted against a later example
            max_active_jobs=10_000,  # the spend guard has its own tests; here it would refuse valid calls
        )
        async with Client(build_server(settings_)) as client:
            yield client, served.gateway


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """One sandbox and one client for every example; hypothesis drives them from this thread through a portal."""
    with (
        start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(running(tmp_path_factory.mktemp("props"))) as (client, gateway),
    ):
        yield Harness(portal, client, gateway)


def valid_prompt(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 3072 and bool(value.strip())


def valid_duration(value: Any) -> bool:
    # JSON numbers with no fraction are integers to a JSON schema; booleans are not. The contract also allows a
    # numeric string ("5"), which the server accepts and sends as an integer.
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    return isinstance(value, int | float) and not isinstance(value, bool) and value == int(value) and 3 <= value <= 15


def _png_data_uri() -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (400, 300), (10, 120, 200)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# The sandbox fetches images at submit time and has no internet, so the one valid image is inline.
PNG_URI = _png_data_uri()


def valid_image(value: Any) -> bool:
    return bool(value == PNG_URI)


def expected_valid(tool: str, args: dict[str, Any]) -> bool:
    """An independent reading of docs/pixazo-contract.md §3, not the server's own code."""
    known = {
        "generate_video": {"prompt", "duration", "aspect_ratio"},
        "animate_image": {"image_url", "prompt", "duration", "aspect_ratio"},
        "storyboard": {"shots", "aspect_ratio", "image_url"},
    }[tool]
    # A null (or a blank text) for a field that may be left out means it was left out: clients send null for "not
    # set", and models in strict mode "".
    main = {"generate_video": "prompt", "animate_image": "image_url", "storyboard": "shots"}[tool]
    args = {k: v for k, v in args.items() if not (v is None or (isinstance(v, str) and not v.strip())) or k == main}
    if "aspect_ratio" in args and args["aspect_ratio"] not in ASPECTS:
        return False
    if "duration" in args and not valid_duration(args["duration"]):
        return False
    if tool == "generate_video":
        return "prompt" in args and valid_prompt(args["prompt"])
    if tool == "animate_image":
        if "prompt" in args and args["prompt"] is not None and not valid_prompt(args["prompt"]):
            return False
        return "image_url" in args and valid_image(args["image_url"])
    assert known
    if "image_url" in args and args["image_url"] is not None and not valid_image(args["image_url"]):
        return False
    shots = args.get("shots")
    if not isinstance(shots, list) or not 1 <= len(shots) <= 6:
        return False
    total = 0
    for shot in shots:
        if isinstance(shot, dict):
            shot = {k: v for k, v in shot.items() if v is not None or k == "prompt"}
        if not isinstance(shot, dict) or set(shot) - {"prompt", "duration"} or not valid_prompt(shot.get("prompt")):
            return False
        duration = shot.get("duration", 5)
        if not valid_duration(duration):
            return False
        total += int(duration)
    return total <= 15


junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-100, 100),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
)
good_prompts = st.text(min_size=1, max_size=40).filter(lambda t: bool(t.strip()))
prompts = st.one_of(good_prompts, good_prompts, good_prompts, st.just(" "), st.just("x" * 3073), st.just(""), junk)
good_durations = st.integers(3, 15)
durations = st.one_of(good_durations, good_durations, good_durations, st.sampled_from([0, 2, 16, 5.5, "5", True]), junk)
aspects = st.one_of(st.sampled_from(ASPECTS), st.sampled_from(ASPECTS), st.sampled_from(["4:3", "16:9 "]), junk)
images = st.one_of(
    st.just(PNG_URI), st.just(PNG_URI), st.sampled_from(["ftp://x/y.png", "", "http://", "file:///etc/passwd"]), junk
)
good_shot = st.fixed_dictionaries({"prompt": good_prompts}, optional={"duration": st.integers(3, 5)})
shot = st.fixed_dictionaries({}, optional={"prompt": prompts, "duration": durations, "extra": junk})
shot_lists = st.one_of(
    st.lists(good_shot, min_size=1, max_size=3),
    st.lists(good_shot, min_size=1, max_size=7),
    st.lists(shot, max_size=8),
    junk,
)


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    tool = draw(st.sampled_from(["generate_video", "animate_image", "storyboard"]))
    pool: dict[str, st.SearchStrategy[Any]] = {
        "generate_video": {"prompt": prompts, "duration": durations, "aspect_ratio": aspects},
        "animate_image": {"image_url": images, "prompt": prompts, "duration": durations, "aspect_ratio": aspects},
        "storyboard": {"shots": shot_lists, "aspect_ratio": aspects, "image_url": images},
    }[tool]
    main = {"generate_video": "prompt", "animate_image": "image_url", "storyboard": "shots"}[tool]
    # The main argument is usually present so that valid calls are common; sometimes it is left out.
    required = {main: pool[main]} if draw(st.integers(0, 9)) else {}
    optional = {k: v for k, v in pool.items() if k not in required}
    args = draw(st.fixed_dictionaries(required, optional=optional))
    args["wait_seconds"] = 0
    args["force_new"] = True
    return tool, args


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(call=calls())
def test_any_arguments_get_a_result_or_an_explained_error_and_invalid_ones_cost_nothing(
    harness: Harness, call: tuple[str, dict[str, Any]]
) -> None:
    tool, args = call
    before = harness.gateway.submit_count
    result = harness.call(tool, args)
    text = "\n".join(c.text for c in result.content if isinstance(c, TextContent))
    submitted = harness.gateway.submit_count - before
    assert text.strip() != f"Error executing tool {tool}", "the tool crashed"
    valid = expected_valid(tool, args)
    event(f"{tool} {'valid' if valid else 'invalid'}")
    if valid:
        assert not result.is_error, text
        assert submitted == 1
    else:
        assert result.is_error, f"accepted invalid {args}"
        assert submitted == 0
        assert "nothing was submitted" in text.lower() or "invalid" in text.lower()
