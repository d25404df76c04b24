"""The MCP skin: tools, resources, notifications and the lifespan that wires the core together.

Everything here is thin: limits come from ``limits``, jobs from ``jobs``, the gateway from ``pixazo``. This is the
only module (with ``cli`` and ``demo``) that imports ``mcp``.
"""

from __future__ import annotations

import base64
import hmac
import inspect
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import anyio
import httpx2
from mcp.server import NotificationOptions, ServerRequestContext
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import AcceptedElicitation, Context, Elicit, ElicitationResult, MCPServer, Resolve
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourcesListChanged, ResourceUpdated
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import (
    CallToolResult,
    CompleteRequestParams,
    CompleteResult,
    Completion,
    EmptyResult,
    ImageContent,
    ResourceLink,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    ToolAnnotations,
    UnsubscribeRequestParams,
)
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kling_mcp import __version__, limits
from kling_mcp.config import SANDBOX_KEY, Settings
from kling_mcp.errors import GatewayError, InvalidInputError, KlingError
from kling_mcp.images import resolve_image
from kling_mcp.jobs import EngineConfig, JobEngine, Submitted, expected_seconds
from kling_mcp.netguard import guarded_client
from kling_mcp.pixazo import GenerationRequest, PixazoClient
from kling_mcp.previews import MediaWorker, concat_jobs, local_video
from kling_mcp.store import Guards, Job, Store

log = logging.getLogger("kling_mcp")

JOB_URI_PREFIX = "kling://jobs/"
JOBS_URI = "kling://jobs"

WAIT_MAX_S = 600.0  # a tool call may be asked to wait at most this long, whatever the default

# --- results --------------------------------------------------------------------------------------------------


class JobParams(BaseModel):
    endpoint: Literal["text_to_video", "image_to_video"]
    prompt: str | None = None
    shots: list[limits.Shot] | None = None
    duration: int
    aspect_ratio: limits.AspectRatio
    image_url: str | None = None


# The job as advertised in every tool's outputSchema: only the fields an agent acts on, because the model reads
# every schema on every turn. Results carry more (JobResult), which additionalProperties allows.
class JobOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    request_id: str
    status: Literal["submitting", "queued", "processing", "completed", "failed", "error", "unknown"]
    media_url: str | None
    local_path: str | None
    resource_uri: str
    mode: Literal["live", "sandbox"]
    params: dict[str, Any]
    video_seconds: int
    elapsed_s: float
    error: str | None
    next: str | None


class JobResult(JobOut):
    """The whole job as results carry it."""

    params: JobParams  # type: ignore[assignment]
    done: bool
    created_at: str
    finished_at: str | None
    eta_s: float | None
    attempts: int
    reused: bool = False
    retry_free: bool | None = None
    download: str
    sha256: str | None = None
    size_bytes: int | None = None
    parent: str | None = None  # the job this one continues (extend_video)


class FilmOut(BaseModel):
    path: str
    uri: str
    duration_s: float
    size_bytes: int
    width: int
    height: int
    method: Literal["copy", "reencode"]
    request_ids: list[str]


class JobList(BaseModel):
    jobs: list[JobOut]


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts is not None else None


def _check_call(job_id: str, wait_s: float) -> str:
    return f'check_status(request_id="{job_id}", wait_seconds={wait_s:g})'


def job_result(job: Job, *, engine: JobEngine, reused: bool = False, wait_hint: float = 45.0) -> JobResult:
    now = time.time()
    start = job.submitted_at or job.created_at
    end = job.finished_at if job.final else None
    eta = None if job.final else max(0.0, expected_seconds(job, engine.config.time_scale) - (now - start))
    req = job.request
    nxt: str | None = None
    retry_free: bool | None = None
    if not job.settled:
        nxt = _check_call(job.id, wait_hint)
    elif job.status == "error":
        retry_free = True
        nxt = "Call the same tool again: ERROR is a system failure and was not charged."
    elif job.status == "failed":
        retry_free = False
        nxt = "Change the prompt (FAILED is often content moderation) and call again; FAILED may be charged."
    elif job.status == "unknown":
        nxt = (
            "Check the Pixazo console for this request before retrying; to submit anyway, call the same tool "
            "again with force_new=true."
        )
    return JobResult(
        request_id=job.id,
        status=job.status,
        done=job.settled,
        media_url=job.media_url,
        local_path=job.local_path,
        resource_uri=JOB_URI_PREFIX + job.id,
        mode=job.mode,
        params=JobParams(
            endpoint=req.endpoint,
            prompt=req.prompt,
            shots=list(req.shots) if req.shots else None,
            duration=req.video_seconds,
            aspect_ratio=req.aspect_ratio,
            image_url=_short_url(req.image_url),
        ),
        video_seconds=job.video_seconds,
        created_at=_iso(job.created_at) or "",
        finished_at=_iso(end),
        elapsed_s=round((end or now) - start, 2),
        eta_s=round(eta, 1) if eta is not None else None,
        attempts=job.attempts,
        reused=reused,
        error=job.error,
        retry_free=retry_free,
        download=_download_text(job),
        sha256=job.sha256,
        size_bytes=job.size_bytes,
        parent=job.parent_id,
        next=nxt,
    )


def _short_url(url: str | None) -> str | None:
    if url and url.startswith("data:") and len(url) > 64:
        return url[:48] + f"...({len(url)} chars)"
    return url


