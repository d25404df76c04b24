"""Two engines (replicas) on one ledger, on both backends, against one sandbox gateway over real HTTP: a job is
driven by the replica holding its lease, another replica's waits, listeners and webhooks see it, and a replica that
stops renewing loses its jobs to another within the lease."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from kling_mcp.config import Settings
from kling_mcp.models import GenerationRequest, Job
from kling_mcp.runtime import open_runtime

pytestmark = pytest.mark.anyio

LEASE_S = 0.6  # for the tests of a lease lapsing: a takeover comes fast
# For every other test: a lease no busy machine outlasts, so no replica takes over a job it should only watch (with
# 0.6 s, a loaded CI machine let one lapse now and then, and the other replica then rightly took the job over).
STEADY_LEASE_S = 30.0
HELD = "[sandbox:hold] "  # the sandbox keeps such a job running until the test finishes it


def t2v(prompt: str) -> GenerationRequest:
    return GenerationRequest(endpoint="text_to_video", prompt=prompt, duration=3)


@pytest.fixture
def replica(settings: Settings, ledger_kind: str, ledger_url: str) -> Callable[..., Settings]:
    def make(name: str, **changes: Any) -> Settings:
        database_url = ledger_url if ledger_kind == "postgres" else None  # SQLite: the shared state folder
        changes.setdefault("lease_seconds", STEADY_LEASE_S)
        return settings.with_(replica_id=name, database_url=database_url, **changes)

    return make


async def test_a_wait_on_one_replica_returns_when_another_finishes_the_job(
    replica: Callable[..., Settings], sandbox: Any
) -> None:
    heard_settled = anyio.Event()

    async def listener(job: Job) -> None:
        if job.settled:
            heard_settled.set()

    async with open_runtime(replica("a")) as a, open_runtime(replica("b"), listeners=[listener]) as b:
        submitted = await a.engine.submit(t2v(HELD + "a heron lands"))
        job = submitted.job
        assert job.lease_owner == "a"
        result: list[Job] = []

        async def wait_on_b() -> None:
            result.append(await b.engine.wait(job.id, 20))

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_on_b)
                await b.engine.get(job.id)  # asking b about it does not make b drive it
                assert job.job_id not in b.engine._drivers
                assert job.request_id is not None
                sandbox.gateway.finish(job.request_id)
            await heard_settled.wait()  # b's listeners (resource notifications) hear of a's job settling
    (done,) = result
    assert (done.status, done.download_state) == ("completed", "done")
    assert sandbox.gateway.jobs[job.request_id].media_requests == 1
    assert sandbox.gateway.submit_count == 1


async def test_a_replica_that_stops_renewing_loses_its_jobs_to_another_within_the_lease(
    replica: Callable[..., Settings], sandbox: Any
) -> None:
    async with open_runtime(replica("b", lease_seconds=LEASE_S)) as b:
        async with open_runtime(replica("a", lease_seconds=LEASE_S)) as a:
            job = (await a.engine.submit(t2v(HELD + "a heron takes off"))).job
            assert job.request_id is not None
        stopped = time.monotonic()  # a's drivers are gone; its lease is left to lapse, as a killed one's is
        sandbox.gateway.finish(job.request_id)
        with anyio.fail_after(20):
            done = await b.engine.wait(job.id, 20)
        took = time.monotonic() - stopped
    assert (done.status, done.download_state) == ("completed", "done")
    # The lease lapses, b's next scan takes the job, its first poll finds it done (plus a download and slack).
    assert took < LEASE_S + b.engine.leases.scan_interval + b.engine.config.poll_interval * 1.5 + 1.0
    assert sandbox.gateway.submit_count == 1
    assert sandbox.gateway.jobs[job.request_id].media_requests == 1


# PostgreSQL only: on SQLite there is no bus between processes, so a webhook taken by a replica that does not drive
# the job waits for the driver's next poll (README, "Several replicas").
@pytest.mark.parametrize("ledger_kind", ["postgres"])
async def test_a_webhook_on_a_replica_that_does_not_drive_the_job_makes_the_driver_poll(
    replica: Callable[..., Settings], sandbox: Any
) -> None:
    slow = {"public_url": "http://127.0.0.1:9", "webhook_poll_interval": 600.0}  # polls only when rung
    async with open_runtime(replica("a", **slow)) as a, open_runtime(replica("b", **slow)) as b:
        job = (await a.engine.submit(t2v(HELD + "a heron calls"))).job
        assert job.request_id is not None
        assert job.webhook_token is not None
        sandbox.gateway.finish(job.request_id)
        with anyio.fail_after(20):
            await sandbox.gateway.wait_rendered(job.request_id)  # a webhook comes once the job is done
            status, _ = await b.engine.on_webhook(job.webhook_token, {"request_id": job.request_id})
            assert status == 202  # handed to the driving replica over the ledger's bus
            done = await b.engine.wait(job.id, 15)
    assert done.status == "completed"


async def test_a_job_whose_replica_died_mid_submit_is_unknown_on_another_and_never_sent_again(
    replica: Callable[..., Settings], sandbox: Any
) -> None:
    from kling_mcp.store import open_ledger

    settings = replica("a", lease_seconds=LEASE_S)
    # What replica a leaves when it dies between recording a job and hearing the gateway: a leased 'submitting' row.
    dead = open_ledger(settings.database_url, settings.resolved_state_dir / "ledger.sqlite3", replica="a")
    job, _ = await dead.create(t2v("cut off mid-submit"), mode="sandbox", lease_seconds=LEASE_S)
    await dead.aclose()
    async with open_runtime(replica("b", lease_seconds=LEASE_S)) as b:
        with anyio.fail_after(20):
            done = await b.engine.wait(job.job_id, 20)
    assert done.status == "unknown"
    assert done.error is not None
    assert "may or may not have accepted" in done.error
    assert sandbox.gateway.submit_count == 0


async def test_two_cores_in_one_process_without_replica_ids_never_take_each_others_jobs(
    replica: Callable[..., Settings], sandbox: Any
) -> None:
    # Two in-memory clients of one server each start a core: unnamed, they must not share a name, or the second
    # would "take back" the first's jobs as its own after a restart and cut its submits off as unknown.
    unnamed = replica("unused").with_(replica_id=None)
    async with open_runtime(unnamed) as a:
        job = (await a.engine.submit(t2v(HELD + "a kestrel hovers"))).job
        async with open_runtime(unnamed) as b:
            assert b.engine.store.replica != a.engine.store.replica
            assert job.job_id not in b.engine._drivers
            assert job.request_id is not None
            sandbox.gateway.finish(job.request_id)
            with anyio.fail_after(20):
                done = await a.engine.wait(job.id, 20)
    assert (done.status, done.download_state) == ("completed", "done")
    assert sandbox.gateway.jobs[job.request_id].media_requests == 1


async def test_a_cancel_on_one_replica_stops_the_driving_one_which_gives_the_lease_back_and_downloads_nothing(
    replica: Callable[..., Settings], sandbox: Any
) -> None:
    async with open_runtime(replica("a")) as a, open_runtime(replica("b")) as b:
        job = (await a.engine.submit(t2v(HELD + "a heron is called off"))).job
        assert job.request_id is not None
        assert job.job_id in a.engine._drivers
        left = anyio.Event()
        leave = a.engine.leases.leave

        async def leaving(job_id: str, last: Job | None) -> None:
            await leave(job_id, last)
            if job_id == job.job_id:
                left.set()

        setattr(a.engine.leases, "leave", leaving)  # noqa: B010 (mypy: a method is not assignable)
        with anyio.fail_after(20):
            await b.engine.cancel(job.id)
            await left.wait()  # a heard of it (bus or the ledger's changes) and its driver stopped
        assert job.job_id not in a.engine._drivers
        sandbox.gateway.finish(job.request_id)  # the gateway renders it anyway
        with anyio.fail_after(20):
            await sandbox.gateway.wait_rendered(job.request_id)
        on_a, on_b = await a.engine.get(job.id), await b.engine.get(job.id)
    assert on_a.status == on_b.status == "cancelled"
    assert (on_a.lease_owner, on_a.download_state, on_a.local_path) == (None, "off", None)
    assert sandbox.gateway.jobs[job.request_id].media_requests == 0


async def test_a_submit_answered_after_another_replica_cut_it_off_is_followed_and_downloaded(
    replica: Callable[..., Settings], sandbox: Any
) -> None:
    # a is too slow to renew (a starved event loop): b takes the job over mid-submit and records it unknown; then
    # the gateway's answer reaches a. The job is known again, so its video is still owed.
    async def starved() -> None:
        return None

    faults = sandbox.gateway.faults
    short = {"lease_seconds": LEASE_S}
    async with open_runtime(replica("a", **short)) as a, open_runtime(replica("b", **short)) as b:
        setattr(a.engine.leases, "_renew", starved)  # noqa: B010 (mypy: a method is not assignable)
        faults.rate_slow, faults.slow_s = 1.0, 3 * LEASE_S  # the submit's answer comes after the lease
        with anyio.fail_after(20):
            job = (await a.engine.submit(t2v("answered late"))).job
        faults.rate_slow = 0.0
        assert job.request_id is not None
        with anyio.fail_after(20):
            done = await b.engine.wait(job.id, 20)
    assert done.status == "completed"
    assert done.download_state == "done"
    assert sandbox.gateway.submit_count == 1


async def test_a_replica_that_stops_gives_its_leases_back_so_another_takes_over_at_once(
    replica: Callable[..., Settings], sandbox: Any
) -> None:
    # The steady lease is far longer than the wait below: only a lease given back explains a takeover in time.
    async with open_runtime(replica("b")) as b:
        async with open_runtime(replica("a")) as a:
            job = (await a.engine.submit(t2v(HELD + "a heron flies home"))).job
            assert job.request_id is not None
        assert (await b.engine.get(job.id)).lease_owner in (None, "b")  # given back (and maybe taken already)
        sandbox.gateway.finish(job.request_id)
        with anyio.fail_after(15):
            done = await b.engine.wait(job.id, 15)
    assert (done.status, done.download_state) == ("completed", "done")
