"""The running core, built from ``Settings``: gateway client, ledger, job engine and media worker. MCP-agnostic.

Everything a front end needs comes from ``open_runtime``; the MCP layer wraps it, and tests and benchmarks start
the engine with it directly. ``transport`` replaces the network (an ASGI app in tests), the way httpx clients are
meant to be tested.
"""

from __future__ import annotations

import importlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2

from kling_mcp.config import SANDBOX_KEY, WEBHOOK_PATH, Settings
from kling_mcp.jobs import EngineConfig, JobEngine, Listener
from kling_mcp.models import Job
from kling_mcp.netguard import guarded_client, origin_of
from kling_mcp.pixazo import PixazoClient
from kling_mcp.previews import MediaWorker, local_video
from kling_mcp.store import Guards, Ledger, open_ledger, unnamed_replica
from kling_mcp.tls import tls_context

log = logging.getLogger("kling_mcp")


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    engine: JobEngine
    store: Ledger
    media: MediaWorker
    http: httpx2.AsyncClient  # the SSRF-guarded client for URLs from users and from gateway answers

    @property
    def live(self) -> bool:
        return self.settings.live

    async def video_for_job(self, any_id: str, *, owner: str) -> Path:
        """The saved video of one of ``owner``'s jobs."""
        return local_video(await self.engine.get(any_id, owner=owner))


def webhook_url_for(public_url: str | None) -> Callable[[Job], str | None] | None:
    """Where the gateway should POST a job's result: a per-job unguessable token under the public URL."""
    if not public_url:
        return None

    def url(job: Job) -> str | None:
        return f"{public_url}{WEBHOOK_PATH}{job.webhook_token}" if job.webhook_token else None

    return url


def engine_config(settings: Settings) -> EngineConfig:
    time_scale = 1.0 if settings.live else settings.sandbox_time_scale
    return EngineConfig(
        mode="live" if settings.live else "sandbox",
        # With webhooks, polling is only a safety net. Otherwise the sandbox, running time_scale times faster than
        # the gateway, is polled that much more often.
        poll_interval=settings.webhook_poll_interval
        if settings.public_url
        else max(0.05, settings.poll_interval / time_scale),
        output_dir=settings.resolved_output_dir if settings.download else None,
        time_scale=time_scale,
        dedupe_seconds=settings.dedupe_seconds,
        error_retries=settings.error_retries,
        guards=Guards(
            max_active_jobs=settings.max_active_jobs,
            daily_seconds=settings.daily_seconds,
            total_daily_seconds=settings.total_daily_seconds,
        ),
        retention_seconds=settings.retention_days * 86400 if settings.retention_days else None,
        lease_seconds=settings.lease_seconds,
    )


async def gateway_url(settings: Settings, stack: AsyncExitStack, transport: httpx2.AsyncBaseTransport | None) -> str:
    """The live gateway, a configured one, or the built-in sandbox started for this process."""
    if settings.live or settings.base_url is not None or transport is not None:
        return settings.gateway_url
    # A worker thread imports the sandbox (Pillow, PyAV, uvicorn), so the event loop keeps answering meanwhile.
    await anyio.to_thread.run_sync(importlib.import_module, "kling_mcp.sandbox")
    from kling_mcp.sandbox import SandboxConfig, serve_sandbox

    config = SandboxConfig(
        time_scale=settings.sandbox_time_scale,
        render_size=settings.sandbox_render_size,
        media_dir=settings.resolved_state_dir / "sandbox-media",
        # Each server process starts its own sandbox (some clients start one process per tool call): the jobs
        # are kept beside the ledger, so a later process answers for the jobs an earlier one took.
        jobs_dir=settings.resolved_state_dir / "sandbox-jobs",
        paths=settings.paths,  # the built-in gateway serves the routes the client is configured to call
    )
    if settings.sandbox_fps:
        config.fps = settings.sandbox_fps
    served = await stack.enter_async_context(serve_sandbox(config))
    return served.base_url


def _open_blocking(settings: Settings, clock: Callable[[], float]) -> tuple[ssl.SSLContext, Ledger]:
    ledger = open_ledger(
        settings.database_url,
        settings.resolved_state_dir / "ledger.sqlite3",
        clock=clock,
        replica=settings.replica_id or unnamed_replica(),
    )
    return tls_context(), ledger


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    transport: httpx2.AsyncBaseTransport | None = None,
    listeners: Sequence[Listener] = (),
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[Runtime]:
    """Builds the core and tears it down in order.

    The engine starts (and resumes what the ledger holds unfinished) with ``listeners`` already attached, so no
    change made while resuming goes unseen. ``clock`` stamps the ledger and drives the engine's time windows
    (dedupe, submit grace); tests pass a fake one to stand exactly on a boundary.
    """
    async with AsyncExitStack() as stack:
        # The blocking parts (the trust store, the ledger's file and schema) run off the event loop, which is
        # answering the client's first requests meanwhile.
        tls, store = await anyio.to_thread.run_sync(_open_blocking, settings, clock)
        stack.push_async_callback(store.aclose)
        base_url = await gateway_url(settings, stack, transport)
        if not settings.live:
            log.warning("SANDBOX mode: placeholder videos from the sandbox gateway at %s; nothing is charged", base_url)
        api_key = settings.api_key if settings.live else (settings.api_key or SANDBOX_KEY)
        assert api_key is not None
        http = await stack.enter_async_context(
            httpx2.AsyncClient(
                timeout=httpx2.Timeout(settings.request_timeout, connect=10.0),
                # The key travels with every gateway request: a redirect is an answer, never a second request.
                follow_redirects=False,
                transport=transport,
                verify=tls,
                # Keep as many connections alive as polls may run at once, so polls never pay for new handshakes.
                limits=httpx2.Limits(max_connections=32, max_keepalive_connections=32),
            )
        )
        # The gateway client is trusted configuration (and carries the key); URLs from answers and from users go
        # through the SSRF guard in every mode. Private addresses pass only when told to, and in sandbox mode the
        # sandbox gateway's own origin (its media on loopback) passes: a URL a user names on loopback does not.
        media_http = await stack.enter_async_context(
            guarded_client(
                allow_private=settings.allow_private_urls,
                timeout=settings.request_timeout,
                transport=transport,
                verify=tls,
                exempt_origins=() if settings.live else (origin_of(base_url),),
            )
        )
        client = PixazoClient(http, base_url=base_url, api_key=api_key, paths=settings.paths, media_http=media_http)
        engine = JobEngine(
            client, store, engine_config(settings), clock=clock, webhook_url_for=webhook_url_for(settings.public_url)
        )
        for listener in listeners:
            engine.add_listener(listener)
        await stack.enter_async_context(engine.running())
        media = MediaWorker(settings.resolved_state_dir / "previews")
        yield Runtime(settings=settings, engine=engine, store=store, media=media, http=media_http)
