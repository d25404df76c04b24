"""Contract probe: ``python -m kling_mcp.sandbox`` as a real process on loopback, checked with raw httpx2.

Everything asserted here comes from the upstream contract (docs/pixazo-contract.md §1-§7), not from the sandbox's code:
if the sandbox and the document disagree, this file is where it shows. The process runs 1000x faster than the
real gateway, so polling every 20 ms stands in for the documented 5-10 s cadence.
"""

from __future__ import annotations

import io
import json
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import av
import httpx2
import pytest
from anyio.abc import SocketAttribute, SocketStream
from PIL import Image

pytestmark = pytest.mark.anyio

# From docs/pixazo-contract.md §2: the routes, the key header, the pattern /{apiId}/v1/{apiId}-request.
T2V_ID = "kling-video-v3-turbo-pro-text-to-video"
I2V_ID = "kling-video-v3-turbo-pro-image-to-video"
T2V = f"/{T2V_ID}/v1/{T2V_ID}-request"
I2V = f"/{I2V_ID}/v1/{I2V_ID}-request"
STATUS = "/v2/requests/status/{}"
KEY_HEADER = "Ocp-Apim-Subscription-Key"

KEY = "sk_live_probe_alpha"
OTHER_KEY = "sk_live_probe_beta"
POOR_KEY = "sk_live_probe_poor"
POOR_BALANCE_S = 3
UUID7 = r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
PENDING = ("QUEUED", "PROCESSING")
TERMINAL = ("COMPLETED", "FAILED", "ERROR")
STARTUP_S = 30


@dataclass
class GatewayProcess:
    base_url: str
    stderr: list[str]


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayProcess]:
    command = [
        sys.executable,
        "-m",
        "kling_mcp.sandbox",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--time-scale",
        "1000",
        "--render-size",
        "320x180",
        "--fps",
        "8",
        "--seed",
        "1",
        "--key",
        f"{KEY}=1000",
        "--key",
        f"{OTHER_KEY}=1000",
        "--key",
        f"{POOR_KEY}={POOR_BALANCE_S}",
        "--allow-private-image-urls",  # the images these tests serve are on loopback
    ]
    process = subprocess.Popen(
        command,
        cwd=Path(__file__).parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    captured: list[str] = []

    def drain(stream: io.TextIOBase) -> None:
        for line in stream:
            captured.append(line)
            lines.put(line)

    reader = threading.Thread(target=drain, args=(process.stderr,), daemon=True)
    reader.start()
    try:
        base_url = None
        while base_url is None:
            try:
                line = lines.get(timeout=STARTUP_S)
            except queue.Empty:
                pytest.fail(f"the sandbox printed no URL within {STARTUP_S} s: {captured}")
            match = re.search(r"http://127\.0\.0\.1:\d+", line)
            base_url = match.group(0) if match else None
        yield GatewayProcess(base_url, captured)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=STARTUP_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        reader.join(timeout=5)
        stdout = process.stdout.read()
        process.stdout.close()
        process.stderr.close()
    assert code == 0, captured
    assert stdout == "", "the sandbox must keep stdout clean (it may be an MCP stdio channel)"


# --- a tiny loopback HTTP server: serves one image and receives webhooks -------------------------------------


@dataclass
class TinyServer:
    image: bytes
    base_url: str = ""
    hooks: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)
    hook_arrived: anyio.Event = field(default_factory=anyio.Event)

    async def handle(self, stream: SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive()
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
            length = int(headers.get("content-length", "0"))
            while len(body) < length:
                body += await stream.receive()
            if method == "GET" and path == "/image.png":
                status, ctype, payload = "200 OK", "image/png", self.image
            elif method == "POST" and path.startswith("/hook/"):
                self.hooks.append((path, headers, json.loads(body)))
                self.hook_arrived.set()
                status, ctype, payload = "200 OK", "application/json", b"{}"
            else:
                status, ctype, payload = "404 Not Found", "text/plain", b"not found"
            head_out = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(payload)}\r\n"
            await stream.send(head_out.encode() + b"Connection: close\r\n\r\n" + payload)


@asynccontextmanager
async def tiny_server(image: bytes = b"") -> AsyncIterator[TinyServer]:
    server = TinyServer(image)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    server.base_url = f"http://127.0.0.1:{listener.extra(SocketAttribute.local_port)}"
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.handle)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


# --- helpers ----------------------------------------------------------------------------------------------------


def headers(key: str | None = KEY, **extra: str) -> dict[str, str]:
    sent = {"Content-Type": "application/json", "Cache-Control": "no-cache", **extra}
    if key is not None:
        sent[KEY_HEADER] = key
    return sent


@asynccontextmanager
async def client(gateway: GatewayProcess) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=gateway.base_url, timeout=10, trust_env=False) as c:
        yield c


