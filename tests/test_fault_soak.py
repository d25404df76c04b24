"""A small soak in every CI run; ``python -m bench.soak --jobs 1000`` is the full-size one."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import soak

pytestmark = pytest.mark.anyio


async def test_jobs_through_a_faulty_gateway_are_all_accounted_for_and_none_paid_twice(tmp_path: Path) -> None:
    report = await soak(60, 0.2, tmp_path, seed=3)
    assert report.unaccounted == []
    assert report.duplicate_prompts == 0
    assert report.tool_errors == []
    assert sum(report.outcomes.values()) == 60
    assert report.outcomes["completed"] >= 30
    assert report.downloads["saved"] == report.outcomes["completed"]
    # Every job the gateway created is one the ledger knows as completed, or one it reports as unknown.
    assert (
        report.outcomes["completed"]
        <= report.gateway_submits
        <= report.outcomes["completed"] + report.outcomes["unknown"]
    )
