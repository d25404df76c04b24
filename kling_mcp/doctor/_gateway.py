"""The doctor's free gateway checks: reachability, the key and the routes, without creating a job.

The key is tried with a status poll for a made-up request id; the submit routes with a body every validating
gateway refuses before charging (docs/pixazo-contract.md §10, "What kling-mcp doctor sends").
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2

from kling_mcp.config import DEFAULT_BASE_URL, SANDBOX_KEY, T2V_API_ID, GatewayPaths, Settings
from kling_mcp.doctor._report import Report, key_text
from kling_mcp.errors import (
    AuthenticationError,
    ChallengePageError,
    GatewayConnectionError,
    GatewayError,
    GatewayValidationError,
    InsufficientCreditsError,
    NotFoundError,
    UpstreamServerError,
)
from kling_mcp.models import Endpoint, GenerationRequest
from kling_mcp.netguard import guarded_client
from kling_mcp.pixazo import PixazoClient, RetryPolicy
from kling_mcp.runtime import gateway_url
from kling_mcp.tls import tls_context

# A well-formed id no gateway has issued: its status poll is free and must be answered 404 past the key check.
MADE_UP_REQUEST_ID = f"{T2V_API_ID}_00000000-0000-7000-8000-000000000000"
# What the submit probes send: three violations of confirmed limits (docs/pixazo-contract.md §3), so that no gateway
# that validates anything takes it for a job.
PROBE_BODY: dict[str, Any] = {"prompt": "", "duration": 0, "aspect_ratio": "0:0"}
_APIM_NO_ROUTE = "resource not found"  # Azure API Management's 404 for a path no API operation matches


@dataclass(frozen=True)
class Seen:
    """One answer the doctor's HTTP clients received: submit bodies are kept, media bodies never read."""

    method: str
    url: str
    status: int
    content_type: str
    body: bytes | None


@dataclass
class Gateway:
    client: PixazoClient
    base_url: str
    api_key: str
    paths: GatewayPaths
    seen: list[Seen]

    def last(self, method: str) -> Seen | None:
        return next((s for s in reversed(self.seen) if s.method == method), None)


@asynccontextmanager
async def open_gateway(settings: Settings, retry: RetryPolicy) -> AsyncIterator[Gateway]:
    """The gateway client the server would build: same key, paths, timeouts, TLS and SSRF guard for media."""
    seen: list[Seen] = []

    async def keep(response: httpx2.Response) -> None:
        if response.request.method == "POST":
            await response.aread()
        body = response.content if response.request.method == "POST" else None
        ctype = response.headers.get("content-type", "")
        seen.append(Seen(response.request.method, str(response.request.url), response.status_code, ctype, body))

    async with AsyncExitStack() as stack:
        tls = await anyio.to_thread.run_sync(tls_context)
        base_url = await gateway_url(settings, stack, None)
        http = await stack.enter_async_context(
            httpx2.AsyncClient(
                timeout=httpx2.Timeout(settings.request_timeout, connect=10.0),
                follow_redirects=True,
                verify=tls,
                event_hooks={"response": [keep]},
            )
        )
        allow_private = not settings.live or settings.allow_private_urls
        media_http = await stack.enter_async_context(
            guarded_client(allow_private=allow_private, timeout=settings.request_timeout, verify=tls)
        )
        media_http.event_hooks = {"response": [keep]}
        api_key = settings.api_key if settings.live else (settings.api_key or SANDBOX_KEY)
        assert api_key is not None
        client = PixazoClient(
            http, base_url=base_url, api_key=api_key, paths=settings.paths, retry=retry, media_http=media_http
        )
        yield Gateway(client=client, base_url=base_url, api_key=api_key, paths=settings.paths, seen=seen)


@dataclass(frozen=True)
class Answer:
    """What one probe's answer says: reached the gateway, key accepted (None: cannot tell), route known."""

    reached: bool
    key: bool | None
    route: bool | None
    text: str
    taken: bool = False  # a 2xx: the gateway accepted the request
    out_of_balance: bool = False


_NOT_SENT = Answer(True, None, None, "not sent")


def read_answer(error: GatewayError | None) -> Answer:
    if error is None:
        return Answer(True, True, True, "HTTP 2xx with a JSON object", taken=True)
    code = error.status_code
    message = error.gateway_message or error.message
    said = f"HTTP {code}: {message if len(message) <= 90 else message[:87] + '...'}"
    if isinstance(error, GatewayConnectionError):
        return Answer(False, None, None, error.message)
    if isinstance(error, ChallengePageError):
        return Answer(True, None, None, f"an HTML page (HTTP {code}), a CDN challenge in front of the gateway")
    if isinstance(error, AuthenticationError):
        return Answer(True, False, None, said)
    if isinstance(error, NotFoundError):
        unknown_route = (error.gateway_message or "").strip().lower().startswith(_APIM_NO_ROUTE)
        return Answer(True, None if unknown_route else True, not unknown_route, said)
    if isinstance(error, GatewayValidationError) and code == 405:
        return Answer(True, None, False, said)
    if isinstance(error, GatewayValidationError | InsufficientCreditsError):
        return Answer(True, True, True, said, out_of_balance=isinstance(error, InsufficientCreditsError))
    if isinstance(error, UpstreamServerError) and code is not None and 200 <= code < 300:
        return Answer(True, True, True, said, taken=True)
    return Answer(True, None, None, said)  # rate limited, 5xx: the gateway is there, the rest is unknown


