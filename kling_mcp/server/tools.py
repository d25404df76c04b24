"""The seven tools. Each is a top-level function; ``TOOLS`` lists them with their titles and hints.

Arguments are typed with the limits from ``kling_mcp.limits``, so the schema a model reads and the checks the
server makes come from the same constants.
"""

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

from mcp.server.mcpserver import Context, Resolve
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ToolAnnotations
from pydantic import Field, ValidationError

from kling_mcp import limits
from kling_mcp.errors import GatewayError, InvalidInputError, KlingError
from kling_mcp.models import GenerationRequest, Job, JobStatus
from kling_mcp.previews import concat_jobs, local_video
from kling_mcp.server.confirm import Confirmed, confirm_duration, confirm_shots, declined
from kling_mcp.server.owners import owner_of
from kling_mcp.server.results import (
    REMOTE_CALLER,
    WAIT_SECONDS_MAX,
    FilmOut,
    JobList,
    JobOut,
    film_result,
    job_out,
    tool_result,
    wait_budget,
)
from kling_mcp.server.state import AppState, runtime_of
from kling_mcp.server.uris import job_uri

if TYPE_CHECKING:
    from kling_mcp.jobs import Submitted
    from kling_mcp.runtime import Runtime
MAX_CONCAT = 50

# Only the hints that differ from the spec's defaults (not read-only, destructive, not idempotent, open world):
# the rest would cost tokens on every turn and say nothing.
LOCAL_WRITE = ToolAnnotations(destructive_hint=False, idempotent_hint=True, open_world_hint=False)
READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
GENERATE = ToolAnnotations(destructive_hint=False)

WaitSeconds = Annotated[
    float | None, Field(ge=0, le=WAIT_SECONDS_MAX, description="Max wait (s); then the running job is returned.")
]
ImageRef = Annotated[
    str, Field(min_length=1, max_length=limits.IMAGE_REF_MAX_CHARS, description=limits.IMAGE_DESCRIPTION)
]
IdempotencyKey = Annotated[str | None, Field(max_length=200, description="Same key, same job.")]
ForceNew = Annotated[bool, Field(description="New take even if just requested.")]
Aspect = Annotated[limits.AspectRatio, Field(description=limits.ASPECT_DESCRIPTION)]
OptionalPrompt = Annotated[
    str | None, Field(min_length=1, max_length=limits.PROMPT_MAX_CHARS, description=limits.PROMPT_DESCRIPTION)
]
ConfirmDuration = Annotated[Confirmed, Resolve(confirm_duration)]
ConfirmShots = Annotated[Confirmed, Resolve(confirm_shots)]

# Builds the request for the runtime and the caller's owner name (whose jobs an image reference may name).
RequestFactory = Callable[["Runtime", str], Awaitable[GenerationRequest]]


@dataclass(frozen=True)
class Generation:
    """What every generating tool hands to ``run_generation`` besides the request itself."""

    wait_seconds: float | None
    idempotency_key: str | None
    force_new: bool
    confirmed: Confirmed
    parent: Job | None = None


def error_text(exc: KlingError) -> str:
    text = f"[{exc.code}] {exc}"
    if isinstance(exc, InvalidInputError):
        text += " Nothing was submitted or charged."
    elif isinstance(exc, GatewayError) and exc.status_code is not None:
        text += f" (HTTP {exc.status_code})"
    return text


def _validation_text(exc: ValidationError) -> str:
    for err in exc.errors():
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, InvalidInputError):
            return error_text(ctx_err)
    return f"Invalid request: {exc.errors()[0]['msg']}. Nothing was submitted."


async def _wait_with_progress(ctx: Context[AppState], job: Job, wait: float) -> Job:
    runtime = await runtime_of(ctx)
    last = -1.0

    async def on_tick(current: Job) -> None:
        nonlocal last
        progress, total, message = runtime.engine.progress(current)
        if progress <= last:
            return
        last = progress
        await ctx.report_progress(progress, total, message)

    tick = max(0.05, min(2.0, runtime.settings.poll_interval))
    return await runtime.engine.wait(job.job_id, wait, on_tick=on_tick, tick=tick)


def _with_inline_image_advice(job: Job, request: GenerationRequest) -> Job:
    """An ERROR after an inline image may be the live gateway refusing data: URIs: say what to do instead."""
    if job.status != "error" or not (request.image_url and request.image_url.startswith("data:")):
        return job
    advice = "The live gateway may not accept inline (data:) images: pass a public https URL of the image instead."
    return job.model_copy(update={"error": f"{job.error} {advice}"})


