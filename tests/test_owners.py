"""A server a team shares: over real streamable HTTP, with two static tokens, each owner sees, reads, extends,
joins, completes, hears of and spends only on their own jobs; another owner's job is "not found" in the very words
of a missing one. Also: ledgers from before owners, and what the ledger keeps of inline images."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.session import MessageHandlerFnT
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ResourcesListChanged, ResourceUpdated
from mcp.types import ResourceTemplateReference, ServerNotification

from kling_mcp.config import Settings
from kling_mcp.errors import SpendLimitError
from kling_mcp.limits import Shot
from kling_mcp.models import GenerationRequest
from kling_mcp.server import build_server
from kling_mcp.store import Guards, Store
from tests.test_error_sentences import png_uri
from tests.test_http_security import serve
from tests.test_store import SCHEMA_BEFORE_VERSIONS, Clock, req

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::mcp.MCPDeprecationWarning")]

ALICE = "tok_alice_Wq3Distinctive_11"
BOB = "tok_bob_Pz8Distinctive_22"
TEAM = (f"alice={ALICE}", f"bob={BOB}")
MISSING = "kling-video-v3-turbo-pro-text-to-video_00000000-0000-0000-0000-000000000000"
TEMPLATE = ResourceTemplateReference(type="ref/resource", uri="kling://jobs/{request_id}")


@asynccontextmanager
async def as_user(
    base: str, token: str, *, mode: str = "auto", on_message: MessageHandlerFnT | None = None
) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http,
        Client(streamable_http_client(base + "/mcp", http_client=http), mode=mode, message_handler=on_message) as c,
    ):
        yield c


def text_of(result: Any) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


def structured(result: Any) -> dict[str, Any]:
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    return dict(result.structured_content)


def as_missing(text: str, job_id: str) -> str:
    """An answer about ``job_id`` with the id taken out, to compare with the answer about a missing id."""
    assert job_id in text
    return text.replace(job_id, "<id>")


async def read_error(client: Client, uri: str) -> str:
    with pytest.raises(MCPError) as caught:
        await client.read_resource(uri, cache_mode="bypass")
    return str(caught.value)


async def made(client: Client, prompt: str, **args: Any) -> dict[str, Any]:
    return structured(await client.call_tool("generate_video", {"prompt": prompt, "duration": 3, **args}))


# --- reading, extending, joining, completing --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_another_owners_job_is_not_found_in_the_words_of_a_missing_one(
    settings: Settings, sandbox: Any, mode: str
) -> None:
    async with serve(settings.with_(auth_tokens=TEAM)) as base:
        async with as_user(base, ALICE, mode=mode) as alice:
            hers = (await made(alice, "alice's heron"))["request_id"]
            own_status = structured(await alice.call_tool("check_status", {"request_id": hers}))
            own_job = await alice.read_resource(f"kling://jobs/{hers}", cache_mode="bypass")
        async with as_user(base, BOB, mode=mode) as bob:
            his = (await made(bob, "bob's fox"))["request_id"]
            for tool, args in (
                ("check_status", {}),
                ("extend_video", {"prompt": "and then"}),
            ):
                theirs = await bob.call_tool(tool, {"request_id": hers, **args})
                missing = await bob.call_tool(tool, {"request_id": MISSING, **args})
                assert theirs.is_error
                assert as_missing(text_of(theirs), hers) == as_missing(text_of(missing), MISSING)
            joined = await bob.call_tool("concat_videos", {"request_ids": [his, hers]})
            joined_missing = await bob.call_tool("concat_videos", {"request_ids": [his, MISSING]})
            assert joined.is_error
            assert as_missing(text_of(joined), hers) == as_missing(text_of(joined_missing), MISSING)
            framed = await bob.call_tool("animate_image", {"image_url": f"kling://jobs/{hers}/last-frame"})
            framed_missing = await bob.call_tool("animate_image", {"image_url": f"kling://jobs/{MISSING}/last-frame"})
            assert framed.is_error
            assert as_missing(text_of(framed), hers) == as_missing(text_of(framed_missing), MISSING)
            for suffix in ("", "/video", "/poster.jpg", "/last-frame.png", "/contact-sheet.jpg"):
                theirs_read = await read_error(bob, f"kling://jobs/{hers}{suffix}")
                missing_read = await read_error(bob, f"kling://jobs/{MISSING}{suffix}")
                assert as_missing(theirs_read, hers) == as_missing(missing_read, MISSING)
            listed = structured(await bob.call_tool("list_jobs", {}))["jobs"]
            listing = await bob.read_resource("kling://jobs", cache_mode="bypass")
            completed = await bob.complete(TEMPLATE, {"name": "request_id", "value": ""})
    assert own_status["status"] == "completed"
    assert json.loads(getattr(own_job.contents[0], "text", "{}"))["request_id"] == hers
    assert [j["request_id"] for j in listed] == [his]
    assert [j["request_id"] for j in json.loads(getattr(listing.contents[0], "text", "[]"))] == [his]
    assert completed.completion.values == [his]
    assert sandbox.gateway.submit_count == 2  # nothing bob tried with alice's job was sent


@pytest.mark.render_size(640, 360)  # extend_video needs a last frame the gateway accepts
async def test_each_owner_completes_lists_and_extends_their_own_jobs(settings: Settings, sandbox: Any) -> None:
    async with serve(settings.with_(auth_tokens=TEAM)) as base, as_user(base, ALICE) as alice:
        first = (await made(alice, "alice one"))["request_id"]
        longer = structured(await alice.call_tool("extend_video", {"request_id": first, "prompt": "two"}))
        film = structured(await alice.call_tool("concat_videos", {"request_ids": [first, longer["request_id"]]}))
        completed = await alice.complete(TEMPLATE, {"name": "request_id", "value": ""})
    assert longer["parent"] == first
    assert film["request_ids"] == [first, longer["request_id"]]
    assert sorted(completed.completion.values) == sorted([first, longer["request_id"]])


async def test_the_same_prompt_and_idempotency_key_from_another_owner_make_their_own_job(
    settings: Settings, sandbox: Any
) -> None:
    async with serve(settings.with_(auth_tokens=TEAM)) as base:
        async with as_user(base, ALICE) as alice:
            hers = await made(alice, "the same words", wait_seconds=0, idempotency_key="shot-1")
            again = await made(alice, "the same words", wait_seconds=0, idempotency_key="shot-1")
            deduped = await made(alice, "the same words", wait_seconds=0)
        async with as_user(base, BOB) as bob:
            his = await made(bob, "the same words", wait_seconds=0, idempotency_key="shot-1")
            his_deduped = await made(bob, "the same words", wait_seconds=0)
    assert again["request_id"] == deduped["request_id"] == hers["request_id"]
    assert his["request_id"] != hers["request_id"]
    assert not his["reused"]
    assert his_deduped["request_id"] == his["request_id"]
    assert sandbox.gateway.submit_count == 2


async def test_an_idempotency_key_reused_with_different_arguments_is_refused(settings: Settings, sandbox: Any) -> None:
    async with serve(settings.with_(auth_tokens=TEAM)) as base, as_user(base, ALICE) as alice:
        first = await made(alice, "a lighthouse", wait_seconds=0, idempotency_key="k-7")
        other = await alice.call_tool("generate_video", {"prompt": "a harbour", "idempotency_key": "k-7"})
    assert other.is_error
    text = text_of(other)
    assert "[invalid_input] idempotency_key must be new for a request with different arguments" in text
    assert first["request_id"] in text
    assert "Nothing was submitted or charged." in text
    assert sandbox.gateway.submit_count == 1


# --- quotas -------------------------------------------------------------------------------------------------------


async def test_one_owners_running_jobs_and_daily_seconds_leave_the_other_owners_alone(
    settings: Settings, sandbox: Any
) -> None:
    guarded = settings.with_(auth_tokens=TEAM, max_active_jobs=2, daily_seconds=10, total_daily_seconds=18)
    hold = {"duration": 5, "wait_seconds": 0}
    async with serve(guarded) as base, as_user(base, ALICE) as alice, as_user(base, BOB) as bob:
        held = [await made(alice, f"[sandbox:hold] alice {i}", **hold) for i in range(2)]
        too_many = await alice.call_tool("generate_video", {"prompt": "alice 3", "duration": 3})
        bobs = await made(bob, "[sandbox:hold] bob 1", **hold)  # alice's 2 running jobs and 10 s are hers
        over_total = await bob.call_tool("generate_video", {"prompt": "bob 2", "duration": 5})
        sandbox.gateway.finish(held[0]["request_id"])
        await alice.call_tool("check_status", {"request_id": held[0]["request_id"], "wait_seconds": 20})
        over_daily = await alice.call_tool("generate_video", {"prompt": "alice 4", "duration": 3})
    assert bobs["status"] in ("queued", "processing")
    assert too_many.is_error
    assert "Refused: 2 jobs are already running (KLING_MCP_MAX_ACTIVE_JOBS=2)." in text_of(too_many)
    assert over_total.is_error
    assert "KLING_MCP_TOTAL_DAILY_SECONDS" in text_of(over_total)
    assert "3 s left" in text_of(over_total)
    assert over_daily.is_error
    assert "today's budget of 10 s (KLING_MCP_DAILY_SECONDS); 0 s left" in text_of(over_daily)
    assert sandbox.gateway.submit_count == 3


async def test_the_total_budget_counts_every_owner_and_the_daily_one_each_alone(tmp_path: Path) -> None:
    store = Store(tmp_path / "l.db", clock=Clock())
    guards = Guards(daily_seconds=10, total_daily_seconds=15)
    await store.create(req("a1", 10), mode="sandbox", owner="alice", guards=guards)
    await store.create(req("b1", 5), mode="sandbox", owner="bob", guards=guards)  # bob's own 10 s are untouched
    with pytest.raises(SpendLimitError, match="KLING_MCP_TOTAL_DAILY_SECONDS") as caught:
        await store.create(req("b2", 3), mode="sandbox", owner="bob", guards=guards)
    assert (caught.value.limit, caught.value.remaining) == ("total_daily_seconds", 0)


# --- notifications ------------------------------------------------------------------------------------------------


async def test_legacy_sessions_hear_only_of_their_owners_jobs(settings: Settings, sandbox: Any) -> None:
    heard: dict[str, list[str]] = {"alice": [], "bob": []}
    done = {"alice": anyio.Event(), "bob": anyio.Event()}
    watched: dict[str, str] = {}

    def recorder(who: str) -> MessageHandlerFnT:
        async def on_message(message: Any) -> None:
            if isinstance(message, ServerNotification):
                heard[who].append(f"{message.method} {getattr(message.params, 'uri', '')}".strip())
                if who in watched and heard[who][-1] == f"notifications/resources/updated {watched[who]}":
                    done[who].set()

        return on_message

    async with (
        serve(settings.with_(auth_tokens=TEAM)) as base,
        as_user(base, ALICE, mode="legacy", on_message=recorder("alice")) as alice,
        as_user(base, BOB, mode="legacy", on_message=recorder("bob")) as bob,
    ):
        await bob.call_tool("list_jobs", {})  # bob's session is known before alice's job exists
        hers = await made(alice, "[sandbox:hold] alice's", wait_seconds=0)
        watched["alice"] = hers["resource_uri"]
        await alice.subscribe_resource(hers["resource_uri"])
        await bob.subscribe_resource(hers["resource_uri"])  # a leaked id must not leak its updates
        sandbox.gateway.finish(hers["request_id"])
        with anyio.fail_after(20):
            await done["alice"].wait()
        alice_heard = list(heard["alice"])
        his = await made(bob, "[sandbox:hold] bob's", wait_seconds=0)
        watched["bob"] = his["resource_uri"]
        await bob.subscribe_resource(his["resource_uri"])
        sandbox.gateway.finish(his["request_id"])
        with anyio.fail_after(20):
            await done["bob"].wait()
    assert f"notifications/resources/updated {hers['resource_uri']}" in alice_heard
    assert not [h for h in heard["bob"] if hers["request_id"] in h]
    # One job each, so each heard of as many list changes; bob would have heard twice as many of alice's too.
    lists = "notifications/resources/list_changed"
    assert heard["bob"].count(lists) == alice_heard.count(lists) > 0


async def test_modern_listeners_hear_only_of_their_owners_jobs(settings: Settings, sandbox: Any) -> None:
    heard: list[str] = []
    async with (
        serve(settings.with_(auth_tokens=TEAM)) as base,
        as_user(base, ALICE) as alice,
        as_user(base, BOB) as bob,
    ):
        hers = await made(alice, "[sandbox:hold] alice's", wait_seconds=0)
        his = await made(bob, "[sandbox:hold] bob's", wait_seconds=0)
        uris = [hers["resource_uri"], his["resource_uri"]]
        async with bob.listen(resource_subscriptions=uris, resources_list_changed=True) as sub:
            sandbox.gateway.finish(hers["request_id"])
            await alice.call_tool("check_status", {"request_id": hers["request_id"], "wait_seconds": 20})
            await made(alice, "alice's next", wait_seconds=0)  # changes alice's list
            # Events reach a stream in the order they happen: once bob hears of his job, he heard all before it.
            sandbox.gateway.finish(his["request_id"])
            with anyio.fail_after(20):
                async for event in sub:
                    heard.append(event.uri if isinstance(event, ResourceUpdated) else type(event).__name__)
                    if heard[-1] == his["resource_uri"]:
                        break
    assert hers["resource_uri"] not in heard
    assert ResourcesListChanged.__name__ not in heard


# --- ledgers from before owners --------------------------------------------------------------------------------


def write_old_ledger(path: Path) -> None:
    """A ledger from before owners and schema versions: one finished job with a key and an inline image."""
    image = png_uri(400, 300)
    request = GenerationRequest(endpoint="image_to_video", prompt="old", image_url=image)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_BEFORE_VERSIONS)
    conn.execute(
        "INSERT INTO jobs (job_id, request_id, current_request_id, status, mode, request_json, fingerprint, "
        "idempotency_key, video_seconds, attempts, attempt_ids, created_at, updated_at, finished_at) "
        "VALUES ('job_old', 'gw_old', 'gw_old', 'failed', 'sandbox', ?, ?, 'old-key', 5, 1, '[\"gw_old\"]', "
        "1.0, 2.0, 2.0)",
        (request.model_dump_json(), request.fingerprint()),
    )
    conn.executemany("INSERT INTO aliases VALUES (?, 'job_old')", [("job_old",), ("gw_old",)])
    conn.commit()
    conn.close()


async def test_jobs_of_a_ledger_from_before_owners_become_the_local_users(settings: Settings, sandbox: Any) -> None:
    write_old_ledger(settings.resolved_state_dir / "ledger.sqlite3")
    async with serve(settings.with_(auth_tokens=TEAM)) as base, as_user(base, ALICE) as alice:
        alices = structured(await alice.call_tool("list_jobs", {}))["jobs"]
        not_hers = await alice.call_tool("check_status", {"request_id": "gw_old"})
        # alice may use the old key: keys are per owner now
        keyed = await made(alice, "old", wait_seconds=0, idempotency_key="old-key")
    async with Client(build_server(settings)) as local:  # in memory: no token, the local user
        locals_ = structured(await local.call_tool("list_jobs", {}))["jobs"]
        again = await local.call_tool("generate_video", {"prompt": "new", "idempotency_key": "old-key"})
    assert alices == []
    assert not_hers.is_error
    assert "No job 'gw_old' in the ledger." in text_of(not_hers)
    assert "gw_old" in [j["request_id"] for j in locals_]
    assert keyed["request_id"] != "gw_old"
    assert again.is_error  # the local user's old key still names the old job
    assert "idempotency_key must be new" in text_of(again)
    conn = sqlite3.connect(settings.resolved_state_dir / "ledger.sqlite3")
    row = conn.execute("SELECT principal, request_json FROM jobs WHERE job_id = 'job_old'").fetchone()
    conn.close()
    assert row[0] == "local"
    assert "base64" not in row[1]  # the old final job's inline image is kept as its hash


# --- inline images: kept while the job may be resent, then only their hash ----------------------------------------


def image_digest(uri: str) -> str:
    return "sha256:" + hashlib.sha256(base64.b64decode(uri.partition(",")[2])).hexdigest()


def ledger_requests(settings: Settings) -> dict[str, str]:
    conn = sqlite3.connect(settings.resolved_state_dir / "ledger.sqlite3")
    try:
        return dict(conn.execute("SELECT request_id, request_json FROM jobs").fetchall())
    finally:
        conn.close()


async def test_an_inline_image_survives_a_restart_and_a_free_resubmit_then_only_its_hash_stays(
    settings: Settings, sandbox: Any
) -> None:
    image = png_uri(400, 300)
    args = {"image_url": image, "prompt": "[sandbox:hold] [sandbox:error-once] pan", "duration": 3, "wait_seconds": 0}
    async with Client(build_server(settings)) as first:
        rid = structured(await first.call_tool("animate_image", args))["request_id"]
    assert image in ledger_requests(settings)[rid]  # still running: the engine may have to send it again
    async with Client(build_server(settings)) as second:  # a restarted server resumes it
        uri = f"kling://jobs/{rid}"
        async with second.listen(resource_subscriptions=[uri]) as sub:
            sandbox.gateway.finish(rid, "ERROR")
            with anyio.fail_after(20):
                async for _ in sub:
                    if sandbox.gateway.submit_count == 2:
                        break
        retry = list(sandbox.gateway.jobs)[-1]
        sandbox.gateway.finish(retry)
        job = structured(await second.call_tool("check_status", {"request_id": rid, "wait_seconds": 20}))
    assert job["status"] == "completed"
    assert job["attempts"] == 2
    assert [j.body["image_url"] for j in sandbox.gateway.jobs.values()] == [image, image]
    kept = json.loads(ledger_requests(settings)[rid])
    assert kept["image_url"] == image_digest(image)
    assert kept["prompt"] == args["prompt"]
    assert job["params"]["image_url"] == image_digest(image)


async def test_after_the_retention_period_a_final_job_keeps_hashes_of_its_prompt_and_image(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(tmp_path / "l.db", clock=clock)
    image = png_uri(400, 300)
    old, _ = await store.create(
        GenerationRequest(endpoint="image_to_video", prompt="an old secret", image_url=image), mode="sandbox"
    )
    await store.update(old.job_id, status="completed", finished_at=clock.now)
    story, _ = await store.create(
        GenerationRequest(endpoint="text_to_video", shots=(Shot(prompt="shot one"), Shot(prompt="shot two"))),
        mode="sandbox",
    )
    await store.update(story.job_id, status="failed", finished_at=clock.now)
    running, _ = await store.create(
        GenerationRequest(endpoint="image_to_video", prompt="still running", image_url=image), mode="sandbox"
    )
    await store.update(running.job_id, status="processing")
    assert (await store.get(old.job_id)).request.image_url == image_digest(image)  # inline image gone when final
    assert (await store.get(old.job_id)).request.prompt == "an old secret"
    clock.now += 30 * 86400 - 1
    assert await store.prune(older_than=30 * 86400) == 0
    clock.now += 2
    fresh, _ = await store.create(req("fresh"), mode="sandbox")
    await store.update(fresh.job_id, status="completed", finished_at=clock.now)
    assert await store.prune(older_than=30 * 86400) == 2
    assert await store.prune(older_than=30 * 86400) == 0
    pruned = await store.get(old.job_id)
    assert pruned.request.prompt == "sha256:" + hashlib.sha256(b"an old secret").hexdigest()
    assert pruned.request.image_url == image_digest(image)  # not a hash of the hash
    assert pruned.request.duration == old.request.duration
    assert [s.prompt for s in (await store.get(story.job_id)).request.shots or ()] == [
        "sha256:" + hashlib.sha256(p).hexdigest() for p in (b"shot one", b"shot two")
    ]
    assert (await store.get(running.job_id)).request.image_url == image  # not final: may be resent
    assert (await store.get(fresh.job_id)).request.prompt == "fresh"
    assert {j.job_id for j in await store.recent()} == {old.job_id, story.job_id, running.job_id, fresh.job_id}
