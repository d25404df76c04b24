"""The job resources: ``kling://jobs`` and, per job, its JSON, images and video."""

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from mcp.server import ServerRequestContext
from mcp.server.context import CallNext, HandlerResult
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError

from kling_mcp.errors import KlingError
from kling_mcp.models import Job
from kling_mcp.previews import MediaWorker, local_video
from kling_mcp.server.owners import owner_of
from kling_mcp.server.results import job_result, shown_path
from kling_mcp.server.state import AppState, StateRef, runtime_of
from kling_mcp.server.uris import JOB_URI_PREFIX, JOBS_URI

if TYPE_CHECKING:
    from kling_mcp.runtime import Runtime

VIDEO_BLOB_MAX_BYTES = 20 * 1024**2
CHAIN_MAX = 100
# Blob reads served at once. Each holds its file in memory, then again base64-encoded: up to about 47 MB for a
# video. More readers wait their turn rather than taking N times that together.
BLOB_READS_MAX = 2

# Images of a finished job: (URI suffix, title, description, MIME type, the MediaWorker method that makes it).
FRAME_RESOURCES: tuple[tuple[str, str, str, str, Callable[[MediaWorker, Job], Awaitable[Path]]], ...] = (
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
BLOB_SUFFIXES = frozenset({"video", *(suffix for suffix, *_ in FRAME_RESOURCES)})


async def read_blob(path: Path) -> bytes:
    return await anyio.Path(path).read_bytes()


def _is_blob(uri: str) -> bool:
    rest = uri.removeprefix(JOB_URI_PREFIX)
    return rest != uri and "/" in rest and rest.rsplit("/", 1)[1] in BLOB_SUFFIXES


class BlobReads:
    """Server middleware: at most BLOB_READS_MAX blob resources (video, images) are read and encoded at once.

    Middleware rather than a limit in the handlers: the SDK base64-encodes the bytes after the handler returns, and
    that copy is the larger one.
    """

    def __init__(self, limit: int = BLOB_READS_MAX) -> None:
        self.limiter = anyio.CapacityLimiter(limit)

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method != "resources/read" or not _is_blob(str((ctx.params or {}).get("uri", ""))):
            return await call_next(ctx)
        async with self.limiter:
            return await call_next(ctx)


async def _job(runtime: "Runtime", request_id: str, ctx: Context[AppState]) -> Job:
    """The caller's job; another owner's is not found, in the words of a missing one."""
    try:
        return await runtime.engine.get(request_id, owner=owner_of(ctx))
    except KlingError as exc:
        raise ResourceNotFoundError(str(exc)) from None


async def chain_of(runtime: "Runtime", job: Job) -> list[str]:
    """Ids from the first clip of an extend_video chain to this one (the owner's clips only)."""
    chain = [job.id]
    current = job
    while current.parent_id and len(chain) < CHAIN_MAX:
        try:
            current = await runtime.store.get(current.parent_id, owner=job.owner)
        except KlingError:
            break
        chain.insert(0, current.id)
    return chain


async def job_resource(request_id: str, ctx: Context[AppState]) -> str:
    runtime = await runtime_of(ctx)
    job = await _job(runtime, request_id, ctx)
    data = job_result(job, runtime=runtime).model_dump(mode="json")
    data["chain"] = await chain_of(runtime, job)
    return json.dumps(data, indent=2)


async def video_resource(request_id: str, ctx: Context[AppState]) -> bytes:
    runtime = await runtime_of(ctx)
    job = await _job(runtime, request_id, ctx)
    try:
        path = local_video(job)
    except KlingError as exc:
        raise ResourceError(str(exc)) from None
    size = (await anyio.Path(path).stat()).st_size
    if size > VIDEO_BLOB_MAX_BYTES:
        raise ResourceError(
            f"The video is {size / 1024**2:.1f} MB, above the {VIDEO_BLOB_MAX_BYTES // 1024**2} MB blob limit. "
            f"Open it at {shown_path(path, runtime.settings)} or {job.media_url}."
        )
    return await read_blob(path)


def _frame_resource(
    make: Callable[[MediaWorker, Job], Awaitable[Path]],
) -> Callable[[str, Context[AppState]], Awaitable[bytes]]:
    async def read(request_id: str, ctx: Context[AppState]) -> bytes:
        runtime = await runtime_of(ctx)
        job = await _job(runtime, request_id, ctx)
        try:
            return await read_blob(await make(runtime.media, job))
        except KlingError as exc:
            raise ResourceError(str(exc)) from None

    return read


def register_resources(server: MCPServer[AppState], state_ref: StateRef) -> None:
    server.resource(
        JOB_URI_PREFIX + "{request_id}",
        name="job",
        title="Kling job",
        description="A video job as JSON: status, media_url, local_path, parameters, timings.",
        mime_type="application/json",
    )(job_resource)
    for suffix, title, description, mime, make in FRAME_RESOURCES:
        server.resource(
            JOB_URI_PREFIX + "{request_id}/" + suffix,
            name=suffix.split(".")[0],
            title=title,
            description=description,
            mime_type=mime,
        )(_frame_resource(make))
    server.resource(
        JOB_URI_PREFIX + "{request_id}/video",
        name="video",
        title="Video file",
        description=f"The finished MP4 as a blob, up to {VIDEO_BLOB_MAX_BYTES // 1024**2} MB.",
        mime_type="video/mp4",
    )(video_resource)

    async def jobs_resource() -> str:
        runtime = await state_ref.runtime()
        jobs = await runtime.store.recent(owner=owner_of(), limit=50)  # a static resource gets no request context
        return json.dumps([job_result(j, runtime=runtime).model_dump(mode="json") for j in jobs], indent=2)

    server.resource(
        JOBS_URI,
        name="jobs",
        title="Recent Kling jobs",
        description="The 50 most recent jobs, newest first.",
        mime_type="application/json",
    )(jobs_resource)
