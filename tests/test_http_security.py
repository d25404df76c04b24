"""Serving many agents over HTTP: bearer auth, DNS-rebinding protection, webhooks, and no secret ever leaks."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from kling_mcp.config import Settings
from kling_mcp.sandbox.server import serve_asgi
from kling_mcp.server import build_server, http_security
from kling_mcp.server.http import WEBHOOK_MAX_BYTES
from tests.support.procs import server_env

pytestmark = pytest.mark.anyio

TOKEN = "tok_Zq8vDistinctiveBearer_77"
API_KEY = "sk_live_Kx3DistinctiveApiKey_91"


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[str]:
    """The server's real streamable-HTTP app on a loopback port, as `kling-mcp serve --transport http` builds it."""
    app = build_server(settings).streamable_http_app(
        host="127.0.0.1", transport_security=http_security(settings, "127.0.0.1")
    )
    async with serve_asgi(app, "127.0.0.1", 0) as base_url:
        yield base_url


@asynccontextmanager
async def mcp_client(base_url: str, token: str | None = None) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(base_url + "/mcp", http_client=http)) as client,
    ):
        yield client


async def test_bearer_tokens_are_required_and_checked(settings: Settings) -> None:
    secured = settings.with_(auth_tokens=("other-token", TOKEN))
    async with serve(secured) as base, httpx2.AsyncClient(base_url=base) as http:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
        none = await http.post("/mcp", json=body, headers=headers)
        wrong = await http.post("/mcp", json=body, headers={**headers, "Authorization": "Bearer nope"})
        health = await http.get("/healthz")
        async with mcp_client(base, TOKEN) as client:
            result = await client.call_tool("generate_video", {"prompt": "authorised", "duration": 3})
    assert none.status_code == 401
    assert wrong.status_code == 401
    assert health.status_code == 200
    assert result.structured_content is not None
    assert result.structured_content["status"] == "completed"


async def test_a_host_header_from_another_domain_is_refused(settings: Settings) -> None:
    async with serve(settings) as base, httpx2.AsyncClient(base_url=base) as http:
        response = await http.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Host": "evil.example", "Accept": "application/json, text/event-stream"},
        )
    assert response.status_code == 421


async def test_configured_hosts_are_allowed(settings: Settings) -> None:
    configured = settings.with_(allowed_hosts=("video.example.com",))
    async with serve(configured) as base, httpx2.AsyncClient(base_url=base) as http:
        response = await http.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={"Host": "video.example.com", "Accept": "application/json, text/event-stream"},
        )
    assert response.status_code != 421


