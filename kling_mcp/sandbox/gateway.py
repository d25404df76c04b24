"""The sandbox gateway's state: the job table, balances, timing and renders. HTTP lives in ``app.py``, what a
job is and the JSON it answers in ``model.py``, webhook delivery in ``webhooks.py``.

A job's status is a function of the clock, computed when asked: nothing has to tick for a poll to see
QUEUED, PROCESSING or a terminal state, so tests drive time with an injected clock. A background task still
checks pending jobs a few times a second to refund, stamp ``completed_at`` and fire webhooks for jobs nobody polls.
With ``jobs_dir`` every job is also recorded on disk (``records.py``), and a later gateway answers for it.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import httpx2
from anyio.abc import TaskGroup

from kling_mcp import limits
from kling_mcp.config import I2V_API_ID, T2V_API_ID
from kling_mcp.errors import InvalidInputError
from kling_mcp.netguard import guarded_client
from kling_mcp.sandbox import ids, render
from kling_mcp.sandbox.images import check_image_bytes, load_image
from kling_mcp.sandbox.model import (
    MODERATION_ERROR,
    OUTCOMES,
    PHASES,
    RENDER_ERROR,
    SYSTEM_ERROR,
    InsufficientBalance,
    Job,
    Outcome,
    Phase,
    WebhookDelivery,
    job_summary,
    key_digest,
    plan,
    status_payload,
    styled,
)
from kling_mcp.sandbox.records import JobRecords, job_from_record, record_of
from kling_mcp.sandbox.render import RenderCancelled
from kling_mcp.sandbox.settings import Faults, SandboxConfig
from kling_mcp.sandbox.validation import BadRequest, Endpoint, check_webhook_url, parse_submit
from kling_mcp.sandbox.webhooks import deliver_webhook

__all__ = [
    "OUTCOMES",
    "InsufficientBalance",
    "Job",
    "Outcome",
    "Phase",
    "SandboxGateway",
    "WebhookDelivery",
]

log = logging.getLogger(__name__)

_API_IDS: dict[Endpoint, str] = {"text_to_video": T2V_API_ID, "image_to_video": I2V_API_ID}
# How often unpolled jobs are looked at. Only bounds webhook latency and refunds; polls never wait for it.
_TICK_S = 0.05


def _mask(key: str) -> str:
    return key if len(key) <= 12 else f"{key[:8]}…{key[-4:]}"


class SandboxGateway:
    """State and background work of one sandbox gateway.

    Enter it (``async with gateway:`` or ``async with gateway.running():``) before serving requests: that starts
    the task group for renders and webhooks and the HTTP client used for image fetches and webhooks. The
    Starlette app's lifespan does this; tests using ``httpx2.ASGITransport`` (no lifespan) do it themselves.
    """

    def __init__(self, config: SandboxConfig | None = None, *, outbound: httpx2.AsyncBaseTransport | None = None):
        self.config = config or SandboxConfig()
        self.jobs: dict[str, Job] = {}
        self.submit_count = 0  # jobs created (and charged)
        self.submit_requests = 0  # every submit that reached the gateway, refused ones included
        self._outbound = outbound
        self._balances: dict[str, float] = {}
        self._error_once_seen: set[str] = set()
        self._pending: set[Job] = set()
        self._random = random.Random()
        self._seeded = False
        self._seed: int | None = None
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self._http: httpx2.AsyncClient | None = None
        self._image_http: httpx2.AsyncClient | None = None
        # One image decode at a time: each may take IMAGE_MAX_PIXELS of memory.
        self._image_limiter = anyio.CapacityLimiter(1)
        self._media_dir: Path | None = None
        self._records: JobRecords | None = None
        self._limiter = anyio.CapacityLimiter(self.config.max_concurrent_renders)
        self._stopping = threading.Event()
        self._wake = anyio.Event()

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("this SandboxGateway is already running")
        async with AsyncExitStack() as stack:
            self._stopping.clear()
            # Fresh primitives: a gateway may be run again later, from another event loop.
            self._wake = anyio.Event()
            self._limiter = anyio.CapacityLimiter(self.config.max_concurrent_renders)
            self._image_limiter = anyio.CapacityLimiter(1)
            if self.config.media_dir is not None:
                self._media_dir = Path(self.config.media_dir)
                self._media_dir.mkdir(parents=True, exist_ok=True)
            else:
                self._media_dir = Path(tempfile.mkdtemp(prefix="kling-sandbox-"))
                stack.callback(shutil.rmtree, self._media_dir, True)
            if self.config.jobs_dir is not None:
                self._records = JobRecords(Path(self.config.jobs_dir))
            self._http = await stack.enter_async_context(
                # trust_env=False: a proxy from the environment must never see loopback webhooks or images
                httpx2.AsyncClient(transport=self._outbound, trust_env=False, follow_redirects=False)
            )
            # Image URLs come from whoever submits: like the real gateway, this one fetches only public addresses.
            self._image_http = await stack.enter_async_context(
                guarded_client(
                    allow_private=self.config.allow_private_image_urls,
                    timeout=self.config.image_fetch_timeout_s,
                    transport=self._outbound,
                )
            )
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            stack.push_async_callback(self._stop_background)
            self._tg.start_soon(self._ticker)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)
        self._tg = None
        self._http = None
        self._image_http = None

    async def _stop_background(self) -> None:
        # Render threads poll this between frames; the cancel then returns within one frame's time.
        self._stopping.set()
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Self]:
        async with self:
            yield self

    @property
    def is_running(self) -> bool:
        return self._stack is not None

    @property
    def media_dir(self) -> Path:
        if self._media_dir is None:
            raise RuntimeError("the gateway has not been started")
        return self._media_dir

    @property
    def faults(self) -> Faults:
        return self.config.faults

    def now(self) -> float:
        return self.config.clock()

    # --- randomness -----------------------------------------------------------------------------------------

    def _rng(self) -> random.Random:
        seed = self.faults.seed
        if not self._seeded or seed != self._seed:
            # Reseeded whenever the seed changes, so setting a seed at runtime restarts a reproducible stream.
            self._random.seed(seed)
            self._seeded, self._seed = True, seed
        return self._random

    def roll(self, rate: float) -> bool:
        """True with probability ``rate``. Certain outcomes (0 and 1) draw nothing, keeping seeded streams stable."""
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        return self._rng().random() < rate

    def pick(self, n: int) -> int:
        """A seeded choice among ``n`` variants of a fault."""
        return self._rng().randrange(n)

    def _timing(self, seconds: int, image: bool) -> tuple[float, float]:
        """(queue, render) on the gateway clock: the timing model of docs/pixazo-contract.md §8, scaled, jittered."""
        lo, hi = limits.TIMING_QUEUE_S
        estimate = limits.estimated_render_seconds(seconds, image=image)
        jitter = self.config.jitter
        if jitter > 0:
            rng = self._rng()
            queue = rng.uniform(lo, hi)
            render = estimate * (1.0 + rng.uniform(-jitter, jitter))
        else:  # exact timing for tests: the middle of the queueing range
            queue, render = (lo + hi) / 2, estimate
        scale = self.config.time_scale
        return queue / scale, render / scale

    # --- keys and balances ----------------------------------------------------------------------------------

    def authorized(self, key: str | None) -> bool:
        if not key:
            return False
        return self.config.keys is None or key in self.config.keys

    def _initial_balance(self, key: str) -> float:
        if self.config.keys is not None and key in self.config.keys:
            return self.config.keys[key]
        return self.config.default_balance_s

    def balance(self, key: str) -> float:
        """Seconds of video the key can still pay for, after refunds of every job that has ended by now."""
        self.settle_all()
        return self._balances.get(key, self._initial_balance(key))

    def _charge(self, key: str, seconds: float) -> None:
        balance = self._balances.get(key, self._initial_balance(key))
        if balance < seconds:
            raise InsufficientBalance(f"balance {balance:g} s is below the clip's {seconds:g} s")
        self._balances[key] = balance - seconds

    def _refund(self, job: Job) -> None:
        if job.charged_s and not job.refunded_s:
            if not job.restored:  # a restored job's charge is another process's balance
                self._balances[job.key] = self._balances.get(job.key, self._initial_balance(job.key)) + job.charged_s
            job.refunded_s = job.charged_s

    # --- submit ---------------------------------------------------------------------------------------------

    async def submit(
        self,
        *,
        key: str,
        endpoint: Endpoint,
        raw_body: bytes,
        base_url: str,
        webhook_url: str | None = None,
    ) -> Job:
        """Validates, fetches the image, charges and creates the job. Raises ``BadRequest``/``InsufficientBalance``."""
        if self._tg is None or self._http is None:
            raise RuntimeError("SandboxGateway is not running: enter it with `async with gateway:` first")
        body, request = parse_submit(raw_body, endpoint)
        if webhook_url is not None:
            check_webhook_url(webhook_url)
        image = None if request.image_url is None else await self._fetch_image(request.image_url)
        self._charge(key, request.seconds)

        outcome, error, hold = plan(key, endpoint, body, request, self.faults, self.roll, self._error_once_seen)
        now = self.now()
        queue_s, render_s = self._timing(request.seconds, image is not None)
        job = Job(
            request_id=ids.request_id(_API_IDS[endpoint]),
            endpoint=endpoint,
            key=key,
            body=body,
            request=request,
            size=self.config.size_for(request.aspect_ratio),
            image=image,
            outcome=outcome,
            error=error,
            hold=hold,
            submitted_at=now,
            queued_until=now + queue_s,
            done_at=now + queue_s + render_s,
            created_at=datetime.fromtimestamp(self.config.wall_clock(), UTC),
            base_url=base_url.rstrip("/"),
            webhook_url=webhook_url,
            charged_s=float(request.seconds),
        )
        if self._records is not None:
            records = self._records
            await anyio.to_thread.run_sync(records.save, record_of(job))
            if image is not None:
                await anyio.to_thread.run_sync(records.save_image, job.request_id, image)
        self.jobs[job.request_id] = job
        self._pending.add(job)
        self.submit_count += 1
        if outcome == "COMPLETED" or hold:
            self._start_render(job)
        log.info("job %s created: %s s, outcome %s%s", job.request_id, job.seconds, outcome, " (held)" if hold else "")
        return job

    async def _fetch_image(self, url: str) -> bytes:
        assert self._image_http is not None
        try:
            image = await load_image(url, self._image_http, limit_s=self.config.image_fetch_timeout_s)
            await anyio.to_thread.run_sync(check_image_bytes, image, limiter=self._image_limiter)
        except InvalidInputError as exc:
            raise BadRequest.from_invalid(exc) from None
        return image

    # --- lookups and admin ----------------------------------------------------------------------------------

    def lookup(self, key: str, request_id: str) -> Job | None:
        """The job if it exists and ``key`` submitted it: other keys get the same answer as an unknown id."""
        job = self.find(request_id)
        if job is None:
            return None
        known = job.key_digest == key_digest(key) if job.restored else job.key == key
        return job if known else None

    def find(self, request_id: str) -> Job | None:
        """The job with this id: one this gateway made, or one another gateway on the same jobs_dir recorded."""
        job = self.jobs.get(request_id)
        return job if job is not None else self._restore(request_id)

    def _restore(self, request_id: str) -> Job | None:
        if self._records is None or self._tg is None:
            return None
        record = self._records.load(request_id)
        if record is None:
            return None
        video = self.media_dir / f"{request_id}.mp4"
        job = job_from_record(record, now=self.now(), wall_now=self.config.wall_clock(), video=video)
        if job is None:
            return None
        self.jobs[request_id] = job
        self._pending.add(job)
        if job.outcome == "COMPLETED" or job.hold:
            self._start_render(job)  # its gateway stopped before the render was done: render it on demand
        self._settle(job)
        log.info("job %s restored from its record", request_id)
        return job

    def _save(self, job: Job) -> None:
        if self._records is not None:
            self._records.save(record_of(job))

    def _job(self, request_id: str) -> Job:
        job = self.find(request_id)
        if job is None:
            raise KeyError(f"no job {request_id!r}")
        return job

    def finish(self, request_id: str, outcome: Outcome = "COMPLETED") -> Job:
        """Ends the job now with ``outcome``. COMPLETED still waits for the render to exist."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
        job = self._job(request_id)
        self._settle(job)
        if job.terminal is not None:
            raise ValueError(f"job {request_id} already ended {job.terminal}")
        now = self.now()
        job.hold = False
        job.queued_until = min(job.queued_until, now)
        job.done_at = min(job.done_at, now)
        if not (outcome == "COMPLETED" and job.render_error is not None):  # a failed render can only end ERROR
            job.outcome = outcome
            job.error = {"COMPLETED": None, "FAILED": MODERATION_ERROR, "ERROR": SYSTEM_ERROR}[outcome]
        if job.outcome == "COMPLETED":
            self._start_render(job)
        self._save(job)
        self._settle(job)
        self._poke()
        return job

    def status_body(self, job: Job, *, base_url: str | None = None) -> dict[str, Any]:
        """The JSON the status route answers for ``job`` now (and the webhook payload once it has ended)."""
        self._settle(job)
        return status_payload(job, job.phase(self.now()), self.faults, base_url or job.base_url)

    def styled(self, phase: Phase) -> str:
        return styled(phase, self.faults.status_style)

    def stats(self) -> dict[str, Any]:
        self.settle_all()
        now = self.now()
        by_status = dict.fromkeys(PHASES, 0)
        for job in self.jobs.values():
            by_status[job.phase(now)] += 1
        keys = set(self._balances) | set(self.config.keys or {})
        configured = self.config.keys or {}
        return {
            "submits": self.submit_count,
            "submit_requests": self.submit_requests,
            "status_polls": {rid: j.status_polls for rid, j in self.jobs.items()},
            "status_requests": {rid: j.status_requests for rid, j in self.jobs.items()},
            # Unconfigured keys may be real ones sent here by mistake: never echo them whole.
            "balances": {(k if k in configured else _mask(k)): self.balance(k) for k in sorted(keys)},
            "jobs_by_status": by_status,
            "faults": self.faults.as_dict(),
            "time_scale": self.config.time_scale,
        }

    def job_summary(self, job: Job) -> dict[str, Any]:
        self._settle(job)
        return job_summary(job, job.phase(self.now()))

    # --- waiting (for tests and callers that hold the gateway) ------------------------------------------------

    async def wait_rendered(self, request_id: str) -> Job:
        job = self._job(request_id)
        await job.rendered.wait()
        return job

    async def wait_settled(self, request_id: str) -> Job:
        """Returns once the job has ended by the gateway clock (advance an injected clock to get there)."""
        job = self._job(request_id)
        while not self._settle(job):
            with anyio.move_on_after(_TICK_S):
                await job.settled.wait()
        return job

    async def wait_webhooks(self, request_id: str) -> Job:
        """Returns once the job's webhook delivery (with retries) is over; only for jobs with X-Webhook-URL."""
        job = await self.wait_settled(request_id)
        await job.webhooks_done.wait()
        return job

    # --- settlement -----------------------------------------------------------------------------------------

    def settle_all(self) -> None:
        for job in list(self._pending):
            self._settle(job)

    def _settle(self, job: Job) -> bool:
        """Records the end of a job once the clock says it has ended; idempotent. True when it has ended."""
        if job.terminal is not None:
            return True
        phase = job.phase(self.now())
        if phase not in OUTCOMES:
            return False
        end = max(job.done_at, job.rendered_at if phase == "COMPLETED" and job.rendered_at is not None else 0.0)
        job.terminal = phase
        if not job.render_started:
            job.image = None  # no render will ever need it now
            self._drop_image(job)
        job.completed_at = job.created_at + timedelta(seconds=max(0.0, end - job.submitted_at))
        self._pending.discard(job)
        if phase == "ERROR" or (phase == "FAILED" and not self.config.charge_failed):
            self._refund(job)
        job.settled.set()
        if job.webhook_url is not None and self._tg is not None:
            self._tg.start_soon(self._deliver_webhook, job)
        else:
            job.webhooks_done.set()
        log.info("job %s ended %s", job.request_id, phase)
        return True

    def _poke(self) -> None:
        self._wake.set()

    async def _ticker(self) -> None:
        while True:
            with anyio.move_on_after(_TICK_S):
                await self._wake.wait()
            self._wake = anyio.Event()
            self.settle_all()

    # --- renders --------------------------------------------------------------------------------------------

    def _start_render(self, job: Job) -> None:
        if job.render_started:
            return
        if self._tg is None:
            raise RuntimeError("SandboxGateway is not running")
        job.render_started = True
        self._tg.start_soon(self._render, job)

    def _drop_image(self, job: Job) -> None:
        if self._records is not None and job.endpoint == "image_to_video":
            self._records.drop_image(job.request_id)

    async def _render(self, job: Job) -> None:
        path = self.media_dir / f"{job.request_id}.mp4"
        if job.restored and job.image is None and self._records is not None and job.endpoint == "image_to_video":
            job.image = await anyio.to_thread.run_sync(self._records.load_image, job.request_id)
        shots = [(prompt or "(image-to-video, no prompt)", float(s)) for prompt, s in job.request.shots]
        work = functools.partial(
            render.render_job, path, shots, job.size, self.config.fps, job.image, self._stopping.is_set
        )
        job.image = None  # up to 50 MB per job, needed by nothing after this render
        try:
            await anyio.to_thread.run_sync(work, limiter=self._limiter)
        except RenderCancelled:
            return  # the gateway is shutting down
        except Exception as exc:  # a broken render is the gateway's fault: the job ends ERROR, not charged
            log.exception("render of %s failed", job.request_id)
            job.render_error = f"{type(exc).__name__}: {exc}"
            if job.terminal is None:
                job.outcome, job.error = "ERROR", RENDER_ERROR
            self._save(job)
        else:
            job.media_path = path
        self._drop_image(job)
        job.rendered_at = self.now()
        job.rendered.set()
        self._settle(job)
        self._poke()

    # --- webhooks -------------------------------------------------------------------------------------------

    async def _deliver_webhook(self, job: Job) -> None:
        assert self._http is not None
        await deliver_webhook(self._http, job, json.dumps(self.status_body(job)).encode(), self.config, self.now)
