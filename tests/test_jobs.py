"""The job engine on its own, no MCP: ``open_runtime`` over the sandbox gateway in-process, with a fake clock.

Between the engine and the sandbox sits ``Tamper``, the network: it forwards every request and lets a test answer
one in the gateway's place (a submit without a request id, a truncated download, polls refused), the failures a
real gateway produces and the sandbox does not.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import socket
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx2
import pytest

from kling_mcp.config import Settings
from kling_mcp.jobs import NOT_FOUND_POLLS
from kling_mcp.pixazo import GenerationRequest
from kling_mcp.runtime import Runtime, open_runtime
from kling_mcp.sandbox import SandboxConfig, SandboxGateway, create_app
from kling_mcp.store import Job, Store
from tests.conftest import TEST_TIME_SCALE, TINY

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.0  # whole seconds: T0 + n - n == T0 exactly, so a boundary is hit, not approximated
WAIT = 20  # seconds: the bound on any wait for the engine
DEAD_PID = 2**31 - 1  # above every kernel's pid_max, so no process can have it

Forward = Callable[[httpx2.Request], Awaitable[httpx2.Response]]
Hook = Callable[[httpx2.Request, Forward], Awaitable[httpx2.Response]]
Kind = Literal["submit", "status", "media", "other"]


def kind_of(request: httpx2.Request) -> Kind:
    path = request.url.path
    if request.method == "POST" and path.endswith("-request"):
        return "submit"
    if path.startswith("/v2/requests/status/"):
        return "status"
    if path.startswith("/media/"):
        return "media"
    return "other"


class Tamper(httpx2.AsyncBaseTransport):
    """Forwards to the sandbox app; ``hook``, when set, answers instead and may forward itself."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner
        self.hook: Hook | None = None
        self.seen: list[Kind] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.seen.append(kind_of(request))
        if self.hook is None:
            return await self._inner.handle_async_request(request)
        return await self.hook(request, self._inner.handle_async_request)

    async def aclose(self) -> None:
        """Shared by both of the runtime's clients; the fixture owns the app behind it."""

    def count(self, kind: Kind) -> int:
        return self.seen.count(kind)


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    gateway: SandboxGateway
    tamper: Tamper
    clock: Clock
    settings: Settings

    def runtime(self, **changes: Any) -> AbstractAsyncContextManager[Runtime]:
        return open_runtime(self.settings.with_(**changes), transport=self.tamper, clock=self.clock)

    def ledger(self) -> Path:
        return self.settings.resolved_state_dir / "ledger.sqlite3"


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    config = SandboxConfig(time_scale=TEST_TIME_SCALE, render_size=TINY, fps=8, media_dir=tmp_path / "sandbox-media")
    app = create_app(config)
    settings = Settings(
        mode="sandbox",
        base_url="http://127.0.0.1:9",  # never dialled: every request goes to the app through Tamper
        poll_interval=0.05,
        state_dir=tmp_path / "state",
        output_dir=tmp_path / "out",
        sandbox_time_scale=TEST_TIME_SCALE,
    )
    async with app.state.gateway as gateway:
        yield Rig(gateway, Tamper(httpx2.ASGITransport(app)), Clock(), settings)


def t2v(prompt: str, duration: int = 3) -> GenerationRequest:
    return GenerationRequest(endpoint="text_to_video", prompt=prompt, duration=duration)


async def settle(runtime: Runtime, job: Job) -> Job:
    with anyio.fail_after(WAIT):
        return await runtime.engine.wait(job.job_id, WAIT - 5)


# --- submits ---------------------------------------------------------------------------------------------------


async def test_a_2xx_submit_without_a_request_id_is_unknown_and_never_sent_again(rig: Rig) -> None:
    async def strip_request_id(request: httpx2.Request, forward: Forward) -> httpx2.Response:
        response = await forward(request)
        if kind_of(request) != "submit":
            return response
        body = json.loads(await response.aread())
        body.pop("request_id")
        return httpx2.Response(response.status_code, json=body)

    rig.tamper.hook = strip_request_id
    async with rig.runtime() as runtime:
        first = await runtime.engine.submit(t2v("accepted, id lost"))
        again = await runtime.engine.submit(t2v("accepted, id lost"))
    assert first.job.status == "unknown"
    assert first.job.error is not None
    assert "sent no request_id" in first.job.error
    assert "billed it is unknown; it was not submitted again" in first.job.error
    assert again.reused is True
    assert again.job.job_id == first.job.job_id
    assert rig.gateway.submit_count == 1


# --- downloads -------------------------------------------------------------------------------------------------


