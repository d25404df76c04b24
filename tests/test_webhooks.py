"""Webhooks over real HTTP: a post rings the job's doorbell and nothing more, the route exists only with webhooks
on, and no token reaches a log line."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from kling_mcp.config import Settings
from kling_mcp.server.logs import RedactWebhookTokens
from tests.support.procs import free_port, server_env, wait_until_serving
from tests.test_http_security import mcp_client, serve, webhook_server

pytestmark = pytest.mark.anyio


async def _status(client: Client, rid: str, wait: float = 0) -> dict[str, Any]:
    result = await client.call_tool("check_status", {"request_id": rid, "wait_seconds": wait})
    assert result.structured_content is not None
    return dict(result.structured_content)


async def _held_job(client: Client, sandbox: Any, prompt: str) -> tuple[str, str]:
    """A job the sandbox holds in PROCESSING until finished, and its webhook URL."""
    made = await client.call_tool("generate_video", {"prompt": f"[sandbox:hold] {prompt}", "wait_seconds": 0})
    assert made.structured_content is not None
    rid = made.structured_content["request_id"]
    await sandbox.gateway.wait_rendered(rid)  # rendered: the gateway answers PROCESSING until finish()
    return rid, sandbox.gateway.jobs[rid].webhook_url


async def test_a_forged_error_webhook_makes_no_second_submit(settings: Settings, sandbox: Any) -> None:
    async with webhook_server(settings) as (base, _), mcp_client(base) as client:
        rid, url = await _held_job(client, sandbox, "forged error")
        async with httpx2.AsyncClient() as http:
            forged = await http.post(url, json={"request_id": rid, "status": "ERROR", "error": "forged"})
        during = await _status(client, rid)
        submits_during = sandbox.gateway.submit_requests
        sandbox.gateway.finish(rid)  # the real webhook follows, and the poll it rings for sees COMPLETED
        with anyio.fail_after(15):
            done = await _status(client, rid, wait=10)
    assert (forged.status_code, forged.json()["detail"]) == (200, "polled")
    assert during["status"] == "processing"  # the poll it rang for: the gateway's own answer
    assert during["attempts"] == 1
    assert submits_during == 1
    assert done["status"] == "completed"
    assert done["attempts"] == 1
    assert sandbox.gateway.submit_requests == 1


async def test_a_backwards_webhook_does_not_move_the_job_back(settings: Settings, sandbox: Any) -> None:
    async with webhook_server(settings) as (base, _), mcp_client(base) as client:
        rid, url = await _held_job(client, sandbox, "backwards")
        async with httpx2.AsyncClient() as http:
            rung = await http.post(url, json={"request_id": rid, "status": "PROCESSING"})
            processing = await _status(client, rid)
            backwards = await http.post(url, json={"request_id": rid, "status": "IN_QUEUE"})
        after = await _status(client, rid)
    assert [r.status_code for r in (rung, backwards)] == [200, 200]
    assert processing["status"] == "processing"
    assert after["status"] == "processing"
    assert sandbox.gateway.jobs[rid].status_polls == 2  # one poll per ring, and nothing else


async def test_the_webhook_route_exists_only_with_webhooks_on(settings: Settings, sandbox: Any) -> None:
    async with serve(settings) as base, httpx2.AsyncClient(base_url=base) as http:
        off = await http.post("/webhooks/pixazo/some-token", json={"request_id": "x"})
        unknown_path = await http.post("/no/such/route", json={"request_id": "x"})
    async with webhook_server(settings) as (base, _), httpx2.AsyncClient(base_url=base) as http:
        async with mcp_client(base) as client:
            await client.call_tool("list_jobs", {})  # the core has started: the route would not say "starting"
        on = await http.post("/webhooks/pixazo/some-token", json={"request_id": "x"})
    assert off.status_code == unknown_path.status_code == 404
    assert off.content == unknown_path.content
    assert (on.status_code, on.json()["detail"]) == (404, "unknown webhook")  # the route answered: no such token


@contextmanager
def _serving(env: dict[str, str], port: int, log_path: Path) -> Iterator[None]:
    """`kling-mcp serve --transport http` as a subprocess, its stderr kept in ``log_path``."""
    with log_path.open("wb") as errlog:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kling_mcp", "serve", "--transport", "http", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errlog,
        )
        try:
            wait_until_serving(f"http://127.0.0.1:{port}/healthz", proc)
            yield
        finally:
            proc.terminate()
            proc.communicate(timeout=10)


def _webhook_tokens(state_dir: Path) -> list[str]:
    with closing(sqlite3.connect(state_dir / "ledger.sqlite3")) as conn:
        return [row[0] for row in conn.execute("SELECT webhook_token FROM jobs WHERE webhook_token IS NOT NULL")]


async def test_webhook_tokens_never_reach_the_log(tmp_path: Path, sandbox: Any) -> None:
    """`serve --transport http` with the access log on (DEBUG), on the test's sandbox, which posts the webhook.

    Not the built-in sandbox: starting it reconfigures uvicorn's loggers for the whole process (see the report).
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = server_env(
        tmp_path,
        PIXAZO_BASE_URL=sandbox.base_url,
        KLING_MCP_PUBLIC_URL=base,
        KLING_MCP_LOG_LEVEL="DEBUG",
        KLING_MCP_WEBHOOK_POLL_INTERVAL="60",
    )
    forged_token = "forgedTokenZq8v77DistinctValue"
    log_path = tmp_path / "stderr.log"
    with _serving(env, port, log_path):
        with anyio.fail_after(60):
            async with Client(streamable_http_client(base + "/mcp")) as client:
                made = await client.call_tool("generate_video", {"prompt": "[sandbox:hold] logged", "wait_seconds": 0})
                assert made.structured_content is not None
                rid = made.structured_content["request_id"]
                sandbox.gateway.finish(rid)
                # Polling is every 60 s: completing within the bound means the webhook was taken.
                done = await _status(client, rid, wait=30)
            async with httpx2.AsyncClient() as http:
                forged = await http.post(f"{base}/webhooks/pixazo/{forged_token}", json={})
    log = log_path.read_text()
    tokens = _webhook_tokens(tmp_path / "state")
    assert done["status"] == "completed"
    assert [d.status_code for d in sandbox.gateway.jobs[rid].webhook_deliveries] == [200]
    assert forged.status_code == 404
    assert len(tokens) == 1
    assert '"POST /webhooks/pixazo/<redacted> HTTP/1.1" 200' in log  # the access log is on, and redacted
    assert '"POST /webhooks/pixazo/<redacted> HTTP/1.1" 404' in log
    for token in (*tokens, forged_token):
        assert token not in log
        assert token[:12] not in log


def test_the_redacting_filter_covers_messages_string_and_object_arguments() -> None:
    token = "s3cretTok-en_9"
    url = httpx2.URL(f"http://127.0.0.1:8000/webhooks/pixazo/{token}?x=1")
    record = logging.LogRecord(
        "httpx2",
        logging.INFO,
        __file__,
        1,
        "HTTP Request: %s %s %d /webhooks/pixazo/" + token,
        ("POST", url, 200),
        None,
    )
    assert RedactWebhookTokens().filter(record) is True
    assert record.getMessage() == (
        "HTTP Request: POST http://127.0.0.1:8000/webhooks/pixazo/<redacted>?x=1 200 /webhooks/pixazo/<redacted>"
    )
    assert isinstance(record.args, tuple)
    assert record.args[2] == 200  # numbers stay numbers: uvicorn's access formatter formats them with %d
