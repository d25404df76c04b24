"""The job engine: owns every generation from the ledger row to the file on disk. MCP-agnostic.

A job belongs to the engine, which lives as long as the process, never to the tool call that started it: one
poller per job drives it to a final state however many calls wait on it, a cancelled wait leaves it running,
and on start the engine resumes whatever the ledger holds unfinished.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Unpack

import anyio
from anyio.abc import TaskGroup

from kling_mcp import doorbell
from kling_mcp.doorbell import Doorbells
from kling_mcp.errors import (
    AuthenticationError,
    BlockedURLError,
    DownloadError,
    GatewayError,
    KlingError,
    NotFoundError,
)
from kling_mcp.feed import Feed
from kling_mcp.files import stale_temps, video_name
from kling_mcp.leases import Leases
from kling_mcp.models import (
    CANCELLED,
    DOWNLOAD_OWED,
    GATEWAY_FAILED,
    LOCAL_OWNER,
    NO_VIDEO,
    RUNNING,
    STATUS_RANK,
    GenerationRequest,
    Job,
    Mode,
    expected_seconds,
)
from kling_mcp.pacing import Pacer
from kling_mcp.pixazo import GatewayStatus, PixazoClient
from kling_mcp.store import Guards, JobUpdate, Ledger, owner_is_dead

log = logging.getLogger(__name__)

Listener = Callable[[Job], Awaitable[None]]

_JITTER = random.Random()  # own instance: jitter must not consume (or be steered by) the global generator

# Consecutive polls answered 404 after which a job is given up as unknown to the gateway. A few, not one: a gateway
# may not know an id it has just handed out for a moment. Not zero: a forgotten id would be polled forever.
NOT_FOUND_POLLS: Final = 5

CANCELLED_TEXT: Final = (
    "Cancelled: the server stopped following this job and will not download its video. The gateway has no cancel, "
    "so the generation may still run and be charged."
)


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """The engine's knobs; those without a default come from ``Settings`` (``runtime.engine_config``)."""

    mode: Mode
    poll_interval: float
    output_dir: Path | None = None  # None: downloads off
    time_scale: float = 1.0  # the sandbox runs faster than real time; estimates follow it
    dedupe_seconds: float
    error_retries: int
    guards: Guards = field(default_factory=Guards)
    download_attempts: int = 5
    download_max_bytes: int | None = 2 * 1024**3
    max_polls_per_second: float = 200.0
    max_concurrent_polls: int = 16
    submit_grace_seconds: float = 120.0  # a row left 'submitting' longer than this was cut off mid-submit
    max_download_backoff: float = 60.0
    retention_seconds: float | None = None  # final jobs' prompts and images become hashes after this; None: kept
    prune_interval: float = 3600.0
    lease_seconds: float = 15.0  # how long this replica's hold on a job lasts unrenewed (kling_mcp.leases)


@dataclass(frozen=True)
class Submitted:
    job: Job
    reused: bool  # an existing job came back (same idempotency key, or an identical recent request)


@dataclass
class _Watch:
    event: anyio.Event = field(default_factory=anyio.Event)


def progress_of(job: Job, now: float, time_scale: float = 1.0) -> tuple[float, float, str]:
    """(progress, total, message) for a waiting client. Progress rises with time and never goes back."""
    total = 100.0
    start = job.submitted_at or job.created_at
    elapsed = max(0.0, now - start)
    expected = expected_seconds(job, time_scale)
    if job.settled:
        return total, total, f"{job.status} after {elapsed:.0f}s"
    # 1 - e^(-t/T) keeps rising past the estimate without ever reaching 100 before the job ends.
    progress = round(99.0 * (1.0 - math.exp(-1.6 * elapsed / max(expected, 1e-6))), 3)
    state = "downloading the video" if job.status == "completed" else job.status
    left = expected - elapsed
    eta = f"about {left:.0f}s left (estimate)" if left >= 1 else "taking longer than the estimate"
    return progress, total, f"{state}: {elapsed:.0f}s elapsed, {eta}"


