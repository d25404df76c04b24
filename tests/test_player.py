"""The player (MCP App): what clients that negotiated ``io.modelcontextprotocol/ui`` get, what the others do not, the
player's CSP, the app-only tools, and the signed media route over real HTTP (owner-only, Range, expiry, forgery).

The player in a real browser is scripts/player_browser.sh (run by CI)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.context import ClientRequestContext
from mcp.client.extension import advertise
from mcp.client.streamable_http import streamable_http_client
from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID
from mcp.types import ElicitRequestParams, ElicitResult

from kling_mcp.config import Settings
from kling_mcp.server import build_server
from kling_mcp.server.playback import MediaSigner
from kling_mcp.server.player import APP_ONLY, PLAYER_HTML, PLAYER_TOOLS, PLAYER_URI
from tests.test_http_security import serve
from tests.test_owners import ALICE, BOB, TEAM

pytestmark = pytest.mark.anyio

APPS = advertise(EXTENSION_ID, {"mimeTypes": [APP_MIME_TYPE]})
HTML_MAX_BYTES = 80 * 1024


def data_of(result: Any) -> dict[str, Any]:
    assert result.structured_content is not None, result.content
    return dict(result.structured_content)


@asynccontextmanager
async def over_http(base: str, token: str, *, apps: bool = True) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http,
        Client(streamable_http_client(base + "/mcp", http_client=http), extensions=[APPS] if apps else []) as c,
    ):
        yield c


def test_the_player_is_one_self_contained_file_within_80_kb() -> None:
    html = PLAYER_HTML.read_text()
    assert len(html.encode()) <= HTML_MAX_BYTES
    # Nothing fetched for code, style or fonts: no external script/style/link/import/url().
    assert not re.search(r"<script[^>]+src=|<link\b|@import|url\(|@font-face", html, re.I), "an external fetch"
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.I)
    assert html.count("<script>") == 1
    assert html.count("<style>") == 1


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_client_without_apps_lists_exactly_the_tools_it_always_did(settings: Settings, mode: str) -> None:
    with anyio.fail_after(30):
        async with Client(build_server(settings), mode=mode) as client:
            tools = (await client.list_tools()).tools
            refused = await client.call_tool("player_view", {"request_id": "x"})
    assert [t.name for t in tools] == [
        "generate_video", "animate_image", "storyboard", "extend_video", "concat_videos", "check_status", "list_jobs"
    ]  # fmt: skip
    assert all(t.meta is None for t in tools)
    assert refused.is_error
    assert "Unknown tool: player_view" in str(refused.content[0])


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_an_apps_client_gets_the_links_the_app_only_tools_and_the_sandbox_origin(
    settings: Settings, sandbox: Any, mode: str
) -> None:
    with anyio.fail_after(30):
        async with Client(build_server(settings), mode=mode, extensions=[APPS]) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            read = await client.read_resource(PLAYER_URI)
    for name in PLAYER_TOOLS:
        assert tools[name].meta == {"ui": {"resourceUri": PLAYER_URI}}
    assert tools["list_jobs"].meta is None
    for name in APP_ONLY:
        assert tools[name].meta == {"ui": {"resourceUri": PLAYER_URI, "visibility": ["app"]}}
    content = read.contents[0]
    assert content.mime_type == APP_MIME_TYPE
    assert content.meta is not None
    origin = sandbox.base_url.rstrip("/")
    assert content.meta["ui"]["csp"] == {"resourceDomains": [origin]}
    assert content.text == PLAYER_HTML.read_text()  # type: ignore[union-attr]


async def test_live_mode_declares_the_configured_media_origins(settings: Settings) -> None:
    live = settings.with_(mode="live", api_key="sk_test_not_used", media_origins=("https://cdn.example.com",))
    with anyio.fail_after(30):
        async with Client(build_server(live), extensions=[APPS]) as client:
            read = await client.read_resource(PLAYER_URI)
    assert read.contents[0].meta["ui"]["csp"] == {"resourceDomains": ["https://cdn.example.com"]}  # type: ignore[index]


@pytest.mark.render_size(640, 360)  # extend_video starts from the last frame, which must be at least 300 px
async def test_the_view_follows_a_storyboard_and_its_extension_and_a_retake_is_a_new_job(settings: Settings) -> None:
    shots = [{"prompt": "a lighthouse at dawn", "duration": 3}, {"prompt": "gulls over the waves", "duration": 4}]
    with anyio.fail_after(60):
        async with Client(build_server(settings), extensions=[APPS]) as client:
            board = data_of(await client.call_tool("storyboard", {"shots": shots}))
            child = data_of(
                await client.call_tool("extend_video", {"request_id": board["request_id"], "prompt": "night falls"})
            )
            view = data_of(await client.call_tool("player_view", {"request_id": board["request_id"]}))
            retake = data_of(await client.call_tool("player_retake", {"request_id": board["request_id"]}))
            child_view = data_of(await client.call_tool("player_view", {"request_id": child["request_id"]}))
            child_retake = data_of(await client.call_tool("player_retake", {"request_id": child["request_id"]}))
    assert view["job"]["status"] == "completed"
    assert view["progress"] == 1.0
    assert view["play_url"] == board["media_url"]  # in memory (a local caller): the sandbox's own URL
    assert [(s["prompt"], s["duration"], s["start_s"]) for s in view["shots"]] == [
        ("a lighthouse at dawn", 3, 0),
        ("gulls over the waves", 4, 3),
    ]
    assert [c["request_id"] for c in view["chain"]] == [board["request_id"], child["request_id"]]
    assert view["retake_seconds"] == 7
    assert view["retake_possible"] is True
    assert retake["request_id"] != board["request_id"]
    assert retake["params"] == board["params"]
    assert retake["video_seconds"] == 7
    # The extension's inline first frame is kept only as a hash once final: a retake takes the parent's again.
    assert child_view["retake_possible"] is True
    assert child_retake["request_id"] != child["request_id"]
    assert child_retake["parent"] == board["request_id"]
    assert child_retake["params"]["prompt"] == "night falls"


async def test_the_signed_media_route_streams_to_its_owner_only(settings: Settings) -> None:
    async with serve(settings.with_(auth_tokens=TEAM)) as base:
        with anyio.fail_after(60):
            async with over_http(base, ALICE) as alice:
                job = data_of(await alice.call_tool("generate_video", {"prompt": "a kite", "duration": 3}))
                view = data_of(await alice.call_tool("player_view", {"request_id": job["request_id"]}))
                read = await alice.read_resource(PLAYER_URI)
            async with over_http(base, BOB, apps=False) as bob:
                bobs = [t.name for t in (await bob.list_tools()).tools]
            url = view["play_url"]
            assert url.startswith(base + "/player/media/")
            assert read.contents[0].meta["ui"]["csp"]["resourceDomains"][0] == base  # type: ignore[index]
            assert not set(APP_ONLY) & set(bobs)
            async with httpx2.AsyncClient(timeout=30) as http:  # no bearer token: a <video> cannot send one
                whole = await http.get(url)
                part = await http.get(url, headers={"Range": "bytes=100-199"})
                query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
                path = urlsplit(url).path
                as_bob = await http.get(base + path, params={**query, "o": "bob"})
                forged = await http.get(base + path, params={**query, "s": query["s"][:-2] + "AA"})
                later = await http.get(base + path, params={**query, "e": str(int(query["e"]) + 1)})
                unsigned = await http.get(base + path)
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "video/mp4"
    assert whole.content[4:8] == b"ftyp"
    assert len(whole.content) == job["size_bytes"]
    assert part.status_code == 206
    assert part.content == whole.content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(whole.content)}"
    refusals = {as_bob.status_code, forged.status_code, later.status_code, unsigned.status_code}
    assert refusals == {403}
    assert len({r.text for r in (as_bob, forged, later, unsigned)}) == 1  # one answer, whatever was wrong
    assert job["request_id"] not in as_bob.text


@pytest.mark.render_size(640, 360)
async def test_joining_a_chain_makes_a_film_its_owner_alone_can_play_over_http(settings: Settings) -> None:
    async with serve(settings.with_(auth_tokens=TEAM)) as base:
        with anyio.fail_after(60):
            async with over_http(base, ALICE) as alice:
                first = data_of(await alice.call_tool("generate_video", {"prompt": "A red kite", "duration": 3}))
                args = {"request_id": first["request_id"], "prompt": "it climbs", "duration": 3}
                second = data_of(await alice.call_tool("extend_video", args))
                film = data_of(await alice.call_tool("player_join", {"request_id": second["request_id"]}))
            async with httpx2.AsyncClient(timeout=30) as http:
                played = await http.get(film["play_url"])
                query = {k: v[0] for k, v in parse_qs(urlsplit(film["play_url"]).query).items()}
                path = urlsplit(film["play_url"]).path
                as_bob = await http.get(base + path, params={**query, "o": "bob"})
                other = await http.get(base + path.replace("a-red-kite", "b-red-kite"), params=query)
    assert film["request_ids"] == [first["request_id"], second["request_id"]]
    assert film["path"] == "films/a-red-kite.mp4"  # named by the first clip's prompt
    assert film["duration_s"] == pytest.approx(6, abs=0.3)
    assert played.status_code == 200
    assert len(played.content) == film["size_bytes"]
    assert as_bob.status_code == 403
    assert other.status_code == 403  # a signature names one film


async def test_a_retake_above_the_confirm_threshold_asks_with_its_seconds_first(
    settings: Settings, sandbox: Any
) -> None:
    asked: list[str] = []

    async def decline(context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="decline")

    live = settings.with_(mode="live", api_key="sk_live_confirm_test", confirm_above_seconds=5, allow_private_urls=True)
    with anyio.fail_after(30):
        async with Client(build_server(live), extensions=[APPS], elicitation_callback=decline) as client:
            made = data_of(await client.call_tool("generate_video", {"prompt": "small", "duration": 4}))
            small = await client.call_tool("player_retake", {"request_id": made["request_id"]})
            long = live.with_(confirm_above_seconds=3)
        async with Client(build_server(long), extensions=[APPS], elicitation_callback=decline) as client:
            refused = await client.call_tool("player_retake", {"request_id": made["request_id"]})
    assert not small.is_error  # 4 s is not above 5: nobody is asked
    assert refused.is_error
    assert "declined" in str(refused.content[0])
    assert len(asked) == 1
    assert "4 s of video" in asked[0]
    assert sandbox.gateway.submit_count == 2  # the job and the small retake; the declined one never left


def test_a_signature_expires_and_names_one_job_and_owner() -> None:
    now = [1000.0]
    signer = MediaSigner("k", clock=lambda: now[0])
    query = parse_qs(urlsplit(signer.url("http://h", "job-1", "alice")).query)
    args = (query["e"][0], query["s"][0])
    assert signer.check("job-1", "alice", *args)
    assert not signer.check("job-2", "alice", *args)
    assert not signer.check("job-1", "bob", *args)
    assert not MediaSigner("other", clock=lambda: now[0]).check("job-1", "alice", *args)
    now[0] += 3601
    assert not signer.check("job-1", "alice", *args)
