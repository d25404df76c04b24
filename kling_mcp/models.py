"""The job model, stated once: its statuses and the sets of them that mean something, its mode, the request it
pays for, and the job as the ledger holds it. MCP-agnostic, and free of the gateway client and the ledger, so
both (and the server's results) can import it.

Each ``Job`` field carries its ledger column (``Column``): the ledger derives its schema, its row mapping and its
migrations from these fields, so a column is declared in one place.
"""

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kling_mcp import limits
from kling_mcp.errors import InvalidInputError, Measured

LOCAL_OWNER: Final = "local"  # who owns jobs made without a token: over stdio, or over HTTP without auth

Mode = Literal["live", "sandbox"]  # live requests cost money; sandbox ones go to the built-in gateway

Endpoint = Literal["text_to_video", "image_to_video"]

# The five states a gateway answer is normalised onto (docs/pixazo-contract.md §5 Status polling and status values).
GatewayState = Literal["queued", "processing", "completed", "failed", "error"]
# A job adds three of its own: 'submitting' before the gateway has answered the submit, 'unknown' when it never will,
# 'cancelled' when its client cancelled it (the server stops following it; the gateway has no cancel).
JobStatus = Literal["submitting", GatewayState, "unknown", "cancelled"]
CANCELLED: Final[JobStatus] = "cancelled"  # the one status nothing moves a job out of

RUNNING: Final[frozenset[JobStatus]] = frozenset({"queued", "processing"})  # at the gateway, polled until final
ACTIVE: Final[frozenset[JobStatus]] = RUNNING | {"submitting"}  # counts against KLING_MCP_MAX_ACTIVE_JOBS
FINAL: Final[frozenset[JobStatus]] = frozenset({"completed", "failed", "error", "unknown", "cancelled"})
NO_VIDEO: Final[frozenset[JobStatus]] = FINAL - {"completed"}  # ended without a video: no download is owed
GATEWAY_FAILED: Final[frozenset[JobStatus]] = frozenset({"failed", "error"})  # the gateway ended it without a video
# Jobs an identical request does not get back (dedupe): they ended without a video nobody wants to pay for twice.
NOT_REUSED: Final[frozenset[JobStatus]] = GATEWAY_FAILED | {"cancelled"}
# ERROR is a system failure and not billed (docs/pixazo-contract.md §5 Status polling and status values).
NOT_CHARGED: Final[frozenset[JobStatus]] = frozenset({"error"})
# How far along a job is. A job never moves to a lower rank: a late or reordered answer (PROCESSING, then IN_QUEUE)
# is ignored. A resubmit starts a new attempt, which is not a move of this kind.
STATUS_RANK: Final[Mapping[JobStatus, int]] = MappingProxyType(
    {
        "submitting": 0,
        "queued": 1,
        "processing": 2,
        "completed": 3,
        "failed": 3,
        "error": 3,
        "unknown": 3,
        "cancelled": 3,
    }
)

DownloadState = Literal["off", "pending", "downloading", "done", "failed"]
DOWNLOAD_OWED: Final[frozenset[DownloadState]] = frozenset({"pending", "downloading"})