class JobEngine:
    def __init__(
        self,
        client: PixazoClient,
        store: Ledger,
        config: EngineConfig,
        *,
        clock: Callable[[], float] = time.time,
        webhook_url_for: Callable[[Job], str | None] | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.config = config
        self._clock = clock
        self._webhook_url_for = webhook_url_for
        self._tg: TaskGroup | None = None
        self._watches: dict[str, _Watch] = {}
        self._drivers: set[str] = set()
        self._listeners: list[Listener] = []
        self._not_found: dict[str, int] = {}  # job id -> its polls answered 404 in a row
        self._bells = Doorbells()
        self._poll_slots = anyio.Semaphore(config.max_concurrent_polls)
        self._pacer = Pacer(config.max_polls_per_second)  # the global cap, as evenly spaced moments
        self.leases = Leases(store, config.lease_seconds, scan_interval=config.poll_interval, clock=clock)
        self.feed = Feed(store, interval=config.poll_interval, on_change=self._notify, on_ring=self._ring, clock=clock)

    # --- lifecycle --------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[JobEngine]:
        held: frozenset[str] = frozenset()
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    await self._resume_unleased_submits()
                    await self.leases.take_over(self._adopt, own=True)  # what this replica's name held before a restart
                    log.info("resumed unfinished jobs from the ledger")
                    tg.start_soon(self.leases.keep, self._adopt, name="leases")
                    await tg.start(self.feed.run, name="other replicas' changes")
                    tg.start_soon(self._prune_now_and_then, name="ledger pruning")
                    yield self
                finally:
                    self._tg = None
                    held = self.leases.held()  # what the drivers about to stop were driving
                    tg.cancel_scope.cancel()
        finally:
            await self.leases.release(held)  # every driver has stopped

    async def _resume_unleased_submits(self) -> None:
        """'submitting' rows no replica ever leased (written before leases): cut off if their process is gone or
        their grace is over, else left to the process still submitting them."""
        grace = self.config.submit_grace_seconds
        for job in await self.store.unsettled():
            cut = owner_is_dead(job.process) or self._clock() - job.created_at > grace
            if job.status == "submitting" and job.lease_until is None and cut:
                await self._cut_off(job)

    async def _adopt(self, job: Job) -> None:
        """A job this replica just leased: one whose driver stopped (a restart, another replica gone)."""
        if job.status == "submitting":
            await self._cut_off(job)  # its lease lapsed mid-submit: the replica submitting it is gone
        else:
            self._drive(job)

    async def _cut_off(self, job: Job) -> None:
        await self._set(
            job,
            status="unknown",
            finished_at=self._clock(),
            error="The server stopped while submitting this job; the gateway may or may not have "
            "accepted (and billed) it.",
        )

    async def _prune_now_and_then(self) -> None:
        """Keeps the ledger to what jobs need (no inline image once final) and to the retention period."""
        while True:
            try:
                pruned = await self.store.prune(older_than=self.config.retention_seconds)
            except Exception:  # pruning must never stop the engine; the next round tries again
                log.exception("pruning the ledger failed")
            else:
                if pruned:
                    log.info("pruned the requests of %d finished jobs", pruned)
            await anyio.sleep(self.config.prune_interval)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # --- public operations ------------------------------------------------------------------------------------

    async def submit(
        self,
        request: GenerationRequest,
        *,
        owner: str = LOCAL_OWNER,
        idempotency_key: str | None = None,
        force_new: bool = False,
        parent_id: str | None = None,
    ) -> Submitted:
        """Records the owner's job, then submits it once. Reuses their job for the same key or an identical recent
        request."""
        job, created = await self.store.create(
            request,
            mode=self.config.mode,
            owner=owner,
            idempotency_key=idempotency_key,
            dedupe_seconds=0.0 if force_new else self.config.dedupe_seconds,
            parent_id=parent_id,
            download=self.config.output_dir is not None,
            guards=self.config.guards,
            lease_seconds=self.config.lease_seconds,
        )
        if not created:
            self._drive(job)
            return Submitted(job, reused=True)
        self.leases.hold(job.job_id)  # renewed while the submit is in flight: a lapse would mean this replica died
        await self._notify(job)
        # Shielded: once the row exists, a cancelled tool call must not leave it between 'submitting' and known.
        with anyio.CancelScope(shield=True):
            try:
                job = await self._send(job)
            finally:
                if job.status == "submitting" or job.settled:
                    await self.leases.leave(job.job_id, job)
        self._drive(job)
        return Submitted(job, reused=False)

    async def get(self, any_id: str, *, owner: str | None = None) -> Job:
        """A job by any of its ids (with ``owner``, only theirs). Asking about a job whose download gave up tries
        the download again."""
        job = await self.store.get(any_id, owner=owner)
        if job.status == "completed" and job.download_state == "failed" and self.config.output_dir is not None:
            job = await self._set(job, download_state="pending", download_attempts=0)
        self._drive(job)
        return job

    async def cancel(self, any_id: str, *, owner: str | None = None) -> Job:
        """Stops following the owner's unfinished job: it ends 'cancelled' and is never downloaded. A job already
        final stays as it is. The gateway has no cancel, so a submitted generation may still run and be billed."""
        job = await self.store.get(any_id, owner=owner)
        if job.final:
            return job
        return await self._set(job, status=CANCELLED, finished_at=self._clock(), error=CANCELLED_TEXT)

    async def wait(
        self,
        any_id: str,
        seconds: float,
        *,
        on_tick: Callable[[Job], Awaitable[None]] | None = None,
        tick: float = 2.0,
        until: Callable[[Job], bool] = lambda job: job.settled,
    ) -> Job:
        """Waits up to ``seconds`` for the job to settle (or meet ``until``); returns it either way. Cancelling
        only stops the wait."""
        job = await self.get(any_id)
        deadline = anyio.current_time() + seconds
        while not until(job):
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                break
            if on_tick is not None:
                await on_tick(job)
            watch = self._watch(job.job_id)
            fresh = await self.store.get(job.job_id)
            if fresh.updated_at == job.updated_at:
                with anyio.move_on_after(min(tick, remaining)):
                    await watch.event.wait()
                fresh = await self.store.get(job.job_id)
            job = fresh
        if on_tick is not None and job.settled:
            await on_tick(job)
        return job

    def progress(self, job: Job) -> tuple[float, float, str]:
        return progress_of(job, self._clock(), self.config.time_scale)

    # --- internals --------------------------------------------------------------------------------------------

    def _watch(self, job_id: str) -> _Watch:
        watch = self._watches.get(job_id)
        if watch is None:
            watch = self._watches[job_id] = _Watch()
        return watch

    def _wake(self, job_id: str) -> None:
        """Wakes whoever sleeps on the job: its driver and its waiters."""
        watch = self._watches.pop(job_id, None)
        if watch is not None:
            watch.event.set()

    async def _notify(self, job: Job) -> None:
        self.feed.seen(job)
        self._wake(job.job_id)
        for listener in self._listeners:
            try:
                await listener(job)
            except Exception:  # a broken listener must not stop a paid job
                log.exception("job listener failed")

    async def _set(self, job: Job, **fields: Unpack[JobUpdate]) -> Job:
        if fields.get("status") in NO_VIDEO:
            fields["download_state"] = "off"  # no video will come, so no download is owed
        updated = await self.store.update(job.job_id, **fields)
        await self._notify(updated)
        return updated

    async def _send(self, job: Job) -> Job:
        """Submits one attempt of ``job``; the ledger holds the outcome whatever happens."""
        webhook = self._webhook_url_for(job) if self._webhook_url_for else None
        try:
            sub = await self.client.submit(job.request, webhook_url=webhook)
        except GatewayError as exc:
            if exc.maybe_sent:
                return await self._set(
                    job,
                    status="unknown",
                    finished_at=self._clock(),
                    error=f"{exc.message} Whether the gateway accepted and billed it is unknown; it was not "
                    "submitted again.",
                )
            failed = await self._set(
                job,
                status="error",
                finished_at=self._clock(),
                error=f"Not submitted: {exc.message}",
            )
            if job.attempts == 0:
                raise  # the caller learns why at once; nothing was paid
            return failed
        except BaseException:
            # Anything unexpected after the row exists: the request may have left, so never resubmit it.
            with anyio.CancelScope(shield=True):
                await self._set(job, status="unknown", finished_at=self._clock(), error="Submit interrupted.")
            raise
        return await self._set(
            job,
            attempt_id=sub.request_id,
            polling_url=sub.polling_url,
            status=sub.status if sub.status in RUNNING else "queued",
            submitted_at=self._clock(),
            error=None,
            # Owed again if another replica took the job over meanwhile and recorded it unknown (no video).
            download_state="pending" if self.config.output_dir is not None else "off",
        )

    def _drive(self, job: Job) -> None:
        if job.settled or job.status == "submitting" or job.job_id in self._drivers or self._tg is None:
            return
        if self.leases.held_elsewhere(job):
            return  # another replica drives it; its changes reach this one through the ledger
        self._drivers.add(job.job_id)
        self._tg.start_soon(self._run_job, job.job_id, name=f"job {job.id}")

    async def _run_job(self, job_id: str) -> None:
        try:
            await self.leases.drive(job_id, self._run_leased)
        finally:
            self._drivers.discard(job_id)

    async def _run_leased(self, job_id: str) -> Job | None:
        job: Job | None = None
        try:
            job = await self.store.get(job_id)
            if job.status == "completed" and job.download_state in DOWNLOAD_OWED:
                # It completed before this driver, maybe in another process whose gateway (and media URL) is gone.
                job = await self._refresh_media_url(job)
            # Spreads the polls of jobs submitted (or resumed) together; never sooner than the interval.
            delay = self._poll_interval() * _JITTER.uniform(1.0, 1.5)
            while not job.settled:
                if job.status in RUNNING:
                    job, delay = await self._poll_when_due(job, delay)
                elif job.status == "completed":
                    job = await self._download(job)
                else:
                    break
        except KlingError:
            log.exception("job %s stopped", job_id)
        finally:
            self._drivers.discard(job_id)
            self._not_found.pop(job_id, None)
            self._bells.forget(job_id)
        return job

    async def _poll_when_due(self, job: Job, delay: float) -> tuple[Job, float]:
        """Polls after ``delay``, or at once when the doorbell rings; returns the job and the delay to the next.

        Other news of the job (a waiter, another process) only makes the driver read the ledger again.
        """
        job_id = job.job_id
        if not self._bells.rung(job_id):
            watch = self._watch(job_id)
            with anyio.move_on_after(delay):
                await watch.event.wait()
            if watch.event.is_set() and not self._bells.rung(job_id):
                return await self.store.get(job_id), self._poll_interval()
        answered = await self._bells.take(job_id)
        polled = await self._poll(job)
        if answered is None:
            return polled, self._poll_interval()
        answered.set()
        news = polled.status != job.status or polled.current_request_id != job.current_request_id
        return polled, self._poll_interval() if news else min(doorbell.FOLLOW_UP_S, self._poll_interval())

    async def on_webhook(self, token: str, body: Mapping[str, Any]) -> tuple[int, str]:
        """A gateway webhook for the job its URL token names rings that job's doorbell; returns (HTTP status, reason).

        The body is only checked to name one of the job's request ids, so a body replayed to another job's URL is
        refused; nothing in it is applied (``kling_mcp.doorbell``). The answer comes once the poll is done (200), or
        after ``doorbell.WAIT_S`` with the poll still to come (202).
        """
        job = await self.store.by_webhook_token(token)
        if job is None:
            return 404, "unknown webhook"
        request_id = body.get("request_id")
        if job.attempt_ids and request_id not in job.attempt_ids:
            return 409, "request_id does not match this job"
        if job.final:
            return 200, "already final"
        if self.leases.held_elsewhere(job) and await self.store.ring(job.job_id):
            return 202, "the job will be polled"  # by the replica driving it, which the ledger's bus told
        answered = self._bells.ring(job.job_id)
        self._wake(job.job_id)
        self._drive(job)
        with anyio.move_on_after(doorbell.WAIT_S):
            await answered.wait()
            return 200, "polled"
        return 202, "the job will be polled"

    async def _ring(self, job_id: str) -> None:
        """Another replica took a webhook for a job this one drives."""
        if job_id in self._drivers:
            self._bells.ring(job_id)
            self._wake(job_id)

    def _poll_interval(self) -> float:
        """The configured interval, stretched so that all jobs together poll at most max_polls_per_second.

        Each poll costs the process a couple of milliseconds of CPU; past a few hundred a second the event loop
        saturates and every other call (check_status, tools/list) waits behind the polls.
        """
        return max(self.config.poll_interval, len(self._drivers) / self.config.max_polls_per_second)

    async def _poll(self, job: Job) -> Job:
        assert job.current_request_id is not None
        try:
            await self._pacer.slot()
            async with self._poll_slots:
                status = await self.client.status(job.current_request_id, polling_url=job.polling_url)
        except NotFoundError as exc:
            return await self._not_found_poll(job, exc)
        except AuthenticationError as exc:  # the key may be fixed meanwhile: keep polling
            log.warning("status of %s: %s", job.id, exc.message)
            return await self.store.get(job.job_id)
        except GatewayError as exc:
            log.info("status of %s not read (%s); next poll will try again", job.id, exc.code)
            return await self.store.get(job.job_id)
        self._not_found.pop(job.job_id, None)
        if status.status == job.status:
            return job  # nothing new: no ledger read, no write
        # Another process sharing the ledger may have moved the job on.
        current = await self.store.get(job.job_id)
        if current.current_request_id != job.current_request_id or current.final:
            return current
        return await self._apply(current, status)

    async def _not_found_poll(self, job: Job, exc: NotFoundError) -> Job:
        """A poll answered 404: the job ends ``unknown`` after NOT_FOUND_POLLS in a row, and is never resent."""
        count = self._not_found[job.job_id] = self._not_found.get(job.job_id, 0) + 1
        log.warning("status of %s (404 %d of %d): %s", job.id, count, NOT_FOUND_POLLS, exc.message)
        current = await self.store.get(job.job_id)
        if count < NOT_FOUND_POLLS or current.current_request_id != job.current_request_id or current.final:
            return current
        return await self._set(
            current,
            status="unknown",
            finished_at=self._clock(),
            error=f"The gateway no longer knows this request: {count} status polls in a row were answered 404, so "
            "polling stopped. It was not submitted again; whether it was billed is unknown. Check the Pixazo "
            "console for it; to make the video anyway, call the tool again with force_new=true.",
        )

    async def _apply(self, job: Job, status: GatewayStatus) -> Job:
        if STATUS_RANK[status.status] < STATUS_RANK[job.status]:
            log.info(
                "status of %s: ignored %s after %s (a job never moves back)", job.id, status.raw_status, job.status
            )
            return job
        if status.status == "completed":
            return await self._set(
                job,
                status="completed",
                media_url=status.media_urls[0],
                finished_at=self._clock(),
                error=None,
            )
        if status.status == "error" and job.attempts <= self.config.error_retries:
            log.info("job %s ended ERROR (not charged); resubmitting, attempt %d", job.id, job.attempts + 1)
            job = await self._set(job, error=f"Attempt {job.attempts} ended ERROR: {status.error or 'no detail'}")
            with anyio.CancelScope(shield=True):
                return await self._send(job)
        if status.status in GATEWAY_FAILED:
            return await self._set(
                job,
                status=status.status,
                finished_at=self._clock(),
                error=status.error or f"The gateway ended the job {status.raw_status}.",
            )
        if status.status != job.status:
            return await self._set(job, status=status.status)
        return job

    async def _download(self, job: Job) -> Job:
        """Saves the video once: a lease in the ledger keeps other processes (and waiters) from doing it twice."""
        assert self.config.output_dir is not None
        assert job.media_url is not None
        lease = 600.0
        claimed = await self.store.claim_download(job.job_id, lease_seconds=lease)
        if claimed is None:
            await anyio.sleep(self.config.poll_interval)  # another process has it; look again later
            return await self.store.get(job.job_id)
        dest = self.config.output_dir / video_name(job.created_at, job.request.title, job.id)
        # Partial files of an attempt whose process was killed: the claim makes them ours to remove.
        for stale in stale_temps(dest):
            stale.unlink(missing_ok=True)
        try:
            with anyio.fail_after(lease * 0.9):
                saved = await self.client.download(job.media_url, dest, max_bytes=self.config.download_max_bytes)
        except BlockedURLError as exc:
            # The same URL would be refused again: report it now rather than retry.
            return await self._set(claimed, download_state="failed", download_error=str(exc))
        except (DownloadError, TimeoutError) as exc:
            attempts = claimed.download_attempts + 1
            message = exc.message if isinstance(exc, DownloadError) else "the download timed out"
            if attempts >= self.config.download_attempts:
                return await self._set(
                    claimed,
                    download_state="failed",
                    download_attempts=attempts,
                    download_error=f"Gave up after {attempts} attempts: {message}",
                )
            job = await self._set(claimed, download_state="pending", download_attempts=attempts, download_error=message)
            await anyio.sleep(min(self.config.max_download_backoff, self.config.poll_interval * 2**attempts))
            return await self._refresh_media_url(job)
        return await self._set(
            claimed,
            download_state="done",
            local_path=str(saved.path),
            sha256=saved.sha256,
            size_bytes=saved.size_bytes,
            download_error=None,
        )

    async def _refresh_media_url(self, job: Job) -> Job:
        """Media URLs expire; a fresh status may carry a new one."""
        if job.current_request_id is None:
            return job
        try:
            status = await self.client.status(job.current_request_id, polling_url=job.polling_url)
        except GatewayError:
            return job
        if status.status == "completed" and status.media_urls and status.media_urls[0] != job.media_url:
            return await self._set(job, media_url=status.media_urls[0])
        return job
