"""The sandbox gateway against its contract (docs/pixazo-contract.md), in process through httpx2.ASGITransport.

Time is an injected clock with time_scale=1 and no jitter, so a 5 s text-to-video job is QUEUED for exactly
6 s (the middle of limits.TIMING_QUEUE_S) and then PROCESSING for exactly estimated_render_seconds(5) = 75 s.
Tests move that clock; they never sleep to wait for state. Renders are tiny (320x180 at 8 fps).
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import av
import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from kling_mcp import limits
from kling_mcp.config import DEFAULT_I2V_PATH, DEFAULT_STATUS_PATH, DEFAULT_T2V_PATH, I2V_API_ID, T2V_API_ID
from kling_mcp.sandbox import Faults, SandboxConfig, SandboxGateway, create_app, serve_sandbox
from kling_mcp.sandbox import render as render_module
from kling_mcp.sandbox.ids import uuid7
from kling_mcp.sandbox.render import RenderCancelled
from kling_mcp.sandbox.server import serve_asgi
from kling_mcp.sandbox.validation import UNSUPPORTED_FIELDS, BadRequest, parse_submit

pytestmark = pytest.mark.anyio

KEY = "sk_test_alpha"
OTHER_KEY = "sk_test_beta"
KEY_HEADER = "Ocp-Apim-Subscription-Key"
BASE = "http://sandbox.test"
RECEIVER = "http://receiver.test"
UUID7 = r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
QUEUE_S = sum(limits.TIMING_QUEUE_S) / 2
TERMINAL = ("COMPLETED", "FAILED", "ERROR")
WAIT = 20  # seconds: the bound on any wait for background work (renders, webhooks)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def advance_to(self, moment: float) -> None:
        self.now = max(self.now, moment)


# --- an in-process host for images and webhook receivers (the gateway's outbound side) ----------------------


@dataclass
class Receiver:
    images: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    hooks: list[tuple[str, Any]] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)  # hook name -> how many 500s to answer first

    def app(self) -> Starlette:
        async def image(request: Request) -> Response:
            name = request.path_params["name"]
            if name not in self.images:
                return Response("missing", status_code=404)
            data, media_type = self.images[name]
            return Response(data, media_type=media_type)

        async def huge(request: Request) -> Response:
            async def chunks() -> AsyncIterator[bytes]:
                block = b"\0" * (1 << 20)
                for _ in range(limits.IMAGE_MAX_BYTES // len(block) + 1):
                    yield block

            return StreamingResponse(chunks(), media_type="image/png")

        async def hook(request: Request) -> Response:
            name = request.path_params["name"]
            self.hooks.append((name, json.loads(await request.body())))
            if self.failures.get(name, 0) > 0:
                self.failures[name] -= 1
                return JSONResponse({"nope": True}, status_code=500)
            return JSONResponse({"ok": True})

        return Starlette(
            routes=[
                Route("/img/{name}", image),
                Route("/huge.png", huge),
                Route("/hook/{name}", hook, methods=["POST"]),
            ]
        )

    def host(self, name: str, data: bytes, media_type: str = "image/png") -> str:
        self.images[name] = (data, media_type)
        return f"{RECEIVER}/img/{name}"


def image_bytes(size: tuple[int, int], fmt: str = "PNG", color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


# --- the harness ---------------------------------------------------------------------------------------------


@dataclass
class Sandbox:
    client: httpx2.AsyncClient
    gateway: SandboxGateway
    clock: FakeClock
    receiver: Receiver

    async def submit(
        self,
        body: object,
        *,
        i2v: bool = False,
        key: str | None = KEY,
        headers: dict[str, str] | None = None,
    ) -> httpx2.Response:
        sent = {"Content-Type": "application/json", "Cache-Control": "no-cache", **(headers or {})}
        if key is not None:
            sent[KEY_HEADER] = key
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await self.client.post(DEFAULT_I2V_PATH if i2v else DEFAULT_T2V_PATH, content=content, headers=sent)

    async def create(self, body: object, **kwargs: Any) -> str:
        response = await self.submit(body, **kwargs)
        assert response.status_code == 202, response.text
        request_id: str = response.json()["request_id"]
        return request_id

    async def status(self, request_id: str, *, key: str | None = KEY) -> httpx2.Response:
        headers = {KEY_HEADER: key} if key is not None else {}
        return await self.client.get(DEFAULT_STATUS_PATH.format(request_id=request_id), headers=headers)

    async def status_json(self, request_id: str, *, key: str = KEY) -> dict[str, Any]:
        response = await self.status(request_id, key=key)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def run_to_end(self, request_id: str) -> dict[str, Any]:
        """Moves the clock to the job's due time, waits (bounded) for its render, returns the polled status."""
        job = self.gateway.find(request_id)
        assert job is not None, f"no job {request_id}"
        self.clock.advance_to(job.done_at)
        with anyio.fail_after(WAIT):
            await self.gateway.wait_settled(request_id)
        return await self.status_json(request_id)


@asynccontextmanager
async def make_sandbox(*, real_outbound: bool = False, **overrides: Any) -> AsyncIterator[Sandbox]:
    clock = FakeClock()
    settings: dict[str, Any] = {
        "time_scale": 1.0,
        "jitter": 0.0,
        "render_size": (320, 180),
        "fps": 8,
        "clock": clock,
        "webhook_backoff_s": 0.01,
        # receiver.test is served in-process, with no DNS behind it; the guard itself is tested with it off
        "allow_private_image_urls": True,
        **overrides,
    }
    receiver = Receiver()
    outbound = None if real_outbound else httpx2.ASGITransport(receiver.app())
    app = create_app(SandboxConfig(**settings), outbound=outbound)
    gateway: SandboxGateway = app.state.gateway
    async with (
        gateway,
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app), base_url=BASE) as client,
    ):
        yield Sandbox(client, gateway, clock, receiver)


@pytest.fixture
async def sb() -> AsyncIterator[Sandbox]:
    async with make_sandbox() as sandbox:
        yield sandbox


def probe(data: bytes) -> dict[str, Any]:
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.video[0]
        assert container.duration is not None
        assert stream.average_rate is not None
        return {
            "duration": container.duration / av.time_base,
            "size": (stream.codec_context.width, stream.codec_context.height),
            "fps": float(stream.average_rate),
            "codec": stream.codec_context.name,
            "frames": sum(1 for _ in container.decode(stream)),
        }


# --- submit and the status flow ------------------------------------------------------------------------------


async def test_text_to_video_submit_answers_202_with_request_id_queued_status_and_absolute_polling_url(
    sb: Sandbox,
) -> None:
    response = await sb.submit({"prompt": "a red fox in snow"})

    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"request_id", "status", "polling_url"}
    assert re.fullmatch(f"{T2V_API_ID}_{UUID7}", body["request_id"])
    assert body["status"] == "QUEUED"
    assert body["polling_url"] == BASE + DEFAULT_STATUS_PATH.format(request_id=body["request_id"])


async def test_image_to_video_request_ids_carry_the_image_to_video_api_id(sb: Sandbox) -> None:
    url = sb.receiver.host("a.png", image_bytes((640, 360)))

    request_id = await sb.create({"image_url": url}, i2v=True)

    assert re.fullmatch(f"{I2V_API_ID}_{UUID7}", request_id)


