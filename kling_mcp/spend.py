"""Spend guards: limits on running jobs and seconds of video per UTC day, checked inside the ledger's transaction
that records a job, so concurrent calls (and processes) cannot overshoot them together.

``max_active_jobs`` and ``daily_seconds`` hold for each owner, so one person's held jobs or spent day leave the
others alone; ``total_daily_seconds`` caps the whole server.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from kling_mcp import limits
from kling_mcp.errors import SpendLimitError
from kling_mcp.models import ACTIVE, NOT_CHARGED

if TYPE_CHECKING:  # the ledger imports this module; its operation types are only annotations here
    from kling_mcp.store.sql import Op


def marks(values: Collection[object]) -> str:
    """SQL placeholders for ``values``."""
    return ", ".join("?" * len(values))


@dataclass(frozen=True)
class Guards:
    """Spend limits checked in the same transaction that records a job, so concurrent calls cannot overshoot.

    ``max_active_jobs`` and ``daily_seconds`` hold for each owner; ``total_daily_seconds`` for all of them together.
    """

    max_active_jobs: int | None = None
    daily_seconds: int | None = None
    total_daily_seconds: int | None = None


def _utc_day_bounds(now: float) -> tuple[float, float]:
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day.timestamp(), (day + timedelta(days=1)).timestamp()


def _billed_today(start: float, owner: str | None) -> Op[int]:
    """Seconds of video asked for since ``start`` that may be billed: by ``owner``, or by everyone (None)."""
    free = sorted(NOT_CHARGED)
    sql = f"SELECT COALESCE(SUM(video_seconds), 0) AS billed FROM jobs WHERE created_at >= ? AND status NOT IN ({marks(free)})"
    args: list[object] = [start, *free]
    if owner is not None:
        sql += " AND principal = ?"
        args.append(owner)
    (row,) = yield (sql, tuple(args))
    return int(row["billed"])


def _check_budget(budget: int, owner: str | None, seconds: int, now: float) -> Op[None]:
    start, end = _utc_day_bounds(now)
    left = max(0, budget - (yield from _billed_today(start, owner)))
    if seconds <= left:
        return
    resets = datetime.fromtimestamp(end, UTC).isoformat(timespec="seconds")
    which = (
        f"today's budget of {budget} s (KLING_MCP_DAILY_SECONDS)"
        if owner is not None
        else f"the server's budget of {budget} s for today, all users together (KLING_MCP_TOTAL_DAILY_SECONDS)"
    )
    raise SpendLimitError(
        f"Refused: {seconds} s of video would exceed {which}; {left} s left.",
        limit="daily_seconds" if owner is not None else "total_daily_seconds",
        remaining=left,
        resets_at=resets,
        hint=f"Ask for at most {left} s, or wait until {resets} (UTC midnight)."
        if left >= limits.DURATION_MIN_S
        else f"Wait until {resets} (UTC midnight), when the budget resets.",
    )


def check_guards(guards: Guards, owner: str, seconds: int, now: float) -> Op[None]:
    """Raises SpendLimitError when the job would break a guard; run inside the transaction that records it."""
    if guards.max_active_jobs is not None:
        active_states = sorted(ACTIVE)
        (row,) = yield (
            f"SELECT COUNT(*) AS active FROM jobs WHERE principal = ? AND status IN ({marks(active_states)})",
            (owner, *active_states),
        )
        active = int(row["active"])
        if active >= guards.max_active_jobs:
            raise SpendLimitError(
                f"Refused: {active} jobs are already running (KLING_MCP_MAX_ACTIVE_JOBS={guards.max_active_jobs}).",
                limit="max_active_jobs",
                remaining=0,
                resets_at=None,
                hint="Wait for a running job to finish (check_status or list_jobs), then call again.",
            )
    if guards.daily_seconds is not None:
        yield from _check_budget(guards.daily_seconds, owner, seconds, now)
    if guards.total_daily_seconds is not None:
        yield from _check_budget(guards.total_daily_seconds, None, seconds, now)