def _download_text(job: Job) -> str:
    if job.download_state == "done":
        return "saved"
    if job.download_state == "failed":
        return f"failed: {job.download_error}"
    if job.download_state == "off":
        return "off"
    return "pending" if job.status == "completed" else "after completion"


def _summary(result: JobResult, job: Job) -> str:
    lines: list[str] = []
    if result.status == "completed":
        lines.append(f"Video ready ({job.video_seconds} s, {result.params.aspect_ratio}): {result.media_url}")
        if result.local_path:
            lines.append(f"Saved to: {result.local_path}")
        elif result.download.startswith("failed"):
            lines.append(f"Download {result.download}; the URL above may expire, fetch it soon.")
    elif result.status in ("queued", "processing", "submitting"):
        eta = f", about {result.eta_s:.0f}s left" if result.eta_s else ""
        lines.append(f"Job {result.request_id} is {result.status} ({result.elapsed_s:.0f}s elapsed{eta}).")
        lines.append("Still running is normal; the job continues in the background.")
    elif result.status == "unknown":
        lines.append(f"Job {result.request_id}: submit outcome unknown. {result.error}")
    else:
        lines.append(f"Job {result.request_id} ended {result.status.upper()}: {result.error}")
    if result.reused:
        lines.append(
            "This is an existing job for the same request (no new charge); pass force_new=true for another take."
        )
    if result.next:
        lines.append(f"Next: {result.next}")
    if result.mode == "sandbox":
        lines.append("[SANDBOX] Placeholder video from the local sandbox gateway; no credits were used.")
    else:
        lines.append(f"Bills {job.video_seconds} s of video.")
    lines.append(f"Job resource: {result.resource_uri}")
    return "\n".join(lines)


async def tool_result(job: Job, *, state: AppState, reused: bool = False, wait_hint: float = 45.0) -> CallToolResult:
    result = job_result(job, engine=state.engine, reused=reused, wait_hint=wait_hint)
    content: list[Any] = [
        TextContent(type="text", text=_summary(result, job)),
        ResourceLink(
            type="resource_link",
            uri=result.resource_uri,
            name=f"job {result.request_id}",
            mime_type="application/json",
            description=f"Kling job ({result.status})",
        ),
    ]
    if result.status == "completed" and result.media_url:
        content.append(
            ResourceLink(
                type="resource_link", uri=result.media_url, name=f"{result.request_id}.mp4", mime_type="video/mp4"
            )
        )
    if result.local_path:
        content.append(
            ResourceLink(
                type="resource_link",
                uri=Path(result.local_path).absolute().as_uri(),
                name=Path(result.local_path).name,
                mime_type="video/mp4",
                size=job.size_bytes,
            )
        )
        content.extend(await _preview_blocks(job, state))
    return CallToolResult(
        content=content,
        structured_content=result.model_dump(mode="json"),
        is_error=result.status in ("failed", "error"),
    )


async def _preview_blocks(job: Job, state: AppState) -> list[Any]:
    """A small image of the video, so a vision model or a person sees what was made; never fails the call."""
    try:
        path = await state.media.preview(job)
        data = await anyio.Path(path).read_bytes()
    except KlingError as exc:
        log.warning("no preview for %s: %s", job.id, exc)
        return []
    uri = JOB_URI_PREFIX + job.id + ("/contact-sheet.jpg" if path.name.endswith(".sheet.jpg") else "/poster.jpg")
    return [
        ImageContent(type="image", data=base64.b64encode(data).decode(), mime_type="image/jpeg"),
        ResourceLink(type="resource_link", uri=uri, name=path.name, mime_type="image/jpeg", size=len(data)),
    ]


# --- notifications across both protocol eras ------------------------------------------------------------------


@dataclass
class Notifier:
    """Fans job changes out: the 2026 listen bus, and legacy sessions (subscribed URIs, list changes)."""

    bus: InMemorySubscriptionBus
    legacy: dict[int, tuple[ServerSession, set[str]]] = field(default_factory=dict)

    def remember(self, session: ServerSession) -> set[str]:
        from mcp.types.version import MODERN_PROTOCOL_VERSIONS

        if session.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return set()
        key = id(session._connection)  # the per-request proxy changes; the connection does not
        entry = self.legacy.get(key)
        if entry is None:
            entry = self.legacy[key] = (session, set())
        return entry[1]

    async def job_changed(self, job: Job, *, listed: bool) -> None:
        uri = JOB_URI_PREFIX + job.id
        await self.bus.publish(ResourceUpdated(uri=uri))
        if listed:
            await self.bus.publish(ResourcesListChanged())
        for session, uris in list(self.legacy.values()):
            try:
                if uri in uris or (job.job_id != job.id and JOB_URI_PREFIX + job.job_id in uris):
                    await session.send_resource_updated(uri)
                if listed:
                    await session.send_resource_list_changed()
            except Exception:  # best effort: a gone client must not disturb the job
                log.debug("legacy notification failed", exc_info=True)


# --- lifespan -------------------------------------------------------------------------------------------------


@dataclass
class AppState:
    settings: Settings
    engine: JobEngine
    store: Store
    notifier: Notifier
    mode: Literal["live", "sandbox"]
    media: MediaWorker
    http: httpx2.AsyncClient
    sandbox_url: str | None = None

    async def video_for_job(self, any_id: str) -> Path:
        return local_video(await self.engine.get(any_id))