def serve_http_process(env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    """`kling-mcp serve --transport http` run to its end (a refusal to start)."""
    command = [sys.executable, "-m", "kling_mcp", "serve", "--transport", "http", *flags, "--port", "8999"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_a_non_loopback_bind_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    done = serve_http_process(server_env(tmp_path), "--host", "0.0.0.0")
    assert done.returncode == 2
    assert "KLING_MCP_AUTH_TOKEN" in done.stderr
    assert "--insecure-no-auth" in done.stderr


def test_http_on_a_shared_ledger_without_a_media_secret_refuses_to_start(tmp_path: Path) -> None:
    # Replicas behind one URL each sign the player's media links; with a random key per process, a link one replica
    # made is refused (403) by every other one the load balancer picks.
    env = {**server_env(tmp_path), "KLING_MCP_DATABASE_URL": "postgresql://kling:hunter2@127.0.0.1:1/kling"}
    env.pop("KLING_MCP_MEDIA_SECRET", None)
    done = serve_http_process(env)
    assert done.returncode == 2
    assert "KLING_MCP_MEDIA_SECRET" in done.stderr
    assert "hunter2" not in done.stderr


# --- webhooks ----------------------------------------------------------------------------------------------------


@asynccontextmanager
async def webhook_server(settings: Settings) -> AsyncIterator[tuple[str, Settings]]:
    """A server whose public URL is its own loopback address, so the sandbox's webhooks reach it."""
    from bench.webhook_latency import webhook_server as serve_with_webhooks

    async with serve_with_webhooks(settings) as base:
        yield base, settings.with_(public_url=base, webhook_poll_interval=60.0)


async def test_a_webhook_wakes_the_waiting_call_while_polling_sleeps(settings: Settings, sandbox: Any) -> None:
    async with webhook_server(settings) as (base, _), mcp_client(base) as client:
        made = await client.call_tool("generate_video", {"prompt": "[sandbox:hold] hook", "wait_seconds": 0})
        assert made.structured_content is not None
        rid = made.structured_content["request_id"]
        assert sandbox.gateway.jobs[rid].webhook_url.startswith(base + "/webhooks/pixazo/")
        result: dict[str, Any] = {}

        async def wait() -> None:
            done = await client.call_tool("check_status", {"request_id": rid, "wait_seconds": 30})
            result.update(done.structured_content or {})

        # Polling is every 60 s here, so finishing inside this bound proves the webhook path.
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                sandbox.gateway.finish(rid)
    assert result["status"] == "completed"
    assert result["download"] == "saved"
    assert [d.status_code for d in sandbox.gateway.jobs[rid].webhook_deliveries] == [200]
    # The webhook is a doorbell: exactly one poll, the one it rang for, learned of the completion.
    assert sandbox.gateway.jobs[rid].status_polls == 1


async def test_forged_replayed_and_malformed_webhooks_change_nothing(settings: Settings, sandbox: Any) -> None:
    async with webhook_server(settings) as (base, _), mcp_client(base) as client:
        first = (
            await client.call_tool("generate_video", {"prompt": "[sandbox:hold] a", "wait_seconds": 0})
        ).structured_content
        second = (
            await client.call_tool("generate_video", {"prompt": "[sandbox:hold] b", "wait_seconds": 0})
        ).structured_content
        assert first is not None
        assert second is not None
        url_a = sandbox.gateway.jobs[first["request_id"]].webhook_url
        url_b = sandbox.gateway.jobs[second["request_id"]].webhook_url
        done_a = {
            "request_id": first["request_id"],
            "status": "COMPLETED",
            "output": {"media_url": ["http://127.0.0.1:9/x.mp4"], "media_type": "video/mp4"},
        }
        async with httpx2.AsyncClient() as http:
            forged = await http.post(base + "/webhooks/pixazo/not-a-token", json=done_a)
            replayed = await http.post(url_b, json=done_a)
            malformed = await http.post(url_a, content=b"{not json")
            not_object = await http.post(url_a, json=[1, 2])
            oversized = await http.post(url_a, content=b"{" + b" " * 70_000 + b"}")
        statuses = [
            (await client.call_tool("check_status", {"request_id": job["request_id"]})).structured_content["status"]
            for job in (first, second)
        ]
    assert [r.status_code for r in (forged, replayed, malformed, not_object, oversized)] == [404, 409, 400, 400, 413]
    assert statuses == ["processing", "processing"] or set(statuses) <= {"queued", "processing"}


async def test_webhook_bodies_are_capped_however_they_arrive(settings: Settings, sandbox: Any) -> None:
    async with webhook_server(settings) as (base, _), mcp_client(base) as client:
        made = (
            await client.call_tool("generate_video", {"prompt": "[sandbox:hold] capped", "wait_seconds": 0})
        ).structured_content
        assert made is not None
        url = sandbox.gateway.jobs[made["request_id"]].webhook_url
        valid = json.dumps({"request_id": made["request_id"], "status": "PROCESSING"}).encode()

        def padded(size: int) -> bytes:
            return valid + b" " * (size - len(valid))  # JSON allows trailing whitespace: still a valid webhook

        async def chunked(body: bytes) -> AsyncIterator[bytes]:
            for start in range(0, len(body), 8192):
                yield body[start : start + 8192]

        async with httpx2.AsyncClient() as http:
            at_cap = await http.post(url, content=padded(WEBHOOK_MAX_BYTES))
            over_cap = await http.post(url, content=padded(WEBHOOK_MAX_BYTES + 1))
            # No Content-Length: only counting the bytes as they arrive can refuse it.
            chunked_at_cap = await http.post(url, content=chunked(padded(WEBHOOK_MAX_BYTES)))
            chunked_over_cap = await http.post(url, content=chunked(padded(WEBHOOK_MAX_BYTES + 1)))
        # A claim of a gigabyte is refused on the headers alone: the server must not wait for a body that large.
        target = httpx2.URL(url)
        async with await anyio.connect_tcp(target.host, target.port or 80) as raw:
            head = f"POST {target.raw_path.decode()} HTTP/1.1\r\nHost: {target.netloc.decode()}\r\n"
            await raw.send((head + "Content-Length: 1000000000\r\nConnection: close\r\n\r\n{").encode())
            with anyio.fail_after(10):
                answer = await raw.receive()
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:100]
    assert "content-length" not in chunked_over_cap.request.headers
    assert chunked_over_cap.request.headers["transfer-encoding"] == "chunked"
    assert [r.status_code for r in (at_cap, over_cap, chunked_at_cap, chunked_over_cap)] == [200, 413, 200, 413]
    assert at_cap.json()["detail"] == "polled"


# --- secrets -----------------------------------------------------------------------------------------------------


async def test_the_key_and_token_appear_nowhere(
    settings: Settings, sandbox: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sandbox.gateway.config.keys = {API_KEY: 1000.0}
    live = settings.with_(mode="live", api_key=API_KEY, auth_tokens=(TOKEN,), allow_private_urls=True)
    seen: list[str] = []
    async with serve(live) as base, mcp_client(base, TOKEN) as client:
        calls: list[tuple[str, dict[str, Any]]] = [
            ("generate_video", {"prompt": "secret test", "duration": 3}),
            ("storyboard", {"shots": [{"prompt": "a", "duration": 3}, {"prompt": "b", "duration": 3}]}),
            ("generate_video", {"prompt": "[sandbox:fail] refused"}),
            ("generate_video", {"prompt": "x", "duration": 99}),
            ("check_status", {"request_id": "missing"}),
            ("list_jobs", {}),
        ]
        for tool, args in calls:
            result = await client.call_tool(tool, args)
            seen.append(result.model_dump_json())
        rid = json.loads(seen[0])["structured_content"]["request_id"]
        uris = (f"kling://jobs/{rid}", "kling://jobs", f"kling://jobs/{rid}/poster.jpg")
        seen.extend([(await client.read_resource(uri)).model_dump_json() for uri in uris])
        sandbox.gateway.config.keys = {"sk_other": 1.0}  # now the gateway refuses the key: errors must not echo it
        revoked = await client.call_tool("generate_video", {"prompt": "after revoke"})
        seen.append(revoked.model_dump_json())
    seen.extend(record.getMessage() for record in caplog.records)
    written = [*(tmp_path / "state").rglob("*"), *(tmp_path / "out").rglob("*")]
    seen.extend(path.read_bytes().decode("latin-1") for path in written if path.is_file())
    text = "\n".join(seen)
    assert json.loads(seen[0])["structured_content"]["status"] == "completed"  # the key did reach the gateway
    assert revoked.is_error
    assert "PIXAZO_API_KEY" in revoked.model_dump_json()  # the error names the variable, never its value
    for secret in (API_KEY, TOKEN):
        assert secret not in text
        assert secret[4:20] not in text


async def test_a_core_that_failed_to_start_tells_remote_callers_no_detail_of_the_servers_setup(
    settings: Settings,
) -> None:
    # A ledger database that cannot be reached: its error names the database's host and port.
    unreachable = settings.with_(database_url="postgresql://kling:hunter2@127.0.0.1:1/kling")
    with anyio.fail_after(60):
        async with serve(unreachable) as base, mcp_client(base) as client:
            result = await client.call_tool("list_jobs", {})
    assert result.is_error
    text = " ".join(getattr(c, "text", "") for c in result.content)
    assert "not running yet (its ledger does not answer); it starts by itself" in text  # and it tries again
    for detail in ("port 1", "127.0.0.1", "hunter2"):
        assert detail not in text