async def test_request_ids_sort_in_submit_order(sb: Sandbox) -> None:
    ids = [(await sb.create({"prompt": f"clip {i}"})).partition("_")[2] for i in range(5)]

    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


async def test_status_goes_queued_then_processing_then_completed_as_the_clock_moves(sb: Sandbox) -> None:
    request_id = await sb.create({"prompt": "a red fox in snow", "duration": 5})
    expected_render = limits.estimated_render_seconds(5, image=False)

    assert (await sb.status_json(request_id))["status"] == "QUEUED"
    sb.clock.advance(QUEUE_S - 0.01)
    assert (await sb.status_json(request_id))["status"] == "QUEUED"
    sb.clock.advance(0.02)
    assert (await sb.status_json(request_id))["status"] == "PROCESSING"
    sb.clock.advance(expected_render - 0.05)
    assert (await sb.status_json(request_id))["status"] == "PROCESSING"
    assert (await sb.run_to_end(request_id))["status"] == "COMPLETED"


async def test_image_to_video_takes_longer_by_the_image_extra(sb: Sandbox) -> None:
    url = sb.receiver.host("a.png", image_bytes((640, 360)))
    request_id = await sb.create({"image_url": url, "duration": 3}, i2v=True)

    job = sb.gateway.jobs[request_id]

    assert job.done_at - job.queued_until == pytest.approx(limits.estimated_render_seconds(3, image=True))


async def test_time_scale_divides_queue_and_render_time() -> None:
    async with make_sandbox(time_scale=100.0) as sb:
        request_id = await sb.create({"prompt": "fast", "duration": 10})
        job = sb.gateway.jobs[request_id]

        assert job.queued_until - job.submitted_at == pytest.approx(QUEUE_S / 100)
        assert job.done_at - job.queued_until == pytest.approx(limits.estimated_render_seconds(10, image=False) / 100)


async def test_jitter_keeps_timing_within_its_bounds_and_the_queue_within_the_model_range() -> None:
    async with make_sandbox(jitter=0.15, faults=Faults(seed=3)) as sb:
        for _ in range(10):
            job = sb.gateway.jobs[await sb.create({"prompt": "x", "duration": 5})]
            estimate = limits.estimated_render_seconds(5, image=False)
            assert limits.TIMING_QUEUE_S[0] <= job.queued_until - job.submitted_at <= limits.TIMING_QUEUE_S[1]
            assert estimate * 0.85 <= job.done_at - job.queued_until <= estimate * 1.15


async def test_completed_status_has_the_documented_shape_and_timestamps(sb: Sandbox) -> None:
    request_id = await sb.create({"prompt": "a red fox in snow", "duration": 5})
    with anyio.fail_after(WAIT):
        await sb.gateway.wait_rendered(request_id)

    body = await sb.run_to_end(request_id)

    assert list(body) == ["request_id", "status", "output", "created_at", "completed_at"]
    assert body["request_id"] == request_id
    assert body["output"] == {"media_url": [f"{BASE}/media/{request_id}.mp4"], "media_type": "video/mp4"}
    created = datetime.fromisoformat(body["created_at"])
    completed = datetime.fromisoformat(body["completed_at"])
    assert body["created_at"].endswith("Z")
    assert (completed - created).total_seconds() == pytest.approx(
        QUEUE_S + limits.estimated_render_seconds(5, image=False)
    )


async def test_status_says_processing_until_the_render_exists_even_when_the_clock_is_past_due(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()
    real = render_module.render_job

    def held_render(*args: Any) -> int:
        release.wait(WAIT)
        return real(*args)

    monkeypatch.setattr(render_module, "render_job", held_render)
    async with make_sandbox() as sb:
        request_id = await sb.create({"prompt": "slow render"})
        sb.clock.advance(10_000)

        assert (await sb.status_json(request_id))["status"] == "PROCESSING"
        release.set()
        assert (await sb.run_to_end(request_id))["status"] == "COMPLETED"


async def test_completed_answers_are_identical_on_every_poll(sb: Sandbox) -> None:
    request_id = await sb.create({"prompt": "stable"})
    first = await sb.run_to_end(request_id)
    sb.clock.advance(500)

    assert await sb.status_json(request_id) == first


async def test_polling_url_and_media_url_use_public_base_url_when_configured() -> None:
    async with make_sandbox(public_base_url="https://sandbox.example/") as sb:
        response = await sb.submit({"prompt": "x"})
        request_id = response.json()["request_id"]

        assert response.json()["polling_url"] == "https://sandbox.example" + DEFAULT_STATUS_PATH.format(
            request_id=request_id
        )
        body = await sb.run_to_end(request_id)
        assert body["output"]["media_url"] == [f"https://sandbox.example/media/{request_id}.mp4"]


async def test_jobs_are_invisible_to_other_keys(sb: Sandbox) -> None:
    request_id = await sb.create({"prompt": "mine"})

    response = await sb.status(request_id, key=OTHER_KEY)

    assert response.status_code == 404
    assert set(response.json()) == {"error", "message"}
    assert sb.gateway.jobs[request_id].status_requests == 0


async def test_unknown_request_id_answers_404_json(sb: Sandbox) -> None:
    response = await sb.status(f"{T2V_API_ID}_00000000-0000-7000-8000-000000000000")

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert "error" in response.json()


async def test_unknown_routes_answer_404_json_like_api_management(sb: Sandbox) -> None:
    response = await sb.client.get("/v1/nothing-here", headers={KEY_HEADER: KEY})

    assert response.status_code == 404
    assert response.json() == {"statusCode": 404, "message": "Resource not found"}


async def test_status_requests_and_answered_polls_are_counted_per_job(sb: Sandbox) -> None:
    first = await sb.create({"prompt": "one"})
    second = await sb.create({"prompt": "two"})
    for _ in range(3):
        await sb.status(first)
    sb.gateway.faults.rate_5xx = 1.0
    await sb.status(first)
    await sb.status(second)

    assert sb.gateway.jobs[first].status_polls == 3
    assert sb.gateway.jobs[first].status_requests == 4
    assert sb.gateway.jobs[second].status_polls == 0
    assert sb.gateway.jobs[second].status_requests == 1


async def test_submitting_while_the_gateway_is_not_running_is_a_clear_error() -> None:
    app = create_app(SandboxConfig(render_size=(320, 180), fps=8))
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app), base_url=BASE) as client:
        with pytest.raises(RuntimeError, match="not running"):
            await client.post(DEFAULT_T2V_PATH, json={"prompt": "x"}, headers={KEY_HEADER: KEY})


async def test_the_running_context_serves_requests_like_async_with() -> None:
    app = create_app(SandboxConfig(render_size=(320, 180), fps=8, time_scale=1e5))
    gateway: SandboxGateway = app.state.gateway
    async with (
        gateway.running() as running,
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app), base_url=BASE) as client,
    ):
        assert running is gateway
        response = await client.post(DEFAULT_T2V_PATH, json={"prompt": "x"}, headers={KEY_HEADER: KEY})
        assert response.status_code == 202
    assert not gateway.is_running