async def probe_status(gateway: Gateway) -> Answer:
    try:
        await gateway.client.status(MADE_UP_REQUEST_ID)
    except GatewayError as exc:
        return read_answer(exc)
    return read_answer(None)


async def probe_submit(gateway: Gateway, endpoint: Endpoint) -> tuple[Answer, str | None]:
    """POSTs a body every validating gateway refuses (no prompt text, duration 0, aspect ratio 0:0; no image).

    ``model_construct`` skips the client's own checks on purpose: the point is to reach the gateway's.
    """
    refused = GenerationRequest.model_construct(endpoint=endpoint, **PROBE_BODY)
    try:
        submission = await gateway.client.submit(refused)
    except GatewayError as exc:
        return read_answer(exc), exc.request_id
    return read_answer(None), submission.request_id


def route_fix(env: str, default: str) -> str:
    return f"{env}: set it to the route Pixazo's docs give now (the default is {default})"


async def check_gateway(gateway: Gateway, report: Report) -> bool:
    """Reachability, key and routes at no cost; True when a paid generation could go ahead."""
    report.section(f"Gateway {gateway.base_url}")
    status = await probe_status(gateway)
    if not status.reached:
        report.add("fail", "reachable", status.text, fix=_reach_fix(gateway.base_url))
        report.add("skip", "API key", "not tried: the gateway was not reached")
        return False
    report.add("ok", "reachable", "the gateway answers")
    defaults = GatewayPaths()
    t2v, t2v_id = await probe_submit(gateway, "text_to_video")
    # A gateway that took the first probe for a job would take the second too: one is enough to know.
    i2v, i2v_id = (_NOT_SENT, None) if t2v.taken else await probe_submit(gateway, "image_to_video")
    key_ok = _key_finding(report, (status, t2v, i2v), gateway.api_key)
    if status.route is True and status.taken:
        report.add("warn", "status route", f"{gateway.paths.status} answered HTTP 200 for a made-up request id")
    elif status.route is True:
        report.add("ok", "status route", f"{gateway.paths.status} answers a made-up request id with {status.text}")
    else:
        _unverified_route(report, "status route", "PIXAZO_STATUS_PATH", gateway.paths.status, defaults.status, status)
    paths = gateway.paths
    t2v_ok = _submit_route_finding(
        report, "text-to-video route", "PIXAZO_T2V_PATH", paths.text_to_video, defaults.text_to_video, t2v, t2v_id
    )
    if t2v.taken:
        report.add("skip", "image-to-video route", "not probed: the text-to-video route took the probe for a job")
    else:
        _submit_route_finding(
            report,
            "image-to-video route",
            "PIXAZO_I2V_PATH",
            paths.image_to_video,
            defaults.image_to_video,
            i2v,
            i2v_id,
        )
    # The paid check makes a text-to-video clip: that route and the key are what it needs.
    return key_ok is not False and t2v_ok


def _reach_fix(base_url: str) -> str:
    if base_url == DEFAULT_BASE_URL:
        return f"check this machine's network, proxy and firewall for {DEFAULT_BASE_URL}"
    return f"PIXAZO_BASE_URL={base_url}: check it (is the gateway running?), or unset it for {DEFAULT_BASE_URL}"


def _key_finding(report: Report, answers: tuple[Answer, ...], key: str) -> bool | None:
    refused = next((a for a in answers if a.key is False), None)
    if refused is not None:
        report.add(
            "fail",
            "API key",
            f"refused ({refused.text}); the key sent {key_text(key)}",
            fix="PIXAZO_API_KEY: copy it again from the Pixazo API console",
        )
        return False
    if any(a.key for a in answers):
        report.add("ok", "API key", "accepted (the gateway answered past its key check)")
        return True
    if all(a.route is False for a in answers):
        # API Management matches the route before it looks at the key, so the route fixes come first.
        report.add("fail", "API key", "could not be verified: no route answered past the gateway's routing")
        return None
    texts = "; ".join(sorted({a.text for a in answers if a.route is not False}))
    report.add(
        "fail",
        "API key",
        f"could not be verified: {texts}",
        fix="none by setting: run the doctor again later; if challenge pages persist, ask Pixazo to allow this network",
    )
    return None


def _unverified_route(report: Report, name: str, env: str, path: str, default: str, answer: Answer) -> None:
    if answer.route is False:
        report.add(
            "fail", name, f"{path} is not a route the gateway knows ({answer.text})", fix=route_fix(env, default)
        )
    elif answer.key is False:
        report.add("skip", name, f"{path} not verified: the key was refused first")
    else:
        report.add("warn", name, f"{path} not verified: {answer.text}")


def _submit_route_finding(
    report: Report, name: str, env: str, path: str, default: str, answer: Answer, request_id: str | None
) -> bool:
    if answer.taken:
        made = f" as request {request_id}" if request_id else ""
        report.add(
            "fail",
            name,
            f"{path} accepted a body the contract says is refused ({answer.text}); a job may exist{made}",
            fix="check the Pixazo console for it, and report this gateway behaviour to kling-mcp",
        )
        return False
    if answer.route is True:
        if answer.out_of_balance:
            report.add("warn", name, f"{path} answers, but the account is out of balance ({answer.text})")
        else:
            report.add("ok", name, f"{path} refuses the doctor's invalid body as it should ({answer.text})")
        return True
    _unverified_route(report, name, env, path, default, answer)
    return answer.route is None
