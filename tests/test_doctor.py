"""``kling-mcp doctor`` against the sandbox gateway (real HTTP on loopback) with its faults and quirks turned on.

Every run checks the free probes created nothing: ``submit_count`` (jobs made) stays 0 unless ``--generate`` was
confirmed, while ``submit_requests`` shows the probes did reach the submit routes.
"""

from __future__ import annotations

import io
import json
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from kling_mcp.config import DEFAULT_STATUS_PATH, DEFAULT_T2V_PATH, GatewayPaths, Settings
from kling_mcp.doctor import main, run_doctor
from kling_mcp.pixazo import RetryPolicy
from kling_mcp.sandbox import RunningSandbox, SandboxConfig, serve_sandbox
from kling_mcp.sandbox.server import serve_asgi
from tests.conftest import TEST_TIME_SCALE, TINY
from tests.support.clips import make_clip
from tests.support.fake_gateway import KEY as FAKE_KEY
from tests.support.fake_gateway import fake_gateway
from tests.support.procs import server_env

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(attempts=8, base_delay=0.001, max_delay=0.01)  # transient faults retried without waiting
RIGHT_KEY = "sk_live_doctor_right_0001"
WRONG_KEY = "sk_live_doctor_wrong_9999"
RENAMED = GatewayPaths(
    text_to_video="/kling-v4/t2v/request", image_to_video="/kling-v4/i2v/request", status="/v3/status/{request_id}"
)


@asynccontextmanager
async def custom_sandbox(tmp_path: Path, **changes: Any) -> AsyncIterator[RunningSandbox]:
    config = SandboxConfig(
        time_scale=TEST_TIME_SCALE, render_size=TINY, fps=8, media_dir=tmp_path / "sandbox-media", **changes
    )
    async with serve_sandbox(config) as served:
        yield served


async def doctor(settings: Settings, *, answer: str = "", generate: bool = False, yes: bool = False) -> tuple[int, str]:
    out = io.StringIO()
    with anyio.fail_after(60):
        code = await run_doctor(settings, out, io.StringIO(answer), generate_clip=generate, yes=yes, retry=FAST)
    return code, out.getvalue()


def live_settings(tmp_path: Path, url: str, key: str, **changes: Any) -> Settings:
    """Live mode against a loopback gateway: what a first real run looks like, minus the bill."""
    return Settings(
        mode="live",
        api_key=key,
        base_url=url,
        poll_interval=0.05,
        state_dir=tmp_path / "state",
        output_dir=tmp_path / "out",
    ).with_(**changes)


async def generate_against(app: Starlette, tmp_path: Path, key: str) -> tuple[int, str]:
    """``doctor --generate --yes`` in live mode against ``app`` on loopback, which is also its own media host."""
    async with serve_asgi(app) as url:
        return await doctor(live_settings(tmp_path, url, key, allow_private_urls=True), generate=True, yes=True)


def finding(report: str, check: str) -> str:
    """The line of one finding, and its fix line when there is one."""
    lines = report.splitlines()
    for i, line in enumerate(lines):
        if f" {check}: " in line and line.split()[0] in ("ok", "WARN", "FAIL", "skip"):
            fix = lines[i + 1] if i + 1 < len(lines) and lines[i + 1].lstrip().startswith("fix:") else ""
            return f"{line}\n{fix}".strip()
    raise AssertionError(f"no finding {check!r} in:\n{report}")


def fails(report: str) -> list[str]:
    return [line for line in report.splitlines() if line.lstrip().startswith("FAIL")]