def test_uuid7_has_the_version_variant_and_current_time_and_sorts_in_creation_order() -> None:
    before_ms = time.time_ns() // 1_000_000
    values = [uuid7() for _ in range(5000)]
    after_ms = time.time_ns() // 1_000_000

    assert all(v.version == 7 and v.variant == uuid.RFC_4122 for v in values)
    assert before_ms <= values[0].int >> 80 <= values[-1].int >> 80 <= after_ms + 1
    assert [v.int for v in values] == sorted(v.int for v in values)
    assert len(set(values)) == len(values)


@given(st.one_of(st.integers(-100, 100), st.booleans(), st.floats(allow_nan=False), st.text(max_size=4)))
def test_duration_is_accepted_exactly_when_it_is_a_whole_number_of_seconds_in_range(value: object) -> None:
    body = json.dumps({"prompt": "a", "duration": value}).encode()
    if isinstance(value, bool):
        whole = None
    elif isinstance(value, int):
        whole = value
    elif isinstance(value, float) and value.is_integer():
        whole = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        whole = int(value.strip())
    else:
        whole = None
    ok = whole is not None and limits.DURATION_MIN_S <= whole <= limits.DURATION_MAX_S

    if ok:
        _, parsed = parse_submit(body, "text_to_video")
        assert parsed.seconds == whole
    else:
        with pytest.raises(BadRequest, match="duration"):
            parse_submit(body, "text_to_video")


# --- auth ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, ""])
async def test_submit_without_a_key_is_401_with_the_api_management_body(sb: Sandbox, key: str | None) -> None:
    response = await sb.submit({"prompt": "x"}, key=key)

    assert response.status_code == 401
    body = response.json()
    assert body["statusCode"] == 401
    assert body["message"].startswith("Access denied due to invalid subscription key.")
    assert sb.gateway.submit_count == 0


async def test_status_without_a_key_is_401(sb: Sandbox) -> None:
    request_id = await sb.create({"prompt": "x"})

    response = await sb.status(request_id, key=None)

    assert response.status_code == 401
    assert response.json()["statusCode"] == 401


async def test_a_key_outside_the_configured_keys_is_401_on_submit_and_status() -> None:
    async with make_sandbox(keys={KEY: 100.0}) as sb:
        request_id = await sb.create({"prompt": "x"})

        assert (await sb.submit({"prompt": "x"}, key="sk_wrong")).status_code == 401
        assert (await sb.status(request_id, key="sk_wrong")).status_code == 401


# --- validation: every 400 ---------------------------------------------------------------------------------------

TOO_LONG = "x" * (limits.PROMPT_MAX_CHARS + 1)
SHOT = {"prompt": "a shot", "duration": limits.SHOT_DURATION_MIN_S}

