"""Webhook delivery for the sandbox gateway: one POST of the final status, retried with exponential backoff."""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import httpx2

from kling_mcp.sandbox.model import Job, WebhookDelivery
from kling_mcp.sandbox.settings import SandboxConfig

__all__ = ["deliver_webhook"]

log = logging.getLogger(__name__)

_HEADERS = {"Content-Type": "application/json", "User-Agent": "kling-mcp-sandbox-gateway"}


async def deliver_webhook(
    http: httpx2.AsyncClient, job: Job, payload: bytes, config: SandboxConfig, now: Callable[[], float]
) -> None:
    """Posts ``payload`` to the job's webhook until one attempt gets a 2xx, recording every attempt on the job."""
    assert job.webhook_url is not None
    attempts = config.webhook_attempts
    try:
        for attempt in range(1, attempts + 1):
            status: int | None = None
            error: str | None = None
            try:
                response = await http.post(
                    job.webhook_url, content=payload, headers=_HEADERS, timeout=config.webhook_timeout_s
                )
                status = response.status_code
            except httpx2.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            delivery = WebhookDelivery(attempt, job.webhook_url, status, error, now())
            job.webhook_deliveries.append(delivery)
            if delivery.ok:
                return
            log.info("webhook for %s attempt %d failed: %s", job.request_id, attempt, error or status)
            if attempt < attempts:
                await anyio.sleep(config.webhook_backoff_s * 2 ** (attempt - 1))
    finally:
        job.webhooks_done.set()