async def submit(c: httpx2.AsyncClient, path: str, body: object, key: str = KEY, **extra: str) -> dict[str, Any]:
    response = await c.post(path, content=json.dumps(body), headers=headers(key, **extra))
    assert 200 <= response.status_code < 300, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def poll(c: httpx2.AsyncClient, url: str, key: str = KEY) -> tuple[list[str], dict[str, Any]]:
    seen: list[str] = []
    with anyio.fail_after(30):
        while True:
            response = await c.get(url, headers=headers(key))
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if not seen or seen[-1] != body["status"]:
                seen.append(body["status"])
            if body["status"] in TERMINAL:
                return seen, body
            await anyio.sleep(0.02)


def png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def probe(data: bytes) -> tuple[float, int, int, Image.Image]:
    with av.open(io.BytesIO(data), "r") as container:
        assert container.duration is not None
        stream = container.streams.video[0]
        first = next(container.decode(stream)).to_image()  # type: ignore[no-untyped-call]
        return container.duration / av.time_base, stream.codec_context.width, stream.codec_context.height, first


# --- the probe ----------------------------------------------------------------------------------------------------


async def test_submit_answers_2xx_with_a_request_id_of_api_id_and_uuid7_and_an_absolute_polling_url(
    gateway: GatewayProcess,
) -> None:
    async with client(gateway) as c:
        response = await c.post(T2V, content=json.dumps({"prompt": "a lighthouse at dusk"}), headers=headers())

    assert response.status_code == 202
    body = response.json()
    assert re.fullmatch(f"{T2V_ID}_{UUID7}", body["request_id"])
    assert body["status"] == "QUEUED"
    assert body["polling_url"] == gateway.base_url + STATUS.format(body["request_id"])


async def test_a_text_to_video_job_goes_queued_processing_completed_with_the_documented_shape(
    gateway: GatewayProcess,
) -> None:
    async with client(gateway) as c:
        submitted = await submit(c, T2V, {"prompt": "a lighthouse at dusk", "duration": 5, "aspect_ratio": "16:9"})
        seen, body = await poll(c, submitted["polling_url"])

    assert seen[-1] == "COMPLETED"
    assert all(s in PENDING for s in seen[:-1])
    assert seen[:-1] == sorted(seen[:-1], key=PENDING.index)
    assert body["request_id"] == submitted["request_id"]
    assert isinstance(body["output"]["media_url"], list)
    assert len(body["output"]["media_url"]) == 1
    assert body["output"]["media_type"] == "video/mp4"
    assert body["created_at"] <= body["completed_at"]


async def test_the_status_route_can_be_built_from_the_request_id_alone(gateway: GatewayProcess) -> None:
    async with client(gateway) as c:
        submitted = await submit(c, T2V, {"prompt": "x"})
        response = await c.get(STATUS.format(submitted["request_id"]), headers=headers())

    assert response.status_code == 200
    assert response.json()["request_id"] == submitted["request_id"]


async def test_media_downloads_without_the_key_as_an_mp4_of_the_requested_length_and_shape(
    gateway: GatewayProcess,
) -> None:
    async with client(gateway) as c:
        submitted = await submit(c, T2V, {"prompt": "tall", "duration": "4", "aspect_ratio": "9:16"})
        _, body = await poll(c, submitted["polling_url"])
        media = await c.get(body["output"]["media_url"][0], headers={"Cache-Control": "no-cache"})

    assert media.status_code == 200
    assert media.headers["content-type"] == "video/mp4"
    assert media.content[4:8] == b"ftyp"
    duration, width, height, _ = probe(media.content)
    assert duration == pytest.approx(4.0, abs=0.2)
    assert height > width


async def test_a_multi_prompt_clip_lasts_the_sum_of_its_shots(gateway: GatewayProcess) -> None:
    shots = [{"prompt": "wide shot of a harbour", "duration": 3}, {"prompt": "close-up of a gull", "duration": 4}]
    async with client(gateway) as c:
        submitted = await submit(c, T2V, {"multi_prompt": shots})
        _, body = await poll(c, submitted["polling_url"])
        media = await c.get(body["output"]["media_url"][0])

    assert probe(media.content)[0] == pytest.approx(7.0, abs=0.2)