def instructions_for(settings: Settings) -> str:
    mode = (
        "LIVE: every generation is a paid request to the Pixazo gateway."
        if settings.live
        else "SANDBOX: no API key, so a local sandbox gateway renders placeholder videos; nothing is charged."
    )
    return (
        f"Kling Video 3 Turbo Pro via Pixazo. {mode} Clips are {limits.DURATION_MIN_S}-{limits.DURATION_MAX_S} s; "
        "a generation takes about 1-3 minutes. Tools wait up to wait_seconds, then return the job still running "
        "with the exact check_status call to make next; jobs are never lost when a call ends. Results carry "
        "media_url, local_path and the job resource kling://jobs/{request_id}."
    )


@asynccontextmanager
async def open_state(
    settings: Settings, *, bus: InMemorySubscriptionBus, transport: httpx2.AsyncBaseTransport | None = None
) -> AsyncIterator[AppState]:
    """Builds the core: ledger, gateway client (sandbox or live), job engine; tears it down in order.

    ``transport`` replaces the network (an ASGI app in tests), the way httpx clients are meant to be tested.
    """
    async with AsyncExitStack() as stack:
        live = settings.live
        mode: Literal["live", "sandbox"] = "live" if live else "sandbox"
        base_url = settings.gateway_url
        sandbox_url: str | None = None
        time_scale = 1.0
        if not live:
            time_scale = settings.sandbox_time_scale
            if settings.base_url is None and transport is None:
                from kling_mcp.sandbox import SandboxConfig, serve_sandbox

                config = SandboxConfig(
                    time_scale=settings.sandbox_time_scale,
                    render_size=settings.sandbox_render_size,
                    media_dir=settings.resolved_state_dir / "sandbox-media",
                )
                if settings.sandbox_fps:
                    config.fps = settings.sandbox_fps
                served = await stack.enter_async_context(serve_sandbox(config))
                base_url = sandbox_url = served.base_url
            log.warning("SANDBOX mode: placeholder videos from the sandbox gateway at %s; nothing is charged", base_url)
        api_key = settings.api_key if live else (settings.api_key or SANDBOX_KEY)
        assert api_key is not None
        http = await stack.enter_async_context(
            httpx2.AsyncClient(
                timeout=httpx2.Timeout(settings.request_timeout, connect=10.0),
                follow_redirects=True,
                transport=transport,
                # Keep as many connections alive as polls may run at once, so polls never pay for new handshakes.
                limits=httpx2.Limits(max_connections=32, max_keepalive_connections=32),
            )
        )
        # The gateway client is trusted configuration (and carries the key); URLs from answers and from users go
        # through the SSRF guard, which lets private addresses through only in sandbox mode or when told to.
        media_http = await stack.enter_async_context(
            guarded_client(
                allow_private=not live or settings.allow_private_urls,
                timeout=settings.request_timeout,
                transport=transport,
            )
        )
        client = PixazoClient(http, base_url=base_url, api_key=api_key, paths=settings.paths, media_http=media_http)
        store = Store(settings.resolved_state_dir / "ledger.sqlite3")
        stack.callback(store.close)
        output_dir = settings.resolved_output_dir if settings.download else None
        engine = JobEngine(
            client,
            store,
            EngineConfig(
                mode=mode,
                # With webhooks, polling is only a safety net. Otherwise the sandbox, running time_scale times faster
                # than the gateway, is polled that much more often.
                poll_interval=settings.webhook_poll_interval
                if settings.public_url
                else max(0.05, settings.poll_interval / time_scale),
                output_dir=output_dir,
                time_scale=time_scale,
                dedupe_seconds=settings.dedupe_seconds,
                error_retries=settings.error_retries,
                guards=Guards(max_active_jobs=settings.max_active_jobs, daily_seconds=settings.daily_seconds),
            ),
            webhook_url_for=_webhook_url_for(settings.public_url),
        )
        notifier = Notifier(bus=bus)
        seen: set[str] = set()

        async def on_change(job: Job) -> None:
            listed = job.job_id not in seen or (job.status == "queued" and job.attempts == 1)
            seen.add(job.job_id)
            await notifier.job_changed(job, listed=listed)

        engine.add_listener(on_change)
        await stack.enter_async_context(engine.running())
        media = MediaWorker(settings.resolved_state_dir / "previews")
        yield AppState(settings, engine, store, notifier, mode, media, media_http, sandbox_url)


# --- the server -----------------------------------------------------------------------------------------------


