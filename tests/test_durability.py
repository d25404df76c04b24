"""Never lose or double-pay a generation: ambiguity, idempotency, dedupe, guards, downloads, shared ledgers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from mcp import Client
from mcp.types import CallToolResult, TextContent

from kling_mcp.config import Settings
from kling_mcp.server import build_server

pytestmark = pytest.mark.anyio


def text_of(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


def data_of(result: CallToolResult) -> dict[str, Any]:
    assert result.structured_content is not None, text_of(result)
    return dict(result.structured_content)


async def test_an_ambiguous_submit_is_recorded_unknown_and_never_resubmitted(settings: Settings, sandbox: Any) -> None:
    sandbox.gateway.config.faults.rate_submit_lost = 1.0
    async with Client(build_server(settings)) as client:
        first = await client.call_tool("generate_video", {"prompt": "lost in transit"})
        sandbox.gateway.config.faults.rate_submit_lost = 0.0
        again = await client.call_tool("generate_video", {"prompt": "lost in transit"})
        listing = await client.call_tool("list_jobs", {"status": "unknown"})
    data = data_of(first)
    assert data["status"] == "unknown"
    assert "unknown" in text_of(first).lower()
    assert "Pixazo console" in (data["next"] or "")
    assert "force_new=true" in (data["next"] or "")
    assert data_of(again)["reused"] is True
    assert data_of(again)["request_id"] == data["request_id"]
    assert sandbox.gateway.submit_count == 1
    assert len(data_of(listing)["jobs"]) == 1


async def test_an_idempotency_key_returns_the_same_job(settings: Settings, sandbox: Any) -> None:
    async with Client(build_server(settings)) as client:
        one = await client.call_tool("generate_video", {"prompt": "a", "idempotency_key": "shot-42"})
        two = await client.call_tool("generate_video", {"prompt": "a", "idempotency_key": "shot-42"})
    assert data_of(one)["request_id"] == data_of(two)["request_id"]
    assert data_of(two)["reused"] is True
    assert "existing job" in text_of(two)
    assert sandbox.gateway.submit_count == 1


async def test_identical_requests_are_deduplicated_until_force_new(settings: Settings, sandbox: Any) -> None:
    async with Client(build_server(settings)) as client:
        one = await client.call_tool("storyboard", {"shots": [{"prompt": "a"}, {"prompt": "b"}]})
        two = await client.call_tool("storyboard", {"shots": [{"prompt": "a"}, {"prompt": "b"}]})
        three = await client.call_tool("storyboard", {"shots": [{"prompt": "a"}, {"prompt": "b"}], "force_new": True})
    assert data_of(two)["request_id"] == data_of(one)["request_id"]
    assert data_of(three)["request_id"] != data_of(one)["request_id"]
    assert data_of(three)["reused"] is False
    assert sandbox.gateway.submit_count == 2


async def test_failed_jobs_are_not_retried(settings: Settings, sandbox: Any) -> None:
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate_video", {"prompt": "[sandbox:fail] nope"})
    assert data_of(result)["status"] == "failed"
    assert data_of(result)["attempts"] == 1
    assert sandbox.gateway.submit_count == 1


async def test_the_active_jobs_guard_refuses_with_what_to_do(settings: Settings, sandbox: Any) -> None:
    async with Client(build_server(settings.with_(max_active_jobs=1))) as client:
        held = await client.call_tool("generate_video", {"prompt": "[sandbox:hold] one", "wait_seconds": 0})
        refused = await client.call_tool("generate_video", {"prompt": "two", "wait_seconds": 0})
        sandbox.gateway.finish(data_of(held)["request_id"])
        await client.call_tool("check_status", {"request_id": data_of(held)["request_id"], "wait_seconds": 10})
        allowed = await client.call_tool("generate_video", {"prompt": "two", "wait_seconds": 0})
    assert refused.is_error
    assert "KLING_MCP_MAX_ACTIVE_JOBS=1" in text_of(refused)
    assert not allowed.is_error
    assert sandbox.gateway.submit_count == 2


async def test_the_daily_seconds_guard_says_what_is_left_and_when_it_resets(settings: Settings, sandbox: Any) -> None:
    async with Client(build_server(settings.with_(daily_seconds=8))) as client:
        ok = await client.call_tool("generate_video", {"prompt": "five", "duration": 5})
        refused = await client.call_tool("generate_video", {"prompt": "five more", "duration": 5})
        small = await client.call_tool("generate_video", {"prompt": "three", "duration": 3})
    assert data_of(ok)["video_seconds"] == 5
    assert refused.is_error
    text = text_of(refused)
    assert "3 s left" in text
    assert "UTC midnight" in text
    assert not small.is_error
    assert sandbox.gateway.submit_count == 2


async def test_concurrent_waiters_share_one_download(settings: Settings, sandbox: Any) -> None:
    async with Client(build_server(settings)) as client:
        first = await client.call_tool("generate_video", {"prompt": "[sandbox:hold] crowd", "wait_seconds": 0})
        rid = data_of(first)["request_id"]
        results: list[dict[str, Any]] = []

        async def wait() -> None:
            results.append(data_of(await client.call_tool("check_status", {"request_id": rid, "wait_seconds": 20})))

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(wait)
                await anyio.lowlevel.checkpoint()
                sandbox.gateway.finish(rid)
    assert {r["status"] for r in results} == {"completed"}
    assert len({r["local_path"] for r in results}) == 1
    assert sandbox.gateway.jobs[rid].media_requests == 1
    assert [p.name for p in Path(results[0]["local_path"]).parent.iterdir()] == [Path(results[0]["local_path"]).name]


async def test_an_expired_download_is_retried_and_reported_meanwhile(settings: Settings, sandbox: Any) -> None:
    sandbox.gateway.config.faults.rate_media_404 = 1.0
    async with Client(build_server(settings)) as client:
        first = await client.call_tool("generate_video", {"prompt": "expire me", "wait_seconds": 1})
        data = data_of(first)
        assert data["status"] == "completed"
        assert data["local_path"] is None
        assert data["download"] != "saved"
        sandbox.gateway.config.faults.rate_media_404 = 0.0
        later = await client.call_tool("check_status", {"request_id": data["request_id"], "wait_seconds": 20})
    assert data_of(later)["download"] == "saved"
    assert Path(data_of(later)["local_path"]).is_file()


async def test_two_servers_on_one_ledger_share_jobs_without_double_work(settings: Settings, sandbox: Any) -> None:
    async with Client(build_server(settings)) as one, Client(build_server(settings)) as two:
        made = await one.call_tool("generate_video", {"prompt": "[sandbox:hold] shared", "wait_seconds": 0})
        rid = data_of(made)["request_id"]
        seen_by_two = await two.call_tool("check_status", {"request_id": rid})
        assert data_of(seen_by_two)["status"] in ("queued", "processing")
        again = await two.call_tool("generate_video", {"prompt": "[sandbox:hold] shared", "wait_seconds": 0})
        assert data_of(again)["request_id"] == rid
        sandbox.gateway.finish(rid)
        with anyio.fail_after(20):
            a = await one.call_tool("check_status", {"request_id": rid, "wait_seconds": 15})
            b = await two.call_tool("check_status", {"request_id": rid, "wait_seconds": 15})
    assert data_of(a)["local_path"] == data_of(b)["local_path"]
    assert sandbox.gateway.submit_count == 1
    assert sandbox.gateway.jobs[rid].media_requests == 1


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_large_paid_request_asks_the_user_first(settings: Settings, sandbox: Any, mode: str) -> None:
    from mcp.client import ClientRequestContext
    from mcp.types import ElicitRequestParams, ElicitResult

    answers = ["decline", "accept"]
    asked: list[str] = []

    async def answer(context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        asked.append(params.message)
        action = answers.pop(0)
        return ElicitResult(action=action, content={"confirm": True} if action == "accept" else None)

    live = settings.with_(mode="live", api_key="sk_live_confirm_test", confirm_above_seconds=5, allow_private_urls=True)
    async with Client(build_server(live), mode=mode, elicitation_callback=answer) as client:
        small = await client.call_tool("generate_video", {"prompt": "small", "duration": 5})
        declined = await client.call_tool("generate_video", {"prompt": "big", "duration": 10})
        accepted = await client.call_tool("generate_video", {"prompt": "big", "duration": 10})
    assert data_of(small)["status"] == "completed"
    assert declined.is_error
    assert "declined" in text_of(declined)
    assert data_of(accepted)["status"] == "completed"
    assert len(asked) == 2
    assert "10 s of video" in asked[0]
    assert sandbox.gateway.submit_count == 2
