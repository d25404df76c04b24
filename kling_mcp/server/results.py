"""What a tool call returns: the result models (the tools' outputSchema) and their rendering for a model to read."""

import base64
import logging
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from mcp.types import CallToolResult, ImageContent, ResourceLink, TextContent
from pydantic import BaseModel, ConfigDict

from kling_mcp import limits
from kling_mcp.config import Settings
from kling_mcp.errors import KlingError
from kling_mcp.models import ACTIVE, GATEWAY_FAILED, Endpoint, Job, JobStatus, Mode, expected_seconds
from kling_mcp.server.uris import job_uri

if TYPE_CHECKING:
    from kling_mcp.runtime import Runtime

log = logging.getLogger("kling_mcp")

# The longest wait a call may ask for: under the 60 s request timeout of the TypeScript SDK and other clients, which
# progress notifications do not reset. Longer waits are server configuration (KLING_MCP_MAX_WAIT).
WAIT_SECONDS_MAX = 50
# A finished job's text stays within this, whatever the gateway's URLs and error texts: adapters that pass only the
# text to the model pay for every character on every later turn.
TEXT_MAX_CHARS = 2500
ERROR_TEXT_MAX_CHARS = 600
MEDIA_URL_TEXT_MAX_CHARS = 1000  # a longer (signed) URL is left to the structured result once the file is saved

# Whether the request being answered came from a remote (HTTP) caller; set per request by protocol.CallerKind. The
# server's folders are not a remote caller's to know, so results name its files relative to the output folder.
REMOTE_CALLER: ContextVar[bool] = ContextVar("kling_mcp_remote_caller", default=False)
# Whether the call being answered becomes a task (tasks.py): it then submits and answers without waiting.
AS_TASK: ContextVar[bool] = ContextVar("kling_mcp_as_task", default=False)


def shown_path(path: str | Path | None, settings: Settings) -> str | None:
    """A server file as the caller sees it: the absolute path for a local (stdio) caller; for a remote one, the
    path relative to the output folder, or only the file name for a file elsewhere."""
    if path is None or not REMOTE_CALLER.get():
        return None if path is None else str(path)
    file = Path(path)
    out = settings.resolved_output_dir
    for base in dict.fromkeys((out.absolute(), out.resolve())):
        if file.is_relative_to(base):
            return file.relative_to(base).as_posix()
    return file.name


def wait_budget(requested: float | None, settings: Settings) -> float:
    """How long a call waits: what it asked for, or the configured default, and never more than that default; a
    call answered with a task does not wait at all."""
    if AS_TASK.get():
        return 0.0
    return settings.max_wait if requested is None else min(requested, settings.max_wait)


def wait_hint(settings: Settings) -> float:
    """The wait_seconds that ``next`` suggests: the configured wait, within what the schema accepts."""
    return min(settings.max_wait, WAIT_SECONDS_MAX)


class JobParams(BaseModel):
    endpoint: Endpoint
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
    status: JobStatus
    media_url: str | None
    local_path: str | None
    resource_uri: str
    mode: Mode
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


def check_call(job_id: str, wait_s: float) -> str:
    return f'check_status(request_id="{job_id}", wait_seconds={wait_s:g})'


