"""Every limit's message, rendered the way a model reads it, is one English sentence: the field, the limit, what was
sent, then the fix. Each limit is driven through the real in-memory client with a call that breaks it; the few
checks no tool call can reach (the tools' schemas stop those values first) are rendered directly.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.types import TextContent

from kling_mcp import limits
from kling_mcp.config import Settings
from kling_mcp.errors import InvalidInputError
from kling_mcp.models import GenerationRequest
from kling_mcp.server import build_server

pytestmark = pytest.mark.anyio

SENTENCE = re.compile(r"(?P<field>\S+) must be (?P<limit>.+?)(?:; got (?P<got>.+?))?\. Fix: (?P<fix>.+)\.")
# Wording that means a message was passed through from a library, not written for the reader.
FOREIGN = ("should", "Field required", "after validation", "Input ", "Extra inputs", "None", "Measured(", "AnyUrl(")


def png_uri(width: int, height: int, fmt: str = "PNG") -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buffer, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


OK_IMAGE = png_uri(400, 300)
SHOT = {"prompt": "a", "duration": 3}

# (tool, arguments, field the message must start with, a piece of the limit it must state)
CALLS: list[tuple[str, dict[str, Any], str, str]] = [
    ("generate_video", {"prompt": "x" * (limits.PROMPT_MAX_CHARS + 1)}, "prompt", "1-3072 characters"),
    ("generate_video", {"prompt": ""}, "prompt", "1-3072 characters"),
    ("generate_video", {"prompt": "   "}, "prompt", "not only spaces"),
    ("generate_video", {"prompt": None}, "prompt", "text"),
    ("generate_video", {}, "prompt", "given"),
    ("generate_video", {"prompt": "ok", "duration": 16}, "duration", "from 3 to 15"),
    ("generate_video", {"prompt": "ok", "duration": 2}, "duration", "from 3 to 15"),
    ("generate_video", {"prompt": "ok", "duration": "five"}, "duration", "whole number"),
    ("generate_video", {"prompt": "ok", "aspect_ratio": "4:3"}, "aspect_ratio", "16:9, 9:16, 1:1"),
    ("generate_video", {"prompt": "ok", "wait_seconds": -1}, "wait_seconds", "from 0 to"),
    ("generate_video", {"prompt": "ok", "wait_seconds": 10_000}, "wait_seconds", "from 0 to"),
    ("generate_video", {"prompt": "ok", "idempotency_key": "k" * 201}, "idempotency_key", "at most 200"),
    ("generate_video", {"prompt": "ok", "force_new": "maybe"}, "force_new", "true or false"),
    ("animate_image", {"image_url": ""}, "image_url", "characters"),
    ("animate_image", {"image_url": "ftp://host/x.png"}, "image_url", "http(s) URL"),
    ("animate_image", {"image_url": "http://"}, "image_url", "http(s) URL"),
    ("animate_image", {"image_url": png_uri(400, 300, "GIF")}, "image_url", "JPEG or PNG"),
    ("animate_image", {"image_url": png_uri(400, 200)}, "image_url", "at least 300 px"),
    ("animate_image", {"image_url": png_uri(1000, 300)}, "image_url", "aspect ratio between 1:2.5 and 2.5:1"),
    ("animate_image", {"image_url": "frame.png"}, "image_url", "absolute file path"),
    ("animate_image", {"image_url": OK_IMAGE, "duration": 99}, "duration", "from 3 to 15"),
    ("storyboard", {"shots": []}, "shots", "1-6 items"),
    ("storyboard", {"shots": [SHOT] * 7}, "shots", "1-6 items"),
    ("storyboard", {"shots": "one shot"}, "shots", "a list"),
    ("storyboard", {"shots": [SHOT, {"prompt": "b", "duration": 13}]}, "shots", "at most 15 s long in total"),
    ("storyboard", {"shots": [{"prompt": "a", "duration": 20}]}, "shots.0.duration", "from 3 to 15"),
    ("storyboard", {"shots": [{"duration": 5}]}, "shots.0.prompt", "given"),
    ("storyboard", {"shots": [{"prompt": " "}]}, "shots[0].prompt", "not only spaces"),
    ("storyboard", {"shots": [{"prompt": "a", "camera": "pan"}]}, "shots.0.camera", "left out"),
    ("storyboard", {"shots": [SHOT], "image_url": "ftp://x/y.png"}, "image_url", "http(s) URL"),
    ("extend_video", {"request_id": "", "prompt": "on"}, "request_id", "1-200 characters"),
    ("check_status", {"request_id": ""}, "request_id", "1-200 characters"),
    ("check_status", {"request_id": "r" * 201}, "request_id", "1-200 characters"),
    ("check_status", {"request_id": "r", "wait_seconds": -5}, "wait_seconds", "from 0 to"),
    ("concat_videos", {"request_ids": ["a"]}, "request_ids", "2-50 items"),
    ("concat_videos", {"request_ids": ["a"] * 51}, "request_ids", "2-50 items"),
    ("concat_videos", {"request_ids": ["a", ""]}, "request_ids.1", "1-200 characters"),
    ("concat_videos", {"request_ids": ["a", "b"], "title": "t" * 101}, "title", "at most 100 characters"),
    ("list_jobs", {"limit": 0}, "limit", "from 1 to 200"),
    ("list_jobs", {"limit": 201}, "limit", "from 1 to 200"),
    ("list_jobs", {"status": "done"}, "status", "one of submitting, queued"),
]


def sentence_in(text: str, field: str) -> str:
    """The message about ``field`` in an error result: an argument error's line, or a limit error's text."""
    for line in text.splitlines():
        if line.startswith(f"- {field} "):
            return line.removeprefix("- ")
    marker = "[invalid_input] "
    assert marker in text, text
    return text.split(marker, 1)[1].removesuffix(" Nothing was submitted or charged.")


def assert_reads_as_a_sentence(message: str, field: str, limit: str) -> None:
    match = SENTENCE.fullmatch(message)
    assert match, f"not '<field> must be <limit>[; got <value>]. Fix: <fix>.': {message!r}"
    assert match["field"] == field, message
    assert limit in match["limit"], message
    assert ". " not in match["limit"], f"a second clause: {message!r}"
    assert message.count(" must ") == 1, f"a doubled verb: {message!r}"
    assert match["fix"][0].islower(), message
    assert not match["fix"].endswith("."), message
    assert not any(word in message for word in FOREIGN), f"library wording: {message!r}"
    for slip in ("..", ";.", " ;", " ."):
        assert slip not in message.replace('"   "', '""').replace('" "', '""'), message


@pytest.mark.parametrize(
    ("tool", "args", "field", "limit"), CALLS, ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(CALLS)]
)
async def test_every_limit_reads_as_one_sentence_with_its_fix(
    settings: Settings, sandbox: Any, tool: str, args: dict[str, Any], field: str, limit: str
) -> None:
    with anyio.fail_after(20):
        async with Client(build_server(settings)) as client:
            result = await client.call_tool(tool, args)
    text = "\n".join(c.text for c in result.content if isinstance(c, TextContent))
    assert result.is_error, text
    assert_reads_as_a_sentence(sentence_in(text, field), field, limit)
    assert sandbox.gateway.submit_count == 0


async def test_an_image_over_the_size_limit_reads_as_a_sentence(settings: Settings, tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    with big.open("wb") as f:
        f.truncate(limits.IMAGE_MAX_BYTES + 1024 * 1024)  # sparse: the size check comes before any read
    with anyio.fail_after(20):
        async with Client(build_server(settings)) as client:
            result = await client.call_tool("animate_image", {"image_url": str(big)})
    text = "\n".join(c.text for c in result.content if isinstance(c, TextContent))
    assert result.is_error
    assert_reads_as_a_sentence(sentence_in(text, "image_url"), "image_url", "at most 50 MB")
    assert "got 51.0 MB." in text


def _raised(check: Any) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as caught:
        check()
    return caught.value


# Checks the tools' schemas shadow (the sandbox gateway and direct callers still meet them), and the request
# model's own rules, which no tool can break.
DIRECT = [
    (lambda: limits.check_prompt("x" * 3073), "prompt", "at most 3072 characters"),
    (lambda: limits.check_duration(16), "duration", "3-15 seconds"),
    (lambda: limits.check_aspect_ratio("4:3"), "aspect_ratio", "one of 16:9"),
    (lambda: limits.check_shots([]), "shots", "a list of 1-6 shots"),
    (lambda: limits.check_image(field="f", format="PNG", size_bytes=2**30, width=400, height=400), "f", "50 MB"),
    (lambda: limits.check_image_url("gopher://x"), "image_url", "http(s) URL"),
    (lambda: GenerationRequest(endpoint="text_to_video"), "prompt", "given for text-to-video"),
    (lambda: GenerationRequest(endpoint="image_to_video", prompt="a"), "image_url", "given for image-to-video"),
    (
        lambda: GenerationRequest(endpoint="text_to_video", prompt="a", shots=(limits.Shot(prompt="b"),)),
        "shots",
        "left out when prompt is given",
    ),
    (
        lambda: GenerationRequest(endpoint="text_to_video", prompt="a", image_url="https://x/y.png"),
        "image_url",
        "left out for text-to-video",
    ),
]


@pytest.mark.parametrize(("check", "field", "limit"), DIRECT)
def test_limits_no_tool_call_reaches_read_as_sentences_too(check: Any, field: str, limit: str) -> None:
    assert_reads_as_a_sentence(str(_raised(check)), field, limit)


def test_the_sentence_check_rejects_the_old_wording() -> None:
    old = "Invalid shots: must be shot durations must add up to at most 15 s; got '10+10 = 20 s'. Fix: shorten."
    with pytest.raises(AssertionError):
        assert_reads_as_a_sentence(old, "shots", "15 s")
    doubled = "shots must be shot durations must add up to at most 15 s; got 20 s. Fix: shorten them."
    with pytest.raises(AssertionError, match="verb"):
        assert_reads_as_a_sentence(doubled, "shots", "15 s")
    jargon = "duration must be Input should be less than or equal to 15; got 16. Fix: use 15."
    with pytest.raises(AssertionError, match="library wording"):
        assert_reads_as_a_sentence(jargon, "duration", "15")