async def test_image_to_video_fetches_the_image_url_and_the_clip_opens_on_it(gateway: GatewayProcess) -> None:
    async with tiny_server(png((640, 360), (40, 160, 60))) as images, client(gateway) as c:
        submitted = await submit(c, I2V, {"image_url": f"{images.base_url}/image.png", "duration": 3})
        assert re.fullmatch(f"{I2V_ID}_{UUID7}", submitted["request_id"])
        _, body = await poll(c, submitted["polling_url"])
        media = await c.get(body["output"]["media_url"][0])

    assert body["status"] == "COMPLETED"
    first = probe(media.content)[3].convert("RGB")
    pixel = first.getpixel((first.width // 2, first.height // 4))
    assert isinstance(pixel, tuple)
    assert all(abs(a - b) <= 12 for a, b in zip(pixel, (40, 160, 60), strict=True))


@pytest.mark.parametrize("path", [T2V, I2V, STATUS.format(f"{T2V_ID}_0190a000-0000-7000-8000-000000000000")])
@pytest.mark.parametrize("key", [None, "sk_live_wrong"])
async def test_a_missing_or_wrong_key_is_401_with_the_api_management_body(
    gateway: GatewayProcess, path: str, key: str | None
) -> None:
    async with client(gateway) as c:
        if path.startswith("/v2/"):
            response = await c.get(path, headers=headers(key))
        else:
            response = await c.post(path, content=json.dumps({"prompt": "x"}), headers=headers(key))

    assert response.status_code == 401
    body = response.json()
    assert body["statusCode"] == 401
    assert body["message"].startswith("Access denied due to invalid subscription key.")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (T2V, {"prompt": "x" * 3073}, "prompt"),
        (T2V, {"duration": 5}, "prompt"),
        (T2V, {"prompt": "a", "multi_prompt": [{"prompt": "b"}]}, "multi_prompt"),
        (T2V, {"multi_prompt": [{"prompt": "a", "duration": 8}, {"prompt": "b", "duration": 8}]}, "multi_prompt"),
        (T2V, {"multi_prompt": [{"prompt": "a"}] * 7}, "multi_prompt"),
        (T2V, {"prompt": "a", "duration": 2}, "duration"),
        (T2V, {"prompt": "a", "duration": 16}, "duration"),
        (T2V, {"prompt": "a", "aspect_ratio": "4:3"}, "aspect_ratio"),
        (T2V, {"prompt": "a", "negative_prompt": "blur"}, "negative_prompt"),
        (T2V, {"prompt": "a", "seed": 1}, "seed"),
        (I2V, {"prompt": "a"}, "image_url"),
        (I2V, {"image_url": "http://127.0.0.1:1/unreachable.png"}, "image_url"),
    ],
)
async def test_validation_failures_are_400_with_error_and_message_naming_the_field(
    gateway: GatewayProcess, path: str, body: dict[str, Any], field: str
) -> None:
    async with client(gateway) as c:
        response = await c.post(path, content=json.dumps(body), headers=headers())

    assert response.status_code == 400
    answer = response.json()
    assert set(answer) == {"error", "message"}
    assert field in answer["error"] + answer["message"]


async def test_an_image_too_small_for_the_model_is_400(gateway: GatewayProcess) -> None:
    async with tiny_server(png((299, 400), (0, 0, 0))) as images, client(gateway) as c:
        response = await c.post(
            I2V, content=json.dumps({"image_url": f"{images.base_url}/image.png"}), headers=headers()
        )

    assert response.status_code == 400
    assert "300" in response.json()["message"]


async def test_an_account_out_of_credit_gets_402_insufficient_balance(gateway: GatewayProcess) -> None:
    async with client(gateway) as c:
        refused = await c.post(
            T2V, content=json.dumps({"prompt": "a", "duration": POOR_BALANCE_S + 2}), headers=headers(POOR_KEY)
        )
        fits = await c.post(
            T2V, content=json.dumps({"prompt": "a", "duration": POOR_BALANCE_S}), headers=headers(POOR_KEY)
        )

    assert refused.status_code == 402
    assert refused.json() == {"error": "Insufficient Balance"}
    assert fits.status_code == 202


async def test_an_unknown_request_id_and_another_keys_request_are_404(gateway: GatewayProcess) -> None:
    async with client(gateway) as c:
        submitted = await submit(c, T2V, {"prompt": "private"})
        unknown = await c.get(STATUS.format(f"{T2V_ID}_0190a000-0000-7000-8000-000000000000"), headers=headers())
        foreign = await c.get(submitted["polling_url"], headers=headers(OTHER_KEY))

    assert unknown.status_code == 404
    assert foreign.status_code == 404
    assert unknown.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize(("trigger", "status"), [("[sandbox:fail]", "FAILED"), ("[sandbox:error]", "ERROR")])
async def test_failed_and_error_jobs_end_with_a_top_level_error_text(
    gateway: GatewayProcess, trigger: str, status: str
) -> None:
    async with client(gateway) as c:
        submitted = await submit(c, T2V, {"prompt": f"a storm {trigger}"})
        _, body = await poll(c, submitted["polling_url"])

    assert body["status"] == status
    assert isinstance(body["error"], str)
    assert body["error"]
    assert "output" not in body


async def test_the_webhook_receives_one_post_of_the_terminal_status_object(gateway: GatewayProcess) -> None:
    async with tiny_server() as receiver, client(gateway) as c:
        hook = f"{receiver.base_url}/hook/unguessable-token"
        submitted = await submit(c, T2V, {"prompt": "notify me", "duration": 3}, **{"X-Webhook-URL": hook})
        _, polled = await poll(c, submitted["polling_url"])
        with anyio.fail_after(15):
            await receiver.hook_arrived.wait()

    ((path, sent_headers, payload),) = receiver.hooks
    assert path == "/hook/unguessable-token"
    assert sent_headers["content-type"].startswith("application/json")
    assert payload == polled


async def test_a_duration_given_as_a_numeric_string_is_accepted(gateway: GatewayProcess) -> None:
    async with client(gateway) as c:
        response = await c.post(T2V, content=json.dumps({"prompt": "a", "duration": "5"}), headers=headers())

    assert response.status_code == 202
