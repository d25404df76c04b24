"""The core starts off the critical path: not before it is wanted (or its grace ends), and at once when it is."""

from __future__ import annotations

import anyio
import pytest
from mcp.server.subscriptions import InMemorySubscriptionBus

from kling_mcp.config import Settings
from kling_mcp.server.notify import Notifier
from kling_mcp.server.state import Startup

pytestmark = pytest.mark.anyio


async def test_the_core_waits_until_a_handler_wants_it(settings: Settings) -> None:
    startup = Startup(grace=3600.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(startup.run, settings, Notifier(bus=InMemorySubscriptionBus()), None)
        await anyio.wait_all_tasks_blocked()
        assert not startup.ready, "the core started before anything needed it"
        with anyio.fail_after(30):
            runtime = await startup.runtime()
        assert startup.ready
        assert await runtime.store.recent(limit=1) == []
        startup.stop()


async def test_the_core_starts_by_itself_when_its_grace_ends(settings: Settings) -> None:
    startup = Startup(grace=0.01)
    async with anyio.create_task_group() as tg:
        tg.start_soon(startup.run, settings, Notifier(bus=InMemorySubscriptionBus()), None)
        with anyio.fail_after(30):
            await startup.runtime(start=False)
        startup.stop()