class KlingServer(MCPServer[AppState]):
    """MCPServer whose argument-validation errors name the field, the limit, the value and the fix."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[AppState, Any] | None = None
    ) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(cause, ValidationError):
                raise ToolError(_explain_validation(self, name, cause)) from cause
            raise


def _explain_validation(server: MCPServer[Any], tool: str, error: ValidationError) -> str:
    schema = server._tool_manager.get_tool(tool)
    props: dict[str, Any] = schema.parameters.get("properties", {}) if schema else {}
    lines = [f"Invalid arguments for {tool}; nothing was submitted or charged."]
    for err in error.errors():
        loc = [str(p) for p in err["loc"]]
        field_name = ".".join(loc) or "(arguments)"
        top = props.get(loc[0], {}) if loc else {}
        limit = top.get("description") or ""
        given = err.get("input")
        shown = json.dumps(given, default=str)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        text = f"- {field_name}: {err['msg']}; got {shown}."
        if limit:
            text += f" Limit: {limit}"
        lines.append(text)
    lines.append("Fix the fields above and call again.")
    return "\n".join(lines)


class ConfirmSpend(BaseModel):
    confirm: bool = Field(description="Submit this paid generation?")


def _confirm(ctx: Context[AppState], seconds: int) -> ConfirmSpend | Elicit[ConfirmSpend]:
    """Asks the user before a large paid request, where the client can ask; the spend guards apply regardless."""
    state = ctx.request_context.lifespan_context
    threshold = state.settings.confirm_above_seconds
    caps = ctx.client_capabilities
    if state.mode == "sandbox" or threshold is None or seconds <= threshold or caps is None or caps.elicitation is None:
        return ConfirmSpend(confirm=True)
    return Elicit(
        f"This Kling generation bills {seconds} s of video (about ${seconds * limits.PRICE_PER_SECOND_USD:.2f} at "
        f"the upstream list price), above the {threshold} s you asked to confirm. Submit it?",
        ConfirmSpend,
    )


async def _confirm_duration(duration: int, ctx: Context[AppState]) -> ConfirmSpend | Elicit[ConfirmSpend]:
    return _confirm(ctx, duration)


async def _confirm_shots(shots: list[limits.Shot], ctx: Context[AppState]) -> ConfirmSpend | Elicit[ConfirmSpend]:
    return _confirm(ctx, sum(s.duration for s in shots))


Confirmed = ElicitationResult[ConfirmSpend]


def _declined(confirmed: Confirmed) -> bool:
    return not (isinstance(confirmed, AcceptedElicitation) and confirmed.data.confirm)


def compact_schema(schema: Any, *, in_properties: bool = False) -> Any:
    """Drops what costs a model tokens and says nothing: auto titles, and anyOf-with-null where a type list does.

    Validation does not use these dicts (pydantic validates the arguments), so this only changes what is listed.
    """
    if isinstance(schema, list):
        return [compact_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if in_properties:
        return {name: compact_schema(sub) for name, sub in schema.items()}
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" or (key == "default" and value is None) or (key == "additionalProperties" and value is True):
            continue  # what JSON Schema assumes anyway
        out[key] = compact_schema(value, in_properties=key in ("properties", "$defs"))
    options = out.get("anyOf")
    if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
        (other,) = [o for o in options if o != {"type": "null"}]
        if isinstance(other, dict) and isinstance(other.get("type"), str) and "anyOf" not in other:
            del out["anyOf"]
            out = {**other, **out, "type": [other["type"], "null"]}
    return out


def _compact_tool_schemas(server: KlingServer) -> None:
    for tool in server._tool_manager.list_tools():
        tool.parameters = compact_schema(tool.parameters)
        tool.description = inspect.cleandoc(tool.description)
        output = tool.fn_metadata.output_schema
        if output is not None:
            compacted = compact_schema(output)
            # Results always carry every field, and may carry more: saying so costs tokens on every turn.
            for key in ("required", "additionalProperties", "description"):
                compacted.pop(key, None)
            output.clear()
            output.update(compacted)


MAX_CONCAT = 50
# Only the hints that differ from the spec's defaults (not read-only, destructive, not idempotent, open world):
# the rest would cost tokens on every turn and say nothing.
LOCAL_WRITE = ToolAnnotations(destructive_hint=False, idempotent_hint=True, open_world_hint=False)
READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
GENERATE = ToolAnnotations(destructive_hint=False)

WaitSeconds = Annotated[
    float | None,
    Field(
        ge=0,
        le=WAIT_MAX_S,
        description="Max wait (s); then the running job is returned.",
    ),
]
ImageRef = Annotated[
    str, Field(min_length=1, max_length=limits.IMAGE_REF_MAX_CHARS, description=limits.IMAGE_DESCRIPTION)
]
IdempotencyKey = Annotated[str | None, Field(max_length=200, description="Same key, same job.")]
ForceNew = Annotated[bool, Field(description="New take even if just requested.")]


@dataclass
class StateRef:
    """The running core, for handlers the SDK calls without a request context (static resources, completion)."""

    current: AppState | None = None

    def get(self) -> AppState:
        if self.current is None:
            raise ToolError("The server is starting or stopping; try again.")
        return self.current


def build_server(settings: Settings, *, transport: httpx2.AsyncBaseTransport | None = None) -> KlingServer:
    """A fully wired kling-mcp server. The lifespan starts the core once per process (per Client in memory)."""
    bus = InMemorySubscriptionBus()
    state_ref = StateRef()

    @asynccontextmanager
    async def lifespan(_: MCPServer[AppState]) -> AsyncIterator[AppState]:
        async with open_state(settings, bus=bus, transport=transport) as state:
            state_ref.current = state
            try:
                yield state
            finally:
                state_ref.current = None

    auth: dict[str, Any] = {}
    if settings.auth_tokens:
        base = settings.public_url or "http://127.0.0.1"
        auth = {
            "token_verifier": StaticTokenVerifier(settings.auth_tokens),
            "auth": AuthSettings(
                issuer_url=AnyHttpUrl(base),
                resource_server_url=AnyHttpUrl(base + "/mcp"),
                validate_token_resource=False,
            ),
        }
    server = KlingServer(
        "kling-mcp",
        title="Kling Video (Pixazo)",
        version=__version__,
        instructions=instructions_for(settings),
        log_level=settings.log_level,  # type: ignore[arg-type]
        lifespan=lifespan,
        subscriptions=bus,
        **auth,
    )
    _register_routes(server, state_ref)
    _register_tools(server)
    _compact_tool_schemas(server)
    _register_resources(server, state_ref)
    _register_protocol_handlers(server, state_ref)
    return server


def _state(ctx: Context[AppState]) -> AppState:
    state = ctx.request_context.lifespan_context
    state.notifier.remember(ctx.session)
    return state


async def _wait_with_progress(ctx: Context[AppState], job: Job, wait: float) -> Job:
    state = _state(ctx)
    last = -1.0

    async def on_tick(current: Job) -> None:
        nonlocal last
        progress, total, message = state.engine.progress(current)
        if progress <= last:
            return
        last = progress
        await ctx.report_progress(progress, total, message)

    tick = max(0.05, min(2.0, state.settings.poll_interval))
    return await state.engine.wait(job.job_id, wait, on_tick=on_tick, tick=tick)


async def _run_generation(
    ctx: Context[AppState],
    request_factory: Callable[[AppState], Awaitable[GenerationRequest]],
    *,
    wait_seconds: float | None,
    idempotency_key: str | None,
    force_new: bool,
    confirmed: Confirmed,
    parent: Job | None = None,
) -> CallToolResult:
    state = _state(ctx)
    if _declined(confirmed):
        raise ToolError("Not submitted: the user declined the spend confirmation. Nothing was charged.")
    wait = state.settings.max_wait if wait_seconds is None else wait_seconds
    try:
        request = await request_factory(state)
        submitted: Submitted = await state.engine.submit(
            request, idempotency_key=idempotency_key, force_new=force_new, parent_id=parent.id if parent else None
        )
    except ValidationError as exc:
        raise ToolError(_validation_text(exc)) from None
    except KlingError as exc:
        raise ToolError(_error_text(exc)) from None
    job = submitted.job
    if wait > 0 and not job.settled:
        job = await _wait_with_progress(ctx, job, wait)
    if job.status == "error" and request.image_url and request.image_url.startswith("data:"):
        job = job.model_copy(
            update={
                "error": f"{job.error} The live gateway may not accept inline (data:) images: pass a public https "
                "URL of the image instead."
            }
        )
    return await tool_result(job, state=state, reused=submitted.reused, wait_hint=state.settings.max_wait)


def _deferred(factory: Callable[[], GenerationRequest]) -> Callable[[AppState], Awaitable[GenerationRequest]]:
    """Builds the request inside _run_generation, where a broken limit becomes an explained error."""

    async def build(_: AppState) -> GenerationRequest:
        return factory()

    return build


async def _image(state: AppState, ref: str) -> str:
    """Resolves and checks an image reference; remote URLs are read with the server's guarded HTTP client."""
    resolved = await resolve_image(ref, http=state.http, video_for_job=state.video_for_job, limiter=state.media.limiter)
    return resolved.url


