"""What one client's session holds and sees: its log level, its place in the notifier (gone when it closes), the
server's paths only when it is local, and its share of blob reads."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.session import LoggingFnT
from mcp.client.streamable_http import streamable_http_client
from mcp.types import LoggingMessageNotificationParams, TextResourceContents

from kling_mcp.config import Settings
from kling_mcp.server import app as server_app
from kling_mcp.server import build_server, resources
from kling_mcp.server.notify import Notifier
from tests.test_http_security import serve

pytestmark = pytest.mark.anyio


@pytest.fixture
def notifiers(monkeypatch: pytest.MonkeyPatch) -> list[Notifier]:
    """Every Notifier the servers built in this test make."""
    made: list[Notifier] = []

    class Recorded(Notifier):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(server_app, "Notifier", Recorded)
    return made


@asynccontextmanager
async def legacy_http_client(base: str, on_log: LoggingFnT | None = None) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(timeout=30) as http,
        Client(streamable_http_client(base + "/mcp", http_client=http), mode="legacy", logging_callback=on_log) as c,
    ):
        yield c


class Heard:
    """One client's log messages, and an event per text it waits for."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []
        self._wanted: dict[str, anyio.Event] = {}

    async def __call__(self, params: LoggingMessageNotificationParams) -> None:
        assert isinstance(params.data, dict)
        self.messages.append((params.level, params.data["message"]))
        for text, event in self._wanted.items():
            if text in params.data["message"]:
                event.set()

    async def wait_for(self, text: str) -> None:
        if not any(text in message for _, message in self.messages):
            await self._wanted.setdefault(text, anyio.Event()).wait()


@pytest.mark.filterwarnings("ignore::mcp.MCPDeprecationWarning")  # logging/setLevel is the legacy API under test
async def test_each_session_has_its_own_log_level(settings: Settings) -> None:
    loud, quiet = Heard(), Heard()
    async with (
        serve(settings) as base,
        legacy_http_client(base, loud) as a,
        legacy_http_client(base, quiet) as b,
    ):
        await a.set_logging_level("info")
        await b.set_logging_level("error")
        made = await a.call_tool("generate_video", {"prompt": "told to one", "duration": 3})
        failed = await a.call_tool("generate_video", {"prompt": "[sandbox:fail] told to both", "duration": 3})
        with anyio.fail_after(10):
            await loud.wait_for("completed and saved")
            # One session's messages keep their order: once the failure is in, earlier ones would be too.
            await quiet.wait_for("ended FAILED")
            await loud.wait_for("ended FAILED")
    assert made.structured_content is not None
    assert failed.structured_content is not None
    rid, fid = made.structured_content["request_id"], failed.structured_content["request_id"]
    assert ("info", f"Job {rid} completed and saved") in loud.messages
    assert [level for level, _ in quiet.messages] == ["error"]
    assert quiet.messages[0][1].startswith(f"Job {fid} ended FAILED")


async def test_a_closed_legacy_session_is_forgotten(settings: Settings, notifiers: list[Notifier]) -> None:
    async with serve(settings) as base, legacy_http_client(base) as stays:
        async with legacy_http_client(base) as leaves:
            await leaves.call_tool("list_jobs", {})
            await stays.call_tool("list_jobs", {})
            (notifier,) = notifiers
            assert len(notifier.legacy) == 2
        with anyio.fail_after(10):
            while len(notifier.legacy) > 1:  # the server learns of the close from the transport
                await anyio.wait_all_tasks_blocked()
        (session, _) = next(iter(notifier.legacy.values()))
        await stays.call_tool("list_jobs", {})
        assert next(iter(notifier.legacy.values()))[0] is session  # the one left is the session that stayed
    assert notifier.legacy == {}
    assert notifier.levels == {}


async def test_the_server_keeps_no_notification_state_for_finished_jobs(
    settings: Settings, notifiers: list[Notifier]
) -> None:
    # A shared server runs for weeks: what it remembers per job to phrase notifications goes when the job settles.
    async with Client(build_server(settings)) as client:
        for n in range(3):
            made = await client.call_tool("generate_video", {"prompt": f"a heron, take {n}", "duration": 3})
            assert made.structured_content is not None
            done = await client.call_tool("check_status", {"request_id": made.structured_content["request_id"]})
            assert done.structured_content is not None
            assert done.structured_content["local_path"] is not None  # saved: the job has settled
        (notifier,) = notifiers
        with anyio.fail_after(10):
            while notifier._seen or notifier._said:  # the last listener call may still be on its way
                await anyio.wait_all_tasks_blocked()


@pytest.mark.render_size(640, 360)  # extend_video needs a last frame of at least 300 px
async def test_remote_callers_see_no_server_paths(settings: Settings, tmp_path: Path) -> None:
    linked = settings.with_(result_links=True)
    seen: list[str] = []
    async with serve(linked) as base, legacy_http_client(base) as client:
        made = await client.call_tool("generate_video", {"prompt": "where is it", "duration": 3})
        assert made.structured_content is not None
        rid = made.structured_content["request_id"]
        again = await client.call_tool("extend_video", {"request_id": rid, "prompt": "and on", "duration": 3})
        assert again.structured_content is not None
        ids = [rid, again.structured_content["request_id"]]
        film = await client.call_tool("concat_videos", {"request_ids": ids, "title": "remote film"})
        listed = await client.call_tool("list_jobs", {})
        job = (await client.read_resource(f"kling://jobs/{rid}")).contents[0]
        jobs = (await client.read_resource("kling://jobs")).contents[0]
        seen.extend(r.model_dump_json() for r in (made, again, film, listed, job, jobs))
    async with Client(build_server(linked)) as local:
        here = await local.call_tool("check_status", {"request_id": rid})
    name = made.structured_content["local_path"]  # relative to the output folder: {time}_{prompt}_{short id}.mp4
    assert re.fullmatch(rf"\d{{8}}-\d{{6}}_where-is-it_{rid[-8:]}\.mp4", name), name
    assert f"Saved on the server as {name}" in made.content[0].text  # type: ignore[union-attr]
    assert f"kling://jobs/{rid}/video" in [getattr(c, "uri", None) for c in made.content]
    assert isinstance(job, TextResourceContents)
    assert json.loads(job.text)["local_path"] == name
    assert film.structured_content is not None
    assert not Path(film.structured_content["path"]).is_absolute()
    for text in seen:
        assert str(tmp_path) not in text
        assert "file:" not in text
    assert here.structured_content is not None
    assert here.structured_content["local_path"] == str(settings.resolved_output_dir / name)


async def test_blob_reads_take_turns(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    inside = 0
    most = 0
    release = anyio.Event()
    real_read = resources.read_blob

    async def slow_read(path: Path) -> bytes:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        await release.wait()
        inside -= 1
        return await real_read(path)

    async with Client(build_server(settings)) as client:
        made = await client.call_tool("generate_video", {"prompt": "read me", "duration": 3})
        assert made.structured_content is not None
        uri = f"kling://jobs/{made.structured_content['request_id']}/video"
        monkeypatch.setattr(resources, "read_blob", slow_read)
        blobs: list[Any] = []

        async def read() -> None:
            blobs.append((await client.read_resource(uri)).contents[0])

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(read)
                await anyio.wait_all_tasks_blocked()  # every read is in, or waiting for its turn
                waiting = inside
                release.set()
    assert waiting == most == resources.BLOB_READS_MAX
    assert len(blobs) == 5
    assert all(b.blob for b in blobs)