async def run_generation(ctx: Context[AppState], build: RequestFactory, how: Generation) -> CallToolResult:
    """Submits (or finds the existing job for) a request, waits up to the call's budget, returns the job."""
    runtime = await runtime_of(ctx)
    owner = owner_of(ctx)
    if declined(how.confirmed):
        raise ToolError("Not submitted: the user declined the spend confirmation. Nothing was charged.")
    wait = wait_budget(how.wait_seconds, runtime.settings)
    try:
        request = await build(runtime, owner)
        submitted: Submitted = await runtime.engine.submit(
            request,
            owner=owner,
            idempotency_key=how.idempotency_key,
            force_new=how.force_new,
            parent_id=how.parent.id if how.parent else None,
        )
    except ValidationError as exc:
        raise ToolError(_validation_text(exc)) from None
    except KlingError as exc:
        raise ToolError(error_text(exc)) from None
    job = submitted.job
    if wait > 0 and not job.settled:
        job = await _wait_with_progress(ctx, job, wait)
    job = _with_inline_image_advice(job, request)
    return await tool_result(job, runtime=runtime, reused=submitted.reused)


async def _image(runtime: "Runtime", ref: str, owner: str) -> str:
    """Resolves and checks an image reference; remote URLs are read with the server's guarded HTTP client, and a
    job's frame only from the owner's own jobs."""
    from kling_mcp.images import resolve_image  # its checks load with the first image, not before the handshake

    resolved = await resolve_image(
        ref,
        http=runtime.http,
        video_for_job=partial(runtime.video_for_job, owner=owner),
        limiter=runtime.media.limiter,
        # Remote (HTTP) callers may name local files only inside KLING_MCP_IMAGE_ROOTS; the local user any.
        local_roots=runtime.settings.image_roots if REMOTE_CALLER.get() else None,
    )
    return resolved.url


async def get_job(runtime: "Runtime", request_id: str, owner: str) -> Job:
    """The owner's job; another owner's is "not found" in exactly the words of a missing one."""
    try:
        return await runtime.engine.get(request_id.strip(), owner=owner)
    except KlingError as exc:
        raise ToolError(error_text(exc)) from None


async def generate_video(
    prompt: limits.Prompt,
    ctx: Context[AppState],
    duration: limits.Duration = limits.DURATION_DEFAULT_S,
    aspect_ratio: Aspect = "16:9",
    wait_seconds: WaitSeconds = None,
    idempotency_key: IdempotencyKey = None,
    force_new: ForceNew = False,
    confirmed: ConfirmDuration = None,  # type: ignore[assignment]
) -> Annotated[CallToolResult, JobOut]:
    """Text to video (Kling 3 Turbo Pro). If not done within wait_seconds, returns the running job: follow `next`."""

    async def build(*_: object) -> GenerationRequest:  # built inside run_generation, where a limit is explained
        return GenerationRequest(endpoint="text_to_video", prompt=prompt, duration=duration, aspect_ratio=aspect_ratio)

    return await run_generation(ctx, build, Generation(wait_seconds, idempotency_key, force_new, confirmed))


async def animate_image(
    image_url: ImageRef,
    ctx: Context[AppState],
    prompt: OptionalPrompt = None,
    duration: limits.Duration = limits.DURATION_DEFAULT_S,
    aspect_ratio: Aspect = "16:9",
    wait_seconds: WaitSeconds = None,
    idempotency_key: IdempotencyKey = None,
    force_new: ForceNew = False,
    confirmed: ConfirmDuration = None,  # type: ignore[assignment]
) -> Annotated[CallToolResult, JobOut]:
    """Image to video: the image is the first frame, the prompt says what happens next."""

    async def build(runtime: "Runtime", owner: str) -> GenerationRequest:
        image = await _image(runtime, image_url, owner)
        return GenerationRequest(
            endpoint="image_to_video", prompt=prompt, image_url=image, duration=duration, aspect_ratio=aspect_ratio
        )

    return await run_generation(ctx, build, Generation(wait_seconds, idempotency_key, force_new, confirmed))


async def storyboard(
    shots: limits.Shots,
    ctx: Context[AppState],
    aspect_ratio: Aspect = "16:9",
    image_url: ImageRef | None = None,
    wait_seconds: WaitSeconds = None,
    idempotency_key: IdempotencyKey = None,
    force_new: ForceNew = False,
    confirmed: ConfirmShots = None,  # type: ignore[assignment]
) -> Annotated[CallToolResult, JobOut]:
    """One clip of several shots in order (multi-shot). With image_url it starts from that frame."""

    async def build(runtime: "Runtime", owner: str) -> GenerationRequest:
        return GenerationRequest(
            endpoint="image_to_video" if image_url else "text_to_video",
            shots=tuple(shots),
            image_url=await _image(runtime, image_url, owner) if image_url else None,
            aspect_ratio=aspect_ratio,
        )

    return await run_generation(ctx, build, Generation(wait_seconds, idempotency_key, force_new, confirmed))


