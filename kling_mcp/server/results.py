"""What a tool call returns: the result models (the tools' outputSchema) and their rendering for a model to read."""

from __future__ import annotations

import base64
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
from mcp.types import CallToolResult, ImageContent, ResourceLink, TextContent
from pydantic import BaseModel, ConfigDict

from kling_mcp import limits
from kling_mcp.errors import KlingError
from kling_mcp.models import ACTIVE, GATEWAY_FAILED, Endpoint, Job, JobStatus, Mode, expected_seconds
from kling_mcp.server.uris import job_uri

if TYPE_CHECKING:
    from kling_mcp.runtime import Runtime

log = logging.getLogger("kling_mcp")


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


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts is not None else None


def _next_step(job: Job, wait_hint: float) -> tuple[str | None, bool | None]:
    """What the agent should do next, and whether retrying is free."""
    if not job.settled:
        return check_call(job.id, wait_hint), None
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


def job_result(job: Job, *, runtime: Runtime, reused: bool = False, wait_hint: float = 45.0) -> JobResult:
    now = time.time()
    start = job.submitted_at or job.created_at
    end = job.finished_at if job.final else None
    eta = None if job.final else max(0.0, expected_seconds(job, runtime.engine.config.time_scale) - (now - start))
    nxt, retry_free = _next_step(job, wait_hint)
    return JobResult(
        request_id=job.id,
        status=job.status,
        done=job.settled,
        media_url=job.media_url,
        local_path=job.local_path,
        resource_uri=job_uri(job.id),
        mode=job.mode,
        params=_params(job),
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


def job_out(job: Job, *, runtime: Runtime) -> JobOut:
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


def _state_lines(result: JobResult, job: Job) -> list[str]:
    if result.status == "completed":
        lines = [f"Video ready ({job.video_seconds} s, {result.params.aspect_ratio}): {result.media_url}"]
        if result.local_path:
            lines.append(f"Saved to: {result.local_path}")
        elif result.download.startswith("failed"):
            lines.append(f"Download {result.download}; the URL above may expire, fetch it soon.")
        return lines
    if result.status in ACTIVE:
        eta = f", about {result.eta_s:.0f}s left" if result.eta_s else ""
        return [
            f"Job {result.request_id} is {result.status} ({result.elapsed_s:.0f}s elapsed{eta}).",
            "Still running is normal; the job continues in the background.",
        ]
    if result.status == "unknown":
        return [f"Job {result.request_id}: submit outcome unknown. {result.error}"]
    return [f"Job {result.request_id} ended {result.status.upper()}: {result.error}"]


def summary(result: JobResult, job: Job) -> str:
    """The text a model reads: what happened, what to do next, what it cost, where the job lives."""
    lines = _state_lines(result, job)
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


async def tool_result(job: Job, *, runtime: Runtime, reused: bool = False, wait_hint: float = 45.0) -> CallToolResult:
    result = job_result(job, runtime=runtime, reused=reused, wait_hint=wait_hint)
    content: list[Any] = [
        TextContent(type="text", text=summary(result, job)),
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
        content.append(file_link(Path(result.local_path), size=job.size_bytes))
        content.extend(await _preview_blocks(job, runtime))
    return CallToolResult(
        content=content,
        structured_content=result.model_dump(mode="json"),
        is_error=result.status in GATEWAY_FAILED,
    )


def file_link(path: Path, *, size: int | None) -> ResourceLink:
    return ResourceLink(
        type="resource_link", uri=path.absolute().as_uri(), name=path.name, mime_type="video/mp4", size=size
    )


async def _preview_blocks(job: Job, runtime: Runtime) -> list[Any]:
    """A small image of the video, so a vision model or a person sees what was made; never fails the call."""
    try:
        path = await runtime.media.preview(job)
        data = await anyio.Path(path).read_bytes()
    except KlingError as exc:
        log.warning("no preview for %s: %s", job.id, exc)
        return []
    uri = job_uri(job.id, "contact-sheet.jpg" if path.name.endswith(".sheet.jpg") else "poster.jpg")
    return [
        ImageContent(type="image", data=base64.b64encode(data).decode(), mime_type="image/jpeg"),
        ResourceLink(type="resource_link", uri=uri, name=path.name, mime_type="image/jpeg", size=len(data)),
    ]


def film_result(film_out: FilmOut, jobs_count: int, method_text: str) -> CallToolResult:
    text = (
        f"Joined {jobs_count} clips ({method_text}): {film_out.duration_s:.1f} s, "
        f"{film_out.width}x{film_out.height}.\nSaved to: {film_out.path}"
    )
    return CallToolResult(
        content=[TextContent(type="text", text=text), file_link(Path(film_out.path), size=film_out.size_bytes)],
        structured_content=film_out.model_dump(mode="json"),
    )
