"""Three ``kling-mcp serve --transport http`` replicas on one PostgreSQL, the standalone sandbox gateway failing a
fifth of its answers, calls sent to replicas at random (each in a session of its own), one replica SIGKILLed amid
the submissions. The harness is ``bench/replicas.py`` (whose large run fills docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from bench.replicas import Plan, run
from tests.support.postgres import PostgresServer

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

PLAN = Plan(jobs=40, replicas=3, kills=1, fault_rate=0.2, lease_seconds=1.5, poll_interval=0.25, concurrency=20)
SLACK_S = 1.0  # a loaded two-core CI machine: the takeover bound plus this


async def test_three_replicas_lose_nothing_when_one_is_killed(postgres_server: PostgresServer, tmp_path: Path) -> None:
    with anyio.fail_after(240):
        report = await run(PLAN, tmp_path, postgres_server.new_database())
    summary = "\n".join(report.lines())
    # Every job ends completed and saved, or unknown where a submit was cut (by a kill or a timed-out answer).
    assert report.unsettled == [], summary
    assert set(report.outcomes) <= {"completed", "unknown"}, summary
    assert report.outcomes["completed"] > PLAN.jobs // 2, summary
    assert report.downloads["saved"] == report.outcomes["completed"], summary
    # Nothing paid twice, nothing downloaded twice (but a video a killed replica was fetching).
    assert report.prompts_twice == 0, summary
    assert report.gateway_jobs <= PLAN.jobs, summary
    assert report.fetched_twice == 0, summary
    # The kill fell amid running jobs, and another replica had them within the lease and one poll interval.
    assert report.held_at_kill[0] > 0, summary
    (takeover,) = report.takeover_s
    assert takeover <= report.takeover_bound_s + SLACK_S, summary
    # Every wait on a surviving replica returned; calls cut by the kill were sent again and answered.
    assert report.waits_returned >= PLAN.jobs, summary