@pytest.mark.parametrize(
    "quirks",
    [
        {},
        {"status_style": "lower", "media_url_as_string": True, "rate_challenge": 0.2, "seed": 11},
        {"status_style": "in_queue", "rate_challenge": 0.2, "seed": 5},
    ],
    ids=["plain", "lower-string-url-challenges", "in-queue-challenges"],
)
async def test_a_healthy_sandbox_passes_every_check_and_the_generated_clip_matches_the_contract(
    settings: Settings, sandbox: RunningSandbox, quirks: dict[str, Any]
) -> None:
    sandbox.gateway.faults.merge(quirks)
    code, report = await doctor(settings, generate=True, yes=True)
    assert code == 0, report
    assert fails(report) == []
    assert sandbox.gateway.submit_count == 1  # the clip; the probes made nothing
    assert sandbox.gateway.submit_requests == 3
    assert finding(report, "API key").startswith("ok")
    for check in ("status route", "text-to-video route", "image-to-video route", "test clip", "download"):
        assert finding(report, check).startswith("ok"), report
    assert "MP4: 3.00 s, 320x180" in report
    style = quirks.get("status_style", "upper")
    queued, completed = {"upper": ("QUEUED", "COMPLETED"), "lower": ("queued", "completed")}.get(
        style, ("IN_QUEUE", "COMPLETED")
    )
    assert f"status '{queued}'" in finding(report, "submit answer")
    statuses = finding(report, "status values")
    assert statuses.startswith("ok")
    assert statuses.split(": ", 1)[1].split(" (")[0].endswith(completed)
    url = finding(report, "media_url")
    if quirks.get("media_url_as_string"):  # the contract shows a list; the client takes both, and says so
        assert url.startswith("WARN")
        assert "a string, not the list" in url
    else:
        assert url.startswith("ok")
    saved = list(settings.resolved_output_dir.glob("doctor-*.mp4"))
    assert len(saved) == 1
    assert saved[0].stat().st_size > 0


async def test_free_checks_create_no_job_and_report_the_configuration(
    settings: Settings, sandbox: RunningSandbox
) -> None:
    code, report = await doctor(settings)
    assert code == 0, report
    assert sandbox.gateway.submit_count == 0
    assert sandbox.gateway.submit_requests == 2  # both submit routes were probed
    assert sandbox.gateway.jobs == {}
    assert "Generation" not in report
    assert f"PIXAZO_T2V_PATH: {DEFAULT_T2V_PATH} (default)" in report
    assert str(settings.resolved_state_dir) in report
    assert str(settings.resolved_output_dir) in report
    assert finding(report, "mode").startswith("ok   mode: sandbox")


async def test_a_wrong_key_is_reported_as_refused_not_as_unreachable(tmp_path: Path) -> None:
    async with custom_sandbox(tmp_path, keys={RIGHT_KEY: 1e9}) as gateway:
        settings = live_settings(tmp_path, gateway.base_url, WRONG_KEY)
        code, report = await doctor(settings, answer="y\n", generate=True)
        assert code == 1
        assert finding(report, "reachable").startswith("ok")
        key = finding(report, "API key")
        assert key.startswith("FAIL")
        assert "refused" in key
        assert "HTTP 401" in key
        assert "fix: PIXAZO_API_KEY" in key
        assert "ends in …9999" in key
        assert WRONG_KEY not in report  # never the key itself
        assert "the key was refused first" in finding(report, "text-to-video route")
        assert "not attempted" in finding(report, "generation")
        assert "Continue?" not in report
        assert gateway.gateway.submit_count == 0


@pytest.mark.parametrize("key", ['"sk_live_quoted_key_1234"', "sk_live_two words_1234"])
async def test_a_key_with_quotes_or_spaces_is_flagged_without_showing_it(
    settings: Settings, sandbox: RunningSandbox, key: str
) -> None:
    code, report = await doctor(settings.with_(api_key=key))
    assert code == 1
    line = finding(report, "PIXAZO_API_KEY")
    assert line.startswith("FAIL")
    assert "quotes or spaces" in line
    assert key not in report
    assert key[1:-1] not in report


async def test_renamed_routes_are_reported_with_the_setting_that_fixes_each(tmp_path: Path) -> None:
    async with custom_sandbox(tmp_path, paths=RENAMED) as gateway:
        settings = Settings(
            mode="sandbox", base_url=gateway.base_url, state_dir=tmp_path / "s", output_dir=tmp_path / "o"
        )
        code, report = await doctor(settings)
        assert code == 1
        for check, env in (
            ("text-to-video route", "PIXAZO_T2V_PATH"),
            ("image-to-video route", "PIXAZO_I2V_PATH"),
            ("status route", "PIXAZO_STATUS_PATH"),
        ):
            line = finding(report, check)
            assert line.startswith("FAIL"), report
            assert "not a route the gateway knows" in line
            assert f"fix: {env}" in line
        # API Management matches the route before the key: behind unknown routes the key is untested, not refused
        assert "could not be verified" in finding(report, "API key")
        assert gateway.gateway.submit_count == 0

        fixed, report = await doctor(settings.with_(paths=RENAMED))
        assert fixed == 0, report