def _validation_text(exc: ValidationError) -> str:
    for err in exc.errors():
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, InvalidInputError):
            return _error_text(ctx_err)
    return f"Invalid request: {exc.errors()[0]['msg']}. Nothing was submitted."


def _error_text(exc: KlingError) -> str:
    text = f"[{exc.code}] {exc}"
    if isinstance(exc, InvalidInputError):
        text += " Nothing was submitted or charged."
    elif isinstance(exc, GatewayError) and exc.status_code is not None:
        text += f" (HTTP {exc.status_code})"
    return text


def _register_tools(server: KlingServer) -> None:
    @server.tool(title="Generate a video from text", annotations=GENERATE)
    async def generate_video(
        prompt: limits.Prompt,
        ctx: Context[AppState],
        duration: limits.Duration = limits.DURATION_DEFAULT_S,
        aspect_ratio: Annotated[limits.AspectRatio, Field(description=limits.ASPECT_DESCRIPTION)] = "16:9",
        wait_seconds: WaitSeconds = None,
        idempotency_key: IdempotencyKey = None,
        force_new: ForceNew = False,
        confirmed: Annotated[Confirmed, Resolve(_confirm_duration)] = None,  # type: ignore[assignment]
    ) -> Annotated[CallToolResult, JobOut]:
        """Text to video (Kling 3 Turbo Pro). If not done within wait_seconds, returns the running job: follow `next`."""
        return await _run_generation(
            ctx,
            _deferred(
                lambda: GenerationRequest(
                    endpoint="text_to_video", prompt=prompt, duration=duration, aspect_ratio=aspect_ratio
                )
            ),
            wait_seconds=wait_seconds,
            idempotency_key=idempotency_key,
            force_new=force_new,
            confirmed=confirmed,
        )

    @server.tool(title="Animate an image", annotations=GENERATE)
    async def animate_image(
        image_url: ImageRef,
        ctx: Context[AppState],
        prompt: Annotated[
            str | None, Field(min_length=1, max_length=limits.PROMPT_MAX_CHARS, description=limits.PROMPT_DESCRIPTION)
        ] = None,
        duration: limits.Duration = limits.DURATION_DEFAULT_S,
        aspect_ratio: Annotated[limits.AspectRatio, Field(description=limits.ASPECT_DESCRIPTION)] = "16:9",
        wait_seconds: WaitSeconds = None,
        idempotency_key: IdempotencyKey = None,
        force_new: ForceNew = False,
        confirmed: Annotated[Confirmed, Resolve(_confirm_duration)] = None,  # type: ignore[assignment]
    ) -> Annotated[CallToolResult, JobOut]:
        """Image to video: the image is the first frame, the prompt says what happens next."""

        async def build(state: AppState) -> GenerationRequest:
            image = await _image(state, image_url)
            return GenerationRequest(
                endpoint="image_to_video", prompt=prompt, image_url=image, duration=duration, aspect_ratio=aspect_ratio
            )

        return await _run_generation(
            ctx,
            build,
            wait_seconds=wait_seconds,
            idempotency_key=idempotency_key,
            force_new=force_new,
            confirmed=confirmed,
        )

    @server.tool(title="Storyboard (multi-shot clip)", annotations=GENERATE)
    async def storyboard(
        shots: limits.Shots,
        ctx: Context[AppState],
        aspect_ratio: Annotated[limits.AspectRatio, Field(description=limits.ASPECT_DESCRIPTION)] = "16:9",
        image_url: ImageRef | None = None,
        wait_seconds: WaitSeconds = None,
        idempotency_key: IdempotencyKey = None,
        force_new: ForceNew = False,
        confirmed: Annotated[Confirmed, Resolve(_confirm_shots)] = None,  # type: ignore[assignment]
    ) -> Annotated[CallToolResult, JobOut]:
        """One clip of several shots in order (multi-shot). With image_url it starts from that frame."""

        async def build(state: AppState) -> GenerationRequest:
            return GenerationRequest(
                endpoint="image_to_video" if image_url else "text_to_video",
                shots=tuple(shots),
                image_url=await _image(state, image_url) if image_url else None,
                aspect_ratio=aspect_ratio,
            )

        return await _run_generation(
            ctx,
            build,
            wait_seconds=wait_seconds,
            idempotency_key=idempotency_key,
            force_new=force_new,
            confirmed=confirmed,
        )

    @server.tool(title="Extend a video", annotations=GENERATE)
    async def extend_video(
        request_id: Annotated[str, Field(min_length=1, max_length=200, description="The finished job to continue.")],
        prompt: limits.Prompt,
        ctx: Context[AppState],
        duration: limits.Duration = limits.DURATION_DEFAULT_S,
        wait_seconds: WaitSeconds = None,
        idempotency_key: IdempotencyKey = None,
        force_new: ForceNew = False,
        confirmed: Annotated[Confirmed, Resolve(_confirm_duration)] = None,  # type: ignore[assignment]
    ) -> Annotated[CallToolResult, JobOut]:
        """Next clip from the last frame of a finished job, so the motion continues; same aspect ratio."""
        state = _state(ctx)
        try:
            parent = await state.engine.get(request_id.strip())
            local_video(parent)
        except KlingError as exc:
            raise ToolError(_error_text(exc)) from None

        async def build(state: AppState) -> GenerationRequest:
            image = await _image(state, f"{JOB_URI_PREFIX}{parent.id}/last-frame")
            return GenerationRequest(
                endpoint="image_to_video",
                prompt=prompt,
                image_url=image,
                duration=duration,
                aspect_ratio=parent.request.aspect_ratio,
            )

        return await _run_generation(
            ctx,
            build,
            wait_seconds=wait_seconds,
            idempotency_key=idempotency_key,
            force_new=force_new,
            confirmed=confirmed,
            parent=parent,
        )

    @server.tool(title="Join videos into one", annotations=LOCAL_WRITE)
    async def concat_videos(
        request_ids: Annotated[
            list[Annotated[str, Field(min_length=1, max_length=200)]],
            Field(min_length=2, max_length=MAX_CONCAT, description="Finished jobs, in play order."),
        ],
        ctx: Context[AppState],
        title: Annotated[str | None, Field(max_length=100, description="File name for the result.")] = None,
    ) -> Annotated[CallToolResult, FilmOut]:
        """Joins finished clips in order into one local MP4. Free: no gateway request."""
        state = _state(ctx)
        try:
            jobs = [await state.engine.get(rid.strip()) for rid in request_ids]
            film = await concat_jobs(state.media, jobs, state.settings.resolved_output_dir, title)
        except KlingError as exc:
            raise ToolError(_error_text(exc)) from None
        out = FilmOut(
            path=str(film.path),
            uri=film.path.absolute().as_uri(),
            duration_s=round(film.duration_s, 3),
            size_bytes=film.size_bytes,
            width=film.width,
            height=film.height,
            method=film.method,
            request_ids=[job.id for job in jobs],
        )
        how = "stream copy" if film.method == "copy" else "re-encoded, letterboxed to the first clip"
        text = (
            f"Joined {len(jobs)} clips ({how}): {out.duration_s:.1f} s, {out.width}x{out.height}.\nSaved to: {out.path}"
        )
        return CallToolResult(
            content=[
                TextContent(type="text", text=text),
                ResourceLink(
                    type="resource_link", uri=out.uri, name=film.path.name, mime_type="video/mp4", size=out.size_bytes
                ),
            ],
            structured_content=out.model_dump(mode="json"),
        )

    @server.tool(title="Check a video job", annotations=READ_ONLY)
    async def check_status(
        request_id: Annotated[str, Field(min_length=1, max_length=200, description="The request_id a tool returned.")],
        ctx: Context[AppState],
        wait_seconds: Annotated[
            float, Field(ge=0, le=WAIT_MAX_S, description="Seconds to wait for it to finish; 0 answers at once.")
        ] = 0,
    ) -> Annotated[CallToolResult, JobOut]:
        """A job's state, waiting up to wait_seconds for it to finish."""
        state = _state(ctx)
        try:
            job = await state.engine.get(request_id.strip())
        except KlingError as exc:
            raise ToolError(_error_text(exc)) from None
        if wait_seconds > 0 and not job.settled:
            job = await _wait_with_progress(ctx, job, wait_seconds)
        return await tool_result(job, state=state, wait_hint=state.settings.max_wait)

    @server.tool(title="List video jobs", annotations=READ_ONLY)
    async def list_jobs(
        ctx: Context[AppState],
        status: Annotated[
            Literal["queued", "processing", "completed", "failed", "error", "unknown", "submitting"] | None,
            Field(description="Only jobs in this state."),
        ] = None,
        limit: Annotated[int, Field(ge=1, le=200, description="Most recent first.")] = 20,
    ) -> JobList:
        """Jobs in the ledger, newest first, across server restarts."""
        state = _state(ctx)
        jobs = await state.store.recent(statuses=[status] if status else None, limit=limit)
        return JobList(jobs=[JobOut.model_validate(job_result(j, engine=state.engine).model_dump()) for j in jobs])


