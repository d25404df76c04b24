"""Sandbox gateways one after another on the same jobs folder: a later one answers for the jobs of an earlier one.

This is what the built-in sandbox needs when every tool call gets a new server process (LangChain's stateless
mode): each process's gateway is new, on a new port. The jobs carry their age on the wall clock (injected here);
each gateway has its own fake gateway clock, as processes have their own monotonic clocks.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kling_mcp import limits
from kling_mcp.sandbox import render as render_module
from kling_mcp.sandbox.records import JobRecords
from kling_mcp.sandbox.render import RenderCancelled
from tests.test_sandbox_gateway import OTHER_KEY, QUEUE_S, Sandbox, image_bytes, make_sandbox, probe

pytestmark = pytest.mark.anyio

RENDER_5S = limits.estimated_render_seconds(5, image=False)


@dataclass
class Wall:
    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Folders:
    root: Path
    wall: Wall

    @asynccontextmanager
    async def gateway(self, media: str = "media", **overrides: Any) -> AsyncIterator[Sandbox]:
        """A gateway on the shared jobs folder; ``media`` names its media folder."""
        settings = {"jobs_dir": self.root / "jobs", "media_dir": self.root / media, "wall_clock": self.wall}
        async with make_sandbox(**{**settings, **overrides}) as sandbox:
            yield sandbox


@pytest.fixture
def folders(tmp_path: Path) -> Folders:
    return Folders(tmp_path, Wall())


def counting_renders(monkeypatch: pytest.MonkeyPatch) -> list[bytes | None]:
    """Records the input image of every render from now on, and lets it run."""
    real: Callable[..., int] = render_module.render_job
    images: list[bytes | None] = []

    def counted(*args: Any) -> int:
        images.append(args[4])
        return real(*args)

    monkeypatch.setattr(render_module, "render_job", counted)
    return images


async def test_a_later_gateway_answers_for_an_earlier_ones_job_as_old_as_the_wall_clock_says(
    folders: Folders,
) -> None:
    async with folders.gateway("first") as first:
        request_id = await first.create({"prompt": "kept across restarts", "duration": 5})
        before = await first.status_json(request_id)
    folders.wall.now += QUEUE_S + 1  # the next process starts after the job's queueing time
    async with folders.gateway("second") as second:
        during = await second.status_json(request_id)
        other_key = await second.status(request_id, key=OTHER_KEY)
        done = await second.run_to_end(request_id)
        media = await second.client.get(done["output"]["media_url"][0])
    assert before["status"] == "QUEUED"
    assert during["status"] == "PROCESSING"
    assert during["created_at"] == before["created_at"]
    assert other_key.status_code == 404
    assert done["status"] == "COMPLETED"
    assert media.status_code == 200
    assert probe(media.content)["duration"] == pytest.approx(5, abs=0.2)


async def test_a_video_an_earlier_gateway_rendered_is_served_without_rendering_again(
    folders: Folders, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with folders.gateway() as first:
        request_id = await first.create({"prompt": "rendered once", "duration": 5})
        done = await first.run_to_end(request_id)
    renders = counting_renders(monkeypatch)
    folders.wall.now += QUEUE_S + RENDER_5S  # past its due time by the wall clock
    async with folders.gateway() as second:
        again = await second.status_json(request_id)
        media = await second.client.get(again["output"]["media_url"][0])
    assert again["status"] == "COMPLETED"
    assert again["completed_at"] == done["completed_at"]
    assert media.status_code == 200
    assert renders == []


async def test_a_job_whose_gateway_stopped_before_rendering_is_rendered_on_demand_from_its_image(
    folders: Folders, monkeypatch: pytest.MonkeyPatch
) -> None:
    def stopped(*args: Any) -> int:
        raise RenderCancelled("the gateway is stopping")

    picture = image_bytes((640, 360))
    monkeypatch.setattr(render_module, "render_job", stopped)
    async with folders.gateway("first") as first:
        url = first.receiver.host("first.png", picture)
        request_id = await first.create({"image_url": url, "duration": 5}, i2v=True)
    kept = JobRecords(folders.root / "jobs").load_image(request_id)
    monkeypatch.undo()
    renders = counting_renders(monkeypatch)
    folders.wall.now += QUEUE_S + RENDER_5S
    async with folders.gateway("second") as second:
        done = await second.run_to_end(request_id)
        media = await second.client.get(done["output"]["media_url"][0])
    assert kept == picture
    assert done["status"] == "COMPLETED"
    assert media.status_code == 200
    assert renders == [picture]
    assert JobRecords(folders.root / "jobs").load_image(request_id) is None  # not kept once rendered


async def test_a_held_job_finished_by_hand_on_a_later_gateway_stays_finished_for_the_next(folders: Folders) -> None:
    async with folders.gateway() as first:
        request_id = await first.create({"prompt": "[sandbox:hold] finish me later", "duration": 3})
        await first.gateway.wait_rendered(request_id)
    folders.wall.now += 3600  # held: however old, it is PROCESSING until finished
    async with folders.gateway() as second:
        held = await second.status_json(request_id)
        finished = await second.client.post(f"/_sandbox/jobs/{request_id}/finish", json={"outcome": "FAILED"})
    async with folders.gateway() as third:
        after = await third.status_json(request_id)
    assert held["status"] == "PROCESSING"
    assert finished.status_code == 200
    assert after["status"] == "FAILED"
    assert after["error"]


async def test_without_a_jobs_dir_a_gateway_knows_only_its_own_jobs(folders: Folders) -> None:
    async with folders.gateway(jobs_dir=None) as first:
        request_id = await first.create({"prompt": "memory only", "duration": 3})
    async with folders.gateway(jobs_dir=None) as second:
        unknown = await second.status(request_id)
    assert unknown.status_code == 404
    assert not (folders.root / "jobs").exists()


async def test_a_record_that_cannot_be_read_is_an_unknown_id(folders: Folders) -> None:
    async with folders.gateway() as first:
        request_id = await first.create({"prompt": "to be damaged", "duration": 3})
    record = folders.root / "jobs" / f"{request_id}.json"
    newer = {**json.loads(record.read_text()), "version": 99}
    answers = []
    for content in (json.dumps(newer), "[]", '{"version": 1}', "{not json"):
        record.write_text(content)
        async with folders.gateway() as second:
            answers.append((await second.status(request_id)).status_code)
            answers.append((await second.client.get(f"/_sandbox/jobs/{request_id}")).status_code)
    assert answers == [404] * 8


def test_only_request_ids_become_record_file_names(tmp_path: Path) -> None:
    records = JobRecords(tmp_path / "jobs")
    (tmp_path / "secret.json").write_text("{}")
    assert records.load("../secret") is None
    assert records.load_image("../secret") is None