async def extend_video(
    request_id: Annotated[str, Field(min_length=1, max_length=200, description="The finished job to continue.")],
    prompt: limits.Prompt,
    ctx: Context[AppState],
    duration: limits.Duration = limits.DURATION_DEFAULT_S,
    wait_seconds: WaitSeconds = None,
    idempotency_key: IdempotencyKey = None,
    force_new: ForceNew = False,
    confirmed: ConfirmDuration = None,  # type: ignore[assignment]
) -> Annotated[CallToolResult, JobOut]:
    """Next clip from the last frame of a finished job, so the motion continues; same aspect ratio."""
    parent = await get_job(await runtime_of(ctx), request_id, owner_of(ctx))
    try:
        local_video(parent)
    except KlingError as exc:
        raise ToolError(error_text(exc)) from None

    async def build(runtime: "Runtime", owner: str) -> GenerationRequest:
        image = await _image(runtime, job_uri(parent.id, "last-frame"), owner)
        return GenerationRequest(
            endpoint="image_to_video",
            prompt=prompt,
            image_url=image,
            duration=duration,
            aspect_ratio=parent.request.aspect_ratio,
        )

    return await run_generation(ctx, build, Generation(wait_seconds, idempotency_key, force_new, confirmed, parent))


async def concat_videos(
    request_ids: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=200)]],
        Field(min_length=2, max_length=MAX_CONCAT, description="Finished jobs, in play order."),
    ],
    ctx: Context[AppState],
    title: Annotated[str | None, Field(max_length=100, description="File name for the result.")] = None,
) -> Annotated[CallToolResult, FilmOut]:
    """Joins finished clips in order into one local MP4. Free: no gateway request."""
    runtime = await runtime_of(ctx)
    owner = owner_of(ctx)
    jobs = [await get_job(runtime, rid, owner) for rid in request_ids]
    try:
        film = await concat_jobs(runtime.media, jobs, runtime.settings.resolved_output_dir, title)
    except KlingError as exc:
        raise ToolError(error_text(exc)) from None
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
    return film_result(out, how, links=runtime.settings.result_links, settings=runtime.settings)


async def check_status(
    request_id: Annotated[str, Field(min_length=1, max_length=200, description="The request_id a tool returned.")],
    ctx: Context[AppState],
    wait_seconds: Annotated[
        float, Field(ge=0, le=WAIT_SECONDS_MAX, description="Seconds to wait for it to finish; 0 answers at once.")
    ] = 0,
) -> Annotated[CallToolResult, JobOut]:
    """A job's state, waiting up to wait_seconds for it to finish."""
    runtime = await runtime_of(ctx)
    job = await get_job(runtime, request_id, owner_of(ctx))
    wait = wait_budget(wait_seconds, runtime.settings)
    if wait > 0 and not job.settled:
        job = await _wait_with_progress(ctx, job, wait)
    return await tool_result(job, runtime=runtime)


async def list_jobs(
    ctx: Context[AppState],
    status: Annotated[JobStatus | None, Field(description="Only jobs in this state.")] = None,
    limit: Annotated[int, Field(ge=1, le=200, description="Most recent first.")] = 20,
) -> JobList:
    """Jobs in the ledger, newest first, across server restarts."""
    runtime = await runtime_of(ctx)
    jobs = await runtime.store.recent(owner=owner_of(ctx), statuses=[status] if status else None, limit=limit)
    return JobList(jobs=[job_out(j, runtime=runtime) for j in jobs])


@dataclass(frozen=True)
class ToolSpec:
    fn: Callable[..., Awaitable[Any]]
    title: str
    annotations: ToolAnnotations


TOOLS: Sequence[ToolSpec] = (
    ToolSpec(generate_video, "Generate a video from text", GENERATE),
    ToolSpec(animate_image, "Animate an image", GENERATE),
    ToolSpec(storyboard, "Storyboard (multi-shot clip)", GENERATE),
    ToolSpec(extend_video, "Extend a video", GENERATE),
    ToolSpec(concat_videos, "Join videos into one", LOCAL_WRITE),
    ToolSpec(check_status, "Check a video job", READ_ONLY),
    ToolSpec(list_jobs, "List video jobs", READ_ONLY),
)
