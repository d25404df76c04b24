"""Schemas, resources, notifications, completion and logging: the protocol surface, in both eras."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.subscriptions import ResourcesListChanged, ResourceUpdated
from mcp.types import (
    LoggingMessageNotificationParams,
    ResourceTemplateReference,
    ServerNotification,
    TextResourceContents,
)

from kling_mcp import limits
from kling_mcp.config import Settings
from kling_mcp.server import build_server

pytestmark = pytest.mark.anyio

SNAPSHOT = Path(__file__).parent / "snapshots" / "tools.json"


async def test_tool_schemas_encode_every_limit(settings: Settings) -> None:
    async with Client(build_server(settings)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {
        "generate_video",
        "animate_image",
        "storyboard",
        "check_status",
        "list_jobs",
        "extend_video",
        "concat_videos",
    }
    gen = tools["generate_video"].input_schema["properties"]
    assert gen["prompt"]["minLength"] == limits.PROMPT_MIN_CHARS
    assert gen["prompt"]["maxLength"] == limits.PROMPT_MAX_CHARS
    assert (gen["duration"]["minimum"], gen["duration"]["maximum"]) == (limits.DURATION_MIN_S, limits.DURATION_MAX_S)
    assert gen["duration"]["default"] == limits.DURATION_DEFAULT_S
    assert gen["aspect_ratio"]["enum"] == list(limits.ASPECT_RATIOS)
    assert gen["aspect_ratio"]["default"] == "16:9"
    assert tools["generate_video"].input_schema["required"] == ["prompt"]
    story = tools["storyboard"].input_schema
    assert (story["properties"]["shots"]["minItems"], story["properties"]["shots"]["maxItems"]) == (1, 6)
    assert "15 s" in story["properties"]["shots"]["description"]
    shot = story["properties"]["shots"]["items"]["properties"]
    assert (shot["duration"]["minimum"], shot["duration"]["maximum"]) == (3, 15)
    assert shot["prompt"]["maxLength"] == 3072
    assert "300 px" in tools["animate_image"].input_schema["properties"]["image_url"]["description"]
    for tool in tools.values():
        assert tool.title
        assert tool.description
        assert tool.annotations is not None
        assert tool.output_schema is not None
    assert tools["check_status"].annotations.read_only_hint is True  # type: ignore[union-attr]
    assert tools["generate_video"].annotations.destructive_hint is False  # type: ignore[union-attr]
    assert tools["generate_video"].annotations.open_world_hint is not False  # type: ignore[union-attr]  # spec default: open


async def test_tool_schemas_match_the_checked_in_snapshot(settings: Settings) -> None:
    """An interface change must be deliberate: regenerate with KLING_MCP_UPDATE_SNAPSHOTS=1 and review the diff."""
    async with Client(build_server(settings)) as client:
        tools = (await client.list_tools()).tools
    current = {
        t.name: {"title": t.title, "input": t.input_schema, "output": t.output_schema, "description": t.description}
        for t in tools
    }
    check_snapshot(json.dumps(current, indent=2, sort_keys=True) + "\n", SNAPSHOT)


def check_snapshot(text: str, path: Path) -> None:
    """Compares with the checked-in snapshot. Updating is never a pass: the run that rewrites the file fails."""
    if os.environ.get("KLING_MCP_UPDATE_SNAPSHOTS") == "1":
        old = path.read_text() if path.is_file() else None
        if old == text:
            pytest.fail(f"{path.name} is up to date; unset KLING_MCP_UPDATE_SNAPSHOTS to run the check")
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        pytest.fail(f"rewrote {path.name} (KLING_MCP_UPDATE_SNAPSHOTS=1): review the diff, then run again without it")
    assert text == path.read_text(), "tool schemas changed: review, then KLING_MCP_UPDATE_SNAPSHOTS=1"


def test_updating_a_snapshot_writes_it_and_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = tmp_path / "snapshots" / "tools.json"
    monkeypatch.setenv("KLING_MCP_UPDATE_SNAPSHOTS", "1")
    with pytest.raises(pytest.fail.Exception, match=r"rewrote tools\.json"):
        check_snapshot("new\n", snapshot)
    assert snapshot.read_text() == "new\n"
    with pytest.raises(pytest.fail.Exception, match="up to date"):
        check_snapshot("new\n", snapshot)
    monkeypatch.delenv("KLING_MCP_UPDATE_SNAPSHOTS")
    check_snapshot("new\n", snapshot)
    with pytest.raises(AssertionError, match="tool schemas changed"):
        check_snapshot("changed\n", snapshot)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_job_resources_read_back_the_job_and_the_list(settings: Settings, mode: str) -> None:
    async with Client(build_server(settings), mode=mode) as client:
        templates = await client.list_resource_templates()
        assert sorted(t.uri_template for t in templates.resource_templates) == [
            "kling://jobs/{request_id}",
            "kling://jobs/{request_id}/contact-sheet.jpg",
            "kling://jobs/{request_id}/last-frame.png",
            "kling://jobs/{request_id}/poster.jpg",
            "kling://jobs/{request_id}/video",
        ]
        result = await client.call_tool("generate_video", {"prompt": "resource me"})
        data = result.structured_content
        assert data is not None
        job = await client.read_resource(data["resource_uri"])
        contents = job.contents[0]
        assert isinstance(contents, TextResourceContents)
        assert json.loads(contents.text)["status"] == "completed"
        listing = await client.read_resource("kling://jobs", cache_mode="bypass")
        listed = listing.contents[0]
        assert isinstance(listed, TextResourceContents)
        assert [j["request_id"] for j in json.loads(listed.text)] == [data["request_id"]]


@pytest.mark.filterwarnings("ignore::mcp.MCPDeprecationWarning")  # the legacy API is what is under test
async def test_legacy_subscribers_hear_of_job_updates_and_new_jobs(settings: Settings, sandbox: Any) -> None:
    seen: list[str] = []
    updated = anyio.Event()
    watched: list[str] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, ServerNotification):
            seen.append(message.method + " " + str(getattr(message.params, "uri", "")))
            if watched and seen[-1] == f"notifications/resources/updated {watched[0]}":
                updated.set()

    async with Client(build_server(settings), mode="legacy", message_handler=on_message) as client:
        first = await client.call_tool("generate_video", {"prompt": "[sandbox:hold] notify", "wait_seconds": 0})
        assert first.structured_content is not None
        uri = first.structured_content["resource_uri"]
        watched.append(uri)
        await client.subscribe_resource(uri)
        sandbox.gateway.finish(first.structured_content["request_id"])
        await client.call_tool(
            "check_status", {"request_id": first.structured_content["request_id"], "wait_seconds": 20}
        )
        with anyio.fail_after(5):
            await updated.wait()
    assert any(s.startswith("notifications/resources/list_changed") for s in seen)


async def test_modern_listeners_hear_of_job_updates_and_new_jobs(settings: Settings, sandbox: Any) -> None:
    async with Client(build_server(settings), mode="auto") as client:
        first = await client.call_tool("generate_video", {"prompt": "[sandbox:hold] listen", "wait_seconds": 0})
        assert first.structured_content is not None
        uri = first.structured_content["resource_uri"]
        async with client.listen(resource_subscriptions=[uri], resources_list_changed=True) as sub:
            sandbox.gateway.finish(first.structured_content["request_id"])
            await client.call_tool("generate_video", {"prompt": "another", "wait_seconds": 0})
            kinds: set[str] = set()
            with anyio.fail_after(10):
                async for event in sub:
                    if isinstance(event, ResourceUpdated) and event.uri == uri:
                        kinds.add("updated")
                    if isinstance(event, ResourcesListChanged):
                        kinds.add("list")
                    if kinds == {"updated", "list"}:
                        break


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_request_ids_complete_from_the_ledger(settings: Settings, mode: str) -> None:
    async with Client(build_server(settings), mode=mode) as client:
        result = await client.call_tool("generate_video", {"prompt": "complete me", "wait_seconds": 0})
        assert result.structured_content is not None
        rid = result.structured_content["request_id"]
        ref = ResourceTemplateReference(type="ref/resource", uri="kling://jobs/{request_id}")
        done = await client.complete(ref, {"name": "request_id", "value": rid[:20]})
    assert done.completion.values == [rid]


@pytest.mark.filterwarnings("ignore::mcp.MCPDeprecationWarning")
async def test_logging_set_level_sets_what_this_session_is_told(settings: Settings) -> None:
    server_log = logging.getLogger("kling_mcp")
    before = server_log.level
    heard: list[LoggingMessageNotificationParams] = []
    saved: dict[str, anyio.Event] = {}

    async def on_log(params: LoggingMessageNotificationParams) -> None:
        heard.append(params)
        if isinstance(params.data, dict) and "saved" in params.data["message"]:
            saved.setdefault(params.data["request_id"], anyio.Event()).set()

    def said_of(rid: str) -> list[tuple[str, str]]:
        return [(p.level, p.data["message"]) for p in heard if isinstance(p.data, dict) and p.data["request_id"] == rid]

    async def made(prompt: str) -> str:
        result = await client.call_tool("generate_video", {"prompt": prompt})
        assert result.structured_content is not None
        assert result.structured_content["attempts"] == 2  # one ERROR, then a free resubmit
        return str(result.structured_content["request_id"])

    async with Client(build_server(settings), mode="legacy", logging_callback=on_log) as client:
        await client.set_logging_level("info")
        loud = await made("[sandbox:error-once] heard")
        await client.set_logging_level("error")
        quiet = await made("[sandbox:error-once] unheard")
        await client.set_logging_level("info")
        # Messages to one session keep their order: once the last job's are in, the quiet one's would be too.
        last = await made("[sandbox:error-once] heard again")
        with anyio.fail_after(10):
            for rid in (loud, last):
                await saved.setdefault(rid, anyio.Event()).wait()
    assert server_log.level == before, "a client's setLevel changed the server's own log"
    levels = {level for level, _ in said_of(loud)}
    assert levels == {"info", "warning"}
    assert ("warning", f"Job {loud}: attempt 1 ended ERROR (not charged); resubmitted") in said_of(loud)
    assert said_of(loud)[-1] == ("info", f"Job {loud} completed and saved")
    assert said_of(quiet) == []
    assert {p.logger for p in heard} == {"kling_mcp.jobs"}


async def test_legacy_initialize_advertises_list_changed_and_subscribe(settings: Settings) -> None:
    async with Client(build_server(settings), mode="legacy") as client:
        caps = client.session.server_capabilities
    assert caps is not None
    assert caps.resources is not None
    assert caps.resources.subscribe is True
    assert caps.resources.list_changed is True


async def test_the_mode_is_announced_in_the_instructions(settings: Settings) -> None:
    assert "SANDBOX" in (build_server(settings).instructions or "")
    live = settings.with_(mode="live", api_key="sk_live_x")
    assert "LIVE" in (build_server(live).instructions or "")