T2V_REJECTIONS: list[tuple[str, object, str]] = [
    ("malformed JSON", b'{"prompt": "x"', "JSON"),
    ("JSON array", b'[{"prompt": "x"}]', "object"),
    ("JSON string", b'"a red fox"', "object"),
    ("empty body", b"", "JSON"),
    ("neither prompt nor multi_prompt", {"duration": 5}, "prompt"),
    ("empty prompt", {"prompt": ""}, "prompt"),
    ("blank prompt", {"prompt": "   "}, "prompt"),
    ("prompt over the limit", {"prompt": TOO_LONG}, str(limits.PROMPT_MAX_CHARS)),
    ("prompt not a string", {"prompt": 42}, "prompt"),
    ("prompt and multi_prompt", {"prompt": "a", "multi_prompt": [SHOT]}, "multi_prompt"),
    ("multi_prompt not a list", {"multi_prompt": "a; b"}, "multi_prompt"),
    ("no shots", {"multi_prompt": []}, f"{limits.SHOTS_MIN}-{limits.SHOTS_MAX} shots"),
    (
        "too many shots",
        {"multi_prompt": [SHOT] * (limits.SHOTS_MAX + 1)},
        f"{limits.SHOTS_MIN}-{limits.SHOTS_MAX} shots",
    ),
    ("shot not an object", {"multi_prompt": ["a shot"]}, "multi_prompt[0]"),
    ("shot without prompt", {"multi_prompt": [SHOT, {"duration": 5}]}, "multi_prompt[1].prompt"),
    ("shot with empty prompt", {"multi_prompt": [{"prompt": ""}]}, "multi_prompt[0].prompt"),
    ("shot prompt over the limit", {"multi_prompt": [{"prompt": TOO_LONG}]}, "multi_prompt[0].prompt"),
    (
        "shot too short",
        {"multi_prompt": [{"prompt": "a", "duration": limits.SHOT_DURATION_MIN_S - 1}]},
        "multi_prompt[0].duration",
    ),
    (
        "shot too long",
        {"multi_prompt": [{"prompt": "a", "duration": limits.SHOT_DURATION_MAX_S + 1}]},
        "multi_prompt[0].duration",
    ),
    ("shot duration a word", {"multi_prompt": [{"prompt": "a", "duration": "five"}]}, "multi_prompt[0].duration"),
    (
        "shots over the total",
        {"multi_prompt": [{"prompt": "a", "duration": limits.TOTAL_DURATION_MAX_S // 2 + 1}] * 2},
        f"at most {limits.TOTAL_DURATION_MAX_S} s",
    ),
    ("duration too short", {"prompt": "a", "duration": limits.DURATION_MIN_S - 1}, "duration"),
    ("duration too long", {"prompt": "a", "duration": limits.DURATION_MAX_S + 1}, "duration"),
    ("duration a bool", {"prompt": "a", "duration": True}, "duration"),
    ("duration with a fraction", {"prompt": "a", "duration": 5.5}, "duration"),
    ("duration a word", {"prompt": "a", "duration": "five"}, "duration"),
    ("duration a decimal string", {"prompt": "a", "duration": "5.5"}, "duration"),
    ("duration an empty string", {"prompt": "a", "duration": ""}, "duration"),
    ("duration a list", {"prompt": "a", "duration": [5]}, "duration"),
    ("duration a numeric string out of range", {"prompt": "a", "duration": "16"}, "duration"),
    ("aspect ratio unknown", {"prompt": "a", "aspect_ratio": "4:3"}, "aspect_ratio"),
    ("aspect ratio a number", {"prompt": "a", "aspect_ratio": 1.78}, "aspect_ratio"),
    *[(f"unsupported {name}", {"prompt": "a", name: 1}, name) for name in UNSUPPORTED_FIELDS],
]


@pytest.mark.parametrize(("body", "named"), [pytest.param(b, n, id=i) for i, b, n in T2V_REJECTIONS])
async def test_text_to_video_rejections_are_400_naming_the_field_and_creating_nothing(
    sb: Sandbox, body: object, named: str
) -> None:
    before = sb.gateway.balance(KEY)

    response = await sb.submit(body)

    assert response.status_code == 400, response.text
    payload = response.json()
    assert set(payload) == {"error", "message"}
    assert named in payload["error"] + " " + payload["message"]
    assert sb.gateway.submit_count == 0
    assert sb.gateway.balance(KEY) == before


def test_unsupported_parameters_are_reported_as_unsupported() -> None:
    assert {"negative_prompt", "cfg_scale", "seed", "resolution", "mode"} <= set(UNSUPPORTED_FIELDS)
    assert any("audio" in name or "sound" in name for name in UNSUPPORTED_FIELDS)


async def test_an_unsupported_parameter_answer_says_it_is_not_supported(sb: Sandbox) -> None:
    response = await sb.submit({"prompt": "a", "negative_prompt": "blur"})

    assert response.json()["error"] == "Unsupported parameter: negative_prompt"
    assert "not supported" in response.json()["message"]


async def test_a_limit_answer_quotes_the_limit_and_the_fix(sb: Sandbox) -> None:
    response = await sb.submit({"prompt": "a", "duration": limits.DURATION_MAX_S + 1})

    body = response.json()
    assert body["error"] == "Invalid duration"
    assert f"must be {limits.DURATION_MIN_S}-{limits.DURATION_MAX_S} seconds" in body["message"]
    assert f"got {limits.DURATION_MAX_S + 1}" in body["message"]
    assert "Fix:" in body["message"]


GOOD_PNG = image_bytes((640, 360))


def _i2v_rejections(receiver: Receiver) -> list[tuple[str, object, str]]:
    return [
        ("missing image_url", {"prompt": "a"}, "image_url"),
        ("image_url not a string", {"image_url": 42}, "image_url"),
        ("ftp image_url", {"image_url": "ftp://host/a.png"}, "image_url"),
        ("image_url not a URL", {"image_url": "a red fox.png"}, "image_url"),
        ("data URI without a comma", {"image_url": "data:image/png;base64"}, "image_url"),
        ("data URI with bad base64", {"image_url": "data:image/png;base64,@@@"}, "base64"),
        ("data URI of text", {"image_url": data_uri(b"hello world")}, "JPEG or PNG"),
        ("GIF image", {"image_url": data_uri(image_bytes((640, 360), "GIF"), "image/gif")}, "JPEG or PNG"),
        ("WEBP image", {"image_url": receiver.host("a.webp", image_bytes((640, 360), "WEBP"))}, "JPEG or PNG"),
        (
            "side under the minimum",
            {"image_url": data_uri(image_bytes((limits.IMAGE_MIN_SIDE_PX - 1, 600)))},
            f"at least {limits.IMAGE_MIN_SIDE_PX} px",
        ),
        (
            "too wide",
            {"image_url": data_uri(image_bytes((int(limits.IMAGE_MIN_SIDE_PX * limits.IMAGE_MAX_ASPECT) + 2, 300)))},
            "aspect",
        ),
        (
            "too tall",
            {"image_url": data_uri(image_bytes((300, int(limits.IMAGE_MIN_SIDE_PX * limits.IMAGE_MAX_ASPECT) + 2)))},
            "aspect",
        ),
        ("truncated PNG", {"image_url": data_uri(GOOD_PNG[: len(GOOD_PNG) // 2])}, "damaged"),
        ("image URL answering 404", {"image_url": f"{RECEIVER}/img/missing.png"}, "HTTP 404"),
        (
            "image over the size limit",
            {"image_url": f"{RECEIVER}/huge.png"},
            f"at most {limits.IMAGE_MAX_BYTES // (1024 * 1024)} MB",
        ),
        ("prompt over the limit", {"image_url": data_uri(GOOD_PNG), "prompt": TOO_LONG}, "prompt"),
        ("unsupported cfg_scale", {"image_url": data_uri(GOOD_PNG), "cfg_scale": 0.5}, "cfg_scale"),
        ("bad aspect", {"image_url": data_uri(GOOD_PNG), "aspect_ratio": "21:9"}, "aspect_ratio"),
    ]


I2V_CASE_IDS = [case[0] for case in _i2v_rejections(Receiver())]


@pytest.mark.parametrize("case", I2V_CASE_IDS)
async def test_image_to_video_rejections_are_400_naming_image_url_or_the_field(sb: Sandbox, case: str) -> None:
    body, named = next((b, n) for i, b, n in _i2v_rejections(sb.receiver) if i == case)

    response = await sb.submit(body, i2v=True)

    assert response.status_code == 400, response.text
    payload = response.json()
    assert set(payload) == {"error", "message"}
    assert named in payload["error"] + " " + payload["message"]
    assert sb.gateway.submit_count == 0


async def test_an_unreachable_image_url_is_400_naming_image_url() -> None:
    async with make_sandbox(real_outbound=True) as sb:
        with anyio.fail_after(WAIT):
            # port 1 on loopback: nothing listens there, so the connection is refused at once
            response = await sb.submit({"image_url": "http://127.0.0.1:1/a.png"}, i2v=True)

        assert response.status_code == 400
        assert response.json()["error"] == "Invalid image_url"
        assert "could not be reached" in response.json()["message"]


async def test_a_webhook_url_that_is_not_http_is_400(sb: Sandbox) -> None:
    response = await sb.submit({"prompt": "a"}, headers={"X-Webhook-URL": "ftp://example/hook"})

    assert response.status_code == 400
    assert "X-Webhook-URL" in response.json()["error"]
    assert sb.gateway.submit_count == 0


ACCEPTED: list[tuple[str, dict[str, Any], int, str]] = [
    ("defaults", {"prompt": "a"}, limits.DURATION_DEFAULT_S, limits.ASPECT_RATIO_DEFAULT),
    ("duration as int", {"prompt": "a", "duration": 7}, 7, "16:9"),
    ("duration as numeric string", {"prompt": "a", "duration": "7"}, 7, "16:9"),
    ("duration as whole float", {"prompt": "a", "duration": 7.0}, 7, "16:9"),
    ("duration null", {"prompt": "a", "duration": None}, limits.DURATION_DEFAULT_S, "16:9"),
    ("longest prompt", {"prompt": "x" * limits.PROMPT_MAX_CHARS}, limits.DURATION_DEFAULT_S, "16:9"),
    ("vertical", {"prompt": "a", "aspect_ratio": "9:16"}, limits.DURATION_DEFAULT_S, "9:16"),
    ("square", {"prompt": "a", "aspect_ratio": "1:1"}, limits.DURATION_DEFAULT_S, "1:1"),
    ("unknown fields ignored", {"prompt": "a", "style": "anime", "image_url": "x"}, limits.DURATION_DEFAULT_S, "16:9"),
    (
        "shots with default duration",
        {"multi_prompt": [{"prompt": "a"}, {"prompt": "b", "duration": "4"}]},
        limits.SHOT_DURATION_DEFAULT_S + 4,
        "16:9",
    ),
    (
        "shots filling the total",
        {"multi_prompt": [{"prompt": str(i), "duration": 3} for i in range(limits.TOTAL_DURATION_MAX_S // 3)]},
        limits.TOTAL_DURATION_MAX_S,
        "16:9",
    ),
]


@pytest.mark.parametrize(("body", "seconds", "aspect"), [pytest.param(b, s, a, id=i) for i, b, s, a in ACCEPTED])
async def test_valid_text_to_video_bodies_are_accepted_and_charged_their_length(
    sb: Sandbox, body: dict[str, Any], seconds: int, aspect: limits.AspectRatio
) -> None:
    before = sb.gateway.balance(KEY)

    request_id = await sb.create(body)

    job = sb.gateway.jobs[request_id]
    assert job.seconds == seconds
    assert job.size == sb.gateway.config.size_for(aspect)
    assert sb.gateway.balance(KEY) == before - seconds


async def test_image_to_video_accepts_an_http_image_without_a_prompt(sb: Sandbox) -> None:
    url = sb.receiver.host("photo.jpg", image_bytes((1200, 800), "JPEG"), "image/jpeg")

    request_id = await sb.create({"image_url": url}, i2v=True)

    assert sb.gateway.jobs[request_id].seconds == limits.DURATION_DEFAULT_S
    assert (await sb.run_to_end(request_id))["status"] == "COMPLETED"


async def test_image_to_video_accepts_a_data_uri_and_multi_prompt(sb: Sandbox) -> None:
    body = {"image_url": data_uri(GOOD_PNG), "multi_prompt": [{"prompt": "a", "duration": 3}, {"prompt": "b"}]}

    request_id = await sb.create(body, i2v=True)

    assert sb.gateway.jobs[request_id].seconds == 3 + limits.SHOT_DURATION_DEFAULT_S


async def test_image_to_video_accepts_images_at_the_exact_limits(sb: Sandbox) -> None:
    side = limits.IMAGE_MIN_SIDE_PX
    widest = (int(side * limits.IMAGE_MAX_ASPECT), side)

    for size in [(side, side), widest, widest[::-1]]:
        await sb.create({"image_url": data_uri(image_bytes(size))}, i2v=True)


# --- balance, 402 and refunds ---------------------------------------------------------------------------------


async def test_a_submit_beyond_the_balance_is_402_and_neither_creates_nor_charges() -> None:
    async with make_sandbox(keys={KEY: 8.0}) as sb:
        await sb.create({"prompt": "a", "duration": 5})

        response = await sb.submit({"prompt": "b", "duration": 5})

        assert response.status_code == 402
        assert response.json() == {"error": "Insufficient Balance"}
        assert sb.gateway.submit_count == 1
        assert sb.gateway.balance(KEY) == 3.0
        await sb.create({"prompt": "c", "duration": 3})
        assert sb.gateway.balance(KEY) == 0.0


async def test_any_key_gets_the_default_balance_when_no_keys_are_configured() -> None:
    async with make_sandbox(default_balance_s=4.0) as sb:
        assert (await sb.submit({"prompt": "a", "duration": 5}, key="sk_anything")).status_code == 402
        assert (await sb.submit({"prompt": "a", "duration": 3}, key="sk_anything")).status_code == 202
        assert sb.gateway.balance("sk_anything") == 1.0


async def test_multi_prompt_is_charged_the_sum_of_its_shots(sb: Sandbox) -> None:
    before = sb.gateway.balance(KEY)

    await sb.create({"multi_prompt": [{"prompt": "a", "duration": 3}, {"prompt": "b", "duration": 4}]})

    assert sb.gateway.balance(KEY) == before - 7


async def test_error_jobs_are_charged_at_submit_and_refunded_when_they_end(sb: Sandbox) -> None:
    before = sb.gateway.balance(KEY)
    request_id = await sb.create({"prompt": "boom [sandbox:error]", "duration": 6})
    assert sb.gateway.balance(KEY) == before - 6

    body = await sb.run_to_end(request_id)

    assert body["status"] == "ERROR"
    assert sb.gateway.balance(KEY) == before
    assert sb.gateway.jobs[request_id].refunded_s == 6


@pytest.mark.parametrize(("charge_failed", "charged"), [(True, 5), (False, 0)])
async def test_failed_jobs_are_charged_only_when_charge_failed_is_on(charge_failed: bool, charged: int) -> None:
    async with make_sandbox(charge_failed=charge_failed) as sb:
        before = sb.gateway.balance(KEY)
        request_id = await sb.create({"prompt": "[sandbox:fail]", "duration": 5})

        assert (await sb.run_to_end(request_id))["status"] == "FAILED"
        assert sb.gateway.balance(KEY) == before - charged


async def test_refunds_happen_without_anyone_polling(sb: Sandbox) -> None:
    before = sb.gateway.balance(KEY)
    request_id = await sb.create({"prompt": "[sandbox:error]"})
    sb.clock.advance(10_000)

    with anyio.fail_after(WAIT):
        await sb.gateway.wait_settled(request_id)

    assert sb.gateway.jobs[request_id].status_polls == 0
    assert sb.gateway.balance(KEY) == before


# --- terminal failures and prompt triggers --------------------------------------------------------------------


async def test_fail_trigger_ends_failed_with_a_moderation_error(sb: Sandbox) -> None:
    request_id = await sb.create({"prompt": "a fox [sandbox:fail]"})

    body = await sb.run_to_end(request_id)

    assert body["status"] == "FAILED"
    assert body["error"].startswith("Content moderation")
    assert "output" not in body
    assert set(body) == {"request_id", "status", "error", "created_at", "completed_at"}


async def test_triggers_work_inside_any_shot_prompt(sb: Sandbox) -> None:
    request_id = await sb.create({"multi_prompt": [{"prompt": "fine"}, {"prompt": "then [sandbox:fail]"}]})

    assert (await sb.run_to_end(request_id))["status"] == "FAILED"


async def test_error_trigger_ends_error_every_time(sb: Sandbox) -> None:
    for _ in range(2):
        body = await sb.run_to_end(await sb.create({"prompt": "x [sandbox:error]"}))
        assert body["status"] == "ERROR"
        assert body["error"]


async def test_error_once_trigger_errors_on_the_first_identical_submit_per_key_only(sb: Sandbox) -> None:
    body = {"prompt": "flaky [sandbox:error-once]", "duration": 3}

    first = await sb.run_to_end(await sb.create(body))
    second = await sb.run_to_end(await sb.create(body))
    other_key = await sb.create(body, key=OTHER_KEY)
    other_body = await sb.run_to_end(await sb.create({**body, "duration": 4}))

    assert first["status"] == "ERROR"
    assert second["status"] == "COMPLETED"
    assert sb.gateway.jobs[other_key].outcome == "ERROR"
    assert other_body["status"] == "ERROR"


async def test_hold_trigger_stays_processing_until_finished_through_the_admin_route(sb: Sandbox) -> None:
    request_id = await sb.create({"prompt": "wait for me [sandbox:hold]"})
    sb.clock.advance(1e6)
    assert (await sb.status_json(request_id))["status"] == "PROCESSING"

    response = await sb.client.post(f"/_sandbox/jobs/{request_id}/finish", json={"outcome": "COMPLETED"})
    assert response.status_code == 200
    with anyio.fail_after(WAIT):
        await sb.gateway.wait_settled(request_id)

    assert (await sb.status_json(request_id))["status"] == "COMPLETED"


@pytest.mark.parametrize("outcome", ["FAILED", "ERROR"])
async def test_finish_can_end_a_held_job_failed_or_error(sb: Sandbox, outcome: str) -> None:
    request_id = await sb.create({"prompt": "[sandbox:hold]"})

    sb.gateway.finish(request_id, outcome)  # type: ignore[arg-type]

    body = await sb.status_json(request_id)
    assert body["status"] == outcome
    assert body["error"]


async def test_finish_before_the_queue_is_over_ends_the_job_now(sb: Sandbox) -> None:
    request_id = await sb.create({"prompt": "impatient"})
    with anyio.fail_after(WAIT):
        await sb.gateway.wait_rendered(request_id)

    sb.gateway.finish(request_id)

    assert (await sb.status_json(request_id))["status"] == "COMPLETED"


# --- faults ----------------------------------------------------------------------------------------------------


async def test_5xx_on_submit_creates_and_charges_nothing(sb: Sandbox) -> None:
    sb.gateway.faults.rate_5xx = 1.0
    before = sb.gateway.balance(KEY)

    response = await sb.submit({"prompt": "a"})

    assert 500 <= response.status_code < 600
    assert sb.gateway.submit_count == 0
    assert sb.gateway.jobs == {}
    assert sb.gateway.balance(KEY) == before


async def test_5xx_answers_are_sometimes_not_json() -> None:
    async with make_sandbox(faults=Faults(seed=1, rate_5xx=1.0)) as sb:
        request_id = "unknown"
        answers = {((r := await sb.status(request_id)).status_code, r.headers["content-type"]) for _ in range(40)}

        assert all(500 <= status < 600 for status, _ in answers)
        assert any(ctype.startswith("text/plain") for _, ctype in answers)
        assert any(ctype.startswith("application/json") for _, ctype in answers)


async def test_5xx_on_status_polls_leaves_the_job_running(sb: Sandbox) -> None:
    request_id = await sb.create({"prompt": "a"})
    sb.gateway.faults.rate_5xx = 1.0
    assert (await sb.status(request_id)).status_code >= 500

    sb.gateway.faults.rate_5xx = 0.0

    assert (await sb.run_to_end(request_id))["status"] == "COMPLETED"


async def test_429_carries_retry_after_and_the_api_management_message_and_creates_nothing() -> None:
    async with make_sandbox(faults=Faults(rate_429=1.0, retry_after_s=7)) as sb:
        response = await sb.submit({"prompt": "a"})

        assert response.status_code == 429
        assert response.headers["Retry-After"] == "7"
        assert response.json() == {"statusCode": 429, "message": "Rate limit is exceeded. Try again in 7 seconds."}
        assert sb.gateway.submit_count == 0
        assert (await sb.status("anything")).status_code == 429


async def test_a_sub_second_retry_after_is_sent_as_is_so_fast_tests_stay_fast() -> None:
    async with make_sandbox(faults=Faults(rate_429=1.0, retry_after_s=0.05)) as sb:
        response = await sb.submit({"prompt": "a"})

        assert float(response.headers["Retry-After"]) == pytest.approx(0.05)


async def test_challenge_pages_hit_status_polls_only(sb: Sandbox) -> None:
    sb.gateway.faults.rate_challenge = 1.0
    request_id = await sb.create({"prompt": "a"})

    response = await sb.status(request_id)

    assert response.status_code == 403
    assert response.headers["content-type"].startswith("text/html")
    assert "<title>Just a moment...</title>" in response.text


async def test_rate_failed_and_rate_error_pick_the_terminal_outcome_at_submit(sb: Sandbox) -> None:
    sb.gateway.faults.rate_failed = 1.0
    failed = await sb.create({"prompt": "a"})
    sb.gateway.faults.rate_failed, sb.gateway.faults.rate_error = 0.0, 1.0
    errored = await sb.create({"prompt": "a"})
    sb.gateway.faults.rate_error = 0.0  # outcomes were fixed at submit

    assert (await sb.run_to_end(failed))["status"] == "FAILED"
    assert (await sb.run_to_end(errored))["status"] == "ERROR"


async def test_slow_answers_are_delayed_in_real_time(sb: Sandbox) -> None:
    request_id = await sb.create({"prompt": "a"})
    sb.gateway.faults.rate_slow, sb.gateway.faults.slow_s = 1.0, 0.2

    with anyio.fail_after(WAIT):
        start = anyio.current_time()
        response = await sb.status(request_id)
        elapsed = anyio.current_time() - start

    assert response.status_code == 200
    assert elapsed >= 0.2


async def test_media_404_fault_makes_downloads_look_expired(sb: Sandbox) -> None:
    body = await sb.run_to_end(await sb.create({"prompt": "a"}))
    url = body["output"]["media_url"][0]
    sb.gateway.faults.rate_media_404 = 1.0

    assert (await sb.client.get(url)).status_code == 404
    sb.gateway.faults.rate_media_404 = 0.0
    assert (await sb.client.get(url)).status_code == 200


async def test_a_lost_submit_answers_5xx_but_the_job_exists_and_is_charged(sb: Sandbox) -> None:
    sb.gateway.faults.rate_submit_lost = 1.0
    before = sb.gateway.balance(KEY)

    response = await sb.submit({"prompt": "a", "duration": 4})

    assert response.status_code >= 500
    assert sb.gateway.submit_count == 1
    assert sb.gateway.balance(KEY) == before - 4
    (request_id,) = sb.gateway.jobs
    assert (await sb.run_to_end(request_id))["status"] == "COMPLETED"


@pytest.mark.parametrize(
    ("style", "names"),
    [
        ("upper", ("QUEUED", "PROCESSING", "COMPLETED")),
        ("lower", ("queued", "processing", "completed")),
        ("in_queue", ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")),
    ],
)
async def test_status_styles_rename_every_status(sb: Sandbox, style: str, names: tuple[str, str, str]) -> None:
    sb.gateway.faults.merge({"status_style": style})
    response = await sb.submit({"prompt": "a"})
    request_id = response.json()["request_id"]

    seen = [response.json()["status"], (await sb.status_json(request_id))["status"]]
    sb.clock.advance(QUEUE_S)
    seen.append((await sb.status_json(request_id))["status"])
    seen.append((await sb.run_to_end(request_id))["status"])

    assert seen == [names[0], names[0], names[1], names[2]]


async def test_lower_case_style_applies_to_failures_too(sb: Sandbox) -> None:
    sb.gateway.faults.status_style = "lower"

    assert (await sb.run_to_end(await sb.create({"prompt": "[sandbox:error]"})))["status"] == "error"


async def test_media_url_can_be_a_plain_string(sb: Sandbox) -> None:
    sb.gateway.faults.media_url_as_string = True
    request_id = await sb.create({"prompt": "a"})

    body = await sb.run_to_end(request_id)

    assert body["output"]["media_url"] == f"{BASE}/media/{request_id}.mp4"


async def test_seeded_faults_repeat_exactly() -> None:
    async def run() -> list[int]:
        async with make_sandbox(faults=Faults(seed=42, rate_5xx=0.5, rate_429=0.3)) as sb:
            return [(await sb.submit({"prompt": "a"})).status_code for _ in range(30)]

    first, second = await run(), await run()

    assert first == second
    assert {202, 429} <= set(first)
    assert any(code >= 500 for code in first)


def test_faults_merge_rejects_unknown_names_and_bad_values_all_or_nothing() -> None:
    faults = Faults()
    bad: list[tuple[str, object]] = [
        ("rate_5xx", 1.5),
        ("rate_teapot", 0.1),
        ("status_style", "camel"),
        ("seed", "x"),
        ("slow_s", -1),
        ("media_url_as_string", "yes"),
    ]
    for name, value in bad:
        with pytest.raises(ValueError, match=name):
            faults.merge({"rate_429": 0.5, name: value})
    assert faults == Faults()


# --- webhooks --------------------------------------------------------------------------------------------------


async def test_a_webhook_receives_exactly_the_terminal_status_object(sb: Sandbox) -> None:
    request_id = await sb.create({"prompt": "a"}, headers={"X-Webhook-URL": f"{RECEIVER}/hook/t1"})

    polled = await sb.run_to_end(request_id)
    with anyio.fail_after(WAIT):
        job = await sb.gateway.wait_webhooks(request_id)

    assert sb.receiver.hooks == [("t1", polled)]
    assert [(d.attempt, d.status_code, d.ok) for d in job.webhook_deliveries] == [(1, 200, True)]


async def test_a_webhook_fires_without_anyone_polling(sb: Sandbox) -> None:
    request_id = await sb.create({"prompt": "[sandbox:fail]"}, headers={"X-Webhook-URL": f"{RECEIVER}/hook/t2"})
    sb.clock.advance(10_000)

    with anyio.fail_after(WAIT):
        await sb.gateway.wait_webhooks(request_id)

    ((name, payload),) = sb.receiver.hooks
    assert (name, payload["status"], payload["request_id"]) == ("t2", "FAILED", request_id)
    assert sb.gateway.jobs[request_id].status_polls == 0


async def test_a_failing_webhook_is_retried_until_it_succeeds(sb: Sandbox) -> None:
    sb.receiver.failures["t3"] = 2
    request_id = await sb.create({"prompt": "a"}, headers={"X-Webhook-URL": f"{RECEIVER}/hook/t3"})

    await sb.run_to_end(request_id)
    with anyio.fail_after(WAIT):
        job = await sb.gateway.wait_webhooks(request_id)

    assert [d.status_code for d in job.webhook_deliveries] == [500, 500, 200]
    assert len(sb.receiver.hooks) == 3


async def test_a_webhook_is_abandoned_after_webhook_attempts() -> None:
    async with make_sandbox(webhook_attempts=2) as sb:
        sb.receiver.failures["t4"] = 99
        request_id = await sb.create({"prompt": "a"}, headers={"X-Webhook-URL": f"{RECEIVER}/hook/t4"})

        await sb.run_to_end(request_id)
        with anyio.fail_after(WAIT):
            job = await sb.gateway.wait_webhooks(request_id)

        assert [d.attempt for d in job.webhook_deliveries] == [1, 2]
        assert not any(d.ok for d in job.webhook_deliveries)


async def test_an_unreachable_webhook_is_recorded_as_a_transport_error() -> None:
    async with make_sandbox(real_outbound=True, webhook_attempts=2) as sb:
        request_id = await sb.create({"prompt": "a"}, headers={"X-Webhook-URL": "http://127.0.0.1:1/hook"})

        await sb.run_to_end(request_id)
        with anyio.fail_after(WAIT):
            job = await sb.gateway.wait_webhooks(request_id)

        assert [(d.status_code, bool(d.error)) for d in job.webhook_deliveries] == [(None, True), (None, True)]


# --- media -----------------------------------------------------------------------------------------------------


async def test_media_is_a_real_mp4_as_long_as_the_shots_at_the_render_size_and_fps(sb: Sandbox) -> None:
    body = await sb.run_to_end(
        await sb.create({"multi_prompt": [{"prompt": "a", "duration": 3}, {"prompt": "b", "duration": 4}]})
    )

    response = await sb.client.get(body["output"]["media_url"][0])

    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    info = probe(response.content)
    assert info["codec"] == "h264"
    assert info["duration"] == pytest.approx(7.0, abs=0.2)
    assert info["frames"] == 7 * 8
    assert info["size"] == (320, 180)
    assert info["fps"] == 8.0


@pytest.mark.parametrize(("aspect", "size"), [("16:9", (320, 180)), ("9:16", (180, 320)), ("1:1", (180, 180))])
async def test_media_follows_the_requested_aspect_ratio(sb: Sandbox, aspect: str, size: tuple[int, int]) -> None:
    body = await sb.run_to_end(await sb.create({"prompt": "a", "duration": 3, "aspect_ratio": aspect}))

    assert probe((await sb.client.get(body["output"]["media_url"][0])).content)["size"] == size


async def test_media_needs_no_key_and_supports_range_requests(sb: Sandbox) -> None:
    body = await sb.run_to_end(await sb.create({"prompt": "a", "duration": 3}))
    url = body["output"]["media_url"][0]

    full = await sb.client.get(url)
    part = await sb.client.get(url, headers={"Range": "bytes=0-99"})

    assert part.status_code == 206
    assert part.content == full.content[:100]
    assert part.headers["content-range"] == f"bytes 0-99/{len(full.content)}"


async def test_media_of_unfinished_failed_and_unknown_jobs_is_404(sb: Sandbox) -> None:
    pending = await sb.create({"prompt": "a"})
    failed = await sb.create({"prompt": "[sandbox:fail]"})
    await sb.run_to_end(failed)

    for request_id in [pending, failed, "nope"]:
        assert (await sb.client.get(f"/media/{request_id}.mp4")).status_code == 404


async def test_image_to_video_media_opens_on_the_input_image(sb: Sandbox) -> None:
    picture = Image.new("RGB", (640, 360))
    picture.paste((220, 30, 30), (0, 0, 320, 360))
    picture.paste((30, 30, 220), (320, 0, 640, 360))
    out = io.BytesIO()
    picture.save(out, format="PNG")

    body = await sb.run_to_end(await sb.create({"image_url": data_uri(out.getvalue()), "duration": 3}, i2v=True))
    media = (await sb.client.get(body["output"]["media_url"][0])).content

    with av.open(io.BytesIO(media), "r") as container:
        first = next(container.decode(video=0)).to_image()  # type: ignore[no-untyped-call]  # untyped in av's stubs
    for (x, y), expected in [((80, 90), (220, 30, 30)), ((240, 90), (30, 30, 220))]:
        actual = first.getpixel((x, y))
        assert isinstance(actual, tuple)
        assert all(abs(a - e) <= 12 for a, e in zip(actual, expected, strict=True)), (actual, expected)


async def test_renders_are_written_atomically_into_media_dir(tmp_path: Path) -> None:
    async with make_sandbox(media_dir=tmp_path) as sb:
        request_id = await sb.create({"prompt": "a", "duration": 3})
        await sb.run_to_end(request_id)

        assert sorted(p.name for p in tmp_path.iterdir()) == [f"{request_id}.mp4"]


async def test_failed_and_error_jobs_are_not_rendered(tmp_path: Path) -> None:
    async with make_sandbox(media_dir=tmp_path) as sb:
        for prompt in ["[sandbox:fail]", "[sandbox:error]"]:
            await sb.run_to_end(await sb.create({"prompt": prompt}))

        assert list(tmp_path.iterdir()) == []


async def test_leaving_the_gateway_stops_a_running_render_quickly_and_leaves_no_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendering = threading.Event()
    answers: list[bool] = []  # what the render heard each time it asked whether to stop, once per frame
    ended: list[str] = []
    real: Callable[..., int] = render_module.render_job

    def watched_render(*args: Any) -> int:
        *rest, should_stop = args

        def asked() -> bool:
            answers.append(should_stop())
            rendering.set()
            return answers[-1]

        try:
            frames = real(*rest, asked)
        except RenderCancelled:
            ended.append("cancelled")
            raise
        ended.append(f"finished {frames} frames")
        return frames

    monkeypatch.setattr(render_module, "render_job", watched_render)
    fps = 30
    app = create_app(SandboxConfig(media_dir=tmp_path, render_size=(1920, 1080), fps=fps))
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app), base_url=BASE) as client:
        with anyio.fail_after(WAIT):
            async with app.state.gateway:
                body = {"prompt": "a long one", "duration": limits.DURATION_MAX_S}
                assert (await client.post(DEFAULT_T2V_PATH, json=body, headers={KEY_HEADER: KEY})).status_code == 202
                assert await anyio.to_thread.run_sync(rendering.wait, WAIT)

    # Leaving waited for the render thread; it stopped at the first frame after the stop, long before the end.
    assert ended == ["cancelled"]
    assert answers.count(True) == 1
    assert answers[-1] is True
    assert len(answers) < limits.DURATION_MAX_S * fps
    assert list(tmp_path.iterdir()) == []


async def test_a_render_that_crashes_ends_the_job_error_and_refunds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_render(*args: Any) -> int:
        raise OSError("disk full")

    monkeypatch.setattr(render_module, "render_job", broken_render)
    async with make_sandbox() as sb:
        before = sb.gateway.balance(KEY)
        request_id = await sb.create({"prompt": "a"})

        body = await sb.run_to_end(request_id)

        assert body["status"] == "ERROR"
        assert "not charged" in body["error"]
        assert sb.gateway.balance(KEY) == before
        assert (await sb.client.get(f"/media/{request_id}.mp4")).status_code == 404


# --- admin routes ------------------------------------------------------------------------------------------------


async def test_stats_report_submits_polls_balances_and_jobs_by_status() -> None:
    async with make_sandbox(keys={KEY: 100.0, OTHER_KEY: 50.0}) as sb:
        done = await sb.create({"prompt": "a", "duration": 5})
        await sb.run_to_end(done)
        pending = await sb.create({"prompt": "b", "duration": 3}, key=OTHER_KEY)
        await sb.status(pending, key=OTHER_KEY)

        stats = (await sb.client.get("/_sandbox/stats")).json()

        assert stats["submits"] == 2
        assert stats["status_polls"] == {done: 1, pending: 1}
        assert stats["balances"] == {KEY: 95.0, OTHER_KEY: 47.0}
        assert stats["jobs_by_status"] == {"QUEUED": 1, "PROCESSING": 0, "COMPLETED": 1, "FAILED": 0, "ERROR": 0}


async def test_stats_never_echo_an_unconfigured_key_whole(sb: Sandbox) -> None:
    secret = "sk_live_0123456789abcdef"
    await sb.create({"prompt": "a"}, key=secret)

    text = (await sb.client.get("/_sandbox/stats")).text

    assert secret not in text
    assert secret[:8] in text


async def test_the_faults_route_merges_json_into_the_live_faults(sb: Sandbox) -> None:
    response = await sb.client.post("/_sandbox/faults", json={"rate_429": 1, "status_style": "lower"})

    assert response.status_code == 200
    assert response.json()["rate_429"] == 1.0
    assert sb.gateway.faults.status_style == "lower"
    assert (await sb.submit({"prompt": "a"})).status_code == 429


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"rate_5xx": 2}', b'{"nonsense": 1}'])
async def test_the_faults_route_rejects_bad_input_with_400(sb: Sandbox, body: bytes) -> None:
    response = await sb.client.post("/_sandbox/faults", content=body)

    assert response.status_code == 400
    assert sb.gateway.faults == Faults()


async def test_the_finish_route_answers_404_400_and_409_where_due(sb: Sandbox) -> None:
    request_id = await sb.create({"prompt": "[sandbox:hold]"})

    assert (await sb.client.post("/_sandbox/jobs/nope/finish", json={})).status_code == 404
    assert (await sb.client.post(f"/_sandbox/jobs/{request_id}/finish", json={"outcome": "DONE"})).status_code == 400
    assert (await sb.client.post(f"/_sandbox/jobs/{request_id}/finish", json={"outcome": "ERROR"})).status_code == 200
    assert (await sb.client.post(f"/_sandbox/jobs/{request_id}/finish")).status_code == 409


async def test_the_job_route_summarises_one_job(sb: Sandbox) -> None:
    request_id = await sb.create({"prompt": "a", "duration": 4})

    summary = (await sb.client.get(f"/_sandbox/jobs/{request_id}")).json()

    assert summary["status"] == "QUEUED"
    assert summary["seconds"] == 4
    assert (await sb.client.get("/_sandbox/jobs/nope")).status_code == 404


async def test_healthz_answers_ok_without_a_key(sb: Sandbox) -> None:
    response = await sb.client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


# --- on a real loopback socket ------------------------------------------------------------------------------------


async def test_serve_sandbox_runs_the_whole_flow_on_loopback_with_a_webhook_to_a_loopback_receiver() -> None:
    received: list[dict[str, Any]] = []
    got_it = anyio.Event()

    async def hook(request: Request) -> Response:
        received.append(json.loads(await request.body()))
        got_it.set()
        return Response(status_code=204)

    receiver = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    config = SandboxConfig(time_scale=1e5, render_size=(320, 180), fps=8)
    with anyio.fail_after(WAIT):
        async with (
            serve_asgi(receiver) as hook_base,
            serve_sandbox(config) as running,
            httpx2.AsyncClient(base_url=running.base_url, headers={KEY_HEADER: KEY}) as client,
        ):
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", running.base_url)
            submitted = await client.post(
                DEFAULT_T2V_PATH,
                json={"prompt": "loopback", "duration": 3},
                headers={"X-Webhook-URL": f"{hook_base}/hook"},
            )
            assert submitted.status_code == 202
            assert submitted.json()["polling_url"].startswith(running.base_url)
            request_id = submitted.json()["request_id"]
            await running.gateway.wait_webhooks(request_id)
            await got_it.wait()
            polled = (await client.get(submitted.json()["polling_url"])).json()
            async with httpx2.AsyncClient() as keyless:
                media = await keyless.get(polled["output"]["media_url"][0])

    assert received == [polled]
    assert probe(media.content)["duration"] == pytest.approx(3.0, abs=0.2)


async def test_serve_sandbox_shuts_down_cleanly_and_frees_the_port() -> None:
    with anyio.fail_after(WAIT):
        async with serve_sandbox(SandboxConfig(render_size=(320, 180), fps=8)) as running:
            assert running.gateway.is_running
            async with httpx2.AsyncClient() as client:
                assert (await client.get(f"{running.base_url}/healthz")).status_code == 200

    assert not running.gateway.is_running
    with pytest.raises(httpx2.ConnectError):
        async with httpx2.AsyncClient() as client:
            await client.get(f"{running.base_url}/healthz")
