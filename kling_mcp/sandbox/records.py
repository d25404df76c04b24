"""The sandbox gateway's job records on disk, so a gateway started again on the same folder knows earlier jobs.

The built-in sandbox lives and dies with its server process, and some clients start one server process per tool
call (LangChain's stateless mode), each with a new sandbox on a new port. A job is written once when it is created
and again when it changes by hand (``finish``) or its render fails; its phase is never written, because it follows
from the time since submit. One JSON file per job, replaced atomically, so processes sharing the folder never
interleave writes nor read half a record. The API key is kept only as a digest.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast, get_args

from kling_mcp.files import replacing
from kling_mcp.sandbox.model import OUTCOMES, Job, Outcome
from kling_mcp.sandbox.validation import BadRequest, Endpoint, parse_submit

__all__ = ["JobRecord", "JobRecords", "job_from_record", "record_of"]

log = logging.getLogger(__name__)

_VERSION = 1
# The shape ids.request_id makes: an id from a URL becomes a file name only if it has it.
_REQUEST_ID = re.compile(r"[a-z0-9-]{1,100}_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_ENDPOINTS: tuple[Endpoint, ...] = get_args(Endpoint)


@dataclass(frozen=True)
class JobRecord:
    """What a job needs to be answered for, and rendered, by another gateway process.

    Times are offsets from the submit, whose moment is ``created_wall`` (Unix seconds): gateway clocks are
    per process, the wall clock is shared.
    """

    request_id: str
    endpoint: Endpoint
    key_digest: str
    body: dict[str, Any]
    size: tuple[int, int]
    outcome: Outcome
    error: str | None
    hold: bool
    created_wall: float
    queue_s: float
    done_s: float
    charged_s: float
    render_error: str | None

    def as_json(self) -> dict[str, Any]:
        return {"version": _VERSION, **{name: getattr(self, name) for name in self.__dataclass_fields__}}

    @classmethod
    def from_json(cls, data: object) -> JobRecord:
        """Raises ``ValueError`` (or ``KeyError``/``TypeError``) for a record this version cannot read."""
        if not isinstance(data, dict) or data.get("version") != _VERSION:
            raise ValueError("not a record of this version")
        if data["endpoint"] not in _ENDPOINTS or data["outcome"] not in OUTCOMES:
            raise ValueError("unknown endpoint or outcome")
        width, height = data["size"]
        return cls(
            request_id=str(data["request_id"]),
            endpoint=cast(Endpoint, data["endpoint"]),
            key_digest=str(data["key_digest"]),
            body=dict(data["body"]),
            size=(int(width), int(height)),
            outcome=cast(Outcome, data["outcome"]),
            error=None if data["error"] is None else str(data["error"]),
            hold=bool(data["hold"]),
            created_wall=float(data["created_wall"]),
            queue_s=float(data["queue_s"]),
            done_s=float(data["done_s"]),
            charged_s=float(data["charged_s"]),
            render_error=None if data["render_error"] is None else str(data["render_error"]),
        )


def record_of(job: Job) -> JobRecord:
    return JobRecord(
        request_id=job.request_id,
        endpoint=job.endpoint,
        key_digest=job.key_digest,
        body=job.body,
        size=job.size,
        outcome=job.outcome,
        error=job.error,
        hold=job.hold,
        created_wall=job.created_at.timestamp(),
        queue_s=job.queued_until - job.submitted_at,
        done_s=job.done_at - job.submitted_at,
        charged_s=job.charged_s,
        render_error=job.render_error,
    )


def job_from_record(record: JobRecord, *, now: float, wall_now: float, video: Path) -> Job | None:
    """The job ``record`` describes, on a gateway whose clock reads ``now``; None if its body no longer passes.

    It is as old as the wall clock says, so its phase is what it would have been had its gateway kept running.
    ``video`` is where its render goes; a file there is the finished render.
    """
    try:
        body, request = parse_submit(json.dumps(record.body).encode(), record.endpoint)
    except BadRequest as exc:
        log.warning("job record %s no longer valid (%s); treated as unknown", record.request_id, exc)
        return None
    submitted_at = now - max(0.0, wall_now - record.created_wall)
    job = Job(
        request_id=record.request_id,
        endpoint=record.endpoint,
        key="",
        key_digest=record.key_digest,
        body=body,
        request=request,
        size=record.size,
        image=None,
        outcome=record.outcome,
        error=record.error,
        hold=record.hold,
        submitted_at=submitted_at,
        queued_until=submitted_at + record.queue_s,
        done_at=submitted_at + record.done_s,
        created_at=datetime.fromtimestamp(record.created_wall, UTC),
        base_url="",
        webhook_url=None,  # the process that took the job delivers its webhook, if it lives to
        charged_s=record.charged_s,
        render_error=record.render_error,
        restored=True,
    )
    if record.render_error is not None or video.is_file():
        job.render_started = True
        job.media_path = None if record.render_error is not None else video
        job.rendered.set()
    return job


class JobRecords:
    """One folder of job records (``<request_id>.json``) and the input images of jobs not yet rendered."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, request_id: str, suffix: str) -> Path | None:
        if _REQUEST_ID.fullmatch(request_id) is None:
            return None
        return self.folder / f"{request_id}{suffix}"

    def save(self, record: JobRecord) -> None:
        path = self._path(record.request_id, ".json")
        if path is None:
            raise ValueError(f"not a request id: {record.request_id!r}")
        _replace(path, json.dumps(record.as_json(), ensure_ascii=False).encode())

    def load(self, request_id: str) -> JobRecord | None:
        """The record of ``request_id``, or None when there is none (or it cannot be read)."""
        path = self._path(request_id, ".json")
        if path is None:
            return None
        try:
            return JobRecord.from_json(json.loads(path.read_bytes()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("job record %s unreadable (%s); treated as unknown", path, exc)
            return None

    def save_image(self, request_id: str, image: bytes) -> None:
        path = self._path(request_id, ".image")
        if path is not None:
            _replace(path, image)

    def load_image(self, request_id: str) -> bytes | None:
        path = self._path(request_id, ".image")
        if path is None:
            return None
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def drop_image(self, request_id: str) -> None:
        path = self._path(request_id, ".image")
        if path is not None:
            path.unlink(missing_ok=True)


def _replace(path: Path, content: bytes) -> None:
    # A reader sees the old file or the new one, never part of either.
    with replacing(path) as tmp:
        tmp.write_bytes(content)