def _register_resources(server: KlingServer, state_ref: StateRef) -> None:
    @server.resource(
        JOB_URI_PREFIX + "{request_id}",
        name="job",
        title="Kling job",
        description="A video job as JSON: status, media_url, local_path, parameters, timings.",
        mime_type="application/json",
    )
    async def job_resource(request_id: str, ctx: Context[AppState]) -> str:
        state = _state(ctx)
        job = await _resource_job(state, request_id)
        data = job_result(job, engine=state.engine).model_dump(mode="json")
        data["chain"] = await _chain(state, job)
        return json.dumps(data, indent=2)

    for suffix, title, description, mime, make in _FRAME_RESOURCES:
        server.resource(
            JOB_URI_PREFIX + "{request_id}/" + suffix,
            name=suffix.split(".")[0],
            title=title,
            description=description,
            mime_type=mime,
        )(_frame_resource(make))

    @server.resource(
        JOB_URI_PREFIX + "{request_id}/video",
        name="video",
        title="Video file",
        description=f"The finished MP4 as a blob, up to {VIDEO_BLOB_MAX_BYTES // 1024**2} MB.",
        mime_type="video/mp4",
    )
    async def video_resource(request_id: str, ctx: Context[AppState]) -> bytes:
        state = _state(ctx)
        job = await _resource_job(state, request_id)
        try:
            path = local_video(job)
        except KlingError as exc:
            raise ResourceError(str(exc)) from None
        size = (await anyio.Path(path).stat()).st_size
        if size > VIDEO_BLOB_MAX_BYTES:
            raise ResourceError(
                f"The video is {size / 1024**2:.1f} MB, above the {VIDEO_BLOB_MAX_BYTES // 1024**2} MB blob limit. "
                f"Open it at {path} or {job.media_url}."
            )
        return await anyio.Path(path).read_bytes()

    @server.resource(
        JOBS_URI,
        name="jobs",
        title="Recent Kling jobs",
        description="The 50 most recent jobs, newest first.",
        mime_type="application/json",
    )
    async def jobs_resource() -> str:
        state = state_ref.get()
        jobs = await state.store.recent(limit=50)
        return json.dumps([job_result(j, engine=state.engine).model_dump(mode="json") for j in jobs], indent=2)


