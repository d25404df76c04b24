"""Native MCP Tasks (io.modelcontextprotocol/tasks) through the SDK's client at the raw-request level."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
import pytest
from mcp import Client, MCPError
from mcp.client import ClientExtension, advertise
from mcp.client.extension import NotificationBinding, ResultClaim
from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult, NotificationParams, Request, RequestParams, Result
from pydantic import ConfigDict, Field

from kling_mcp.config import Settings
from kling_mcp.server import build_server
from kling_mcp.server.tasks import EXTENSION

pytestmark = pytest.mark.anyio


class Task(Result):
    """A task as the wire carries it: the fields the tests read, the rest kept."""

    model_config = ConfigDict(extra="allow")

    task_id: str = Field(alias="taskId")
    status: str
    status_message: str | None = Field(default=None, alias="statusMessage")
    created_at: str = Field(alias="createdAt")
    last_updated_at: str = Field(alias="lastUpdatedAt")
    ttl_ms: int | None = Field(alias="ttlMs")
    poll_interval_ms: int | None = Field(default=None, alias="pollIntervalMs")
    result: dict[str, Any] | None = None


class CreatedTask(Task):
    """``CreateTaskResult``: the task, tagged."""

    result_type: Literal["task"] = Field(default="task", alias="resultType")  # type: ignore[assignment]


class TaskParams(RequestParams):
    task_id: str = Field(alias="taskId")


class GetTask(Request[TaskParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"


class CancelTask(Request[TaskParams, Literal["tasks/cancel"]]):
    method: Literal["tasks/cancel"] = "tasks/cancel"


class TaskNote(NotificationParams):
    model_config = ConfigDict(extra="allow")


class TasksClient(ClientExtension):
    """Declares the extension and leaves every task to the test: claimed results come back as they are."""

    identifier = EXTENSION

    def __init__(self) -> None:
        self.notes: list[dict[str, Any]] = []
        self.arrived = anyio.Event()

    def claims(self) -> list[ResultClaim[Any]]:
        return [ResultClaim(result_type="task", model=CreatedTask, resolve=self._unexpected)]

    async def _unexpected(self, result: Any, ctx: Any) -> CallToolResult:
        raise AssertionError("the test reads claimed results itself")

    def notifications(self) -> list[NotificationBinding[Any]]:
        return [NotificationBinding(method="notifications/tasks", params_type=TaskNote, handler=self._on_note)]

    async def _on_note(self, params: TaskNote) -> None:
        self.notes.append(params.model_dump(by_alias=True, exclude_none=True))
        self.arrived.set()


@asynccontextmanager
async def tasks_client(server: MCPServer[Any], ext: ClientExtension | None = None) -> AsyncIterator[Client]:
    async with Client(server, extensions=[ext or TasksClient()]) as client:
        yield client


async def call(client: Client, tool: str, args: dict[str, Any]) -> CreatedTask | CallToolResult:
    result = await client.session.call_tool(tool, args, allow_claimed=True)
    assert isinstance(result, CreatedTask | CallToolResult), result
    return result


async def get_task(client: Client, task_id: str) -> Task:
    return await client.session.send_request(GetTask(params=TaskParams(task_id=task_id)), Task)


async def until_settled(client: Client, task_id: str) -> Task:
    while True:
        task = await get_task(client, task_id)
        if task.status != "working":
            return task
        await anyio.sleep((task.poll_interval_ms or 50) / 1000)


async def test_a_generation_from_a_declaring_client_is_a_task_that_completes_with_the_plain_result(
    settings: Settings,
) -> None:
    server = build_server(settings)
    with anyio.fail_after(30):
        async with tasks_client(server) as client:
            created = await call(client, "generate_video", {"prompt": "a kite as a task", "duration": 3})
            assert isinstance(created, CreatedTask), created
            first = await get_task(client, created.task_id)
            done = await until_settled(client, created.task_id)
        async with Client(server) as plain:
            again = await plain.call_tool("check_status", {"request_id": created.task_id})
    assert created.status == "working"
    assert first.status in {"working", "completed"}
    assert done.status == "completed"
    assert done.result is not None
    result = CallToolResult.model_validate(done.result)
    assert result.structured_content == again.structured_content
    assert result.content == again.content
    assert result.is_error is False
    assert done.poll_interval_ms is None  # nothing left to poll for
    assert done.ttl_ms == round(settings.retention_days * 86400 * 1000)
