"""Webhooks are a doorbell, at the engine: a post only makes the job's driver poll, and only polls change a job."""

from __future__ import annotations

import json
from typing import get_args

import anyio
import httpx2
import pytest

from kling_mcp.models import STATUS_RANK, JobStatus
from kling_mcp.store import Job
from tests.test_jobs import Forward, Rig, kind_of, rig, settle, t2v

pytestmark = pytest.mark.anyio

__all__ = ["rig"]  # the fixture, shared with test_jobs

# Webhooks on, so polling is only the 60 s safety net: every poll in these tests is one a doorbell asked for. The
# URL is never dialled: no job here ends while the sandbox could still post to it.
DOORBELL_ONLY = {"public_url": "http://127.0.0.1:9", "webhook_poll_interval": 60.0}


def test_every_status_has_a_rank() -> None:
    assert set(STATUS_RANK) == set(get_args(JobStatus))
    assert STATUS_RANK["queued"] < STATUS_RANK["processing"] < STATUS_RANK["completed"]


async def test_a_polled_status_never_moves_a_job_back(rig: Rig) -> None:
    """A gateway answering IN_QUEUE after PROCESSING (a stale replica, say) leaves the job processing."""
    seen: list[str] = []
    stale = {"left": 3}

    async def stale_after_processing(request: httpx2.Request, forward: Forward) -> httpx2.Response:
        response = await forward(request)
        if kind_of(request) != "status":
            return response
        body = json.loads(await response.aread())
        if body["status"] == "PROCESSING" and "processing" in seen and stale["left"] > 0:
            stale["left"] -= 1
            body["status"] = "IN_QUEUE"
            if stale["left"] == 0:
                rig.gateway.finish(body["request_id"])
        return httpx2.Response(response.status_code, json=body)

    async def record(job: Job) -> None:
        seen.append(job.status)

    rig.tamper.hook = stale_after_processing
    async with rig.runtime() as runtime:
        runtime.engine.add_listener(record)
        job = await settle(runtime, (await runtime.engine.submit(t2v("[sandbox:hold] stale"))).job)
    assert job.status == "completed"
    assert stale["left"] == 0, "the stale answers were never given"
    ranks = [STATUS_RANK[s] for s in seen]  # type: ignore[index]
    assert ranks == sorted(ranks), seen


async def test_a_flood_of_rings_is_a_few_polls(rig: Rig) -> None:
    async with rig.runtime(**DOORBELL_ONLY) as runtime:
        job = (await runtime.engine.submit(t2v("[sandbox:hold] flood"))).job
        assert job.webhook_token is not None
        body = {"request_id": job.current_request_id, "status": "COMPLETED"}
        answers: list[tuple[int, str]] = []

        async def ring() -> None:
            answers.append(await runtime.engine.on_webhook(job.webhook_token or "", body))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(ring)
        after = await runtime.engine.get(job.job_id)
    # Rings before a poll begins share it; one during it gets one more, no sooner than the gap.
    assert 1 <= rig.tamper.count("status") <= 2
    assert {code for code, _ in answers} == {200}
    assert after.status in ("queued", "processing")
    assert rig.gateway.submit_count == 1


async def test_a_ring_while_the_job_is_submitting_is_polled_once_it_is_sent(rig: Rig) -> None:
    """A gateway may post before its submit answer arrives: the ring waits for the driver, which polls at once."""
    sent = anyio.Event()
    answered = anyio.Event()

    async def hold_the_submit(request: httpx2.Request, forward: Forward) -> httpx2.Response:
        if kind_of(request) == "submit":
            sent.set()
            await answered.wait()
        return await forward(request)

    rig.tamper.hook = hold_the_submit
    async with rig.runtime(**DOORBELL_ONLY) as runtime:
        results: list[tuple[int, str]] = []
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(runtime.engine.submit, t2v("[sandbox:hold] early"))
                await sent.wait()
                (submitting,) = await runtime.store.unsettled()
                assert submitting.status == "submitting"

                async def ring() -> None:
                    results.append(await runtime.engine.on_webhook(submitting.webhook_token or "", {}))

                tg.start_soon(ring)
                while not runtime.engine._bells.rung(submitting.job_id):  # the ring has reached the engine
                    await anyio.wait_all_tasks_blocked()
                assert rig.tamper.count("status") == 0
                answered.set()
    assert results == [(200, "polled")]
    assert rig.tamper.count("status") == 1