VIDEO_BLOB_MAX_BYTES = 20 * 1024**2

# Images of a finished job: (URI suffix, title, description, MIME type, the MediaWorker method that makes it).
_FRAME_RESOURCES: tuple[tuple[str, str, str, str, Callable[[MediaWorker, Job], Awaitable[Path]]], ...] = (
    (
        "poster.jpg",
        "Poster frame",
        "A JPEG frame of a finished job (at most 200 KB).",
        "image/jpeg",
        MediaWorker.poster,
    ),
    (
        "contact-sheet.jpg",
        "Contact sheet",
        "One frame per shot of a finished storyboard, as one JPEG.",
        "image/jpeg",
        MediaWorker.preview,
    ),
    (
        "last-frame.png",
        "Last frame",
        "The last frame of a finished job, lossless PNG (what extend_video starts from).",
        "image/png",
        MediaWorker.last_frame,
    ),
)


def _frame_resource(
    make: Callable[[MediaWorker, Job], Awaitable[Path]],
) -> Callable[[str, Context[AppState]], Awaitable[bytes]]:
    async def read(request_id: str, ctx: Context[AppState]) -> bytes:
        state = _state(ctx)
        job = await _resource_job(state, request_id)
        return await _resource_bytes(make(state.media, job))

    return read


WEBHOOK_PATH = "/webhooks/pixazo/"
WEBHOOK_MAX_BYTES = 64 * 1024


def _webhook_url_for(public_url: str | None) -> Callable[[Job], str | None] | None:
    if not public_url:
        return None

    def url(job: Job) -> str | None:
        return f"{public_url}{WEBHOOK_PATH}{job.webhook_token}" if job.webhook_token else None

    return url