async def test_a_download_shorter_than_its_content_length_is_retried_not_kept(rig: Rig) -> None:
    full: list[bytes] = []

    async def truncate_the_first(request: httpx2.Request, forward: Forward) -> httpx2.Response:
        response = await forward(request)
        if kind_of(request) != "media" or full:
            return response
        full.append(await response.aread())
        # Content-Length still names the whole file; over ASGI nothing else notices the body is short.
        return httpx2.Response(response.status_code, headers=response.headers, stream=httpx2.ByteStream(full[0][:999]))

    rig.tamper.hook = truncate_the_first
    async with rig.runtime() as runtime:
        job = await settle(runtime, (await runtime.engine.submit(t2v("cut short"))).job)
    assert job.download_state == "done", job.download_error
    assert job.local_path is not None
    saved = Path(job.local_path).read_bytes()
    assert saved == full[0]
    assert job.size_bytes == len(full[0]) > 999
    assert job.sha256 == hashlib.sha256(full[0]).hexdigest()
    assert rig.tamper.count("media") == 2
    assert [p.name for p in Path(job.local_path).parent.iterdir()] == [Path(job.local_path).name]


async def test_a_download_the_ssrf_guard_refused_is_not_retried(rig: Rig) -> None:
    # Live mode guards media URLs; the sandbox's media URL is on 127.0.0.1, which the guard must refuse.
    live = {"mode": "live", "api_key": "sk_live_engine_test", "allow_private_urls": False}
    async with rig.runtime(**live) as runtime:
        job = await settle(runtime, (await runtime.engine.submit(t2v("guarded"))).job)
    assert job.status == "completed"
    assert job.download_state == "failed"
    assert job.download_attempts == 0
    assert job.download_error is not None
    assert "Refused" in job.download_error
    assert "loopback" in job.download_error
    assert rig.tamper.count("media") == 0


async def test_a_download_that_keeps_failing_gives_up_after_the_configured_attempts(rig: Rig) -> None:
    rig.gateway.faults.rate_media_404 = 1.0
    async with rig.runtime() as runtime:
        job = await settle(runtime, (await runtime.engine.submit(t2v("always expired"))).job)
        attempts = runtime.engine.config.download_attempts
    assert job.status == "completed"
    assert job.download_state == "failed"
    assert job.download_attempts == attempts
    assert job.download_error is not None
    assert job.download_error.startswith(f"Gave up after {attempts} attempts")
    assert rig.tamper.count("media") == attempts


# --- polls -----------------------------------------------------------------------------------------------------


async def test_polls_answered_401_leave_the_job_running_and_unpaid_twice(rig: Rig) -> None:
    refused = 0
    enough = anyio.Event()

    async def refuse_polls(request: httpx2.Request, forward: Forward) -> httpx2.Response:
        nonlocal refused
        if kind_of(request) != "status":
            return await forward(request)
        refused += 1
        if refused == NOT_FOUND_POLLS + 2:  # past the bound a 404 has: a refused key is not a forgotten job
            enough.set()
        return httpx2.Response(401, json={"statusCode": 401, "message": "refused by the test"})

    async with rig.runtime() as runtime:
        made = (await runtime.engine.submit(t2v("[sandbox:hold] refused polls"))).job
        rig.tamper.hook = refuse_polls
        with anyio.fail_after(WAIT):
            await enough.wait()
        during = await runtime.store.get(made.job_id)
        rig.tamper.hook = None
        rig.gateway.finish(made.id)
        job = await settle(runtime, made)
    assert during.status in ("queued", "processing")
    assert during.error is None
    assert job.status == "completed"
    assert job.attempts == 1
    assert rig.gateway.submit_count == 1


def not_found_except(*answered: int) -> Hook:
    """Status polls answered 404, as by a gateway that has forgotten the request, except the polls numbered
    ``answered`` (from 1), which reach the gateway."""
    polls = itertools.count(1)

    async def hook(request: httpx2.Request, forward: Forward) -> httpx2.Response:
        if kind_of(request) == "status" and next(polls) not in answered:
            return httpx2.Response(404, json={"error": "Not Found", "message": "No request with this id."})
        return await forward(request)

    return hook


async def test_a_request_the_gateway_forgot_ends_unknown_after_a_bounded_number_of_404_polls(rig: Rig) -> None:
    async with rig.runtime() as runtime:
        rig.tamper.hook = not_found_except()
        made = (await runtime.engine.submit(t2v("[sandbox:hold] forgotten"))).job
        job = await settle(runtime, made)
        polls = rig.tamper.count("status")
        again = await runtime.engine.get(made.id)  # asking about it does not start polling again
    assert job.status == "unknown"
    assert polls == NOT_FOUND_POLLS
    assert rig.tamper.count("status") == NOT_FOUND_POLLS
    assert again.status == "unknown"
    assert job.error is not None
    for words in ("no longer knows", "Pixazo console", "force_new=true", "not submitted again"):
        assert words in job.error
    assert job.download_state == "off"
    assert job.attempts == 1
    assert rig.gateway.submit_count == 1
    assert job.finished_at == rig.clock.now