async def test_generate_derives_the_status_path_from_the_gateways_polling_url(tmp_path: Path) -> None:
    moved = GatewayPaths(status="/v3/status/{request_id}")
    async with custom_sandbox(tmp_path, paths=moved) as gateway:
        settings = Settings(
            mode="sandbox",
            base_url=gateway.base_url,
            poll_interval=0.05,
            sandbox_time_scale=TEST_TIME_SCALE,
            state_dir=tmp_path / "s",
            output_dir=tmp_path / "o",
        )
        code, report = await doctor(settings, generate=True, yes=True)
        assert code == 1
        assert "fix: PIXAZO_STATUS_PATH=/v3/status/{request_id}" in report
        assert finding(report, "polling_url").startswith("WARN")
        # The rest of the contract is still walked, through the gateway's own polling_url.
        assert finding(report, "status values").startswith("ok")
        assert "MP4: 3.00 s" in report
        assert gateway.gateway.submit_count == 1


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on, held bound so nobody else takes it during the test."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield int(held.getsockname()[1])


async def test_an_unreachable_gateway_is_reported_as_unreachable(tmp_path: Path, closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    settings = Settings(mode="sandbox", base_url=url, state_dir=tmp_path / "s", output_dir=tmp_path / "o")
    code, report = await doctor(settings, generate=True, yes=True)
    assert code == 1
    reach = finding(report, "reachable")
    assert reach.startswith("FAIL")
    assert "Could not reach the gateway" in reach
    assert f"fix: PIXAZO_BASE_URL={url}" in reach
    assert "not tried" in finding(report, "API key")
    assert "refused" not in finding(report, "API key")
    assert "not attempted" in finding(report, "generation")


@pytest.mark.parametrize("answer", ["n\n", "\n", "", "maybe\n"])
async def test_generate_without_yes_asks_and_submits_nothing_unless_told_y(
    settings: Settings, sandbox: RunningSandbox, answer: str
) -> None:
    code, report = await doctor(settings, answer=answer, generate=True)
    assert code == 0, report
    assert "Continue? [y/N]" in report
    assert "nothing is charged" in report
    assert "not confirmed: nothing was submitted" in finding(report, "generation")
    assert sandbox.gateway.submit_count == 0


async def test_generate_answered_y_makes_the_clip(settings: Settings, sandbox: RunningSandbox) -> None:
    code, report = await doctor(settings, answer="y\n", generate=True)
    assert code == 0, report
    assert sandbox.gateway.submit_count == 1


async def test_challenge_pages_on_every_poll_leave_the_key_proven_by_the_submit_probes(
    settings: Settings, sandbox: RunningSandbox
) -> None:
    sandbox.gateway.faults.merge({"rate_challenge": 1.0})
    code, report = await doctor(settings)
    assert code == 0, report
    assert finding(report, "API key").startswith("ok")
    status = finding(report, "status route")
    assert status.startswith("WARN")
    assert "CDN challenge" in status


async def test_a_gateway_that_takes_the_probe_body_is_an_alarm(tmp_path: Path) -> None:
    # An independent gateway that validates nothing: the probe's refused body becomes a job.
    app, state = fake_gateway(make_clip(tmp_path / "clip.mp4"))
    code, report = await generate_against(app, tmp_path, FAKE_KEY)
    assert code == 1
    line = finding(report, "text-to-video route")
    assert line.startswith("FAIL")
    assert "a job may exist as request kling-video-v3-turbo-pro-text-to-video_" in line
    assert "check the Pixazo console" in line
    assert "not attempted" in finding(report, "generation")  # never pay after such an answer
    assert "not probed" in finding(report, "image-to-video route")
    assert state.submits == 1  # one accidental job is enough to know


def contract_breaker(video: Path, *, with_output: bool, forgets: bool = False) -> tuple[Starlette, dict[str, int]]:
    """A gateway that bends the contract everywhere the client tolerates it (and, without output, where it cannot)."""
    polls = {"n": 0}

    async def submit(request: Request) -> Response:
        body = json.loads(await request.body())
        if not body.get("prompt") or body.get("duration") not in range(3, 16):
            return JSONResponse({"error": "Invalid request", "message": "prompt and duration are required"}, 422)
        return JSONResponse({"id": "job-1", "status": "ACCEPTED"}, 201)

    async def status(request: Request) -> Response:
        if forgets or request.path_params["request_id"] != "job-1":
            return JSONResponse({"error": "Not Found", "message": "unknown request"}, 404)
        polls["n"] += 1
        if polls["n"] < 3:
            return JSONResponse({"request_id": "job-1", "status": "RUNNING"})
        media = {"video_url": [f"{request.base_url}files/job-1.mp4"]} if with_output else None
        return JSONResponse({"request_id": "job-1", "status": "Completed", "output": media})

    async def file(request: Request) -> Response:
        return FileResponse(video, media_type="application/octet-stream")

    routes = [
        Route("/{api_id}/v1/{name}-request", submit, methods=["POST"]),
        Route(DEFAULT_STATUS_PATH, status),
        Route("/files/job-1.mp4", file),
    ]
    return Starlette(routes=routes), polls


async def test_generate_reports_each_disagreement_with_the_contract(tmp_path: Path) -> None:
    app, _ = contract_breaker(make_clip(tmp_path / "clip.mp4", seconds=1.0), with_output=True)
    code, report = await generate_against(app, tmp_path, RIGHT_KEY)
    assert code == 0, report  # all tolerated by the client: warnings, not failures
    submitted = finding(report, "submit answer")
    assert submitted.startswith("WARN")
    assert "no request_id" in submitted
    assert "'ACCEPTED' is not a known word" in submitted
    assert "missing" in finding(report, "polling_url")
    statuses = finding(report, "status values")
    assert statuses.startswith("WARN")
    assert "'RUNNING'" in statuses
    assert "fix: none by setting" in statuses
    assert "under output.video_url" in finding(report, "media_url")
    assert "application/octet-stream" in finding(report, "download")
    mp4 = finding(report, "MP4")
    assert mp4.startswith("WARN")
    assert "3 s was asked for" in mp4
    assert "1920x1080" in mp4


async def test_a_completion_without_media_url_fails_generation(tmp_path: Path) -> None:
    app, polls = contract_breaker(make_clip(tmp_path / "clip.mp4"), with_output=False)
    code, report = await generate_against(app, tmp_path, RIGHT_KEY)
    assert code == 1
    line = finding(report, "media_url")
    assert line.startswith("FAIL")
    assert "without output.media_url" in line
    assert polls["n"] == 3  # stopped at the completion instead of polling on


async def test_a_status_route_that_never_knows_the_new_request_is_blamed_after_a_few_polls(tmp_path: Path) -> None:
    app, _ = contract_breaker(make_clip(tmp_path / "clip.mp4"), with_output=True, forgets=True)
    code, report = await generate_against(app, tmp_path, RIGHT_KEY)
    assert code == 1
    assert finding(report, "status route").startswith("ok")  # a made-up id is answered 404, as expected
    line = [f for f in fails(report) if "status route" in f]
    assert len(line) == 1
    assert "does not know the request just submitted" in line[0]
    assert "PIXAZO_STATUS_PATH" in report.split(line[0], 1)[1].splitlines()[1]


async def test_unwritable_folders_name_their_variables(
    settings: Settings, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, report = await doctor(settings.with_(state_dir=blocker / "state", output_dir=blocker / "out"))
    assert code == 1
    assert finding(report, "state folder").startswith("FAIL")
    assert "fix: KLING_MCP_STATE_DIR" in finding(report, "state folder")
    assert "fix: KLING_MCP_OUTPUT_DIR" in finding(report, "output folder")


async def test_the_built_in_sandbox_is_checked_when_no_gateway_is_configured(tmp_path: Path) -> None:
    settings = Settings(
        mode="sandbox",
        sandbox_time_scale=TEST_TIME_SCALE,
        sandbox_render_size=TINY,
        sandbox_fps=8,
        poll_interval=0.05,
        state_dir=tmp_path / "s",
        output_dir=tmp_path / "o",
    )
    code, report = await doctor(settings, generate=True, yes=True)
    assert code == 0, report
    assert "the built-in sandbox" in finding(report, "gateway")
    assert "MP4: 3.00 s, 320x180" in report


def test_a_bad_setting_is_a_failed_check_naming_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(env={"KLING_MCP_MODE": "production"})
    assert code == 1
    assert "KLING_MCP_MODE='production' must be one of" in finding(capsys.readouterr().out, "settings")


async def test_the_cli_runs_the_doctor(tmp_path: Path, sandbox: RunningSandbox) -> None:
    env = server_env(tmp_path, PIXAZO_BASE_URL=sandbox.base_url)
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, "-m", "kling_mcp", "doctor", "--generate"], input=b"n\n", env=env, check=False
        )
    report = done.stdout.decode()
    assert done.returncode == 0, report + done.stderr.decode()
    assert fails(report) == []
    assert "not confirmed" in finding(report, "generation")
    assert "Every check passed." in report
    assert sandbox.gateway.submit_count == 0
    assert "HTTP 404" in finding(report, "status route")  # the made-up id, past the key check