class StaticTokenVerifier:
    """Bearer tokens from KLING_MCP_AUTH_TOKEN, compared in constant time."""

    def __init__(self, tokens: tuple[str, ...]) -> None:
        self._tokens = tuple(t.encode() for t in tokens)

    async def verify_token(self, token: str) -> AccessToken | None:
        given = token.encode()
        # Compare against every token, so the time taken does not tell which one nearly matched.
        matched = [hmac.compare_digest(given, known) for known in self._tokens]
        if not any(matched):
            return None
        return AccessToken(token="redacted", client_id=f"token-{matched.index(True) + 1}", scopes=[])


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def http_security(settings: Settings, host: str) -> TransportSecuritySettings:
    """DNS-rebinding protection, always on: loopback, the bound host, the public URL's host, and what is configured."""
    names = ["127.0.0.1", "localhost", "[::1]"]
    if host not in (*LOOPBACK_HOSTS, "0.0.0.0", "::"):
        names.append(f"[{host}]" if ":" in host else host)
    public_host = urlsplit(settings.public_url).hostname if settings.public_url else None
    if public_host:
        names.append(public_host)
    hosts = [f"{name}:*" for name in names] + names + list(settings.allowed_hosts)
    origins = [f"{scheme}://{name}{port}" for name in names for scheme in ("http", "https") for port in ("", ":*")]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        allowed_origins=origins + list(settings.allowed_origins),
    )


def _register_routes(server: KlingServer, state_ref: StateRef) -> None:
    """Plain HTTP routes beside /mcp (streamable HTTP only). They are outside bearer auth on purpose."""

    @server.custom_route("/healthz", methods=["GET"])  # type: ignore[untyped-decorator]
    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": state_ref.current is not None, "version": __version__})

    @server.custom_route(WEBHOOK_PATH + "{token}", methods=["POST"])  # type: ignore[untyped-decorator]
    async def webhook(request: Request) -> Response:
        state = state_ref.current
        if state is None:
            return JSONResponse({"error": "starting"}, status_code=503)
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > WEBHOOK_MAX_BYTES):
            return JSONResponse({"error": "body too large"}, status_code=413)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > WEBHOOK_MAX_BYTES:
                return JSONResponse({"error": "body too large"}, status_code=413)
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return JSONResponse({"error": "body is not JSON"}, status_code=400)
        if not isinstance(data, dict):
            return JSONResponse({"error": "body is not a JSON object"}, status_code=400)
        code, reason = await state.engine.on_webhook(request.path_params["token"], data)
        return JSONResponse({"ok": code == 200, "detail": reason}, status_code=code)


async def _resource_job(state: AppState, request_id: str) -> Job:
    try:
        return await state.engine.get(request_id)
    except KlingError as exc:
        raise ResourceNotFoundError(str(exc)) from None


async def _resource_bytes(path: Awaitable[Path]) -> bytes:
    try:
        return await anyio.Path(await path).read_bytes()
    except KlingError as exc:
        raise ResourceError(str(exc)) from None


async def _chain(state: AppState, job: Job) -> list[str]:
    """Ids from the first clip of an extend_video chain to this one."""
    chain = [job.id]
    current = job
    while current.parent_id and len(chain) < 100:
        try:
            current = await state.store.get(current.parent_id)
        except KlingError:
            break
        chain.insert(0, current.id)
    return chain


def _register_protocol_handlers(server: KlingServer, state_ref: StateRef) -> None:
    low = server._lowlevel_server

    async def on_subscribe(ctx: ServerRequestContext[AppState], params: SubscribeRequestParams) -> EmptyResult:
        uris = ctx.lifespan_context.notifier.remember(ctx.session)
        uris.add(str(params.uri))
        return EmptyResult()

    async def on_unsubscribe(ctx: ServerRequestContext[AppState], params: UnsubscribeRequestParams) -> EmptyResult:
        ctx.lifespan_context.notifier.remember(ctx.session).discard(str(params.uri))
        return EmptyResult()

    async def on_set_level(ctx: ServerRequestContext[AppState], params: SetLevelRequestParams) -> EmptyResult:
        # Server logs go to stderr; the level the client asks for sets how much is written there.
        level = params.level.upper()
        logging.getLogger("kling_mcp").setLevel(level if level in logging.getLevelNamesMapping() else "ERROR")
        return EmptyResult()

    low.add_request_handler("resources/subscribe", SubscribeRequestParams, on_subscribe)
    low.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, on_unsubscribe)
    low.add_request_handler("logging/setLevel", SetLevelRequestParams, on_set_level)

    async def on_complete(ctx: ServerRequestContext[AppState], params: CompleteRequestParams) -> CompleteResult:
        values: list[str] = []
        if params.argument.name == "request_id":
            jobs = await ctx.lifespan_context.store.recent(limit=200)
            values = [j.id for j in jobs if j.id.startswith(params.argument.value)][:100]
        return CompleteResult(completion=Completion(values=values, total=len(values), has_more=False))

    low.add_request_handler("completion/complete", CompleteRequestParams, on_complete)

    original = low.create_initialization_options

    def with_list_changed(notification_options: NotificationOptions | None = None, *args: Any, **kwargs: Any) -> Any:
        return original(NotificationOptions(tools_changed=False, resources_changed=True), *args, **kwargs)

    low.create_initialization_options = with_list_changed  # type: ignore[method-assign]


def log_to_stderr(level: str) -> None:
    """stdout carries the protocol in stdio mode, so every log line goes to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("kling_mcp").setLevel(level)
