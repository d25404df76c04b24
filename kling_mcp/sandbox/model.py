"""The sandbox gateway's jobs: what a job is, how its outcome is planned and its phase follows from the clock,
and the JSON it answers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args

import anyio

from kling_mcp.sandbox.settings import Faults, StatusStyle
from kling_mcp.sandbox.validation import Endpoint, ParsedRequest

__all__ = [
    "OUTCOMES",
    "PHASES",
    "InsufficientBalance",
    "Job",
    "Outcome",
    "Phase",
    "WebhookDelivery",
    "job_summary",
    "key_digest",
    "plan",
    "status_payload",
    "styled",
]

Outcome = Literal["COMPLETED", "FAILED", "ERROR"]
Phase = Literal["QUEUED", "PROCESSING", "COMPLETED", "FAILED", "ERROR"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
PHASES: tuple[Phase, ...] = get_args(Phase)

TRIGGER_FAIL = "[sandbox:fail]"
TRIGGER_ERROR = "[sandbox:error]"
TRIGGER_ERROR_ONCE = "[sandbox:error-once]"
TRIGGER_HOLD = "[sandbox:hold]"

MODERATION_ERROR = "Content moderation: prompt rejected"
GENERATION_ERROR = "Generation failed: the model could not produce a video for this input"
SYSTEM_ERROR = "Internal error while generating the video; not charged, safe to retry"
RENDER_ERROR = "Internal error: the video could not be encoded; not charged, safe to retry"

_STYLED: dict[StatusStyle, dict[Phase, str]] = {
    "upper": {p: p for p in PHASES},
    "lower": {p: p.lower() for p in PHASES},
    "in_queue": {**{p: p for p in PHASES}, "QUEUED": "IN_QUEUE", "PROCESSING": "IN_PROGRESS"},
}


class InsufficientBalance(Exception):
    """A 402 answer: the key's balance is below the clip's length."""


@dataclass(frozen=True)
class WebhookDelivery:
    attempt: int
    url: str
    status_code: int | None
    error: str | None
    at: float  # gateway clock

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(eq=False)
class Job:
    request_id: str
    endpoint: Endpoint
    key: str
    body: dict[str, Any]
    request: ParsedRequest
    size: tuple[int, int]
    image: bytes | None
    outcome: Outcome
    error: str | None
    hold: bool
    submitted_at: float  # gateway clock, like every float time below
    queued_until: float
    done_at: float
    created_at: datetime
    base_url: str
    webhook_url: str | None
    charged_s: float
    refunded_s: float = 0.0
    status_requests: int = 0  # every authorised status request for this id, faulted or not
    status_polls: int = 0  # the ones answered with the job's status
    media_requests: int = 0
    webhook_deliveries: list[WebhookDelivery] = field(default_factory=list)
    render_started: bool = False
    media_path: Path | None = None
    rendered_at: float | None = None
    render_error: str | None = None
    terminal: Phase | None = None
    completed_at: datetime | None = None
    rendered: anyio.Event = field(default_factory=anyio.Event)
    settled: anyio.Event = field(default_factory=anyio.Event)
    webhooks_done: anyio.Event = field(default_factory=anyio.Event)
    # Read back from another gateway process's record: its charge was made (and is refunded) in that process.
    restored: bool = False
    key_digest: str = ""  # how a restored job, whose key is not kept, knows its key

    def __post_init__(self) -> None:
        if not self.key_digest:
            self.key_digest = key_digest(self.key)

    @property
    def seconds(self) -> int:
        return self.request.seconds

    def phase(self, now: float) -> Phase:
        if self.terminal is not None:
            return self.terminal
        if now < self.queued_until:
            return "QUEUED"
        if self.hold or now < self.done_at:
            return "PROCESSING"
        if self.outcome == "COMPLETED" and not self.rendered.is_set():
            return "PROCESSING"  # the gateway never says COMPLETED before the file exists
        return self.outcome


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def plan(
    key: str,
    endpoint: Endpoint,
    body: Mapping[str, Any],
    request: ParsedRequest,
    faults: Faults,
    roll: Callable[[float], bool],
    error_once_seen: set[str],
) -> tuple[Outcome, str | None, bool]:
    """A new job's outcome, its error text, and whether it is held: prompt triggers first, then the fault rates.

    ``error_once_seen`` holds the requests that already ended ERROR through ``[sandbox:error-once]``.
    """
    text = "\n".join(request.prompts)
    hold = TRIGGER_HOLD in text
    if TRIGGER_FAIL in text:
        return "FAILED", MODERATION_ERROR, hold
    if TRIGGER_ERROR_ONCE in text:
        fingerprint = json.dumps([key, endpoint, body], sort_keys=True, ensure_ascii=False)
        if fingerprint not in error_once_seen:
            error_once_seen.add(fingerprint)
            return "ERROR", SYSTEM_ERROR, hold
        return "COMPLETED", None, hold
    if TRIGGER_ERROR in text:
        return "ERROR", SYSTEM_ERROR, hold
    if roll(faults.rate_failed):
        return "FAILED", GENERATION_ERROR, hold
    if roll(faults.rate_error):
        return "ERROR", SYSTEM_ERROR, hold
    return "COMPLETED", None, hold


def styled(phase: Phase, style: StatusStyle) -> str:
    return _STYLED[style][phase]


def status_payload(job: Job, phase: Phase, faults: Faults, base_url: str) -> dict[str, Any]:
    """The JSON the status route answers for ``job`` in ``phase`` (and the webhook payload once it has ended)."""
    body: dict[str, Any] = {"request_id": job.request_id, "status": styled(phase, faults.status_style)}
    if phase == "COMPLETED":
        url = f"{base_url.rstrip('/')}/media/{job.request_id}.mp4"
        body["output"] = {
            "media_url": url if faults.media_url_as_string else [url],
            "media_type": "video/mp4",
        }
    elif phase in ("FAILED", "ERROR"):
        body["error"] = job.error
    body["created_at"] = _iso(job.created_at)
    if job.completed_at is not None:
        body["completed_at"] = _iso(job.completed_at)
    return body


def job_summary(job: Job, phase: Phase) -> dict[str, Any]:
    """What the admin routes show of a job."""
    return {
        "request_id": job.request_id,
        "endpoint": job.endpoint,
        "body": job.body,
        "status": phase,
        "outcome": job.outcome,
        "hold": job.hold,
        "seconds": job.seconds,
        "charged_s": job.charged_s,
        "refunded_s": job.refunded_s,
        "status_polls": job.status_polls,
        "status_requests": job.status_requests,
        "media_requests": job.media_requests,
        "rendered": job.rendered.is_set(),
        "webhook_deliveries": [
            {"attempt": d.attempt, "status_code": d.status_code, "error": d.error} for d in job.webhook_deliveries
        ],
    }
