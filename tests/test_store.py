"""The ledger on a real SQLite file: idempotency, dedupe, guards, aliases, several connections at once."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from kling_mcp.errors import JobNotFoundError, SpendLimitError
from kling_mcp.pixazo import GenerationRequest
from kling_mcp.store import Guards, Store

pytestmark = pytest.mark.anyio


def req(prompt: str = "a heron takes off", duration: int = 5) -> GenerationRequest:
    return GenerationRequest(endpoint="text_to_video", prompt=prompt, duration=duration)


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_the_same_idempotency_key_returns_the_same_job(tmp_path: Path) -> None:
    store = Store(tmp_path / "l.db")
    first, created = await store.create(req(), mode="sandbox", idempotency_key="k1")
    again, created_again = await store.create(req("something else"), mode="sandbox", idempotency_key="k1")
    assert (created, created_again) == (True, False)
    assert again.job_id == first.job_id


async def test_identical_requests_inside_the_window_share_a_job_unless_forced(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(tmp_path / "l.db", clock=clock)
    first, _ = await store.create(req(), mode="sandbox", dedupe_seconds=600)
    clock.now += 599
    same, created = await store.create(req(), mode="sandbox", dedupe_seconds=600)
    assert not created
    assert same.job_id == first.job_id
    forced, created = await store.create(req(), mode="sandbox", dedupe_seconds=0)
    assert created
    assert forced.job_id != first.job_id
    clock.now += 2 + 600
    _, created = await store.create(req(), mode="sandbox", dedupe_seconds=600)
    assert created


async def test_failed_jobs_are_not_reused_by_dedupe(tmp_path: Path) -> None:
    store = Store(tmp_path / "l.db")
    first, _ = await store.create(req(), mode="sandbox", dedupe_seconds=600)
    await store.update(first.job_id, status="failed")
    second, created = await store.create(req(), mode="sandbox", dedupe_seconds=600)
    assert created
    assert second.job_id != first.job_id


async def test_concurrent_creates_from_two_connections_make_one_job_per_key(tmp_path: Path) -> None:
    stores = [Store(tmp_path / "l.db"), Store(tmp_path / "l.db")]
    results: list[bool] = []

    async def create(store: Store) -> None:
        _, created = await store.create(req(), mode="sandbox", idempotency_key="shared")
        results.append(created)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(create, stores[i % 2])
    assert sorted(results) == [False] * 19 + [True]


async def test_active_job_guard_refuses_and_says_what_to_do(tmp_path: Path) -> None:
    store = Store(tmp_path / "l.db")
    guards = Guards(max_active_jobs=2)
    for i in range(2):
        await store.create(req(f"p{i}"), mode="sandbox", guards=guards)
    with pytest.raises(SpendLimitError) as caught:
        await store.create(req("p3"), mode="sandbox", guards=guards)
    assert caught.value.limit == "max_active_jobs"
    assert "KLING_MCP_MAX_ACTIVE_JOBS=2" in str(caught.value)


async def test_daily_seconds_guard_counts_billed_seconds_and_resets_at_midnight(tmp_path: Path) -> None:
    clock = Clock(1_800_000_000.0 - 1_800_000_000.0 % 86400 + 3600)  # 01:00 UTC
    store = Store(tmp_path / "l.db", clock=clock)
    guards = Guards(daily_seconds=20)
    a, _ = await store.create(req("a", 10), mode="sandbox", guards=guards)
    errored, _ = await store.create(req("b", 10), mode="sandbox", guards=guards)
    await store.update(errored.job_id, status="error")  # ERROR is not charged, so it does not count
    await store.create(req("c", 8), mode="sandbox", guards=guards)
    with pytest.raises(SpendLimitError) as caught:
        await store.create(req("d", 5), mode="sandbox", guards=guards)
    assert caught.value.remaining == 2
    assert caught.value.resets_at is not None
    assert caught.value.resets_at.endswith("T00:00:00+00:00")
    clock.now += 86400
    _, created = await store.create(req("d", 5), mode="sandbox", guards=guards)
    assert created
    assert a.video_seconds == 10


async def test_jobs_are_found_by_any_of_their_ids(tmp_path: Path) -> None:
    store = Store(tmp_path / "l.db")
    job, _ = await store.create(req(), mode="sandbox")
    await store.update(job.job_id, attempt_id="gw_1", status="queued")
    retried = await store.update(job.job_id, attempt_id="gw_2")
    assert retried.request_id == "gw_1"
    assert retried.current_request_id == "gw_2"
    assert retried.attempts == 2
    for alias in (job.job_id, "gw_1", "gw_2"):
        assert (await store.get(alias)).job_id == job.job_id
    with pytest.raises(JobNotFoundError):
        await store.get("gw_3")


async def test_only_one_claimant_gets_a_download(tmp_path: Path) -> None:
    clock = Clock()
    one, two = Store(tmp_path / "l.db", clock=clock), Store(tmp_path / "l.db", clock=clock)
    job, _ = await one.create(req(), mode="sandbox")
    await one.update(job.job_id, status="completed", media_url="http://x/y.mp4")
    assert await one.claim_download(job.job_id, lease_seconds=60) is not None
    assert await two.claim_download(job.job_id, lease_seconds=60) is None
    clock.now += 61  # a claimant that died loses its lease
    assert await two.claim_download(job.job_id, lease_seconds=60) is not None


async def test_unsettled_lists_running_jobs_and_owed_downloads(tmp_path: Path) -> None:
    store = Store(tmp_path / "l.db")
    running, _ = await store.create(req("a"), mode="sandbox")
    await store.update(running.job_id, status="processing")
    owed, _ = await store.create(req("b"), mode="sandbox")
    await store.update(owed.job_id, status="completed")
    done, _ = await store.create(req("c"), mode="sandbox")
    await store.update(done.job_id, status="completed", download_state="done")
    assert {j.job_id for j in await store.unsettled()} == {running.job_id, owed.job_id}
