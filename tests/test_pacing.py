"""The poll pacer: slots handed out in call order, evenly spaced at the configured rate."""

from __future__ import annotations

import anyio
import pytest

from kling_mcp.pacing import Pacer

pytestmark = pytest.mark.anyio


async def test_slots_are_spaced_by_the_rate_in_call_order() -> None:
    pacer = Pacer(rate=200.0)
    moments: list[tuple[int, float]] = []

    async def take(i: int) -> None:
        await pacer.slot()
        moments.append((i, anyio.current_time()))

    start = anyio.current_time()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(21):
                tg.start_soon(take, i)
    assert [i for i, _ in moments] == list(range(21))
    # The k-th poll never leaves before k / rate: at most rate a second, however many jobs are due together.
    for k, at in moments:
        assert at - start >= k * 0.005 * 0.99


async def test_a_caller_after_a_quiet_spell_goes_at_once() -> None:
    pacer = Pacer(rate=1.0)
    await pacer.slot()
    pacer._next = anyio.current_time() - 1  # as if a second had passed
    with anyio.fail_after(0.5):
        await pacer.slot()