async def test_only_404_polls_in_a_row_count_towards_the_bound(rig: Rig) -> None:
    async with rig.runtime() as runtime:
        rig.tamper.hook = not_found_except(NOT_FOUND_POLLS - 1)  # one answer, just before the bound
        made = (await runtime.engine.submit(t2v("[sandbox:hold] forgotten now and then"))).job
        job = await settle(runtime, made)
    assert job.status == "unknown"
    assert rig.tamper.count("status") == 2 * NOT_FOUND_POLLS - 1
    assert rig.gateway.submit_count == 1


# --- resume ----------------------------------------------------------------------------------------------------


async def left_submitting(rig: Rig, owner: str) -> str:
    """A ledger row as a process leaves it when it stops between recording a job and hearing the gateway."""
    store = Store(rig.ledger(), clock=rig.clock)
    try:
        job, created = await store.create(t2v("cut off mid-submit"), mode="sandbox")
    finally:
        store.close()
    assert created
    with closing(sqlite3.connect(rig.ledger())) as conn, conn:
        conn.execute("UPDATE jobs SET owner = ? WHERE job_id = ?", (owner, job.job_id))
    return job.job_id


async def test_a_row_a_dead_process_left_submitting_is_unknown_on_restart(rig: Rig) -> None:
    job_id = await left_submitting(rig, f"{socket.gethostname()}:{DEAD_PID}")
    async with rig.runtime() as runtime:
        job = await runtime.store.get(job_id)
    assert job.status == "unknown"
    assert job.error is not None
    assert "may or may not have accepted" in job.error
    assert job.download_state == "off"
    assert rig.gateway.submit_count == 0


async def test_a_row_a_live_process_is_submitting_is_left_alone_until_the_grace_ends(rig: Rig) -> None:
    job_id = await left_submitting(rig, f"{socket.gethostname()}:1")  # pid 1 always runs
    async with rig.runtime() as runtime:
        grace = runtime.engine.config.submit_grace_seconds
        within = await runtime.store.get(job_id)
    rig.clock.now = T0 + grace + 1
    async with rig.runtime() as runtime:
        after = await runtime.store.get(job_id)
    assert within.status == "submitting"
    assert after.status == "unknown"
    assert rig.gateway.submit_count == 0


# --- dedupe ----------------------------------------------------------------------------------------------------


async def test_the_dedupe_window_includes_its_boundary(rig: Rig) -> None:
    async with rig.runtime() as runtime:
        window = runtime.engine.config.dedupe_seconds
        first = await runtime.engine.submit(t2v("same again"))
        rig.clock.now = T0 + window
        at_boundary = await runtime.engine.submit(t2v("same again"))
        rig.clock.now = T0 + window + 1
        past = await runtime.engine.submit(t2v("same again"))
    assert at_boundary.reused is True
    assert at_boundary.job.job_id == first.job.job_id
    assert past.reused is False
    assert past.job.job_id != first.job.job_id
    assert rig.gateway.submit_count == 2


async def test_a_cancelled_job_is_no_longer_polled_downloaded_or_reused(rig: Rig) -> None:
    polled: list[str] = []

    async def record(request: httpx2.Request, forward: Forward) -> httpx2.Response:
        if kind_of(request) == "status":
            polled.append(request.url.path)
        return await forward(request)

    rig.tamper.hook = record
    async with rig.runtime() as runtime:
        made = (await runtime.engine.submit(t2v("[sandbox:hold] cancelled"))).job
        cancelled = await runtime.engine.cancel(made.id)
        at_cancel = sum(made.id in path for path in polled)
        rig.gateway.finish(made.id)  # the gateway has no cancel: it renders the video anyway
        again = await runtime.engine.submit(t2v("[sandbox:hold] cancelled"))  # not the cancelled job back
        rig.gateway.finish(again.job.id)
        await settle(runtime, again.job)  # many poll intervals, in which the cancelled job is left alone
        after = await runtime.engine.cancel(made.id)
    assert cancelled.status == after.status == "cancelled"
    assert cancelled.settled
    assert "no cancel" in (cancelled.error or "")
    assert sum(made.id in path for path in polled) <= at_cancel + 1  # at most the poll already on its way
    assert after.local_path is None
    assert after.download_state == "off"
    assert again.reused is False
    assert rig.gateway.submit_count == 2


async def test_the_built_in_sandbox_serves_the_routes_the_client_is_configured_to_call(tmp_path: Path) -> None:
    from kling_mcp.config import GatewayPaths

    settings = Settings(
        mode="sandbox",
        state_dir=tmp_path / "state",
        output_dir=tmp_path / "out",
        sandbox_time_scale=TEST_TIME_SCALE,
        sandbox_render_size=TINY,
        paths=GatewayPaths(text_to_video="/renamed/t2v", status="/renamed/status/{request_id}"),
    )
    with anyio.fail_after(WAIT):
        async with open_runtime(settings) as runtime:
            submitted = await runtime.engine.submit(t2v("renamed routes"))
            job = await runtime.engine.wait(submitted.job.id, WAIT - 5)
    assert job.status == "completed", job.error
