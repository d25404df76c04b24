"""What an agent (or a person) sees of a finished job, and joining jobs into one film. MCP-agnostic.

Every function here blocks on PyAV or Pillow; ``MediaWorker`` runs them in worker threads, a bounded number at a
time, so a long concat never stalls the event loop or other calls.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import anyio

from kling_mcp.errors import InvalidInputError, JobError
from kling_mcp.files import safe_name
from kling_mcp.models import Job

if TYPE_CHECKING:
    from kling_mcp.media import ConcatResult

T = TypeVar("T")

PREVIEW_MAX_BYTES = 200_000
# Joined films live in their own folder under the output folder, apart from the downloads (named by job id), so
# no title can name a downloaded video; and a film never replaces an existing file (media.concat numbers it).
FILMS_FOLDER = "films"


class MediaWorker:
    """Runs blocking media work off the event loop, ``slots`` jobs at a time."""

    def __init__(self, previews_dir: Path, *, slots: int = 1) -> None:
        self.previews_dir = previews_dir
        self._limiter = anyio.CapacityLimiter(slots)

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        return self._limiter

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _path(self, job: Job, suffix: str) -> Path:
        return self.previews_dir / f"{safe_name(job.id)}.{suffix}"

    async def poster(self, job: Job) -> Path:
        """A JPEG frame about a third in, at most 200 KB: made once, then read from disk."""
        video = local_video(job)
        out = self._path(job, "poster.jpg")
        if not out.exists():
            from kling_mcp.media import poster

            await self.run(lambda: poster(video, out, max_bytes=PREVIEW_MAX_BYTES))
        return out

    async def contact_sheet(self, job: Job) -> Path:
        """One frame from the middle of each shot of a storyboard, as one JPEG of at most 200 KB."""
        video = local_video(job)
        out = self._path(job, "sheet.jpg")
        if not out.exists():
            from kling_mcp.media import contact_sheet, probe

            shots = job.request.shots or ()
            planned = sum(s.duration for s in shots) or 1

            def make() -> Path:
                actual = probe(video).duration_s
                times, start = [], 0.0
                for shot in shots:
                    times.append((start + shot.duration / 2) * actual / planned)
                    start += shot.duration
                return contact_sheet(
                    video, out, times=times, cols=min(3, len(times)), thumb_w=320, max_bytes=PREVIEW_MAX_BYTES
                )

            await self.run(make)
        return out

    async def preview(self, job: Job) -> Path:
        """The image that represents a job: the contact sheet of a storyboard, else the poster."""
        if job.request.shots and len(job.request.shots) > 1:
            return await self.contact_sheet(job)
        return await self.poster(job)

    async def preview_within(self, job: Job, max_bytes: int) -> bytes:
        """The preview's JPEG bytes, recompressed and then scaled down when above ``max_bytes``.

        Raises ``MediaError`` when even a tiny image does not fit; the file on disk (what the resources serve) stays.
        """
        data = await anyio.Path(await self.preview(job)).read_bytes()
        if len(data) <= max_bytes:
            return data

        def shrink() -> bytes:
            from PIL import Image

            from kling_mcp.media import encode_jpeg

            with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
                return encode_jpeg(image, max_bytes=max_bytes, max_side=None)

        return await self.run(shrink)

    async def last_frame(self, job: Job) -> Path:
        video = local_video(job)
        out = self._path(job, "last-frame.png")
        if not out.exists():
            from kling_mcp.media import last_frame

            await self.run(last_frame, video, out)
        return out


def local_video(job: Job) -> Path:
    """The job's downloaded MP4, or an error that says why there is none and what to do."""
    if job.status != "completed":
        raise JobError(
            f"Job {job.id} is {job.status}, not completed.",
            hint=f'Wait for it: check_status(request_id="{job.id}", wait_seconds=45).',
        )
    if not job.local_path or not Path(job.local_path).is_file():
        raise JobError(
            f"Job {job.id} has no local video (download: {job.download_state}).",
            hint="Call check_status for it to retry the download, or enable downloads (KLING_MCP_DOWNLOAD=1).",
        )
    return Path(job.local_path)


def film_path(out_dir: Path, jobs: Sequence[Job], title: str | None) -> Path:
    """Where a film of ``jobs`` is meant to go: ``films/`` under the output folder (a numbered name if taken)."""
    ids = "+".join(j.id for j in jobs)
    stem = safe_name(title) if title else "film-" + hashlib.sha256(ids.encode()).hexdigest()[:12]
    return out_dir / FILMS_FOLDER / f"{stem}.mp4"


async def concat_jobs(worker: MediaWorker, jobs: Sequence[Job], out_dir: Path, title: str | None) -> ConcatResult:
    """Joins finished jobs in order: stream copy when they match, else re-encoded to the first clip's shape."""
    if len(jobs) < 2:
        raise InvalidInputError("request_ids", "at least 2 jobs", len(jobs), "list the clips to join, in order")
    videos = [local_video(job) for job in jobs]
    out = film_path(out_dir, jobs, title)
    from kling_mcp.media import concat

    return await worker.run(concat, videos, out)