class GenerationRequest(BaseModel):
    """One paid generation, validated against every limit before anything is sent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint: Endpoint
    prompt: str | None = None
    shots: tuple[limits.Shot, ...] | None = None
    duration: int = limits.DURATION_DEFAULT_S
    aspect_ratio: limits.AspectRatio = limits.ASPECT_RATIO_DEFAULT
    image_url: str | None = None

    @model_validator(mode="after")
    def _check(self) -> "GenerationRequest":
        if self.prompt is not None:
            limits.check_prompt(self.prompt)
        if self.shots is not None:
            if self.prompt is not None:
                raise InvalidInputError(
                    "shots",
                    "left out when prompt is given",
                    Measured("both shots and prompt"),
                    "put the prompt into the first shot",
                )
            limits.check_shots(self.shots)
        else:
            limits.check_duration(self.duration)
        if self.endpoint == "text_to_video":
            if self.prompt is None and self.shots is None:
                raise InvalidInputError("prompt", "given for text-to-video", None, "describe the clip, or give shots")
            if self.image_url is not None:
                raise InvalidInputError(
                    "image_url", "left out for text-to-video", self.image_url, "use the image-to-video endpoint"
                )
        elif not self.image_url:
            raise InvalidInputError("image_url", "given for image-to-video", None, "pass the first frame's URL")
        return self

    @property
    def video_seconds(self) -> int:
        """Seconds of output video, which is what the gateway bills."""
        return sum(s.duration for s in self.shots) if self.shots else self.duration

    def body(self) -> dict[str, Any]:
        """The JSON body the gateway expects (docs/pixazo-contract.md §3 Request bodies and limits)."""
        body: dict[str, Any] = {"aspect_ratio": self.aspect_ratio}
        if self.shots is not None:
            body["multi_prompt"] = [{"prompt": s.prompt, "duration": s.duration} for s in self.shots]
        else:
            body["duration"] = self.duration
            if self.prompt is not None:
                body["prompt"] = self.prompt
        if self.image_url is not None:
            body["image_url"] = self.image_url
        return body

    @property
    def title(self) -> str | None:
        """What the clip shows, in words: the prompt, or a storyboard's first shot."""
        return self.prompt or (self.shots[0].prompt if self.shots else None)

    def fingerprint(self) -> str:
        """Stable hash of what would be paid for; identical requests share it."""
        canonical = json.dumps({"endpoint": self.endpoint, **self.body()}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def without_inline_image(self) -> "GenerationRequest":
        """The request with a ``data:`` image replaced by its digest: what a final job keeps (it is never resent)."""
        if not is_inline_image(self.image_url):
            return self
        assert self.image_url is not None
        return self.model_copy(update={"image_url": _digest_of(self.image_url)})

    def hashed(self) -> "GenerationRequest":
        """The request with its prompts and image reference replaced by digests; durations and shape stay."""
        shots = (
            tuple(s.model_copy(update={"prompt": _digest_of(s.prompt)}) for s in self.shots)
            if self.shots is not None
            else None
        )
        return self.model_copy(
            update={
                "prompt": _digest_of(self.prompt) if self.prompt is not None else None,
                "shots": shots,
                "image_url": _digest_of(self.image_url) if self.image_url is not None else None,
            }
        )


_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def is_digest(text: str | None) -> bool:
    """Whether the ledger keeps only the digest of this text (an inline image once final, anything after retention)."""
    return text is not None and _DIGEST.fullmatch(text) is not None


def digest(data: bytes) -> str:
    """What the ledger keeps of something it no longer holds: ``sha256:`` and the hex digest."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _digest_of(text: str) -> str:
    """The digest of a text; of the image itself for a base64 ``data:`` URI, so it matches the file's sha256sum."""
    if _DIGEST.fullmatch(text):
        return text  # already a digest
    head, comma, payload = text.partition(",")
    if text.lower().startswith("data:") and comma and head.lower().endswith(";base64"):
        try:
            return digest(base64.b64decode(payload, validate=True))
        except (binascii.Error, ValueError):
            pass
    return digest(text.encode())


def is_inline_image(url: str | None) -> bool:
    return url is not None and url[:5].lower() == "data:"


@dataclass(frozen=True)
class Column:
    """How a field is kept in the ledger.

    ``sql`` is the column's declaration and ``since`` the ledger schema version that added it; neither may change
    once released, because migrations are derived from them. ``name`` is the column's name where it differs from
    the field's, and ``as_json`` stores the value as JSON text.
    """

    sql: str
    since: int = 1
    name: str | None = None
    as_json: bool = False


class Job(BaseModel):
    """A job as the ledger holds it."""

    model_config = ConfigDict(frozen=True)

    job_id: Annotated[str, Column("TEXT PRIMARY KEY")]
    request_id: Annotated[str | None, Column("TEXT")]  # the gateway's first request id: the job's public id
    current_request_id: Annotated[str | None, Column("TEXT")]  # the attempt being polled
    polling_url: Annotated[str | None, Column("TEXT")]
    status: Annotated[JobStatus, Column("TEXT NOT NULL")]
    mode: Annotated[Mode, Column("TEXT NOT NULL")]
    request: Annotated[GenerationRequest, Column("TEXT NOT NULL", name="request_json", as_json=True)]
    fingerprint: Annotated[str, Column("TEXT NOT NULL")]
    # Unique per owner (an index in the ledger), so two people may use the same key.
    idempotency_key: Annotated[str | None, Column("TEXT", since=2, name="owner_idempotency_key")] = None
    video_seconds: Annotated[int, Column("INTEGER NOT NULL")]
    attempts: Annotated[int, Column("INTEGER NOT NULL DEFAULT 0")]
    attempt_ids: Annotated[tuple[str, ...], Column("TEXT NOT NULL DEFAULT '[]'", as_json=True)]
    media_url: Annotated[str | None, Column("TEXT")]
    error: Annotated[str | None, Column("TEXT")]
    created_at: Annotated[float, Column("REAL NOT NULL")]
    submitted_at: Annotated[float | None, Column("REAL")]
    updated_at: Annotated[float, Column("REAL NOT NULL")]
    finished_at: Annotated[float | None, Column("REAL")]
    download_state: Annotated[DownloadState, Column("TEXT NOT NULL DEFAULT 'off'")]
    download_error: Annotated[str | None, Column("TEXT")]
    download_attempts: Annotated[int, Column("INTEGER NOT NULL DEFAULT 0")]
    local_path: Annotated[str | None, Column("TEXT")]
    sha256: Annotated[str | None, Column("TEXT")]
    size_bytes: Annotated[int | None, Column("INTEGER")]
    parent_id: Annotated[str | None, Column("TEXT")]  # the job this one continues (extend_video)
    process: Annotated[str | None, Column("TEXT", name="owner")] = None  # the process that wrote 'submitting'
    # Whose job it is: a token's name or a JWT's subject; only the owner sees it.
    owner: Annotated[str, Column(f"TEXT NOT NULL DEFAULT '{LOCAL_OWNER}'", since=2, name="principal")] = LOCAL_OWNER
    # Names this job in its webhook URL, so it is kept out of every dump and repr.
    webhook_token: Annotated[str | None, Column("TEXT UNIQUE"), Field(repr=False, exclude=True)] = None
    # The replica driving the job (polls, retries, download) while lease_until is ahead: one at a time.
    lease_owner: Annotated[str | None, Column("TEXT", since=3)] = None
    lease_until: Annotated[float | None, Column("REAL", since=3)] = None

    @property
    def id(self) -> str:
        """The public id: the gateway's first request id once known, else the local job id."""
        return self.request_id or self.job_id

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def settled(self) -> bool:
        """Final, and no download still to come: nothing about this job will change by itself."""
        return self.final and self.download_state not in DOWNLOAD_OWED


def expected_seconds(job: Job, time_scale: float = 1.0) -> float:
    """Expected seconds from submit to completion, from the timing model."""
    queue = sum(limits.TIMING_QUEUE_S) / 2
    work = limits.estimated_render_seconds(job.video_seconds, image=job.request.endpoint == "image_to_video")
    return (queue + work) / time_scale
