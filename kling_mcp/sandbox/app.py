"""The sandbox gateway's HTTP face: the Pixazo routes, a public media route, and unauthenticated admin routes.

Transport-level faults (slow answers, challenge pages, 429, 5xx) are injected here, before the gateway sees a
request, so a faulted submit creates and charges nothing; ``rate_submit_lost`` is the one fault applied after.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from kling_mcp.sandbox.gateway import OUTCOMES, InsufficientBalance, SandboxGateway
from kling_mcp.sandbox.settings import SandboxConfig
from kling_mcp.sandbox.validation import BadRequest, Endpoint

__all__ = ["KEY_HEADER", "create_app"]

KEY_HEADER = "Ocp-Apim-Subscription-Key"
WEBHOOK_HEADER = "X-Webhook-URL"

_UNAUTHORIZED = {
    "statusCode": 401,
    "message": "Access denied due to invalid subscription key. "
    "Make sure to provide a valid key for an active subscription.",
}
_CHALLENGE_HTML = """<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title>
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8"><meta name="robots" content="noindex,nofollow">
</head><body><div class="main-wrapper" role="main"><div class="main-content">
<h1 class="zone-name-title h1">gateway.pixazo.ai</h1>
<h2 class="h2" id="challenge-running">Checking if the site connection is secure</h2>
<noscript><div class="h2">Enable JavaScript and cookies to continue</div></noscript>
</div></div></body></html>
"""
# What gateways in front of Pixazo send on transient failures: JSON sometimes, Envoy/nginx plain text often.
_SERVER_ERRORS: tuple[tuple[int, str, str], ...] = (
    (500, "application/json", '{"statusCode": 500, "message": "Internal server error"}'),
    (502, "text/plain", "upstream connect error or disconnect/reset before headers. reset reason: connection failure"),
    (503, "text/plain", "Service Unavailable"),
    (504, "application/json", '{"statusCode": 504, "message": "Gateway Timeout"}'),
)
_EXPIRED_MEDIA = (
    '<?xml version="1.0" encoding="utf-8"?><Error><Code>BlobNotFound</Code>'
    "<Message>The specified blob does not exist.</Message></Error>"
)


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def _gateway(request: Request) -> SandboxGateway:
    gateway: SandboxGateway = request.app.state.gateway
    return gateway


def _base_url(request: Request, gateway: SandboxGateway) -> str:
    return (gateway.config.public_base_url or str(request.base_url)).rstrip("/")


async def _read_json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest("Invalid JSON", f"The request body is not valid JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise BadRequest("Invalid body", "The request body must be a JSON object.")
    return data


async def _front_door(request: Request, gateway: SandboxGateway, *, poll: bool) -> Response | str:
    """Faults in front of the gateway and the key check. Returns the key, or the answer to send instead."""
    faults = gateway.faults
    if gateway.roll(faults.rate_slow) and faults.slow_s > 0:
        await anyio.sleep(faults.slow_s)
    if poll and gateway.roll(faults.rate_challenge):
        # Cloudflare sits in front of the API, so its challenge comes before any key check.
        return Response(
            _CHALLENGE_HTML,
            status_code=403,
            media_type="text/html",
            headers={"cf-mitigated": "challenge", "Server": "cloudflare"},
        )
    key = request.headers.get(KEY_HEADER)
    if key is None or not gateway.authorized(key):
        return _json(401, _UNAUTHORIZED)
    return key


def _throttle(gateway: SandboxGateway) -> Response | None:
    faults = gateway.faults
    if gateway.roll(faults.rate_429):
        wait = faults.retry_after_s
        # Retry-After is whole seconds by RFC 9110; the body keeps the exact value so fast tests stay fast.
        return _json(
            429,
            {"statusCode": 429, "message": f"Rate limit is exceeded. Try again in {wait:g} seconds."},
            headers={"Retry-After": f"{wait:g}" if wait < 1 else str(math.ceil(wait))},
        )
    if gateway.roll(faults.rate_5xx):
        return _server_error(gateway)
    return None


def _server_error(gateway: SandboxGateway) -> Response:
    status, media_type, text = _SERVER_ERRORS[gateway.pick(len(_SERVER_ERRORS))]
    return Response(text, status_code=status, media_type=media_type)


def _submit_route(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def submit(request: Request) -> Response:
        gateway = _gateway(request)
        gateway.submit_requests += 1
        front = await _front_door(request, gateway, poll=False)
        if isinstance(front, Response):
            return front
        refused = _throttle(gateway)
        if refused is not None:
            return refused
        try:
            raw_body = await request.body()
        except ClientDisconnect:
            # The client gave up (a slow-answer fault outlasted its timeout) before the body was read: no job.
            return Response(status_code=499)
        try:
            job = await gateway.submit(
                key=front,
                endpoint=endpoint,
                raw_body=raw_body,
                base_url=_base_url(request, gateway),
                webhook_url=request.headers.get(WEBHOOK_HEADER) or None,
            )
        except BadRequest as exc:
            return _json(400, exc.body())
        except InsufficientBalance:
            return _json(402, {"error": "Insufficient Balance"})
        if gateway.roll(gateway.faults.rate_submit_lost):
            # The job exists and is charged, but the answer never makes it back: the client cannot know.
            return Response("upstream request timeout", status_code=504, media_type="text/plain")
        status_path = gateway.config.paths.status.format(request_id=job.request_id)
        return _json(
            202,
            {
                "request_id": job.request_id,
                "status": gateway.styled("QUEUED"),
                "polling_url": f"{_base_url(request, gateway)}{status_path}",
            },
        )

    return submit


async def status_route(request: Request) -> Response:
    gateway = _gateway(request)
    request_id = request.path_params["request_id"]
    front = await _front_door(request, gateway, poll=True)
    if isinstance(front, Response):
        return front
    job = gateway.lookup(front, request_id)
    if job is not None:
        job.status_requests += 1
    refused = _throttle(gateway)
    if refused is not None:
        return refused
    if job is None:
        return _json(404, {"error": "Not Found", "message": f"No request with id {request_id!r} for this key."})
    job.status_polls += 1
    return _json(200, gateway.status_body(job, base_url=_base_url(request, gateway)))


async def media_route(request: Request) -> Response:
    gateway = _gateway(request)
    job = gateway.find(request.path_params["request_id"])
    if job is not None:
        gateway.settle_all()
    path = job.media_path if job is not None and job.terminal == "COMPLETED" else None
    if path is None or not path.is_file() or gateway.roll(gateway.faults.rate_media_404):
        return Response(_EXPIRED_MEDIA, status_code=404, media_type="application/xml")
    assert job is not None
    job.media_requests += 1
    return FileResponse(path, media_type="video/mp4", filename=path.name, content_disposition_type="inline")


async def stats_route(request: Request) -> Response:
    return _json(200, _gateway(request).stats())


async def faults_route(request: Request) -> Response:
    gateway = _gateway(request)
    try:
        changes = await _read_json_object(request)
        gateway.faults.merge(changes)
    except BadRequest as exc:
        return _json(400, exc.body())
    except ValueError as exc:
        return _json(400, {"error": "Invalid fault", "message": str(exc)})
    return _json(200, gateway.faults.as_dict())


async def job_route(request: Request) -> Response:
    gateway = _gateway(request)
    job = gateway.find(request.path_params["request_id"])
    if job is None:
        return _json(404, {"error": "Not Found", "message": "No such job."})
    return _json(200, gateway.job_summary(job))


async def finish_route(request: Request) -> Response:
    gateway = _gateway(request)
    request_id = request.path_params["request_id"]
    try:
        body = await _read_json_object(request)
    except BadRequest as exc:
        return _json(400, exc.body())
    outcome = body.get("outcome", "COMPLETED")
    if outcome not in OUTCOMES:
        return _json(400, {"error": "Invalid outcome", "message": f"outcome must be one of {', '.join(OUTCOMES)}."})
    if gateway.find(request_id) is None:
        return _json(404, {"error": "Not Found", "message": "No such job."})
    try:
        job = gateway.finish(request_id, outcome)
    except ValueError as exc:
        return _json(409, {"error": "Conflict", "message": str(exc)})
    return _json(200, gateway.job_summary(job))


async def healthz_route(request: Request) -> Response:
    return _json(200, {"status": "ok"})


async def _http_exception(request: Request, exc: Exception) -> Response:
    # API Management answers unknown routes in JSON, not Starlette's plain text.
    assert isinstance(exc, HTTPException)
    messages = {404: "Resource not found", 405: "Method not allowed"}
    return _json(
        exc.status_code,
        {"statusCode": exc.status_code, "message": messages.get(exc.status_code, exc.detail)},
        headers=dict(exc.headers or {}),
    )


def create_app(config: SandboxConfig | None = None, *, outbound: httpx2.AsyncBaseTransport | None = None) -> Starlette:
    """A Starlette app serving one ``SandboxGateway`` (``app.state.gateway``); its lifespan runs the gateway.

    ``outbound`` replaces the network for image fetches and webhooks (e.g. an ``httpx2.ASGITransport``).
    """
    gateway = SandboxGateway(config, outbound=outbound)
    paths = gateway.config.paths
    if "{request_id}" not in paths.status:
        raise ValueError(f"the status path must contain {{request_id}}: {paths.status!r}")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with gateway:
            yield

    routes = [
        Route(paths.text_to_video, _submit_route("text_to_video"), methods=["POST"]),
        Route(paths.image_to_video, _submit_route("image_to_video"), methods=["POST"]),
        Route(paths.status, status_route, methods=["GET"]),
        Route("/media/{request_id}.mp4", media_route, methods=["GET"]),
        Route("/_sandbox/stats", stats_route, methods=["GET"]),
        Route("/_sandbox/faults", faults_route, methods=["POST"]),
        Route("/_sandbox/jobs/{request_id}", job_route, methods=["GET"]),
        Route("/_sandbox/jobs/{request_id}/finish", finish_route, methods=["POST"]),
        Route("/healthz", healthz_route, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_exception})
    app.state.gateway = gateway
    return app