def iso_time(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts is not None else None


def _next_step(job: Job, wait_s: float) -> tuple[str | None, bool | None]:
    """What the agent should do next, and whether retrying is free."""
    if not job.settled:
        return check_call(job.id, wait_s), None
    if job.status == "error":
        return "Call the same tool again: ERROR is a system failure and was not charged.", True
    if job.status == "failed":
        return "Change the prompt (FAILED is often content moderation) and call again; FAILED may be charged.", False
    if job.status == "unknown":
        return (
            "Check the Pixazo console for this request before retrying; to submit anyway, call the same tool "
            "again with force_new=true."
        ), None
    return None, None


def _params(job: Job) -> JobParams:
    req = job.request
    return JobParams(
        endpoint=req.endpoint,
        prompt=req.prompt,
        shots=list(req.shots) if req.shots else None,
        duration=req.video_seconds,
        aspect_ratio=req.aspect_ratio,
        image_url=_short_url(req.image_url),
    )


def job_result(job: Job, *, runtime: "Runtime", reused: bool = False) -> JobResult:
    now = time.time()
    start = job.submitted_at or job.created_at
    end = job.finished_at if job.final else None
    eta = None if job.final else max(0.0, expected_seconds(job, runtime.engine.config.time_scale) - (now - start))
    nxt, retry_free = _next_step(job, wait_hint(runtime.settings))
    return JobResult(
        request_id=job.id,
        status=job.status,
        done=job.settled,
        media_url=job.media_url,
        local_path=shown_path(job.local_path, runtime.settings),
        resource_uri=job_uri(job.id),
        mode=job.mode,
        params=_params(job),
        video_seconds=job.video_seconds,
        created_at=iso_time(job.created_at) or "",
        finished_at=iso_time(end),
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


def job_out(job: Job, *, runtime: "Runtime") -> JobOut:
    """The job as list_jobs shows it: the advertised fields only."""
    return JobOut.model_validate(job_result(job, runtime=runtime).model_dump())


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


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 15] + f"... ({len(text)} chars)"


def _made(job: Job) -> str:
    request = job.request
    if request.shots and len(request.shots) > 1:
        what = f"Storyboard clip of {len(request.shots)} shots"
    elif job.parent_id:
        what = f"Continuation of {job.parent_id}"
    elif request.endpoint == "image_to_video":
        what = "Video animated from the image"
    else:
        what = "Video from the text"
    return f"{what} ready ({job.video_seconds} s, {request.aspect_ratio}). request_id: {job.id}"


def _preview_uri(job: Job) -> str:
    """The resource of the image ``MediaWorker.preview`` makes: a contact sheet for several shots, else the poster."""
    return job_uri(job.id, "contact-sheet.jpg" if job.request.shots and len(job.request.shots) > 1 else "poster.jpg")


def _where_lines(result: JobResult, job: Job) -> list[str]:
    url = result.media_url or ""
    if result.local_path:
        lines = [_saved_line(result.local_path, job_uri(job.id, "video"))]
        lines.append(
            f"Media URL: {url}"
            if len(url) <= MEDIA_URL_TEXT_MAX_CHARS
            else f"Media URL: {len(url)} characters, in media_url of the structured result."
        )
        lines.append(f"Job resource: {result.resource_uri} (preview image: {_preview_uri(job)})")
        return lines
    if result.download.startswith("failed"):
        state = f"Download {_clip(result.download, ERROR_TEXT_MAX_CHARS)}; the URL may expire, fetch it soon"
    else:
        state = f"Not saved locally (download: {result.download}); the URL may expire"
    return [f"{state}. Media URL: {url}", f"Job resource: {result.resource_uri}"]


def _saved_line(path: str, resource: str) -> str:
    if REMOTE_CALLER.get():
        return f"Saved on the server as {path} (in its output folder); read it as the resource {resource}."
    return f"Saved to: {path}"


def _state_lines(result: JobResult, job: Job) -> list[str]:
    if result.status == "completed":
        return [_made(job), *_where_lines(result, job)]
    lines: list[str]
    if result.status in ACTIVE:
        eta = f", about {result.eta_s:.0f}s left" if result.eta_s else ""
        lines = [
            f"Job {result.request_id} is {result.status} ({result.elapsed_s:.0f}s elapsed{eta}).",
            "Still running is normal; the job continues in the background.",
        ]
    elif result.status == "unknown":
        lines = [f"Job {result.request_id}: outcome unknown. {_clip(result.error or '', ERROR_TEXT_MAX_CHARS)}"]
    else:
        lines = [
            f"Job {result.request_id} ended {result.status.upper()}: {_clip(result.error or '', ERROR_TEXT_MAX_CHARS)}"
        ]
    return [*lines, f"Job resource: {result.resource_uri}"]


def _finished_next(job: Job) -> str:
    return (
        f'extend_video(request_id="{job.id}", prompt=...) continues this clip from its last frame; '
        "concat_videos(request_ids=[...]) joins finished clips into one file."
    )


def _cost(result: JobResult, job: Job) -> str:
    if result.mode == "sandbox":
        return "[SANDBOX] Placeholder video from the local sandbox gateway; no credits were used."
    if result.status == "error":
        return "Not billed: ERROR is a system failure."
    if result.status == "failed":
        return f"May bill {job.video_seconds} s of video (FAILED)."
    if result.status == "cancelled":
        return f"May bill {job.video_seconds} s of video: the gateway has no cancel."
    return f"Bills {job.video_seconds} s of video" + ("." if result.status == "completed" else " once it completes.")


def summary(result: JobResult, job: Job) -> str:
    """The text a model reads: what was made, where it is, what it cost, what to do next."""
    lines = _state_lines(result, job)
    if result.reused:
        lines.append(
            "This is an existing job for the same request (no new charge); pass force_new=true for another take."
        )
    lines.append(_cost(result, job))
    if result.next:
        lines.append(f"Next: {result.next}")
    elif result.status == "completed" and result.local_path:
        lines.append(f"Next: {_finished_next(job)}")
    return _clip("\n".join(lines), TEXT_MAX_CHARS)


async def tool_result(job: Job, *, runtime: "Runtime", reused: bool = False) -> CallToolResult:
    """Text, the structured job and at most one small image; links only when KLING_MCP_RESULT_LINKS asks for them."""
    result = job_result(job, runtime=runtime, reused=reused)
    content: list[Any] = [TextContent(type="text", text=summary(result, job))]
    if runtime.settings.result_links:
        content.extend(_job_links(result, job))
    if result.local_path and runtime.settings.preview_max_bytes > 0:
        content.extend(await _preview_image(job, runtime))
    return CallToolResult(
        content=content,
        structured_content=result.model_dump(mode="json"),
        is_error=result.status in GATEWAY_FAILED,
    )


def _job_links(result: JobResult, job: Job) -> list[ResourceLink]:
    links = [
        ResourceLink(
            type="resource_link",
            uri=result.resource_uri,
            name=f"job {result.request_id}",
            mime_type="application/json",
            description=f"Kling job ({result.status})",
        )
    ]
    if result.status == "completed" and result.media_url:
        links.append(
            ResourceLink(
                type="resource_link", uri=result.media_url, name=f"{result.request_id}.mp4", mime_type="video/mp4"
            )
        )
    if result.local_path:
        if REMOTE_CALLER.get():  # a file: URI would name the server's folders, and no remote client can open it
            video = job_uri(job.id, "video")
            links.append(ResourceLink(type="resource_link", uri=video, name=f"{job.id}.mp4", mime_type="video/mp4"))
        else:
            links.append(file_link(Path(result.local_path), size=job.size_bytes))
        preview = _preview_uri(job)
        links.append(
            ResourceLink(type="resource_link", uri=preview, name=preview.rsplit("/", 1)[1], mime_type="image/jpeg")
        )
    return links


def file_link(path: Path, *, size: int | None) -> ResourceLink:
    return ResourceLink(
        type="resource_link", uri=path.absolute().as_uri(), name=path.name, mime_type="video/mp4", size=size
    )


async def _preview_image(job: Job, runtime: "Runtime") -> list[ImageContent]:
    """A small image of the video, so a vision model or a person sees what was made; never fails the call."""
    try:
        data = await runtime.media.preview_within(job, runtime.settings.preview_max_bytes)
    except (KlingError, OSError) as exc:
        log.warning("no preview for %s: %s", job.id, exc)
        return []
    return [ImageContent(type="image", data=base64.b64encode(data).decode(), mime_type="image/jpeg")]


def film_result(film_out: FilmOut, method_text: str, *, links: bool, settings: Settings) -> CallToolResult:
    remote = REMOTE_CALLER.get()
    if remote:  # the file relative to the output folder, its URI as a relative reference to it
        relative = shown_path(film_out.path, settings) or ""
        film_out = film_out.model_copy(update={"path": relative, "uri": quote(relative)})
    saved = (
        f"Saved on the server as {film_out.path} (in its output folder)." if remote else f"Saved to: {film_out.path}"
    )
    text = (
        f"Joined {len(film_out.request_ids)} clips ({method_text}): {film_out.duration_s:.1f} s, "
        f"{film_out.width}x{film_out.height}, {film_out.size_bytes / 1e6:.1f} MB.\n"
        f"{saved}\n"
        "Free: made locally, no gateway request and nothing billed.\n"
        "Next: play or share the file above; it is local only (no media URL or job resource)."
    )
    content: list[Any] = [TextContent(type="text", text=text)]
    if links and not remote:
        content.append(file_link(Path(film_out.path), size=film_out.size_bytes))
    return CallToolResult(content=content, structured_content=film_out.model_dump(mode="json"))
