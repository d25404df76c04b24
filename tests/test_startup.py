"""The core starts off the critical path: not before it is wanted (or its grace ends), and at once when it is; a
ledger that does not answer yet is tried again, a core that cannot start at all says to restart."""

from __future__ import annotations

import gc
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.server.mcpserver.exceptions import ToolError

from kling_mcp.config import Settings
from kling_mcp.server.notify import Notifier, OwnerBus
from kling_mcp.server.state import Startup

pytestmark = pytest.mark.anyio


async def test_the_core_waits_until_a_handler_wants_it(settings: Settings) -> None:
    startup = Startup(grace=3600.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(startup.run, settings, Notifier(bus=OwnerBus()), None)
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
        tg.start_soon(startup.run, settings, Notifier(bus=OwnerBus()), None)
        with anyio.fail_after(30):
            await startup.runtime(start=False)
        startup.stop()


@pytest.mark.postgres
async def test_a_core_whose_ledger_does_not_answer_yet_starts_once_it_does(
    settings: Settings, postgres_server: Any
) -> None:
    # A team's server may start before its database (a compose file, a reboot): it says so, and starts by itself.
    import psycopg

    name = "t_" + uuid.uuid4().hex[:16]
    later = settings.with_(database_url=postgres_server.url(name), replica_id="a")  # no such database yet
    startup = Startup(grace=0.0, retry_first=3600.0)  # the backoff never ends here: a handler asking retries now
    async with anyio.create_task_group() as tg:
        tg.start_soon(startup.run, later, Notifier(bus=OwnerBus()), None)
        with anyio.fail_after(30), pytest.raises(ToolError) as early:
            await startup.runtime()
        assert "starts by itself once its ledger answers" in str(early.value)
        assert not startup.ready
        with psycopg.connect(postgres_server.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        with anyio.fail_after(30):
            runtime = await startup.runtime()
        assert startup.ready
        assert await runtime.store.recent(limit=1) == []
        startup.stop()


async def test_a_core_that_cannot_start_for_good_says_to_restart(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("")
    broken = settings.with_(state_dir=tmp_path / "not-a-folder" / "state")  # no ledger can live there
    startup = Startup(grace=0.0, retry_first=0.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(startup.run, broken, Notifier(bus=OwnerBus()), None)
        with anyio.fail_after(30), pytest.raises(ToolError) as failed:
            await startup.runtime()
        assert "restart it" in str(failed.value)
        startup.stop()


async def _start_core(settings: Settings) -> None:
    startup = Startup(grace=3600.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(startup.run, settings, Notifier(bus=OwnerBus()), None)
        with anyio.fail_after(30):
            await startup.runtime()
        startup.stop()


async def test_a_serving_process_that_froze_its_heap_freezes_the_cores_objects_too(settings: Settings) -> None:
    # kling-mcp serve freezes its start-up heap; the core, started later, would otherwise be walked by every full
    # collection (the event loop's longest pauses with 1,000 jobs in flight).
    gc.freeze()
    try:
        frozen_before_core = gc.get_freeze_count()
        await _start_core(settings)
        assert gc.get_freeze_count() > frozen_before_core, "the core's objects were left to the collector"
    finally:
        gc.unfreeze()


async def test_a_process_that_never_froze_is_left_to_the_collector(settings: Settings) -> None:
    assert gc.get_freeze_count() == 0
    await _start_core(settings)
    assert gc.get_freeze_count() == 0, "starting the core froze a heap nobody asked to freeze (tests, embedders)"


def test_answering_the_handshake_needs_none_of_the_cores_engine_modules() -> None:
    # What the stdio command imports before it can answer tools/list; the rest loads while the core starts.
    import subprocess
    import sys

    code = (
        "import sys, kling_mcp.cli, kling_mcp.server\n"
        "from kling_mcp.config import Settings\n"
        "kling_mcp.server.build_server(Settings(mode='sandbox'))\n"
        "print(' '.join(sorted(sys.modules)))"
    )
    loaded = set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    heavy = {
        "kling_mcp.jobs",
        "kling_mcp.pixazo",
        "kling_mcp.store",
        "kling_mcp.runtime",
        "kling_mcp.sandbox",
        "sqlite3",
    }
    heavy |= {"av", "PIL", "jwt"}  # (uvicorn and cryptography are the SDK's own imports)
    assert loaded & heavy == set()
